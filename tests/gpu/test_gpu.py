"""The GPU tier: what the CPU suite cannot see. The CPU runs Triton through its interpreter in
exact fp32 and replays no CUDA graph, so these run on a CUDA GPU only (``make test-gpu``,
TRITON_INTERPRET=0; skipped elsewhere with the reason):

* CUDA-graph capture and replay equal to the eager E-step (HMMs and HCLTs), across inputs and
  an EM update, and both equal to autograd;
* TF32 operand rounding on the tensor cores: the Triton products with ``tf32`` against
  products of operands rounded to nearest (truncation, what the tensor cores do unasked,
  biased every product by about -2^-10), and the E-steps' TF32 log-likelihoods unbiased
  against fp32;
* the fp32 fallback of the stacked-rows kernel at 32^3: fp32 states made ``grad_flows``
  fault with Triton 3.6 there, so TF32/fp32 E-steps keep ``post``'s flows: that path runs
  (``grad_flows`` never called) and equals autograd; bf16 takes ``grad_flows``;
* bf16 (and fp16) paths within the bands stated in monarchpc/bench/hmm.py
  (TIMED_CHECK_BANDS), checked by the benchmarks' own check at their timed sizes.
"""

from __future__ import annotations

import pytest
import torch

from monarchpc.bench import hclt as bench_hclt
from monarchpc.bench import hmm as bench_hmm
from monarchpc.bench.hmm import TIMED_CHECK_BANDS, timed_check
from monarchpc.circuits.hclt import MISSING
from monarchpc.kernels import hmm as hmm_kernels
from monarchpc.learning.cuda_graphs import CapturedEStep
from monarchpc.learning.em import accumulate_flows, em_step, flows
from monarchpc.learning.hclt_estep import fused_hclt_estep, hclt_estep
from monarchpc.learning.hmm_estep import fused_estep, hmm_estep
from monarchpc.learning.precision import FP32
from tests.kernels.test_monarch import round_tf32

pytestmark = [pytest.mark.gpu, pytest.mark.kernel]
CUDA = torch.device("cuda")
VOCAB = 27
# (factors): dense, Monarch-2 (cuBLAS products), Monarch-3 and -4 (Triton products)
HMM_FACTORS = [[64], [16, 16], [8, 8, 8], [4, 4, 4, 4]]


def tokens(n: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, length), generator=g).to(CUDA)


