"""The fused E-step equals the plain PyTorch (autograd) path; the benchmark runs."""

from __future__ import annotations

import math

import pytest
import torch

from monarchpc.circuits import dense_block, monarch_block
from monarchpc.circuits.hmm import HMM
from monarchpc.kernels.hmm import as_rows, element_ops
from monarchpc.learning import cuda_graphs as graphs_module
from monarchpc.learning.cuda_graphs import CapturedEStep
from monarchpc.learning.em import accumulate_flows, em_step
from monarchpc.learning.hmm_estep import (
    auto_keep_gb,
    estep,
    fused_estep,
    hmm_estep,
    parameters,
)
from tests.helpers import (
    FP32_FLOW_RTOL,
    TRITON_FLOW_RTOL,
    assert_estep_matches,
    eager_capture_graph,
    low_precision_errors,
    rounding_bands,
)

BLOCKS = {
    "dense": lambda g: dense_block(12, g),
    "monarch2": lambda g: monarch_block([3, 4], g),
    "monarch2-unequal": lambda g: monarch_block([4, 2], g),
    "monarch3": lambda g: monarch_block([2, 3, 2], g),
    "monarch4": lambda g: monarch_block([2, 2, 2, 2], g),
    "monarch4-unequal": lambda g: monarch_block([2, 3, 2, 2], g),
}


def twins(kind: str, vocab: int = 5) -> tuple[HMM, HMM]:
    """(float64 reference, float32 model) with the same parameters."""
    g = torch.Generator().manual_seed(0)
    a = HMM(BLOCKS[kind](g), vocab, g, perturbation=4.0)
    b = HMM(BLOCKS[kind](torch.Generator()), vocab)
    b.load_state_dict(a.state_dict())
    return a.double(), b


NEEDS_TRITON = pytest.mark.kernel
KERNELS = ["torch", pytest.param("triton", marks=NEEDS_TRITON)]
# Triton Monarch products where they run by default (k >= 3), with unequal factors
PRODUCTS = [(kind, "torch") for kind in sorted(BLOCKS)] + [
    pytest.param(kind, "triton", marks=NEEDS_TRITON) for kind in ("monarch3", "monarch4-unequal")]
# (segment, segments kept) over T = 7 (6 transitions): 6 segments of 1, 2 of 4 (one kept),
# 3 of 2 (all kept), one of 6
SEGMENTS = [(1, 0), (4, 1), (2, 3), (100, 0)]


def keep_gb(hmm: HMM, segment: int, n: int, kept: int) -> float:
    """``keep_gb`` for ``kept`` segments: each (k c + 1) fp32 states of n columns."""
    k = len(hmm.transition.spec.factors)
    return (kept + 0.5) * (k * segment + 1) * hmm.hidden_size * n * 4 / 1e9


@pytest.mark.parametrize("kind,products", PRODUCTS)
@pytest.mark.parametrize("segment,kept", SEGMENTS)
def test_fused_estep_equals_autograd(kind: str, products: str, segment: int, kept: int) -> None:
    ref, fast = twins(kind)
    x = torch.randint(0, 5, (6, 7), generator=torch.Generator().manual_seed(1))
    x[2, 4] = 4  # every token value appears
    ll_ref = accumulate_flows(ref, x)
    ll = hmm_estep(fast, x, segment=segment, precision="fp32", kernels="torch",
                   keep_gb=keep_gb(fast, segment, 6, kept), products=products)
    assert_matches(fast, ref, ll, ll_ref)


@pytest.mark.parametrize("kind", sorted(BLOCKS))
@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("kept", [0, 2, 4])  # of 4 segments: recompute all, keep some, all
def test_kept_segments_and_triton_kernels_equal_autograd(kind: str, kernels: str,
                                                          kept: int) -> None:
    ref, fast = twins(kind)
    x = torch.randint(0, 5, (7, 15), generator=torch.Generator().manual_seed(4))
    x[1, 3] = 4
    ll_ref = accumulate_flows(ref, x)
    ll = hmm_estep(fast, x, segment=4, precision="fp32", kernels=kernels,
                   keep_gb=keep_gb(fast, 4, 7, kept))
    assert_matches(fast, ref, ll, ll_ref, kernels)


