"""Sum blocks as the fused E-steps see them: hidden-major states and kernel products.

The sum-block core (:mod:`monarchpc.circuits.blocks`) applies a block to batch-major rows
(N, h) with autograd. The fused E-steps keep states hidden-major instead, (b_0, ..., b_{k-1},
N), so that every Monarch layer is one batched product over strided views, computed by
:mod:`monarchpc.kernels.monarch` in the operand type of the E-step's precision.
"""

from __future__ import annotations

import copy

from torch import Tensor

from monarchpc.circuits.blocks import SumBlocks
from monarchpc.kernels.monarch import monarch_products
from monarchpc.learning.precision import FP32, Precision


class HiddenMajor:
    """Sum blocks in the operand type of a :class:`Precision`, applied to hidden-major states.

    A state holds the h values of N columns as (n, b_0, ..., b_{k-1}, N), or as
    (b_0, ..., b_{k-1}, N) when one block is used (the HMM), with any strides and unit
    column stride (slots of a segment buffer, outputs of a product). Layer l's product is
    one batched matrix product over (pre, post) blocks of strided views, computed by
    :mod:`monarchpc.kernels.monarch` (``products``: cuBLAS, whose views make the
    permutations between layers free for k = 2, or Triton kernels that read and write any
    strides; auto picks per GPU and k).
    """

    def __init__(self, blocks: SumBlocks, precision: Precision | str = FP32,
                 products: str = "auto") -> None:
        precision = Precision.of(precision)
        self.spec = blocks.spec
        self.factors = list(blocks.spec.factors)
        self.w = [w.detach().to(precision.dtype).contiguous() for w in blocks.layers]
        self.params = list(blocks.layers)  # the parameters the gradients belong to
        self.ops = monarch_products(products, self.w[0].device, self.factors,
                                    stacked=blocks.num_blocks > 1, tf32=precision.tf32)

    def part(self, start: int, stop: int) -> HiddenMajor:
        """Blocks start..stop-1 of these, their weights as views (cast once, not per part)."""
        part = copy.copy(self)
        part.w = [w[start:stop] for w in self.w]
        return part

    def view(self, state: Tensor, l: int) -> Tensor:
        """``state`` as (n, pre, b, post, N) for layer l (a view whenever strides allow)."""
        _, pre, post, b, _ = self.w[l].shape
        return state.reshape(-1, pre, b, post, state.shape[-1])

    def apply(self, l: int, state: Tensor, transpose: bool = False,
              out: Tensor | None = None) -> Tensor:
        """L_l @ state (or L_l^T @ state) for every column; into ``out`` (a state) when
        given, directly where its strides allow. Returns the result state."""
        x = self.view(state, l)
        if out is None:
            return self.ops.layer(self.w[l], x, None, transpose).reshape(state.shape)
        try:  # out viewed as the product's (n, pre, b, post, N) output without a copy
            target = out.view(x.shape)
        except RuntimeError:
            target = None
        if target is None:
            out.copy_(self.ops.layer(self.w[l], x, None, transpose).reshape(out.shape))
        else:
            self.ops.layer(self.w[l], x, target, transpose)
        return out

    def accumulate_grad(self, l: int, grad: Tensor, a: Tensor, x: Tensor) -> None:
        """grad (n, pre, post, b, b) fp32 += sum over columns of a x^T per block.

        a, x: states with K columns (a whole segment) in the compute dtype.
        """
        self.ops.grad(grad, self.view(a, l), self.view(x, l))

    def backward(self, l: int, grad: Tensor, a: Tensor, x: Tensor, out: Tensor) -> Tensor:
        """Layer l's backward step over the same columns: :meth:`accumulate_grad` with a and
        x, then ``out`` = L_l^T @ a (one kernel where the products allow; ``out`` may be
        ``x``). a, x, out: states (not copies: ``out`` must view as the layer's output)."""
        self.ops.backward(self.w[l], grad, self.view(a, l), self.view(x, l), self.view(out, l))
        return out
