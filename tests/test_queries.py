"""Exact conditional queries against brute-force enumeration on tiny circuits.

Every probability here is recomputed from the materialized parameters (dense transition
matrices, leaves, root) by summing over all hidden states and all value assignments,
independently of the circuits' own recursions. Sample frequencies are compared with the
enumerated conditional distribution by Pearson's chi-square statistic.

Most likely completions (``*_map``) are checked against the argmax of the enumerated joint
table of every variable: the values x and the hidden states z, with each Monarch block's
intermediate layer indices k maximized out by enumerating every path through its layers
(the k of different blocks are separate variables, each in one factor only, so maximizing
them inside their factor is the same as maximizing the whole table over them).
"""

from __future__ import annotations

import itertools
import math
import string

import pytest
import torch

from monarchpc import queries
from monarchpc.circuits.blocks import BlockSpec, SumBlocks
from monarchpc.circuits.hclt import HCLT
from monarchpc.queries import (
    MISSING,
    hclt_map,
    hclt_marginals,
    hclt_sample,
    hmm_map,
    hmm_marginals,
    hmm_sample,
    marginal_argmax,
    transpose_apply,
)
from monarchpc.structures import build_model
from tests.helpers import chi2, chi2_critical, renormalized

HMM_CONFIGS = [{"structure": "hmm", "block": "dense", "hidden_size": 3},
               {"structure": "hmm", "block": "monarch", "hidden_size": 4, "k": 2}]
V, T = 3, 4  # 81 sequences
SAMPLES = 20_000


# --------------------------------------------------------------------------------- HMM

def tiny_hmm(cfg: dict, seed: int = 0) -> torch.nn.Module:
    return renormalized(build_model({**cfg, "perturbation": 16.0}, V,
                                    generator=torch.Generator().manual_seed(seed)))


def hmm_joint(hmm) -> dict[tuple[int, ...], float]:
    """p(x) of every sequence of length T: sum over all h^T hidden paths."""
    g, m = hmm.initial.detach(), hmm.transition.dense()[0].double()
    b = hmm.emission.detach()
    h = len(g)
    out = {}
    for x in itertools.product(range(V), repeat=T):
        total = 0.0
        for z in itertools.product(range(h), repeat=T):
            p = g[z[0]] * b[z[0], x[0]]
            for t in range(1, T):
                p = p * m[z[t - 1], z[t]] * b[z[t], x[t]]
            total += float(p)
        out[x] = total
    return out


def conditional(joint: dict, observed: list[int]) -> dict[tuple[int, ...], float]:
    """p(full row | observed entries) for every row consistent with ``observed``."""
    fits = {x: p for x, p in joint.items()
            if all(o in (MISSING, v) for o, v in zip(observed, x, strict=True))}
    z = sum(fits.values())
    return {x: p / z for x, p in fits.items()}


PATTERNS = [[MISSING, 1, MISSING, MISSING], [2, MISSING, MISSING, 0],
            [MISSING] * T, [0, 2, 1, MISSING]]


@pytest.fixture(scope="module", params=range(len(HMM_CONFIGS)), ids=["dense", "monarch"])
def hmm_and_joint(request):
    # seeds whose evidence is informative, so the power checks below mean something
    hmm = tiny_hmm(HMM_CONFIGS[request.param], seed=(3, 1)[request.param])
    return hmm, hmm_joint(hmm)


def test_brute_force_joint_is_the_models_likelihood(hmm_and_joint):
    hmm, joint = hmm_and_joint
    assert sum(joint.values()) == pytest.approx(1.0, abs=1e-12)
    x = torch.tensor(list(joint))
    assert torch.allclose(hmm.log_likelihood(x).exp(), torch.tensor(list(joint.values()),
                                                                   dtype=torch.float64))


def test_transpose_apply_is_the_transposed_matrix(hmm_and_joint):
    hmm, _ = hmm_and_joint
    u = torch.rand(5, hmm.hidden_size, dtype=torch.float64)
    assert torch.allclose(transpose_apply(hmm.transition, u), u @ hmm.transition.dense()[0])


