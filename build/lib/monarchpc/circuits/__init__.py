"""Circuits: sum blocks (dense, Monarch) and the structures built from them (HMM, HCLT)."""

from monarchpc.circuits.dense import DenseBlock
from monarchpc.circuits.monarch import MonarchBlock
from monarchpc.circuits.sum_block import SumBlock, factorize

__all__ = ["DenseBlock", "MonarchBlock", "SumBlock", "factorize"]
