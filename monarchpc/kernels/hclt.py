"""The element-wise halves of the fused HCLT E-step: Triton kernels and their PyTorch twins.

The HCLT (:mod:`monarchpc.circuits.hclt`) is evaluated level by level of its tree. Between
the sum-block products (:mod:`monarchpc.kernels.monarch`), two operations run once per
level, each as one kernel over all nodes of the level (all values in linear space):

* ``product`` (bottom-up): the product node of every node v of the level,
      u[v] = leaf_v[:, x_v] * prod_{c child of v} m[c] / s[c],    s[v] = max_i u[v][i],
  where m[c] = M_c u[c] is the message of child c (its sum block applied to its u) and s
  its column maxima, so every factor lies in [0, 1] and nothing overflows. A MISSING
  value (-1) has leaf value 1.
* ``posterior`` (top-down): the posterior F = w[v] * u[v] of every node of the level is
  added to the leaf flows (``flows[table_v][:, x_v] += F``), and every child c gets the
  input of its sum block's backward pass, a[c] = F / m[c], written over m[c].

States are tensors (D, h, N) (node, hidden, column) in internal breadth-first order,
hidden-major with unit column stride; ``w`` holds the level's nodes only (n_level, h, N).
Leaf tables are one flat fp32 tensor; node v's table starts at ``table_offset[v]`` and
is stored value-major, (V_v, h), so the h leaf values of one column are contiguous (the
gathers and the flows' atomic adds are coalesced). Both implementations give the same
values (products in another order); the PyTorch one is the reference and the CPU fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from monarchpc.kernels import choose, triton

if triton is not None:
    import triton.language as tl


@dataclass(frozen=True)
class Layout:
    """Where the nodes of an HCLT lie: internal positions 0..D-1 (root 0), level by level.

    ``levels``: [start, stop) of every depth. ``parent``: (D,) int64 position of each
    node's parent (-1 at the root). ``child_ptr`` (D + 1,) / ``child_idx`` (D - 1,) int32:
    the children of v are ``child_idx[child_ptr[v]:child_ptr[v + 1]]``. ``table_offset``
    (D,) int64 and ``vocab`` (D,) int32: node v's leaf table (V_v, h) in the flat tables.
    """

    levels: list[tuple[int, int]]
    parent: Tensor
    child_ptr: Tensor
    child_idx: Tensor
    table_offset: Tensor
    vocab: Tensor
    hidden_size: int


# ---- PyTorch reference -------------------------------------------------------------------

def leaf_index(layout: Layout, start: int, stop: int,
               x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Flat table indices (n, h, N) of the leaf values of nodes start..stop-1, and where
    a column holds a value of the vocabulary / is MISSING (n, 1, N). ``x``: (D, N) values.

    A value outside the vocabulary is neither (probability 0), as in the Triton kernels.
    """
    xs = x[start:stop, None, :].long()
    vocab = layout.vocab[start:stop, None, None]
    rows = torch.arange(layout.hidden_size, device=x.device)[None, :, None]
    index = (layout.table_offset[start:stop, None, None]
             + torch.minimum(xs.clamp_min(0), vocab - 1) * layout.hidden_size + rows)
    return index, (xs >= 0) & (xs < vocab), xs < 0


def product_torch(layout: Layout, start: int, stop: int, x: Tensor, tables: Tensor,
                  m: Tensor, s: Tensor, u: Tensor) -> None:
    """u[start:stop] and s[start:stop] of one level (see the module docstring).

    x: (D, N) int values, -1 MISSING; tables: flat fp32; m, u: (D, h, N); s: (D, N) fp32.
    """
    index, present, missing = leaf_index(layout, start, stop, x)
    value = torch.where(present, tables[index], missing.float())  # (n, h, N) fp32
    c0, c1 = int(layout.child_ptr[start]), int(layout.child_ptr[stop])
    if c1 > c0:  # children lie in the next level, contiguous, grouped by parent
        children = layout.child_idx[c0:c1].long()
        tiny = torch.finfo(torch.float32).tiny
        factors = m[children].float() / s[children, None, :].clamp_min(tiny)
        into = (layout.parent[children] - start)[:, None, None].expand_as(factors)
        value.scatter_reduce_(0, into, factors, "prod")
    u[start:stop] = value.to(u.dtype)
    s[start:stop] = value.amax(1)


