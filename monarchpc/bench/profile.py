"""Profile the training E-step of one benchmark case: where its time goes, kernel by kernel.

    python -m monarchpc.bench profile --structure hmm --case "monarch3 2^18" --precision bf16
    python -m monarchpc.bench profile --structure hmm --case "monarch4 2^16" --hidden 4096  # 8^4
    python -m monarchpc.bench profile --structure hclt --case dense-512-512 --precision tf32
    python -m monarchpc.bench profile --structure hmm --case "dense 64" --length 32   # a CPU

Builds the model and inputs of a case of bench/hmm.py (HMM: a name or an index of its
GPU_CASES, or a name of TINY_CASES) or bench/hclt.py (HCLT: block-h-batch or an index
of its GPU_CASES) with their builders, runs ``--warmup`` E-steps, times ``--steps`` more,
then profiles ``--steps`` more with torch.profiler (CUDA graphs off by default: they hide
kernels). Appends one JSON line to ``--out`` (default outputs/profile/<structure>_<case>_h<h>
_b<batch>_<precision>.jsonl): the settings, wall and total self time per step (device
kernels on a GPU, CPU ops otherwise), the top kernels/ops (calls, ms and share per step),
the time of each family (FAMILIES below; fix its patterns after reading a real trace) and
peak memory on a GPU. Prints a table; ``--trace`` writes a Chrome trace, and
``--memory-snapshot`` a CUDA memory snapshot of one more E-step.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import time
from collections import defaultdict
from typing import Any

import torch
from torch.autograd import DeviceType

from monarchpc.bench import hclt as bench_hclt
from monarchpc.bench import hmm as bench
from monarchpc.bench.records import add_output_options, destination
from monarchpc.circuits.blocks import factorize
from monarchpc.kernels.hmm import element_ops
from monarchpc.kernels.monarch import monarch_products
from monarchpc.learning.hclt_estep import fused_hclt_estep
from monarchpc.learning.hmm_estep import fused_estep
from monarchpc.learning.precision import PRECISIONS

# A kernel (GPU) or op (CPU) goes to the first family whose pattern matches its own name, else
# the name of the op that launched it, else that op's parents (innermost first); else "other".
FAMILIES = [
    ("backward steps (gradient + transposed product)", r"_backward_kernel"),
    ("weight gradients", r"_grad_kernel|_grad_flows_kernel|aten::baddbmm"),
    ("monarch layer products",
     r"_layer_kernel|_layer_rows_kernel|aten::(bmm|mm|mv|matmul|addmm)\b"),
    ("element-wise (emit/post/normalize)",
     r"_emit_kernel|_post_kernel|_product_kernel|_posterior_kernel|_column_sum_kernel"),
    ("copies", r"aten::(copy_|contiguous|cat|clone|_to_copy)\b|Memcpy|CatArrayBatchedCopy"),
]
OTHER = "other"


@functools.cache
def family(names: tuple[str, ...]) -> str:
    """The family of a kernel/op given its name and its launching ops, innermost first."""
    for name in names:
        for fam, pattern in FAMILIES:
            if re.search(pattern, name):
                return fam
    return OTHER


@functools.cache
def short(name: str, width: int = 90) -> str:
    """A kernel name without ``void`` and its argument list, at most ``width`` characters."""
    name, depth = re.sub(r"^void ", "", name), 0
    for i, ch in enumerate(name):
        depth += {"<": 1, ">": -1}.get(ch, 0)
        if ch == "(" and depth == 0 and i > 0:
            name = name[:i]
            break
    return name if len(name) <= width else name[:width - 3] + "..."


def parents(evt: Any) -> tuple[str, ...]:
    """Names of ``evt`` and its enclosing CPU ops, innermost first."""
    out = []
    while evt is not None:
        out.append(evt.name)
        evt = evt.cpu_parent
    return tuple(out)


def breakdown(prof: Any, steps: int, on_gpu: bool, top: int) -> dict[str, Any]:
    """Self time per step of every device event (GPU) or CPU op (CPU), by name and family."""
    events = prof.events()
    rows: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])  # calls, us
    fams: dict[str, float] = {f: 0.0 for f, _ in FAMILIES} | {OTHER: 0.0}
    kinds: dict[tuple[str, str], str] = {}
    if on_gpu:  # kernels, memcpy, memset; owner: the CPU op whose launch they correlate with
        def link(e: Any) -> int:
            return getattr(e, "linked_correlation_id", 0)  # (older torch: no owners)

        ops = {e.id: e for e in events
               if e.device_type == DeviceType.CPU and not e.is_async and link(e) == 0}
        items = [((e.name, *parents(ops.get(link(e)))), e.device_time_total) for e in events
                 if e.device_type == DeviceType.CUDA
                 and not getattr(e, "is_user_annotation", False)]
    else:
        items = [(parents(e), e.self_cpu_time_total) for e in events
                 if e.device_type == DeviceType.CPU and not e.is_async]
    for names, us in items:
        key = (short(names[0]), names[1] if len(names) > 1 else "")
        rows[key][0] += 1
        rows[key][1] += us
        kinds[key] = family(names)
        fams[kinds[key]] += us
    total = sum(fams.values())
    ms, share = (lambda us: round(us / steps / 1e3, 4)), (lambda us: round(us / (total or 1.0), 4))
    ranked = sorted(rows.items(), key=lambda kv: -kv[1][1])[:top]
    return {"total_self_ms_per_step": round(total / steps / 1e3, 4),
            "families": [{"family": f, "ms_per_step": ms(us), "share": share(us)}
                         for f, us in fams.items()],
            "top": [{"name": name, "op": op, "family": kinds[name, op],
                     "calls_per_step": calls / steps, "ms_per_step": ms(us), "share": share(us)}
                    for (name, op), (calls, us) in ranked]}


def hmm_case(args: argparse.Namespace, device: torch.device) -> tuple[Any, torch.Tensor, dict]:
    """bench.py's model and input for ``--case``, and the E-step with these settings."""
    cases = {name: (name, f, n) for name, f, n in bench.TINY_CASES + bench.GPU_CASES[::-1]}
    case = bench.GPU_CASES[int(args.case)] if args.case.isdigit() else cases.get(args.case)
    if case is None:
        raise SystemExit(f"unknown HMM case {args.case!r}; bench.py has {sorted(cases)}")
    name, factors, batch = case
    factors = factorize(args.hidden, len(factors)) if args.hidden else factors
    batch = args.batch or batch
    hmm = bench.build(factors, args.vocab, device)
    x = torch.randint(0, args.vocab, (batch, args.length), device=device,
                      generator=torch.Generator(device).manual_seed(1))
    step = fused_estep(hmm, device, args.segment, args.precision, args.keep_gb, args.graphs,
                       args.products)
    info = {"case": name, "structure": "hmm", "factors": factors, "hidden_size": hmm.hidden_size,
            "batch": batch, "length": args.length, "vocab": args.vocab,
            "segment": args.segment, "keep_gb": args.keep_gb, "tokens_per_step": x.numel(),
            "kernels": element_ops("auto", device, args.vocab).name,
            "products": monarch_products(args.products, device, factors).name}
    return step, x, info


