"""Fused E-step for HCLTs: level by level in scaled linear space, no autograd graph.

The reference path (:func:`monarchpc.learning.em.accumulate_flows` on
:meth:`HCLT.log_likelihood <monarchpc.circuits.hclt.HCLT.log_likelihood>`) works in log
space and lets autograd keep every intermediate. This path computes the same
log-likelihood and the same gradients with respect to the parameters (so
``theta * grad`` are the flows) in linear space, with one scale per node and column:

1. Bottom-up, level by level (the deepest first), for every node v of a level:
       u_v = leaf_v[:, x_v] * prod_{c child of v} m_c / s_c,     s_v = max_i u_v[i],
       m_v = M_v u_v                       (the sum block of the edge parent(v) -> v)
       log p = log(root . u_root) + sum_{v != root} log s_v
   (every factor m_c / s_c lies in [0, 1]: M_c is row-stochastic and u_c <= s_c).
2. Top-down, level by level, carrying w_v = d log p / d u_v (w_root = root / (root . u_root)):
       posterior of z_v:   F_v = w_v * u_v           (sums to 1; added to the leaf flows)
       a_c = F_v / m_c,    dlogp/dM_c += a_c u_c^T,    w_c = M_c^T a_c
   through the layers of a Monarch block as in the HMM (M = L_0 ... L_{k-1}: a_0 = a_c,
   dlogp/dL_l += a_l X_l^T, a_{l+1} = L_l^T a_l, w_c = a_k, where X_l is layer l's input).
   Leaves: dlogp/dleaf = flows / leaf; root: dlogp/droot = u_root / (root . u_root).

The scales cancel in every backward formula, so the top-down pass needs none of them.
States are hidden-major (D, h, N) in the model's breadth-first order, so each level is a
contiguous range of nodes and of sum blocks: one product kernel, one batched product per
block layer (:class:`~monarchpc.circuits.blocks.HiddenMajor`) and one posterior kernel
per level (:mod:`monarchpc.kernels.hclt`). Matrix operands may be bf16 or fp16 (fp32
accumulation) or TF32 (:mod:`monarchpc.learning.precision`; fp32 is exact whatever the
caller's TF32 switch says). Scales, posteriors and
gradients stay fp32. States are stored in the operand type: bf16 has fp32's range, fp16 does
not (u and m lie in [0, 1], but a = F / m and w grow as a column's scale shrinks), so prefer
bf16 for peaked models.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from monarchpc.circuits.hclt import HCLT
from monarchpc.kernels.hclt import Layout, leaf_table_torch, level_ops
from monarchpc.learning.cuda_graphs import CapturedEStep, into_grads
from monarchpc.learning.hidden_major import HiddenMajor
from monarchpc.learning.precision import FP32, Precision

_LAYOUTS: weakref.WeakKeyDictionary[HCLT, dict[torch.device, Layout]] = (
    weakref.WeakKeyDictionary())


def tree_layout(model: HCLT, device: torch.device) -> Layout:
    """The :class:`~monarchpc.kernels.hclt.Layout` of ``model`` on ``device`` (cached)."""
    cached = _LAYOUTS.setdefault(model, {})
    if device in cached:
        return cached[device]
    d, h = model.num_vars, model.hidden_size
    parent_local = model.parent_local.cpu().numpy()
    parent = np.full(d, -1, dtype=np.int64)
    for (s, e), (above, _) in zip(model.levels[1:], model.levels, strict=False):
        parent[s:e] = above + parent_local[s:e]
    child_idx = np.argsort(parent[1:], kind="stable") + 1  # children grouped by parent
    child_ptr = np.concatenate([[0], np.cumsum(np.bincount(parent[1:], minlength=d))])
    base = np.cumsum([0] + [w.numel() for w in model.leaves])
    offset = np.zeros(d, dtype=np.int64)
    vocab = np.zeros(d, dtype=np.int32)
    for parts in model.level_groups:
        for g, start, stop, row in parts:
            size = model.leaves[g].shape[-1]
            rows = row + (0 if model.tied else np.arange(stop - start))
            offset[start:stop] = base[g] + rows * h * size
            vocab[start:stop] = size

    def put(a: np.ndarray, dtype: torch.dtype) -> Tensor:
        return torch.as_tensor(a).to(device=device, dtype=dtype)

    cached[device] = Layout(
        list(model.levels), put(parent, torch.int64), put(child_ptr, torch.int32),
        put(child_idx, torch.int32), put(offset, torch.int64), put(vocab, torch.int32), h)
    return cached[device]


def leaf_tables(model: HCLT, transpose: Callable[[Tensor, Tensor], None] = leaf_table_torch
                ) -> Tensor:
    """All leaf tables as one flat fp32 tensor, each (V, h) value-major (a copy, each
    parameter transposed straight into its part by ``transpose``: a ``leaf_table`` of
    :class:`~monarchpc.kernels.hclt.LevelOps`)."""
    sizes = [w.numel() for w in model.leaves]
    flat = torch.empty(sum(sizes), dtype=torch.float32, device=model.root.device)
    for w, part in zip(model.leaves, flat.split(sizes), strict=True):
        transpose(w, part.view(w.shape[0], w.shape[2], w.shape[1]))
    return flat


def internal_values(model: HCLT, x: Tensor, layout: Layout, validate: bool = True) -> Tensor:
    """Rows ``x`` (N, D) as (D, N) int32 in internal order (-1: MISSING).

    With ``validate``, a value outside its variable's vocabulary raises ValueError (as the
    reference does; this waits for the GPU).
    """
    if x.dim() != 2 or x.shape[1] != model.num_vars:
        raise ValueError(f"expected rows (N, {model.num_vars}), got shape {tuple(x.shape)}")
    values = x[:, model.order].t().to(torch.int32).contiguous()
    if validate and bool((values >= layout.vocab[:, None]).any()):
        raise ValueError("a value lies outside its variable's vocabulary (vocab_sizes)")
    return values


def parameters(model: HCLT) -> list[Tensor]:
    """The parameters an E-step gives gradients for: block layers, leaves, root."""
    return [*model.blocks.layers, *model.leaves, model.root]


@torch.no_grad()
def hclt_estep(model: HCLT, x: Tensor, precision: Precision | str = FP32, grad: bool = True,
               kernels: str = "auto") -> Tensor:
    """Log-likelihood (N,) (nats) of rows ``x`` (N, D); adds d log p.sum() / d theta into
    every parameter's ``.grad``, as autograd on ``model.log_likelihood(x).sum()`` would.

    Entries MISSING (-1) are marginalized out. ``grad=False`` only scores. ``precision``:
    the block products' operands (fp32, tf32, bf16 or fp16). ``kernels``: the per-level
    element-wise work in ``triton``, ``torch`` or ``auto`` (Triton on a GPU).
    """
    if not grad:
        return estep(model, x, precision, None, kernels)
    return into_grads(lambda grads: estep(model, x, precision, grads, kernels),
                      parameters(model), x.device)


def estep(model: HCLT, x: Tensor, precision: Precision | str = FP32,
          grads: list[Tensor] | None = None, kernels: str = "auto", validate: bool = True
          ) -> Tensor:
    """:func:`hclt_estep` on explicit buffers: returns log p (N,) and adds d log p.sum() /
    d theta into ``grads`` (fp32 tensors shaped as :func:`parameters`; None: only scores).
    Runs under ``precision.products()`` (torch's TF32 switch for cuBLAS).

    With ``validate=False`` the values of ``x`` are not checked (nothing waits for the GPU).
    """
    precision = Precision.of(precision)
    with precision.products():
        return _estep(model, x, precision, grads, kernels, validate)


def _estep(model: HCLT, x: Tensor, precision: Precision, grads: list[Tensor] | None,
           kernels: str, validate: bool) -> Tensor:
    dtype, dev = precision.dtype, x.device
    layout = tree_layout(model, dev)
    ops = level_ops(kernels, dev)
    values = internal_values(model, x, layout, validate)
    blocks, levels = model.blocks, layout.levels
    d, h, n, k = model.num_vars, model.hidden_size, x.shape[0], len(blocks.layers)
    tables = leaf_tables(model, ops.leaf_table)

    def state() -> Tensor:
        return torch.empty(d, h, n, dtype=dtype, device=dev)

    every_edge = HiddenMajor(blocks, precision)  # the weights cast to the operand type once

    def edges(start: int, stop: int) -> HiddenMajor:
        """The blocks of the edges into nodes start..stop-1 (the edge into v is block v - 1)."""
        return every_edge.part(start - 1, stop - 1)

    # Bottom-up: u, s of every node; X[l] holds layer l's inputs (l < k - 1; layer k - 1
    # reads u) and m the messages (layer 0's outputs).
    u, m, inputs = state(), state(), [state() for _ in range(k - 1)]
    s = torch.zeros(d, n, dtype=torch.float32, device=dev)
    for lvl in reversed(range(len(levels))):
        start, stop = levels[lvl]
        ops.product(layout, start, stop, values, tables, m, s, u)
        if lvl == 0:
            break
        y, level = u[start:stop], edges(start, stop)
        for l in reversed(range(k)):
            y = level.apply(l, y, out=(inputs[l - 1] if l > 0 else m)[start:stop])
    tiny = torch.finfo(torch.float32).tiny
    root = model.root.detach().float()
    u_root = u[0].float()  # (h, N): u[0] itself in fp32, so it goes before u is freed
    dot = (root @ u_root).clamp_min(tiny)  # (N,)
    log_likelihood = dot.log() + s[1:].clamp_min(tiny).log().sum(0)
    if grads is None:
        return log_likelihood
    layer_grads, leaf_grads, root_grad = grads[:k], grads[k:-1], grads[-1]
    root_grad.add_((u_root / dot).sum(1))  # d log p / d root
    del u_root

    # Top-down: w of a level's nodes in one buffer; a_c replaces m_c (posterior kernel),
    # a_{l+1} replaces X_l once layer l's gradient is taken; leaf flows replace the tables.
    w = torch.empty(max(e - s_ for s_, e in levels), h, n, dtype=dtype, device=dev)
    w[0] = (root[:, None] / dot).to(dtype)
    flows = tables.zero_()
    for lvl, (start, stop) in enumerate(levels):
        ops.posterior(layout, start, stop, values, flows, w, u, m)
        if lvl + 1 == len(levels):
            break
        start, stop = levels[lvl + 1]
        a, level = m[start:stop], edges(start, stop)
        for l in range(k):
            x_l = (inputs[l] if l < k - 1 else u)[start:stop]
            a = level.backward(l, layer_grads[l][start - 1:stop - 1], a, x_l,
                               out=x_l if l < k - 1 else w[: stop - start])
    # free the states (and the views of them) before the leaf gradients' temporaries
    del u, m, inputs, w
    y = a = x_l = None

    # Leaves: d log p / d theta = flows / theta.
    sizes = [p.numel() for p in model.leaves]
    for param, f, g in zip(model.leaves, flows.split(sizes), leaf_grads, strict=True):
        ops.leaf_grad(f.view(param.shape[0], param.shape[2], param.shape[1]), param, g)
    return log_likelihood


def fused_hclt_estep(model: HCLT, device: torch.device, precision: Precision | str = FP32,
                     graphs: str | bool = "auto") -> Callable[[Tensor], Tensor]:
    """The training E-step x (N, D) -> log p (N,): :func:`hclt_estep` in ``precision``,
    replayed from CUDA graphs when ``graphs`` is true or ``auto`` on a GPU (an HCLT runs a
    few kernels per level of its tree, too short to hide their launches)."""
    if graphs not in ("auto", True, False):
        raise ValueError(f"graphs must be auto, true or false, got {graphs!r}")
    precision = Precision.of(precision)
    if graphs == "auto":
        graphs = device.type == "cuda"
    if graphs:
        if device.type != "cuda":
            raise ValueError("CUDA graphs need a GPU; set graphs to auto or false")

        def check(x: Tensor) -> None:
            internal_values(model, x, tree_layout(model, x.device))

        return CapturedEStep(
            lambda x, grads: estep(model, x, precision, grads, validate=False),
            parameters(model), lambda x: hclt_estep(model, x, precision), check)
    return lambda x: hclt_estep(model, x, precision)
