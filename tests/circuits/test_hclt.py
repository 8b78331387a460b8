"""Chow-Liu trees, stacked sum blocks and the hidden Chow-Liu tree (HCLT)."""

import itertools
import math

import numpy as np
import pytest
import torch

from monarchpc.circuits.blocks import BlockSpec, SumBlocks, monarch_block
from monarchpc.circuits.chow_liu import (
    bin_values,
    chow_liu_tree,
    maximum_spanning_tree,
    mutual_information,
    tree_center,
)
from monarchpc.circuits.hclt import HCLT, MISSING
from monarchpc.errors import ConfigError
from monarchpc.learning.em import accumulate_flows, em_step
from monarchpc.structures import build_model
from tests.helpers import assert_samples_follow, renormalized


def all_assignments(vocab_sizes: list[int]) -> torch.Tensor:
    return torch.tensor(list(itertools.product(*[range(v) for v in vocab_sizes])))


def hclt(parent, block: str, h: int, vocab_sizes, channels=None, layers=3, seed=0) -> HCLT:
    g = torch.Generator().manual_seed(seed)
    spec = BlockSpec.from_config({"structure": "hclt", "block": block, "hidden_size": h,
                                  "monarch_layers": layers})
    blocks = SumBlocks(spec, len(parent) - 1, g, perturbation=2.0)
    return renormalized(HCLT(parent, blocks, vocab_sizes, channels, g))


# ----------------------------------------------------------------------------- Chow-Liu
def test_mutual_information_values():
    x = torch.randint(0, 2, (4000, 1), generator=torch.Generator().manual_seed(0))
    noise = torch.randint(0, 2, (4000, 1), generator=torch.Generator().manual_seed(1))
    mi = mutual_information(torch.cat([x, x, noise], 1), 2)
    assert mi[0, 1] == pytest.approx(mi[0, 0].item())  # I(X; X) = H(X)
    assert mi[0, 1] == pytest.approx(math.log(2), abs=1e-3)  # a fair bit
    assert mi[0, 2] < 1e-3 and torch.allclose(mi, mi.t())


def test_maximum_spanning_tree_and_center():
    w = np.array([[0, 5, 1, 0], [5, 0, 4, 2], [1, 4, 0, 3], [0, 2, 3, 0]], dtype=float)
    assert sorted(tuple(sorted(e)) for e in maximum_spanning_tree(w)) == [(0, 1), (1, 2), (2, 3)]
    path = [(i, i + 1) for i in range(6)]  # 0 - 1 - ... - 6: the center is 3
    assert tree_center(path, 7) == 3


def test_chow_liu_recovers_the_generating_tree():
    # 6 binary variables, a tree Bayesian network: each child copies its parent w.p. 1 - flip
    edges = {(0, 1): 0.1, (1, 2): 0.2, (1, 3): 0.15, (3, 4): 0.1, (3, 5): 0.25}
    rng = np.random.default_rng(0)
    n = 20000
    x = np.zeros((n, 6), dtype=np.int64)
    x[:, 0] = rng.integers(0, 2, n)
    for (u, v), flip in edges.items():
        x[:, v] = x[:, u] ^ (rng.random(n) < flip)
    parent = chow_liu_tree(torch.from_numpy(x), [2] * 6, num_bins=None)
    found = {tuple(sorted((int(parent[v]), v))) for v in range(6) if parent[v] >= 0}
    assert found == set(edges)
    assert parent[1] == -1 or parent[3] == -1  # rooted at a center of the tree


def test_binning_and_chow_liu_on_many_valued_variables():
    gen = torch.Generator().manual_seed(0)
    co = 255 + torch.randint(-4, 5, (5000, 1), generator=gen)  # concentrated, like Co
    uniform, _ = bin_values(co, torch.tensor([511]), 16, "uniform")
    quantile, _ = bin_values(co, torch.tensor([511]), 16, "quantile")
    assert len(uniform.unique()) <= 2 and len(quantile.unique()) == 9  # one bin per value
    # a Markov chain of 6 variables with 200 values each, columns shuffled: 5 path edges
    x = torch.zeros(20000, 6, dtype=torch.long)
    x[:, 0] = torch.randint(0, 200, (20000,), generator=gen)
    for v in range(1, 6):
        x[:, v] = (x[:, v - 1] + torch.randint(-15, 16, (20000,), generator=gen)).clamp(0, 199)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])  # column perm[i] holds chain position i
    shuffled = torch.empty_like(x)
    shuffled[:, perm] = x
    for method in ("quantile", "uniform"):
        parent = chow_liu_tree(shuffled, [200] * 6, num_bins=16, binning=method)
        found = {tuple(sorted((int(parent[v]), v))) for v in range(6) if parent[v] >= 0}
        assert found == {tuple(sorted((int(perm[i]), int(perm[i + 1])))) for i in range(5)}


