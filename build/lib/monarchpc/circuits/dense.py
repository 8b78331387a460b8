"""Dense sum block: one full h x h stochastic matrix (h^2 multiply-adds)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from monarchpc.circuits.sum_block import SumBlock, random_stochastic


class DenseBlock(SumBlock):
    """Dense sum block. ``weight`` (h, h): row i holds sum node i's weights, rows sum to 1."""

    def __init__(self, hidden_size: int, generator: torch.Generator | None = None,
                 perturbation: float = 8.0) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.weight = nn.Parameter(
            random_stochastic((hidden_size, hidden_size), generator, perturbation))

    @classmethod
    def from_matrix(cls, matrix: Tensor) -> DenseBlock:
        """A block holding ``matrix`` (h, h), row-stochastic, linear space."""
        block = cls(matrix.shape[0])
        block.weight = nn.Parameter(matrix.detach().clone())
        return block

    def forward(self, y: Tensor) -> Tensor:
        return y @ self.weight.t()

    def dense(self) -> Tensor:
        return self.weight.detach().clone()

    def madds(self) -> int:
        return self.hidden_size**2

    def sample_next(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.multinomial(self.weight.detach()[z], 1, generator=generator).squeeze(1)
