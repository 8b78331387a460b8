"""Small real run directories for the report tests.

Runs train a real HMM for a few stochastic EM updates on the first 50,000 characters of
the real text8 (shared/data/text8_prefix), recorded as data set "chars" (they are not the
text8 benchmark). Random-init runs go through the training loop
(``monarchpc.train.run`` with the project's Hydra configs) when it is installed; runs
initialized by circuit multiplication, and every run while the loop is absent, come from
:func:`train_own_loop`, a short EM loop written in the same run-directory format
(run.json, metrics.jsonl, .hydra/config.yaml, checkpoint.pt). Every number is measured.
"""

from __future__ import annotations

import atexit
import json
import lzma
import math
import shutil
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any

import torch
import yaml

from monarchpc.circuits.factory import build_model
from monarchpc.circuits.hmm import HMM
from monarchpc.learning import accumulate_flows, em_step, step_size

# Two CPU threads on a shared 2-core machine make small matmuls up to 50x slower
# (threads spin while the other core is busy); one thread keeps the tests quick.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
TEXT8 = REPO_ROOT.parent / "shared" / "data" / "text8_prefix" / "text8_first12500000.xz"
if not TEXT8.is_file():  # a worktree beside /work/main
    TEXT8 = Path("/work/shared/data/text8_prefix/text8_first12500000.xz")
MAX_CHARS, FRACTIONS, SEQ_LEN, LONG_ROWS, VOCAB = 50_000, (0.8, 0.1, 0.1), 32, 10, 27
BATCH, EVAL_EVERY = 256, 2
# (a file check, not find_spec: an editable install elsewhere could answer for this checkout)
HAVE_TRAIN_LOOP = ((REPO_ROOT / "monarchpc" / "train.py").is_file()
                   and (REPO_ROOT / "configs" / "train.yaml").is_file())