@NEEDS_TRITON
@pytest.mark.parametrize("kind", ["dense", "monarch3", "monarch4-unequal"])
@pytest.mark.parametrize("kept", [0, 4])
def test_emission_fused_into_the_last_product_equals_autograd(kind: str, kept: int) -> None:
    """Triton products and element kernels: the last layer's product and the emission step
    run as one kernel (emit_product) in both passes."""
    ref, fast = twins(kind)
    x = torch.randint(0, 5, (7, 15), generator=torch.Generator().manual_seed(7))
    x[1, 3] = 4
    ll_ref = accumulate_flows(ref, x)
    ll = hmm_estep(fast, x, segment=4, precision="fp32", kernels="triton", products="triton",
                   keep_gb=keep_gb(fast, 4, 7, kept))
    assert_matches(fast, ref, ll, ll_ref, "triton")


@pytest.mark.parametrize("kind", ["dense", "monarch3"])
def test_captured_estep_accumulates_exactly(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The captured HMM E-step (CUDA graphs, replayed eagerly here) adds each micro-batch's
    gradients once into buffers that are the parameters' .grad (warm-ups leave no trace),
    restarts after an EM update, and captures a second shape mid-accumulation."""
    monkeypatch.setattr(graphs_module, "capture_graph", eager_capture_graph)
    ref, fast = twins(kind)
    run = CapturedEStep(lambda x, grads: estep(fast, x, grads, segment=3, kernels="torch"),
                        parameters(fast), lambda x: hmm_estep(fast, x, segment=3,
                                                              kernels="torch"))
    batches = [torch.randint(0, 5, (n, 7), generator=torch.Generator().manual_seed(seed))
               for n, seed in ((6, 30), (4, 31), (6, 32), (6, 33))]
    for i, x in enumerate(batches):
        assert_matches(fast, ref, run(x), accumulate_flows(ref, x))
        if i == 2:  # an EM update consumes the gradients
            em_step(ref, 0.5, 0.1)
            em_step(fast, 0.5, 0.1)
    assert len(run.graphs) == 2
    assert all(p.grad is g for p, g in zip(parameters(fast), run.grads, strict=True))


def assert_matches(fast: HMM, ref: HMM, ll: torch.Tensor, ll_ref: torch.Tensor,
                   kernels: str = "torch") -> None:
    """log p and every flow, element by element, within about 10x the measured fp32 error
    (tests/helpers.py); Triton's element kernels split posteriors into two bf16 terms."""
    assert_estep_matches(fast, ref, ll, ll_ref,
                         flow_rtol=TRITON_FLOW_RTOL if kernels == "triton" else FP32_FLOW_RTOL)


@pytest.mark.kernel
def test_triton_kernels_equal_torch_on_strided_states() -> None:
    """The two element-wise kernels read permuted states and write into buffer slots."""
    g = torch.Generator().manual_seed(5)
    b0, b1, n, vocab = 4, 6, 20, 7
    table = torch.rand(b0 * b1, vocab, generator=g)
    tokens = torch.randint(0, vocab, (n,), generator=g)
    s = torch.rand(n, generator=g) + 0.5
    m = torch.rand(b1, b0, n, generator=g).permute(1, 0, 2)  # a permuted product output
    w = torch.rand(b0, b1, n, generator=g)
    outs = {}
    for name, ops in [("torch", element_ops("torch", m.device, vocab)),
                      ("triton", element_ops("triton", m.device, vocab))]:
        buf = torch.zeros(b0, b1, 3, n)  # a segment buffer; the kernels write slot 1
        col_sums = ops.emit(m, table, tokens, s, buf[:, :, 1])
        flow = torch.zeros(b0 * b1, vocab)
        ops.post(w, buf[:, :, 1], table, tokens, s, buf[:, :, 2], flow)
        outs[name] = (buf, col_sums, flow)
        assert buf[:, :, 0].abs().max() == 0  # nothing written outside the slots
    for got, want in zip(outs["triton"], outs["torch"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert float(outs["torch"][2].sum()) > 0
    with pytest.raises(ValueError, match="kernels must be"):
        element_ops("cuda", m.device, vocab)


@pytest.mark.kernel
@pytest.mark.parametrize("post_rows", [None, 64])
def test_triton_kernels_cover_ragged_tiles(post_rows: int | None) -> None:
    """Row and column counts that fill no tile evenly (h = 104: 3.25 emit tiles of 32 rows,
    6.5 post tiles of 16 (the default at this h) or 1.6 of 64; N = 40 columns: 0.6 of a
    64-column tile, 1.25 of 32)."""
    from monarchpc.kernels.hmm import emit_torch, emit_triton, post_torch, post_triton

    g = torch.Generator().manual_seed(6)
    h, n, vocab = 104, 40, 9
    table = torch.rand(h, vocab, generator=g)
    tokens = torch.randint(0, vocab, (n,), generator=g)
    s = torch.rand(n, generator=g) + 0.5
    m, w = torch.rand(h, n, generator=g), torch.rand(h, n, generator=g)
    y = {name: torch.zeros(h, n) for name in ("torch", "triton")}
    torch.testing.assert_close(emit_triton(m, table, tokens, s, y["triton"]),
                               emit_torch(m, table, tokens, s, y["torch"]), rtol=1e-5, atol=0)
    torch.testing.assert_close(y["triton"], y["torch"], rtol=1e-6, atol=0)
    outs = {}
    for name, post in [("torch", post_torch),
                       ("triton", lambda *args: post_triton(*args, block_h=post_rows))]:
        a, flows = torch.zeros(h, n), torch.zeros(h, vocab)
        post(w, y["torch"], table, tokens, s, a, flows)
        outs[name] = (a, flows)
    for got, want in zip(outs["triton"], outs["torch"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert bool((outs["torch"][1] > 0).any(1).all())  # every row got flows
    a = torch.zeros(h, n)  # without flows (the default 16 rows): the same output
    post_triton(w, y["torch"], table, tokens, s, a, None, block_h=post_rows)
    torch.testing.assert_close(a, outs["torch"][0], rtol=1e-4, atol=1e-6)


@NEEDS_TRITON
@pytest.mark.parametrize("factors,k", [([4, 16], 96), ([4, 16], 128), ([3, 6], 40),
                                       ([2, 64], 50)])
def test_grad_flows_equals_grad_then_flows(factors: list[int], k: int) -> None:
    """The weight gradient of the layer mixing the last axis with the emission flows, on
    segment views (K columns of slots 1.. of a buffer), against its PyTorch twin and
    against the definition: blocks of 16 (four a program), of 6 (a ragged block) and
    of 64, columns filling no 64-wide step evenly (or all of them: no masks)."""
    from monarchpc.kernels.hmm import grad_flows_runs, grad_flows_torch, grad_flows_triton
    from monarchpc.kernels.monarch import grad_product, layer_product

    g = torch.Generator().manual_seed(9)
    (pre, b), vocab = factors, 11
    h = pre * b
    w = torch.rand(1, pre, 1, b, b, generator=g)
    a = torch.rand(pre, b, k, generator=g).view(1, pre, b, 1, k)
    buf = torch.rand(pre, b, k + 3, generator=g)
    x = buf[..., 1:k + 1].view(1, pre, b, 1, k)  # strided columns of a segment buffer
    tokens = torch.randint(0, vocab, (k,), generator=g)
    got = [torch.rand(1, pre, 1, b, b, generator=g), torch.rand(h, vocab, generator=g)]
    twin = [t.clone() for t in got]
    want = [grad_product(got[0].clone(), a, x), got[1].clone()]
    gamma = (layer_product(w, a, transpose=True) * x).reshape(h, k)
    for v in range(vocab):
        want[1][:, v] += gamma[:, tokens == v].sum(1)
    grad_flows_triton(w, got[0], a, x, tokens, got[1])
    grad_flows_torch(w, twin[0], a, x, tokens, twin[1])
    for t in (got, twin):
        torch.testing.assert_close(t[0], want[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(t[1], want[1], rtol=1e-4, atol=1e-5)  # two bf16 terms
    assert grad_flows_runs(48, torch.float32, torch.device("cpu"))  # the interpreter
    gpu = torch.device("cuda")  # named, nothing allocated
    assert grad_flows_runs(64, torch.bfloat16, gpu)
    assert not grad_flows_runs(64, torch.float32, gpu)  # faulted there
    assert not grad_flows_runs(48, torch.bfloat16, gpu)  # not run there
    with pytest.raises(ValueError, match="blocks up to 64"):
        grad_flows_triton(torch.rand(1, 1, 1, 65, 65), torch.zeros(1, 1, 1, 65, 65),
                          torch.rand(1, 1, 65, 1, 4), torch.rand(1, 1, 65, 1, 4),
                          torch.zeros(4, dtype=torch.long), torch.zeros(65, vocab))


@NEEDS_TRITON
@pytest.mark.parametrize("factors,n", [([5, 3, 2], 40), ([16, 4], 130)])
def test_emit_product_equals_product_then_emit(factors: list[int], n: int) -> None:
    """The fused kernel (last layer's product, then emit) against the PyTorch product and
    emit, reading and writing slots of segment buffers: unequal factors, blocks and
    columns that fill no tile evenly; the emission gather is exact in fp32."""
    from monarchpc.kernels.hmm import emit_product_triton, emit_torch
    from monarchpc.kernels.monarch import layer_product

    g = torch.Generator().manual_seed(8)
    h, vocab, b = math.prod(factors), 9, factors[0]
    table = torch.rand(h, vocab, generator=g)
    tokens = torch.randint(0, vocab, (n,), generator=g)
    s = torch.rand(n, generator=g) + 0.5
    w = torch.rand(1, 1, h // b, b, b, generator=g)
    x = torch.rand(*factors, 2, n, generator=g)[..., 1, :]  # a slot of a segment buffer
    want_y = torch.zeros(*factors, n)
    m = layer_product(w, x.reshape(1, 1, b, h // b, n)).reshape(*factors, n)
    want_sums = emit_torch(m, table, tokens, s, want_y)
    buf = torch.zeros(*factors, 3, n)  # the kernel writes slot 1
    got_sums = emit_product_triton(w, x.reshape(1, 1, b, h // b, n), table, tokens, s,
                                   buf[..., 1, :].view(1, 1, b, h // b, n))
    torch.testing.assert_close(buf[..., 1, :], want_y, rtol=1e-5, atol=0)
    torch.testing.assert_close(got_sums, want_sums, rtol=1e-5, atol=0)
    assert buf[..., 0, :].abs().max() == 0 and buf[..., 2, :].abs().max() == 0
    with pytest.raises(ValueError, match="one block"):  # stacked blocks (an HCLT level)
        emit_product_triton(w.expand(2, -1, -1, -1, -1), x.reshape(1, 1, b, h // b, n),
                            table, tokens, s, buf[..., 1, :].view(1, 1, b, h // b, n))


@NEEDS_TRITON
@pytest.mark.parametrize("rows", [1, 3, 70, 300])
def test_column_sums_equal_torch(rows: int) -> None:
    """Two-level sums (5 rows a program: 1 to 3 rounds) over columns filling no tile evenly."""
    from monarchpc.kernels.hmm import column_sums

    partial = torch.rand(rows, 45, generator=torch.Generator().manual_seed(rows))
    torch.testing.assert_close(column_sums(partial, rows_per_program=5), partial.sum(0),
                               rtol=1e-6, atol=0)


def test_fused_estep_accumulates_over_micro_batches_and_evaluates() -> None:
    ref, fast = twins("monarch2")
    g = torch.Generator().manual_seed(2)
    batches = [torch.randint(0, 5, (4, 11), generator=g) for _ in range(3)]
    for x in batches:
        ll_ref = accumulate_flows(ref, x)
        ll = hmm_estep(fast, x, segment=4, kernels="torch")
        assert_matches(fast, ref, ll, ll_ref)  # the flows summed over the batches so far
    em_step(ref, 0.7, 0.1)
    em_step(fast, 0.7, 0.1)
    for p, q in zip(fast.parameters(), ref.parameters(), strict=True):
        # a new parameter is a normalized flow (and the old one): twice a flow's error
        torch.testing.assert_close(p.double(), q, rtol=2 * FP32_FLOW_RTOL, atol=0)
    x = batches[0]
    score = hmm_estep(fast, x, segment=x.shape[1], grad=False, kernels="torch")
    torch.testing.assert_close(score, fast.log_likelihood(x).detach(), rtol=1e-5, atol=1e-4)
    assert all(p.grad is None for p in fast.parameters())  # evaluation adds no flows


# TF32 rounds operands only in the Triton products on a CPU (cuBLAS-style twins compute
# exact fp32 there): those cases run the rounding itself, as a GPU would
LOW_PRECISION = [(kind, p, "torch") for p in ("bf16", "fp16") for kind in sorted(BLOCKS)] + [
    pytest.param(kind, "tf32", "triton", marks=NEEDS_TRITON)
    for kind in ("dense", "monarch3", "monarch4-unequal")]


@pytest.mark.parametrize("kind,precision,products", LOW_PRECISION)
def test_low_precision_stays_within_its_rounding_band(kind: str, precision: str,
                                                      products: str) -> None:
    """log p and every flow within the worst case of the operands' rounding (u a read,
    accumulated over every product: tests/helpers.py ``rounding_bands``), and further from
    float64 than an fp32 E-step may be: the low precision is in effect."""
    ref, fast = twins(kind)
    x = torch.randint(0, 5, (6, 20), generator=torch.Generator().manual_seed(3))
    ll_ref = accumulate_flows(ref, x)
    ll = hmm_estep(fast, x, segment=5, precision=precision, kernels="torch", products=products)
    ll_err, flow_err = low_precision_errors(fast, ref, ll, ll_ref)
    ll_band, flow_band = rounding_bands(precision, len(fast.transition.layers), x.shape[1] - 1)
    assert ll_err <= ll_band and flow_err <= flow_band, (ll_err, ll_band, flow_err, flow_band)
    assert flow_err > 10 * FP32_FLOW_RTOL  # the operands were rounded


def test_bad_precision_fails() -> None:
    _, fast = twins("monarch2")
    x = torch.randint(0, 5, (6, 20), generator=torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="precision must be one of"):
        hmm_estep(fast, x, precision="fp8")


def test_bad_engine_settings_fail_with_the_fix() -> None:
    _, fast = twins("dense")
    x = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="CUDA graphs need a GPU"):
        fused_estep(fast, torch.device("cpu"), graphs=True)
    with pytest.raises(ValueError, match="graphs must be"):
        fused_estep(fast, torch.device("cpu"), graphs="yes")
    run = fused_estep(fast, torch.device("cpu"))  # auto: no graphs on the CPU
    assert not isinstance(run, CapturedEStep)
    assert torch.isfinite(run(x)).all()
    with pytest.raises(ValueError, match="not a \\(R0, R1, N\\) view"):
        as_rows(torch.zeros(2, 3, 4, 5).permute(1, 0, 2, 3))


def test_triton_kernels_without_triton_or_interpreter_fail_with_the_fix(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="use kernels=torch"):
        element_ops("triton", torch.device("cpu"), 27)
    assert element_ops("auto", torch.device("cpu"), 27).name == "torch"


def test_auto_kept_memory_gives_the_same_estep() -> None:
    """keep_gb=auto (on a CPU: 8 GB, every segment of this case kept) changes no value."""
    _, fast = twins("monarch2")
    x = torch.randint(0, fast.vocab_size, (6, 9), generator=torch.Generator().manual_seed(2))
    results = []
    for keep in (0.0, "auto"):
        fast.zero_grad()
        ll = hmm_estep(fast, x, segment=2, keep_gb=keep)
        results.append((ll, [p.grad.clone() for p in fast.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert auto_keep_gb(torch.device("cpu"), 10**9) == 8.0
