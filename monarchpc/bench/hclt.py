"""Benchmark the HCLT E-step (forward + flows) of monarchpc beside PyJuice.

    python -m monarchpc.bench hclt               # the issue's cases on a GPU (split by --cases)
    python -m monarchpc.bench hclt --tiny        # small sizes on the CPU (CI smoke test)
    python -m monarchpc.bench hclt --cases dense-256-512,monarch-1024-2048 --precisions bf16

An HCLT over 192 variables (8 x 8 patches x 3 channels) with 256 values each and one
categorical leaf per variable, on the Chow-Liu tree of synthetic smooth image patches.
First the fused E-step is checked against the autograd path on this device (relative
errors of log p and of the flows, fp32 and bf16, and of a CUDA-graph replay; dense h = 64,
Monarch h = 64 and 2304, whose 48 x 48 blocks take the fused backward step). Then, per
case (block, hidden size h, batch), one E-step's samples per second (median) and peak
memory for: monarchpc's fused engine (``--precisions``, CUDA graphs), its autograd engine
(TF32, h <= ``--autograd-max``) and, when ``import pyjuice`` works on a GPU, PyJuice's
compiled HCLT (forward + backward with parameter flows, TF32; dense blocks only) built two
ways: on our Chow-Liu tree (``construction`` our-tree) and by ``pyjuice.structures.HCLT``
from the same patches (pyjuice-hclt: what a PyJuice user writes, its own tree), run as
PyJuice runs by default (no CUDA graphs) and, for its own HCLT, with its CUDA graphs. Our
fused engine runs with CUDA graphs (``fused``: what a user gets, trainer.cuda_graphs=auto)
and without (``fused-nograph``), for every batch and precision (``--nograph-rows``).
Without PyJuice the PyJuice rows say why (not installed, or no GPU).
One JSON line per row to stdout and a file (outputs/bench/bench_hclt_<device>.jsonl,
rewritten; ``--record``: docs/results/device/), then Markdown tables. A
variant that fails becomes a row with ``error``; variants past ``--budget-s`` are skipped.
``--floor`` also times Monarch cases with their sum blocks skipped (engine
``fused-no-blocks``): dense's time over that bounds what any faster Monarch layer could gain.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from monarchpc.bench.hmm import device_name, peak_gb, reset_memory, timed
from monarchpc.bench.records import JsonLines, add_output_options, destination, device_tag
from monarchpc.circuits.blocks import BlockSpec, SumBlocks
from monarchpc.circuits.chow_liu import chow_liu_tree
from monarchpc.circuits.hclt import HCLT, MISSING
from monarchpc.learning.cuda_graphs import CapturedEStep
from monarchpc.learning.em import accumulate_flows, flows
from monarchpc.learning.hclt_estep import fused_hclt_estep, hclt_estep
from monarchpc.learning.hidden_major import HiddenMajor
from monarchpc.learning.precision import FP32, PRECISIONS, Precision

SIDE, CHANNELS, VOCAB = 8, 3, 256
GPU_CASES = [("dense", h, n) for h in (256, 512, 1024) for n in (512, 2048)] + [
    ("monarch", h, n) for h in (1024, 4096) for n in (512, 2048)] + [
    ("dense", 4096, 512), ("dense", 4096, 2048)]
TINY_CASES = [("dense", 8, 16), ("monarch", 16, 16)]


def patches(n: int, seed: int) -> torch.Tensor:
    """n synthetic smooth 8 x 8 RGB patches as rows (n, 192) of values 0..255, variables
    ordered (row, column, channel): bilinear blow-ups of random 3 x 3 fields plus noise."""
    g = torch.Generator().manual_seed(seed)
    shade = torch.rand(n, 1, 3, 3, generator=g)
    field = 0.7 * shade + 0.3 * torch.rand(n, CHANNELS, 3, 3, generator=g)
    image = F.interpolate(field, size=(SIDE, SIDE), mode="bilinear", align_corners=True)
    image = image + 0.03 * torch.randn(image.shape, generator=g)
    values = (image.clamp(0, 1) * (VOCAB - 1)).round().long()
    return values.permute(0, 2, 3, 1).reshape(n, SIDE * SIDE * CHANNELS)


def patches_and_tree(tiny: bool, device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
    """The benchmark's patches (CPU) and their Chow-Liu tree (parent array); ``tiny``: the
    small CPU-sized set."""
    data = patches(1024 if tiny else 8192, seed=0)
    return data, chow_liu_tree(data.to(device), [VOCAB] * data.shape[1],
                               num_bins=8 if tiny else 32)


def build(parent: np.ndarray, block: str, h: int, device: torch.device,
          layers: int = 3) -> HCLT:
    """An HCLT with random weights made on ``device``, per-variable leaves."""
    torch.manual_seed(0)
    with device:
        spec = BlockSpec.from_config({"structure": "hclt", "block": block, "hidden_size": h,
                                      "monarch_layers": layers})
        blocks = SumBlocks(spec, len(parent) - 1, perturbation=8.0)
        return HCLT(parent, blocks, [VOCAB] * len(parent), None, perturbation=8.0).to(device)


def clear(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def check(parent: np.ndarray, block: str, h: int, data: torch.Tensor,
          device: torch.device) -> dict[str, Any]:
    """Fused E-step vs autograd (fp32 products, no TF32): relative errors of log p and of
    the flows (largest flow error of a parameter over its largest flow)."""
    ref, fast = build(parent, block, h, device), build(parent, block, h, device)
    x = data[:64].clone().to(device)
    x[torch.rand(x.shape, device=device) < 0.1] = MISSING
    with FP32.products():
        ll_ref = accumulate_flows(ref, x)
    row: dict[str, Any] = {"check": f"{block} {h}", "device": device_name(device)}

    def record(key: str, ll: torch.Tensor) -> None:
        row[f"{key}_ll_rel_err"] = float(((ll - ll_ref).abs() / ll_ref.abs()).max())
        row[f"{key}_flow_rel_err"] = max(
            float((flows(p) - flows(q)).abs().max() / flows(q).abs().max())
            for p, q in zip(fast.parameters(), ref.parameters(), strict=True))

    for precision in ("fp32", "bf16"):
        clear(fast)
        record(precision, hclt_estep(fast, x, precision))
    if device.type == "cuda":  # the replay (second call) equals the plain path
        run = fused_hclt_estep(fast, device, "fp32", graphs=True)
        assert isinstance(run, CapturedEStep)
        run(x)
        clear(fast)
        record("fp32_graph", run(x))
    return row


def pyjuice_madds(parent: np.ndarray, h: int) -> int:
    """Multiply-adds per sample of PyJuice's HCLT: an h x h sum per inner non-root node
    (its leaves' variables feed their parent's product directly) and the root's h-way sum."""
    inner = np.bincount(parent[parent >= 0], minlength=len(parent)) > 0
    return int((inner.sum() - 1) * h * h + h)