# ----------------------------------------------------------------------------- blocks
def test_stacked_blocks_match_monarch_block():
    g = torch.Generator().manual_seed(0)
    stack = monarch_block([2, 3], g, num_blocks=3)  # axes [0, 1]: plain Monarch-2
    single = monarch_block([2, 3], g)
    with torch.no_grad():
        for l in range(2):
            stack.layers[l][1] = single.layers[l]
    torch.testing.assert_close(stack.dense()[1], single.dense()[0])
    # three layers on axes [0, 1, 0] = Monarch-2 (L_0 L_1) followed by another axis-0 layer
    stack3 = monarch_block([3, 3], g, num_blocks=2, axes=[0, 1, 0])
    a, b = monarch_block([3, 3], g), monarch_block([3, 3], g)
    with torch.no_grad():
        stack3.layers[0][0], stack3.layers[1][0] = a.layers[0], a.layers[1]
        stack3.layers[2][0] = b.layers[0]
    torch.testing.assert_close(stack3.dense()[0], a.dense()[0] @ b.layer_dense(0)[0])
    rows = stack3.dense().sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows))  # still row-stochastic
    assert stack3.madds() == 9 * (3 + 3 + 3)
    hclt_spec = {"structure": "hclt", "block": "monarch", "hidden_size": 16, "monarch_layers": 4}
    assert BlockSpec.from_config(hclt_spec).madds == 4 * 16**1.5
    assert BlockSpec.from_config({**hclt_spec, "block": "dense"}).madds == 16**2


# ----------------------------------------------------------------------------- HCLT
@pytest.mark.parametrize("block,layers", [("dense", 3), ("monarch", 3), ("monarch", 4)])
@pytest.mark.parametrize("tied", [False, True])
def test_hclt_is_normalized(block, layers, tied):
    parent = [1, -1, 1, 2]  # 0 - 1 - 2 - 3 rooted at 1
    vocab = [3, 3, 3, 3]
    model = hclt(parent, block, 4, vocab, [0, 1, 0, 1] if tied else None, layers)
    total = model.log_likelihood(all_assignments(vocab)).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-12)


def test_per_variable_vocabularies_and_missing_values():
    parent = [2, 2, -1, 2, 1]
    vocab = [3, 2, 3, 3, 2]
    model = hclt(parent, "monarch", 4, vocab)
    x = all_assignments(vocab)
    p = model.log_likelihood(x).exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)  # no mass beyond a vocabulary
    assert [int(sum(w.shape[0] for w in model.leaves if w.shape[-1] == v)) for v in (2, 3)] \
        == [2, 3]  # one leaf per variable, over exactly its own values
    with pytest.raises(ValueError, match="outside its variable's vocabulary"):
        model.log_likelihood(torch.tensor([[0, 2, 0, 0, 0]]))
    # marginalizing variable 3 (MISSING) sums its values out
    partial = x[x[:, 3] == 0].clone()
    partial[:, 3] = MISSING
    marg = torch.stack([p[(x[:, [0, 1, 2, 4]] == r[[0, 1, 2, 4]]).all(1)].sum() for r in partial])
    torch.testing.assert_close(model.log_likelihood(partial).exp(), marg)


def test_samples_follow_the_distribution():
    parent = [2, 2, -1, 2, 1]
    vocab = [3, 2, 3, 3, 2]
    for block in ("dense", "monarch"):
        model = hclt(parent, block, 4, vocab, channels=[0, 1, 0, 0, 1])
        x = all_assignments(vocab)
        p = model.log_likelihood(x).exp()
        s = model.sample(40000, generator=torch.Generator().manual_seed(1))
        assert s.shape == (40000, 5) and (s < torch.tensor(vocab)).all()
        # chi-square against the 108 enumerated assignments, with a power control
        assert_samples_follow(s, x, p.detach())


