"""Hidden Markov model as a probabilistic circuit whose transition is a sum block.

Over x_1..x_T with hidden size h and vocabulary V, evaluated right to left as in the
paper's reference (sum blocks are matrix products, product blocks element-wise products):

    y_T = B[:, x_T],   y_t = B[:, x_t] * (A @ y_{t+1}),   p(x) = g . y_1

A is one block of the sum-block core (:mod:`monarchpc.circuits.blocks`: dense or
Monarch). Values are kept in scaled linear space: each y_t is divided by its sum and the
log of that sum is added to the result, so long sequences never underflow. This autograd
recursion is the reference that the fused E-step (learning/hmm_estep.py) and the
pruned passes (reports/measure.py, through ``prune``) are checked against.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from monarchpc.circuits.blocks import SumBlocks, random_stochastic

MISSING = -1
"""A token value that is marginalized out (its emission is 1 for every state)."""


class HMM(nn.Module):
    """HMM with initial distribution ``initial`` (h,), transition block and ``emission`` (h, V).

    All parameters are linear-space probabilities normalized along their last dimension.
    """

    structure = "hmm"

    def __init__(self, transition: SumBlocks, vocab_size: int,
                 generator: torch.Generator | None = None, perturbation: float = 8.0) -> None:
        super().__init__()
        if transition.num_blocks != 1:
            raise ValueError(f"an HMM has one transition block, got {transition.num_blocks}")
        h = transition.hidden_size
        self.hidden_size = h
        self.vocab_size = vocab_size
        self.transition = transition
        self.initial = nn.Parameter(random_stochastic((h,), generator, perturbation))
        self.emission = nn.Parameter(random_stochastic((h, vocab_size), generator, perturbation))

    def emission_table(self) -> Tensor:
        """B transposed with a row of ones appended: (V + 1, h), linear space.

        Row ``x`` is B[:, x]; row V (where MISSING tokens are sent) marginalizes the token.
        """
        return torch.cat([self.emission.t(), self.emission.new_ones(1, self.hidden_size)])

    def log_likelihood(self, x: Tensor, prune: Callable[[Tensor], Tensor] | None = None,
                       prune_layers: bool = False) -> Tensor:
        """Natural-log likelihood of each row of ``x`` (N, T) LongTensor -> (N,).

        ``prune`` (for queries): a map applied to every vector (N, h) fed into a sum block
        (the transition, and the root's dot product with ``initial``); with
        ``prune_layers`` also to the vector fed into every further Monarch layer.
        """
        if x.dim() != 2:
            raise ValueError(f"expected token rows (N, T), got shape {tuple(x.shape)}")
        x = torch.where(x == MISSING, self.vocab_size, x)
        # One lookup for all positions, split into per-step views: autograd then scatters
        # the emission flows into one (V + 1, h) gradient per call. A lookup per step would
        # allocate a zero (V + 1, h) gradient per step, which dominates at V = 8192.
        emit = F.embedding(x, self.emission_table()).unbind(1)  # T x (N, h)
        y = emit[-1]
        log_scale = torch.zeros(x.shape[0], dtype=y.dtype, device=y.device)
        for t in range(x.shape[1] - 2, -1, -1):
            s = y.sum(-1, keepdim=True).clamp_min(torch.finfo(y.dtype).tiny)
            log_scale = log_scale + s.squeeze(-1).log()
            y = emit[t] * self._transition(y / s, prune, prune_layers)
        y = y if prune is None else prune(y)
        p = (y * self.initial).sum(-1).clamp_min(torch.finfo(y.dtype).tiny)
        return p.log() + log_scale

    def _transition(self, y: Tensor, prune: Callable[[Tensor], Tensor] | None,
                    prune_layers: bool) -> Tensor:
        """A @ prune(y), pruning between the layers too with ``prune_layers``."""
        if prune is None:
            return self.transition(y)
        y = prune(y)
        if not prune_layers:
            return self.transition(y)
        layers = self.transition.layers
        y = y[None]
        for l in reversed(range(len(layers))):  # layer m-1 is applied first
            if l < len(layers) - 1:
                y = prune(y)
            y = self.transition.apply_layer(l, y, layers[l])
        return y[0]

    def madds_per_token(self) -> int:
        """Multiply-adds per token of the forward pass (the paper's FLOPs): the transition's."""
        return self.transition.madds()

    @torch.no_grad()
    def sample(self, n: int, length: int, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral samples: LongTensor (n, length)."""
        z = torch.multinomial(self.initial.detach().expand(n, -1), 1, generator=generator)
        z = z.squeeze(1)
        out = torch.empty(n, length, dtype=torch.long, device=z.device)
        emission = self.emission.detach()
        for t in range(length):
            out[:, t] = torch.multinomial(emission[z], 1, generator=generator).squeeze(1)
            if t + 1 < length:
                z = self.transition.sample_next(z, generator=generator)
        return out