# PyJuice's circuits, two constructions (version 2.6.3 API):
#   our-tree:     its hidden region graph on our Chow-Liu tree (our root): the same tree as ours
#   pyjuice-hclt: pyjuice.structures.HCLT(data, num_latents=h, ...), what a PyJuice user
#                 writes: its own tree (mutual information of Gaussian-binned values, 32 bins)
#                 rooted at a center of the tree, from the same patches
# and two ways of running them: PyJuice's default (no CUDA graphs: pc(x) then pc.backward)
# and its opt-in graphs (record_cudagraph=True on both passes).
PYJUICE_VARIANTS = [("our-tree", "pyjuice"), ("pyjuice-hclt", "pyjuice"),
                    ("pyjuice-hclt", "pyjuice-graphs")]


def pyjuice_status(device: torch.device) -> str | None:
    """None when PyJuice can run here, else why not (the PyJuice rows say it)."""
    try:
        import pyjuice  # noqa: F401
    except ImportError:
        return "pyjuice not installed"
    if device.type != "cuda":
        return "pyjuice needs a CUDA GPU (its compile asks torch.cuda for the device)"
    return None


def pyjuice_nodes(construction: str, parent: np.ndarray, data: torch.Tensor, h: int,
                  device: torch.device) -> Any:
    """PyJuice's HCLT region graph (not compiled) of ``construction`` (our-tree or
    pyjuice-hclt, see PYJUICE_VARIANTS), its parameters initialized by PyJuice."""
    import networkx as nx
    import pyjuice.nodes.distributions as juice_dists
    from pyjuice.structures import HCLT as PyJuiceHCLT
    from pyjuice.structures.compilation import BayesianTreeToHiddenRegionGraph

    if construction == "pyjuice-hclt":  # the README's call, on the same patches
        ns = PyJuiceHCLT(data.float().to(device), num_latents=h,
                         input_dist=juice_dists.Categorical(num_cats=VOCAB))
    elif construction == "our-tree":
        tree = nx.Graph()
        tree.add_nodes_from(range(len(parent)))
        tree.add_edges_from((v, int(p)) for v, p in enumerate(parent) if p >= 0)
        root = int(np.flatnonzero(parent < 0)[0])
        ns = BayesianTreeToHiddenRegionGraph(tree, root, h, juice_dists.Categorical,
                                             {"num_cats": VOCAB})
    else:
        raise ValueError(f"unknown PyJuice construction {construction!r}")
    ns.init_parameters()
    return ns


