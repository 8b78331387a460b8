"""Exact conditional queries against brute-force enumeration on tiny circuits.

Every probability here is recomputed from the materialized parameters (dense transition
matrices, leaves, root) by summing over all hidden states and all value assignments,
independently of the circuits' own recursions. Sample frequencies are compared with the
enumerated conditional distribution by Pearson's chi-square statistic.
"""

from __future__ import annotations

import itertools
import math
import string

import pytest
import torch

from monarchpc.circuits.blocks import BlockSpec, SumBlocks
from monarchpc.circuits.hclt import HCLT
from monarchpc.queries import MISSING, hclt_sample, hmm_marginals, hmm_sample, transpose_apply
from monarchpc.structures import build_model
from tests.helpers import renormalized

HMM_CONFIGS = [{"structure": "hmm", "block": "dense", "hidden_size": 3},
               {"structure": "hmm", "block": "monarch", "hidden_size": 4, "k": 2}]
V, T = 3, 4  # 81 sequences
SAMPLES = 20_000


def chi2_critical(df: int, z: float = 3.0902) -> float:
    """The chi-square quantile at 1 - 0.001 (z = the normal 0.999 quantile) by the
    Wilson-Hilferty approximation (within 1% for df >= 3: df = 10 gives 29.62, the
    tabulated value is 29.59)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def chi2(samples: torch.Tensor, probs: dict[tuple[int, ...], float]) -> tuple[float, int]:
    """Pearson's statistic of the rows ``samples`` against ``probs`` (outcome -> p) and its
    degrees of freedom; outcomes expected fewer than 5 times are pooled into one cell."""
    n = len(samples)
    counts: dict[tuple[int, ...], int] = {}
    for row in map(tuple, samples.tolist()):
        counts[row] = counts.get(row, 0) + 1
    assert set(counts) <= set(probs), "a sample outside the support"
    cells, pooled_o, pooled_e = [], 0.0, 0.0
    for outcome, p in probs.items():
        o, e = counts.get(outcome, 0), n * p
        if e >= 5:
            cells.append((o, e))
        else:
            pooled_o, pooled_e = pooled_o + o, pooled_e + e
    if pooled_e > 0:
        cells.append((pooled_o, pooled_e))
    return sum((o - e) ** 2 / e for o, e in cells), len(cells) - 1


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
