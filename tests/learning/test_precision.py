"""A precision is one value passed down: E-steps and scorers run their cuBLAS products
under the switch their precision sets (fp32: off, anything else: on) and restore the
caller's afterwards (also after an error); Triton products take ``tf32`` from it as an
argument and never read the switch. The trainer no longer touches the switch.

On the CPU the switch changes no number, so these tests watch the switch that the sum
blocks see while they run, and the ``tf32`` the Triton products were bound with."""

from __future__ import annotations

import ast

import numpy as np
import pytest
import torch

from monarchpc.circuits import monarch_block
from monarchpc.circuits.blocks import BlockSpec, SumBlocks
from monarchpc.circuits.hclt import HCLT
from monarchpc.circuits.hmm import HMM
from monarchpc.errors import ConfigError
from monarchpc.learning.engines import autograd_scorer
from monarchpc.learning.hclt_estep import hclt_estep
from monarchpc.learning.hidden_major import HiddenMajor
from monarchpc.learning.hmm_estep import hmm_estep
from monarchpc.learning.precision import Precision
from monarchpc.paths import REPO_ROOT
from monarchpc.structures import STRUCTURES


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
    ("fp32", True, False), ("tf32", False, True), ("bf16", False, True), ("fp16", True, True)])
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
def test_fp32_scorer_is_exact_whatever_the_caller_switched(make, fused, monkeypatch):
    # an fp32 evaluation runs exact products even where the caller has TF32 on (once, the
    # trainer's global switch made HCLTs trained in bf16 score in TF32)
    model = make()
    seen: list[bool] = []
    if not fused:
        log_likelihood = model.log_likelihood

        def spy(x):
            seen.append(torch.backends.cuda.matmul.allow_tf32)
            return log_likelihood(x)

        monkeypatch.setattr(model, "log_likelihood", spy)
        score = autograd_scorer(model, "fp32")
    else:
        apply = HiddenMajor.apply

        def spy_apply(self, *args, **kwargs):
            seen.append(torch.backends.cuda.matmul.allow_tf32)
            return apply(self, *args, **kwargs)

        monkeypatch.setattr(HiddenMajor, "apply", spy_apply)
        score = STRUCTURES[model.structure].fused.score(model, Precision("fp32"))
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        assert torch.isfinite(score(rows(model))).all()
        assert seen and not any(seen)
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_switch_restored_after_an_error():
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        with pytest.raises(RuntimeError, match="inside"), Precision("fp32").products():
            assert torch.backends.cuda.matmul.allow_tf32 is False
            raise RuntimeError("inside")
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("name, dtype, tf32, switch", [
    ("fp32", torch.float32, False, False), ("tf32", torch.float32, True, True),
    ("bf16", torch.bfloat16, False, True), ("fp16", torch.float16, False, True)])
def test_a_precision_says_what_it_means(name, dtype, tf32, switch):
    p = Precision(name)
    assert (p.dtype, p.tf32, p.switch) == (dtype, tf32, switch)
    assert Precision.of(name) == p and Precision.of(p) is p
    with pytest.raises(ConfigError, match="precision must be one of fp32, tf32, bf16, fp16"):
        Precision("fp8")


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_triton_products_take_tf32_from_the_precision(precision):
    """HiddenMajor binds the Triton products' ``tf32`` argument from its precision (they
    do not read torch's switch)."""
    blocks = monarch_block([4, 4], torch.Generator().manual_seed(0))
    ops = HiddenMajor(blocks, precision, products="triton").ops
    assert ops.name == "triton"
    for fn in (ops.layer, ops.grad, ops.backward):
        assert fn.keywords["tf32"] is (precision == "tf32")


def test_only_the_precision_module_touches_the_switch():
    """No module of the package but learning/precision.py reads or sets torch's TF32 switch
    (``allow_tf32``): a process-wide setting left by library code caused a wrong score."""
    users = []
    for path in sorted((REPO_ROOT / "monarchpc").rglob("*.py")):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.Attribute) and n.attr == "allow_tf32" for n in ast.walk(tree)):
            users.append(path.relative_to(REPO_ROOT).as_posix())
    assert users == ["monarchpc/learning/precision.py"]