def pyjuice_tree(data: torch.Tensor, device: torch.device) -> np.ndarray:
    """The parent array of the tree ``pyjuice.structures.HCLT`` builds from ``data``, with
    its own functions and defaults (for the record: depth, multiply-adds)."""
    import networkx as nx
    from pyjuice.structures.hclt import chow_liu_tree as pyjuice_clt
    from pyjuice.structures.hclt import mutual_information_chunked

    mi = mutual_information_chunked(data.float().to(device), data.float().to(device), 32,
                                    0.5 / 32, chunk_size=64).detach().cpu().numpy()
    tree = pyjuice_clt(mi)
    root = nx.center(tree)[0]
    parent = np.full(data.shape[1], -1, dtype=np.int64)
    for child, par in nx.bfs_predecessors(tree, root):
        parent[child] = par
    return parent


def pyjuice_edges(ns: Any) -> int:
    """Sum edges of a PyJuice region graph: its multiply-adds per sample."""
    return int(sum(n.num_edges for n in ns if n.is_sum()))


def pyjuice_circuit(construction: str, parent: np.ndarray, data: torch.Tensor, h: int,
                    device: torch.device) -> tuple[Any, int]:
    """PyJuice's compiled circuit of ``construction`` on ``device``, and its multiply-adds
    per sample."""
    import pyjuice as juice

    ns = pyjuice_nodes(construction, parent, data, h, device)
    pc = juice.compile(ns, verbose=False)
    pc.to(device)
    return pc, pyjuice_edges(ns)


def tree_levels(parent: np.ndarray) -> int:
    """Levels of a tree given as a parent array (a root alone: 1)."""
    depth = np.zeros(len(parent), dtype=np.int64)
    for v in range(len(parent)):
        d, u = 0, v
        while parent[u] >= 0:
            u, d = int(parent[u]), d + 1
        depth[v] = d
    return int(depth.max()) + 1


def measure(step: Any, batch: int, device: torch.device, reps: int) -> dict[str, Any]:
    """Median E-step time of ``step()`` (after a warm-up), samples/s and peak memory."""
    t = timed(step, device, reps)
    return {"estep_s": t, "samples_per_s": batch / t, "peak_memory_gb": peak_gb(device)}


@contextlib.contextmanager
def blocks_skipped() -> Iterator[None]:
    """Every sum-block layer product and backward step returns at once (its output left as
    it was): the E-step keeps only the work that does not depend on the blocks (leaves,
    products, posteriors), which dense and Monarch blocks share. For timing only."""
    apply, backward = HiddenMajor.apply, HiddenMajor.backward
    HiddenMajor.apply = lambda self, l, state, transpose=False, out=None: (  # type: ignore
        state if out is None else out)
    HiddenMajor.backward = lambda self, l, grad, a, x, out: out  # type: ignore
    try:
        yield
    finally:
        HiddenMajor.apply, HiddenMajor.backward = apply, backward


def bench_ours(model: HCLT, x: torch.Tensor, engine: str, precision: str, reps: int,
               device: torch.device) -> dict[str, Any]:
    """One E-step of monarchpc's ``engine`` on rows ``x``: fused (CUDA graphs on a GPU),
    fused-nograph, fused-no-blocks (fused with the sum blocks skipped, :func:`blocks_skipped`;
    its log-likelihoods are meaningless) or autograd."""
    if engine == "fused-no-blocks":
        with blocks_skipped():
            return bench_ours(model, x, "fused", precision, reps, device)
    clear(model)
    extra: dict[str, Any] = {}
    if engine.startswith("fused"):
        step = fused_hclt_estep(model, device, precision, "auto" if engine == "fused" else False)
        extra["cuda_graph"] = isinstance(step, CapturedEStep)
    else:
        def step(x: torch.Tensor) -> torch.Tensor:
            with Precision(precision).products():
                return accumulate_flows(model, x)
    reset_memory(device)
    result = measure(lambda: step(x), len(x), device, reps)
    clear(model)
    return result | extra


