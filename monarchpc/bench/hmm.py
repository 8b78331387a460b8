"""Benchmark the E-step (forward + flows) and the full EM update of HMMs.

    python -m monarchpc.bench hmm                    # the issue's cases on a GPU
    python -m monarchpc.bench hmm --tiny             # small sizes on the CPU (CI smoke test)
    python -m monarchpc.bench hmm --precision tf32 --segment 8 --record
    python -m monarchpc.bench hmm --products torch,triton   # Monarch products: cuBLAS vs Triton

One JSON line per case (tokens/s, achieved TFLOP/s counted as 6 x multiply-adds per token,
peak GPU memory, precision, device), correctness checks of the fused path against the
plain PyTorch (autograd) path, the GEMM and copy ceilings measured on this device, then a
Markdown table and the README's table. The JSON lines go to
outputs/bench/bench_<gpu>_<precision>.jsonl (e.g. bench_h200_bf16.jsonl); ``--record``
writes docs/results/device/ instead, ``--out`` any file.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from typing import Any

import torch

from monarchpc.bench.records import JsonLines, add_output_options, destination, device_tag
from monarchpc.circuits import dense_block, monarch_block
from monarchpc.circuits.hmm import HMM
from monarchpc.kernels.hmm import element_ops
from monarchpc.kernels.monarch import monarch_products
from monarchpc.learning.cuda_graphs import CapturedEStep
from monarchpc.learning.em import accumulate_flows, em_step, flows
from monarchpc.learning.hmm_estep import fused_estep, hmm_estep
from monarchpc.learning.precision import FP32, PRECISIONS, Precision

# (name, factors, batch): one factor is a dense block
GPU_CASES = [("dense 4096", [4096], 128), ("dense 16384", [16384], 128),
             ("monarch2 2^16", [256, 256], 128), ("monarch2 2^18", [512, 512], 128),
             ("monarch2 2^19", [512, 1024], 128), ("monarch3 2^15", [32, 32, 32], 128),
             ("monarch3 2^18", [64, 64, 64], 128), ("monarch4 2^16", [16, 16, 16, 16], 128),
             ("monarch2 2^19", [512, 1024], 512)]
TINY_CASES = [("dense 64", [64], 16), ("monarch2 2^8", [16, 16], 16),
              ("monarch3 2^9", [8, 8, 8], 16)]
CHECK_CASES = [("dense 512", [512]), ("monarch2 2^12", [64, 64]), ("monarch3 2^12", [16, 16, 16])]


def build(factors: list[int], vocab: int, device: torch.device, seed: int = 0) -> HMM:
    g = torch.Generator().manual_seed(seed)
    block = dense_block(factors[0], g) if len(factors) == 1 else monarch_block(factors, g)
    return HMM(block, vocab, g).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, reps: int) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs after one warm-up."""
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def bench_case(name: str, factors: list[int], batch: int, args: argparse.Namespace,
               device: torch.device, products: str) -> dict[str, Any]:
    """Time the E-step (peak memory of the E-step alone), the EM update, and with ``--lean``
    the E-step recomputing every segment (keep_gb = 0: least memory), with the Monarch
    ``products`` (auto, torch or triton)."""
    hmm = build(factors, args.vocab, device)
    x = torch.randint(0, args.vocab, (batch, args.length), device=device,
                      generator=torch.Generator(device).manual_seed(1))
    madds = hmm.madds_per_token()
    tokens = batch * args.length

    def clear() -> None:
        for p in hmm.parameters():
            p.grad = None

    reset_memory(device)
    run = fused_estep(hmm, device, args.segment, args.precision, args.keep_gb, args.graphs,
                      products)
    row: dict[str, Any] = {"case": name, "factors": factors, "hidden_size": math.prod(factors),
                           "batch": batch, "length": args.length, "vocab": args.vocab,
                           "madds_per_token": madds, "precision": args.precision,
                           "segment": args.segment, "keep_gb": args.keep_gb,
                           "kernels": element_ops("auto", device, args.vocab).name,
                           "products": monarch_products(products, device, factors).name,
                           "products_setting": products,
                           "cuda_graph": isinstance(run, CapturedEStep),
                           "device": device_name(device)}
    try:
        t_e = timed(lambda: run(x), device, args.reps)
        row |= {"estep_s": t_e, "estep_tokens_per_s": tokens / t_e,
                "estep_tflops": 6 * madds * tokens / t_e / 1e12, "peak_memory_gb": peak_gb(device)}
        if args.check_rows:  # the timed configuration against autograd, same run
            row["timed_check"] = timed_check(hmm, run, x, args.check_rows, args.precision)
        clear()
        reset_memory(device)
        t_u = timed(lambda: (run(x), em_step(hmm, 0.5, 0.1)), device, args.reps)
        row |= {"update_s": t_u, "update_tokens_per_s": tokens / t_u,
                "update_peak_memory_gb": peak_gb(device)}
        if args.lean:
            del run
            clear()
            reset_memory(device)
            lean = fused_estep(hmm, device, args.segment, args.precision, 0.0, args.graphs,
                               products)
            t_l = timed(lambda: lean(x), device, args.reps)
            row |= {"lean_estep_tokens_per_s": tokens / t_l, "lean_peak_memory_gb": peak_gb(device)}
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
    except Exception as err:  # e.g. a kernel that fails to compile: report it, go on
        row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
    return row