@cache
def text8_rows() -> dict[str, torch.Tensor]:
    """The splits the "chars" loader makes of the first 50,000 characters with fractions
    0.8/0.1/0.1 and rows of 32: train / dev / test (N, 32), and the test characters as
    10 long rows ("test_long"). space = 0, a..z = 1..26 (text8 is already normalized)."""
    with lzma.open(TEXT8, "rt") as f:
        text = f.read(MAX_CHARS)
    ids = torch.tensor([0 if c == " " else ord(c) - 96 for c in text], dtype=torch.long)
    assert int(ids.min()) >= 0 and int(ids.max()) < VOCAB
    n_train, n_dev = int(MAX_CHARS * FRACTIONS[0]), int(MAX_CHARS * FRACTIONS[1])
    spans = {"train": ids[:n_train], "dev": ids[n_train:n_train + n_dev],
             "test": ids[n_train + n_dev:n_train + 2 * n_dev]}
    out = {k: v[: v.numel() // SEQ_LEN * SEQ_LEN].reshape(-1, SEQ_LEN) for k, v in spans.items()}
    test = spans["test"]
    out["test_long"] = test[: test.numel() // LONG_ROWS * LONG_ROWS].reshape(LONG_ROWS, -1)
    return out


def bits_per_char(model: HMM, rows: torch.Tensor) -> float:
    with torch.no_grad():
        nll = -float(model.log_likelihood(rows).double().sum())
    return nll / rows.numel() / math.log(2)


def load_hmm(run_dir: Path) -> HMM:
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    model = build_model(ckpt["config"]["model"], VOCAB)
    model.load_state_dict(ckpt["model"])
    return model


def multiply_init(model: HMM, factors: list[HMM]) -> None:
    """Initialize a Monarch-2 HMM over factors (h0, h1) as the product of two dense HMMs:
    layer d has factor d's transition in every block, emission rows prop. to
    B0[i0] * B1[i1] at state i0 * h1 + i1, initial distribution kron(g0, g1)."""
    a, b = factors
    with torch.no_grad():
        layers = model.transition.layers
        layers[0].copy_(a.transition.weight.expand_as(layers[0]))
        layers[1].copy_(b.transition.weight.expand_as(layers[1]))
        e = (a.emission[:, None, :] * b.emission[None, :, :]).reshape(model.hidden_size, -1)
        model.emission.copy_(e / e.sum(-1, keepdim=True))
        model.initial.copy_(torch.kron(a.initial, b.initial))


def model_name(block: str, k: int | None) -> str:
    return "hmm" if block == "dense" else f"monarch{k}_hmm"


def train_with_loop(run_dir: Path, block: str, hidden_size: int, k: int | None = None,
                    seed: int = 0, stop_after: int | None = None,
                    cache_dir: Path | None = None) -> Path:
    """A random-init run through ``monarchpc.train.run`` on the 50,000-character prefix
    (the encoded characters are cached in ``cache_dir``: share one between runs)."""
    from omegaconf import OmegaConf

    from monarchpc.train import run
    from tests.helpers import compose_config

    overrides = [
        "trainer.device=cpu", "dataset=chars", f"dataset.paths=[{TEXT8}]",
        f"dataset.max_chars={MAX_CHARS}", f"dataset.fractions=[{','.join(map(str, FRACTIONS))}]",
        f"dataset.seq_len={SEQ_LEN}", f"dataset.long_rows={LONG_ROWS}",
        f"model={model_name(block, k)}", f"model.hidden_size={hidden_size}",
        f"optim.batch_size={BATCH}", "optim.epochs=1", f"trainer.eval_every={EVAL_EVERY}",
        "trainer.eval_at_start=false", f"seed={seed}"]
    if stop_after is not None:
        overrides.append(f"trainer.stop_after={stop_after}")
    if cache_dir is not None:
        overrides.append(f"dataset.cache_dir={cache_dir}")
    cfg = compose_config(overrides, run_dir)
    run(cfg)
    # what the Hydra CLI saves beside every run (run() called directly does not)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return run_dir


def train_own_loop(run_dir: Path, block: str, hidden_size: int, k: int | None = None,
                   init: str = "random", factor_runs: list[Path] | None = None,
                   seed: int = 0, stop_after: int | None = None) -> Path:
    """The same run with a short EM loop of our own (one epoch of batches of 256 rows,
    linear step size 1 -> 0, evaluation every 2 updates and at the end)."""
    data = text8_rows()
    train = data["train"]
    updates = math.ceil(len(train) / BATCH)
    config: dict[str, Any] = {
        "dataset": {"name": "chars", "paths": [str(TEXT8)], "max_chars": MAX_CHARS,
                    "fractions": list(FRACTIONS), "seq_len": SEQ_LEN, "long_rows": LONG_ROWS},
        "model": {"name": model_name(block, k), "structure": "hmm", "block": block,
                  "hidden_size": hidden_size, "k": k, "factors": None, "perturbation": 8.0},
        "init": {"name": init, "factor_runs": [str(d) for d in factor_runs or []]},
        "optim": {"schedule": "linear", "eta0": 1.0, "eta_min": 0.0, "pseudocount": 0.1,
                  "batch_size": BATCH, "accumulate": 1, "epochs": 1},
        "trainer": {"device": "cpu", "eval_every": EVAL_EVERY, "stop_after": stop_after},
        "seed": seed, "run_dir": str(run_dir),
    }
    model = build_model(config["model"], VOCAB, generator=torch.Generator().manual_seed(seed))
    if init == "multiply":
        multiply_init(model, [load_hmm(d) for d in factor_runs or []])
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    madds = model.madds_per_token()
    info: dict[str, Any] = {
        "name": run_dir.name, "dataset": "chars", "metric": "bpc", "structure": "hmm",
        "block": block, "k": None if block == "dense" else model.transition.k,
        "factors": None if block == "dense" else model.transition.factors,
        "hidden_size": hidden_size, "vocab_size": VOCAB, "madds_per_token": madds,
        "num_params": sum(p.numel() for p in model.parameters()), "init": init,
        "factor_runs": config["init"]["factor_runs"], "status": "running",
        "device": "cpu", "peak_gpu_memory_bytes": None, "final": None}
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    start, tokens, seconds = time.perf_counter(), 0, 0.0
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text("")
    for u in range(updates if stop_after is None else stop_after):
        x = train[order[u * BATCH:(u + 1) * BATCH]]
        accumulate_flows(model, x)
        eta = step_size("linear", u, updates)
        em_step(model, eta, 0.1)
        tokens += x.numel()
        seconds = time.perf_counter() - start
        last = u + 1 == updates
        if (u + 1) % EVAL_EVERY == 0 or last:
            rec = {"update": u + 1, "epoch": (u + 1) / updates, "tokens": tokens,
                   "train_flops": 6 * madds * tokens, "madds_per_token": madds,
                   "step_size": eta, "wall_time": seconds,
                   "dev_bpc": bits_per_char(model, data["dev"]),
                   "test_bpc": bits_per_char(model, data["test"])}
            if last:
                rec["test_long_bpc"] = bits_per_char(model, data["test_long"])
                info["status"] = "finished"
            rec["final"] = last
            info["final"] = rec  # run.json's "final": the last evaluation record
            with open(metrics, "a") as f:
                f.write(json.dumps(rec) + "\n")
    if stop_after is not None:
        info["status"] = "interrupted"
    torch.save({"model": model.state_dict(), "config": config}, run_dir / "checkpoint.pt")
    (run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    return run_dir


def train_run(run_dir: Path, block: str, hidden_size: int, k: int | None = None,
              init: str = "random", factor_runs: list[Path] | None = None, seed: int = 0,
              stop_after: int | None = None, cache_dir: Path | None = None) -> Path:
    """One run: through the training loop when it exists and the init is random."""
    if HAVE_TRAIN_LOOP and init == "random":
        return train_with_loop(run_dir, block, hidden_size, k, seed, stop_after, cache_dir)
    return train_own_loop(run_dir, block, hidden_size, k, init, factor_runs, seed, stop_after)


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
                                       init="multiply", factor_runs=[runs["hmm4"]] * 2)
    runs["m2_64_multiply"] = train_run(root / "m2_h64_multiply", "monarch", 64, k=2,
                                       init="multiply", factor_runs=[runs["hmm8"]] * 2)
    runs["m2_64_stopped"] = train_run(root / "m2_h64_stopped", "monarch", 64, k=2, seed=1,
                                      stop_after=2, cache_dir=data)
    return runs


@cache
def shared_runs() -> dict[str, Path]:
    """:func:`make_runs` once per test session, in a temporary folder removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="monarchpc-report-runs-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return make_runs(root)
