"""The training CLI on real token-level text: the LM1B pipeline on a text of lines (`lines`
loader) and on sentences in LM1B's own layout (`lm1b` loader). Each runs on English prose
made here from Python's help texts (tests/helpers.py ``english_lines``) and, as an extra
check where ../shared/data is beside the repository, on real WikiText-2 and LM1B text."""

from __future__ import annotations

import json
import lzma
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from monarchpc.data import build_dataset
from monarchpc.train import run
from tests.data.test_lm1b import HELDOUT, lm1b_tree
from tests.helpers import SHARED_DATA, compose_config, english_lines, real_data

WIKITEXT = SHARED_DATA / "wikitext2" / "wikitext-2_valid.txt.xz"


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models are all per-op overhead: one thread avoids waiting on a busy second core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# The prose lines are shorter than WikiText-2's paragraphs and LM1B's sentences: smaller
# batches give their runs as many EM updates.
@pytest.fixture(params=["pydoc", "wikitext2"])
def lines_file(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, int]:
    """(A text of one sentence or paragraph per line, rows a batch): made here, or the real
    WikiText-2."""
    if request.param == "pydoc":
        path = tmp_path / "pydoc.txt"
        path.write_text("\n".join(english_lines()) + "\n", encoding="utf-8")
        return path, 16
    return real_data(WIKITEXT, "real WikiText-2 text"), 64


@pytest.fixture(params=["pydoc", "lm1b"])
def sentences(request: pytest.FixtureRequest) -> tuple[list[str], int]:
    """(Sentences for an LM1B layout, rows a batch): made here, or the real heldout shard
    00000 (6,075 sentences)."""
    if request.param == "pydoc":
        return english_lines(), 32
    real_data(HELDOUT, "the real LM1B heldout shard")
    return lzma.decompress(HELDOUT.read_bytes()).decode("utf-8").split("\n")[:-1], 64


def test_wikitext2_monarch_run_lowers_dev_perplexity(tmp_path: Path, one_thread: None,
                                                     lines_file: tuple[Path, int]) -> None:
    path, batch = lines_file
    run_dir = tmp_path / "run"
    cfg = compose_config(["experiment=wikitext2_monarch2", f"dataset.path={path}",
                          "dataset.max_lines=800", "dataset.vocab_size=256",
                          "dataset.seq_len=32", "model.hidden_size=16",
                          f"optim.batch_size={batch}",
                          "optim.epochs=1", "trainer.eval_every=10", "trainer.device=cpu"],
                         run_dir)
    final = run(cfg)
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = recs[0]
    assert first["update"] == 0 and recs[-1]["final"] and recs[-1]["update"] >= 20
    assert first["dev_ppl"] > 200  # a random model over 256 tokens
    assert final["dev_ppl"] < 0.3 * first["dev_ppl"]
    assert final["test_ppl"] < 0.3 * first["test_ppl"]
    # and it learned more than token frequencies: it beats the training split's unigram model
    splits = build_dataset(cfg.dataset)  # from the cache the run wrote
    counts = torch.bincount(splits.train.long().flatten(), minlength=256).double() + 0.5
    unigram_dev_ppl = torch.exp(-(counts / counts.sum()).log()[splits.dev.long()].mean())
    assert final["dev_ppl"] < 0.8 * unigram_dev_ppl.item()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["metric"] == "ppl" and info["vocab_size"] == 256
    assert info["data"]["source"]["max_lines"] == 800 and info["data"]["seq_len"] == 32


def test_lm1b_run_on_lm1b_sentences(tmp_path: Path, one_thread: None,
                                    sentences: tuple[list[str], int]) -> None:
    """The lm1b_hmm preset through the CLI's run() on the official layout made of the
    sentences: the first 8/9 as three training shards, the last 1/9 as the test shard (no
    sentence in both; the real shard: 5,400 and 675); SentencePiece and the HMM learn."""
    sentences, batch = sentences
    n_test = len(sentences) // 9
    train, test = sentences[:-n_test], sentences[-n_test:]
    third = len(train) // 3
    lm1b_tree(tmp_path / "lm1b", [train[:third], train[third:2 * third], train[2 * third:]],
              [test])
    run_dir = tmp_path / "run"
    cfg = compose_config(["experiment=lm1b_hmm", f"dataset.root={tmp_path / 'lm1b'}",
                          "dataset.allow_partial=true", "dataset.dev_sentences=200",
                          "dataset.max_train_sentences=1500", "dataset.vocab_size=256",
                          "dataset.seq_len=32", "model.hidden_size=16",
                          f"optim.batch_size={batch}",
                          "optim.accumulate=1", "optim.epochs=1", "trainer.eval_every=10",
                          "trainer.device=cpu", "trainer.precision=fp32"], run_dir)
    final = run(cfg)
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert recs[0]["update"] == 0 and recs[-1]["final"] and recs[-1]["update"] >= 30
    assert recs[0]["test_ppl"] > 200  # a random model over 256 tokens
    assert final["test_ppl"] < 0.3 * recs[0]["test_ppl"]
    splits = build_dataset(cfg.dataset)  # from the caches the run wrote
    counts = torch.bincount(splits.train.long().flatten(), minlength=256).double() + 0.5
    unigram_test_ppl = torch.exp(-(counts / counts.sum()).log()[splits.test.long()].mean())
    assert final["test_ppl"] < 0.8 * unigram_test_ppl.item()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["dataset"] == "lm1b" and info["metric"] == "ppl"
    assert info["data"]["test_split"]["sentences"] == n_test
    assert info["data"]["split_rule"].startswith("test = heldout shard news.en.heldout-00000")