# Bands of the check at the timed size (relative errors against fp32 autograd: log p of a
# row; a parameter's flows, largest error over largest flow). fp32 products are exact up to
# summation order; TF32 rounds operands to 10 mantissa bits (truncated operands moved log p
# by about 6e-4 relative, outside its band); 16-bit operands by 2^-8 (bf16) or 2^-11: bf16
# measured within 4e-5 (log p) and 9e-3 (flows) on the GPU at the checks' sizes, and up to
# 3e-4 for log p on the CPU at h = 64, T = 16 (fewer terms to average the rounding over).
TIMED_CHECK_BANDS = {"fp32": (1e-5, 1e-4), "tf32": (1e-4, 1e-2), "bf16": (1e-3, 5e-2),
                     "fp16": (1e-3, 5e-2)}


def timed_check(hmm: HMM, run: Any, x: torch.Tensor, rows: int, precision: str
                ) -> dict[str, Any]:
    """The timed E-step ``run`` (the same callable: its batch shape, segments kept, CUDA
    graph, products and precision) against the autograd path in fp32 on ``rows`` rows of
    ``x``. The batch is filled with copies of x[:rows] (column j holds row j mod rows), so
    the fused log p of column j must equal the reference's of row j mod rows, and the fused
    flows the reference's flows of the rows weighted by their copies. Leaves the gradients
    cleared; the parameters are not changed."""
    start = time.perf_counter()
    n = x.shape[0]
    r = max(1, min(rows, n))
    index = torch.arange(n, device=x.device) % r
    copies = torch.bincount(index, minlength=r).to(torch.float32)
    params = list(hmm.parameters())

    def clear() -> None:
        for p in params:
            p.grad = None

    clear()
    ll = run(x[:r][index]).float()
    fused = [flows(p).clone() for p in params]
    clear()
    with torch.enable_grad(), FP32.products():
        ll_ref = hmm.log_likelihood(x[:r])
        (ll_ref * copies).sum().backward()
    ll_ref = ll_ref.detach()[index]
    by_param = {}
    for (name, p), f in zip(hmm.named_parameters(), fused, strict=True):
        ref = flows(p)
        by_param[name] = float((f - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    clear()
    ll_err = float(((ll - ll_ref).abs() / ll_ref.abs()).max())
    flow_err = max(by_param.values())
    band = TIMED_CHECK_BANDS[precision]
    return {"rows": r, "ll_rel_err": ll_err, "flow_rel_err": flow_err,
            "flow_rel_err_by_param": by_param, "band": {"ll": band[0], "flows": band[1]},
            "ok": bool(math.isfinite(ll_err) and ll_err <= band[0] and flow_err <= band[1]),
            "seconds": time.perf_counter() - start}


def check_case(name: str, factors: list[int], args: argparse.Namespace,
               device: torch.device) -> dict[str, Any]:
    """Fused path vs the autograd path: relative errors of log p and of the flows, for fp32
    (recomputing every segment, and keeping them all) and bf16 products, with each of
    ``--products`` (keys ``<setting>_<products>`` for other than auto)."""
    ref, fast = build(factors, args.vocab, device), build(factors, args.vocab, device)
    x = torch.randint(0, args.vocab, (16, 64), device=device,
                      generator=torch.Generator(device).manual_seed(2))
    with FP32.products():
        ll_ref = accumulate_flows(ref, x)
    row: dict[str, Any] = {"check": name, "device": device_name(device)}

    def record(key: str, ll: torch.Tensor) -> None:
        row[f"{key}_ll_rel_err"] = float(((ll - ll_ref).abs() / ll_ref.abs()).max())
        row[f"{key}_flow_rel_err"] = max(
            float((flows(p) - flows(q)).abs().max() / flows(q).abs().max())
            for p, q in zip(fast.parameters(), ref.parameters(), strict=True))

    def clear() -> None:
        for p in fast.parameters():
            p.grad = None

    for products in args.products:
        tag = "" if products == "auto" else f"_{products}"
        for key, precision, keep_gb in [("fp32", "fp32", 0.0), ("fp32_kept", "fp32", 1.0),
                                        ("bf16", "bf16", 0.0)]:
            clear()
            try:
                record(key + tag, hmm_estep(fast, x, 5, precision, keep_gb=keep_gb,
                                            products=products))
            except Exception as err:  # e.g. a kernel that fails to compile: report, go on
                row[f"{key}{tag}_error"] = f"{type(err).__name__}: {str(err)[:200]}"
    if device.type == "cuda":  # the CUDA-graph replay (second call) equals the plain path
        try:
            run = fused_estep(fast, device, segment=5, precision="fp32", graphs=True,
                              products=args.products[0])
            clear()
            run(x)
            clear()
            record("fp32_graph", run(x))
        except Exception as err:
            row["fp32_graph_error"] = f"{type(err).__name__}: {str(err)[:200]}"
    return row


def ceilings(device: torch.device) -> list[dict[str, Any]]:
    """Batched GEMM TFLOP/s in the E-step's shapes, and device-to-device copy bandwidth."""
    rows = []
    for h, b, n in [(2**19, 1024, 128), (2**19, 512, 128), (2**18, 64, 128), (4096, 4096, 128),
                    (2**19, 1024, 512), (2**19, 512, 512)]:  # batch 512: the text8 recipe's
        for name, dtype in [("tf32", torch.float32), ("bf16", torch.bfloat16)]:
            w = torch.rand(h // b, b, b, device=device, dtype=dtype)
            y = torch.rand(h // b, b, n, device=device, dtype=dtype)
            with Precision(name).products():
                t = timed(lambda w=w, y=y: torch.bmm(w, y), device, 10)
            rows.append({"gemm": f"h={h} b={b} n={n}", "dtype": name,
                         "tflops": 2 * h * b * n / t / 1e12})
    a = torch.empty(2**30, dtype=torch.uint8, device=device)
    t = timed(lambda: a.clone(), device, 10)
    rows.append({"copy_tb_per_s": 2 * a.numel() / t / 1e12})
    return rows


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def markdown(rows: list[dict[str, Any]]) -> str:
    def num(r: dict[str, Any], key: str, fmt: str) -> str:
        return format(r[key], fmt) if r.get(key) is not None else "-"

    def check(r: dict[str, Any]) -> str:
        c = r.get("timed_check")
        return "-" if c is None else (f"{c['ll_rel_err']:.1e} / {c['flow_rel_err']:.1e} "
                                      f"{'ok' if c['ok'] else 'OUTSIDE BAND'}")

    out = ["| case | batch | precision | products | E-step tokens/s | TFLOP/s | peak GB | "
           "EM update tokens/s | update peak GB | lean tokens/s | lean peak GB | "
           "check log p / flows |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['case']} | {r['batch']} | {r['precision']} | {r['products']} | "
                       f"{r['error']} | | | | | | | {check(r)} |")
            continue
        out.append(f"| {r['case']} | {r['batch']} | {r['precision']} | {r['products']} | "
                   f"{num(r, 'estep_tokens_per_s', ',.0f')} | {num(r, 'estep_tflops', '.1f')} | "
                   f"{num(r, 'peak_memory_gb', '.1f')} | {num(r, 'update_tokens_per_s', ',.0f')} | "
                   f"{num(r, 'update_peak_memory_gb', '.1f')} | "
                   f"{num(r, 'lean_estep_tokens_per_s', ',.0f')} | "
                   f"{num(r, 'lean_peak_memory_gb', '.1f')} | {check(r)} |")
    return "\n".join(out)


# The reference implementation's E-step (tokens/s, peak GB) in TF32, measured by another
# session (../shared/REFERENCE.md: H100, and an H200 on 2026-11-30), by GPU and (factors,
# batch). Printed for orientation only, labelled as such: a like-for-like ratio comes from
# running the reference beside us in one run (python -m monarchpc.bench reference).
REFERENCE = {
    "h100": {((4096,), 128): (153_000, 1.3), ((16384,), 128): (35_200, 8.2),
             ((256, 256), 128): (61_400, 8.6), ((512, 512), 128): (15_200, 35.5),
             ((512, 1024), 128): (7_100, 74.5), ((64, 64, 64), 128): (13_000, 49.6)},
    "h200": {((4096,), 128): (179_548, 1.3), ((16384,), 128): (45_826, 8.2),
             ((256, 256), 128): (74_333, 10.6), ((512, 512), 128): (19_118, 35.5),
             ((512, 1024), 128): (9_018, 74.5), ((64, 64, 64), 128): (16_196, 55.7)}}


def readme_table(rows: list[dict[str, Any]], tag: str) -> str:
    """Our kept-segments and lean tokens/s (peak GB) beside the reference's TF32 numbers
    from another session's run (:data:`REFERENCE`, not measured here; the ratios mix that run
    with this one, and our precision with its TF32: ``bench reference`` measures both sides
    in one run)."""
    def label(r: dict[str, Any]) -> tuple[str, str]:
        f, h = r["factors"], r["hidden_size"]
        model = "dense HMM" if len(f) == 1 else f"Monarch-{len(f)}"
        if r["batch"] != 128:
            return f"{model}, batch {r['batch']}", f"2^{int(math.log2(h))}"
        if len(f) == 1:
            return model, str(h)
        shape = f"{f[0]}^{len(f)}" if len(f) > 2 and len(set(f)) == 1 else " x ".join(map(str, f))
        return model, f"2^{int(math.log2(h))} ({shape})"

    def cell(tokens: float | None, gb: float | None) -> str:
        return "" if tokens is None else f"{tokens:,.0f} ({gb:.1f})" if gb else f"{tokens:,.0f}"

    keep = rows[0].get("keep_gb", 8.0) if rows else 8.0
    kept = "keep auto" if keep == "auto" else f"keep {keep:g} GB"
    ours = rows[0]["precision"] if rows else "?"
    out = [f"| model | h | reference TF32, another session's run: tokens/s (GB) | ours {ours}, "
           f"{kept}: tokens/s (GB) | ours {ours} / its TF32 | lean: tokens/s (GB) | "
           f"lean / its TF32 |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            continue
        ref = REFERENCE.get(tag, {}).get((tuple(r["factors"]), r["batch"]), (None, None))
        keep, lean = r.get("estep_tokens_per_s"), r.get("lean_estep_tokens_per_s")
        speed = [f"{v / ref[0]:.1f}x" if v and ref[0] else "" for v in (keep, lean)]
        out.append(f"| {' | '.join(label(r))} | {cell(*ref)} | "
                   f"{cell(keep, r.get('peak_memory_gb'))} | {speed[0]} | "
                   f"{cell(lean, r.get('lean_peak_memory_gb'))} | {speed[1]} |")
    return "\n".join(out)


def keep_gb_arg(value: str) -> float | str:
    """A ``--keep-gb`` value: GB, or ``auto`` (as ``trainer.keep_gb``)."""
    return value if value == "auto" else float(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="small CPU-sized cases")
    parser.add_argument("--precision", default="bf16", choices=PRECISIONS)
    parser.add_argument("--segment", type=int, default=16)
    parser.add_argument("--keep-gb", type=keep_gb_arg, default=8.0,
                        help="memory for segments kept from the first pass (no recomputation); "
                             "auto: half the free GPU memory (the trainer's default)")
    parser.add_argument("--graphs", default="auto", type=lambda v: {"true": True,
                        "false": False}.get(v, v), help="CUDA graphs: auto | true | false")
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=27)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cases", default=None, help="comma-separated case indices to run")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the checks on small separate models (CHECK_CASES)")
    parser.add_argument("--check-rows", type=int, default=4,
                        help="rows of each timed case checked against autograd in the same run "
                             "(its batch filled with copies of them; 0: no check)")
    parser.add_argument("--ceilings", action="store_true", help="measure GEMM/copy ceilings")
    parser.add_argument("--lean", action="store_true",
                        help="also time each case with keep_gb = 0 (least memory)")
    parser.add_argument("--products", default="auto",
                        help="Monarch products, comma-separated: auto | torch | triton; each "
                             "case runs once per choice")
    add_output_options(parser)  # name: bench_<gpu>_<precision>.jsonl
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    args.products = args.products.split(",")
    for products in args.products:  # a bad choice fails here, before any timing
        try:
            monarch_products(products, device, [2, 2, 2])
        except (ValueError, RuntimeError) as err:
            parser.error(str(err))
    if args.tiny:
        args.length, args.reps = min(args.length, 32), 1
    cases = TINY_CASES if args.tiny else GPU_CASES
    if args.cases:
        cases = [cases[int(i)] for i in args.cases.split(",")]
    emit = JsonLines(destination(args, f"bench_{device_tag(device)}_{args.precision}.jsonl"))

    if not args.no_check:
        for name, factors in (CHECK_CASES[:1] if args.tiny else CHECK_CASES):
            emit(check_case(name, factors if not args.tiny else [32], args, device))
    if args.ceilings and device.type == "cuda":
        for row in ceilings(device):
            emit(row)
    rows = []
    for name, factors, batch in cases:
        for products in args.products:
            row = bench_case(name, factors, batch, args, device, products)
            rows.append(row)
            emit(row)
    print(markdown(rows))
    print(readme_table([r for r in rows if r["products_setting"] == args.products[0]],
                       device_tag(device)))
    emit.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
