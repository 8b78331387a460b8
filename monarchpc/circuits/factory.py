"""Build circuits from the ``model/`` config group.

A model config names a ``structure`` (``hmm``, or ``hclt`` for images) and a sum-block
``block`` kind (``dense`` or ``monarch``), resolved once into a
:class:`~monarchpc.circuits.sum_blocks.BlockSpec`. Everything is validated here, before
any data reaches a GPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from monarchpc.circuits.hclt import build_hclt
from monarchpc.circuits.hmm import HMM
from monarchpc.circuits.sum_blocks import BlockSpec, SumBlocks
from monarchpc.errors import ConfigError

STRUCTURES = ("hmm", "hclt")


def build_model(cfg: Any, vocab_size: int, generator: torch.Generator | None = None,
                train_rows: torch.Tensor | None = None,
                vocab_sizes: list[int] | None = None) -> nn.Module:
    """A randomly initialized circuit from a ``model/`` config (see configs/model/).

    ``train_rows`` (N, D) is used by structures learned from data (HCLT's Chow-Liu tree);
    ``vocab_sizes`` (D,) gives each variable its own vocabulary (HCLT leaves; default:
    ``vocab_size`` for all).
    """
    structure = cfg["structure"]
    if structure not in STRUCTURES:
        raise ConfigError(f"unknown model.structure {structure!r}; available: "
                          f"{', '.join(STRUCTURES)}")
    spec = BlockSpec.from_config(cfg)
    if structure == "hmm":
        perturbation = float(cfg.get("perturbation", 8.0))
        return HMM(SumBlocks(spec, 1, generator, perturbation), vocab_size, generator,
                   perturbation)
    if train_rows is None:
        raise ConfigError("model.structure=hclt learns its tree from data: pass train_rows")
    vocab = vocab_sizes or [vocab_size] * train_rows.shape[1]
    return build_hclt(cfg, spec, train_rows, list(vocab), generator)
