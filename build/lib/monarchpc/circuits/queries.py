"""Queries on trained circuits: pruned forward passes (Figure 6) and sampling time (Tables 1, 4).

``pruned_log_likelihood`` follows :meth:`monarchpc.circuits.hmm.HMM.log_likelihood`
(right to left, scaled linear space) but keeps only the largest entries of every hidden
vector that enters a sum block. All hidden values are non-negative and the likelihood is
a sum of products of them with non-negative weights, so zeroing entries can only lower
it: the pruned log-likelihood is <= the unpruned one, with equality when nothing is
pruned (``keep_fraction = 1``).
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from torch import Tensor

from monarchpc.circuits.hmm import HMM, MISSING
from monarchpc.circuits.monarch import MonarchBlock


def keep_top(y: Tensor, keep_fraction: float) -> Tensor:
    """Zero all but the ``ceil(keep_fraction * h)`` largest entries (at least one) of each
    row of ``y`` (N, h), linear space. ``keep_fraction >= 1`` returns ``y`` unchanged."""
    h = y.shape[-1]
    n_keep = max(1, math.ceil(keep_fraction * h - 1e-9))
    if n_keep >= h:
        return y
    idx = y.topk(n_keep, dim=-1).indices
    return torch.zeros_like(y).scatter_(-1, idx, y.gather(-1, idx))


def _pruned_transition(hmm: HMM, y: Tensor, keep_fraction: float,
                       between_layers: bool) -> Tensor:
    """A @ keep_top(y): prune the vector fed into the transition block, and, with
    ``between_layers`` and a Monarch block, also the vector fed into every further layer."""
    y = keep_top(y, keep_fraction)
    block = hmm.transition
    if not (between_layers and isinstance(block, MonarchBlock)):
        return block(y)
    for n, d in enumerate(reversed(range(block.k))):  # layer k-1 is applied first
        if n > 0:
            y = keep_top(y, keep_fraction)
        y = block.apply_layer(d, y)
    return y


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
    if x.dim() != 2:
        raise ValueError(f"expected token rows (N, T), got shape {tuple(x.shape)}")
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must lie in [0, 1], got {keep_fraction}")
    table = hmm.emission_table()
    x = torch.where(x == MISSING, hmm.vocab_size, x)
    tiny = torch.finfo(table.dtype).tiny
    y = table[x[:, -1]]
    log_scale = torch.zeros(x.shape[0], dtype=y.dtype, device=y.device)
    for t in range(x.shape[1] - 2, -1, -1):
        s = y.sum(-1, keepdim=True).clamp_min(tiny)
        log_scale = log_scale + s.squeeze(-1).log()
        y = table[x[:, t]] * _pruned_transition(hmm, y / s, keep_fraction, between_layers)
    p = (keep_top(y, keep_fraction) * hmm.initial).sum(-1).clamp_min(tiny)
    return p.log() + log_scale


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
