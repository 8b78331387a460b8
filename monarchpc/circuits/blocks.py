"""The sum-block core: E stochastic h x h matrices, each a product of Monarch layers.

A sum block maps the values of h child nodes to h sum nodes: ``M @ y`` with M row-stochastic
(row i holds sum node i's weights; linear space). Every block of the package, dense or
Monarch, in an HMM or an HCLT, is this one kind of object:

* the hidden index i in [0, h) is a row-major multi-index (i_0, ..., i_{k-1}) over the
  factors h = b_0 * ... * b_{k-1} (the paper's Definition 3.2);
* M = L_0 @ L_1 @ ... @ L_{m-1} (layer m-1 is applied first); layer l mixes axis a = axes[l]
  with one b_a x b_a stochastic block per value of the other axes, stored as ``layers[l]`` of
  shape (E, pre, post, b_a, b_a), pre = b_0 ... b_{a-1}, post = b_{a+1} ... b_{k-1}:

      out[e, p, i, q] = sum_j layers[l][e, p, q, i, j] * y[e, p, j, q]     (y as (E, pre, b, post))

Kinds (:class:`BlockSpec`): dense = one factor [h] (one full matrix, h^2 multiply-adds);
Monarch-k = factors [b_0..b_{k-1}], axes [0..k-1] (h * (b_0 + ... + b_{k-1})); Monarch-HCLT
= factors [b_0, b_1], axes [0, 1, 0]: the composition M_1 M_2^T of two Monarch-2 matrices
whose middle layers merge (3 h^1.5 for b_0 = b_1). The moves between axes are the paper's
permutations; here they are strides, never copies. With every block of layer l equal to A_a,
M is the Kronecker product A_0 (x) ... (x) A_{k-1}: circuit multiplication.

Parameters are normalized along their last dimension (the package's EM convention). Two
evaluation layouts share the weights: batch-major (N, h) rows with autograd
(:meth:`SumBlocks.forward`, the reference path) and hidden-major states (b_0, ..., b_{k-1}, N)
for the fused E-steps (:class:`monarchpc.learning.hidden_major.HiddenMajor`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from monarchpc.errors import ConfigError


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


def factorize(hidden_size: int, k: int) -> list[int]:
    """Split ``hidden_size`` into k factors as equal as possible, smallest first.

    2**19 with k=2 gives [512, 1024]; 2**18 with k=3 gives [64, 64, 64]. Raises
    ValueError when no factorization into k factors >= 2 exists.
    """
    if k < 1:
        raise ValueError(f"a Monarch block needs k >= 1 layers, got k={k}")
    if k == 1:
        return [hidden_size]
    target = hidden_size ** (1.0 / k)
    # the first factor is the largest divisor not above the k-th root; recurse on the rest
    for b in range(math.floor(target + 1e-9), 1, -1):
        if hidden_size % b == 0:
            try:
                return sorted([b, *factorize(hidden_size // b, k - 1)])
            except ValueError:
                continue
    raise ValueError(
        f"hidden size {hidden_size} cannot be factored into {k} factors >= 2; give "
        f"model.factors explicitly or pick a hidden size such as "
        f"{2 ** (k * max(1, round(math.log2(max(hidden_size, 2)) / k)))}")


@dataclass(frozen=True)
class BlockSpec:
    """What a sum block is: its factors and the axis each layer mixes (layer m-1 first)."""

    factors: tuple[int, ...]
    axes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.factors or any(b < 1 for b in self.factors):
            raise ConfigError(f"block factors must be positive, got {list(self.factors)}")
        if not self.axes or any(not 0 <= a < len(self.factors) for a in self.axes):
            raise ConfigError(f"layer axes {list(self.axes)} must index the factors "
                              f"{list(self.factors)}")

    @classmethod
    def dense(cls, hidden_size: int) -> BlockSpec:
        return cls((int(hidden_size),), (0,))

    @classmethod
    def monarch(cls, factors: list[int] | tuple[int, ...],
                axes: list[int] | tuple[int, ...] | None = None) -> BlockSpec:
        factors = tuple(int(b) for b in factors)
        return cls(factors, tuple(range(len(factors))) if axes is None else tuple(axes))

    @classmethod
    def from_config(cls, model: Any) -> BlockSpec:
        """The spec of a ``model/`` config: ``block`` dense|monarch, ``hidden_size``, ``k``
        or ``factors`` (null: the most equal split); with ``monarch_layers`` (the HCLT
        configs) a block of two factors whose layers alternate between the two axes (3:
        the reference's Monarch-HCLT), else Monarch-k (one layer per factor)."""
        block, hidden = model.get("block"), int(model.get("hidden_size"))
        if hidden < 1:
            raise ConfigError(f"model.hidden_size must be >= 1, got {hidden}")
        if block == "dense":
            return cls.dense(hidden)
        if block != "monarch":
            raise ConfigError(f"unknown sum-block kind {block!r}; use model.block=dense|monarch")
        composed = model.get("monarch_layers") is not None  # of Monarch-2 matrices
        k = 2 if composed else model.get("k")
        factors = model.get("factors")
        if factors is not None:
            factors = [int(b) for b in factors]
            if math.prod(factors) != hidden:
                raise ConfigError(
                    f"model.hidden_size={hidden} is not the product of model.factors="
                    f"{factors} (= {math.prod(factors)}); fix one of them or set "
                    f"model.factors=null to factor it automatically")
            if k is not None and len(factors) != int(k):
                raise ConfigError(f"model.k={k} but model.factors has {len(factors)} entries"
                                  + (" (an HCLT block has 2)" if composed else ""))
        else:
            try:
                factors = factorize(hidden, int(k or 2))
            except ValueError as err:
                raise ConfigError(str(err)) from None
        if not composed:
            return cls.monarch(factors)
        layers = int(model.get("monarch_layers"))
        if layers < 2:
            raise ConfigError(f"model.monarch_layers must be >= 2, got {layers}")
        return cls.monarch(factors, [l % 2 for l in range(layers)])

    @property
    def hidden_size(self) -> int:
        return math.prod(self.factors)

    @property
    def kind(self) -> str:
        return "dense" if len(self.factors) == 1 else "monarch"

    @property
    def madds(self) -> int:
        """Multiply-adds of one block applied to one vector (the paper's "FLOPs")."""
        return self.hidden_size * sum(self.factors[a] for a in self.axes)

    def layer_shape(self, l: int, num_blocks: int = 1) -> tuple[int, int, int, int, int]:
        """(E, pre, post, b, b): the shape of layer l's weights."""
        a, b = self.axes[l], self.factors
        return (num_blocks, math.prod(b[:a]), math.prod(b[a + 1:]), b[a], b[a])

    def describe(self) -> dict[str, Any]:
        """The spec as run.json records it."""
        return {"kind": self.kind, "factors": list(self.factors), "axes": list(self.axes),
                "hidden_size": self.hidden_size, "madds_per_block": self.madds}


class SumBlocks(nn.Module):
    """E sum blocks of one spec (see the module docstring); ``layers[l]``: (E, pre, post, b, b)."""

    def __init__(self, spec: BlockSpec, num_blocks: int = 1,
                 generator: torch.Generator | None = None, perturbation: float = 8.0) -> None:
        super().__init__()
        self.spec, self.num_blocks, self.hidden_size = spec, num_blocks, spec.hidden_size
        self.layers = nn.ParameterList(
            nn.Parameter(random_stochastic(spec.layer_shape(l, num_blocks), generator,
                                           perturbation))
            for l in range(len(spec.axes)))

    def madds(self) -> int:
        """Multiply-adds of one block applied to one vector."""
        return self.spec.madds

    def apply_layer(self, l: int, y: Tensor, w: Tensor) -> Tensor:
        """Layer l with weights w (n, pre, post, b, b) on y (n, N, h) -> (n, N, h), linear."""
        n, batch, h = y.shape
        _, pre, post, b, _ = w.shape
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

    def apply_weights(self, y: Tensor, weights: list[Tensor]) -> Tensor:
        """The blocks whose layer weights are ``weights`` (from :meth:`split`) on y (n, N, h)."""
        for l in reversed(range(len(weights))):
            y = self.apply_layer(l, y, weights[l])
        return y

    def forward(self, y: Tensor, start: int = 0) -> Tensor:
        """out[e, r] = M_{start+e} @ y[e, r] for y (n, N, h); y (N, h) uses block ``start``."""
        if y.dim() == 2:
            return self.forward(y[None], start)[0]
        return self.apply_weights(y, [w[start:start + y.shape[0]] for w in self.layers])

    def dense(self) -> Tensor:
        """All blocks as dense matrices (E, h, h), linear space. For tests and small models."""
        return self._materialize(range(len(self.layers)))

    def layer_dense(self, l: int) -> Tensor:
        """Layer l of every block as a dense (E, h, h) matrix (block-diagonal after a
        permutation), linear space."""
        return self._materialize([l])

    @torch.no_grad()
    def _materialize(self, layers: Any) -> Tensor:
        p = self.layers[0]
        eye = torch.eye(self.hidden_size, dtype=p.dtype, device=p.device)
        cols = eye.expand(self.num_blocks, -1, -1)
        for l in reversed(list(layers)):
            cols = self.apply_layer(l, cols, self.layers[l])
        return cols.transpose(1, 2).contiguous()  # M applied to e_j is column j of M

    @torch.no_grad()
    def tie(self, matrices: list[Tensor]) -> SumBlocks:
        """Make every block the Kronecker product of ``matrices`` (each (b_d, b_d),
        row-stochastic), in place: circuit multiplication. With one factor per matrix,
        every block of a layer mixing axis a gets matrices[a]; a block of one factor (dense)
        gets the materialized product. Returns self."""
        sizes = [int(m.shape[0]) for m in matrices]
        if len(self.spec.factors) == 1 and len(sizes) > 1:
            matrices = [kron([m.double() for m in matrices])]
            sizes = [self.hidden_size] if math.prod(sizes) == self.hidden_size else sizes
        if sizes != list(self.spec.factors):
            raise ValueError(f"matrices of sizes {sizes} do not match the factors "
                             f"{list(self.spec.factors)}")
        for layer, a in zip(self.layers, self.spec.axes, strict=True):
            layer.copy_(matrices[a].to(layer).expand(layer.shape))
        return self

    @torch.no_grad()
    def sample_next(self, z: Tensor, start: int = 0,
                    generator: torch.Generator | None = None) -> Tensor:
        """Child states j ~ M_{start+e}[i, :] for parent states i = z[e, r]; z (n, N) long,
        or z (N,) for block ``start``. A row of M = L_0 ... L_{m-1} is reached by walking
        the layers in order."""
        if z.dim() == 1:
            return self.sample_next(z[None], start, generator)[0]
        n, batch = z.shape
        e = torch.arange(start, start + n, device=z.device)[:, None].expand(n, batch)
        z = z.clone()
        for w in self.layers:
            _, _, post, b, _ = w.shape
            p, rest = z // (b * post), z % (b * post)
            i, q = rest // post, rest % post
            rows = w.detach()[e, p, q, i]  # (n, N, b)
            j = torch.multinomial(rows.reshape(-1, b), 1, generator=generator).reshape(n, batch)
            z = (p * b + j) * post + q
        return z

    def extra_repr(self) -> str:
        return (f"num_blocks={self.num_blocks}, factors={list(self.spec.factors)}, "
                f"axes={list(self.spec.axes)}, madds_per_block={self.spec.madds:,}")


def kron(tensors: list[Tensor]) -> Tensor:
    """Kronecker product t_0 (x) ... (x) t_{k-1} of vectors or matrices (row-major index)."""
    out = tensors[0]
    for t in tensors[1:]:
        out = torch.kron(out, t)
    return out


def dense_block(hidden_size: int, generator: torch.Generator | None = None,
                perturbation: float = 8.0, num_blocks: int = 1) -> SumBlocks:
    """Dense sum block(s) of size ``hidden_size`` with random stochastic weights."""
    return SumBlocks(BlockSpec.dense(hidden_size), num_blocks, generator, perturbation)


def monarch_block(factors: list[int], generator: torch.Generator | None = None,
                  perturbation: float = 8.0, num_blocks: int = 1,
                  axes: list[int] | None = None) -> SumBlocks:
    """Monarch sum block(s) over ``factors`` with random stochastic weights."""
    return SumBlocks(BlockSpec.monarch(factors, axes), num_blocks, generator, perturbation)
