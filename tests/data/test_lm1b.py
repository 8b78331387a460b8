"""LM1B and local text lines: SentencePiece round trip, packing, splits, caches, errors."""

from __future__ import annotations

import hashlib
import inspect
import json
import lzma
import os
import random
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from monarchpc.circuits.blocks import dense_block
from monarchpc.circuits.hmm import HMM
from monarchpc.data import DATASETS, EVAL_KEYS, DataError, build_dataset, lines, lm1b
from monarchpc.data import token_rows as tok
from monarchpc.paths import REPO_ROOT
from tests.helpers import SHARED_DATA, compose_config, english_lines, real_data

WIKITEXT = SHARED_DATA / "wikitext2" / "wikitext-2_valid.txt.xz"
HELDOUT = SHARED_DATA / "lm1b_heldout" / "news.en.heldout-00000-of-00050.xz"
HELDOUT_SHA256 = "265dccd51762253e20425c21ff6ddf09e6da2e11a365da399b0390eebb2d52c8"


@pytest.fixture(scope="module")
def wikitext_lines() -> list[str]:
    """The non-blank lines of the real WikiText-2 validation text (../shared/data), or skip."""
    return lines.read_lines(real_data(WIKITEXT, "real WikiText-2 text"))


@pytest.fixture(scope="module", params=["pydoc", "wikitext2"])
def text_lines(request: pytest.FixtureRequest) -> list[str]:
    """Lines of real English text: Python's help texts (tests/helpers.py ``english_lines``:
    in every checkout), and the real WikiText-2 validation text as an extra check (skipped
    where ../shared/data is not beside the repository)."""
    if request.param == "pydoc":
        return english_lines()
    return request.getfixturevalue("wikitext_lines")


@pytest.fixture(scope="module")
def heldout_text() -> bytes:
    """LM1B's real heldout shard 00000 (../shared/data, xz-compressed), decompressed, or skip."""
    real_data(HELDOUT, "the real LM1B heldout shard")
    text = lzma.decompress(HELDOUT.read_bytes())
    assert hashlib.sha256(text).hexdigest() == HELDOUT_SHA256
    return text


def normalized(s: str) -> str:
    """What SentencePiece's default normalizer (nmt_nfkc) keeps of ``s`` for plain text."""
    return " ".join(unicodedata.normalize("NFKC", s).split())


def fake_sentences(n: int, seed: int) -> list[str]:
    """Generated word-level sentences (LM1B-like: tokenized, space separated)."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "pe", "da", "gu", "be"]
    words = ["".join(random.Random(i).choices(syllables, k=1 + i % 3))
             for i in range(150)]
    words += ["U.S.", "3.5", "%", ",", "'s", "Tuesday"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 20))) + " ."
            for _ in range(n)]


def lm1b_tree(root: Path, train: list[list[str]], heldout: list[list[str]]) -> Path:
    """The official LM1B layout under ``root``: training shards 00001.. and heldout shards
    00000.. holding the given sentences, one per line. Returns the release's top folder."""
    top = root / lm1b.TOP
    for folder, shards, name in ((lm1b.TRAIN_DIR, train, lambda i: lm1b.train_shard(i + 1)),
                                 (lm1b.HELDOUT_DIR, heldout, lm1b.heldout_shard)):
        (top / folder).mkdir(parents=True, exist_ok=True)
        for i, sentences in enumerate(shards):
            (top / folder / name(i)).write_text("\n".join(sentences) + "\n", encoding="utf-8")
    return top


def fake_lm1b(root: Path, train_shards: int = 3, heldout_shards: int = 2,
              per_shard: int = 150) -> dict[str, list[list[str]]]:
    """An official-layout tree under ``root`` with generated sentences; returns its shards."""
    shards = {"train": [fake_sentences(per_shard, seed=i) for i in range(train_shards)],
              "test": [fake_sentences(per_shard, seed=100 + i) for i in range(heldout_shards)]}
    lm1b_tree(root, shards["train"], shards["test"])
    return shards


def expected_stream(sp, sentences: list[str]) -> list[int]:
    """Each sentence's ids then EOS, concatenated: what packing must preserve."""
    return [i for s in sentences for i in [*sp.encode(s), tok.EOS_ID]]


