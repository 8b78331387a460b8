"""Evaluation: bits per character / dimension and perplexity on token rows.

All metrics come from the total negative log-likelihood (nats) over a split and the
number of units it covers (every position of every row):
bpc / bpd = NLL / (units * ln 2); ppl = exp(NLL / units).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

METRICS = ("bpc", "bpd", "ppl")


Score = Callable[[Tensor], Tensor]
"""A function from token rows (N, T) long to log-likelihoods (N,) in nats."""


def scorer(model: nn.Module, precision: str = "fp32") -> Score:
    """An exact scorer of ``model`` that builds no autograd graph: the fused first pass of
    learning/forward_backward.py for HMMs (in ``precision``), else ``model.log_likelihood``."""
    from monarchpc.circuits.hmm import HMM
    from monarchpc.learning.forward_backward import hmm_estep

    if isinstance(model, HMM):
        return lambda x: hmm_estep(model, x, checkpoint_every=x.shape[1], precision=precision,
                                   grad=False)
    return model.log_likelihood


@torch.no_grad()
def total_nll(score: Score, rows: Tensor, batch_size: int,
              device: torch.device | str = "cpu") -> tuple[float, int]:
    """Sum of -log p over ``rows`` (N, T) in nats (float64 accumulation), and N * T."""
    nll = 0.0
    for start in range(0, len(rows), batch_size):
        x = rows[start:start + batch_size].to(device, non_blocking=True).long()
        nll -= float(score(x).double().sum())
    return nll, rows.numel()


def metric_value(metric: str, nll: float, units: int) -> float:
    """Convert a total NLL (nats) over ``units`` into bpc, bpd or ppl."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    per_unit = nll / max(units, 1)
    return math.exp(per_unit) if metric == "ppl" else per_unit / math.log(2)


def long_rows(stream: Tensor, num_rows: int) -> Tensor:
    """The test split as ``num_rows`` long rows: stream (L,) -> (num_rows, L // num_rows).

    The reference evaluates text8's 5M test characters as 125 rows of 40,000: a longer
    context than the training chunks, hence a lower BPC. The remainder is dropped.
    """
    length = stream.numel() // num_rows
    if length < 1:
        raise ValueError(f"test stream of {stream.numel()} units is shorter than "
                         f"{num_rows} rows; lower dataset.long_rows")
    return stream[: num_rows * length].reshape(num_rows, length)


def evaluate(score: Score, splits: Mapping[str, Tensor], metric: str, batch_size: int,
             device: torch.device | str = "cpu",
             shard: Callable[[Tensor], Tensor] = lambda rows: rows,
             total: Callable[[float, int], tuple[float, float]] = lambda nll, n: (nll, n),
             ) -> dict[str, float]:
    """``{f"{name}_{metric}": value}`` for every named split of rows.

    Data parallel ranks pass ``shard`` (this rank's rows) and ``total`` (sum over ranks).
    """
    out = {}
    for name, rows in splits.items():
        nll, units = total(*total_nll(score, shard(rows), batch_size, device))
        out[f"{name}_{metric}"] = metric_value(metric, nll, round(units))
    return out