def bench_pyjuice(pc: Any, x: torch.Tensor, reps: int, device: torch.device,
                  graphs: bool = False) -> dict[str, Any]:
    """One forward pass plus backward pass with parameter flows of PyJuice's circuit (its
    fp32 products in TF32); ``graphs``: its CUDA graphs, recorded in the untimed first step."""
    def step() -> None:
        pc(x, record_cudagraph=graphs)
        pc.backward(x, flows_memory=1.0, record_cudagraph=graphs)

    with Precision("tf32").products():
        step()  # compiles its kernels for this batch
        reset_memory(device)
        return measure(step, len(x), device, reps)


def run_variant(row: dict[str, Any], fn: Any) -> dict[str, Any]:
    """``row`` updated with ``fn()``'s measurements, or with the error it raised."""
    try:
        row |= fn()
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
    except Exception as err:  # one failing variant must not lose the others
        row["error"] = f"{type(err).__name__}: {err}"[:300]
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    """A table of all rows (ours over each PyJuice construction where it ran, PyJuice's
    default run, no graphs), what each side's user gets by default, and, per (h, batch,
    precision), Monarch-HCLT's speed-up over dense against half their multiply-add ratio."""
    def key(r: dict[str, Any], **kw: Any) -> tuple:
        r = r | kw
        return (r["block"], r["hidden_size"], r["batch"], r["peer"], r.get("construction"),
                r["engine"], r["precision"])

    speed = {key(r): r["samples_per_s"] for r in rows if "samples_per_s" in r}

    def peer(r: dict[str, Any], construction: str) -> float | None:
        return speed.get(key(r, peer="pyjuice", construction=construction, engine="pyjuice",
                             precision="tf32"))

    out = ["| block | h | batch | peer | construction | engine | precision | samples/s | "
           "peak GB | x PyJuice, our tree | x PyJuice HCLT |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ours = r.get("samples_per_s")
        peak = r.get("peak_memory_gb")
        cells = (f"{ours:,.0f} | {'-' if peak is None else format(peak, '.2f')}" if ours else
                 f"{r.get('error') or r.get('skipped')} | -")
        ratios = [f"{ours / p:.2f}" if ours and p and r["peer"] != "pyjuice" else "-"
                  for p in (peer(r, "our-tree"), peer(r, "pyjuice-hclt"))]
        out.append(f"| {r['block']} | {r['hidden_size']} | {r['batch']} | {r['peer']} | "
                   f"{r.get('construction', '-')} | {r['engine']} | {r['precision']} | {cells} | "
                   f"{' | '.join(ratios)} |")
    # what a user of each gets by default: ours fused with CUDA graphs (trainer.cuda_graphs
    # auto), PyJuice's own HCLT run without graphs (recording them is opt-in)
    user = ["", "What a user gets by default (TF32, samples/s): monarchpc's fused E-step replays "
            "CUDA graphs (trainer.cuda_graphs=auto); PyJuice records none unless asked "
            "(record_cudagraph=True).", "",
            "| h | batch | monarchpc default (graphs) | monarchpc without graphs | PyJuice HCLT "
            "default | PyJuice HCLT, its graphs | PyJuice on our tree | default / PyJuice "
            "HCLT default | no graphs / PyJuice HCLT default |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    shown = 0
    for r in rows:
        if r["block"] != "dense" or r["peer"] != "monarchpc" or r["engine"] != "fused" \
                or r["precision"] != "tf32":
            continue
        vals = [speed.get(key(r, engine="fused")), speed.get(key(r, engine="fused-nograph")),
                peer(r, "pyjuice-hclt"),
                speed.get(key(r, peer="pyjuice", construction="pyjuice-hclt",
                              engine="pyjuice-graphs")),
                peer(r, "our-tree")]
        cells = [f"{v:,.0f}" if v else "-" for v in vals]
        cells += [f"{a / vals[2]:.2f}x" if a and vals[2] else "-" for a in vals[:2]]
        user.append(f"| {r['hidden_size']} | {r['batch']} | {' | '.join(cells)} |")
        shown += 1
    if shown:
        out += user
    out += ["", "| h | batch | engine | precision | Monarch / dense samples/s | "
            "half the madds ratio |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["block"] != "monarch" or "samples_per_s" not in r or r["engine"] == "autograd":
            continue
        engine = "fused" if r["engine"] == "fused-no-blocks" else r["engine"]
        dense = [d for d in rows if key(d, block="monarch", engine=engine) == key(r, engine=engine)
                 and d["block"] == "dense" and "samples_per_s" in d]
        if dense:
            out.append(f"| {r['hidden_size']} | {r['batch']} | {r['engine']} | {r['precision']} | "
                       f"{r['samples_per_s'] / dense[0]['samples_per_s']:.1f} | "
                       f"{dense[0]['madds_per_sample'] / r['madds_per_sample'] / 2:.1f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="small CPU-sized cases")
    parser.add_argument("--cases", default=None,
                        help="comma-separated block-h-batch, e.g. dense-256-512,monarch-1024-512")
    parser.add_argument("--precisions", default="tf32,bf16",
                        help="fused-engine precisions (comma-separated)")
    parser.add_argument("--monarch-layers", type=int, default=3)
    parser.add_argument("--autograd-max", type=int, default=1024,
                        help="largest h timed with the autograd engine")
    parser.add_argument("--no-pyjuice", action="store_true", help="no PyJuice rows at all")
    parser.add_argument("--pyjuice", default=",".join(f"{c}:{e}" for c, e in PYJUICE_VARIANTS),
                        help="PyJuice rows, construction:engine comma-separated (constructions "
                             "our-tree, pyjuice-hclt; engines pyjuice, pyjuice-graphs)")
    parser.add_argument("--no-graphs", action="store_true",
                        help="fused engine without CUDA graphs only")
    parser.add_argument("--nograph-rows", choices=("all", "first", "none"), default="all",
                        help="on a GPU, also time the fused engine without CUDA graphs: for every "
                             "batch and precision (all), the first of each (first), or never")
    parser.add_argument("--floor", action="store_true",
                        help="also time Monarch cases with their sum blocks skipped: the most "
                             "Monarch-HCLT can gain over dense is dense's time over that")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--budget-s", type=float, default=270.0,
                        help="skip the variants that would start after this many seconds")
    add_output_options(parser)  # name: bench_hclt_<gpu>.jsonl
    args = parser.parse_args(argv)
    begin = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    cases = TINY_CASES if args.tiny else GPU_CASES
    if args.cases:
        cases = [(b, int(h), int(n)) for b, h, n in (c.split("-") for c in args.cases.split(","))]
    precisions = ["fp32"] if args.tiny else args.precisions.split(",")
    if any(p not in PRECISIONS for p in precisions):
        parser.error(f"--precisions must be among {', '.join(PRECISIONS)}")
    pyjuice_variants = [] if args.no_pyjuice else [
        tuple(v.split(":")) for v in args.pyjuice.split(",") if v]
    if any(v not in PYJUICE_VARIANTS for v in pyjuice_variants):
        parser.error(f"--pyjuice: each of {', '.join(f'{c}:{e}' for c, e in PYJUICE_VARIANTS)}")
    reps = 1 if args.tiny else args.reps
    name = device_name(device)
    record = JsonLines(destination(args, f"bench_hclt_{device_tag(device)}.jsonl"))
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any], keep: bool = True) -> None:
        record(row)
        if keep:
            rows.append(row)

    data, parent = patches_and_tree(args.tiny, device)
    depth = len(HCLT(parent, SumBlocks(BlockSpec.dense(2), len(parent) - 1),
                     [2] * len(parent)).levels)
    emit({"tree": "chow-liu of synthetic patches", "num_vars": len(parent), "levels": depth,
          "max_children": int(np.bincount(parent[parent >= 0]).max())}, keep=False)
    missing = pyjuice_status(device) if pyjuice_variants else None
    if pyjuice_variants and missing is None and any(c == "pyjuice-hclt"
                                                    for c, _ in pyjuice_variants):
        theirs = run_variant({}, lambda: {"parent": pyjuice_tree(data, device)})
        if "parent" in theirs:
            p = theirs["parent"]
            emit({"tree": "pyjuice.structures.HCLT's (its mutual information, rooted at a "
                          "center), same patches", "num_vars": len(p), "levels": tree_levels(p),
                  "max_children": int(np.bincount(p[p >= 0]).max())}, keep=False)
    checks = [("dense", 8), ("monarch", 16)] if args.tiny else [
        ("dense", 64), ("monarch", 64), ("monarch", 2304)]  # 48 x 48: the fused backward step
    for block, h in checks:
        emit(run_variant({"check": f"{block} {h}"}, lambda b=block, h=h: check(
            parent, b, h, data, device)), keep=False)

    def over_budget() -> bool:
        return time.perf_counter() - begin > args.budget_s

    groups: dict[tuple[str, int], list[int]] = {}
    for block, h, batch in cases:
        groups.setdefault((block, h), []).append(batch)
    gen = torch.Generator().manual_seed(1)
    for (block, h), batches in groups.items():
        base = {"structure": "hclt", "block": block, "hidden_size": h, "num_vars": len(parent),
                "vocab": VOCAB, "leaves": "per-variable", "device": name}
        inputs = {n: data[torch.randint(0, len(data), (n,), generator=gen)].to(device)
                  for n in batches}
        # monarchpc: one model per (block, h), every batch and engine
        model = run_variant({}, lambda b=block, h=h: {"model": build(
            parent, b, h, device, args.monarch_layers)})
        model = model.get("model")
        info: dict[str, Any] = {"peer": "monarchpc"}
        if model is not None:
            info["madds_per_sample"] = (len(parent) - 1) * model.blocks.madds() + h
            if block == "monarch":
                info |= {"factors": list(model.blocks.spec.factors),
                         "monarch_layers": len(model.blocks.spec.axes)}
        for batch, x in inputs.items():
            variants = [("fused-nograph" if args.no_graphs else "fused", p) for p in precisions]
            if device.type == "cuda" and not args.no_graphs and args.nograph_rows != "none":
                # without CUDA graphs (what the graphs gain; PyJuice runs none by default)
                firsts = batch == batches[0]
                variants += [("fused-nograph", p) for i, p in enumerate(precisions)
                             if args.nograph_rows == "all" or (firsts and i == 0)]
            if args.floor and block == "monarch":
                variants += [("fused-no-blocks", p) for p in precisions]
            if h <= args.autograd_max:
                variants.append(("autograd", "tf32" if device.type == "cuda" else "fp32"))
            for engine, precision in variants:
                row = base | info | {"batch": batch, "engine": engine, "precision": precision}
                if model is None or over_budget():
                    emit(row | {"skipped": "no model (memory) or past the time budget"})
                    continue
                emit(run_variant(row, lambda m=model, x=x, e=engine, p=precision: bench_ours(
                    m, x, e, p, reps, device)))
        del model
        gc.collect()
        if block != "dense":  # PyJuice's HCLT has dense blocks only
            continue
        # PyJuice: each construction compiled once per h, after ours is freed
        for construction in dict.fromkeys(c for c, _ in pyjuice_variants):
            engines = [e for c, e in pyjuice_variants if c == construction]
            pc = None
            for batch, x in inputs.items():
                for engine in engines:
                    row = base | {"peer": "pyjuice", "construction": construction,
                                  "engine": engine, "precision": "tf32", "batch": batch}
                    if missing is not None:
                        emit(row | {"skipped": missing})
                        continue
                    if over_budget():
                        emit(row | {"skipped": "past the time budget"})
                        continue
                    if pc is None:
                        built = run_variant(row, lambda c=construction, h=h: dict(zip(
                            ("pc", "madds"), pyjuice_circuit(c, parent, data, h, device),
                            strict=True)))
                        pc, madds = built.pop("pc", None), built.pop("madds", None)
                        if pc is None:
                            emit(built)
                            continue
                    emit(run_variant(row | {"madds_per_sample": madds},
                                     lambda pc=pc, x=x, g=engine == "pyjuice-graphs":
                                     bench_pyjuice(pc, x, reps, device, graphs=g)))
            del pc
            gc.collect()
    print(f"total {time.perf_counter() - begin:.0f} s\n", flush=True)
    print(markdown(rows))
    record.close()


if __name__ == "__main__":
    main()