def posterior_torch(layout: Layout, start: int, stop: int, x: Tensor, flows: Tensor,
                    w: Tensor, u: Tensor, m: Tensor) -> None:
    """Leaf flows of one level and a[c] = F / m[c] over m[c] of its children.

    w: (n_level, h, N) (the level's nodes); u, m: (D, h, N); flows: flat fp32, as the tables.
    """
    posterior = w[: stop - start].float() * u[start:stop].float()
    index, present, _ = leaf_index(layout, start, stop, x)
    present = present.expand_as(index)
    flows.index_add_(0, index[present], posterior[present])
    c0, c1 = int(layout.child_ptr[start]), int(layout.child_ptr[stop])
    if c1 > c0:
        children = layout.child_idx[c0:c1].long()
        msg = m[children].float()
        a = posterior[layout.parent[children] - start] / torch.where(msg > 0, msg, 1.0)
        m[children] = torch.where(msg > 0, a, 0.0).to(m.dtype)


# ---- Triton kernels ----------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _tile(h, n, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr):
        """Rows, columns, mask and int64 offsets (BLOCK_H, BLOCK_N) of this program's tile."""
        rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        cols = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = (rows < h)[:, None] & (cols < n)[None, :]
        offsets = rows.to(tl.int64)[:, None] * n + cols[None, :]
        return rows, cols, mask, offsets

    @triton.jit
    def _leaf_offsets(x_ptr, offset_ptr, vocab_ptr, v, rows, cols, mask, h, n):
        """Flat table offsets of leaf_v[rows, x_v[cols]] (contiguous along rows), where a
        value is present, and where it is MISSING."""
        xv = tl.load(x_ptr + v * n + cols, mask=cols < n, other=-1)
        present = mask & (xv >= 0)[None, :] & (xv < tl.load(vocab_ptr + v))[None, :]
        offsets = (tl.load(offset_ptr + v) + tl.maximum(xv, 0).to(tl.int64)[None, :] * h
                   + rows[:, None])
        return offsets, present, (xv < 0)[None, :]

    @triton.jit
    def _product_kernel(x_ptr, table_ptr, offset_ptr, vocab_ptr, child_ptr, child_idx,
                        m_ptr, s_ptr, u_ptr, start, h, n,
                        BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr):
        v = (start + tl.program_id(0)).to(tl.int64)
        rows, cols, mask, offsets = _tile(h, n, BLOCK_H, BLOCK_N)
        leaf, present, missing = _leaf_offsets(x_ptr, offset_ptr, vocab_ptr, v, rows, cols,
                                               mask, h, n)
        value = tl.where(missing & mask, 1.0, tl.load(table_ptr + leaf, mask=present, other=0.0))
        for k in range(tl.load(child_ptr + v), tl.load(child_ptr + v + 1)):
            c = tl.load(child_idx + k).to(tl.int64)
            msg = tl.load(m_ptr + c * h * n + offsets, mask=mask, other=0.0).to(tl.float32)
            scale = tl.load(s_ptr + c * n + cols, mask=cols < n, other=1.0)
            value = value * (msg / tl.maximum(scale, 1.1754943508222875e-38)[None, :])
        tl.store(u_ptr + v * h * n + offsets, value.to(u_ptr.dtype.element_ty), mask=mask)
        tl.atomic_max(s_ptr + v * n + cols, tl.max(value, axis=0), mask=cols < n,
                      sem="relaxed")

    @triton.jit
    def _posterior_kernel(x_ptr, offset_ptr, vocab_ptr, flow_ptr, child_ptr,
                          child_idx, w_ptr, u_ptr, m_ptr, start, h, n,
                          BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr):
        j = tl.program_id(0).to(tl.int64)
        v = start + j
        rows, cols, mask, offsets = _tile(h, n, BLOCK_H, BLOCK_N)
        w = tl.load(w_ptr + j * h * n + offsets, mask=mask, other=0.0).to(tl.float32)
        posterior = w * tl.load(u_ptr + v * h * n + offsets, mask=mask, other=0.0).to(tl.float32)
        leaf, present, _ = _leaf_offsets(x_ptr, offset_ptr, vocab_ptr, v, rows, cols, mask, h,
                                         n)
        tl.atomic_add(flow_ptr + leaf, posterior, mask=present, sem="relaxed")
        for k in range(tl.load(child_ptr + v), tl.load(child_ptr + v + 1)):
            c = tl.load(child_idx + k).to(tl.int64)
            msg = tl.load(m_ptr + c * h * n + offsets, mask=mask, other=0.0).to(tl.float32)
            a = tl.where(msg > 0, posterior / tl.where(msg > 0, msg, 1.0), 0.0)
            tl.store(m_ptr + c * h * n + offsets, a.to(m_ptr.dtype.element_ty), mask=mask)


    @triton.jit
    def _leaf_tile(h, vocab, BLOCK_H: tl.constexpr, BLOCK_V: tl.constexpr):
        """This program's table offset (grid axis 0), BLOCK_H rows (axis 1) and BLOCK_V
        values (axis 2) of an (h, V) leaf table, and the (rows, values) mask."""
        t = tl.program_id(0).to(tl.int64) * h * vocab
        rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        words = tl.program_id(2) * BLOCK_V + tl.arange(0, BLOCK_V)
        return t, rows, words, (rows < h)[:, None] & (words < vocab)[None, :]

    @triton.jit
    def _leaf_grad_kernel(f_ptr, p_ptr, g_ptr, h, vocab, BLOCK_H: tl.constexpr,
                          BLOCK_V: tl.constexpr):
        # one table: grad (h, V) += flows^T / max(param, tiny), flows stored (V, h); each
        # operand is read along its contiguous axis and the tile transposed on chip
        t, rows, words, mask = _leaf_tile(h, vocab, BLOCK_H, BLOCK_V)
        f = tl.load(f_ptr + t + words[:, None] * h + rows[None, :], mask=tl.trans(mask),
                    other=0.0)
        hv = t + rows[:, None] * vocab + words[None, :]
        p = tl.load(p_ptr + hv, mask=mask, other=1.0)
        g = tl.load(g_ptr + hv, mask=mask, other=0.0)
        tl.store(g_ptr + hv, g + tl.trans(f) / tl.maximum(p, 1.1754943508222875e-38), mask=mask)


    @triton.jit
    def _leaf_table_kernel(p_ptr, t_ptr, h, vocab, BLOCK_H: tl.constexpr,
                           BLOCK_V: tl.constexpr):
        # one table: out (V, h) = param (h, V) transposed, in fp32, both along their rows
        t, rows, words, mask = _leaf_tile(h, vocab, BLOCK_H, BLOCK_V)
        p = tl.load(p_ptr + t + rows[:, None] * vocab + words[None, :], mask=mask, other=0.0)
        tl.store(t_ptr + t + words[:, None] * h + rows[None, :],
                 tl.trans(p).to(tl.float32), mask=tl.trans(mask))