def test_hmm_marginals_equal_enumeration(hmm_and_joint):
    hmm, joint = hmm_and_joint
    x = torch.tensor(PATTERNS)
    got = hmm_marginals(hmm, x)
    assert got.shape == (len(PATTERNS), T, V)
    assert torch.allclose(got.sum(-1), torch.ones(len(PATTERNS), T, dtype=torch.float64))
    for r, pattern in enumerate(PATTERNS):
        for t in range(T):
            others = [MISSING if s == t else v for s, v in enumerate(pattern)]
            cond = conditional(joint, others)
            want = [sum(p for xs, p in cond.items() if xs[t] == v) for v in range(V)]
            assert torch.allclose(got[r, t], torch.tensor(want, dtype=torch.float64),
                                  atol=1e-10), (pattern, t)


@pytest.mark.parametrize("pattern", PATTERNS[:3])
def test_hmm_conditional_sample_frequencies(hmm_and_joint, pattern):
    hmm, joint = hmm_and_joint
    x = torch.tensor([pattern] * SAMPLES)
    samples = hmm_sample(hmm, x, torch.Generator().manual_seed(1))
    observed = torch.tensor(pattern) != MISSING
    assert torch.equal(samples[:, observed], x[:, observed])  # evidence is kept
    stat, df = chi2(samples, conditional(joint, pattern))
    assert stat < chi2_critical(df), (stat, df)
    if observed.any():  # the test has power: unconditional samples with the evidence
        free = hmm_sample(hmm, torch.full((SAMPLES, T), MISSING),  # pasted in are rejected
                          torch.Generator().manual_seed(2))
        free[:, observed] = x[:, observed]
        stat, df = chi2(free, conditional(joint, pattern))
        assert stat > chi2_critical(df)


def test_hmm_queries_reject_bad_values(hmm_and_joint):
    hmm, _ = hmm_and_joint
    with pytest.raises(ValueError, match="MISSING"):
        hmm_sample(hmm, torch.tensor([[0, V]]))
    with pytest.raises(ValueError, match="rows"):
        hmm_marginals(hmm, torch.tensor([0, 1]))


# -------------------------------------------------------------------------------- HCLT

PARENT = [1, -1, 1, 2]  # 1 is the root; 0 and 2 its children, 3 below 2
H_HCLT = 4


@pytest.fixture(scope="module", params=["dense", "monarch"])
def hclt_and_joint(request):
    g = torch.Generator().manual_seed(3)
    spec = BlockSpec.from_config({"structure": "hclt", "block": request.param,
                                  "hidden_size": H_HCLT, "monarch_layers": 3})
    blocks = SumBlocks(spec, len(PARENT) - 1, g, 8.0)
    model = renormalized(HCLT(PARENT, blocks, [V] * len(PARENT), None, g, 8.0))
    return model, hclt_joint(model)


def hclt_joint(model: HCLT) -> dict[tuple[int, ...], float]:
    """p(x) of every assignment: the joint of all latents (einsum over the tree), times the
    leaves, summed over the latents."""
    d = len(PARENT)
    letters = string.ascii_lowercase[:d]  # latent z_v
    values = string.ascii_lowercase[d:2 * d]  # x_v
    pos = model.inverse.tolist()  # variable -> internal position
    mats = model.blocks.dense().detach()  # (D - 1, h, h): edge into internal node i: i - 1
    leaves = model.leaves[0].detach()  # one group, rows in internal order
    terms, operands = [letters[PARENT.index(-1)]], [model.root.detach()]
    for v, p in enumerate(PARENT):
        if p >= 0:
            terms.append(letters[p] + letters[v])
            operands.append(mats[pos[v] - 1])
        terms.append(letters[v] + values[v])
        operands.append(leaves[pos[v]])
    table = torch.einsum(",".join(terms) + "->" + values, *operands)
    return {x: float(table[x]) for x in itertools.product(range(V), repeat=d)}


