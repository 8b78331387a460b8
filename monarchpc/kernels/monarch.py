"""Monarch layer products on hidden-major states: the matrix work of every fused E-step.

A state holds h = b_0 * ... * b_{k-1} values for each of N columns (batch rows), stored
hidden-major, (b_0, ..., b_{k-1}, N) with unit column stride; with E stacked blocks (the
edges of an HCLT level) it is (E, b_0, ..., b_{k-1}, N). A Monarch layer that mixes axis
a sees the state as (E, pre, b, post, N) with pre = b_0 ... b_{a-1}, b = b_a and
post = b_{a+1} ... b_{k-1}, and holds one b x b block per (e, pre, post) index:

    out[e, p, :, q, :] = W[e, p, q] @ x[e, p, :, q, :]        (W^T with ``transpose``)

The weight gradient of a layer sums, over K columns (a whole segment of steps),

    grad[e, p, q] += a[e, p, :, q, :] @ x[e, p, :, q, :]^T

and a layer's backward step over the same columns (the HCLT's) is that gradient followed
by the transposed product of ``a`` (:func:`backward_product`), fused into one pass over
a and x where that was measured faster.

Values are in linear space. Two implementations compute the same values:

* the PyTorch twins :func:`layer_product` and :func:`grad_product`: batched matrix
  products (cuBLAS) over strided views; a state whose (pre, post) strides do not flatten
  into one batch dimension (the middle layers of k >= 3) costs a copy in and out;
* the Triton kernels :func:`layer_product_triton`, :func:`grad_product_triton` and
  :func:`backward_product_triton`: one program per tile of blocks reads its inputs and
  writes its outputs through their strides (no copies), multiplying on tensor cores with
  fp32 accumulation.

Why per layer and not all k layers in one kernel: a layer moves 2 states + its weights
(Monarch-3 64^3, 2^18, N = 128, bf16: 64 + 32 + 64 MB), so its time is memory traffic, and
fusing layers would only save re-reading the intermediates. But fusing layers d and d+1
needs a whole (b_d, b_{d+1}) sub-cube of the state per column tile on chip (64 x 64 x 16
columns in fp32 is 256 KB, a whole SM's registers), and narrower column tiles re-read
the weights once per tile; three of the E-step's four products must write every
intermediate anyway (recomputed layer inputs, transposed vectors for the gradients), and
at small h the state stays in L2 between layers.

:func:`monarch_products` picks the implementation (``auto``: Triton on a GPU for k >= 3,
where the twins copy; cuBLAS otherwise, already at its ceiling for large blocks).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from monarchpc.kernels import choose, interpreting

try:  # Triton ships with CUDA builds of torch; on a CPU it runs under TRITON_INTERPRET=1
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without Triton
    triton = None

# ---- PyTorch twins -----------------------------------------------------------------------


def _blocks(t: Tensor) -> Tensor:
    """A (E, pre, b, post, N) view as (E * pre * post, b, N) (a copy if strides forbid)."""
    e, pre, b, post, n = t.shape
    return t.permute(0, 1, 3, 2, 4).reshape(e * pre * post, b, n)


def _block_view(t: Tensor) -> Tensor | None:
    """A (E, pre, b, post, N) tensor as a (E * pre * post, b, N) view, or None if impossible."""
    e, pre, b, post, n = t.shape
    try:
        return t.permute(0, 1, 3, 2, 4).view(e * pre * post, b, n)
    except RuntimeError:
        return None


def layer_product(w: Tensor, x: Tensor, out: Tensor | None = None,
                  transpose: bool = False) -> Tensor:
    """W @ x per block (or W^T @ x); see the module docstring.

    w: (E, pre, post, b, b); x, out: (E, pre, b, post, N), any strides, unit column stride.
    Returns ``out`` (written in place, directly where its strides flatten) or a new tensor
    of x's dtype (a permuted view of the batched product's output). fp32 products follow
    torch's TF32 switch, which the E-step's :class:`~monarchpc.learning.precision.Precision`
    sets while it runs (the Triton kernels take it as their ``tf32`` argument instead).
    """
    e, pre, post, b, _ = w.shape
    n = x.shape[-1]
    w3 = w.reshape(e * pre * post, b, b).to(x.dtype)
    if transpose:  # a transposed view: cuBLAS reads it as it is (no copy of the weights)
        w3 = w3.transpose(1, 2)
    target = _block_view(out) if out is not None else None
    if target is not None:
        torch.bmm(w3, _blocks(x), out=target)
        return out
    result = torch.bmm(w3, _blocks(x)).view(e, pre, post, b, n).permute(0, 1, 3, 2, 4)
    if out is None:
        return result
    out.copy_(result)
    return out


def _add_products(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """acc (B, m, n) fp32 += a (B, m, K) @ b (B, K, n), accumulating in fp32."""
    if a.dtype == acc.dtype:
        acc.baddbmm_(a, b)
        return
    if acc.is_cuda:  # 16-bit operands, fp32 output straight from cuBLAS
        try:
            torch.baddbmm(acc, a, b, out_dtype=acc.dtype, out=acc)
            return
        except (RuntimeError, TypeError):  # a torch without out_dtype: as on the CPU
            pass
    for i in range(0, acc.shape[0], 64):  # operands in fp32, 64 blocks at a time
        acc[i:i + 64].baddbmm_(a[i:i + 64].to(acc.dtype), b[i:i + 64].to(acc.dtype))


def grad_product(grad: Tensor, a: Tensor, x: Tensor) -> Tensor:
    """grad (E, pre, post, b, b) fp32 += a @ x^T per block, summed over K columns.

    a, x: (E, pre, b, post, K) in the compute dtype. Returns ``grad``.
    """
    e, pre, post, b, _ = grad.shape
    _add_products(grad.view(e * pre * post, b, b), _blocks(a), _blocks(x).transpose(1, 2))
    return grad


def backward_product(w: Tensor, grad: Tensor, a: Tensor, x: Tensor, out: Tensor) -> Tensor:
    """A layer's backward step: grad += a @ x^T per block (summed over the N columns), then
    out = W^T @ a per block. ``out`` may be ``x`` itself (the input is overwritten).

    w: (E, pre, post, b, b); grad: the same shape, fp32; a, x, out: (E, pre, b, post, N).
    Returns ``out``.
    """
    grad_product(grad, a, x)
    return layer_product(w, a, out, transpose=True)


# ---- Triton kernels ----------------------------------------------------------------------


@dataclass(frozen=True)
class Tiles:
    """Tile sizes of a Triton product: ``bq`` blocks (consecutive in (E, pre, post)) per program,
    ``bi`` x ``bj`` of each block (output rows x inner index; for the weight gradient both
    are block indices), ``bn`` columns per step (the gradient's K chunk), ``warps`` and
    pipeline ``stages`` of the kernel."""

    bq: int
    bi: int
    bj: int
    bn: int
    warps: int = 4
    stages: int = 3


def default_tiles(b: int, blocks: int, n: int) -> Tiles:
    """Whole blocks up to 64 (in 16-wide steps), several small blocks per program (64 rows;
    under the interpreter, whose cost is per program, 64 blocks), up to 128 columns."""
    bb = min(64, max(16, _pow2(b)))
    bq = min(64 if interpreting() else max(1, 64 // bb), _pow2(blocks))
    return Tiles(bq=bq, bi=bb, bj=bb, bn=min(128, max(16, _pow2(n))))


# The stacked-row passes (whole blocks of up to 64 stacked into 32- or 64-row tiles, see
# _rows_settings): the blocks they take by default, where they measured faster than the
# tiles above (docs/performance.md), and how many programs they aim at.
STACKED_ROWS_BLOCKS = range(17, 65)
ROWS_PROGRAMS = 528  # about 4 programs per SM (an H200 has 132)


def _pow2(v: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(v, 1))))


if triton is not None:

    @triton.jit
    def _block_tile(ptr, e, p, q, rows, cols, se, sp, sb, sq):
        """Pointers (BQ, R, C) to rows x cols of blocks (e, p, q) of a (E, pre, b, post, N)
        tensor with strides (se, sp, sb, sq, 1)."""
        block = e.to(tl.int64) * se + p.to(tl.int64) * sp + q.to(tl.int64) * sq
        return ptr + block[:, None, None] + rows.to(tl.int64)[None, :, None] * sb \
            + cols[None, None, :]

    @triton.jit
    def _block_index(r, pre, post):
        """Block r = (e * pre + p) * post + q -> (e, p, q)."""
        ep = r // post
        return ep // pre, ep % pre, r % post

    @triton.jit
    def _block_ids(pid, pre, post, blocks, BQ: tl.constexpr):
        """Program ``pid`` -> its BQ blocks r = (e * pre + p) * post + q: (r, e, p, q, mask)."""
        r = pid * BQ + tl.arange(0, BQ)
        e, p, q = _block_index(r, pre, post)
        return r, e, p, q, r < blocks

    @triton.jit
    def _program_tile(pre, post, blocks, BQ: tl.constexpr, BI: tl.constexpr,
                      BC: tl.constexpr):
        """This program's BQ blocks (r, e, p, q, mask: :func:`_block_ids`, grid axis 0), its
        BI block rows (axis 1) and its BC columns or block columns (axis 2)."""
        r, e, p, q, qmask = _block_ids(tl.program_id(0), pre, post, blocks, BQ)
        return (r, e, p, q, qmask, tl.program_id(1) * BI + tl.arange(0, BI),
                tl.program_id(2) * BC + tl.arange(0, BC))

    @triton.jit
    def _round_tf32(x):
        """fp32 ``x`` rounded to the nearest TF32 value (10 mantissa bits, ties away from 0)."""
        bits = x.to(tl.uint32, bitcast=True)
        return ((bits + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)

    @triton.jit
    def _dot(a, b, acc, PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
        """acc + a @ b (2D, or 3D batched) with fp32 accumulation; one block as a 2D product
        (the common path, warp-group MMA on Hopper). TF32 operands are rounded to nearest
        first: the tensor cores truncate fp32 inputs, which made every product a little low
        (biasing every log-likelihood low; cuBLAS rounds)."""
        if PRECISION == "tf32" and a.dtype == tl.float32:
            a, b = _round_tf32(a), _round_tf32(b)
        if INTERPRET:  # the interpreter's dot mishandles 16-bit floats: the same in fp32
            a, b = a.to(tl.float32), b.to(tl.float32)
        if len(a.shape) == 2:
            return tl.dot(a, b, acc, input_precision=PRECISION)
        if a.shape[0] == 1:
            a2 = tl.reshape(a, (a.shape[1], a.shape[2]))
            b2 = tl.reshape(b, (b.shape[1], b.shape[2]))
            acc2 = tl.reshape(acc, (acc.shape[1], acc.shape[2]))
            return tl.reshape(tl.dot(a2, b2, acc2, input_precision=PRECISION), acc.shape)
        return tl.dot(a, b, acc, input_precision=PRECISION)

    @triton.jit
    def _block_product(w_ptr, x_ptr, r, e, p, q, qmask, i, cols, b, n, swi, swj,
                       sxe, sxp, sxb, sxq, BQ: tl.constexpr, BI: tl.constexpr,
                       BJ: tl.constexpr, BN: tl.constexpr, PRECISION: tl.constexpr,
                       INTERPRET: tl.constexpr):
        """(BQ, BI, BN) fp32: rows ``i`` of W (or W^T: strides swi, swj) @ x, columns ``cols``,
        for the blocks (r, e, p, q) of :func:`_block_ids`."""
        w_rows = w_ptr + (r.to(tl.int64) * b * b)[:, None, None] + i[None, :, None] * swi
        x_mask = qmask[:, None, None] & (cols < n)[None, None, :]
        acc = tl.zeros((BQ, BI, BN), dtype=tl.float32)
        for j0 in range(0, b, BJ):
            j = j0 + tl.arange(0, BJ)
            w = tl.load(w_rows + j[None, None, :] * swj, other=0.0,
                        mask=qmask[:, None, None] & (i < b)[None, :, None] & (j < b)[None, None, :])
            x = tl.load(_block_tile(x_ptr, e, p, q, j, cols, sxe, sxp, sxb, sxq),
                        mask=x_mask & (j < b)[None, :, None], other=0.0)
            acc = _dot(w, x, acc, PRECISION, INTERPRET)
        return acc

    @triton.jit
    def _layer_kernel(w_ptr, x_ptr, y_ptr, pre, post, blocks, b, n, swi, swj,
                      sxe, sxp, sxb, sxq, sye, syp, syb, syq,
                      BQ: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr, BN: tl.constexpr,
                      PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
        r, e, p, q, qmask, i, cols = _program_tile(pre, post, blocks, BQ, BI, BN)
        acc = _block_product(w_ptr, x_ptr, r, e, p, q, qmask, i, cols, b, n, swi, swj,
                             sxe, sxp, sxb, sxq, BQ, BI, BJ, BN, PRECISION, INTERPRET)
        y_mask = qmask[:, None, None] & (i < b)[None, :, None] & (cols < n)[None, None, :]
        tl.store(_block_tile(y_ptr, e, p, q, i, cols, sye, syp, syb, syq),
                 acc.to(y_ptr.dtype.element_ty), mask=y_mask)

    @triton.jit
    def _grad_kernel(g_ptr, a_ptr, x_ptr, pre, post, blocks, b, ncols,
                     sae, sap, sab, saq, sxe, sxp, sxb, sxq,
                     BQ: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr,
                     PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
        r, e, p, q, qmask, i, j = _program_tile(pre, post, blocks, BQ, BI, BJ)
        acc = tl.zeros((BQ, BI, BJ), dtype=tl.float32)
        for k0 in range(0, ncols, BK):
            cols = k0 + tl.arange(0, BK)
            cmask = qmask[:, None, None] & (cols < ncols)[None, None, :]
            a = tl.load(_block_tile(a_ptr, e, p, q, i, cols, sae, sap, sab, saq),
                        mask=cmask & (i < b)[None, :, None], other=0.0)
            x = tl.load(_block_tile(x_ptr, e, p, q, j, cols, sxe, sxp, sxb, sxq),
                        mask=cmask & (j < b)[None, :, None], other=0.0)
            acc = _dot(a, tl.permute(x, (0, 2, 1)), acc, PRECISION, INTERPRET)
        g = g_ptr + (r.to(tl.int64) * b * b)[:, None, None] + i[None, :, None] * b \
            + j[None, None, :]
        gmask = qmask[:, None, None] & (i < b)[None, :, None] & (j < b)[None, None, :]
        tl.store(g, tl.load(g, mask=gmask, other=0.0) + acc, mask=gmask)

    @triton.jit
    def _stacked_blocks(blocks, b, BB: tl.constexpr, R: tl.constexpr):
        """This program's R / BB whole blocks (grid axis 0), their rows stacked into one tile:
        tile row rho is row i = rho % BB of block r = pid * R / BB + rho // BB. Returns
        (r, i, valid rows, pair): pair (R, R) marks the tile's (row, row) entries of one
        block, both valid; (R, R) products of such tiles hold the blocks' own products on
        those diagonal (b x b) sub-blocks."""
        rho = tl.arange(0, R)
        r = tl.program_id(0) * (R // BB) + rho // BB
        i = rho % BB
        valid = (r < blocks) & (i < b)
        pair = ((rho // BB)[:, None] == (rho // BB)[None, :]) & valid[:, None] & valid[None, :]
        return r, i, valid, pair

    @triton.jit
    def _block_diagonal(w_ptr, r, i, pair, b, TRANSPOSE: tl.constexpr):
        """The blocks' weights (E * pre * post, b, b) as one block-diagonal (R, R) tile of
        stacked rows: W[r, i(sigma), i(rho)] at (sigma, rho), or W^T with TRANSPOSE."""
        base = w_ptr + (r.to(tl.int64) * b * b)[None, :]
        if TRANSPOSE:
            return tl.load(base + i[None, :] * b + i[:, None], mask=pair, other=0.0)
        return tl.load(base + i[:, None] * b + i[None, :], mask=pair, other=0.0)

    @triton.jit
    def _add_diagonal_blocks(g_ptr, acc, r, i, pair, b, ATOMIC: tl.constexpr):
        """grad (E * pre * post, b, b) fp32 += the diagonal (b x b) sub-blocks of ``acc``
        (R, R), a product of two stacked-row tiles; ``ATOMIC`` where other programs add
        into the same blocks (column ranges of one pass)."""
        g = g_ptr + (r.to(tl.int64) * b * b + i * b)[:, None] + i[None, :]
        if ATOMIC:
            tl.atomic_add(g, acc, mask=pair, sem="relaxed")
        else:
            tl.store(g, tl.load(g, mask=pair, other=0.0) + acc, mask=pair)

    @triton.jit
    def _stacked_rows(ptr, e, p, q, i, valid, cols, n, se, sp, sb, sq):
        """A (rows, columns) tile: row i of block (e, p, q) per row, of a (E, pre, b, post, N)
        tensor with strides (se, sp, sb, sq, 1)."""
        rows = e.to(tl.int64) * se + p.to(tl.int64) * sp + q.to(tl.int64) * sq \
            + i.to(tl.int64) * sb
        return ptr + rows[:, None] + cols[None, :], valid[:, None] & (cols < n)[None, :]

    @triton.jit
    def _rows_pass(w_ptr, g_ptr, a_ptr, x_ptr, y_ptr, pre, post, blocks, b, n, chunk,
                   sae, sap, sab, saq, sxe, sxp, sxb, sxq, sye, syp, syb, syq,
                   BB: tl.constexpr, R: tl.constexpr, BK: tl.constexpr,
                   TRANSPOSE: tl.constexpr, GRAD: tl.constexpr, ATOMIC: tl.constexpr,
                   PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
        """One program's pass over ``chunk`` columns (range grid axis 1; a multiple of BK)
        for R / BB whole blocks, their rows stacked (:func:`_stacked_blocks`), so every
        product is 2D: y = W @ a (W^T with TRANSPOSE) with W loaded block-diagonal, and with
        GRAD grad += the diagonal (b x b) sub-blocks of a @ x^T (``ATOMIC`` when several
        ranges add into one block). Each column tile of a (and x) is read once; y is stored
        after that tile of x was read (so y may be x)."""
        r, i, valid, pair = _stacked_blocks(blocks, b, BB, R)
        e, p, q = _block_index(r, pre, post)
        wt = _block_diagonal(w_ptr, r, i, pair, b, TRANSPOSE)
        acc = tl.zeros((R, R), dtype=tl.float32)
        begin = tl.program_id(1) * chunk
        for k0 in range(begin, tl.minimum(begin + chunk, n), BK):
            cols = k0 + tl.arange(0, BK)
            a_at, mask = _stacked_rows(a_ptr, e, p, q, i, valid, cols, n, sae, sap, sab, saq)
            y_at, _ = _stacked_rows(y_ptr, e, p, q, i, valid, cols, n, sye, syp, syb, syq)
            a = tl.load(a_at, mask=mask, other=0.0)
            if GRAD:
                x_at, _ = _stacked_rows(x_ptr, e, p, q, i, valid, cols, n, sxe, sxp, sxb, sxq)
                acc = _dot(a, tl.trans(tl.load(x_at, mask=mask, other=0.0)), acc, PRECISION,
                           INTERPRET)
            y = _dot(wt, a, tl.zeros((R, BK), dtype=tl.float32), PRECISION, INTERPRET)
            tl.store(y_at, y.to(y_ptr.dtype.element_ty), mask=mask)
        if GRAD:
            _add_diagonal_blocks(g_ptr, acc, r, i, pair, b, ATOMIC)

    @triton.jit
    def _backward_kernel(w_ptr, g_ptr, a_ptr, x_ptr, y_ptr, pre, post, blocks, b, n, chunk,
                         sae, sap, sab, saq, sxe, sxp, sxb, sxq, sye, syp, syb, syq,
                         BB: tl.constexpr, R: tl.constexpr, BK: tl.constexpr,
                         ATOMIC: tl.constexpr, PRECISION: tl.constexpr,
                         INTERPRET: tl.constexpr):
        # a layer's backward step: grad += a x^T, y = W^T a (two entry points to _rows_pass,
        # so that profiles tell backward steps from forward layers by kernel name)
        _rows_pass(w_ptr, g_ptr, a_ptr, x_ptr, y_ptr, pre, post, blocks, b, n, chunk,
                   sae, sap, sab, saq, sxe, sxp, sxb, sxq, sye, syp, syb, syq,
                   BB, R, BK, True, True, ATOMIC, PRECISION, INTERPRET)

    @triton.jit
    def _layer_rows_kernel(w_ptr, a_ptr, y_ptr, pre, post, blocks, b, n, chunk,
                           sae, sap, sab, saq, sye, syp, syb, syq,
                           BB: tl.constexpr, R: tl.constexpr, BK: tl.constexpr,
                           TRANSPOSE: tl.constexpr, PRECISION: tl.constexpr,
                           INTERPRET: tl.constexpr):
        # a layer product y = W a (W^T a) over a range of columns, whole blocks a program
        _rows_pass(w_ptr, w_ptr, a_ptr, a_ptr, y_ptr, pre, post, blocks, b, n, chunk,
                   sae, sap, sab, saq, sae, sap, sab, saq, sye, syp, syb, syq,
                   BB, R, BK, TRANSPOSE, False, False, PRECISION, INTERPRET)


def dot_precision(dtype: torch.dtype, tf32: bool) -> str:
    """tl.dot's ``input_precision``: exact products for fp32 operands unless ``tf32`` (then
    rounded to TF32 first, see ``_dot``); 16-bit operands are exact either way."""
    return "ieee" if dtype == torch.float32 and not tf32 else "tf32"


def _strides(t: Tensor, name: str) -> tuple[int, int, int, int]:
    """(E, pre, b, post) strides of a (E, pre, b, post, N) tensor of unit column stride."""
    if t.stride(-1) != 1 and t.shape[-1] > 1:
        raise ValueError(f"{name} needs unit column stride, got strides {t.stride()}")
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def layer_product_triton(w: Tensor, x: Tensor, out: Tensor | None = None,
                         transpose: bool = False, tiles: Tiles | None = None,
                         stacked: bool = False, tf32: bool = False) -> Tensor:
    """:func:`layer_product` as one Triton kernel (strided reads and writes, no copies).

    w: (E, pre, post, b, b) contiguous; x, out: (E, pre, b, post, N), unit column stride.
    ``stacked``: the blocks are edges of an HCLT level (:func:`monarch_products` binds it):
    blocks in STACKED_ROWS_BLOCKS go to :func:`layer_rows_triton` (unless ``tiles`` are
    given), which measured faster there than this kernel's tiles. Returns ``out``, or a new
    contiguous tensor of x's dtype.
    """
    e, pre, post, b, _ = w.shape
    n = x.shape[-1]
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if stacked and tiles is None and b in STACKED_ROWS_BLOCKS:
        return layer_rows_triton(w, x, out, transpose, tf32=tf32)
    w = w.to(x.dtype).contiguous()
    blocks = e * pre * post
    t = tiles or default_tiles(b, blocks, n)
    grid = (triton.cdiv(blocks, t.bq), triton.cdiv(b, t.bi), triton.cdiv(n, t.bn))
    swi, swj = (1, b) if transpose else (b, 1)
    _layer_kernel[grid](w, x, out, pre, post, blocks, b, n, swi, swj, *_strides(x, "x"),
                        *_strides(out, "out"), BQ=t.bq, BI=t.bi, BJ=t.bj, BN=t.bn,
                        PRECISION=dot_precision(x.dtype, tf32), INTERPRET=interpreting(),
                        num_warps=t.warps, num_stages=t.stages)
    return out


def grad_product_triton(grad: Tensor, a: Tensor, x: Tensor, tiles: Tiles | None = None,
                        tf32: bool = False) -> Tensor:
    """:func:`grad_product` as one Triton kernel: grad (contiguous fp32) += a @ x^T per block."""
    e, pre, post, b, _ = grad.shape
    if grad.dtype != torch.float32 or not grad.is_contiguous():
        raise ValueError("grad must be a contiguous fp32 tensor (E, pre, post, b, b)")
    ncols = a.shape[-1]
    blocks = e * pre * post
    t = tiles or default_tiles(b, blocks, ncols)
    grid = (triton.cdiv(blocks, t.bq), triton.cdiv(b, t.bi), triton.cdiv(b, t.bj))
    _grad_kernel[grid](grad, a, x, pre, post, blocks, b, ncols, *_strides(a, "a"),
                       *_strides(x, "x"),
                       BQ=t.bq, BI=t.bi, BJ=t.bj, BK=t.bn, PRECISION=dot_precision(a.dtype, tf32),
                       INTERPRET=interpreting(), num_warps=t.warps, num_stages=t.stages)
    return grad


def backward_product_triton(w: Tensor, grad: Tensor, a: Tensor, x: Tensor, out: Tensor,
                            fuse: bool | None = None, split: int | None = None,
                            tf32: bool = False) -> Tensor:
    """:func:`backward_product` on Triton: with ``fuse``, one kernel in which each tile of a
    and x is read once for both products (blocks up to 64, stacked into tiles of 32 rows
    for blocks up to 32, else 64; 64 columns a step, 32 for 4-byte operands in 64-row
    tiles); without, the weight-gradient then the layer kernel. None fuses the blocks in
    STACKED_ROWS_BLOCKS, where fusing measured faster. The fused pass splits the columns
    into ``split`` ranges (default: :func:`_rows_settings`), whose programs add their
    gradients atomically. Returns ``out``."""
    e, pre, post, b, _ = w.shape
    if fuse is None:
        fuse = b in STACKED_ROWS_BLOCKS
    if not fuse:
        grad_product_triton(grad, a, x, tf32=tf32)
        return layer_product_triton(w, a, out, transpose=True, tf32=tf32)
    if b > 64:
        raise ValueError(f"the fused backward step takes blocks up to 64, got {b}")
    if grad.dtype != torch.float32 or not grad.is_contiguous():
        raise ValueError("grad must be a contiguous fp32 tensor (E, pre, post, b, b)")
    grid, chunk, tiles = _rows_settings(w, a, split)
    _backward_kernel[grid](
        w.to(a.dtype).contiguous(), grad, a, x, out, pre, post, e * pre * post, b,
        a.shape[-1], chunk, *_strides(a, "a"), *_strides(x, "x"), *_strides(out, "out"),
        ATOMIC=grid[1] > 1, PRECISION=dot_precision(a.dtype, tf32), INTERPRET=interpreting(),
        num_warps=4, num_stages=3, **tiles)
    return out



def _rows_settings(w: Tensor, a: Tensor, split: int | None
                   ) -> tuple[tuple[int, int], int, dict[str, int]]:
    """How a stacked-row pass over the blocks of w (E, pre, post, b, b), b <= 64, walks the
    N columns of a: its grid (row programs, column ranges), the columns of a range, and its
    tiles: BB (b padded), R (rows a program: 32 for blocks up to 32, else 64) and BK
    (columns a step: 64, 32 for 4-byte operands in 64-row tiles). The columns split into
    ``split`` ranges, by default as many as bring the pass to about ROWS_PROGRAMS programs
    (few blocks, as in the small levels of an HCLT, leave most of a GPU idle while each
    program walks all columns), never below one step a range."""
    e, pre, post, b, _ = w.shape
    n = a.shape[-1]
    bb = max(16, _pow2(b))
    rows = 32 if bb <= 32 else 64
    bk = min(32 if rows == 64 and a.element_size() == 4 else 64, max(16, _pow2(n)))
    programs = triton.cdiv(e * pre * post, rows // bb)
    steps = triton.cdiv(n, bk)
    if split is None:
        split = triton.cdiv(ROWS_PROGRAMS, programs)
    chunk = triton.cdiv(steps, max(1, min(split, steps))) * bk
    return (programs, triton.cdiv(n, chunk)), chunk, {"BB": bb, "R": rows, "BK": bk}


def layer_rows_triton(w: Tensor, x: Tensor, out: Tensor, transpose: bool = False,
                      split: int | None = None, tf32: bool = False) -> Tensor:
    """:func:`layer_product` by whole blocks of up to 64 (stacked into tiles of 32 or 64
    rows), each program over a range of columns (``split`` ranges, default:
    :func:`_rows_settings`) with its weights loaded once. Returns ``out``."""
    e, pre, post, b, _ = w.shape
    if b > 64:
        raise ValueError(f"the stacked-row layer product takes blocks up to 64, got {b}")
    grid, chunk, tiles = _rows_settings(w, x, split)
    _layer_rows_kernel[grid](
        w.to(x.dtype).contiguous(), x, out, pre, post, e * pre * post, b, x.shape[-1], chunk,
        *_strides(x, "x"), *_strides(out, "out"), TRANSPOSE=transpose,
        PRECISION=dot_precision(x.dtype, tf32), INTERPRET=interpreting(), num_warps=4, num_stages=3,
        **tiles)
    return out


# ---- Dispatcher --------------------------------------------------------------------------


@dataclass(frozen=True)
class MonarchProducts:
    """The layer and weight-gradient products of one E-step (see the module docstring)."""

    name: str
    layer: Callable[..., Tensor]
    grad: Callable[..., Tensor]
    backward: Callable[..., Tensor]


def monarch_products(kind: str, device: torch.device, factors: Sequence[int],
                     stacked: bool = False, tf32: bool = False) -> MonarchProducts:
    """``kind``: ``triton``, ``torch`` or ``auto``: Triton on a GPU wherever the twins would
    copy states in and out (k = len(factors) >= 3: the middle layers; Monarch blocks of
    several ``stacked`` edges, an HCLT level: the layers mixing a leading axis), cuBLAS for
    dense blocks and a single Monarch-2 block (at its ceiling for large blocks). ``tf32``:
    the Triton kernels round fp32 operands to TF32 (the twins follow torch's switch)."""
    copies = len(factors) >= 3 or (stacked and len(factors) >= 2)
    if choose(kind, device, "products", auto_triton=copies) == "triton":
        bind = functools.partial
        return MonarchProducts("triton", bind(layer_product_triton, stacked=stacked, tf32=tf32),
                               bind(grad_product_triton, tf32=tf32),
                               bind(backward_product_triton, tf32=tf32))
    return MonarchProducts("torch", layer_product, grad_product, backward_product)