def _grid(nodes: int, h: int, n: int) -> tuple[tuple[int, int, int], int, int]:
    """Launch grid (nodes, row blocks, column blocks) and tile sizes (about 4096 values)."""
    block_n = min(128, max(16, triton.next_power_of_2(n)))
    block_h = min(max(16, triton.next_power_of_2(h)), 4096 // block_n)
    return (nodes, triton.cdiv(h, block_h), triton.cdiv(n, block_n)), block_h, block_n


def _check(*states: Tensor) -> None:
    for t in states:
        if not t.is_contiguous():
            raise ValueError("HCLT kernels need contiguous (nodes, h, N) states")


def product_triton(layout: Layout, start: int, stop: int, x: Tensor, tables: Tensor,
                   m: Tensor, s: Tensor, u: Tensor) -> None:
    """:func:`product_torch` as one Triton kernel; ``s[start:stop]`` must hold zeros."""
    _check(m, s, u, x)
    h, n = layout.hidden_size, u.shape[-1]
    grid, block_h, block_n = _grid(stop - start, h, n)
    _product_kernel[grid](x, tables, layout.table_offset, layout.vocab, layout.child_ptr,
                          layout.child_idx, m, s, u, start, h, n,
                          BLOCK_H=block_h, BLOCK_N=block_n)


def posterior_triton(layout: Layout, start: int, stop: int, x: Tensor, flows: Tensor,
                     w: Tensor, u: Tensor, m: Tensor) -> None:
    """:func:`posterior_torch` as one Triton kernel (leaf flows by atomic adds)."""
    _check(w, u, m, x)
    h, n = layout.hidden_size, u.shape[-1]
    grid, block_h, block_n = _grid(stop - start, h, n)
    _posterior_kernel[grid](x, layout.table_offset, layout.vocab, flows,
                            layout.child_ptr, layout.child_idx, w, u, m, start, h, n,
                            BLOCK_H=block_h, BLOCK_N=block_n)


def _leaf_grid(param: Tensor) -> tuple[int, int, int]:
    """Programs of the leaf kernels for a parameter (n, h, V): (tables, 64-row blocks,
    32-value blocks)."""
    n, h, vocab = param.shape
    return n, triton.cdiv(h, 64), triton.cdiv(vocab, 32)


def leaf_table_torch(param: Tensor, out: Tensor) -> None:
    """out (n, V, h) fp32 = one leaf parameter (n, h, V), value-major (a copy)."""
    out.copy_(param.detach().transpose(1, 2))


def leaf_table_triton(param: Tensor, out: Tensor) -> None:
    """:func:`leaf_table_torch` as one Triton kernel of 64 x 32 tiles transposed on chip
    (a contiguous parameter; others go to the twin)."""
    if not param.is_contiguous() or not out.is_contiguous():
        leaf_table_torch(param, out)
        return
    _leaf_table_kernel[_leaf_grid(param)](param.detach(), out, *param.shape[1:], BLOCK_H=64,
                                          BLOCK_V=32)


def leaf_grad_torch(flows: Tensor, param: Tensor, grad: Tensor) -> None:
    """grad += flows / param for one leaf parameter (n, h, V) (param clamped to the
    smallest normal float); flows: the same tables value-major, (n, V, h), fp32."""
    tiny = torch.finfo(torch.float32).tiny
    grad.addcdiv_(flows.transpose(1, 2), param.detach().float().clamp_min(tiny))


def leaf_grad_triton(flows: Tensor, param: Tensor, grad: Tensor) -> None:
    """:func:`leaf_grad_torch` as one Triton kernel: 64 x 32 tiles, each operand read along
    its contiguous axis (the PyTorch twin reads the flows across theirs and makes a clamped
    copy of the parameter). Operands other than contiguous fp32 go to the twin."""
    if any(t.dtype != torch.float32 or not t.is_contiguous() for t in (flows, param, grad)):
        leaf_grad_torch(flows, param, grad)
        return
    _leaf_grad_kernel[_leaf_grid(param)](flows, param.detach(), grad, *param.shape[1:],
                                         BLOCK_H=64, BLOCK_V=32)


@dataclass(frozen=True)
class LevelOps:
    """The per-level element-wise operations of one HCLT E-step (see the module docstring),
    the leaves' value-major tables and their gradients from their flows."""

    name: str
    product: Callable[..., None]
    posterior: Callable[..., None]
    leaf_table: Callable[..., None]
    leaf_grad: Callable[..., None]


def level_ops(kind: str, device: torch.device) -> LevelOps:
    """``kind``: ``triton``, ``torch`` or ``auto`` (Triton on a GPU, PyTorch on a CPU)."""
    if choose(kind, device) == "triton":
        return LevelOps("triton", product_triton, posterior_triton, leaf_table_triton,
                        leaf_grad_triton)
    return LevelOps("torch", product_torch, posterior_torch, leaf_table_torch, leaf_grad_torch)

