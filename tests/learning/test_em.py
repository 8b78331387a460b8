"""Flows and EM: flows equal brute-force expected counts; full-batch EM never lowers the
likelihood; step-size schedules."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from monarchpc.circuits import SumBlocks, dense_block, monarch_block
from monarchpc.circuits.hmm import HMM
from monarchpc.learning.em import EM, accumulate_flows, em_step, flows
from monarchpc.learning.schedules import step_size


def as_double(module: torch.nn.Module) -> torch.nn.Module:
    module.double()
    for p in module.parameters():
        p.data /= p.data.sum(-1, keepdim=True)
    return module


def layer_matrices(block: SumBlocks) -> list[np.ndarray]:
    """The transition as a chain of dense layers: [A] for dense, [L_0, ..., L_{k-1}]."""
    return [block.layer_dense(d)[0].numpy() for d in range(len(block.layers))]


def brute_force_counts(hmm: HMM, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, list]:
    """Expected counts of initial, emission and every transition-layer edge, summed over the
    rows of x, by enumerating every path of hidden and intermediate (between-layer) states."""
    g, b = hmm.initial.detach().numpy(), hmm.emission.detach().numpy()
    layers = layer_matrices(hmm.transition)
    h, k = hmm.hidden_size, len(layers)
    c_init, c_emit = np.zeros(h), np.zeros_like(b)
    c_layers = [np.zeros((h, h)) for _ in layers]
    for row in x.tolist():
        t_len = len(row)
        paths, weights = [], []
        # a path: z_1, then per transition k states (k - 1 intermediates and z_{t+1})
        for path in itertools.product(range(h), repeat=1 + k * (t_len - 1)):
            w = g[path[0]] * b[path[0], row[0]]
            for t in range(t_len - 1):
                prev = path[k * t]
                for d in range(k):
                    cur = path[k * t + 1 + d]
                    w *= layers[d][prev, cur]
                    prev = cur
                w *= b[prev, row[t + 1]]
            paths.append(path)
            weights.append(w)
        post = np.array(weights) / sum(weights)
        for path, p in zip(paths, post, strict=True):
            c_init[path[0]] += p
            for t in range(t_len):
                c_emit[path[k * t], row[t]] += p
            for t in range(t_len - 1):
                for d in range(k):
                    c_layers[d][path[k * t + d], path[k * t + d + 1]] += p
    return c_init, c_emit, c_layers


def flow_matrices(block: SumBlocks) -> list[np.ndarray]:
    """The accumulated flows of each layer, laid out as dense (h, h) matrices."""
    holder = SumBlocks(block.spec).double()
    for d, layer in enumerate(block.layers):
        holder.layers[d].data = flows(layer)  # a layer is linear in its weights
    return [holder.layer_dense(d)[0].numpy() for d in range(len(block.layers))]


@pytest.mark.parametrize(("make", "length"), [
    (lambda g: dense_block(3, g), 4),
    (lambda g: monarch_block([2, 2], g), 3),
    (lambda g: monarch_block([2, 1, 2], g), 3),
    (lambda g: monarch_block([2, 2, 2], g), 2),
])
def test_flows_equal_expected_counts(make, length: int) -> None:
    g = torch.Generator().manual_seed(0)
    hmm = as_double(HMM(make(g), vocab_size=3, generator=g, perturbation=3.0))
    x = torch.randint(0, 3, (3, length), generator=g)
    accumulate_flows(hmm, x)
    c_init, c_emit, c_layers = brute_force_counts(hmm, x)
    np.testing.assert_allclose(flows(hmm.initial).numpy(), c_init, atol=1e-10)
    np.testing.assert_allclose(flows(hmm.emission).numpy(), c_emit, atol=1e-10)
    for got, want in zip(flow_matrices(hmm.transition), c_layers, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-10)
    # every row contributes one unit of initial flow and T units of emission flow
    assert abs(flows(hmm.initial).sum().item() - 3) < 1e-10
    assert abs(flows(hmm.emission).sum().item() - 3 * length) < 1e-9


@pytest.mark.parametrize("update", ["probs", "counts"])
@pytest.mark.parametrize("make", [
    lambda g: dense_block(8, g),
    lambda g: monarch_block([2, 4], g),
    lambda g: monarch_block([2, 2, 2], g),
])
def test_full_batch_em_never_lowers_the_likelihood(make, update: str) -> None:
    g = torch.Generator().manual_seed(1)
    truth = HMM(dense_block(4, g, perturbation=6.0), 5, g, perturbation=6.0)
    x = truth.sample(300, 12, generator=g)
    hmm = as_double(HMM(make(g), vocab_size=5, generator=g))
    history, em = [], EM(update, pseudocount=0.0)
    for _ in range(15):
        history.append(float(accumulate_flows(hmm, x).sum()))
        em.step(hmm, eta=1.0)
    assert all(b >= a - 1e-8 * abs(a) for a, b in itertools.pairwise(history))
    assert history[-1] > history[0] + 1.0  # and it does learn
    for p in hmm.parameters():  # parameters stay normalized
        torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))


class Weight(torch.nn.Module):
    """One stochastic (h, h) parameter: the smallest module EM updates."""

    def __init__(self, h: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((h, h), 1.0 / h))


def test_em_step_mixes_with_step_size_and_pseudocount() -> None:
    block = Weight(2)
    block.weight.data = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    block.weight.grad = torch.tensor([[2.0, 6.0], [0.0, 0.0]])  # flows [[1, 3], [0, 0]]
    em_step(block, eta=0.5, pseudocount=0.0)
    torch.testing.assert_close(block.weight.data, torch.tensor([[0.375, 0.625], [0.9, 0.1]]))
    block.weight.grad = torch.zeros(2, 2)
    em_step(block, eta=1.0, pseudocount=1.0)  # no flow: the pseudocount makes rows uniform
    torch.testing.assert_close(block.weight.data, torch.full((2, 2), 0.5))
    assert block.weight.grad is None
    with pytest.raises(ValueError):
        em_step(block, eta=1.5, pseudocount=0.0)


def test_counts_rule_is_a_running_average_of_expected_counts() -> None:
    """S <- (1 - eta) S + eta F from S = 0, theta = S / sum(S), against a hand computation."""
    block = Weight(2)
    block.weight.data = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    em = EM("counts", pseudocount=0.0)
    block.weight.grad = torch.tensor([[2.0, 6.0], [0.0, 0.0]])  # flows [[1, 3], [0, 0]]
    em.step(block, eta=0.5)  # first update: normalize(F) whatever eta; row 2 has no flow
    torch.testing.assert_close(block.weight.data, torch.tensor([[0.25, 0.75], [0.9, 0.1]]))
    block.weight.grad = torch.tensor([[12.0, 0.0], [0.0, 10.0]])  # flows [[3, 0], [0, 1]]
    em.step(block, eta=0.5)  # S = 0.5 * [0.5, 1.5] + 0.5 * [3, 0]; row 2: 0.5 * [0, 1]
    torch.testing.assert_close(block.weight.data,
                               torch.tensor([[1.75 / 2.5, 0.75 / 2.5], [0.0, 1.0]]))
    resumed = EM("counts", pseudocount=0.0)
    resumed.load_state_dict(em.state_dict())
    torch.testing.assert_close(resumed.totals["weight"], torch.tensor([[2.5], [0.5]]))


@pytest.mark.parametrize("update", ["probs", "counts"])
def test_floor_keeps_every_probability_positive_and_rows_normalized(update: str) -> None:
    g = torch.Generator().manual_seed(3)
    truth = HMM(dense_block(3, g), 4, g)
    x = truth.sample(50, 6, generator=g)
    hmm = HMM(dense_block(6, g), 4, g)
    em = EM(update, pseudocount=0.0, floor=1e-10)
    for _ in range(5):
        accumulate_flows(hmm, x)
        em.step(hmm, eta=1.0)
    hmm.emission.data[0] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # an exact zero appears ...
    accumulate_flows(hmm, x)
    em.step(hmm, eta=1.0)  # ... and is floored
    for p in hmm.parameters():
        assert float(p.detach().min()) >= 1e-10 * (1 - 1e-6)
        torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))


def test_step_size_schedules() -> None:
    assert step_size("linear", 0, 100) == 1.0
    assert step_size("linear", 50, 100) == pytest.approx(0.5)
    assert 0 < step_size("linear", 99, 100) < 0.02
    assert step_size("cosine", 0, 100) == 1.0
    assert step_size("cosine", 50, 100) == pytest.approx(0.5)
    assert step_size("cosine", 100, 100) == pytest.approx(0.0)
    assert step_size("constant", 70, 100, eta0=0.3) == 0.3
    values = [step_size("cosine", u, 40) for u in range(40)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    with pytest.raises(ValueError, match="unknown step-size schedule"):
        step_size("exponential", 0, 10)
    assert math.isclose(step_size("linear", 10, 20, eta0=1.0, eta_min=0.2), 0.6)


@pytest.mark.parametrize("factors", [[12], [3, 4], [2, 2, 3]])
def test_text8_space_states(factors: list[int]) -> None:
    """init.space_token: only states whose last Monarch index is last may emit the space,
    no designated state moves to another, and the parameters stay normalized."""
    from monarchpc.init.initialize import space_states

    g = torch.Generator().manual_seed(0)
    block = dense_block(12, g) if len(factors) == 1 else monarch_block(factors, g)
    hmm = HMM(block, 5, g)
    space_states(hmm, 0)
    b = factors[-1]
    designated = torch.arange(12) % b == b - 1
    emission = hmm.emission.detach()
    assert bool((emission[~designated, 0] == 0).all()) and bool((emission[designated, 0] > 0).all())
    if len(factors) == 1:  # dense: the one designated state emits only the space
        torch.testing.assert_close(emission[designated], torch.tensor([[1.0, 0, 0, 0, 0]]))
    a = hmm.transition.dense()[0]
    assert float(a[designated][:, designated].max()) < 1e-7  # 1e-10 over a row sum
    for p in hmm.parameters():
        torch.testing.assert_close(p.detach().sum(-1), torch.ones_like(p.detach().sum(-1)))