def test_hclt_brute_force_joint_is_the_models_likelihood(hclt_and_joint):
    model, joint = hclt_and_joint
    assert sum(joint.values()) == pytest.approx(1.0, abs=1e-12)
    x = torch.tensor(list(joint))
    assert torch.allclose(model.log_likelihood(x).exp(),
                          torch.tensor(list(joint.values()), dtype=torch.float64))


@pytest.mark.parametrize("pattern", [[MISSING, 2, MISSING, MISSING], [0, MISSING, MISSING, 1],
                                     [MISSING, MISSING, 2, MISSING]])
def test_hclt_conditional_sample_frequencies(hclt_and_joint, pattern):
    model, joint = hclt_and_joint
    x = torch.tensor([pattern] * SAMPLES)
    samples = hclt_sample(model, x, torch.Generator().manual_seed(4))
    observed = torch.tensor(pattern) != MISSING
    assert torch.equal(samples[:, observed], x[:, observed])
    stat, df = chi2(samples, conditional(joint, pattern))
    assert stat < chi2_critical(df), (stat, df)


def test_chi2_test_rejects_a_wrong_distribution(hclt_and_joint):
    """The statistic has power at this sample size: samples of the unconditional law are
    rejected as samples of a conditional one."""
    model, joint = hclt_and_joint
    pattern = [0, MISSING, MISSING, 1]
    prior = hclt_sample(model, torch.full((SAMPLES, len(PARENT)), MISSING),
                        torch.Generator().manual_seed(5))
    stat, df = chi2(prior, joint)
    assert stat < chi2_critical(df)
    cond = conditional(joint, pattern)
    free = prior.clone()
    free[:, 0], free[:, 3] = 0, 1  # observed values pasted onto unconditional samples
    stat, df = chi2(free, cond)
    assert stat > chi2_critical(df)


# ------------------------------------------------------- brute force over every variable

Factor = tuple[tuple[int, ...], torch.Tensor]


def path_matrix(blocks: SumBlocks, e: int, reduce: str) -> torch.Tensor:
    """Block e's matrix over (parent state i, child state j) with its intermediate layer
    indices k_1..k_{m-1} summed ("sum": the block's M) or maximized ("max") out, by
    enumerating every path i -> k_1 -> ... -> k_{m-1} -> j through the layers' dense
    matrices (L_0 first: M = L_0 L_1 ... L_{m-1})."""
    layers = [blocks.layer_dense(l)[e].double() for l in range(len(blocks.layers))]
    h = layers[0].shape[0]
    out = torch.zeros(h, h, dtype=torch.float64)
    for ks in itertools.product(range(h), repeat=len(layers) - 1):
        term = layers[0] if not ks else layers[0][:, ks[0], None]
        for l, k in enumerate(ks[1:], start=1):
            term = term * layers[l][ks[l - 1], k]
        if ks:
            term = term * layers[-1][ks[-1]][None, :]
        out = out + term if reduce == "sum" else torch.maximum(out, term)
    return out


def joint_table(sizes: list[int], factors: list[Factor]) -> torch.Tensor:
    """The product of ``factors`` (variables, table) as one tensor over every variable."""
    out = torch.ones(sizes, dtype=torch.float64)
    for dims, table in factors:
        order = sorted(range(len(dims)), key=lambda a: dims[a])
        shape = [1] * len(sizes)
        for d in dims:
            shape[d] = sizes[d]
        out = out * table.double().permute(order).reshape(shape)
    return out


def with_evidence(table: torch.Tensor, pattern: list[int]) -> torch.Tensor:
    """``table`` (values first, in the order of ``pattern``) zeroed where a value
    contradicts an observed entry of ``pattern``."""
    out = table.clone()
    for v, o in enumerate(pattern):
        if o != MISSING:
            keep = torch.zeros(table.shape[v], dtype=torch.bool)
            keep[o] = True
            shape = [1] * table.dim()
            shape[v] = -1
            out = out * keep.reshape(shape)
    return out