def hclt_case(args: argparse.Namespace, device: torch.device) -> tuple[Any, torch.Tensor, dict]:
    """bench_hclt.py's model (Chow-Liu tree of its patches) and batch for ``--case``."""
    try:
        block, h, batch = (bench_hclt.GPU_CASES[int(args.case)] if args.case.isdigit() else
                           args.case.split("-"))
        h, batch = args.hidden or int(h), args.batch or int(batch)
    except (ValueError, IndexError):
        raise SystemExit(f"HCLT case {args.case!r}: give block-h-batch (e.g. dense-512-512) "
                         f"or an index of bench_hclt.GPU_CASES") from None
    data, parent = bench_hclt.patches_and_tree(device.type == "cpu", device)  # CPU: --tiny's
    model = bench_hclt.build(parent, block, h, device, args.monarch_layers)
    x = data[torch.randint(0, len(data), (batch,), generator=torch.Generator().manual_seed(1))]
    step = fused_hclt_estep(model, device, args.precision, args.graphs)
    info = {"case": f"{block}-{h}-{batch}", "structure": "hclt", "block": block,
            "hidden_size": h, "factors": list(model.blocks.spec.factors), "batch": batch,
            "num_vars": len(parent), "monarch_layers": args.monarch_layers,
            "samples_per_step": batch}
    return step, x.to(device), info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` (default: the command line), profile, write; returns the record."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--structure", default="hmm", choices=["hmm", "hclt"])
    parser.add_argument("--case", required=True,
                        help="HMM: bench.py case name or index; HCLT: block-h-batch or index")
    parser.add_argument("--precision", default="bf16", choices=PRECISIONS)
    parser.add_argument("--batch", type=int, default=None, help="instead of the case's batch")
    parser.add_argument("--hidden", type=int, default=None,
                        help="instead of the case's hidden size (same number of factors)")
    parser.add_argument("--length", type=int, default=256, help="HMM sequence length")
    parser.add_argument("--vocab", type=int, default=27, help="HMM vocabulary")
    parser.add_argument("--segment", type=int, default=16, help="HMM segment")
    parser.add_argument("--keep-gb", type=bench.keep_gb_arg, default=8.0,
                        help="HMM kept segments (GB, or auto)")
    parser.add_argument("--products", default="auto", help="HMM products: auto|torch|triton")
    parser.add_argument("--monarch-layers", type=int, default=3, help="HCLT Monarch layers")
    parser.add_argument("--graphs", default=False, type=lambda v: {"true": True,
                        "false": False}.get(v, v), help="CUDA graphs: false | true | auto")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed, then profiled E-steps")
    parser.add_argument("--top", type=int, default=15)
    add_output_options(parser)  # name: profile_<structure>_<case>_h<h>_b<batch>_<precision>
    parser.add_argument("--trace", default=None, help="Chrome trace file (optional)")
    parser.add_argument("--memory-snapshot", default=None,
                        help="GPU: a CUDA memory snapshot of one more E-step (pickle, for "
                             "https://pytorch.org/memory_viz)")
    args = parser.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if args.device == "auto" else args.device)
    on_gpu = device.type == "cuda"
    step, x, info = (hmm_case if args.structure == "hmm" else hclt_case)(args, device)

    def run(n: int) -> float:
        """Seconds per E-step over ``n`` E-steps."""
        bench.sync(device)
        start = time.perf_counter()
        for _ in range(n):
            step(x)
        bench.sync(device)
        return (time.perf_counter() - start) / max(n, 1)

    run(args.warmup)
    plain = run(args.steps)
    bench.reset_memory(device)
    resident = torch.cuda.memory_allocated(device) / 1e9 if on_gpu else None
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
    with torch.profiler.profile(activities=activities) as prof:
        wall = run(args.steps)
    unit = "tokens" if args.structure == "hmm" else "samples"
    record = {**info, "device": bench.device_name(device), "precision": args.precision,
              "graphs": args.graphs, "warmup": args.warmup, "steps": args.steps,
              "time_basis": "self CUDA time" if on_gpu else "self CPU time",
              "step_ms": round(plain * 1e3, 4), f"{unit}_per_s": info[f"{unit}_per_step"] / plain,
              "profiled_wall_ms_per_step": round(wall * 1e3, 4),
              **breakdown(prof, args.steps, on_gpu, args.top),
              "peak_memory_gb": bench.peak_gb(device), "resident_memory_gb": resident,
              "memory_snapshot": args.memory_snapshot if on_gpu else None}
    busy = record["total_self_ms_per_step"]  # of the unprofiled and the profiled step
    record |= {"busy_share_of_step": round(busy / record["step_ms"], 4),
               "busy_share_of_profiled_wall": round(busy / (wall * 1e3), 4)}
    if args.trace:
        prof.export_chrome_trace(args.trace)
    if args.memory_snapshot and on_gpu:  # every allocation of one E-step, with its stack
        torch.cuda.memory._record_memory_history(max_entries=500_000)
        run(1)
        torch.cuda.memory._dump_snapshot(args.memory_snapshot)
        torch.cuda.memory._record_memory_history(enabled=None)
    slug = re.sub(r"[^a-z0-9]+", "_", record["case"].lower()).strip("_")
    out = destination(args, f"profile_{args.structure}_{slug}_h{record['hidden_size']}_b"
                            f"{record['batch']}_{args.precision}.jsonl")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
    print(json.dumps(record))
    r = record
    print(f"\n{r['case']} ({args.structure}, h={r['hidden_size']}, batch {r['batch']}, "
          f"{args.precision}) on {r['device']}: {r['step_ms']:.2f} ms a step "
          f"({r[unit + '_per_s']:,.0f} {unit}/s); profiled: {r['profiled_wall_ms_per_step']:.2f} "
          f"ms wall, {r['total_self_ms_per_step']:.2f} ms {r['time_basis']}"
          + (f"; peak {r['peak_memory_gb']:.2f} GB" if on_gpu else ""))
    print(f"{'ms/step':>9} {'share':>6} {'calls':>7}  name [op] (family)")
    for r in record["top"]:
        op = f" [{r['op']}]" if r["op"] else ""
        print(f"{r['ms_per_step']:9.3f} {r['share']:6.1%} {r['calls_per_step']:7.1f}  "
              f"{r['name']}{op} ({r['family']})")
    for r in record["families"]:
        print(f"{r['ms_per_step']:9.3f} {r['share']:6.1%} {'':7}  = {r['family']}")
    return record


if __name__ == "__main__":
    main()