def test_sentencepiece_round_trip_on_real_text(tmp_path: Path, text_lines: list[str]
                                               ) -> None:
    sample = text_lines[:300]
    path = tok.train_sentencepiece(sample, tmp_path / "sp.model", vocab_size=200,
                                   user_defined_symbols=["<unk>"])
    sp = tok.load_sentencepiece(path, 200)
    assert (sp.eos_id(), sp.unk_id(), sp.get_piece_size()) == (tok.EOS_ID, tok.UNK_ID, 200)
    assert sp.encode("a <unk> b", out_type=str).count("<unk>") == 1  # a word, not 5 pieces
    for s in sample:
        ids = sp.encode(s)
        assert tok.UNK_ID not in ids and tok.EOS_ID not in ids
        assert sp.decode(ids) == normalized(s)
    with pytest.raises(DataError, match="vocab_size=201"):
        tok.load_sentencepiece(path, 201)


def test_tokenizer_bytes_do_not_depend_on_the_cores(tmp_path: Path, text_lines: list[str],
                                                    monkeypatch) -> None:
    """SentencePiece's trainer gives other models with other thread counts; ours trains with
    a fixed count, so any number of cores (or OMP/torch thread setting) gives the same bytes."""
    sample = text_lines[:800]
    source = tmp_path / "sample.txt"
    source.write_text("\n".join(sample) + "\n", encoding="utf-8")

    def model(name: str) -> bytes:
        return tok.train_sentencepiece(sample, tmp_path / name, vocab_size=500).read_bytes()

    with monkeypatch.context() as m:  # the trainer's own dependence, which the fix removes
        m.setattr(tok, "SPM_THREADS", 1)
        one = model("threads1.model")
        m.setattr(tok, "SPM_THREADS", 2)
        assert model("threads2.model") != one
    models = set()
    for cores in (1, 2, 16):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        models.add(model(f"cores{cores}.model"))
    # another process on one core, with other OMP and torch thread settings
    script = ("import os, sys, torch; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
              "torch.set_num_threads(3); from monarchpc.data import lines, token_rows as tok; "
              "from pathlib import Path; s = lines.read_lines(Path(sys.argv[1]))[:800]; "
              "tok.train_sentencepiece(s, Path(sys.argv[2]), vocab_size=500)")
    subprocess.run([sys.executable, "-c", script, str(source), str(tmp_path / "other.model")],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": "3"}, cwd=REPO_ROOT)
    models.add((tmp_path / "other.model").read_bytes())
    assert len(models) == 1


def test_wikitext2_tokenizer_against_the_committed_runs(tmp_path: Path, caplog,
                                                         wikitext_lines: list[str]) -> None:
    """The WikiText-2 preset's tokenizer, trained again, is the committed runs' (same name;
    same bytes and token counts under their sentencepiece 0.2.2), or one line says it is not;
    an expected sha256 that differs stops the load, and a resume names the tokenizer."""
    import sentencepiece as spm

    from monarchpc.data.fingerprint import compare, data_fingerprint

    record = json.loads((REPO_ROOT / "docs/results/runs/wikitext2/wt2-hmm-h256/run.json")
                        .read_text())["data"]
    cfg = OmegaConf.to_container(compose_config(["dataset=wikitext2"]).dataset, resolve=True)
    options = {**cfg, "path": str(WIKITEXT), "cache_dir": str(tmp_path)}
    options.pop("long_rows", None)
    splits = build_dataset(options)
    assert Path(splits.info["tokenizer"]).name == record["tokenizer"]["name"]
    sha = splits.info["tokenizer_sha256"]
    assert (sha == record["tokenizer_sha256"]) == (spm.__version__ == "0.2.2")
    if sha == record["tokenizer_sha256"]:
        assert splits.info["train_split"] == record["train_split"]
        assert splits.info["test_split"] == record["test_split"]
        assert "will differ" not in caplog.text
    else:
        assert f"not {record['tokenizer_sha256'][:12]}..." in caplog.text
        assert f"sentencepiece {spm.__version__}" in caplog.text
        with pytest.raises(DataError, match=r"has sha256 .*dataset\.tokenizer_sha256=null") as e:
            build_dataset({**options, "tokenizer_sha256": record["tokenizer_sha256"]})
        assert "\n" not in str(e.value)
    assert build_dataset({**options, "tokenizer_sha256": sha}).info["tokenizer_sha256"] == sha
    saved = {**data_fingerprint(splits), "tokenizer_sha256": "0" * 64}
    with pytest.raises(DataError, match=r"the SentencePiece model has sha256 "
                                        f"{sha[:12]}\\.\\.\\. \\(checkpoint: 000000000000"):
        compare(saved, data_fingerprint(splits))


def test_too_large_vocabulary_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape("lower dataset.vocab_size")):
        tok.train_sentencepiece(fake_sentences(50, 0), tmp_path / "sp.model", vocab_size=5000)


