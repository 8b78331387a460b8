"""Build circuits from the ``model/`` config group.

A model config names a ``structure`` (``hmm``, or ``hclt`` for images) and a sum-block
``block`` kind (``dense`` or ``monarch``, with ``k`` layers or explicit ``factors``).
Everything is validated here, before any data reaches a GPU.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from monarchpc.circuits.dense import DenseBlock
from monarchpc.circuits.hmm import HMM
from monarchpc.circuits.monarch import MonarchBlock
from monarchpc.circuits.sum_block import SumBlock, factorize


class ConfigError(ValueError):
    """An invalid model setting; the message names the fix."""


def resolve_factors(block: str, hidden_size: int, k: int | None = None,
                    factors: list[int] | None = None) -> list[int] | None:
    """The Monarch factors (b_0, ..., b_{k-1}) of a block, or None for a dense block."""
    if block == "dense":
        return None
    if block != "monarch":
        raise ConfigError(f"unknown sum-block kind {block!r}; use model.block=dense|monarch")
    if factors is not None:
        factors = [int(b) for b in factors]
        if math.prod(factors) != hidden_size:
            raise ConfigError(
                f"model.hidden_size={hidden_size} is not the product of model.factors="
                f"{factors} (= {math.prod(factors)}); fix one of them or set model.factors=null "
                f"to factor it automatically")
        if k is not None and len(factors) != k:
            raise ConfigError(f"model.k={k} but model.factors has {len(factors)} entries")
        return factors
    try:
        return factorize(hidden_size, int(k or 2))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def build_sum_block(block: str, hidden_size: int, k: int | None = None,
                    factors: list[int] | None = None, generator: torch.Generator | None = None,
                    perturbation: float = 8.0) -> SumBlock:
    """A dense or Monarch sum block of size ``hidden_size`` with random stochastic weights."""
    f = resolve_factors(block, hidden_size, k, factors)
    if f is None:
        return DenseBlock(hidden_size, generator, perturbation)
    return MonarchBlock(f, generator, perturbation)


def build_model(cfg: Any, vocab_size: int, generator: torch.Generator | None = None,
                train_rows: torch.Tensor | None = None,
                vocab_sizes: list[int] | None = None) -> nn.Module:
    """A randomly initialized circuit from a ``model/`` config (see configs/model/).

    ``train_rows`` (N, D) is used by structures learned from data (HCLT's Chow-Liu tree);
    ``vocab_sizes`` (D,) gives each variable its own vocabulary (HCLT leaves; default:
    ``vocab_size`` for all).
    """
    structure = cfg["structure"]
    perturbation = float(cfg.get("perturbation", 8.0))
    if structure == "hmm":
        block = build_sum_block(cfg["block"], int(cfg["hidden_size"]), cfg.get("k"),
                                cfg.get("factors"), generator, perturbation)
        return HMM(block, vocab_size, generator, perturbation)
    if structure == "hclt":
        from monarchpc.circuits.hclt import build_hclt

        if train_rows is None:
            raise ConfigError("model.structure=hclt learns its tree from data: pass train_rows")
        vocab = vocab_sizes or [vocab_size] * train_rows.shape[1]
        return build_hclt(cfg, train_rows, list(vocab), generator)
    raise ConfigError(f"unknown model.structure {structure!r}; available: hmm, hclt")