def brute_map(table: torch.Tensor, pattern: list[int]) -> tuple[list[int], float]:
    """argmax over every variable of ``table`` given the observed entries: (the values of
    the first len(pattern) variables, log of the maximum)."""
    t = with_evidence(table, pattern)
    flat = int(t.argmax())
    index = list(torch.unravel_index(torch.tensor(flat), t.shape))
    return [int(i) for i in index[:len(pattern)]], math.log(float(t.flatten()[flat]))


def brute_marginals(table: torch.Tensor, pattern: list[int], vocab: list[int]) -> torch.Tensor:
    """p(x_v = k | the observed entries of ``pattern`` other than v), (D, max vocab), by
    summing ``table`` over everything else."""
    d = len(pattern)
    px = table.sum(dim=tuple(range(d, table.dim()))) if table.dim() > d else table
    out = torch.zeros(d, max(vocab), dtype=torch.float64)
    for v in range(d):
        others = [MISSING if u == v else o for u, o in enumerate(pattern)]
        t = with_evidence(px, others)
        m = t.sum(dim=tuple(u for u in range(d) if u != v))
        out[v, :vocab[v]] = m / m.sum()
    return out


def hmm_factors(hmm, reduce: str) -> tuple[list[int], list[Factor]]:
    """Variables x_0..x_{T-1} (V values), then z_0..z_{T-1} (h); the transition with its
    layer indices summed or maximized out (:func:`path_matrix`)."""
    h = hmm.hidden_size
    m = path_matrix(hmm.transition, 0, reduce)
    factors: list[Factor] = [((T,), hmm.initial.detach())]
    for t in range(T):
        factors.append(((T + t, t), hmm.emission.detach()))
        if t + 1 < T:
            factors.append(((T + t, T + t + 1), m))
    return [V] * T + [h] * T, factors


def leaf_of(model: HCLT, v: int) -> torch.Tensor:
    """Variable v's leaf (h, V_v): the row of its leaf group at its internal position."""
    p = int(model.inverse[v])
    for groups in model.level_groups:
        for g, gs, ge, row in groups:
            if gs <= p < ge:
                return model.leaves[g].detach()[row + (p - gs) * (not model.tied)]
    raise AssertionError(f"variable {v} is in no leaf group")


def hclt_factors(model: HCLT, reduce: str) -> tuple[list[int], list[Factor]]:
    """Variables x_0..x_{D-1} (their vocabularies), then z_0..z_{D-1} (h); every edge block
    with its layer indices summed or maximized out."""
    d, h = model.num_vars, model.hidden_size
    parent = model.parent.tolist()
    factors: list[Factor] = [((d + parent.index(-1),), model.root.detach())]
    for v, p in enumerate(parent):
        factors.append(((d + v, v), leaf_of(model, v)))
        if p >= 0:
            factors.append(((d + p, d + v), path_matrix(model.blocks, int(model.inverse[v]) - 1,
                                                         reduce)))
    return model.vocab_sizes + [h] * d, factors


def test_path_matrix_sums_to_the_block_and_its_max_differs_when_paths_branch():
    g = torch.Generator().manual_seed(0)
    monarch3 = SumBlocks(BlockSpec.monarch([2, 3], [0, 1, 0]), 2, g, 4.0).double()
    assert torch.allclose(path_matrix(monarch3, 1, "sum"), monarch3.dense()[1])
    # layers on axes 0, 1, 0: a path i -> (a, i_1) -> (a, j_1) -> j for every a, so the
    # max over paths is below the block's entries (their sums)
    assert bool((path_matrix(monarch3, 1, "max") < monarch3.dense()[1] - 1e-6).all())
    # Monarch-k (each axis once): one path per entry, the max is the materialized matrix
    monarch2 = SumBlocks(BlockSpec.monarch([2, 3]), 1, g, 4.0).double()
    assert torch.allclose(path_matrix(monarch2, 0, "max"), monarch2.dense()[0])


@pytest.mark.parametrize("factors,axes", [([6], [0]), ([2, 3], [0, 1]), ([2, 3], [0, 1, 0]),
                                          ([2, 1, 3], [2, 0, 1, 2])])
