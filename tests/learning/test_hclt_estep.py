"""The fused HCLT E-step equals the autograd path (log p and flows); its kernels equal
their PyTorch twins; the HCLT benchmark runs."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from monarchpc.circuits.blocks import BlockSpec, SumBlocks
from monarchpc.circuits.hclt import HCLT, MISSING
from monarchpc.kernels.hclt import level_ops
from monarchpc.learning import cuda_graphs as graphs_module
from monarchpc.learning import hclt_estep as hclt_estep_module
from monarchpc.learning.cuda_graphs import CapturedEStep
from monarchpc.learning.em import accumulate_flows, em_step
from monarchpc.learning.hclt_estep import (
    estep,
    fused_hclt_estep,
    hclt_estep,
    leaf_tables,
    parameters,
    tree_layout,
)
from monarchpc.learning.hidden_major import HiddenMajor
from tests.helpers import (
    DEEP_FP32_RTOL,
    FP32_FLOW_RTOL,
    FP32_LL_RTOL,
    EagerGraph,
    assert_estep_matches,
    eager_capture_graph,
    flow_pairs,
    low_precision_errors,
    rounding_bands,
)

# dense blocks, and Monarch-HCLT blocks of 2, 3 and 4 layers alternating between two axes
BLOCKS = {"dense": BlockSpec.dense(6), "monarch2": BlockSpec.monarch([2, 3], [0, 1]),
          "monarch3": BlockSpec.monarch([3, 2], [0, 1, 0]),
          "monarch4": BlockSpec.monarch([2, 3], [0, 1, 0, 1])}
KERNELS = ["torch", pytest.param("triton", marks=pytest.mark.kernel)]
VOCAB = [3, 5, 4, 5, 3, 4, 5, 3, 4, 5]  # per-variable vocabularies


def random_tree(d: int, seed: int) -> np.ndarray:
    """Parents (D,) of a random tree whose root is not variable 0."""
    rng = np.random.default_rng(seed)
    parent = np.array([-1] + [int(rng.integers(0, v)) for v in range(1, d)])
    perm = rng.permutation(d)
    out = np.empty(d, dtype=np.int64)
    out[perm] = np.where(parent >= 0, perm[np.maximum(parent, 0)], -1)
    return out


def twins(kind: str, tied: bool, parent: np.ndarray | None = None,
          vocab: list[int] = VOCAB) -> tuple[HCLT, HCLT]:
    """(float64 reference, float32 copy) of one random HCLT with h = 6."""
    spec, edges = BLOCKS[kind], len(vocab) - 1
    parent = random_tree(len(vocab), 0) if parent is None else parent
    g = torch.Generator().manual_seed(0)
    channels = [v % 3 for v in range(len(vocab))] if tied else None
    fast = HCLT(parent, SumBlocks(spec, edges, g, 4.0), vocab, channels, g, perturbation=4.0)
    ref = HCLT(parent, SumBlocks(spec, edges), vocab, channels).double()
    ref.load_state_dict(fast.state_dict())
    return ref, fast


def rows(vocab: list[int], n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.stack([torch.randint(0, v, (n,), generator=g) for v in vocab], 1)
    x[torch.rand(x.shape, generator=g) < 0.15] = MISSING
    x[0] = MISSING  # a row with nothing observed: p = 1
    return x


def assert_flows_match(fast: HCLT, ref: HCLT) -> None:
    """Every flow of ``fast`` within about 10x the measured fp32 error of the reference's
    (element by element, tests/helpers.py)."""
    for f, r in flow_pairs(fast, ref):
        torch.testing.assert_close(f, r, rtol=FP32_FLOW_RTOL, atol=1e-7)


@pytest.mark.parametrize("kind", sorted(BLOCKS))
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("kernels", KERNELS)
def test_fused_estep_equals_autograd(kind: str, tied: bool, kernels: str) -> None:
    ref, fast = twins(kind, tied)
    x = rows(VOCAB, 13, 1)
    ll_ref = accumulate_flows(ref, x)
    ll = hclt_estep(fast, x, "fp32", kernels=kernels)
    assert abs(float(ll[0])) < FP32_LL_RTOL and float(ll_ref[1:].max()) < -1.0  # p = 1, p < 1
    assert_estep_matches(fast, ref, ll, ll_ref)


def test_micro_batches_accumulate_em_steps_agree_and_scoring_adds_no_flows() -> None:
    ref, fast = twins("monarch3", tied=False)
    for seed in (2, 3):
        x = rows(VOCAB, 9, seed)
        accumulate_flows(ref, x)
        hclt_estep(fast, x, kernels="torch")
    assert_flows_match(fast, ref)
    em_step(ref, 0.7, 0.1)
    em_step(fast, 0.7, 0.1)
    for p, q in zip(fast.parameters(), ref.parameters(), strict=True):
        # a new parameter is a normalized flow (and the old one): twice a flow's error
        torch.testing.assert_close(p.double(), q, rtol=2 * FP32_FLOW_RTOL, atol=0)
    x = rows(VOCAB, 7, 4)
    score = hclt_estep(fast, x, grad=False)
    torch.testing.assert_close(score, fast.log_likelihood(x).detach(), rtol=FP32_LL_RTOL,
                               atol=FP32_LL_RTOL)
    assert all(p.grad is None for p in fast.parameters())
    run = fused_hclt_estep(fast, torch.device("cpu"))  # auto: no CUDA graphs on a CPU
    torch.testing.assert_close(run(x), score, rtol=FP32_LL_RTOL, atol=FP32_LL_RTOL)
    assert all(p.grad is not None for p in fast.parameters())


def eager_capture(self: CapturedEStep, x: torch.Tensor, scratch: bool = False) -> tuple:
    static_x, log_likelihood = x.clone(), torch.empty(x.shape[0])
    grads = self.grads  # the persistent buffers, as a captured graph would hold them
    return static_x, EagerGraph(lambda: log_likelihood.copy_(self.run(static_x, grads))), \
        log_likelihood


def test_captured_estep_accumulates_into_persistent_gradients(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Replays add into buffers that are the parameters' .grad across micro-batches,
    restart from zero after an EM step, add into a foreign .grad; odd shapes run plainly."""
    monkeypatch.setattr(CapturedEStep, "capture", eager_capture)
    ref, fast = twins("monarch3", tied=True)
    checked = []
    run = CapturedEStep(lambda x, grads: estep(fast, x, "fp32", grads, "torch", False),
                        parameters(fast), lambda x: hclt_estep(fast, x, kernels="torch"),
                        checked.append, max_shapes=1)
    batches = [rows(VOCAB, 9, seed) for seed in (10, 11, 12)]
    for x in batches[:2]:
        accumulate_flows(ref, x)
        run(x)
    assert_flows_match(fast, ref)
    assert len(checked) == 2
    assert all(p.grad is g for p, g in zip(parameters(fast), run.grads, strict=True))
    em_step(ref, 0.5, 0.1)
    em_step(fast, 0.5, 0.1)
    fast.root.grad = torch.ones_like(fast.root)  # a gradient that is not a buffer
    ref.root.grad = torch.ones_like(ref.root)
    torch.testing.assert_close(run(batches[2]).double(), accumulate_flows(ref, batches[2]),
                               rtol=FP32_LL_RTOL, atol=FP32_LL_RTOL)
    odd = rows(VOCAB, 5, 13)
    torch.testing.assert_close(run(odd).double(), accumulate_flows(ref, odd),
                               rtol=FP32_LL_RTOL, atol=FP32_LL_RTOL)
    assert_flows_match(fast, ref)
    assert fast.root.grad is not run.grads[-1]