def test_pack_and_take() -> None:
    stream = torch.arange(23)
    rows = tok.pack(stream.numpy(), 5)
    assert rows.shape == (4, 5) and torch.equal(rows.flatten(), stream[:20])
    batches = [["a", "b", "c"], ["d"], ["e", "f"]]
    assert list(tok.take(iter(batches), 2, 5)) == [["c"], ["d"], ["e"]]
    assert [s for b in tok.take(iter(batches), 0, None) for s in b] == list("abcdef")
    assert list(tok.take(iter(batches), 6)) == []


def test_lines_packing_keeps_every_token_in_order(tmp_path: Path, text_lines: list[str]
                                                  ) -> None:
    text = tmp_path / "wiki.txt.xz"
    sample = text_lines[:240]
    with lzma.open(text, "wt", encoding="utf-8") as f:  # with blank lines, as in the file
        f.write("\n\n".join(sample) + "\n")
    splits = build_dataset({"name": "lines", "path": str(text), "vocab_size": 256,
                            "seq_len": 32, "cache_dir": str(tmp_path / "cache"),
                            "user_defined_symbols": ["<unk>"]})
    assert splits.metric == "ppl" and splits.vocab_size == 256
    assert splits.train.dtype == torch.int16 and splits.seq_len == 32
    sp = tok.load_sentencepiece(Path(splits.info["tokenizer"]), 256)
    blocks = {"train": sample[:192], "dev": sample[192:216], "test": sample[216:]}  # 0.8/0.1
    for name, sentences in blocks.items():
        rows = getattr(splits, name)
        stream = expected_stream(sp, sentences)
        assert len(stream) - rows.numel() == splits.info[f"{name}_split"]["dropped_tokens"]
        assert 0 <= len(stream) - rows.numel() < 32  # only the last partial row is dropped
        assert rows.flatten().tolist() == stream[:rows.numel()]
        assert splits.info[f"{name}_split"]["sentences"] == len(sentences)
    # the rows decode back to the sentences, split at the separators
    flat = splits.dev.flatten().tolist()
    decoded, cur = [], []
    for i in flat:
        if i == tok.EOS_ID:
            decoded.append(sp.decode(cur))
            cur = []
        else:
            cur.append(i)
    assert decoded == [normalized(s) for s in blocks["dev"][:len(decoded)]]
    assert len(decoded) >= len(blocks["dev"]) - 2


def test_packed_cache_is_reused_and_keyed_by_settings(tmp_path: Path, monkeypatch) -> None:
    text = tmp_path / "s.txt"
    text.write_text("\n".join(fake_sentences(400, 7)) + "\n")
    opts = {"path": str(text), "vocab_size": 80, "seq_len": 16, "cache_dir": str(tmp_path)}
    first = lines.load(**opts)

    def fail(*args, **kwargs):
        raise AssertionError("re-encoded although the packed cache exists")

    monkeypatch.setattr(tok, "encode_stream", fail)
    again = lines.load(**opts)
    assert torch.equal(first.train, again.train) and torch.equal(first.test, again.test)
    with pytest.raises(AssertionError, match="re-encoded"):
        lines.load(**{**opts, "seq_len": 8})  # other settings, other cache file
    assert len(list((tmp_path / "tokenizers").glob("*.model"))) == 1
    with pytest.raises(DataError, match=re.escape("has 80 pieces but dataset.vocab_size=96")):
        lines.load(**{**opts, "vocab_size": 96, "tokenizer": first.info["tokenizer"]})


def test_uniform_model_perplexity_is_the_vocabulary_size(tmp_path: Path) -> None:
    text = tmp_path / "s.txt"
    text.write_text("\n".join(fake_sentences(400, 3)) + "\n")
    splits = lines.load(path=str(text), vocab_size=64, seq_len=16, cache_dir=str(tmp_path))
    g = torch.Generator().manual_seed(0)
    random_rows = torch.randint(0, 8192, (8, 128), generator=g)
    for vocab, x in ((64, splits.dev.long()), (8192, random_rows)):
        model = HMM(dense_block(8, g), vocab, g)  # random transition and initial distribution
        model.emission.data.fill_(1.0 / vocab)
        nll = -model.log_likelihood(x).double().sum()
        assert torch.exp(nll / x.numel()).item() == pytest.approx(vocab, rel=1e-4)
    # a model that knows the unigram frequencies does better than uniform on this text
    counts = torch.bincount(splits.train.long().flatten(), minlength=64).double() + 0.5
    model = HMM(dense_block(1), 64)
    model.emission.data.copy_((counts / counts.sum()).float()[None])
    ppl = torch.exp(-model.log_likelihood(splits.dev.long()).double().sum()
                    / splits.dev.numel()).item()
    assert ppl < 64 * 0.8