def random_tree(d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parent = np.array([-1] + [int(rng.integers(0, v)) for v in range(1, d)])
    perm = rng.permutation(d)  # relabel so the root is not variable 0
    out = np.empty(d, dtype=np.int64)
    out[perm] = np.where(parent >= 0, perm[np.maximum(parent, 0)], -1)
    return out


def test_monarch_hclt_equals_dense_hclt_of_its_blocks():
    d, h = 12, 9
    parent = random_tree(d, 0)
    vocab = [5, 7, 7] * 4
    monarch = hclt(parent, "monarch", h, vocab, layers=3)
    dense = hclt(parent, "dense", h, vocab, seed=1)
    with torch.no_grad():
        dense.blocks.layers[0].copy_(monarch.blocks.dense()[:, None, None])
        dense.root.copy_(monarch.root)
        for a, b in zip(dense.leaves, monarch.leaves, strict=True):
            a.copy_(b)
    gen = torch.Generator().manual_seed(2)
    x = torch.stack([torch.randint(0, v, (64,), generator=gen) for v in vocab], 1)
    torch.testing.assert_close(dense.log_likelihood(x), monarch.log_likelihood(x))
    assert monarch.madds_per_token() == round(((d - 1) * h * (3 + 3 + 3) + h) / d)
    copy = hclt(parent, "monarch", h, vocab, seed=5)
    copy.load_state_dict(monarch.state_dict())  # same tree: loads
    torch.testing.assert_close(copy.log_likelihood(x), monarch.log_likelihood(x))
    with pytest.raises(ValueError, match="another Chow-Liu tree"):
        hclt(random_tree(d, 1), "monarch", h, vocab).load_state_dict(monarch.state_dict())
    assert dense.madds_per_token() == round(((d - 1) * h * h + h) / d)


@pytest.mark.parametrize("block", ["dense", "monarch"])
def test_full_batch_em_never_lowers_the_likelihood(block):
    gen = torch.Generator().manual_seed(0)
    parent = random_tree(6, 3)
    x = torch.randint(0, 4, (300, 6), generator=gen)
    x[:, 1] = (x[:, 0] + torch.randint(0, 2, (300,), generator=gen)) % 4  # some structure
    model = hclt(parent, block, 4, [4] * 6)
    lls = []
    for _ in range(8):
        lls.append(accumulate_flows(model, x).sum().item())
        em_step(model, eta=1.0, pseudocount=0.0)
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(lls))
    assert lls[-1] > lls[0] + 1.0


def test_build_model_hclt_from_config():
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 6, (200, 12), generator=gen)
    rows[:, 5] = rows[:, 4]  # strongly dependent: must be adjacent in the tree
    cfg = {"structure": "hclt", "block": "monarch", "hidden_size": 16, "k": 2, "factors": None,
           "monarch_layers": 3, "leaf_tying": "channel", "channels": 3, "chow_liu_rows": 100,
           "chow_liu_bins": None, "perturbation": 2.0}
    vocab = [4, 6, 6] * 4
    rows[:, 0::3] %= 4
    model = build_model(cfg, 6, gen, train_rows=rows, vocab_sizes=vocab)
    assert isinstance(model, HCLT) and model.blocks.spec.factors == (4, 4)
    assert len(model.leaves) == 3  # one leaf per channel
    assert model.parent[5] == 4 or model.parent[4] == 5
    assert model.madds_per_token() == round((11 * 16 * 12 + 16) / 12)
    ll = model.log_likelihood(rows.long())
    assert ll.shape == (200,) and torch.isfinite(ll).all()
    assert model.sample(3).shape == (3, 12)
    with pytest.raises(ConfigError, match="train_rows"):
        build_model(cfg, 6, gen)
    with pytest.raises(ConfigError, match="leaf_tying"):
        build_model({**cfg, "leaf_tying": "pixel"}, 6, gen, train_rows=rows, vocab_sizes=vocab)
