"""Small real run directories for the report tests.

Runs train a real HMM for a few stochastic EM updates on the first 50,000 characters of
the embedded demo corpus (Python's own help texts, normalized the text8 way: it ships with
every CPython, so these tests need no data from outside the repository), recorded as data
set "chars" (they are not the text8 benchmark), through the training loop
(``monarchpc.train.run`` with the project's Hydra configs); runs initialized by circuit
multiplication are given finished dense runs as their factor runs. Every number is measured.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path

import torch
from omegaconf import OmegaConf

from monarchpc.data.demo import corpus
from monarchpc.train import run
from tests.helpers import compose_config

# Two CPU threads on a shared 2-core machine make small matmuls up to 50x slower
# (threads spin while the other core is busy); one thread keeps the tests quick.
torch.set_num_threads(1)

MAX_CHARS, FRACTIONS, SEQ_LEN, LONG_ROWS, VOCAB = 50_000, (0.8, 0.1, 0.1), 32, 10, 27
BATCH, EVAL_EVERY = 256, 2


@cache
def corpus_text() -> str:
    """The first 50,000 characters of the demo corpus (only ' ' and a-z, single spaces)."""
    text = corpus()[:MAX_CHARS]
    assert len(text) == MAX_CHARS and set(text) <= set(" abcdefghijklmnopqrstuvwxyz")
    return text


def corpus_file(root: Path) -> Path:
    """:func:`corpus_text` written to ``root``/corpus.txt (the runs' ``dataset.paths``)."""
    path = root / "corpus.txt"
    if not path.is_file():
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(corpus_text())
    return path


@cache
def corpus_rows() -> dict[str, torch.Tensor]:
    """The splits the "chars" loader makes of the 50,000 characters with fractions
    0.8/0.1/0.1 and rows of 32: train / dev / test (N, 32), and the test characters as
    10 long rows ("test_long"). space = 0, a..z = 1..26 (computed here, not by the loader)."""
    text = corpus_text()
    ids = torch.tensor([0 if c == " " else ord(c) - 96 for c in text], dtype=torch.long)
    assert int(ids.min()) >= 0 and int(ids.max()) < VOCAB
    n_train, n_dev = int(MAX_CHARS * FRACTIONS[0]), int(MAX_CHARS * FRACTIONS[1])
    spans = {"train": ids[:n_train], "dev": ids[n_train:n_train + n_dev],
             "test": ids[n_train + n_dev:n_train + 2 * n_dev]}
    out = {k: v[: v.numel() // SEQ_LEN * SEQ_LEN].reshape(-1, SEQ_LEN) for k, v in spans.items()}
    test = spans["test"]
    out["test_long"] = test[: test.numel() // LONG_ROWS * LONG_ROWS].reshape(LONG_ROWS, -1)
    return out


def model_name(block: str, k: int | None) -> str:
    return "hmm" if block == "dense" else f"monarch{k}_hmm"


def train_run(run_dir: Path, block: str, hidden_size: int, k: int | None = None,
              init: str = "random", factor_runs: list[Path] | None = None, seed: int = 0,
              stop_after: int | None = None, cache_dir: Path | None = None) -> Path:
    """A run through ``monarchpc.train.run`` on the 50,000-character prefix (the encoded
    characters are cached in ``cache_dir``: share one between runs); ``init=multiply``
    multiplies the given finished ``factor_runs``."""
    text = corpus_file(cache_dir or run_dir.parent)
    overrides = [
        "trainer.device=cpu", "dataset=chars", f"dataset.paths=[{text}]",
        f"dataset.max_chars={MAX_CHARS}", f"dataset.fractions=[{','.join(map(str, FRACTIONS))}]",
        f"dataset.seq_len={SEQ_LEN}", f"dataset.long_rows={LONG_ROWS}",
        f"model={model_name(block, k)}", f"model.hidden_size={hidden_size}",
        f"optim.batch_size={BATCH}", "optim.epochs=1", f"trainer.eval_every={EVAL_EVERY}",
        "trainer.eval_at_start=false", f"seed={seed}"]
    if stop_after is not None:
        overrides.append(f"trainer.stop_after={stop_after}")
    if cache_dir is not None:
        overrides.append(f"dataset.cache_dir={cache_dir}")
    if init == "multiply":
        given = ",".join(map(str, factor_runs or []))
        overrides += ["init=multiply", f"init.factor_runs=[{given}]"]
    cfg = compose_config(overrides, run_dir)
    run(cfg)
    # what the Hydra CLI saves beside every run (run() called directly does not)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return run_dir


def make_runs(root: Path) -> dict[str, Path]:
    """A small family of runs under ``root``: single runs and a Hydra-style multirun.

    dense h = 4, 8, 16; Monarch-2 h = 16 (4x4), 64 (8x8), random and multiply init (from
    the dense 4 and 8 runs); Monarch-3 h = 64 (4x4x4); one Monarch-2 h = 64 run stopped
    after 2 updates (status "interrupted").
    """
    data = root / "data"  # one cache of the encoded characters for every run
    runs: dict[str, Path] = {}
    for h in (4, 8, 16):
        runs[f"hmm{h}"] = train_run(root / f"hmm_h{h}", "dense", h, cache_dir=data)
    sweep = root / "multirun" / "2025-01-01_12-00-00"
    for i, h in enumerate((16, 64)):
        runs[f"m2_{h}_random"] = train_run(sweep / f"{i}-monarch2_hmm-h{h}", "monarch", h, k=2,
                                           cache_dir=data)
    runs["m3_64"] = train_run(sweep / "2-monarch3_hmm-h64", "monarch", 64, k=3, cache_dir=data)
    runs["m2_16_multiply"] = train_run(root / "m2_h16_multiply", "monarch", 16, k=2,
                                       init="multiply", factor_runs=[runs["hmm4"]] * 2,
                                       cache_dir=data)
    runs["m2_64_multiply"] = train_run(root / "m2_h64_multiply", "monarch", 64, k=2,
                                       init="multiply", factor_runs=[runs["hmm8"]] * 2,
                                       cache_dir=data)
    runs["m2_64_stopped"] = train_run(root / "m2_h64_stopped", "monarch", 64, k=2, seed=1,
                                      stop_after=2, cache_dir=data)
    return runs


@cache
def shared_runs() -> dict[str, Path]:
    """:func:`make_runs` once per test session, in a temporary folder removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="monarchpc-report-runs-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return make_runs(root)
