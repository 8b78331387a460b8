"""A stack of E sum blocks of one kind, applied to many edges of a circuit in one call.

The HCLT has one h x h sum block per tree edge; evaluating them one by one would cost a
Python call per variable. Here the parameters of all E blocks are stacked along a leading
edge dimension, and a contiguous range of edges is applied at once (a view, no copy).

Every block is a product of m layers over the multi-index of the factors
h = b_0 * ... * b_{k-1} (row-major), as in :class:`~monarchpc.circuits.monarch.MonarchBlock`,
except that the axis each layer mixes is listed explicitly (``axes``), so an axis may
come back:

    M_e = L_0 @ L_1 @ ... @ L_{m-1}     (layer m-1 is applied first)

Layer l mixes axis a = axes[l]; its weights ``layers[l]`` have shape
(E, pre_a, post_a, b_a, b_a) with pre_a = b_0 ... b_{a-1}, post_a = b_{a+1} ... b_{k-1}:

    out[e, n, p, i, q] = sum_j layers[l][e, p, q, i, j] * y[e, n, p, j, q]

Kinds (see :func:`stacked_blocks`):

* dense: factors [h], axes [0]: one full h x h matrix, h^2 multiply-adds;
* Monarch-k: factors [b_0..b_{k-1}], axes [0..k-1]: h * (b_0 + ... + b_{k-1});
* Monarch-HCLT: factors [b_0, b_1], axes [0, 1, 0]: the paper's "composition of two
  Monarch-2 matrices (as described in Dao et al. 2022)", i.e. Dao et al.'s class MM* of
  products M_1 M_2^T of a Monarch matrix and a transposed one. M_1 = L_0 L_1 mixes axis 1
  then axis 0; M_2^T mixes axis 0 then axis 1; the two middle layers mix the same axis and
  merge, leaving three block-diagonal layers with the transposing permutation between
  them, as the paper's reference builds it: h * (2 b_0 + b_1) = 3 h^1.5 multiply-adds for
  b_0 = b_1 = sqrt(h). ``axes`` [0, 1, 0, 1] is the product of two Monarch matrices of the
  same orientation, M_1 M_2 (nothing merges: four layers, 4 h^1.5, the FLOPs count the
  paper reports for Monarch-HCLT; it contains the three-layer class).

Every parameter is normalized along its last dimension (EM convention of the package).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from monarchpc.circuits.sum_block import random_stochastic


class StackedBlocks(nn.Module):
    """E row-stochastic h x h sum blocks, each a product of layers (see module docstring)."""

    def __init__(self, num_blocks: int, factors: list[int], axes: list[int] | None = None,
                 generator: torch.Generator | None = None, perturbation: float = 2.0) -> None:
        super().__init__()
        self.num_blocks = num_blocks
        self.factors = [int(b) for b in factors]
        self.axes = list(range(len(self.factors))) if axes is None else [int(a) for a in axes]
        if any(not 0 <= a < len(self.factors) for a in self.axes):
            raise ValueError(f"layer axes {self.axes} must index the factors {self.factors}")
        self.hidden_size = math.prod(self.factors)
        self.layers = nn.ParameterList(
            nn.Parameter(random_stochastic(self.layer_shape(l), generator, perturbation))
            for l in range(len(self.axes)))

    def layer_shape(self, l: int) -> tuple[int, int, int, int, int]:
        """(E, pre, post, b, b): the shape of layer l's weights."""
        a, b = self.axes[l], self.factors
        return (self.num_blocks, math.prod(b[:a]), math.prod(b[a + 1 :]), b[a], b[a])

    def apply_layer(self, l: int, y: Tensor, w: Tensor) -> Tensor:
        """Layer l with weights w (n, pre, post, b, b) on y (n, N, h) -> (n, N, h), linear space."""
        n, batch, h = y.shape
        _, pre, post, b, _ = self.layer_shape(l)
        if pre == 1 and post == 1:  # a full matrix: one batched product
            return y @ w[:, 0, 0].transpose(1, 2)
        y5 = y.reshape(n, batch, pre, b, post)
        return torch.einsum("epqij,enpjq->enpiq", w, y5).reshape(n, batch, h)

    def split(self, sizes: list[int]) -> list[list[Tensor]]:
        """Weights of consecutive ranges of ``sizes`` blocks: [range][layer] (views).

        One ``split`` per layer, so the backward pass assembles each gradient once instead
        of zero-filling a full-size gradient for every slice.
        """
        return [list(ws) for ws in zip(*(w.split(sizes) for w in self.layers), strict=True)]

    def apply(self, y: Tensor, weights: list[Tensor]) -> Tensor:
        """The blocks whose layer weights are ``weights`` (from :meth:`split`) on y (n, N, h)."""
        for l in reversed(range(len(self.axes))):
            y = self.apply_layer(l, y, weights[l])
        return y

    def forward(self, y: Tensor, start: int = 0) -> Tensor:
        """Blocks start .. start+n-1 applied to y (n, N, h): out[e, r] = M_{start+e} @ y[e, r]."""
        return self.apply(y, [w[start : start + y.shape[0]] for w in self.layers])

    def dense(self) -> Tensor:
        """All blocks as dense matrices (E, h, h), linear space. For tests and small models."""
        with torch.no_grad():
            p = self.layers[0]
            eye = torch.eye(self.hidden_size, dtype=p.dtype, device=p.device)
            cols = self.forward(eye.expand(self.num_blocks, -1, -1).contiguous())
            return cols.transpose(1, 2).contiguous()  # forward(e_j) is column j of M_e

    def madds(self) -> int:
        """Multiply-adds of one block applied to one vector: h * sum of the mixed factors."""
        return self.hidden_size * sum(self.factors[a] for a in self.axes)

    @torch.no_grad()
    def sample_next(self, z: Tensor, start: int = 0,
                    generator: torch.Generator | None = None) -> Tensor:
        """Child states j ~ M_{start+e}[i, :] for parent states i = z[e, r]; z (n, N) long.

        A row of M = L_0 ... L_{m-1} is reached by walking the layers in order.
        """
        n, batch = z.shape
        e = torch.arange(start, start + n, device=z.device)[:, None].expand(n, batch)
        z = z.clone()
        for l in range(len(self.axes)):
            _, _, post, b, _ = self.layer_shape(l)
            p, rest = z // (b * post), z % (b * post)
            i, q = rest // post, rest % post
            rows = self.layers[l].detach()[e, p, q, i]  # (n, N, b)
            j = torch.multinomial(rows.reshape(-1, b), 1, generator=generator).reshape(n, batch)
            z = (p * b + j) * post + q
        return z

    def extra_repr(self) -> str:
        return (f"num_blocks={self.num_blocks}, factors={self.factors}, axes={self.axes}, "
                f"madds_per_block={self.madds():,}")


