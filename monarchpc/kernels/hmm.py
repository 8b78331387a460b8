"""The element-wise halves of the fused HMM E-step: Triton kernels and their PyTorch twins.

Two operations run once per time step, between the matrix products of
:mod:`monarchpc.learning.hmm_estep` (all values in linear space):

* ``emit``  (right to left): ``out = e * m / s`` and its column sums (N,) fp32, where
  ``e = B[:, tokens]`` is the emission column of every column's token and ``s`` (N,) a
  per-column scale; ``emit_product`` computes ``m`` too, as the last Monarch layer's
  product (:mod:`monarchpc.kernels.monarch`), so that ``m`` never goes to memory;
* ``post``  (left to right): the posterior ``gamma = w * y`` added to the emission flows
  (``flows[:, tokens[n]] += gamma[:, n]``) and the scaled forward vector ``out = w * e / s``
  entering the transition; ``grad_flows`` takes the flows over a whole segment instead,
  inside the weight gradient of the layer that first meets y (which reads the vectors
  that w and y come from), so that ``post`` only writes ``out``.

Hidden states are tensors (b_0, ..., b_{k-1}, N) with unit column stride and any other
strides (slots of a segment buffer, permuted outputs of a batched product); ``as_rows``
views one as (R0, R1, N) with hidden index i = i0 * R1 + i1. The Triton kernels read and
write those views in place, so no state is copied; one pass of each runs per step. Both
implementations give the same values; the PyTorch one is the reference and the fallback
(no Triton, or a vocabulary too large for the in-kernel one-hot product).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from monarchpc.kernels import (  # noqa: F401  (triton_usable re-exported)
    choose,
    interpreting,
    monarch,
    triton_usable,
)

try:  # Triton ships with CUDA builds of torch; on a CPU it runs under TRITON_INTERPRET=1
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without Triton
    triton = None

MAX_TRITON_VOCAB = 128  # the post kernel builds a (columns x vocabulary) one-hot in registers

# Tile choices: each was the fastest of those measured on a GPU (docs/performance.md).
COLUMN_SUM_ROWS = 128        # rows a program of column_sums reduces
EMIT_PRODUCT_MAX_COLUMNS = 64  # columns a program of emit_product (of the layer's tiles)
POST_ROWS = 64               # rows a program of post with flows (fewer below h = 2^14: ~256
POST_ROWS_NO_FLOWS = 16      # programs share the GPU); without flows
POST_COLUMNS, POST_FLOW_COLUMNS = 64, 32  # columns a step for out and for the flows
GRAD_FLOWS_COLUMNS, GRAD_FLOWS_WARPS, GRAD_FLOWS_STAGES = 128, 4, 2


def as_rows(state: Tensor) -> Tensor:
    """A state (b_0, ..., b_{k-1}, N) of unit column stride as a (R0, R1, N) view.

    Adjacent hidden axes whose strides chain are merged; raises ValueError when more
    than two groups remain (the caller then passes a contiguous copy).
    """
    if state.stride(-1) != 1 and state.shape[-1] > 1:
        raise ValueError("states need unit column stride")
    groups: list[list[int]] = []  # [size, stride]
    for size, stride in zip(state.shape[:-1], state.stride()[:-1], strict=True):
        if size == 1:
            continue
        if groups and groups[-1][1] == stride * size:
            groups[-1] = [groups[-1][0] * size, stride]
        else:
            groups.append([size, stride])
    while len(groups) < 2:
        groups.insert(0, [1, 0])
    if len(groups) > 2:
        raise ValueError(f"state of shape {tuple(state.shape)} and strides {state.stride()} "
                         "is not a (R0, R1, N) view")
    (r0, s0), (r1, s1) = groups
    return state.as_strided((r0, r1, state.shape[-1]), (s0, s1, 1))


# ---- PyTorch reference -------------------------------------------------------------------

def emit_torch(m: Tensor, table: Tensor, tokens: Tensor, s: Tensor, out: Tensor) -> Tensor:
    """out = B[:, tokens] * m / s (written into ``out``); returns its column sums (N,) fp32.

    m, out: states (b_0, ..., b_{k-1}, N); table: B (h, V) fp32; tokens (N,); s (N,) fp32.
    """
    y = table[:, tokens].view(m.shape) * m.float() / s
    out.copy_(y)
    return y.sum(dim=tuple(range(y.dim() - 1)))


def post_torch(w: Tensor, y: Tensor, table: Tensor, tokens: Tensor, s: Tensor,
               out: Tensor | None, flows: Tensor | None) -> None:
    """flows[:, tokens] += w * y (fp32) when ``flows`` is given; out = w * B[:, tokens] / s
    when ``out`` is given.

    w, y, out: states (b_0, ..., b_{k-1}, N); table, flows: (h, V) fp32.
    """
    wf = w.float()
    if flows is not None:
        flows.index_add_(1, tokens, (wf * y.float()).reshape(flows.shape[0], -1))
    if out is not None:
        out.copy_(wf * table[:, tokens].view(w.shape) / s)


# ---- Triton kernels ----------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _offsets(rows, cols, r1, s0, s1):
        """int64 element offsets of rows x cols in a (R0, R1, N) view of strides (s0, s1, 1)."""
        rows = rows.to(tl.int64)
        return ((rows // r1) * s0 + (rows % r1) * s1)[:, None] + cols[None, :]

    @triton.jit
    def _emission(table_ptr, rows, tok, vocab, mask):
        """B[rows, tok] as (rows, columns) fp32, from the (h, V) table."""
        return tl.load(table_ptr + rows.to(tl.int64)[:, None] * vocab + tok[None, :], mask=mask,
                       other=0.0)

    @triton.jit
    def _tile(ptr, r1, s0, s1, rows, rmask, start, n, tok_ptr, BLOCK: tl.constexpr):
        """Columns start .. start + BLOCK of ``rows`` of a (R0, R1, N) state view: (columns,
        their mask, the tile's mask, the columns' tokens, the tile in fp32); ``post``'s two
        passes."""
        cols = start + tl.arange(0, BLOCK)
        cmask = cols < n
        mask = rmask[:, None] & cmask[None, :]
        tok = tl.load(tok_ptr + cols, mask=cmask, other=0)
        values = tl.load(ptr + _offsets(rows, cols, r1, s0, s1), mask=mask, other=0.0)
        return cols, cmask, mask, tok, values.to(tl.float32)

    @triton.jit
    def _split_dot(a, onehot, acc, TERMS: tl.constexpr, INTERPRET: tl.constexpr):
        """acc + a @ onehot on tensor cores, ``a`` (fp32) split into TERMS bf16 terms: two
        hold 16 bits of its significand (relative error < 2^-16), three all 24 (exact);
        ``onehot`` (fp32) holds 0s and 1s."""
        hi = a.to(tl.bfloat16)
        rest = a - hi.to(tl.float32)
        mid = rest.to(tl.bfloat16)
        if INTERPRET:  # the interpreter's dot mishandles bf16: the same products in fp32
            acc = tl.dot(hi.to(tl.float32), onehot, acc, input_precision="ieee")
            acc = tl.dot(mid.to(tl.float32), onehot, acc, input_precision="ieee")
            if TERMS == 3:
                lo = (rest - mid.to(tl.float32)).to(tl.bfloat16)
                acc = tl.dot(lo.to(tl.float32), onehot, acc, input_precision="ieee")
            return acc
        onehot = onehot.to(tl.bfloat16)
        acc = tl.dot(hi, onehot, acc)
        acc = tl.dot(mid, onehot, acc)
        if TERMS == 3:
            acc = tl.dot((rest - mid.to(tl.float32)).to(tl.bfloat16), onehot, acc)
        return acc

    @triton.jit
    def _emit_kernel(m_ptr, m_r1, m_s0, m_s1, y_ptr, y_r1, y_s0, y_s1, table_ptr, tok_ptr,
                     s_ptr, part_ptr, h, n, vocab,
                     BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr):
        # its own offsets, not _tile's: measured faster
        rows = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask, cmask = rows < h, cols < n
        mask = rmask[:, None] & cmask[None, :]
        tok = tl.load(tok_ptr + cols, mask=cmask, other=0)
        s = tl.load(s_ptr + cols, mask=cmask, other=1.0)
        m = tl.load(m_ptr + _offsets(rows, cols, m_r1, m_s0, m_s1), mask=mask, other=0.0)
        e = _emission(table_ptr, rows, tok, vocab, mask)
        y = e * m.to(tl.float32) / s[None, :]
        tl.store(y_ptr + _offsets(rows, cols, y_r1, y_s0, y_s1),
                 y.to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(part_ptr + tl.program_id(0) * n + cols, tl.sum(y, axis=0), mask=cmask)

    @triton.jit
    def _post_kernel(w_ptr, w_r1, w_s0, w_s1, y_ptr, y_r1, y_s0, y_s1,
                     a_ptr, a_r1, a_s0, a_s1, table_ptr, tok_ptr, s_ptr, flow_ptr, h, vocab,
                     N: tl.constexpr, OUT_COLS: tl.constexpr, FLOWS: tl.constexpr,
                     VP: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_A: tl.constexpr,
                     BLOCK_F: tl.constexpr, INTERPRET: tl.constexpr):
        # One program owns BLOCK_H rows of the flows and walks over all N columns twice
        # (reading w twice): ``out`` in wide column tiles, then the flows in narrow ones,
        # where their one-hot product is cheapest; the flows are updated once per step
        # without atomics. OUT_COLS = 0 skips ``out``, FLOWS = False the flows.
        rows = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
        rmask = rows < h
        for start in range(0, OUT_COLS, BLOCK_A):  # OUT_COLS: N, or 0 without ``out``
            cols, cmask, mask, tok, w = _tile(w_ptr, w_r1, w_s0, w_s1, rows, rmask, start, N,
                                              tok_ptr, BLOCK_A)
            s = tl.load(s_ptr + cols, mask=cmask, other=1.0)
            e = _emission(table_ptr, rows, tok, vocab, mask)
            tl.store(a_ptr + _offsets(rows, cols, a_r1, a_s0, a_s1),
                     (w * e / s[None, :]).to(a_ptr.dtype.element_ty), mask=mask)
        words = tl.arange(0, VP)
        flows = tl.zeros((BLOCK_H, VP), dtype=tl.float32)
        for start in range(0, N if FLOWS else 0, BLOCK_F):
            cols, cmask, mask, tok, w = _tile(w_ptr, w_r1, w_s0, w_s1, rows, rmask, start, N,
                                              tok_ptr, BLOCK_F)
            y = tl.load(y_ptr + _offsets(rows, cols, y_r1, y_s0, y_s1), mask=mask,
                        other=0.0).to(tl.float32)
            # emission flows: gamma (BLOCK_H, BLOCK_F) @ one-hot(tokens) (BLOCK_F, VP), gamma
            # in two bf16 terms
            onehot = tl.where((tok[:, None] == words[None, :]) & cmask[:, None], 1.0, 0.0)
            flows = _split_dot(w * y, onehot, flows, 2, INTERPRET)
        if FLOWS:
            fmask = rmask[:, None] & (words < vocab)[None, :]
            fptr = flow_ptr + rows.to(tl.int64)[:, None] * vocab + words[None, :]
            tl.store(fptr, tl.load(fptr, mask=fmask, other=0.0) + flows, mask=fmask)

    @triton.jit
    def _emission_dot(table_ptr, rows, rmask, tok, cmask, vocab, VP: tl.constexpr,
                      TERMS: tl.constexpr, INTERPRET: tl.constexpr):
        """B[rows, tok] as (rows, columns) fp32: the table's rows (R, VP) in TERMS bf16 terms
        times the one-hot (VP, columns) of the tokens (:func:`_split_dot`; a gather of
        scattered words costs more)."""
        words = tl.arange(0, VP)
        tab = tl.load(table_ptr + rows.to(tl.int64)[:, None] * vocab + words[None, :],
                      mask=rmask[:, None] & (words < vocab)[None, :], other=0.0)
        onehot = tl.where((words[:, None] == tok[None, :]) & cmask[None, :], 1.0, 0.0)
        e = tl.zeros((rows.shape[0], tok.shape[0]), dtype=tl.float32)
        return _split_dot(tab, onehot, e, TERMS, INTERPRET)

    @triton.jit
    def _emit_product_kernel(w_ptr, x_ptr, y_ptr, table_ptr, tok_ptr, s_ptr, part_ptr,
                             pre, post, blocks, b, n, vocab, sxp, sxb, sxq, syp, syb, syq,
                             VP: tl.constexpr, TERMS: tl.constexpr, BQ: tl.constexpr,
                             BI: tl.constexpr, BJ: tl.constexpr, BN: tl.constexpr,
                             PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
        # the layer product's tile (one block, E = 1), then emit on it: hidden index
        # (p * b + i) * post + q
        r, e, p, q, qmask, i, cols = monarch._program_tile(pre, post, blocks, BQ, BI, BN)
        cmask = cols < n
        m = monarch._block_product(w_ptr, x_ptr, r, e, p, q, qmask, i, cols, b, n, b, 1,
                                   0, sxp, sxb, sxq, BQ, BI, BJ, BN, PRECISION, INTERPRET)
        hidden = (p[:, None] * b + i[None, :]) * post + q[:, None]  # (BQ, BI)
        hmask = qmask[:, None] & (i < b)[None, :]
        tok = tl.load(tok_ptr + cols, mask=cmask, other=0)
        s = tl.load(s_ptr + cols, mask=cmask, other=1.0)
        emission = _emission_dot(table_ptr, tl.reshape(hidden, (BQ * BI,)),
                                 tl.reshape(hmask, (BQ * BI,)), tok, cmask, vocab, VP, TERMS,
                                 INTERPRET)
        y = tl.reshape(emission, (BQ, BI, BN)) * m / s[None, None, :]
        tl.store(monarch._block_tile(y_ptr, e, p, q, i, cols, 0, syp, syb, syq),
                 y.to(y_ptr.dtype.element_ty), mask=hmask[:, :, None] & cmask[None, None, :])
        row = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        tl.store(part_ptr + row * n + cols, tl.sum(tl.sum(y, axis=1), axis=0), mask=cmask)

    @triton.jit
    def _segment_rows(ptr, r, i, rmask, cols, ncols, sp, sb, sq, post,
                      TRANSPOSED: tl.constexpr, EVEN: tl.constexpr):
        """Rows i of blocks r (one each) of a (1, pre, b, post, K) view with strides
        (., sp, sb, sq, 1), columns ``cols``: a (rows, columns) tile, or (columns, rows).
        EVEN: every row and column lies inside (no masks)."""
        rows = (r // post).to(tl.int64) * sp + (r % post).to(tl.int64) * sq + i.to(tl.int64) * sb
        if TRANSPOSED:  # loaded so, not permuted in registers
            offsets = rows[None, :] + cols[:, None]
            mask = rmask[None, :] & (cols < ncols)[:, None]
        else:
            offsets = rows[:, None] + cols[None, :]
            mask = rmask[:, None] & (cols < ncols)[None, :]
        if EVEN:
            return tl.load(ptr + offsets)
        return tl.load(ptr + offsets, mask=mask, other=0.0)

    @triton.jit
    def _grad_flows_kernel(g_ptr, w_ptr, a_ptr, x_ptr, tok_ptr, flow_ptr, post, blocks, b,
                           ncols, vocab, sap, sab, saq, sxp, sxb, sxq, VP: tl.constexpr,
                           BB: tl.constexpr, R: tl.constexpr, BK: tl.constexpr,
                           EVEN: tl.constexpr, PRECISION: tl.constexpr,
                           INTERPRET: tl.constexpr):
        # R / BB whole blocks a program, their rows stacked (monarch._stacked_blocks):
        # products of two such tiles hold the blocks' products on their diagonal (b x b)
        # sub-blocks; the rest is discarded (grad) or multiplied by zeros (W^T is loaded
        # block-diagonal).
        r, i, valid, pair = monarch._stacked_blocks(blocks, b, BB, R)
        wt = monarch._block_diagonal(w_ptr, r, i, pair, b, True)
        words = tl.arange(0, VP)
        acc = tl.zeros((R, R), dtype=tl.float32)
        flows = tl.zeros((R, VP), dtype=tl.float32)
        for k0 in range(0, ncols, BK):
            cols = k0 + tl.arange(0, BK)
            a = _segment_rows(a_ptr, r, i, valid, cols, ncols, sap, sab, saq, post, False,
                              EVEN)
            x = _segment_rows(x_ptr, r, i, valid, cols, ncols, sxp, sxb, sxq, post, False,
                              EVEN)
            xt = _segment_rows(x_ptr, r, i, valid, cols, ncols, sxp, sxb, sxq, post, True,
                               EVEN)
            acc = monarch._dot(a, xt, acc, PRECISION, INTERPRET)
            w = monarch._dot(wt, a, tl.zeros((R, BK), dtype=tl.float32), PRECISION, INTERPRET)
            tok = tl.load(tok_ptr + cols, mask=cols < ncols, other=0)
            onehot = tl.where((tok[:, None] == words[None, :]) & (cols < ncols)[:, None], 1.0,
                              0.0)
            flows = _split_dot(w * x.to(tl.float32), onehot, flows, 2, INTERPRET)
        monarch._add_diagonal_blocks(g_ptr, acc, r, i, pair, b, False)
        hidden = ((r // post) * b + i) * post + r % post
        fmask = valid[:, None] & (words < vocab)[None, :]
        fptr = flow_ptr + hidden.to(tl.int64)[:, None] * vocab + words[None, :]
        tl.store(fptr, tl.load(fptr, mask=fmask, other=0.0) + flows, mask=fmask)

    @triton.jit
    def _column_sum_kernel(src_ptr, dst_ptr, rows, n, ROWS: tl.constexpr, BR: tl.constexpr,
                           BN: tl.constexpr):
        cols = tl.program_id(1) * BN + tl.arange(0, BN)
        first = tl.program_id(0) * ROWS
        end = tl.minimum(rows, first + ROWS)
        acc = tl.zeros((BN,), dtype=tl.float32)
        for start in range(0, ROWS, BR):
            r = first + start + tl.arange(0, BR)
            acc += tl.sum(tl.load(src_ptr + r.to(tl.int64)[:, None] * n + cols[None, :],
                                  mask=(r < end)[:, None] & (cols < n)[None, :], other=0.0), 0)
        tl.store(dst_ptr + tl.program_id(0) * n + cols, acc, mask=cols < n)


def column_sums(partial: Tensor, rows_per_program: int = COLUMN_SUM_ROWS) -> Tensor:
    """(N,) fp32 sums over the rows of a contiguous (P, N) fp32 tensor, in a fixed order
    (the same sums on every call, unlike ``partial.sum(0)``, which it also outruns):
    Triton programs of ``rows_per_program`` rows x 32 columns, repeated until one row is
    left."""
    while partial.shape[0] > 1:
        p, n = partial.shape
        grid = (triton.cdiv(p, rows_per_program), triton.cdiv(n, 32))
        out = torch.empty(grid[0], n, dtype=torch.float32, device=partial.device)
        _column_sum_kernel[grid](partial, out, p, n, ROWS=rows_per_program, BR=64, BN=32)
        partial = out
    return partial[0]


def _view_args(state: Tensor) -> tuple[Tensor, int, int, int]:
    v = as_rows(state)
    return v, v.shape[1], v.stride(0), v.stride(1)


def _emit_tiles(n: int) -> tuple[int, int]:
    """(rows, columns) of an ``emit`` program for N columns."""
    block_n = min(128, max(16, triton.next_power_of_2(n)))
    return 64 if block_n <= 64 else 32, block_n


def emit_triton(m: Tensor, table: Tensor, tokens: Tensor, s: Tensor, out: Tensor) -> Tensor:
    """:func:`emit_torch` as one Triton kernel plus :func:`column_sums` of its (h / 32, N)
    partial sums (h / 64 for N <= 64)."""
    h, n = table.shape[0], m.shape[-1]
    block_h, block_n = _emit_tiles(n)
    grid = (triton.cdiv(h, block_h), triton.cdiv(n, block_n))
    partial = torch.empty(grid[0], n, dtype=torch.float32, device=m.device)
    mv, yv = _view_args(m), _view_args(out)
    _emit_kernel[grid](*mv, *yv, table, tokens, s, partial, h, n, table.shape[1],
                       BLOCK_H=block_h, BLOCK_N=block_n)
    return column_sums(partial)


def emit_product_triton(w: Tensor, x: Tensor, table: Tensor, tokens: Tensor, s: Tensor,
                        out: Tensor, tf32: bool = False) -> Tensor:
    """``emit`` fused with the product of the last Monarch layer (the one mixing axis 0):
    out = B[:, tokens] * (W @ x) / s per block (see :mod:`monarchpc.kernels.monarch`);
    returns out's column sums (N,) fp32. The emission gather is exact for fp32 states and
    within 2^-16 (relative) for 16-bit ones. Saves writing and re-reading the product
    (``python -m monarchpc.bench elements`` times it against the two kernels).

    w: (1, pre, post, b, b) (one block: an HMM's transition); x, out: (1, pre, b, post, N)
    views of states (any strides, unit column stride); table: B (h, V) fp32 with
    V <= MAX_TRITON_VOCAB; tokens (N,); s (N,).
    """
    e, pre, post, b, _ = w.shape
    if e != 1:
        raise ValueError(f"emit_product takes one block (an HMM's transition), got {e}")
    n = x.shape[-1]
    blocks = pre * post
    t = monarch.default_tiles(b, blocks, n)
    t = monarch.Tiles(t.bq, t.bi, t.bj, min(EMIT_PRODUCT_MAX_COLUMNS, t.bn), t.warps, t.stages)
    grid = (triton.cdiv(blocks, t.bq), triton.cdiv(b, t.bi), triton.cdiv(n, t.bn))
    partial = torch.empty(grid[0] * grid[1], n, dtype=torch.float32, device=x.device)
    _emit_product_kernel[grid](
        w.to(x.dtype).contiguous(), x, out, table, tokens, s, partial, pre, post, blocks, b, n,
        table.shape[1], *monarch._strides(x, "x")[1:], *monarch._strides(out, "out")[1:],
        VP=max(16, triton.next_power_of_2(table.shape[1])),
        TERMS=2 if x.element_size() == 2 else 3, BQ=t.bq, BI=t.bi, BJ=t.bj,
        BN=t.bn, PRECISION=monarch.dot_precision(x.dtype, tf32), INTERPRET=interpreting(),
        num_warps=t.warps, num_stages=t.stages)
    return column_sums(partial)


def post_triton(w: Tensor, y: Tensor, table: Tensor, tokens: Tensor, s: Tensor,
                out: Tensor | None, flows: Tensor | None, block_h: int | None = None) -> None:
    """:func:`post_torch` as one Triton kernel (vocabulary <= MAX_TRITON_VOCAB), in programs
    of ``block_h`` rows (default: the POST_* tiles above)."""
    h, vocab = table.shape
    n = w.shape[-1]
    if block_h is None:
        block_h = POST_ROWS_NO_FLOWS if flows is None else \
            max(16, min(POST_ROWS, triton.next_power_of_2(h) // 256))
    wv, yv = _view_args(w), _view_args(y)
    av = _view_args(out) if out is not None else (w, 1, 0, 0)
    width = max(16, triton.next_power_of_2(n))
    _post_kernel[(triton.cdiv(h, block_h),)](
        *wv, *yv, *av, table, tokens, s, table if flows is None else flows, h, vocab, N=n,
        OUT_COLS=0 if out is None else n, FLOWS=flows is not None,
        VP=max(16, triton.next_power_of_2(vocab)), BLOCK_H=block_h,
        BLOCK_A=min(POST_COLUMNS, width), BLOCK_F=min(POST_FLOW_COLUMNS, width),
        INTERPRET=interpreting())


MAX_GRAD_FLOWS_BLOCK = 64  # grad_flows holds whole blocks (their W^T) in one program
GPU_GRAD_FLOWS_BLOCKS = (16, 32, 64)  # the blocks it has run with on a GPU (16-bit states)


def grad_flows_runs(block: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether :func:`grad_flows_triton` takes blocks of ``block`` in states of ``dtype``
    here: any block up to MAX_GRAD_FLOWS_BLOCK under the Triton interpreter; on a GPU 16-bit
    states in the blocks it has run with (fp32 states made it fault with Triton 3.6 at 32^3,
    so TF32 and fp32 E-steps keep ``post``'s flows)."""
    if device.type != "cuda":
        return block <= MAX_GRAD_FLOWS_BLOCK
    return dtype.itemsize == 2 and block in GPU_GRAD_FLOWS_BLOCKS


def grad_flows_torch(w: Tensor, grad: Tensor, a: Tensor, x: Tensor, tokens: Tensor,
                     flows: Tensor) -> None:
    """The weight gradient of the layer that first meets y_{t+1}, and the emission flows
    of those steps: grad += a x^T per block (summed over K columns) and
    ``flows[:, tokens] += (W^T a) * x`` (fp32), where W^T a is the transposed product's
    output w_t and x holds y_{t+1}: their product is the posterior of z_{t+1}.

    w: (1, pre, post, b, b) the layer's weights (compute dtype); grad: the same shape,
    fp32; a, x: (1, pre, b, post, K) views of K columns (a segment's steps); tokens (K,)
    the tokens of x's columns; flows: (h, V) fp32.
    """
    monarch.grad_product(grad, a, x)
    gamma = monarch.layer_product(w, a, transpose=True).float() * x.float()
    flows.index_add_(1, tokens, gamma.reshape(flows.shape[0], -1))


def grad_flows_triton(w: Tensor, grad: Tensor, a: Tensor, x: Tensor, tokens: Tensor,
                      flows: Tensor, bk: int = GRAD_FLOWS_COLUMNS, warps: int = GRAD_FLOWS_WARPS,
                      stages: int = GRAD_FLOWS_STAGES, tf32: bool = False) -> None:
    """:func:`grad_flows_torch` as one Triton kernel (b <= MAX_GRAD_FLOWS_BLOCK, vocabulary
    <= MAX_TRITON_VOCAB). A program stacks the rows of whole blocks into one tile of up to
    64 rows, so W^T a and the flows of its rows need no other program (no atomics); the
    posterior is split into two bf16 terms for the one-hot product (relative error
    < 2^-16). ``bk`` columns a step."""
    e, pre, post, b, _ = w.shape
    if e != 1 or b > MAX_GRAD_FLOWS_BLOCK:
        raise ValueError(f"grad_flows takes one block of blocks up to {MAX_GRAD_FLOWS_BLOCK}, "
                         f"got {e} of {b}")
    if not grad_flows_runs(b, a.dtype, a.device):
        raise ValueError(f"grad_flows does not take blocks of {b} in {a.dtype} states on "
                         f"this device (see grad_flows_runs); use grad_flows_torch")
    if grad.dtype != torch.float32 or not grad.is_contiguous():
        raise ValueError("grad must be a contiguous fp32 tensor (1, pre, post, b, b)")
    ncols, blocks, vocab = a.shape[-1], pre * post, flows.shape[1]
    bb = triton.next_power_of_2(b)
    rows = max(16, min(64, bb * triton.next_power_of_2(blocks)))
    bk = min(bk, max(16, triton.next_power_of_2(ncols)))
    _grad_flows_kernel[(triton.cdiv(blocks, rows // bb),)](
        grad, w.to(a.dtype).contiguous(), a, x, tokens, flows, post, blocks, b, ncols, vocab,
        *monarch._strides(a, "a")[1:], *monarch._strides(x, "x")[1:],
        VP=max(16, triton.next_power_of_2(vocab)), BB=bb, R=rows, BK=bk,
        EVEN=ncols % bk == 0 and b == bb and blocks % (rows // bb) == 0,
        PRECISION=monarch.dot_precision(a.dtype, tf32), INTERPRET=interpreting(), num_warps=warps,
        num_stages=stages)


@dataclass(frozen=True)
class ElementOps:
    """The per-step element-wise operations of one E-step (see the module docstring)."""

    name: str
    emit: Callable[..., Tensor]
    post: Callable[..., None]
    emit_product: Callable[..., Tensor] | None = None  # for Triton layer products
    grad_flows: Callable[..., None] | None = None  # likewise


def element_ops(kind: str, device: torch.device, vocab: int, tf32: bool = False
                ) -> ElementOps:
    """``kind``: ``triton``, ``torch`` or ``auto`` (Triton on a GPU when the vocabulary fits).
    ``tf32``: the kernels that multiply (``emit_product``, ``grad_flows``) round fp32
    operands to TF32."""
    if choose(kind, device) == "triton":
        if vocab > MAX_TRITON_VOCAB:  # the emission one-hot would not fit in registers
            return ElementOps("triton", emit_triton, post_torch)
        return ElementOps("triton", emit_triton, post_triton,
                          functools.partial(emit_product_triton, tf32=tf32),
                          functools.partial(grad_flows_triton, tf32=tf32))
    return ElementOps("torch", emit_torch, post_torch)