def clear(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| over largest |b|."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def flows_of(model: torch.nn.Module) -> list[torch.Tensor]:
    return [flows(p).clone() for p in model.parameters()]


# ---- CUDA graphs ----------------------------------------------------------------------------

@pytest.mark.parametrize("factors", HMM_FACTORS, ids=lambda f: "x".join(map(str, f)))
@pytest.mark.parametrize("keep_gb", [0.0, 1.0])  # segments recomputed, or all kept
def test_hmm_graph_replay_equals_eager_and_autograd(factors: list[int], keep_gb: float) -> None:
    """Replays of the captured fp32 E-step on new inputs, and after an EM update that
    changes the parameters in place, equal the eager E-step of the same parameters, and
    both equal autograd."""
    graph_model = bench_hmm.build(factors, VOCAB, CUDA)
    eager_model = bench_hmm.build(factors, VOCAB, CUDA)
    captured = fused_estep(graph_model, CUDA, segment=4, precision="fp32", keep_gb=keep_gb,
                           graphs=True)
    eager = fused_estep(eager_model, CUDA, segment=4, precision="fp32", keep_gb=keep_gb,
                        graphs=False)
    assert isinstance(captured, CapturedEStep) and not isinstance(eager, CapturedEStep)
    for step in range(3):
        x = tokens(32, 40, seed=step)
        clear(graph_model)
        clear(eager_model)
        ll_graph, ll_eager = captured(x), eager(x)
        torch.testing.assert_close(ll_graph, ll_eager, rtol=1e-6, atol=0)
        for p, q in zip(flows_of(graph_model), flows_of(eager_model), strict=True):
            assert relative(p, q) < 1e-5
        clear(eager_model)
        with FP32.products():
            ll_ref = accumulate_flows(eager_model, x)
        assert float(((ll_graph - ll_ref).abs() / ll_ref.abs()).max()) < 1e-5
        for p, q in zip(flows_of(graph_model), flows_of(eager_model), strict=True):
            assert relative(p, q) < 1e-4
        if step == 1:  # an EM update on the captured model's own gradients, in place
            clear(graph_model)
            captured(x)
            em_step(graph_model, 0.5, 0.1)
            with torch.no_grad():
                for p, q in zip(eager_model.parameters(), graph_model.parameters(), strict=True):
                    p.copy_(q)
    assert len(captured.graphs) == 1  # one shape: captured once, replayed since


@pytest.mark.parametrize("block,h", [("dense", 32), ("monarch", 64)])
def test_hclt_graph_replay_equals_eager(block: str, h: int) -> None:
    data, parent = bench_hclt.patches_and_tree(True, CUDA)
    graph_model = bench_hclt.build(parent, block, h, CUDA)
    eager_model = bench_hclt.build(parent, block, h, CUDA)
    captured = fused_hclt_estep(graph_model, CUDA, "fp32", graphs=True)
    eager = fused_hclt_estep(eager_model, CUDA, "fp32", graphs=False)
    assert isinstance(captured, CapturedEStep)
    g = torch.Generator().manual_seed(4)
    for step in range(3):
        x = data[torch.randint(0, len(data), (48,), generator=g)].clone()
        x[torch.rand(x.shape, generator=g) < 0.1] = MISSING
        x = x.to(CUDA)
        clear(graph_model)
        clear(eager_model)
        torch.testing.assert_close(captured(x), eager(x), rtol=1e-6, atol=0)
        for p, q in zip(flows_of(graph_model), flows_of(eager_model), strict=True):
            assert relative(p, q) < 1e-5
        assert step < 2 or len(captured.graphs) == 1
    row = bench_hclt.check(parent, block, h, data, CUDA)  # the benchmark's check: vs autograd
    assert row["fp32_graph_ll_rel_err"] < 1e-5 and row["fp32_graph_flow_rel_err"] < 1e-4


# ---- TF32 operand rounding ------------------------------------------------------------------

@pytest.mark.parametrize("kernel", ["layer", "rows", "grad", "backward"])
def test_tf32_tensor_core_products_take_operands_rounded_to_nearest(kernel: str) -> None:
    """tests/kernels/test_monarch.py's check on the tensor cores: every Triton product
    with ``tf32`` equals the exact product of operands rounded to nearest TF32 values, to
    fp32 accumulation, and is unbiased (truncated operands: about -2^-10 on every product)."""
    from monarchpc.kernels.monarch import (
        backward_product_triton,
        grad_product_triton,
        layer_product_triton,
        layer_rows_triton,
    )

    g = torch.Generator().manual_seed(5)
    e, pre, b, post, n = 2, 3, 20, 2, 24
    w = torch.rand(e, pre, post, b, b, generator=g) + 0.5  # positive, like probabilities
    a, x = torch.rand(2, e, pre, b, post, n, generator=g) + 0.5
    wc, ac, xc = w.to(CUDA), a.to(CUDA), x.to(CUDA)
    grad = torch.zeros(e, pre, post, b, b, device=CUDA)
    out = torch.empty_like(xc)
    if kernel == "layer":
        got = layer_product_triton(wc, xc, out, tf32=True)
    elif kernel == "rows":
        got = layer_rows_triton(wc, xc, out, tf32=True)
    elif kernel == "grad":
        got = grad_product_triton(grad, ac, xc, tf32=True)
    else:
        backward_product_triton(wc, grad, ac, xc, out, fuse=True, tf32=True)
        got = grad
    got = got.double().cpu()
    if kernel in ("layer", "rows"):
        def exact(w_: torch.Tensor, x_: torch.Tensor) -> torch.Tensor:
            return torch.einsum("epqij,epjqn->epiqn", w_.double(), x_.double())
        want, rounded = exact(w, x), exact(round_tf32(w), round_tf32(x))
    else:
        def exact(a_: torch.Tensor, x_: torch.Tensor) -> torch.Tensor:
            return torch.einsum("epiqk,epjqk->epqij", a_.double(), x_.double())
        want, rounded = exact(a, x), exact(round_tf32(a), round_tf32(x))
    torch.testing.assert_close(got, rounded, rtol=1e-5, atol=0)  # fp32 sums of <= 48 terms
    rel = got / want - 1
    assert rel.abs().max() > 1e-5  # TF32 operands, not exact fp32 products
    assert rel.abs().max() < 2 ** -10 and abs(float(rel.mean())) < 1e-4  # unbiased


@pytest.mark.parametrize("factors", [[16, 16, 16], [8, 8, 8, 8], [64, 64]],
                         ids=lambda f: "x".join(map(str, f)))
def test_tf32_hmm_estep_is_unbiased_against_fp32(factors: list[int]) -> None:
    """A TF32 E-step (Triton products, emit_product for k >= 3; cuBLAS for k = 2) against
    fp32: log p within 1e-4 nats a token on average (rounded operands measured 5e-6;
    truncated ones moved Monarch-3 by -0.0021), flows within the TF32 band."""
    hmm = bench_hmm.build(factors, VOCAB, CUDA)
    x = tokens(64, 64, seed=7)
    clear(hmm)
    ll32 = hmm_estep(hmm, x, segment=8, precision="fp32")
    want = flows_of(hmm)
    clear(hmm)
    ll_tf32 = hmm_estep(hmm, x, segment=8, precision="tf32")
    bias = float((ll_tf32 - ll32).mean()) / x.shape[1]
    assert abs(bias) < 1e-4
    assert float((ll_tf32 - ll32).abs().max()) > 0  # TF32 products did run
    for p, q in zip(flows_of(hmm), want, strict=True):
        assert relative(p, q) < TIMED_CHECK_BANDS["tf32"][1]


def test_tf32_monarch_hclt_estep_is_unbiased_against_fp32() -> None:
    """Monarch-HCLT h = 1024 (32 x 32 blocks, 3 layers): TF32 log p within 0.02 nats a patch
    of fp32 on average (rounded operands measured 0.0002; truncated ones -0.40)."""
    data, parent = bench_hclt.patches_and_tree(True, CUDA)
    model = bench_hclt.build(parent, "monarch", 1024, CUDA)
    x = data[:64].to(CUDA)
    ll32 = hclt_estep(model, x, "fp32", grad=False)
    ll_tf32 = hclt_estep(model, x, "tf32", grad=False)
    assert abs(float((ll_tf32 - ll32).mean())) < 0.02
    assert float((ll_tf32 - ll32).abs().max()) > 0


# ---- the fp32 fallback at 32^3 --------------------------------------------------------------

@pytest.mark.parametrize("precision,fused_flows", [("fp32", False), ("tf32", False),
                                                   ("bf16", True)])
def test_monarch3_32_cubed_takes_the_flows_path_its_precision_allows(
        precision: str, fused_flows: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 32^3 (the size where fp32 states made grad_flows fault), fp32 and TF32 E-steps keep
    post's emission flows (grad_flows is never called) and bf16 ones fuse them into the
    last weight gradient; each equals autograd within its precision's band."""
    assert hmm_kernels.grad_flows_runs(32, torch.bfloat16, CUDA)
    assert not hmm_kernels.grad_flows_runs(32, torch.float32, CUDA)
    calls = []
    real = hmm_kernels.grad_flows_triton

    def spy(*args, **kwargs) -> None:
        calls.append(1)
        real(*args, **kwargs)

    monkeypatch.setattr(hmm_kernels, "grad_flows_triton", spy)  # element_ops binds it per call
    hmm = bench_hmm.build([32, 32, 32], VOCAB, CUDA)
    x = tokens(16, 48, seed=11)
    run = fused_estep(hmm, CUDA, segment=8, precision=precision, keep_gb=0.0, graphs=False)
    c = timed_check(hmm, run, x, 4, precision)
    assert bool(calls) == fused_flows
    assert c["ok"], c


# ---- bf16 within the stated bands -----------------------------------------------------------

@pytest.mark.parametrize("factors", [[256], [16, 16], [16, 16, 16], [8, 8, 8, 8]],
                         ids=lambda f: "x".join(map(str, f)))
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_16_bit_hmm_estep_is_within_its_band(factors: list[int], precision: str) -> None:
    """The E-step as make bench runs it (8 GB of kept segments, CUDA graphs by default at
    these sizes) against fp32 autograd on 4 rows copied across its batch of 64."""
    hmm = bench_hmm.build(factors, VOCAB, CUDA)
    run = fused_estep(hmm, CUDA, segment=16, precision=precision, keep_gb=8.0, graphs="auto")
    assert isinstance(run, CapturedEStep)  # auto: graphs up to 2^18
    c = timed_check(hmm, run, tokens(64, 128, seed=3), 4, precision)
    assert c["ok"], c
    assert c["ll_rel_err"] > 0  # 16-bit operands did run


def test_bf16_check_passes_at_a_timed_size() -> None:
    """bench hmm's Monarch-3 2^15 case as timed (batch 128, length 256, bf16, segment 16,
    8 GB kept, graphs): its check against autograd in the same run lands in the band."""
    factors = [32, 32, 32]
    hmm = bench_hmm.build(factors, VOCAB, CUDA)
    run = fused_estep(hmm, CUDA, segment=16, precision="bf16", keep_gb=8.0, graphs="auto")
    c = timed_check(hmm, run, tokens(128, 256, seed=1), 4, "bf16")
    assert c["ok"], c


@pytest.mark.parametrize("block,h", [("dense", 64), ("monarch", 64), ("monarch", 2304)])
def test_hclt_bf16_within_its_band(block: str, h: int) -> None:
    """bench hclt's checks (10% of values missing) on the GPU: fp32 exact to rounding, bf16
    within the bands of bench/hmm.py; 2304 = 48 x 48 takes the fused backward step."""
    data, parent = bench_hclt.patches_and_tree(True, CUDA)
    row = bench_hclt.check(parent, block, h, data, CUDA)
    assert row["fp32_ll_rel_err"] < 1e-5 and row["fp32_flow_rel_err"] < 1e-4
    ll_band, flow_band = TIMED_CHECK_BANDS["bf16"]
    assert 0 < row["bf16_ll_rel_err"] < ll_band and row["bf16_flow_rel_err"] < flow_band