def stacked_blocks(block: str, num_blocks: int, hidden_size: int,
                   factors: list[int] | None = None, monarch_layers: int = 3,
                   generator: torch.Generator | None = None,
                   perturbation: float = 2.0) -> StackedBlocks:
    """``num_blocks`` dense or Monarch-HCLT blocks of size ``hidden_size``.

    ``block`` "dense": full matrices. "monarch": factors (b_0, b_1) (given, or the most
    square factorization of h) and ``monarch_layers`` layers alternating between the two
    axes, starting with axis 0: 2 is one Monarch-2 matrix, 3 the reference's Monarch-HCLT
    (default, M_1 M_2^T), 4 a product M_1 M_2 of two Monarch-2 matrices.
    """
    from monarchpc.circuits.factory import ConfigError, resolve_factors

    if block == "dense":
        return StackedBlocks(num_blocks, [hidden_size], [0], generator, perturbation)
    f = resolve_factors(block, hidden_size, 2 if factors is None else len(factors), factors)
    assert f is not None
    if len(f) != 2 or monarch_layers < 2:
        raise ConfigError(f"a Monarch-HCLT block needs 2 factors and model.monarch_layers >= 2, "
                          f"got factors={f}, monarch_layers={monarch_layers}")
    axes = [l % 2 for l in range(monarch_layers)]
    return StackedBlocks(num_blocks, f, axes, generator, perturbation)
