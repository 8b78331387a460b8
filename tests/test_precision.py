"""A precision means the same whatever torch's global TF32 switch says: E-steps and scorers
asked for fp32 run exact products, tf32 runs TF32, 16-bit precisions leave the switch alone,
and the caller's switch is restored afterwards (also after an error).

The switch decides cuBLAS's and the Triton products' (``kernels.monarch._precision``) fp32
products on a GPU; on the CPU it changes no number, so these tests watch the switch that the
sum blocks see while they run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monarchpc.circuits import monarch_block
from monarchpc.circuits.blocks import BlockSpec, HiddenMajor, SumBlocks
from monarchpc.circuits.hclt import HCLT
from monarchpc.circuits.hmm import HMM
from monarchpc.kernels.monarch import _precision
from monarchpc.learning.engines import scorer
from monarchpc.learning.hclt_estep import hclt_estep
from monarchpc.learning.hmm_estep import hmm_estep, matmul_precision


def hclt() -> HCLT:
    g = torch.Generator().manual_seed(0)
    parent = np.array([-1, 0, 0, 1, 1])
    return HCLT(parent, SumBlocks(BlockSpec.monarch([2, 3], [0, 1, 0]), 4, g), [4] * 5,
                generator=g)


def hmm() -> HMM:
    g = torch.Generator().manual_seed(0)
    return HMM(monarch_block([2, 3], g), 5, g)


def rows(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if isinstance(model, HCLT):
        return torch.randint(0, 4, (6, 5), generator=g)
    return torch.randint(0, 5, (3, 7), generator=g)


@pytest.fixture
def switch_seen(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The TF32 switch at every sum-block layer product, and the switch restored after."""
    seen: list[bool] = []
    apply = HiddenMajor.apply

    def spy(self, *args, **kwargs):
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        assert _precision(torch.float32) == ("tf32" if seen[-1] else "ieee")
        return apply(self, *args, **kwargs)

    monkeypatch.setattr(HiddenMajor, "apply", spy)
    before = torch.backends.cuda.matmul.allow_tf32
    yield seen
    torch.backends.cuda.matmul.allow_tf32 = before


def run_estep(model: torch.nn.Module, precision: str, grad: bool) -> torch.Tensor:
    x = rows(model)
    if isinstance(model, HCLT):
        return hclt_estep(model, x, precision, grad=grad, kernels="torch")
    return hmm_estep(model, x, segment=3, precision=precision, grad=grad, kernels="torch",
                     products="torch")


@pytest.mark.parametrize("make", [hclt, hmm], ids=["hclt", "hmm"])
@pytest.mark.parametrize("grad", [False, True], ids=["score", "flows"])
@pytest.mark.parametrize("precision, outside, inside", [
    ("fp32", True, False), ("tf32", False, True), ("bf16", True, True), ("bf16", False, False)])
def test_estep_sets_the_switch_for_its_precision(make, grad, precision, outside, inside,
                                                 switch_seen):
    model = make()
    torch.backends.cuda.matmul.allow_tf32 = outside
    ll = run_estep(model, precision, grad)
    assert torch.isfinite(ll).all()
    assert switch_seen and set(switch_seen) == {inside}
    assert torch.backends.cuda.matmul.allow_tf32 is outside  # the caller's, restored


@pytest.mark.parametrize("make", [hclt, hmm], ids=["hclt", "hmm"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "autograd"])
def test_fp32_scorer_is_exact_after_training_switched_tf32_on(make, fused, monkeypatch):
    # the trainer switches TF32 on for the whole run when it trains below fp32; an HCLT's
    # evaluation (fp32) must still run exact products
    model = make()
    seen: list[bool] = []
    if not fused:
        log_likelihood = model.log_likelihood

        def spy(x):
            seen.append(torch.backends.cuda.matmul.allow_tf32)
            return log_likelihood(x)

        monkeypatch.setattr(model, "log_likelihood", spy)
    else:
        apply = HiddenMajor.apply

        def spy_apply(self, *args, **kwargs):
            seen.append(torch.backends.cuda.matmul.allow_tf32)
            return apply(self, *args, **kwargs)

        monkeypatch.setattr(HiddenMajor, "apply", spy_apply)
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        score = scorer(model, "fp32", fused=fused)(rows(model))
        assert torch.isfinite(score).all()
        assert seen and not any(seen)
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_switch_restored_after_an_error():
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        with pytest.raises(RuntimeError, match="inside"), matmul_precision("fp32"):
            assert torch.backends.cuda.matmul.allow_tf32 is False
            raise RuntimeError("inside")
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
