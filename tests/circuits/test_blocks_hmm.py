"""Sum blocks and HMMs: normalization, materialization and sampling against brute force."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

from monarchpc.circuits import BlockSpec, SumBlocks, dense_block, factorize, monarch_block
from monarchpc.circuits.hmm import HMM, MISSING
from monarchpc.errors import ConfigError
from tests.helpers import assert_samples_follow, forward_log_likelihood

torch.set_default_dtype(torch.float32)

BLOCKS = {
    "dense": lambda g: dense_block(6, g),
    "monarch2": lambda g: monarch_block([2, 3], g),
    "monarch3": lambda g: monarch_block([2, 2, 2], g),
}


def as_double(module: torch.nn.Module) -> torch.nn.Module:
    """The module in float64, its stochastic parameters renormalized at that precision."""
    module.double()
    for p in module.parameters():
        p.data /= p.data.sum(-1, keepdim=True)
    return module


def all_sequences(vocab: int, length: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(vocab), repeat=length)))


@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_probabilities_of_all_sequences_sum_to_one(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    hmm = as_double(HMM(BLOCKS[kind](g), vocab_size=3, generator=g))
    x = all_sequences(3, 5)  # 243 sequences
    total = torch.logsumexp(hmm.log_likelihood(x).detach(), 0).exp()
    assert abs(float(total) - 1.0) < 1e-10


@pytest.mark.parametrize("factors", [[2, 3], [3, 2], [2, 2, 2], [2, 3, 2, 2], [4]])
def test_monarch_block_materializes_as_product_of_stochastic_layers(factors: list[int]) -> None:
    g = torch.Generator().manual_seed(1)
    block = as_double(monarch_block(factors, g))
    m = block.dense()[0]
    h = math.prod(factors)
    assert m.shape == (h, h)
    torch.testing.assert_close(m.sum(1), torch.ones(h, dtype=m.dtype))
    product = torch.eye(h, dtype=m.dtype)
    for d in range(len(factors)):
        product = product @ block.layer_dense(d)[0]  # M = L_0 @ L_1 @ ... @ L_{k-1}
    torch.testing.assert_close(m, product)
    y = torch.rand(7, h, generator=g, dtype=m.dtype)
    torch.testing.assert_close(block(y), y @ m.t())
    assert block.madds() == h * sum(factors)
    # each layer is block-diagonal up to a permutation: b_d non-zeros per row
    for d, b in enumerate(factors):
        assert int((block.layer_dense(d)[0] > 0).sum(1).max()) == b


def test_tied_monarch_layers_are_the_kronecker_product() -> None:
    g = torch.Generator().manual_seed(2)
    a = [dense_block(b, g).dense()[0].double() for b in (2, 3, 2)]
    block = monarch_block([2, 3, 2]).double()
    for d, layer in enumerate(block.layers):
        layer.data[:] = a[d]
    expected = torch.kron(torch.kron(a[0], a[1]), a[2])
    torch.testing.assert_close(block.dense()[0], expected)


@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_monarch_hmm_equals_dense_hmm_of_its_materialized_transition(kind: str) -> None:
    g = torch.Generator().manual_seed(3)
    hmm = as_double(HMM(BLOCKS[kind](g), vocab_size=4, generator=g))
    dense = as_double(HMM(dense_block(hmm.hidden_size), vocab_size=4))
    dense.transition.layers[0].data.copy_(hmm.transition.dense().view_as(dense.transition.layers[0]))
    dense.initial.data.copy_(hmm.initial.data)
    dense.emission.data.copy_(hmm.emission.data)
    x = torch.randint(0, 4, (16, 9), generator=g)
    torch.testing.assert_close(hmm.log_likelihood(x), dense.log_likelihood(x))


def test_marginal_of_missing_token_equals_brute_force_sum() -> None:
    g = torch.Generator().manual_seed(4)
    hmm = as_double(HMM(monarch_block([2, 2], g), vocab_size=3, generator=g))
    x = all_sequences(3, 4)
    p = hmm.log_likelihood(x).exp().reshape(3, 3, 3, 3)
    marginal = p.sum(dim=(1, 3))  # p(x_1, x_3), x_2 and x_4 summed out
    query = torch.tensor([[a, MISSING, c, MISSING] for a in range(3) for c in range(3)])
    torch.testing.assert_close(hmm.log_likelihood(query).exp().reshape(3, 3), marginal)


@pytest.mark.slow
def test_long_sequences_equal_a_log_space_forward_pass() -> None:
    """20,000 tokens (p itself underflows any float by far): the model's scaled recursion
    (fp32, and float64) equals the left-to-right forward algorithm in log space (float64)."""
    g = torch.Generator().manual_seed(5)
    hmm = HMM(monarch_block([4, 4], g), vocab_size=27, generator=g)
    x = torch.randint(0, 27, (2, 20_000), generator=g)
    x[1, 7_000:7_100] = MISSING
    ll = hmm.log_likelihood(x).detach()
    hmm64 = copy.deepcopy(hmm).double()  # the same parameters, materialized in float64
    with torch.no_grad():
        want = forward_log_likelihood(hmm64.initial, hmm64.transition.dense()[0],
                                      hmm64.emission, x)
        ll64 = hmm64.log_likelihood(x)
    assert float(want.max()) < -50_000  # about 20,000 log 27 nats: nothing trivial
    # fp32: 20,000 log scales summed in fp32 (measured 2.4e-6 of |log p|, 0.18 nats); float64:
    # the same recursion (measured 2.3e-14 of |log p|). Bounds about 10x.
    torch.testing.assert_close(ll.double(), want, rtol=2.5e-5, atol=0)
    torch.testing.assert_close(ll64, want, rtol=2.5e-13, atol=0)


def samples_follow(samples: torch.Tensor, outcomes: torch.Tensor, log_p: torch.Tensor) -> None:
    assert_samples_follow(samples, outcomes, log_p.detach().exp())


@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_samples_follow_the_model(kind: str) -> None:
    """Chi-square against the 27 enumerated sequences, with a power control."""
    g = torch.Generator().manual_seed(6)
    hmm = as_double(HMM(BLOCKS[kind](g), vocab_size=3, generator=g, perturbation=3.0))
    x = all_sequences(3, 3)
    samples = hmm.sample(40_000, 3, generator=torch.Generator().manual_seed(7))
    samples_follow(samples, x, hmm.log_likelihood(x))


@pytest.mark.parametrize("kind", ["dense", "monarch3"])
def test_sample_next_follows_transition_rows(kind: str) -> None:
    g = torch.Generator().manual_seed(8)
    block = as_double(BLOCKS[kind](g))
    z = torch.full((50_000,), 5)
    nxt = block.sample_next(z, generator=torch.Generator().manual_seed(9))
    states = torch.arange(block.hidden_size)[:, None]
    samples_follow(nxt[:, None], states, block.dense()[0, 5].log())


def test_factorize_and_factor_errors() -> None:
    assert factorize(2**19, 2) == [512, 1024]
    assert factorize(2**18, 3) == [64, 64, 64]
    assert factorize(2**16, 4) == [16, 16, 16, 16]
    assert math.prod(factorize(1000, 3)) == 1000
    with pytest.raises(ValueError, match="cannot be factored"):
        factorize(13, 2)
    with pytest.raises(ConfigError, match="not the product"):
        BlockSpec.from_config({"block": "monarch", "hidden_size": 1000, "k": 2,
                               "factors": [16, 16]})
    with pytest.raises(ConfigError, match="unknown sum-block kind"):
        BlockSpec.from_config({"block": "sparse", "hidden_size": 16})
    with pytest.raises(ConfigError, match="hidden_size must be >= 1"):
        BlockSpec.from_config({"block": "dense", "hidden_size": -64})
    assert SumBlocks(BlockSpec.from_config({"block": "monarch", "hidden_size": 4096, "k": 3}
                                           )).madds() == 4096 * 48
