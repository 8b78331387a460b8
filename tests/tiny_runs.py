"""Small real run directories for the report tests.

Until the training loop (monarchpc.train) can be driven from here, these runs are made
by a short loop of our own: a real HMM (monarchpc.circuits.factory.build_model) trained
for a few stochastic EM updates on the first 50,000 characters of the real text8
(shared/data/text8_prefix), evaluated on held-out rows, and written in the run-directory
format of the training loop (run.json, metrics.jsonl, .hydra/config.yaml, checkpoint.pt).
Every number in them is measured. The data set is recorded as "chars" (text8-normalized
local text), not "text8": these are not the text8 benchmark.
"""

from __future__ import annotations

import json
import lzma
import math
import time
from functools import cache
from pathlib import Path
from typing import Any

import torch
import yaml

from monarchpc.circuits.factory import build_model
from monarchpc.circuits.hmm import HMM
from monarchpc.learning import accumulate_flows, em_step, step_size

TEXT8 = Path("/work/shared/data/text8_prefix/text8_first12500000.xz")
SEQ_LEN = 32
VOCAB = 27


@cache
def text8_rows() -> dict[str, torch.Tensor]:
    """Rows (N, 32) of the first 50,000 text8 characters: train / dev / test, and the
    test characters as 10 long rows of 480 ("test_long"). space = 0, a..z = 1..26."""
    with lzma.open(TEXT8, "rt") as f:
        text = f.read(50_000)
    ids = torch.tensor([0 if c == " " else ord(c) - 96 for c in text], dtype=torch.long)
    assert int(ids.min()) >= 0 and int(ids.max()) < VOCAB
    rows = ids[: len(ids) // SEQ_LEN * SEQ_LEN].reshape(-1, SEQ_LEN)
    train, dev, test = rows[:1200], rows[1200:1350], rows[1350:1500]
    stream = test.reshape(-1)
    return {"train": train, "dev": dev, "test": test,
            "test_long": stream.reshape(10, -1)}


def bits_per_char(model: HMM, rows: torch.Tensor) -> float:
    with torch.no_grad():
        nll = -float(model.log_likelihood(rows).double().sum())
    return nll / rows.numel() / math.log(2)


def multiply_init(model: HMM, factors: list[HMM]) -> None:
    """Initialize a Monarch-2 HMM over factors (h0, h1) as the product of two dense HMMs:
    layer d has the factor's transition in every block, emission rows prop. to
    B0[i0] * B1[i1] at state i0 * h1 + i1, initial distribution kron(g0, g1)."""
    a, b = factors
    with torch.no_grad():
        layers = model.transition.layers
        layers[0].copy_(a.transition.weight.expand_as(layers[0]))
        layers[1].copy_(b.transition.weight.expand_as(layers[1]))
        e = (a.emission[:, None, :] * b.emission[None, :, :]).reshape(model.hidden_size, -1)
        model.emission.copy_(e / e.sum(-1, keepdim=True))
        model.initial.copy_(torch.kron(a.initial, b.initial))


def load_hmm(run_dir: Path) -> HMM:
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    model = build_model(ckpt["config"]["model"], VOCAB)
    model.load_state_dict(ckpt["model"])
    return model


def train_run(run_dir: Path, block: str, hidden_size: int, k: int | None = None,
              init: str = "random", factor_runs: list[Path] | None = None, updates: int = 6,
              stop_after: int | None = None, batch_size: int = 256, seed: int = 0,
              name: str | None = None) -> Path:
    """Train a tiny HMM and write its run directory; ``stop_after`` leaves it "running"."""
    data = text8_rows()
    config: dict[str, Any] = {
        "dataset": {"name": "chars", "path": str(TEXT8), "max_chars": 50_000,
                    "seq_len": SEQ_LEN},
        "model": {"structure": "hmm", "block": block, "hidden_size": hidden_size, "k": k,
                  "factors": None},
        "init": {"name": init},
        "trainer": {"batch_size": batch_size, "max_updates": updates, "eval_every": 2},
        "optim": {"schedule": "linear", "pseudocount": 0.1},
        "seed": seed,
    }
    gen = torch.Generator().manual_seed(seed)
    model = build_model(config["model"], VOCAB, generator=gen)
    if init == "multiply":
        multiply_init(model, [load_hmm(d) for d in factor_runs or []])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    madds = model.madds_per_token()
    info: dict[str, Any] = {
        "name": name or run_dir.name, "dataset": "chars", "metric": "bpc", "structure": "hmm",
        "block": block, "k": None if block == "dense" else model.transition.k,
        "factors": None if block == "dense" else model.transition.factors,
        "hidden_size": hidden_size, "madds_per_token": madds,
        "num_params": sum(p.numel() for p in model.parameters()), "init": init,
        "factor_runs": [str(d) for d in factor_runs or []], "status": "running",
        "device": "cpu", "peak_gpu_memory_bytes": None, "final": None,
        "vocab_size": VOCAB}
    start, tokens, train = time.perf_counter(), 0, data["train"]
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text("")
    for u in range(updates if stop_after is None else stop_after):
        lo = (u * batch_size) % len(train)
        x = train[lo:lo + batch_size]
        accumulate_flows(model, x)
        eta = step_size("linear", u, updates)
        em_step(model, eta, 0.1)
        tokens += x.numel()
        last = u + 1 == updates
        if (u + 1) % 2 == 0 or last:
            rec = {"update": u + 1, "epoch": tokens / train.numel(), "tokens": tokens,
                   "train_flops": 6 * madds * tokens, "step_size": eta,
                   "wall_time": time.perf_counter() - start,
                   "dev_bpc": bits_per_char(model, data["dev"]),
                   "test_bpc": bits_per_char(model, data["test"]), "final": last}
            if last:
                rec["test_long_bpc"] = bits_per_char(model, data["test_long"])
                info.update(status="finished", final=rec)
            with open(metrics, "a") as f:
                f.write(json.dumps(rec) + "\n")
    torch.save({"model": model.state_dict(), "config": config}, run_dir / "checkpoint.pt")
    (run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    return run_dir


def make_runs(root: Path) -> dict[str, Path]:
    """A small family of runs under ``root``: single runs and a Hydra-style multirun.

    dense h = 4, 8, 16; Monarch-2 h = 16 (4x4), 64 (8x8), random and multiply init (from
    the dense 4x4 and 8x8 runs); Monarch-3 h = 64 (4x4x4); one Monarch-2 run stopped
    after 2 of 6 updates (status "running").
    """
    runs: dict[str, Path] = {}
    for h in (4, 8, 16):
        runs[f"hmm{h}"] = train_run(root / f"hmm_h{h}", "dense", h)
    sweep = root / "multirun" / "2025-01-01" / "12-00-00"
    for i, h in enumerate((16, 64)):
        runs[f"m2_{h}_random"] = train_run(sweep / str(i), "monarch", h, k=2,
                                           name=f"m2_h{h}_random")
    runs["m2_16_multiply"] = train_run(root / "m2_h16_multiply", "monarch", 16, k=2,
                                       init="multiply", factor_runs=[runs["hmm4"]] * 2)
    runs["m2_64_multiply"] = train_run(root / "m2_h64_multiply", "monarch", 64, k=2,
                                       init="multiply", factor_runs=[runs["hmm8"]] * 2)
    runs["m3_64"] = train_run(sweep / "2", "monarch", 64, k=3, name="m3_h64")
    runs["m2_64_running"] = train_run(root / "m2_h64_running", "monarch", 64, k=2, seed=1,
                                      stop_after=2)
    return runs
