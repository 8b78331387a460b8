"""Measurements taken on a finished run's checkpoint and written back into its directory.

* :func:`measure_sampling`: seconds per sampled sequence -> ``run.json``
  ``sampling_seconds_per_sequence`` and ``sampling.json`` (Tables 1 and 4, "Time");
* :func:`evaluate_pruning`: bits per token with hidden states pruned -> ``pruning.json``
  (Figure 6).

The model comes from the run's checkpoint through :func:`monarchpc.use.load.load_run`.

Pruning (:func:`pruned_log_likelihood`) is :meth:`monarchpc.circuits.hmm.HMM.log_likelihood`
(right to left, scaled linear space) keeping only the largest entries of every hidden
vector that enters a sum block. All hidden values are non-negative and the likelihood is a
sum of products of them with non-negative weights, so zeroing entries can only lower it:
the pruned log-likelihood is <= the unpruned one, with equality when nothing is pruned.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from monarchpc.circuits.hmm import HMM
from monarchpc.run.tracking import write_json_atomic
from monarchpc.use.load import load_run, run_info


def keep_top(y: Tensor, keep_fraction: float) -> Tensor:
    """Zero all but the ``ceil(keep_fraction * h)`` largest entries (at least one) of each
    row of ``y`` (N, h), linear space. ``keep_fraction >= 1`` returns ``y`` unchanged."""
    h = y.shape[-1]
    n_keep = max(1, math.ceil(keep_fraction * h - 1e-9))
    if n_keep >= h:
        return y
    idx = y.topk(n_keep, dim=-1).indices
    return torch.zeros_like(y).scatter_(-1, idx, y.gather(-1, idx))


@torch.no_grad()
def pruned_log_likelihood(hmm: HMM, x: Tensor, keep_fraction: float,
                          between_layers: bool = False) -> Tensor:
    """Natural-log likelihood of each row of ``x`` (N, T) LongTensor -> (N,), pruning hidden states.

    The recursion is HMM.log_likelihood's, right to left in scaled linear space:
    y_T = B[:, x_T]; y_t = B[:, x_t] * (A @ keep_top(y_{t+1} / s_{t+1})); p = g . keep_top(y_1)
    where s_t is the sum of the vector (its log is accumulated). Pruning happens exactly on
    the vector fed into each sum block: the normalized y_{t+1} / s_{t+1} fed into the
    transition A at every one of the T - 1 steps, and y_1 fed into the root (the dot
    product with the initial distribution g). With ``between_layers=True`` and a Monarch
    transition, the intermediate vector fed into every further Monarch layer is pruned too
    ("across all layers"). Pruning keeps the ``ceil(keep_fraction * h)`` largest entries of
    each row (at least one); top-k is scale-invariant, so this equals pruning the
    unnormalized values.
    """
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must lie in [0, 1], got {keep_fraction}")
    return hmm.log_likelihood(x, prune=lambda y: keep_top(y, keep_fraction),
                              prune_layers=between_layers)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def sampling_seconds_per_sequence(model: HMM, n: int, length: int, repeats: int = 3,
                                  warmup: int = 1, seed: int = 0) -> dict[str, float]:
    """Time ``model.sample(n, length)`` on the model's device; seconds per sequence.

    One batch of ``n`` sequences is drawn ``warmup`` times untimed, then ``repeats`` times
    timed (with CUDA synchronization around each draw on a GPU). Returns
    ``{"seconds_per_sequence": median / n, "median_seconds": ..., "n", "length", "repeats"}``.
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    for _ in range(warmup):
        model.sample(n, length, generator=gen)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        model.sample(n, length, generator=gen)
        _sync(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"seconds_per_sequence": median / n, "median_seconds": median, "n": n,
            "length": length, "repeats": repeats}


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` -> the GPU when there is one, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def load_model(run_dir: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[HMM, dict[str, Any], dict[str, Any]]:
    """(model, composed config, run.json) of a run directory with a checkpoint.

    Only HMM runs are supported: the queries of this module are HMM queries.
    """
    model, config = load_run(run_dir, device)
    if model.structure != "hmm":
        raise ValueError(f"{run_dir}: sampling time and pruning are measured for HMM runs "
                         f"only, this run is a {config.model.structure!r}")
    return model, OmegaConf.to_container(config), run_info(run_dir)  # type: ignore[return-value]


def update_run_json(run_dir: str | Path, **fields: Any) -> None:
    """Set ``fields`` in ``run_dir/run.json`` (atomic rewrite)."""
    path = Path(run_dir) / "run.json"
    write_json_atomic(path, {**json.loads(path.read_text()), **fields})


def seq_len_of(config: dict[str, Any], default: int = 256) -> int:
    """The training sequence length named by a composed config (dataset.seq_len)."""
    ds = config.get("dataset") or {}
    return int(ds.get("seq_len") or ds.get("length") or default)


def measure_sampling(run_dir: str | Path, n: int = 128, length: int | None = None,
                     repeats: int = 3, device: str = "auto") -> dict[str, Any]:
    """Time sampling ``n`` sequences of ``length`` (default: the run's sequence length)
    from a run's model and record ``sampling_seconds_per_sequence`` in its run.json."""
    dev = pick_device(device)
    model, config, _ = load_model(run_dir, dev)
    length = length or seq_len_of(config)
    result = sampling_seconds_per_sequence(model, n, length, repeats=repeats)
    result["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    update_run_json(run_dir, sampling_seconds_per_sequence=result["seconds_per_sequence"],
                    sampling=result)
    # also beside run.json, which the training loop rewrites (e.g. when a run is resumed)
    write_json_atomic(Path(run_dir) / "sampling.json", result)
    return result


def split_rows(config: dict[str, Any], split: str = "test") -> Tensor:
    """The rows of ``split`` of the run's data set, rebuilt from its config."""
    from monarchpc.data import build_dataset

    return getattr(build_dataset(config["dataset"]), split)


@torch.no_grad()
def evaluate_pruning(run_dir: str | Path, pruned_fractions: Sequence[float],
                     rows: Tensor | None = None, split: str = "test", max_rows: int = 512,
                     batch_size: int = 64, between_layers: bool = False,
                     device: str = "auto") -> dict[str, Any]:
    """Bits per token of ``rows`` (default: the run's ``split``, first ``max_rows`` rows)
    with each fraction of hidden states pruned; writes ``run_dir/pruning.json``.

    ``pruned_fractions`` are fractions pruned (0 = none): keep_fraction = 1 - fraction.
    """
    dev = pick_device(device)
    model, config, info = load_model(run_dir, dev)
    if rows is None:
        rows = split_rows(config, split)
    rows = rows[:max_rows].long()
    points = []
    for frac in sorted(float(f) for f in pruned_fractions):
        ll = 0.0
        for start in range(0, len(rows), batch_size):
            x = rows[start:start + batch_size].to(dev)
            ll += float(pruned_log_likelihood(model, x, 1.0 - frac, between_layers)
                        .double().sum())
        per_token = ll / rows.numel()
        points.append({"pruned_fraction": frac, "keep_fraction": 1.0 - frac,
                       "log_likelihood_per_token": per_token,
                       "bits_per_token": -per_token / math.log(2)})
    result = {"run": info.get("name"), "split": split, "rows": len(rows),
              "seq_len": int(rows.shape[1]), "between_layers": between_layers,
              "metric": info.get("metric"), "hidden_size": model.hidden_size,
              "points": points}
    write_json_atomic(Path(run_dir) / "pruning.json", result)
    return result
