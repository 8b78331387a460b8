"""Exact conditional queries: sampling given observed values, and marginals.

Observed values are given in rows ``x`` (N, T) long where ``MISSING`` (-1) marks a
value to infer; everything is exact (no approximation beyond float rounding).

HMM (:func:`hmm_sample`, :func:`hmm_marginals`), scaled linear space as in
:mod:`monarchpc.circuits.hmm`, with e_t(z) = B[z, x_t] for an observed x_t and 1 for a
missing one, and M the transition (row i: p(z_{t+1} | z_t = i)):

* backward messages  c_T = 1, c_t = M (e_{t+1} c_{t+1}):  c_t(z) ∝ p(x_{>t} | z_t = z);
* forward messages   a_1 = g, a_{t+1} = M^T (a_t e_t):     a_t(z) ∝ p(z_t = z, x_{<t});
* p(z_t | x_obs without x_t) ∝ a_t c_t, so p(x_t = v | the other observed values) =
  sum_z a_t(z) c_t(z) B[z, v] / sum_z a_t(z) c_t(z);
* sampling: z_1 ~ g e_1 c_1, then z_{t+1} ~ M[z_t, :] e_{t+1} c_{t+1}, and a missing x_t
  ~ B[z_t, :].

HCLT (:func:`hclt_sample`): the upward pass of :mod:`monarchpc.circuits.hclt` with missing
leaves set to 1, keeping every node's normalized value y_v ∝ p(observed below v | z_v);
then top-down: z_root ~ root y_root, z_v ~ M_v[z_parent, :] y_v, a missing x_v ~ leaf_v[z_v].

Sum blocks only apply M to vectors (``M @ y``); the rows of M and M^T u come from the
vector-Jacobian product of that linear map (:func:`transpose_apply`), which costs one more
application and works for dense and Monarch blocks alike.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from monarchpc.circuits.hclt import HCLT
from monarchpc.circuits.hmm import HMM, MISSING

__all__ = ["MISSING", "hclt_sample", "hmm_marginals", "hmm_sample", "transpose_apply"]


def transpose_apply(apply: Callable[[Tensor], Tensor], u: Tensor) -> Tensor:
    """M^T u for the linear map ``apply`` (y -> M y, batched over leading dimensions).

    ``u`` has the shape of ``apply``'s output; linear space. Rows of M are
    ``transpose_apply(apply, one_hot(i))``.
    """
    y = torch.zeros_like(u, requires_grad=True)
    with torch.enable_grad():
        (out,) = torch.autograd.grad(apply(y), y, grad_outputs=u)
    return out


def _check_rows(x: Tensor, vocab_size: int) -> Tensor:
    if x.dim() != 2:
        raise ValueError(f"expected rows (N, T) of token values, got shape {tuple(x.shape)}")
    x = x.long()
    if bool(((x < MISSING) | (x >= vocab_size)).any()):
        raise ValueError(f"values must lie in [0, {vocab_size}) or be MISSING ({MISSING})")
    return x


def _normalize(v: Tensor) -> Tensor:
    return v / v.sum(-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)


def _draw(weights: Tensor, generator: torch.Generator | None) -> Tensor:
    """One index per row of non-negative ``weights`` (N, K) -> (N,)."""
    return torch.multinomial(_normalize(weights), 1, generator=generator).squeeze(1)


# --------------------------------------------------------------------------------- HMM

class _Evidence:
    """e_t (N, h) of rows ``x``: B[:, x_t], or ones where x_t is missing; linear space."""

    def __init__(self, hmm: HMM, x: Tensor) -> None:
        x = _check_rows(x, hmm.vocab_size)
        self.rows = torch.where(x == MISSING, hmm.vocab_size, x)
        self.table = hmm.emission_table().detach()

    def __call__(self, t: int) -> Tensor:
        return self.table[self.rows[:, t]]


def _hmm_backward(hmm: HMM, emit: _Evidence) -> Tensor:
    """Normalized backward messages c (N, T, h), c_T = 1 (see the module docstring)."""
    n, length = emit.rows.shape
    c = emit.table.new_empty(n, length, hmm.hidden_size)
    c[:, -1] = 1.0 / hmm.hidden_size
    for t in range(length - 2, -1, -1):
        c[:, t] = _normalize(hmm.transition(_normalize(emit(t + 1) * c[:, t + 1])))
    return c


@torch.no_grad()
def hmm_marginals(hmm: HMM, x: Tensor) -> Tensor:
    """p(x_t = v | the observed values of the row other than x_t): (N, T, V), linear space.

    At a missing position this is the posterior marginal of the value given all observed
    ones; at an observed position, how well the rest of the row predicts it. Memory:
    the backward messages, N T h values.
    """
    emit = _Evidence(hmm, x)
    c = _hmm_backward(hmm, emit)
    emission = hmm.emission.detach()
    out = emission.new_empty(*emit.rows.shape, hmm.vocab_size)
    a = hmm.initial.detach().expand(len(c), -1)
    for t in range(c.shape[1]):
        out[:, t] = _normalize(a * c[:, t]) @ emission  # p(z_t | the other observed values)
        a = _normalize(transpose_apply(hmm.transition, _normalize(a * emit(t))))
    return out


@torch.no_grad()
def hmm_sample(hmm: HMM, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Rows (N, T) with every MISSING value drawn from p(missing | observed); observed
    values are kept. Each row is one exact sample of the conditional distribution.
    Memory: the backward messages, N T h values."""
    emit = _Evidence(hmm, x)
    c = _hmm_backward(hmm, emit)
    out = emit.rows.clone()
    emission = hmm.emission.detach()
    z = _draw(hmm.initial.detach() * emit(0) * c[:, 0], generator)
    for t in range(out.shape[1]):
        missing = out[:, t] == hmm.vocab_size
        if missing.any():
            out[missing, t] = _draw(emission[z[missing]], generator)
        if t + 1 < out.shape[1]:
            rows = transpose_apply(hmm.transition, _one_hot(z, hmm.hidden_size, c))
            z = _draw(rows * emit(t + 1) * c[:, t + 1], generator)
    return out


