"""Monarch layer products on hidden-major states: the matrix work of every fused E-step.

A state holds h = b_0 * ... * b_{k-1} values for each of N columns (batch rows), stored
hidden-major, (b_0, ..., b_{k-1}, N) with unit column stride; with E stacked blocks (the
edges of an HCLT level) it is (E, b_0, ..., b_{k-1}, N). A Monarch layer that mixes axis
a sees the state as (E, pre, b, post, N) with pre = b_0 ... b_{a-1}, b = b_a and
post = b_{a+1} ... b_{k-1}, and holds one b x b block per (e, pre, post) index:

    out[e, p, :, q, :] = W[e, p, q] @ x[e, p, :, q, :]        (W^T with ``transpose``)

The weight gradient of a layer sums, over K columns (a whole segment of steps),

    grad[e, p, q] += a[e, p, :, q, :] @ x[e, p, :, q, :]^T

Values are in linear space. These are the PyTorch twins (batched matrix products over
strided views; a copy only where strides do not flatten); Triton versions, where they
exist, compute the same values.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _blocks(t: Tensor) -> Tensor:
    """A (E, pre, b, post, N) view as (E * pre * post, b, N) (a copy if strides forbid)."""
    e, pre, b, post, n = t.shape
    return t.permute(0, 1, 3, 2, 4).reshape(e * pre * post, b, n)


def layer_product(w: Tensor, x: Tensor, out: Tensor | None = None,
                  transpose: bool = False) -> Tensor:
    """W @ x per block (or W^T @ x); see the module docstring.

    w: (E, pre, post, b, b); x, out: (E, pre, b, post, N), any strides, unit column stride.
    Returns ``out`` (written in place) or a new tensor of x's dtype.
    """
    e, pre, post, b, _ = w.shape
    n = x.shape[-1]
    w3 = (w.transpose(-1, -2) if transpose else w).reshape(e * pre * post, b, b).to(x.dtype)
    x3 = _blocks(x)
    if out is not None:
        try:  # straight into out's storage when its strides flatten (k = 2: always)
            target = out.permute(0, 1, 3, 2, 4).view(e * pre * post, b, n)
        except RuntimeError:
            target = None
        if target is not None:
            torch.bmm(w3, x3, out=target)
            return out
    result = torch.bmm(w3, x3).view(e, pre, post, b, n).permute(0, 1, 3, 2, 4)
    if out is None:
        return result
    out.copy_(result)
    return out


def grad_product(grad: Tensor, a: Tensor, x: Tensor) -> Tensor:
    """grad (E, pre, post, b, b) fp32 += a @ x^T per block, summed over K columns.

    a, x: (E, pre, b, post, K) in the compute dtype; 16-bit products accumulate in fp32.
    Returns ``grad``.
    """
    e, pre, post, b, _ = grad.shape
    add_products(grad.view(e * pre * post, b, b), _blocks(a), _blocks(x).transpose(1, 2))
    return grad


def add_products(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """acc (B, m, n) fp32 += a (B, m, K) @ b (B, K, n), accumulating in fp32."""
    if a.dtype == acc.dtype:
        acc.baddbmm_(a, b)
        return
    if acc.is_cuda:  # 16-bit operands, fp32 output straight from cuBLAS
        try:
            torch.baddbmm(acc, a, b, out_dtype=acc.dtype, out=acc)
            return
        except (RuntimeError, TypeError):  # a torch without out_dtype: chunks of 64 blocks
            pass
    for i in range(0, acc.shape[0], 64):
        acc[i:i + 64].add_(torch.bmm(a[i:i + 64], b[i:i + 64]).to(acc.dtype))
