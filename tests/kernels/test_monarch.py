"""Monarch layer products, weight-gradient products and backward steps: Triton kernels and
PyTorch twins against einsum, on strided states (segment-buffer slots) and poisoned
outputs."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from monarchpc.kernels.monarch import (
    Tiles,
    backward_product,
    backward_product_triton,
    grad_product,
    grad_product_triton,
    layer_product,
    layer_product_triton,
    monarch_products,
)

pytestmark = pytest.mark.kernel  # every test runs Triton kernels (the interpreter on a CPU)

FP32, BF16, FP16 = torch.float32, torch.bfloat16, torch.float16
# (factors, E, N, tiles, dtype): k = 1 (one block per program: 2D products), 2, 3, 4, blocks
# of 2 to 80, one or 3 stacked blocks, fp32, bf16 and fp16; and small tiles (blocks of 40,
# N = 20 in tiles of 16: 3 row tiles, 3 inner steps, 2 column tiles, K = 60 in 4 steps;
# 8 blocks of 2 per program)
LAYOUTS = [([48], 1, 5, None, FP32), ([3, 4], 1, 5, None, FP32), ([3, 4], 3, 5, None, BF16),
           ([2, 80], 3, 5, None, FP32), ([3, 4, 5], 1, 5, None, BF16),
           ([3, 4, 5], 3, 5, None, FP32), ([3, 4, 5], 1, 5, None, FP16),
           ([2, 3, 2, 4], 1, 5, None, FP32), ([2, 3, 2, 4], 3, 5, None, BF16),
           ([2, 40], 1, 20, Tiles(bq=8, bi=16, bj=16, bn=16), FP32),
           ([2, 40], 3, 20, None, FP32)]  # stacked blocks of 40: the stacked-row kernel


def slots(e: int, factors: list[int], width: int, n: int, dtype: torch.dtype,
          fill: float | None, g: torch.Generator) -> torch.Tensor:
    """A segment buffer (E, b_0, ..., b_{k-1}, width, N): random, or all ``fill``."""
    shape = (e, *factors, width, n)
    if fill is None:
        return torch.rand(shape, generator=g).to(dtype)
    return torch.full(shape, fill, dtype=dtype)


def split(state: torch.Tensor, factors: list[int], d: int) -> torch.Tensor:
    """A state (E, b_0, ..., b_{k-1}, N) as a (E, pre, b, post, N) view."""
    pre, post = math.prod(factors[:d]), math.prod(factors[d + 1:])
    return state.view(state.shape[0], pre, factors[d], post, state.shape[-1])


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    """16-bit outputs: a few units in the last place (the interpreter truncates to bf16)."""
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else \
        {"rtol": 1e-2, "atol": 1e-2}


@pytest.mark.parametrize("factors,e,n,tiles,dtype", LAYOUTS)
def test_layer_products_equal_einsum_into_buffer_slots(
        factors: list[int], e: int, n: int, tiles: Tiles | None, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(len(factors) * 10 + e)
    for d in range(len(factors)):
        pre, b, post = math.prod(factors[:d]), factors[d], math.prod(factors[d + 1:])
        for transpose in (False, True):
            w = torch.rand(e, pre, post, b, b, generator=g).to(dtype)
            x = split(slots(e, factors, 3, n, dtype, None, g)[..., 1, :], factors, d)
            wt = w.double().transpose(-1, -2) if transpose else w.double()
            want = torch.einsum("epqij,epjqn->epiqn", wt, x.double())
            for product in (layer_product, lambda *a, **k: layer_product_triton(
                    *a, **k, tiles=tiles, stacked=e > 1)):  # as monarch_products binds it
                buf = slots(e, factors, 3, n, dtype, float("nan"), g)
                out = split(buf[..., 1, :], factors, d)
                assert product(w, x, out, transpose) is out
                torch.testing.assert_close(out.double(), want, **tolerance(dtype))
                assert buf[..., 0, :].isnan().all() and buf[..., 2, :].isnan().all()
                fresh = product(w, x, None, transpose)  # a new output
                assert fresh.dtype == dtype
                torch.testing.assert_close(fresh.double(), want, **tolerance(dtype))


@pytest.mark.parametrize("factors,e,n,tiles,dtype", LAYOUTS)
def test_grad_products_equal_einsum_over_segment_columns(
        factors: list[int], e: int, n: int, tiles: Tiles | None, dtype: torch.dtype) -> None:
    """K = width x N columns of a segment buffer (c = 4 slots, the last segment 3 wide)."""
    g = torch.Generator().manual_seed(len(factors) * 10 + e + 1)
    width = 3
    for d in range(len(factors)):
        pre, b, post = math.prod(factors[:d]), factors[d], math.prod(factors[d + 1:])
        a, x = (split(slots(e, factors, 4, n, dtype, None, g)[..., :width, :].flatten(-2),
                      factors, d) for _ in range(2))
        start = torch.randn(e, pre, post, b, b, generator=g)
        want = start.double() + torch.einsum("epiqk,epjqk->epqij", a.double(), x.double())
        for product in (grad_product, lambda *a: grad_product_triton(*a, tiles=tiles)):
            grad = start.clone()
            assert product(grad, a, x) is grad
            torch.testing.assert_close(grad.double(), want, rtol=1e-5, atol=1e-4)


def test_dispatcher_picks_and_forces_products(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu, cpu = torch.device("cuda"), torch.device("cpu")  # devices named, nothing allocated
    assert monarch_products("auto", gpu, [64, 64, 64]).name == "triton"
    assert monarch_products("auto", gpu, [512, 512]).name == "torch"
    assert monarch_products("auto", cpu, [4, 4, 4]).name == "torch"
    plain = monarch_products("triton", cpu, [4, 4]).layer
    assert plain.func is layer_product_triton
    assert plain.keywords == {"stacked": False, "tf32": False}
    stacked = monarch_products("triton", cpu, [4, 4], stacked=True, tf32=True).layer
    assert stacked.func is layer_product_triton  # an HCLT level, TF32 operands
    assert stacked.keywords == {"stacked": True, "tf32": True}
    assert monarch_products("torch", gpu, [4, 4, 4]).grad is grad_product
    with pytest.raises(ValueError, match="products must be auto, triton or torch"):
        monarch_products("cuda", cpu, [4, 4])
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="use products=torch"):
        monarch_products("triton", cpu, [4, 4, 4])
    assert monarch_products("auto", cpu, [4, 4, 4]).name == "torch"


def test_triton_products_reject_bad_layouts() -> None:
    w = torch.rand(1, 2, 3, 4, 4)
    x = torch.rand(1, 2, 4, 3, 6)
    with pytest.raises(ValueError, match="unit column stride"):
        layer_product_triton(w, x.transpose(-1, -2).contiguous().transpose(-1, -2))
    with pytest.raises(ValueError, match="contiguous fp32"):
        grad_product_triton(torch.zeros(1, 2, 3, 4, 4, dtype=torch.float64), x, x)


@pytest.mark.slow
@pytest.mark.parametrize("factors,e,n,tiles,dtype", [*LAYOUTS, ([4, 8], 2, 70, None, FP32),
                                                      ([4, 8], 2, 70, None, BF16)])
def test_backward_products_equal_gradient_then_transposed_product(
        factors: list[int], e: int, n: int, tiles: Tiles | None, dtype: torch.dtype) -> None:
    """grad += a x^T and W^T a, into a slot of a buffer or over x itself: the twin, the
    fused kernel (70 columns: a partial last step) and the two kernels."""
    g = torch.Generator().manual_seed(len(factors) * 10 + e + 2)
    for d in range(len(factors)):
        pre, b, post = math.prod(factors[:d]), factors[d], math.prod(factors[d + 1:])
        w = torch.rand(e, pre, post, b, b, generator=g).to(dtype)
        a, x = (split(slots(e, factors, 3, n, dtype, None, g)[..., 1, :], factors, d)
                for _ in range(2))
        start = torch.randn(e, pre, post, b, b, generator=g)
        want_grad = start.double() + torch.einsum("epiqk,epjqk->epqij", a.double(),
                                                  x.double())
        want = torch.einsum("epqji,epjqn->epiqn", w.double(), a.double())
        products = [backward_product, functools.partial(backward_product_triton, fuse=False)]
        if b <= 64:  # fused: over all columns in one range, in ranges of one step, default
            products += [functools.partial(backward_product_triton, fuse=True, split=ranges)
                         for ranges in (1, 99, None)]
        for product in products:
            for in_place in (False, True):
                grad, xs = start.clone(), x.clone()
                buf = slots(e, factors, 3, n, dtype, float("nan"), g)
                out = xs if in_place else split(buf[..., 1, :], factors, d)
                assert product(w, grad, a, xs, out) is out
                torch.testing.assert_close(grad.double(), want_grad, rtol=1e-5, atol=1e-4)
                torch.testing.assert_close(out.double(), want, **tolerance(dtype))
                if not in_place:
                    assert buf[..., 0, :].isnan().all() and buf[..., 2, :].isnan().all()


def test_backward_step_fuses_where_measured_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``fuse``: blocks of 17-64 take the fused kernel, others the two kernels."""
    from monarchpc.kernels import monarch

    calls: list[str] = []
    monkeypatch.setattr(monarch, "grad_product_triton", lambda *a, **k: calls.append("grad"))
    monkeypatch.setattr(monarch, "layer_product_triton", lambda *a, **k: calls.append("layer"))
    for b, dtype, fused in [(16, BF16, False), (17, FP32, True), (32, BF16, True),
                            (33, FP32, True), (64, FP32, True), (80, BF16, False)]:
        calls.clear()
        w, grad = torch.rand(1, 1, 1, b, b).to(dtype), torch.zeros(1, 1, 1, b, b)
        a, x = torch.rand(1, 1, b, 1, 8).to(dtype), torch.rand(1, 1, b, 1, 8).to(dtype)
        backward_product_triton(w, grad, a, x, x)
        assert calls == ([] if fused else ["grad", "layer"]), (b, dtype)
        assert (grad.abs().sum() > 0) == fused  # the fused kernel ran (the others are stubs)
    with pytest.raises(ValueError, match="blocks up to 64"):
        backward_product_triton(torch.rand(1, 1, 1, 80, 80), torch.zeros(1, 1, 1, 80, 80),
                                torch.rand(1, 1, 80, 1, 8), torch.rand(1, 1, 80, 1, 8),
                                torch.rand(1, 1, 80, 1, 8), fuse=True)