def _one_hot(z: Tensor, h: int, like: Tensor) -> Tensor:
    return torch.zeros(*z.shape, h, dtype=like.dtype, device=like.device).scatter_(
        -1, z.unsqueeze(-1), 1.0)


# -------------------------------------------------------------------------------- HCLT

@torch.no_grad()
def hclt_sample(hclt: HCLT, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Rows (N, D) with every MISSING value drawn from p(missing | observed); observed
    values are kept (inpainting of image patches). Exact, one sample per row."""
    x = _check_rows(x, hclt.vocab_size)
    if x.shape[1] != hclt.num_vars:
        raise ValueError(f"expected rows (N, {hclt.num_vars}), got shape {tuple(x.shape)}")
    xi = x[:, hclt.order]
    ys, _ = hclt.upward(xi.clamp_min(0), xi < 0)
    edges = hclt.blocks.split(hclt.edge_sizes)
    out = xi.clone()
    z = _draw(hclt.root.detach() * ys[0][0], generator)[None]  # (1, N)
    for lvl, (s, e) in enumerate(hclt.levels):
        if lvl > 0:
            zp = z[hclt.parent_local[s:e]]  # parents' states (n_lvl, N)
            rows = transpose_apply(lambda y, w=edges[lvl - 1]: hclt.blocks.apply_weights(y, w),
                                   _one_hot(zp, hclt.hidden_size, ys[lvl]))
            n_lvl, n = zp.shape
            z = _draw((rows * ys[lvl]).reshape(n_lvl * n, -1), generator).reshape(n_lvl, n)
        drawn = hclt.draw_leaves(lvl, z, generator).t()  # (N, n_lvl)
        out[:, s:e] = torch.where(out[:, s:e] == MISSING, drawn, out[:, s:e])
    return out[:, hclt.inverse]
