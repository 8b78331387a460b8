"""Monarch sum block: the paper's generalized k-layer Monarch matrix (Definition 3.2).

The hidden index i in [0, h) is read as a multi-index (i_0, ..., i_{k-1}) in row-major
order over the factors h = b_0 * ... * b_{k-1}. Layer d mixes axis d only: it is a
"batched" block-diagonal map with one b_d x b_d stochastic block for every value of the
other axes, stored as ``layers[d]`` of shape (pre_d, post_d, b_d, b_d) with
pre_d = b_0 * ... * b_{d-1} and post_d = b_{d+1} * ... * b_{k-1}:

    out[p, i, q] = sum_j layers[d][p, q, i, j] * y[p, j, q]      (y viewed as (pre_d, b_d, post_d))

The block is M = L_0 @ L_1 @ ... @ L_{k-1} (layer k-1 is applied first). The moves between
axes are the permutations of the paper; here they are strides, not copies. With every
block of layer d equal to one matrix A_d, M is the Kronecker product A_0 (x) ... (x) A_{k-1}:
the circuit multiplication of k dense blocks. k = 2 with b_0 = b_1 = sqrt(h) is the classic
Monarch matrix; all b_d = 2 gives a butterfly matrix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from monarchpc.circuits.sum_block import SumBlock, random_stochastic


class MonarchBlock(SumBlock):
    """Monarch-k sum block over ``factors`` (b_0, ..., b_{k-1}); see the module docstring."""

    def __init__(self, factors: list[int] | tuple[int, ...],
                 generator: torch.Generator | None = None, perturbation: float = 8.0) -> None:
        super().__init__()
        self.factors = [int(b) for b in factors]
        if any(b < 1 for b in self.factors):
            raise ValueError(f"Monarch factors must be positive, got {self.factors}")
        self.hidden_size = math.prod(self.factors)
        self.layers = nn.ParameterList(
            nn.Parameter(random_stochastic(self.layer_shape(d), generator, perturbation))
            for d in range(len(self.factors)))

    @property
    def k(self) -> int:
        return len(self.factors)

    def layer_shape(self, d: int) -> tuple[int, int, int, int]:
        """(pre_d, post_d, b_d, b_d): the shape of layer d's weights."""
        b = self.factors
        return (math.prod(b[:d]), math.prod(b[d + 1:]), b[d], b[d])

    def apply_layer(self, d: int, y: Tensor) -> Tensor:
        """Apply layer d to y (N, h) -> (N, h), linear space."""
        pre, post, b, _ = self.layer_shape(d)
        y3 = y.reshape(y.shape[0], pre, b, post)
        out = torch.einsum("pqij,npjq->npiq", self.layers[d], y3)
        return out.reshape(y.shape[0], self.hidden_size)

    def forward(self, y: Tensor) -> Tensor:
        for d in reversed(range(self.k)):
            y = self.apply_layer(d, y)
        return y

    def dense(self) -> Tensor:
        with torch.no_grad():
            eye = torch.eye(self.hidden_size, dtype=self.layers[0].dtype,
                            device=self.layers[0].device)
            return self.forward(eye).t().contiguous()  # forward(e_j) is column j of M

    def layer_dense(self, d: int) -> Tensor:
        """Layer d as a dense (h, h) block-diagonal-after-permutation matrix (linear space)."""
        with torch.no_grad():
            eye = torch.eye(self.hidden_size, dtype=self.layers[d].dtype,
                            device=self.layers[d].device)
            return self.apply_layer(d, eye).t().contiguous()

    def madds(self) -> int:
        return self.hidden_size * sum(self.factors)

    def sample_next(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        # M = L_0 L_1 ... L_{k-1}: a row of M is reached by walking the layers in order.
        z = z.clone()
        for d in range(self.k):
            _pre, post, b, _ = self.layer_shape(d)
            p, rest = z // (b * post), z % (b * post)
            i, q = rest // post, rest % post
            rows = self.layers[d].detach()[p, q, i]  # (N, b)
            j = torch.multinomial(rows, 1, generator=generator).squeeze(1)
            z = (p * b + j) * post + q
        return z

    def extra_repr(self) -> str:
        return f"factors={'x'.join(map(str, self.factors))}, " + super().extra_repr()