def test_max_apply_pointers_walk_a_best_path(factors, axes):
    """max_apply's values are the max over paths (enumerated), and the child state its
    pointers lead to attains that value: log out[i] = log maxpath[i, j*] + log y[j*]."""
    g = torch.Generator().manual_seed(1)
    blocks = SumBlocks(BlockSpec.monarch(factors, axes), 2, g, 4.0).double()
    log_w = [w.detach().log() for w in blocks.layers]
    log_y = torch.randn(2, 5, blocks.hidden_size, generator=g, dtype=torch.float64)
    out, pointers = queries.max_apply(log_w, log_y)
    for e in range(2):
        best = path_matrix(blocks, e, "max").log()  # (parent i, child j)
        want = (best[None] + log_y[e][:, None, :]).amax(-1)  # (N, h)
        assert torch.allclose(out[e], want)
        for i in range(blocks.hidden_size):
            z = queries.follow_pointers(pointers, log_w,
                                        torch.full((2, 5), i, dtype=torch.long))[e]
            assert torch.allclose(best[i, z] + log_y[e, torch.arange(5), z], want[:, i])


MAP_PATTERNS = [[MISSING, 1, MISSING, MISSING], [2, MISSING, MISSING, 0], [MISSING] * T,
                [0, 2, 1, MISSING], [1, 0, 2, 2]] + [  # and every mask of one full row
    [MISSING if bit else v for bit, v in zip(bits, (2, 0, 0, 1), strict=True)]
    for bits in itertools.product((0, 1), repeat=T)]


def test_hmm_map_is_the_brute_force_argmax(hmm_and_joint):
    hmm, _ = hmm_and_joint
    sizes, factors = hmm_factors(hmm, "max")
    table = joint_table(sizes, factors)
    rows, log_p = hmm_map(hmm, torch.tensor(MAP_PATTERNS))
    for r, pattern in enumerate(MAP_PATTERNS):
        want, want_log_p = brute_map(table, pattern)
        assert rows[r].tolist() == want, pattern
        assert float(log_p[r]) == pytest.approx(want_log_p, abs=1e-9), pattern


def test_hmm_marginal_argmax_is_the_brute_force_one(hmm_and_joint):
    hmm, _ = hmm_and_joint
    table = joint_table(*hmm_factors(hmm, "sum"))
    x = torch.tensor(MAP_PATTERNS)
    rows = marginal_argmax(x, hmm_marginals(hmm, x))
    for r, pattern in enumerate(MAP_PATTERNS):
        want = brute_marginals(table, pattern, [V] * T).argmax(-1).tolist()
        assert rows[r].tolist() == [o if o != MISSING else w
                                    for o, w in zip(pattern, want, strict=True)]


HCLT_CASES = {  # block, vocabularies, channels of tied leaves
    "dense": ("dense", [V] * 4, None),
    "monarch": ("monarch", [V] * 4, None),
    "monarch-tied-mixed": ("monarch", [3, 2, 3, 2], [0, 1, 0, 1]),
}
HCLT_PATTERNS = [[MISSING, 1, MISSING, MISSING], [0, MISSING, MISSING, 1], [MISSING] * 4,
                 [MISSING, MISSING, 2, MISSING], [2, 1, 0, 1]]


@pytest.fixture(scope="module", params=list(HCLT_CASES))
def hclt_case(request):
    block, vocab, channels = HCLT_CASES[request.param]
    g = torch.Generator().manual_seed(5)
    spec = BlockSpec.from_config({"structure": "hclt", "block": block, "hidden_size": H_HCLT,
                                  "monarch_layers": 3})
    blocks = SumBlocks(spec, len(PARENT) - 1, g, 8.0)
    model = renormalized(HCLT(PARENT, blocks, vocab, channels, g, 8.0))
    return model, joint_table(*hclt_factors(model, "sum")), joint_table(*hclt_factors(model,
                                                                                      "max"))


