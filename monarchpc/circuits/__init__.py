"""Circuits: the sum-block core (dense or Monarch blocks) and the structures built from it
(HMM, HCLT), circuit multiplication and queries."""

from monarchpc.circuits.sum_blocks import (
    BlockSpec,
    SumBlocks,
    dense_block,
    factorize,
    monarch_block,
)

__all__ = ["BlockSpec", "SumBlocks", "dense_block", "factorize", "monarch_block"]
