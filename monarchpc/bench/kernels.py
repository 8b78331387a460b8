"""Time the Monarch products of the fused E-step: cuBLAS (the torch twins) vs Triton tiles.

    python -m monarchpc.bench kernels                # a GPU (JSON: outputs/bench/)
    python -m monarchpc.bench kernels --tiny         # CPU smoke run (Triton interpreter)

For each case (N = 128 columns, bf16), every variant is first checked against the torch
twin (outputs, intermediate slots and weight gradients; largest error relative to the
largest value), then timed as the E-step uses it: a forward product (k layers, layer
inputs written into slots of segment buffers, as the recomputation does), a transposed
product (into the slots the gradients read) and the weight gradients of all layers over
K = 16 x 128 columns; also each forward layer alone. Times are medians of CUDA-graph
replays (no launch overhead, as in the E-step's graphs). Bandwidth counts each layer as
reading its input and weights and writing its output once. JSON lines (also to --out),
then a Markdown table. Each variant runs in its own try block; a time budget skips the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from monarchpc.bench.records import JsonLines, add_output_options, destination, device_tag

CASES = [("monarch3 2^18", [64, 64, 64]), ("monarch3 2^15", [32, 32, 32]),
         ("monarch4 2^16", [16, 16, 16, 16]), ("monarch2 2^18", [512, 512]),
         ("monarch2 2^16", [256, 256])]
TINY_CASES = [("monarch3 2^9", [8, 8, 8]), ("monarch2 2^8", [16, 16])]
SEGMENT = 16


def tile_variants(monarch: Any) -> list[tuple[str, Callable[[Any], Any] | None]]:
    """Triton variants as changes to the default tiles (None: the defaults)."""
    r = dataclasses.replace
    return [("triton", None),
            ("triton warps=8", lambda t: r(t, warps=8)),
            ("triton bn/2", lambda t: r(t, bn=max(16, t.bn // 2))),
            ("triton bq*2", lambda t: r(t, bq=t.bq * 2)),
            ("triton bi/2", lambda t: r(t, bi=max(16, t.bi // 2))),
            ("triton stages=2", lambda t: r(t, stages=2))]


class Case:
    """Weights, states and segment buffers of one Monarch block (E = 1, bf16)."""

    def __init__(self, factors: list[int], n: int, dtype: torch.dtype, device: torch.device,
                 seed: int = 0) -> None:
        g = torch.Generator(device).manual_seed(seed)
        self.factors, self.k, self.h, self.n = factors, len(factors), math.prod(factors), n

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=g, device=device, dtype=torch.float32)

        self.w = []
        for d, b in enumerate(factors):
            w = rand(1, math.prod(factors[:d]), math.prod(factors[d + 1:]), b, b)
            self.w.append((w / w.sum(-1, keepdim=True)).to(dtype))
        self.y = rand(*factors, n).to(dtype)  # the product's input state
        # forward: layer d >= 1 writes X_{d-1} into slot 1 of xs[d - 1]; transposed: layer d
        # writes a_{d+1} into slot 1 of a_s[d + 1]; gradients read K = SEGMENT * n columns
        self.xs = [rand(*factors, SEGMENT, n).to(dtype) for _ in range(self.k)]
        self.a_s = [rand(*factors, SEGMENT, n).to(dtype) for _ in range(self.k)]
        self.grads = [torch.zeros(w.shape, device=device) for w in self.w]

    def split(self, state: torch.Tensor, d: int) -> torch.Tensor:
        b = self.factors
        return state.view(1, math.prod(b[:d]), b[d], math.prod(b[d + 1:]), state.shape[-1])

    def forward(self, layer: Callable, d_only: int | None = None) -> torch.Tensor:
        m = self.y
        for d in reversed(range(self.k)):
            if d_only is not None and d != d_only:
                continue
            out = self.split(self.xs[d - 1][..., 1, :], d) if d > 0 else None
            res = layer(self.w[d], self.split(m, d), out, False)
            m = res.view(*self.factors, self.n) if out is None else self.xs[d - 1][..., 1, :]
        return m

    def transposed(self, layer: Callable) -> torch.Tensor:
        a = self.a_s[0][..., 1, :]
        for d in range(self.k):
            out = self.split(self.a_s[d + 1][..., 1, :], d) if d + 1 < self.k else None
            res = layer(self.w[d], self.split(a, d), out, True)
            a = res.view(*self.factors, self.n) if out is None else self.a_s[d + 1][..., 1, :]
        return a

    def gradients(self, grad: Callable) -> list[torch.Tensor]:
        for d in range(self.k):
            grad(self.grads[d], self.split(self.a_s[d].flatten(-2), d),
                 self.split(self.xs[d].flatten(-2), d))
        return self.grads

    def outputs(self, layer: Callable, grad: Callable) -> list[torch.Tensor]:
        """Every value a variant computes, from fresh slots and zero gradients."""
        for t in self.grads:
            t.zero_()
        fwd = self.forward(layer).clone()
        slots = [x[..., 1, :].clone() for x in self.xs[:-1]]
        tr = self.transposed(layer).clone()
        a_slots = [a[..., 1, :].clone() for a in self.a_s[1:]]
        return [fwd, *slots, tr, *a_slots, *[g.clone() for g in self.gradients(grad)]]

    def layer_bytes(self, d: int) -> int:
        """Input + output states and the weights of layer d, in bytes."""
        size = self.y.element_size()
        return 2 * self.h * self.n * size + self.w[d].numel() * size

    def grad_bytes(self) -> int:
        size = self.y.element_size()
        return sum(2 * self.h * SEGMENT * self.n * size + 2 * g.numel() * 4 for g in self.grads)


def timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """Median milliseconds of fn: CUDA-graph replays on a GPU, wall clock on the CPU (after
    one warm-up: the CPU runs are smoke tests)."""
    if device.type != "cuda":
        def wall(fn: Callable[[], Any]) -> float:
            fn()
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        return wall
    import triton.testing

    def graphed(fn: Callable[[], Any]) -> float:
        fn()  # compile outside the capture
        torch.cuda.synchronize()
        try:
            return float(triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median"))
        except TypeError:  # an older Triton without return_mode
            return float(triton.testing.do_bench_cudagraph(fn, rep=20, quantiles=[0.5])[0])
    return graphed


def rel_err(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    return max(float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))
               for a, b in zip(got, want, strict=True))


def copy_tb_per_s(device: torch.device, ms: Callable[[Callable[[], Any]], float]) -> float:
    a = torch.empty(2**30, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    return 2 * a.numel() / (ms(lambda: b.copy_(a)) * 1e-3) / 1e12


def bench_case(name: str, factors: list[int], args: argparse.Namespace, device: torch.device,
               monarch: Any, ms: Callable, deadline: float) -> list[dict[str, Any]]:
    case = Case(factors, args.columns, torch.bfloat16, device)
    want = case.outputs(monarch.layer_product, monarch.grad_product)
    variants: list[tuple[str, Callable, Callable]] = [
        ("torch", monarch.layer_product, monarch.grad_product)]
    for label, change in tile_variants(monarch):
        def tiles(b: int, blocks: int, n: int, change: Callable | None = change) -> Any:
            t = monarch.default_tiles(b, blocks, n)
            return change(t) if change else t

        def layer(w, x, out, transpose, tiles=tiles):
            e, pre, post, b, _ = w.shape
            return monarch.layer_product_triton(w, x, out, transpose,
                                                tiles(b, e * pre * post, x.shape[-1]))

        def grad(g, a, x, tiles=tiles):
            e, pre, post, b, _ = g.shape
            return monarch.grad_product_triton(g, a, x, tiles(b, e * pre * post, a.shape[-1]))

        variants.append((label, layer, grad))
    if args.variants:
        variants = [v for v in variants if v[0] in args.variants.split(",")]
    rows = []
    for label, layer, grad in variants:
        row: dict[str, Any] = {"case": name, "factors": factors, "columns": args.columns,
                               "dtype": "bf16", "variant": label,
                               "device": torch.cuda.get_device_name(device)
                               if device.type == "cuda" else "cpu"}
        if time.time() > deadline:
            rows.append(row | {"error": "skipped: time budget"})
            continue
        try:
            row["max_rel_err"] = rel_err(case.outputs(layer, grad), want)
            row["ok"] = row["max_rel_err"] < 2e-2
            fwd = ms(lambda layer=layer: case.forward(layer))
            tr = ms(lambda layer=layer: case.transposed(layer))
            gr = ms(lambda grad=grad: case.gradients(grad))
            layers = [ms(lambda layer=layer, d=d: case.forward(layer, d)) for d in range(case.k)]
            fwd_bytes = sum(case.layer_bytes(d) for d in range(case.k))
            flops = 2 * case.h * sum(factors) * args.columns
            row |= {"forward_ms": fwd, "transposed_ms": tr, "grad_ms": gr,
                    "forward_layer_ms": layers,
                    "forward_tb_per_s": fwd_bytes / (fwd * 1e-3) / 1e12,
                    "transposed_tb_per_s": fwd_bytes / (tr * 1e-3) / 1e12,
                    "grad_tb_per_s": case.grad_bytes() / (gr * 1e-3) / 1e12,
                    "forward_tflops": flops / (fwd * 1e-3) / 1e12,
                    "grad_tflops": flops * SEGMENT / (gr * 1e-3) / 1e12}
        except Exception as err:  # one variant's failure must not lose the rest
            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    def num(r: dict[str, Any], key: str, fmt: str) -> str:
        return format(r[key], fmt) if r.get(key) is not None else "-"

    out = ["| case | variant | forward ms (TB/s) | transposed ms (TB/s) | gradients ms (TB/s) "
           "| forward layers ms | max rel. error |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['case']} | {r['variant']} | {r['error'][:60]} | | | | |")
            continue
        layers = " / ".join(f"{t:.3f}" for t in r["forward_layer_ms"])
        out.append(f"| {r['case']} | {r['variant']} | {num(r, 'forward_ms', '.3f')} "
                   f"({num(r, 'forward_tb_per_s', '.2f')}) | {num(r, 'transposed_ms', '.3f')} "
                   f"({num(r, 'transposed_tb_per_s', '.2f')}) | {num(r, 'grad_ms', '.3f')} "
                   f"({num(r, 'grad_tb_per_s', '.2f')}) | {layers} | "
                   f"{num(r, 'max_rel_err', '.1e')}{'' if r.get('ok') else ' FAIL'} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="small cases on the CPU")
    parser.add_argument("--cases", default=None, help="comma-separated case indices to run")
    parser.add_argument("--columns", type=int, default=128, help="N, columns per state")
    parser.add_argument("--variants", default=None,
                        help="comma-separated variant names to run (default: all)")
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="skip the variants left after this many seconds")
    add_output_options(parser)  # name: monarch_kernels_<device>.jsonl
    args = parser.parse_args(argv)
    if args.tiny:  # before Triton is first imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
        args.columns = min(args.columns, 16)
    from monarchpc.kernels import monarch

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type != "cuda" and not args.tiny:
        sys.exit("bench_monarch_kernels: no GPU found; use --tiny for the CPU smoke run")
    cases = TINY_CASES if args.tiny else CASES
    if args.cases:
        cases = [cases[int(i)] for i in args.cases.split(",")]
    deadline = time.time() + args.budget_s
    ms = timer(device)
    emit = JsonLines(destination(args, f"monarch_kernels_{device_tag(device)}.jsonl"))

    if device.type == "cuda":
        emit({"copy_tb_per_s": copy_tb_per_s(device, ms)})
    rows = []
    for name, factors in cases:
        try:
            case_rows = bench_case(name, factors, args, device, monarch, ms, deadline)
        except Exception as err:  # e.g. out of memory: report, go on
            case_rows = [{"case": name, "variant": "all", "error": f"{type(err).__name__}: {err}"}]
        for row in case_rows:
            emit(row)
        rows += case_rows
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(markdown(rows))
    emit.close()


if __name__ == "__main__":
    main()
