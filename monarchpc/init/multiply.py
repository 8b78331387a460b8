"""Circuit multiplication: products of dense sum blocks and of HMMs (paper Section 3).

The product of sum blocks with matrices A_0 (b_0 x b_0), ..., A_{k-1} is the Kronecker
product M = A_0 (x) ... (x) A_{k-1} over the row-major multi-index (i_0, ..., i_{k-1}).
It *is* a Monarch block over factors (b_0, ..., b_{k-1}) whose layer d holds A_d in every
one of its blocks (:meth:`~monarchpc.circuits.blocks.SumBlocks.tie`).

The product of k HMMs over one vocabulary has states z = (z_0, ..., z_{k-1}) (row-major,
h = h_0 * ... * h_{k-1}) and parameters

    g(z) = prod_d g_d(z_d),   A(z, z') = prod_d A_d(z_d, z'_d),   B(z, x) = prod_d B_d(z_d, x),

so it computes p_0(x) * ... * p_{k-1}(x) exactly. That product is not normalized (the
emission rows sum to less than one); renormalizing each state's emission row gives a
proper HMM, no longer the exact product, which is the paper's initialization of a
Monarch-k HMM before its tied layers are untied by training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from monarchpc.circuits.blocks import SumBlocks, kron, monarch_block
from monarchpc.circuits.hmm import HMM


def kronecker_block(matrices: Sequence[Tensor]) -> SumBlocks:
    """The product of dense blocks ``matrices`` (each (b_d, b_d), row-stochastic, linear
    space) as a Monarch block over factors (b_0, ..., b_{k-1}) with tied layers."""
    block = monarch_block([int(m.shape[0]) for m in matrices]).to(matrices[0].dtype)
    return block.tie(list(matrices))


def product_log_emission(emissions: Sequence[Tensor], renormalize: bool = True) -> Tensor:
    """log B over the product states: (h, V), float64, log space.

    ``emissions[d]`` is B_d (h_d, V), linear space. log B(z, x) = sum_d log B_d(z_d, x),
    built by broadcasting into one (h_0, ..., h_{k-1}, V) tensor (h * V * 8 bytes:
    113 MB at the paper's largest h = 2^19, so no chunking). With ``renormalize`` each
    row is shifted by its log-sum-exp so that exp(row) sums to one.
    """
    sizes = [int(e.shape[0]) for e in emissions]
    vocab = int(emissions[0].shape[1])
    if any(int(e.shape[1]) != vocab for e in emissions):
        raise ValueError(f"factor HMMs must share one vocabulary, got emissions of shapes "
                         f"{[tuple(e.shape) for e in emissions]}")
    out = torch.zeros(*sizes, vocab, dtype=torch.float64, device=emissions[0].device)
    tiny = torch.finfo(torch.float64).tiny
    for d, e in enumerate(emissions):
        shape = [1] * len(sizes) + [vocab]
        shape[d] = sizes[d]
        out += e.detach().double().clamp_min(tiny).log().reshape(shape)
    out = out.reshape(math.prod(sizes), vocab)
    if renormalize:
        out -= torch.logsumexp(out, dim=-1, keepdim=True)
    return out


@torch.no_grad()
def multiply_into(model: HMM, factors: Sequence[HMM], renormalize: bool = True) -> HMM:
    """Write the product of the HMMs ``factors`` into ``model``, in place.

    ``model`` has hidden size h_0 * ... * h_{k-1} and the factors' vocabulary; its
    transition becomes kron(A_0, ..., A_{k-1}) (a Monarch block over the factor sizes gets
    A_d in every block of layer d; a dense block the materialized product). Initial
    distribution: kron(g_0, ..., g_{k-1}). Emission: see :func:`product_log_emission`;
    without ``renormalize`` the model is the exact, unnormalized product (for tests).
    """
    sizes = [f.hidden_size for f in factors]
    if model.hidden_size != math.prod(sizes) or model.vocab_size != factors[0].vocab_size:
        raise ValueError(f"a model of hidden size {model.hidden_size} and vocabulary "
                         f"{model.vocab_size} cannot hold the product of HMMs of sizes {sizes} "
                         f"and vocabulary {factors[0].vocab_size}")
    model.transition.tie([f.transition.dense()[0] for f in factors])
    initial = kron([f.initial.detach().double() for f in factors])
    model.initial.copy_(initial / initial.sum())  # exact up to rounding; keep it normalized
    log_b = product_log_emission([f.emission for f in factors], renormalize)
    model.emission.copy_(log_b.exp())
    return model


def multiply_hmms(factors: Sequence[HMM], renormalize: bool = True) -> HMM:
    """A new Monarch-k HMM (k = len(factors)) holding the product of ``factors``.

    Its parameters take the factors' dtype; see :func:`multiply_into`.
    """
    dtype = factors[0].emission.dtype
    model = HMM(monarch_block([f.hidden_size for f in factors]), factors[0].vocab_size).to(dtype)
    return multiply_into(model, factors, renormalize)