@pytest.mark.slow
@pytest.mark.parametrize("factors,e,n,tiles,dtype", [*LAYOUTS, ([4, 8], 2, 70, None, FP32)])
def test_stacked_row_layer_products_equal_einsum(
        factors: list[int], e: int, n: int, tiles: Tiles | None, dtype: torch.dtype) -> None:
    """The stacked-row layer kernel (whole blocks up to 64 a program, all columns) into a
    slot of a buffer, W and W^T."""
    from monarchpc.kernels.monarch import layer_rows_triton

    g = torch.Generator().manual_seed(len(factors) * 10 + e + 3)
    for d in range(len(factors)):
        pre, b, post = math.prod(factors[:d]), factors[d], math.prod(factors[d + 1:])
        if b > 64:
            continue
        for transpose in (False, True):
            w = torch.rand(e, pre, post, b, b, generator=g).to(dtype)
            x = split(slots(e, factors, 3, n, dtype, None, g)[..., 1, :], factors, d)
            wt = w.double().transpose(-1, -2) if transpose else w.double()
            want = torch.einsum("epqij,epjqn->epiqn", wt, x.double())
            for ranges in (1, 2, None):  # one column range, two, the default's
                buf = slots(e, factors, 3, n, dtype, float("nan"), g)
                out = split(buf[..., 1, :], factors, d)
                assert layer_rows_triton(w, x, out, transpose, ranges) is out
                torch.testing.assert_close(out.double(), want, **tolerance(dtype))
                assert buf[..., 0, :].isnan().all() and buf[..., 2, :].isnan().all()