def test_official_layout_reader(tmp_path: Path) -> None:
    shards = fake_lm1b(tmp_path / "lm1b")
    opts = {"root": str(tmp_path / "lm1b"), "vocab_size": 80, "seq_len": 16,
            "cache_dir": str(tmp_path / "cache"), "dev_sentences": 40}
    with pytest.raises(DataError, match="allow_partial=true"):
        lm1b.load(**opts)  # 3 of 99 training shards: refused unless asked for
    splits = build_dataset({"name": "lm1b", **opts, "allow_partial": True})
    train_all = [s for shard in shards["train"] for s in shard]
    test_all = shards["test"][0]  # heldout shard 00000 only: the customary test set
    info = splits.info
    assert info["source"]["kind"] == "tarball"
    assert [n for n, _ in info["source"]["train"]] == [f"news.en-{i:05d}-of-00100"
                                                     for i in (1, 2, 3)]
    assert (info["dev_split"]["sentences"], info["train_split"]["sentences"],
            info["test_split"]["sentences"]) == (40, len(train_all) - 40, len(test_all))
    sp = tok.load_sentencepiece(Path(info["tokenizer"]), 80)
    for name, sentences in (("dev", train_all[:40]), ("train", train_all[40:]),
                            ("test", test_all)):
        rows = getattr(splits, name)
        assert rows.flatten().tolist() == expected_stream(sp, sentences)[:rows.numel()]
    assert [n for n, _ in info["source"]["test"]] == ["news.en.heldout-00000-of-00050"]
    assert info["split_rule"].startswith("test = heldout shard news.en.heldout-00000-of-00050;")
    both = lm1b.load(**opts, allow_partial=True, heldout_shards=[0, 1])
    assert both.info["test_split"]["sentences"] == sum(map(len, shards["test"]))
    capped = lm1b.load(**opts, allow_partial=True, max_train_sentences=100)
    assert capped.info["train_split"]["sentences"] == 100
    assert torch.equal(capped.dev, splits.dev)


def test_lm1b_reads_its_own_layout_with_the_real_heldout_shard(tmp_path: Path,
                                                              heldout_text: bytes) -> None:
    """The official tree with the real news.en.heldout-00000-of-00050, byte for byte, as the
    test split (and no other heldout shard), training shards made of parts of its lines."""
    sentences = heldout_text.decode("utf-8").split("\n")[:-1]
    assert len(sentences) == 6075 and all(s.strip() for s in sentences)
    other = fake_sentences(50, 9)  # heldout shard 00001: present, not part of the test split
    top = lm1b_tree(tmp_path / "lm1b", [sentences[:2000], sentences[2000:4000],
                                        sentences[4000:]], [[], other])
    (top / lm1b.HELDOUT_DIR / lm1b.heldout_shard(0)).write_bytes(heldout_text)
    opts = {"root": str(tmp_path / "lm1b"), "vocab_size": 512, "seq_len": 64,
            "cache_dir": str(tmp_path / "cache"), "dev_sentences": 100}
    with pytest.raises(DataError, match=r"96 of the 99 training shards are missing in .*"
                       r"news\.en-00004-of-00100, .*allow_partial=true to train on the 3 there"):
        lm1b.load(**opts)
    splits = lm1b.load(**opts, allow_partial=True)
    info = splits.info
    assert info["test_split"]["sentences"] == 6075
    assert (info["dev_split"]["sentences"], info["train_split"]["sentences"]) == (100, 5975)
    assert {"name": "news.en.heldout-00000-of-00050", "size": 829_492,
            "sha256": HELDOUT_SHA256} in info["sources"]
    assert len(info["sources"]) == 4  # 3 training shards and the test shard
    sp = tok.load_sentencepiece(Path(info["tokenizer"]), 512)
    assert splits.test.flatten().tolist() == \
        expected_stream(sp, sentences)[:splits.test.numel()]
    assert splits.train.flatten().tolist() == \
        expected_stream(sp, sentences[100:])[:splits.train.numel()]
    # what is missing is named: the file, where it goes, where it comes from; one line each
    for options, message in (
            ({"heldout_shards": "all"}, r"news\.en\.heldout-00002-of-00050 is missing \(and 47 "
                                        r"more\): expected at .*heldout-monolingual"),
            ({"heldout_shards": [0, 7]}, r"news\.en\.heldout-00007-of-00050 is missing: ")):
        with pytest.raises(DataError, match=message) as err:
            lm1b.load(**opts, allow_partial=True, **options)
        assert lm1b.URL in str(err.value) and "\n" not in str(err.value)
    (top / lm1b.HELDOUT_DIR / lm1b.heldout_shard(0)).unlink()
    with pytest.raises(DataError, match=r"LM1B test shard news\.en\.heldout-00000-of-00050 is "
                       r"missing: expected at .*lm1b/1-billion-word-language-modeling-benchmark-"
                       r"r13output/heldout-monolingual\.tokenized\.shuffled/news\.en\.heldout-"
                       r"00000-of-00050; it is in the official release"):
        lm1b.load(**opts, allow_partial=True)


