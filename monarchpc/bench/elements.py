"""Time the element-wise kernels of the fused HMM E-step against the memory they move.

    python -m monarchpc.bench elements              # a GPU (JSON: outputs/bench/)
    python -m monarchpc.bench elements --tiny       # CPU smoke run (Triton interpreter)

For each case (N = 128 columns, bf16 states laid out as the E-step lays them out: product
outputs contiguous, y and a in slots of segment buffers; vocabulary 27) the Triton
kernels of :mod:`monarchpc.kernels.hmm` are checked against their PyTorch twins, then
timed: ``emit`` (right to left), ``post`` (posterior flows and the scaled vector entering
the transposed product), ``post`` without its output (the flows alone) and without its
flows (as the E-step runs it when ``grad_flows`` takes them), and a strided copy
of one state into a slot as the bandwidth reference. Monarch cases also time the last
layer's Triton product alone, that product followed by ``emit``, and ``emit_product``
(the two fused, as the E-step runs them with Triton products), and over a segment of 16
steps the weight gradient of the layer that first meets y_{t+1} alone and with the
emission flows (``grad_flows``), per step. Times are medians of CUDA-graph
replays (as in the E-step's graphs). ``tb_per_s`` counts each state read or written
once, the emission table read once and the flows read and written once;
``of_copy`` is that rate over the copy's. JSON lines (also to --out), then a Markdown table.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

from monarchpc.bench.kernels import rel_err, timer
from monarchpc.bench.records import JsonLines, add_output_options, destination, device_tag

CASES = [("2^18 (64^3)", [64, 64, 64]), ("2^16 (16^4)", [16, 16, 16, 16]),
         ("2^15 (32^3)", [32, 32, 32]), ("dense 4096", [4096])]
TINY_CASES = [("2^9 (8^3)", [8, 8, 8])]
SEGMENT, VOCAB = 16, 27


def bench_case(name: str, factors: list[int], n: int, device: torch.device
               ) -> list[dict[str, Any]]:
    """One JSON row per kernel of this case (see the module docstring)."""
    # imported after TRITON_INTERPRET is decided
    from monarchpc.kernels.hmm import element_ops, grad_flows_torch
    from monarchpc.kernels.monarch import grad_product_triton, layer_product, layer_product_triton

    g = torch.Generator(device).manual_seed(0)
    h, dtype = math.prod(factors), torch.bfloat16

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, device=device)

    table = rand(h, VOCAB)
    table /= table.sum(1, keepdim=True)
    tokens = torch.randint(0, VOCAB, (n,), generator=g, device=device)
    s = rand(n) + 0.5
    m = rand(*factors, n).to(dtype)  # a product's output
    w = rand(*factors, n).to(dtype)
    y_buf = torch.zeros(*factors, SEGMENT + 1, n, dtype=dtype, device=device)
    a_buf = torch.zeros(*factors, SEGMENT, n, dtype=dtype, device=device)
    y, a = y_buf[..., 1, :], a_buf[..., 0, :]
    flows = torch.zeros(h, VOCAB, device=device)

    ops = {kind: element_ops(kind, device, VOCAB) for kind in ("torch", "triton")}
    outs = {}
    for kind, op in ops.items():
        f = torch.zeros_like(flows)
        sums = op.emit(m, table, tokens, s, y)
        op.post(w, y, table, tokens, s, a, f)
        outs[kind] = [y.clone(), a.clone(), sums, f]
    err = rel_err(outs["triton"], outs["torch"])  # bf16 states: a rounding step is 2^-8

    state = h * n * dtype.itemsize
    table_bytes, flow_bytes = h * VOCAB * 4, 2 * h * VOCAB * 4
    ms = timer(device)
    runs: list[tuple[str, Callable[[], Any], int]] = [
        ("copy", lambda: y.copy_(m), 2 * state),
        ("emit", lambda: ops["triton"].emit(m, table, tokens, s, y), 2 * state + table_bytes),
        ("post", lambda: ops["triton"].post(w, y, table, tokens, s, a, flows),
         3 * state + table_bytes + flow_bytes),
        ("post flows only", lambda: ops["triton"].post(w, y, table, tokens, s, None, flows),
         2 * state + flow_bytes),
        ("post out only", lambda: ops["triton"].post(w, y, table, tokens, s, a, None),
         2 * state + table_bytes),
        ("emit torch", lambda: ops["torch"].emit(m, table, tokens, s, y), 2 * state + table_bytes),
        ("post torch", lambda: ops["torch"].post(w, y, table, tokens, s, a, flows),
         3 * state + table_bytes + flow_bytes)]
    if len(factors) > 1:  # the last layer (mixing axis 0) of a Monarch product
        b = factors[0]  # states as (1, 1, b_0, h / b_0, N) views
        w0 = rand(1, 1, h // b, b, b).to(dtype)
        x0, m0, y0 = (t.view(1, 1, b, h // b, n) for t in (w, m, y))
        fused = ops["triton"].emit_product  # checked against the PyTorch product, then emit
        fused_sums = fused(w0, x0, table, tokens, s, y0)
        fused_y = y.clone()
        want_sums = ops["torch"].emit(layer_product(w0, x0).reshape(m.shape), table, tokens,
                                      s, y)
        err = max(err, rel_err([fused_y, fused_sums], [y, want_sums]))
        weight_bytes = w0.numel() * dtype.itemsize

        def product_then_emit() -> torch.Tensor:
            layer_product_triton(w0, x0, m0)
            return ops["triton"].emit(m, table, tokens, s, y)
        runs += [("product", lambda: layer_product_triton(w0, x0, m0), 2 * state + weight_bytes),
                 ("product, emit", product_then_emit, 4 * state + weight_bytes + table_bytes),
                 ("emit_product", lambda: fused(w0, x0, table, tokens, s, y0),
                  2 * state + weight_bytes + table_bytes)]

        # a segment: a_{k-1}(t) and y_{t+1} (slots 1..16) of the last axis's layer
        bl = factors[-1]
        wl = rand(1, h // bl, 1, bl, bl).to(dtype)
        a_seg = a_buf.flatten(-2).view(1, h // bl, bl, 1, -1)
        x_seg = y_buf[..., 1:, :].flatten(-2).view(1, h // bl, bl, 1, -1)
        seg_tokens = torch.randint(0, VOCAB, (SEGMENT * n,), generator=g, device=device)
        grad = torch.zeros(wl.shape, device=device)
        want = [torch.zeros_like(grad), torch.zeros_like(flows)]
        grad_flows_torch(wl.float(), want[0], a_seg.float(), x_seg.float(), seg_tokens, want[1])
        got = [torch.zeros_like(grad), torch.zeros_like(flows)]
        ops["triton"].grad_flows(wl, got[0], a_seg, x_seg, seg_tokens, got[1])
        err = max(err, rel_err(got, want))
        grad_bytes = (2 * state * SEGMENT + 2 * grad.numel() * 4) / SEGMENT  # a step's share
        runs += [("grad (per step)", lambda: grad_product_triton(grad, a_seg, x_seg),
                  grad_bytes),
                 ("grad_flows (per step)",
                  lambda: ops["triton"].grad_flows(wl, grad, a_seg, x_seg, seg_tokens, flows),
                  grad_bytes + flow_bytes / SEGMENT)]
    rows = []
    for kernel, fn, nbytes in runs:
        t = ms(fn) / (SEGMENT if kernel.endswith("(per step)") else 1)
        rows.append({"case": name, "factors": factors, "hidden_size": h, "columns": n,
                     "kernel": kernel, "device": torch.cuda.get_device_name(device)
                     if device.type == "cuda" else "cpu", "max_rel_err": err, "ok": err < 2e-2,
                     "ms": t, "us": t * 1e3, "tb_per_s": nbytes / (t * 1e-3) / 1e12})
    copy_rate = rows[0]["tb_per_s"]
    for r in rows:
        r["of_copy"] = r["tb_per_s"] / copy_rate
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| case | kernel | µs a call | TB/s | of the copy's | max rel. error |",
           "| --- | --- | --- | --- | --- | --- |"]
    out += [f"| {r['case']} | {r['kernel']} | {r['us']:,.1f} | {r['tb_per_s']:.2f} | "
            f"{r['of_copy']:.2f} | {r['max_rel_err']:.1e} |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="small CPU-sized case")
    p.add_argument("--columns", type=int, default=None, help="N (default 128; tiny 16)")
    add_output_options(p)  # name: element_kernels_<device>.jsonl
    args = p.parse_args(argv)
    if args.tiny:  # before Triton is first imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type != "cuda" and not args.tiny:
        sys.exit("bench_element_kernels: no GPU found; use --tiny for the CPU smoke run")
    n = args.columns or (16 if args.tiny else 128)
    rows = []
    record = JsonLines(destination(args, f"element_kernels_{device_tag(device)}.jsonl"), mode="a")
    for name, factors in TINY_CASES if args.tiny else CASES:
        for row in bench_case(name, factors, n, device):
            record(row)
            rows.append(row)
    record.close()
    print(markdown(rows))


if __name__ == "__main__":
    main()
