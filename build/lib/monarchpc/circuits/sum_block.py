"""The sum block: a parameterized linear map between blocks of circuit nodes.

Every sum block of this package is a row-stochastic h x h matrix M (linear space):
row i holds the weights of sum node i over its children, so ``M @ y`` computes the
sum nodes' values from the children's values. Two kinds exist, with one interface:

* :class:`~monarchpc.circuits.dense.DenseBlock`: M is a full h x h matrix (h^2 multiply-adds);
* :class:`~monarchpc.circuits.monarch.MonarchBlock`: M is a product of k block-diagonal
  layers (the paper's generalized Monarch matrix, h * (b_1 + ... + b_k) multiply-adds).

Every parameter of a block is an ``nn.Parameter`` whose last dimension indexes the
children of one sum node and sums to one. That convention is what lets the EM code in
:mod:`monarchpc.learning.em` update any circuit without knowing its kinds of blocks.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn


def normalize(t: Tensor, dim: int = -1) -> Tensor:
    """Divide ``t`` (non-negative, linear space) by its sum along ``dim``."""
    return t / t.sum(dim, keepdim=True)


def random_stochastic(shape: tuple[int, ...], generator: torch.Generator | None,
                      perturbation: float = 8.0) -> Tensor:
    """Random stochastic tensor (linear space) normalized along its last dimension.

    Entries are exp(-perturbation * u), u ~ U(0, 1), then normalized: perturbation 0 gives
    uniform rows, larger values give more varied ones.
    """
    u = torch.rand(shape, generator=generator, dtype=torch.float32)
    return normalize(torch.exp(-perturbation * u))


class SumBlock(nn.Module, ABC):
    """An h x h row-stochastic linear map (see module docstring)."""

    hidden_size: int

    @abstractmethod
    def forward(self, y: Tensor) -> Tensor:
        """Apply the block to child values: (N, h) -> (N, h), ``out[n] = M @ y[n]``.

        Values are in linear space (typically each row scaled to sum to one).
        """

    @abstractmethod
    def dense(self) -> Tensor:
        """The block as a dense (h, h) matrix (linear space). For tests and small models."""

    @abstractmethod
    def madds(self) -> int:
        """Multiply-adds of one application to one vector (the paper's "FLOPs")."""

    @abstractmethod
    def sample_next(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Sample child indices j ~ M[i, :] for each parent index i in ``z`` (LongTensor (N,))."""

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, madds={self.madds():,}"


def factorize(hidden_size: int, k: int) -> list[int]:
    """Split ``hidden_size`` into k factors as equal as possible, smallest first.

    2**19 with k=2 gives [512, 1024]; 2**18 with k=3 gives [64, 64, 64]. Raises
    ValueError when no factorization into k factors >= 2 exists.
    """
    if k < 1:
        raise ValueError(f"a Monarch block needs k >= 1 layers, got k={k}")
    if k == 1:
        return [hidden_size]
    best: list[int] | None = None
    target = hidden_size ** (1.0 / k)
    # choose the first factor as the largest divisor not above the k-th root, recurse
    for b in range(math.floor(target + 1e-9), 1, -1):
        if hidden_size % b == 0:
            try:
                rest = factorize(hidden_size // b, k - 1)
            except ValueError:
                continue
            best = sorted([b, *rest])
            break
    if best is None:
        raise ValueError(
            f"hidden size {hidden_size} cannot be factored into {k} factors >= 2; "
            f"give model.factors explicitly or pick a hidden size such as "
            f"{2 ** (k * max(1, round(math.log2(max(hidden_size, 2)) / k)))}"
        )
    return best