def test_hclt_brute_force_tables_are_the_models_likelihood(hclt_case):
    model, table, _ = hclt_case
    px = table.sum(dim=tuple(range(4, 8)))
    x = torch.tensor(list(itertools.product(*(range(v) for v in model.vocab_sizes))))
    assert torch.allclose(model.log_likelihood(x).exp(), px[tuple(x.t())])
    assert float(px.sum()) == pytest.approx(1.0, abs=1e-12)


def test_hclt_marginals_equal_enumeration(hclt_case):
    model, table, _ = hclt_case
    got = hclt_marginals(model, torch.tensor(HCLT_PATTERNS))
    assert got.shape == (len(HCLT_PATTERNS), 4, max(model.vocab_sizes))
    for r, pattern in enumerate(HCLT_PATTERNS):
        want = brute_marginals(table, pattern, model.vocab_sizes)
        assert torch.allclose(got[r], want, atol=1e-10), pattern


def test_hclt_map_is_the_brute_force_argmax(hclt_case):
    model, _, table = hclt_case
    rows, log_p = hclt_map(model, torch.tensor(HCLT_PATTERNS))
    for r, pattern in enumerate(HCLT_PATTERNS):
        want, want_log_p = brute_map(table, pattern)
        assert rows[r].tolist() == want, pattern
        assert float(log_p[r]) == pytest.approx(want_log_p, abs=1e-9), pattern


def test_hclt_map_maximizes_over_the_monarch_layer_indices():
    """With layers on axes 0, 1, 0 the max-product value is the max over paths, below the
    max over the materialized blocks' entries: the oracle tells the two apart."""
    g = torch.Generator().manual_seed(5)
    spec = BlockSpec.from_config({"structure": "hclt", "block": "monarch",
                                  "hidden_size": H_HCLT, "monarch_layers": 3})
    model = renormalized(HCLT(PARENT, SumBlocks(spec, len(PARENT) - 1, g, 8.0), [V] * 4, None,
                              g, 8.0))
    materialized = joint_table(*hclt_factors(model, "sum"))  # the blocks' entries, no k
    _, log_p = hclt_map(model, torch.tensor(HCLT_PATTERNS))
    for r, pattern in enumerate(HCLT_PATTERNS):
        assert float(log_p[r]) < brute_map(materialized, pattern)[1] - 1e-6


def test_hclt_marginal_argmax_is_the_brute_force_one(hclt_case):
    model, table, _ = hclt_case
    x = torch.tensor(HCLT_PATTERNS)
    rows = marginal_argmax(x, hclt_marginals(model, x))
    for r, pattern in enumerate(HCLT_PATTERNS):
        want = brute_marginals(table, pattern, model.vocab_sizes).argmax(-1).tolist()
        assert rows[r].tolist() == [o if o != MISSING else w
                                    for o, w in zip(pattern, want, strict=True)]


def test_max_apply_in_row_chunks_is_the_same(hclt_case, monkeypatch):
    model, _, _ = hclt_case
    x = torch.tensor(HCLT_PATTERNS * 3)
    rows, log_p = hclt_map(model, x)
    monkeypatch.setattr(queries, "_CHUNK", 1)  # one row at a time
    rows_1, log_p_1 = hclt_map(model, x)
    assert torch.equal(rows, rows_1) and torch.equal(log_p, log_p_1)


def test_hclt_queries_reject_bad_values(hclt_case):
    model, _, _ = hclt_case
    vocab = model.vocab_sizes
    for query in (hclt_map, hclt_marginals):
        with pytest.raises(ValueError, match="MISSING"):
            query(model, torch.tensor([[max(vocab)] + [0] * 3]))
        if vocab[1] < max(vocab):  # within the largest vocabulary, outside x_1's own
            with pytest.raises(ValueError, match="outside its variable's vocabulary"):
                query(model, torch.tensor([[0, vocab[1], 0, 0]]))
        with pytest.raises(ValueError, match="rows"):
            query(model, torch.tensor([[0, 1]]))
