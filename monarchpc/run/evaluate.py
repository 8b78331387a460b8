"""Evaluation: bits per character / dimension and perplexity on token rows.

All metrics come from the total negative log-likelihood (nats) over a split and the
number of units it covers (every position of every row):
bpc / bpd = NLL / (units * ln 2); ppl = exp(NLL / units).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from monarchpc.run import progress

METRICS = ("bpc", "bpd", "ppl")


Score = Callable[[Tensor], Tensor]
"""A function from token rows (N, T) long to log-likelihoods (N,) in nats."""


@torch.no_grad()
def total_nll(score: Score, rows: Tensor, batch_size: int, device: torch.device | str = "cpu",
              bar: Any = None) -> tuple[float, int]:
    """Sum of -log p over ``rows`` (N, T) in nats (float64 accumulation), and N * T.

    ``bar``: a progress bar (:mod:`monarchpc.run.progress`) advanced once per batch.
    """
    nll = 0.0
    for start in range(0, len(rows), batch_size):
        x = rows[start:start + batch_size].to(device, non_blocking=True).long()
        nll -= float(score(x).double().sum())
        if bar is not None:
            bar.update(1)
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
             show: bool = False) -> dict[str, float]:
    """``{f"{name}_{metric}": value}`` for every named split of rows.

    Data parallel ranks pass ``shard`` (this rank's rows) and ``total`` (sum over ranks).
    ``show``: a progress bar over the batches of all splits.
    """
    shards = {name: shard(rows) for name, rows in splits.items()}
    batches = sum(math.ceil(len(rows) / batch_size) for rows in shards.values())
    bar = progress.bar(batches, "evaluation", unit="batch", enabled=show, leave=False)
    out = {}
    for name, rows in shards.items():
        nll, units = total(*total_nll(score, rows, batch_size, device, bar))
        out[f"{name}_{metric}"] = metric_value(metric, nll, round(units))
    bar.close()
    return out
