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
    w3 = (w.transpose(-1, -2) if transpose else w).reshape(e * pre * post, b, b)
    result = torch.bmm(w3.to(x.dtype), _blocks(x))
    result = result.view(e, pre, post, b, x.shape[-1]).permute(0, 1, 3, 2, 4)
    if out is None:
        return result
    out.copy_(result)
    return out


def grad_product(grad: Tensor, a: Tensor, x: Tensor) -> Tensor:
    """grad (E, pre, post, b, b) fp32 += a @ x^T per block, summed over K columns.

    a, x: (E, pre, b, post, K) in the compute dtype. Returns ``grad``.
    """
    e, pre, post, b, _ = grad.shape
    g3 = grad.view(e * pre * post, b, b)
    prod = torch.bmm(_blocks(a), _blocks(x).transpose(1, 2))
    g3.add_(prod.to(grad.dtype))
    return grad
