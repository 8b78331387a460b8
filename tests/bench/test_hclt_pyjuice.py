"""PyJuice's two HCLT constructions of bench/hclt.py, built (not compiled: that needs a GPU)
with the real PyJuice where it imports; skipped elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monarchpc.bench import hclt as bench_hclt

CPU = torch.device("cpu")


def test_tree_levels_of_a_parent_array() -> None:
    assert bench_hclt.tree_levels(np.array([-1])) == 1
    assert bench_hclt.tree_levels(np.array([-1, 0, 1, 1, 0])) == 3  # 0 -> 1 -> {2, 3}; 0 -> 4
    assert bench_hclt.tree_levels(np.array([2, 2, -1])) == 2


def test_both_constructions_have_the_multiply_adds_of_their_trees() -> None:
    """Our tree through PyJuice's region graph, and pyjuice.structures.HCLT on the same
    patches: each has an h x h sum per inner non-root variable and the root's h-way sum
    (pyjuice_madds of its tree), and covers every variable once."""
    pytest.importorskip("pyjuice", reason="PyJuice is not installed")
    data, parent = bench_hclt.patches_and_tree(True, CPU)
    h = 4
    theirs = bench_hclt.pyjuice_tree(data, CPU)
    assert (theirs < 0).sum() == 1 and bench_hclt.tree_levels(theirs) > 1
    for construction, tree in (("our-tree", parent), ("pyjuice-hclt", theirs)):
        ns = bench_hclt.pyjuice_nodes(construction, parent, data, h, CPU)
        assert ns.num_nodes == 1 and len(ns.scope) == len(parent)
        assert bench_hclt.pyjuice_edges(ns) == bench_hclt.pyjuice_madds(tree, h)
        assert sum(1 for n in ns if n.is_input()) == len(parent)


def test_pyjuice_rows_say_why_they_cannot_run_on_a_cpu() -> None:
    reason = bench_hclt.pyjuice_status(CPU)
    assert reason in ("pyjuice not installed",
                      "pyjuice needs a CUDA GPU (its compile asks torch.cuda for the device)")


def test_the_tables_set_each_of_ours_beside_each_pyjuice_construction() -> None:
    """GPU-shaped rows (made up): ours with and without graphs over PyJuice's default run of
    each construction, and the row of what each side's user gets by default."""
    base = {"block": "dense", "hidden_size": 256, "batch": 512, "precision": "tf32"}
    rows = [base | {"peer": "monarchpc", "engine": "fused", "samples_per_s": 300.0},
            base | {"peer": "monarchpc", "engine": "fused-nograph", "samples_per_s": 100.0},
            base | {"peer": "pyjuice", "construction": "our-tree", "engine": "pyjuice",
                    "samples_per_s": 75.0},
            base | {"peer": "pyjuice", "construction": "pyjuice-hclt", "engine": "pyjuice",
                    "samples_per_s": 150.0},
            base | {"peer": "pyjuice", "construction": "pyjuice-hclt",
                    "engine": "pyjuice-graphs", "samples_per_s": 200.0}]
    table = bench_hclt.markdown(rows).splitlines()
    assert "| dense | 256 | 512 | monarchpc | - | fused | tf32 | 300 | - | 4.00 | 2.00 |" in table
    assert ("| dense | 256 | 512 | monarchpc | - | fused-nograph | tf32 | 100 | - | 1.33 | 0.67 |"
            in table)
    assert "| 256 | 512 | 300 | 100 | 150 | 200 | 75 | 2.00x | 0.67x |" in table