def round_tf32(t: torch.Tensor) -> torch.Tensor:
    """fp32 ``t`` (non-negative) rounded to the nearest TF32 value, ties away from zero."""
    return ((t.float().view(torch.int32) + 0x1000) & ~0x1FFF).view(torch.float32)


@pytest.mark.parametrize("kernel", ["layer", "rows", "grad", "backward"])
def test_tf32_products_round_their_operands_to_nearest(kernel: str) -> None:
    """With ``tf32``, every Triton product takes its fp32 operands rounded to the nearest
    TF32 value (as cuBLAS does), not truncated (as the tensor cores would: every product
    about 2^-11 low, which moved a Monarch-HCLT's log p by -0.40 nats a patch)."""
    from monarchpc.kernels.monarch import layer_rows_triton
    g = torch.Generator().manual_seed(5)
    e, pre, b, post, n = 2, 3, 20, 2, 24
    w = torch.rand(e, pre, post, b, b, generator=g) + 0.5  # positive, like probabilities
    a, x = torch.rand(2, e, pre, b, post, n, generator=g) + 0.5
    grad = torch.zeros(e, pre, post, b, b)
    out = torch.empty_like(x)
    if kernel == "layer":
        got = layer_product_triton(w, x, out, tf32=True)
    elif kernel == "rows":
        got = layer_rows_triton(w, x, out, tf32=True)
    elif kernel == "grad":
        got = grad_product_triton(grad, a, x, tf32=True)
    else:
        backward_product_triton(w, grad, a, x, out, fuse=True, tf32=True)
        got = grad
    if kernel in ("layer", "rows"):
        def exact(w_, x_):
            return torch.einsum("epqij,epjqn->epiqn", w_.double(), x_.double())
        want, rounded = exact(w, x), exact(round_tf32(w), round_tf32(x))
    else:
        def exact(a_, x_):
            return torch.einsum("epiqk,epjqk->epqij", a_.double(), x_.double())
        want, rounded = exact(a, x), exact(round_tf32(a), round_tf32(x))
    torch.testing.assert_close(got.double(), rounded, rtol=2e-6, atol=0)
    relative = got.double() / want - 1
    assert relative.abs().max() > 1e-5  # TF32 precision, not fp32's
    assert relative.abs().max() < 2 ** -10 and abs(float(relative.mean())) < 1e-4  # unbiased