def test_saved_hugging_face_copy(tmp_path: Path, monkeypatch) -> None:
    import datasets  # a dependency of the package (pyproject), so never skipped
    train, test = fake_sentences(300, 1), fake_sentences(120, 2)
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": train}),
                               "test": datasets.Dataset.from_dict({"text": test})})
    dd.save_to_disk(str(tmp_path / "hf"))
    splits = lm1b.load(root=str(tmp_path / "hf"), vocab_size=80, seq_len=16,
                       cache_dir=str(tmp_path / "cache"), dev_sentences=30)  # source=auto
    assert splits.info["source"]["kind"] == "disk"
    assert (splits.info["dev_split"]["sentences"], splits.info["train_split"]["sentences"],
            splits.info["test_split"]["sentences"]) == (30, 270, 120)
    sp = tok.load_sentencepiece(Path(splits.info["tokenizer"]), 80)
    assert splits.test.flatten().tolist() == expected_stream(sp, test)[:splits.test.numel()]
    # source=hf goes through load_dataset(hf_name, revision=...) (stubbed: no network here)
    calls = []
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda name, revision=None: calls.append((name, revision)) or dd)
    hub = lm1b.load(source="hf", hf_name="someone/lm1b", hf_revision="refs/convert/parquet",
                    vocab_size=80, seq_len=16, cache_dir=str(tmp_path / "cache"),
                    dev_sentences=30)
    assert calls == [("someone/lm1b", "refs/convert/parquet")]
    assert hub.info["source"]["kind"] == "hf"
    assert all(hub.info[f"{k}_split"]["sentences"] == splits.info[f"{k}_split"]["sentences"]
               for k in ("train", "dev", "test"))


def test_missing_data_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        lm1b.load(root=str(tmp_path / "nowhere"))
    msg = str(err.value)
    assert lm1b.URL in msg and "tar -xzf" in msg and lm1b.TRAIN_DIR in msg
    assert "source=disk" in msg and "source=hf" in msg
    with pytest.raises(DataError, match=re.escape("dataset.source")):
        lm1b.load(root=str(tmp_path), source="s3")
    with pytest.raises(DataError, match="source=disk"):
        lm1b.load(root=str(tmp_path / "nowhere"), source="disk")
    with pytest.raises(DataError, match=re.escape("dataset.path")):
        lines.load(path=str(tmp_path / "missing.txt.xz"))
    bad = tmp_path / "corrupt.txt.xz"
    bad.write_bytes(b"not xz at all")
    with pytest.raises(DataError, match="re-fetch"):
        lines.load(path=str(bad))
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("\n".join(fake_sentences(200, 5)) + "\n")
    with pytest.raises(DataError, match=re.escape("smaller dataset.seq_len")):
        lines.load(path=str(tiny), vocab_size=60, seq_len=4096, cache_dir=str(tmp_path))
    with pytest.raises(DataError, match=re.escape("set dataset.cache_dir")):  # not a TypeError
        lines.load(path=str(tiny), vocab_size=60, seq_len=4, cache_dir=None)


@pytest.mark.parametrize("dataset", ["lm1b", "wikitext2"])
def test_dataset_configs_match_the_loaders(dataset: str) -> None:
    """Every key of configs/dataset/<name>.yaml is an argument of the loader or of the
    tokenizer pipeline it forwards to (the loaders take **token_options)."""
    cfg = OmegaConf.to_container(compose_config([f"dataset={dataset}"]).dataset, resolve=True)
    entry = DATASETS[cfg["name"]]
    loader = entry.resolve(entry.loader)
    own = set(inspect.signature(loader).parameters) - {"token_options"}
    pipeline = set(inspect.signature(tok.build_token_splits).parameters) - {
        "name", "source", "train", "dev", "test", "tokenizer_text", "tokenizer_source"}
    keys = set(cfg) - set(EVAL_KEYS)
    assert keys - own - pipeline == set()
    assert pipeline <= keys  # every tokenizer setting is visible in the config
    assert cfg["vocab_size"] == (8192 if dataset == "lm1b" else 4096)
    assert cfg["seq_len"] == 128 and Path(cfg["cache_dir"]).is_absolute()
