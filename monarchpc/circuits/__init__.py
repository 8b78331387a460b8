"""Circuits, the model only: the sum-block core (dense or Monarch blocks, blocks.py) and the
structures built from it (HMM, HCLT over a Chow-Liu tree). Nothing here imports kernels."""

from monarchpc.circuits.blocks import (
    BlockSpec,
    SumBlocks,
    dense_block,
    factorize,
    monarch_block,
)

__all__ = ["BlockSpec", "SumBlocks", "dense_block", "factorize", "monarch_block"]