def test_capture_warm_up_leaves_no_trace_in_the_gradients(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The warm-up of a first capture adds into the gradient buffers themselves (no second
    set in memory) and they are zeroed after it; a shape first seen mid-accumulation warms
    up into scratch, keeping the gradients held so far."""
    monkeypatch.setattr(graphs_module, "capture_graph", eager_capture_graph)
    ref, fast = twins("monarch3", tied=True)
    run = CapturedEStep(lambda x, grads: estep(fast, x, "fp32", grads, "torch", False),
                        parameters(fast), lambda x: hclt_estep(fast, x, kernels="torch"))
    scratch_calls = []
    capture = run.capture
    monkeypatch.setattr(run, "capture", lambda x, scratch=False: (
        scratch_calls.append(scratch), capture(x, scratch))[1])
    for x in (rows(VOCAB, 9, 20), rows(VOCAB, 7, 21), rows(VOCAB, 9, 22)):
        torch.testing.assert_close(run(x).double(), accumulate_flows(ref, x),
                                   rtol=FP32_LL_RTOL, atol=FP32_LL_RTOL)
        assert_flows_match(fast, ref)  # no warm-up counted twice
    assert scratch_calls == [False, True]  # the second shape came mid-accumulation


def test_deep_chain_and_wide_star_neither_underflow_nor_overflow() -> None:
    """A 60-variable chain (log p about -200: p itself underflows fp32) and a root with
    29 children, peaked parameters."""
    vocab = [40] * 60
    for parent in (np.arange(-1, 59), np.array([-1] + [0] * 29 + list(range(1, 31)))):
        ref, fast = twins("monarch3", tied=False, parent=parent, vocab=vocab)
        x = rows(vocab, 6, 5)
        ll_ref = accumulate_flows(ref, x)
        ll = hclt_estep(fast, x, kernels="torch")
        assert torch.isfinite(ll).all() and float(ll_ref.min()) < -150
        # 59 edges of 3 layers (4 times the 13-variable cases' path): its own measured bound
        assert_estep_matches(fast, ref, ll, ll_ref, DEEP_FP32_RTOL, DEEP_FP32_RTOL)


def triton_products(monkeypatch: pytest.MonkeyPatch) -> None:
    """The HCLT E-step's block products in Triton (on a CPU they default to PyTorch's)."""
    monkeypatch.setattr(hclt_estep_module, "HiddenMajor",
                        functools.partial(HiddenMajor, products="triton"))


# TF32 rounds operands only in the Triton products on a CPU (cuBLAS-style products are
# exact fp32 there, whatever the switch says): those cases run the rounding itself
LOW_PRECISION = [(kind, p, "torch") for p in ("bf16", "fp16") for kind in sorted(BLOCKS)] + [
    pytest.param(kind, "tf32", "triton", marks=pytest.mark.kernel) for kind in sorted(BLOCKS)]


@pytest.mark.parametrize("kind,precision,products", LOW_PRECISION)
def test_low_precision_stays_within_its_rounding_band(kind: str, precision: str,
                                                      products: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """log p and every flow within the worst case of the operands' rounding accumulated
    over the tree's 9 edges (tests/helpers.py ``rounding_bands``), and further from float64
    than an fp32 E-step may be: the low precision is in effect."""
    if products == "triton":
        triton_products(monkeypatch)
    ref, fast = twins(kind, tied=True)
    x = rows(VOCAB, 13, 6)
    ll_ref = accumulate_flows(ref, x)
    ll = hclt_estep(fast, x, precision, kernels=products)
    assert torch.isfinite(ll).all()
    ll_err, flow_err = low_precision_errors(fast, ref, ll, ll_ref)
    ll_band, flow_band = rounding_bands(precision, len(fast.blocks.layers), len(VOCAB) - 1)
    assert ll_err <= ll_band and flow_err <= flow_band, (ll_err, ll_band, flow_err, flow_band)
    assert flow_err > 10 * FP32_FLOW_RTOL  # the operands were rounded


@pytest.mark.kernel
def test_triton_level_kernels_equal_torch_with_zero_messages() -> None:
    """Both kernels on random states where some messages, and one whole column, are 0,
    and a value lies outside its vocabulary."""
    _, model = twins("dense", tied=False)
    layout = tree_layout(model, torch.device("cpu"))
    g = torch.Generator().manual_seed(7)
    d, h, n = model.num_vars, model.hidden_size, 5
    x = rows(VOCAB, n, 8)[:, model.order].t().int().contiguous()
    tables = leaf_tables(model)
    m = torch.rand(d, h, n, generator=g)
    m[m < 0.2] = 0.0
    m[:, :, 3] = 0.0
    level = max(range(len(layout.levels) - 1),
                key=lambda lvl: layout.levels[lvl][1] - layout.levels[lvl][0])
    start, stop = layout.levels[level]
    x[start, 1] = int(layout.vocab[start])  # outside the vocabulary (unvalidated): p = 0
    w = torch.rand(stop - start, h, n, generator=g)
    scales = torch.rand(d - stop, n, generator=g) + 0.5  # s of the children
    outs = {}
    for kind in ("torch", "triton"):
        ops = level_ops(kind, x.device)
        u, s, mk = torch.zeros(d, h, n), torch.zeros(d, n), m.clone()
        s[stop:] = scales
        ops.product(layout, start, stop, x, tables, mk, s, u)
        flow = torch.zeros_like(tables)
        ops.posterior(layout, start, stop, x, flow, w, u, mk)
        outs[kind] = (u, s, mk, flow)
    for got, want in zip(outs["triton"], outs["torch"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
        assert torch.isfinite(got).all()
    u, s, _, flow = outs["torch"]
    assert float(u[start:stop].abs().sum()) > 0 and float(flow.sum()) > 0
    assert float(u[start, :, 1].abs().max()) == 0


@pytest.mark.kernel
@pytest.mark.parametrize("shape", [(3, 70, 40), (1, 6, 256)])
def test_leaf_gradients_equal_flows_over_parameters(shape: tuple[int, int, int]) -> None:
    """grad += flows / param from value-major flows (n, V, h): tiles filling h = 70 and
    V = 40 unevenly, a parameter entry of 0 (clamped, not a division by zero); the
    value-major tables are the parameters transposed."""
    from monarchpc.kernels.hclt import (
        leaf_grad_torch,
        leaf_grad_triton,
        leaf_table_torch,
        leaf_table_triton,
    )

    g = torch.Generator().manual_seed(11)
    n, h, vocab = shape
    param = torch.rand(shape, generator=g)
    param[0, 1, 2] = 0.0
    flows = torch.rand(n, vocab, h, generator=g)
    start = torch.rand(shape, generator=g)
    want = start.double() + flows.double().transpose(1, 2) / param.double().clamp_min(
        torch.finfo(torch.float32).tiny)
    for fn in (leaf_grad_torch, leaf_grad_triton):
        grad = start.clone()
        fn(flows, param, grad)
        torch.testing.assert_close(grad.double(), want, rtol=1e-6, atol=0)
        assert torch.isfinite(grad).all()
    for fn in (leaf_table_torch, leaf_table_triton):  # and the value-major tables
        out = torch.full((n, vocab, h), float("nan"))
        fn(param, out)
        assert torch.equal(out, param.transpose(1, 2))


def test_bad_inputs_and_settings_fail_with_the_fix() -> None:
    _, fast = twins("dense", tied=False)
    x = rows(VOCAB, 4, 9)
    with pytest.raises(ValueError, match="precision must be one of"):
        hclt_estep(fast, x, precision="fp8")
    with pytest.raises(ValueError, match=r"expected rows \(N, 10\)"):
        hclt_estep(fast, x[:, :5])
    bad = x.clone()
    bad[1, 0] = VOCAB[0]
    with pytest.raises(ValueError, match="outside its variable's vocabulary"):
        hclt_estep(fast, bad)
    with pytest.raises(ValueError, match="CUDA graphs need a GPU"):
        fused_hclt_estep(fast, torch.device("cpu"), graphs=True)
    with pytest.raises(ValueError, match="graphs must be"):
        fused_hclt_estep(fast, torch.device("cpu"), graphs="yes")
    with pytest.raises(ValueError, match="kernels must be"):
        hclt_estep(fast, x, kernels="cuda")


