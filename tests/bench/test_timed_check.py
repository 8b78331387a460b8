"""The check at the timed size (bench/hmm.py ``timed_check``): the timed E-step itself against
autograd on a few rows copied across its batch; it passes a correct E-step, flags a wrong one."""

from __future__ import annotations

import pytest
import torch

from monarchpc.bench.hmm import TIMED_CHECK_BANDS, timed_check
from monarchpc.circuits import monarch_block
from monarchpc.circuits.hmm import HMM
from monarchpc.learning.hmm_estep import fused_estep, hmm_estep


def model(seed: int = 0) -> HMM:
    g = torch.Generator().manual_seed(seed)
    return HMM(monarch_block([2, 3, 2], g), 5, g, perturbation=4.0)


def rows(n: int = 10, length: int = 9) -> torch.Tensor:
    return torch.randint(0, 5, (n, length), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("keep_gb", [0.0, 1.0])  # segments recomputed, or all kept
@pytest.mark.parametrize("products", ["torch", pytest.param("triton", marks=pytest.mark.kernel)])
def test_a_correct_estep_passes_at_its_own_batch_shape(keep_gb: float, products: str) -> None:
    hmm = model()
    before = [p.detach().clone() for p in hmm.parameters()]
    run = fused_estep(hmm, torch.device("cpu"), segment=4, precision="fp32", keep_gb=keep_gb,
                      products=products)
    c = timed_check(hmm, run, rows(), 4, "fp32")  # 10 columns of 4 rows: 3, 3, 2, 2 copies
    assert c["rows"] == 4 and c["ok"]
    assert c["ll_rel_err"] < 1e-5 and c["flow_rel_err"] < 1e-4
    assert c["band"] == {"ll": TIMED_CHECK_BANDS["fp32"][0], "flows": TIMED_CHECK_BANDS["fp32"][1]}
    assert all(p.grad is None for p in hmm.parameters())  # cleared after
    assert all(torch.equal(p, q) for p, q in zip(hmm.parameters(), before, strict=True))


def test_copies_are_weighted_so_flows_equal_the_batchs() -> None:
    """Rows that do not divide the batch: the reference's flows are weighted by copies (an
    unweighted reference would differ from the E-step of the whole batch)."""
    hmm = model()
    c = timed_check(hmm, lambda x: hmm_estep(hmm, x, segment=3), rows(7), 3, "fp32")
    assert c["ok"] and c["flow_rel_err"] < 1e-4


@pytest.mark.parametrize("precision,spread", [("fp32", 0.2), ("bf16", 3.0)])
def test_a_wrong_estep_is_flagged(precision: str, spread: float) -> None:
    """An E-step of another model (one Monarch layer's weights scaled by exp(spread * U) and
    renormalized) is outside the band: a 20% change in fp32's, a larger one in bf16's."""
    hmm, other = model(0), model(0)
    with torch.no_grad():
        w = other.transition.layers[1]
        w.mul_(torch.exp(spread * torch.rand(w.shape, generator=torch.Generator().manual_seed(3))))
        w /= w.sum(-1, keepdim=True)

    def wrong(x: torch.Tensor) -> torch.Tensor:  # the other model's E-step, into hmm's grads
        ll = hmm_estep(other, x, segment=4)
        for p, q in zip(hmm.parameters(), other.parameters(), strict=True):
            p.grad, q.grad = q.grad, None
        return ll

    c = timed_check(hmm, wrong, rows(), 4, precision)
    band = TIMED_CHECK_BANDS[precision]
    assert not c["ok"] and (c["ll_rel_err"] > band[0] or c["flow_rel_err"] > band[1])
