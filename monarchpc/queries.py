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

HCLT marginals (:func:`hclt_marginals`): the same upward pass in log space, keeping every
product node's log value log u_v, its leaf's log value and the log messages M_c y_c sent up;
then top-down the outside messages o_root = root, o_c = M_c^T (o_v u_v / (M_c y_c)) (the
parent's belief without the child's own subtree; the division is a subtraction of the same
clamped logs, so nothing underflows into it), and p(x_v = k | the other observed values)
= sum_z q_v(z) leaf_v[z, k] with q_v ∝ o_v u_v / leaf_v(x_v).

Sum blocks only apply M to vectors (``M @ y``); the rows of M and M^T u come from the
vector-Jacobian product of that linear map (:func:`transpose_apply`), which costs one more
application and works for dense and Monarch blocks alike.

Most likely completions, two queries (docs/queries.md):

* :func:`hmm_map`, :func:`hclt_map` (``mode=map``): the most likely joint assignment of the
  missing values AND the circuit's latent variables, argmax over (x_missing, z, k) of
  p(x_observed, x_missing, z, k), by max-product (Viterbi) in log space. The latents are
  the hidden states z (HMM: one per position; HCLT: one per variable) and, inside every
  Monarch block M = L_0 L_1 ... L_{m-1}, the m - 1 intermediate indices k between its layers
  (each layer is a sum layer of the circuit, so a max-product pass maximizes over them:
  the block's max-product matrix is max_k L_0[i, k_1] ... L_{m-1}[k_{m-1}, j], not the
  maximum of the materialized M's entries). A dense block has no intermediate index. This
  is NOT argmax over x_missing of p(x_missing, x_observed) (which sums over the latents; NP-hard
  in general for these models): it is the completion of the single most likely latent path.
* :func:`marginal_argmax` (``mode=marginal``): each missing value set to the argmax of its
  own exact marginal p(x_i | the observed values) (:func:`hmm_marginals`,
  :func:`hclt_marginals`); the values are chosen independently, so the row as a whole need
  not be likely.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from monarchpc.circuits.hclt import HCLT
from monarchpc.circuits.hmm import HMM, MISSING

__all__ = ["MISSING", "follow_pointers", "hclt_map", "hclt_marginals", "hclt_sample", "hmm_map",
           "hmm_marginals", "hmm_sample", "marginal_argmax", "max_apply", "transpose_apply"]


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


def _check_hclt_rows(hclt: HCLT, x: Tensor) -> Tensor:
    """Rows ``x`` (N, D) checked against every variable's vocabulary, in internal order."""
    x = _check_rows(x, hclt.vocab_size)
    if x.shape[1] != hclt.num_vars:
        raise ValueError(f"expected rows (N, {hclt.num_vars}), got shape {tuple(x.shape)}")
    xi = x[:, hclt.order]
    if bool((xi >= hclt.vocab_int).any()):
        raise ValueError("a value lies outside its variable's vocabulary (vocab_sizes)")
    return xi


def _level_leaves(hclt: HCLT, lvl: int) -> list[tuple[int, int, Tensor]]:
    """Level ``lvl``'s leaf groups: (start, stop, leaves (n_g, h, V_g)) with internal
    positions [start, stop) and row k of the leaves the (h, V_g) table of position start + k;
    linear space."""
    out = []
    for g, gs, ge, row in hclt.level_groups[lvl]:
        k = torch.arange(ge - gs, device=hclt.root.device) * (not hclt.tied) + row
        out.append((gs, ge, hclt.leaves[g].detach()[k]))
    return out


@torch.no_grad()
def hclt_marginals(hclt: HCLT, x: Tensor) -> Tensor:
    """p(x_v = k | the observed values of the row other than x_v): (N, D, V) linear space,
    V the largest vocabulary (zero beyond a variable's own).

    At a missing variable this is the posterior marginal given all observed ones; at an
    observed one, how well the rest of the row predicts it (as :func:`hmm_marginals`).
    Exact: one upward and one downward pass (module docstring), about three times the
    cost of a likelihood; memory: a few N D h values.
    """
    xi = _check_hclt_rows(hclt, x)
    missing = xi == MISSING
    xi = xi.clamp_min(0)
    tiny = torch.finfo(hclt.root.dtype).tiny
    tables, edges = hclt.leaf_tables(), hclt.blocks.split(hclt.edge_sizes)
    levels = len(hclt.levels)
    log_leaf: list[Tensor] = [xi.new_empty(0)] * levels  # (n_lvl, N, h) per level
    log_u: list[Tensor] = [xi.new_empty(0)] * levels  # product nodes, up to a per-node shift
    log_msg: list[Tensor] = [xi.new_empty(0)] * levels  # messages sent up from each level
    for lvl in reversed(range(levels)):
        log_leaf[lvl] = hclt.leaf_values(xi, lvl, tables, missing).detach().clamp_min(tiny).log()
        u = log_leaf[lvl]
        if lvl + 1 < levels:
            s, e = hclt.levels[lvl + 1]
            u = u.index_add(0, hclt.parent_local[s:e], log_msg[lvl + 1])
        log_u[lvl] = u - u.amax(-1, keepdim=True)
        if lvl > 0:
            y = _normalize(log_u[lvl].exp())
            msg = hclt.blocks.apply_weights(y, edges[lvl - 1]).detach()
            log_msg[lvl] = msg.clamp_min(tiny).log()

    out = hclt.root.new_zeros(xi.shape[0], hclt.num_vars, hclt.vocab_size)
    log_out = hclt.root.detach().clamp_min(tiny).log().expand(1, xi.shape[0], -1)
    for lvl, (s, e) in enumerate(hclt.levels):
        if lvl > 0:  # o_c = M_c^T (o_v u_v / msg_c): the parent's belief without c's subtree
            par = hclt.parent_local[s:e]
            a = log_out[par] + log_u[lvl - 1][par] - log_msg[lvl]
            w = _normalize((a - a.amax(-1, keepdim=True)).exp())
            down = transpose_apply(lambda y, ws=edges[lvl - 1]: hclt.blocks.apply_weights(y, ws),
                                   w)
            log_out = down.clamp_min(tiny).log()
        belief = log_out + log_u[lvl] - log_leaf[lvl]  # p(z_v | all observed values but x_v)
        q = _normalize((belief - belief.amax(-1, keepdim=True)).exp())
        for gs, ge, leaves in _level_leaves(hclt, lvl):
            probs = q[gs - s:ge - s] @ leaves  # (n_g, N, V_g)
            out[:, gs:ge, :leaves.shape[-1]] = probs.transpose(0, 1)
    return out[:, hclt.inverse]


# ------------------------------------------------------------------ most likely completions

def marginal_argmax(x: Tensor, marginals: Tensor) -> Tensor:
    """Rows ``x`` (N, D) with every MISSING value replaced by the argmax of its marginal
    (``marginals`` (N, D, V), e.g. :func:`hmm_marginals`); observed values are kept."""
    return torch.where(x == MISSING, marginals.argmax(-1), x)


_CHUNK = 1 << 24
"""Elements of max_apply's temporary (N_chunk, h, b) products: rows are taken in chunks."""


def max_apply(log_weights: list[Tensor], log_y: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The max-product of sum blocks: log-space (max, +) through every layer.

    ``log_weights`` [layer] (n, pre, post, b, b): the log of the layer weights of n blocks
    (from :meth:`SumBlocks.split`); ``log_y`` (n, N, h) log values. Returns the log of
    out[i] = max over paths i -> k_1 -> ... -> k_{m-1} -> j of L_0[i, k_1] ... y[j],
    (n, N, h), and per layer l the pointers (n, N, h): for every output index of layer l,
    the chosen digit (along the layer's axis) of its input index. Layer m-1 is applied
    first, as in :meth:`SumBlocks.apply_weights`.
    """
    pointers: list[Tensor] = [log_y.new_empty(0)] * len(log_weights)
    y = log_y
    for l in reversed(range(len(log_weights))):
        n, batch, h = y.shape
        _, pre, post, b, _ = log_weights[l].shape
        w = log_weights[l].permute(0, 1, 3, 4, 2)[:, None]  # (n, 1, pre, i, j, post)
        out = torch.empty_like(y)
        arg = torch.empty(y.shape, dtype=torch.int16 if b < 2 ** 15 else torch.int64,
                          device=y.device)
        step = max(1, _CHUNK // max(1, n * h * b))
        for r in range(0, batch, step):
            part = y[:, r:r + step]
            best, idx = (w + part.reshape(n, -1, pre, 1, b, post)).max(4)  # over j
            out[:, r:r + step] = best.reshape(part.shape)
            arg[:, r:r + step] = idx.reshape(part.shape)
        pointers[l], y = arg, out
    return y, pointers


def follow_pointers(pointers: list[Tensor], log_weights: list[Tensor], z: Tensor) -> Tensor:
    """The child states (n, N) chosen by :func:`max_apply` for parent states ``z`` (n, N):
    the layers walked in order (layer 0 first), each replacing one digit of the index."""
    for ptr, w in zip(pointers, log_weights, strict=True):
        _, _, post, b, _ = w.shape
        p, rest = z // (b * post), z % (b * post)
        j = ptr.gather(-1, z[..., None]).squeeze(-1).long()
        z = (p * b + j) * post + rest % post
    return z


def _shift(log_v: Tensor) -> tuple[Tensor, Tensor]:
    """(log_v minus its maximum along the last dimension, that maximum (finite: 0 where every
    entry is -inf)), so values compared by max stay near 0."""
    top = log_v.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return log_v - top, top.squeeze(-1)


@torch.no_grad()
def hmm_map(hmm: HMM, x: Tensor) -> tuple[Tensor, Tensor]:
    """The most likely joint assignment of the missing values and the latent states (the
    hidden states z_1..z_T and every Monarch block's intermediate layer indices) given the
    observed values: Viterbi through the layers, in log space.

    Returns (rows (N, T) with every MISSING value filled in and observed values kept,
    log max_{x_missing, z, k} p(x_observed, x_missing, z, k) (N,)). Not the most likely
    x_missing on its own (module docstring). Cost: one pass of the block per position (as a
    likelihood) plus backtracking; memory: pointers of N T h values per block layer (int16).
    """
    x = _check_rows(x, hmm.vocab_size)
    n, length = x.shape
    log_b = hmm.emission.detach().log()  # (h, V)
    best, best_value = log_b.max(1)  # a missing x_t: max_v B[z, v], at v = best_value[z]
    table = torch.cat([log_b.t(), best[None]])  # (V + 1, h): row V for a missing value
    rows = torch.where(x == MISSING, hmm.vocab_size, x)
    log_w = [w.detach().log() for w in hmm.transition.layers]
    c = table.new_zeros(n, hmm.hidden_size)  # log max-messages, c_T = 0
    log_scale = table.new_zeros(n)
    pointers: list[list[Tensor]] = [[] for _ in range(length - 1)]
    for t in range(length - 2, -1, -1):  # c_t = M (max, x) (e_{t+1} c_{t+1})
        c, pointers[t] = max_apply(log_w, (table[rows[:, t + 1]] + c)[None])
        c, top = _shift(c[0])
        log_scale = log_scale + top
    value, z = (hmm.initial.detach().log() + table[rows[:, 0]] + c).max(-1)
    out = rows.clone()
    for t in range(length):
        if t > 0:
            z = follow_pointers(pointers[t - 1], log_w, z[None])[0]
        out[:, t] = torch.where(out[:, t] == hmm.vocab_size, best_value[z], out[:, t])
    return out, value + log_scale


@torch.no_grad()
def hclt_map(hclt: HCLT, x: Tensor) -> tuple[Tensor, Tensor]:
    """The most likely joint assignment of the missing values and the latent states (every
    variable's z_v and every Monarch block's intermediate layer indices) given the observed
    values: max-product bottom-up in log space, then backtracking from the root.

    Returns (rows (N, D) with every MISSING value filled in and observed values kept,
    log max_{x_missing, z, k} p(x_observed, x_missing, z, k) (N,)). Cost: one upward pass
    (as a likelihood) with (N, h, b) temporaries per layer; memory: pointers of N D h values
    per block layer (int16).
    """
    xi = _check_hclt_rows(hclt, x)
    missing = (xi == MISSING).t()  # (D, N)
    n = xi.shape[0]
    log_w = [w.detach().log() for w in hclt.blocks.layers]
    edges = [list(ws) for ws in zip(*(w.split(hclt.edge_sizes) for w in log_w), strict=True)]
    levels = len(hclt.levels)
    pointers: list[list[Tensor]] = [[] for _ in range(levels)]
    choices: list[list[tuple[int, int, Tensor]]] = [[] for _ in range(levels)]
    log_scale = hclt.root.new_zeros(n)
    msg = None
    for lvl in reversed(range(levels)):
        parts = []
        for gs, ge, leaves in _level_leaves(hclt, lvl):
            log_leaves = leaves.log()  # (n_g, h, V_g)
            best, best_value = log_leaves.max(-1)  # a missing x_v: max_k leaf_v[z, k]
            vals = log_leaves.transpose(1, 2).gather(  # observed: leaf_v[z, x_v]
                1, xi[:, gs:ge].t().clamp_min(0)[:, :, None].expand(-1, -1, hclt.hidden_size))
            parts.append(torch.where(missing[gs:ge, :, None], best[:, None], vals))
            choices[lvl].append((gs, ge, best_value))
        log_u = torch.cat(parts)  # (n_lvl, N, h)
        if msg is not None:  # product nodes: add the children's max-messages
            log_u = log_u.index_add(0, hclt.parent_local[slice(*hclt.levels[lvl + 1])], msg)
        log_u, top = _shift(log_u)
        log_scale = log_scale + top.sum(0)
        if lvl > 0:
            msg, pointers[lvl] = max_apply(edges[lvl - 1], log_u)
    value, z = (hclt.root.detach().log() + log_u[0]).max(-1)
    z = z[None]  # (1, N): the root's state
    out = xi.clone()
    for lvl, (s, e) in enumerate(hclt.levels):
        if lvl > 0:
            z = follow_pointers(pointers[lvl], edges[lvl - 1], z[hclt.parent_local[s:e]])
        for gs, ge, best_value in choices[lvl]:
            k = torch.arange(ge - gs, device=z.device)[:, None]
            filled = best_value[k, z[gs - s:ge - s]].t()  # (N, n_g)
            out[:, gs:ge] = torch.where(out[:, gs:ge] == MISSING, filled, out[:, gs:ge])
    return out[:, hclt.inverse], value + log_scale
