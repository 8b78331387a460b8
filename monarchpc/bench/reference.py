"""The reference implementation's HMM E-step beside ours, in one run: the same cases, the
same batch, the same parameters.

    python -m monarchpc.bench reference --reference PATH            # the GPU cases
    python -m monarchpc.bench reference --reference PATH --tiny     # small cases on the CPU
    make bench-reference REFERENCE=PATH

PATH is a copy of the paper's code, github.com/wangben88/MonarchCircuits (a clone, or any
folder holding its ``monarch_hmm/hmm.py``), or that ``hmm.py`` itself. It is read at run
time and never committed; this tool was written against commit 6d7c47f (2025-07-29), whose
``monarch_hmm/hmm.py`` has the sha256 in :data:`TESTED_SHA256` (the record notes the file's
own). A machine without internet needs the copy brought along, e.g.
``git clone https://github.com/wangben88/MonarchCircuits outputs/reference/MonarchCircuits``
then ``--reference outputs/reference/MonarchCircuits``. Its ``hmm.py`` imports
``huggingface_hub`` (a dependency of ``datasets``); where that is missing, a stand-in for its
``PyTorchModelHubMixin`` (save/load helpers only) is used and the record says so.

Per case (``make bench``'s cases at batch 128: dense 4096 and 16384, Monarch-2 2^16, 2^18,
2^19, Monarch-3 2^15 and 2^18, Monarch-4 2^16; length 256, vocabulary 27), one model of ours
with random weights and the reference's model holding the same weights
(:func:`reference_model`), one batch of random tokens, then:

* ``reference``: its E-step as its training script runs it (``zero_grad``, forward,
  ``sum().backward()``) with torch's TF32 switch on (its ``train_hmm.py`` sets it);
* ``ours_tf32`` and ``ours_bf16`` (``--precisions``): our fused E-step with ``make bench``'s
  settings (segment 16, 8 GB of kept segments, CUDA graphs by default up to 2^18), each with
  the check at its timed size (bench/hmm.py ``timed_check``);
* ``agreement``: the reference's log p and flows against ours in TF32 on the whole batch
  (its Monarch E-step keeps its hidden states in fp16, so its flows differ by about 1e-3).

Median E-step seconds of ``--reps`` after one warm-up, tokens/s, peak GPU memory of each
E-step (parameters and flows included), and the ratios ours / reference, TF32 to TF32 and
bf16 to TF32. JSON lines to outputs/bench/bench_reference_<gpu>.jsonl (``--record``:
docs/results/device/), then a Markdown table.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import math
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from monarchpc.bench.hmm import (
    build,
    device_name,
    peak_gb,
    reset_memory,
    timed,
    timed_check,
)
from monarchpc.bench.records import JsonLines, add_output_options, destination, device_tag
from monarchpc.circuits.hmm import HMM
from monarchpc.errors import UsageError
from monarchpc.learning.cuda_graphs import CapturedEStep
from monarchpc.learning.em import flows
from monarchpc.learning.hmm_estep import fused_estep
from monarchpc.learning.precision import PRECISIONS, Precision

REPOSITORY = "https://github.com/wangben88/MonarchCircuits"
TESTED_COMMIT = "6d7c47f2a50d1c7ec97cfe069a001680eaec61cc"
TESTED_SHA256 = "c5c1270cf9a74aae680df7f2eac30d7c61c05fdf5be884a34ca1da421b8157b8"
# (name, factors, batch): make bench's batch-128 cases (its batch-512 case does not fit the
# reference, which keeps every hidden state: 74.5 GB at batch 128)
GPU_CASES = [("dense 4096", [4096], 128), ("dense 16384", [16384], 128),
             ("monarch2 2^16", [256, 256], 128), ("monarch2 2^18", [512, 512], 128),
             ("monarch2 2^19", [512, 1024], 128), ("monarch3 2^15", [32, 32, 32], 128),
             ("monarch3 2^18", [64, 64, 64], 128), ("monarch4 2^16", [16, 16, 16, 16], 128)]
TINY_CASES = [("dense 32", [32], 8), ("monarch2 2^6", [8, 8], 8), ("monarch3 2^6", [4, 4, 4], 8)]


def reference_file(path: str) -> Path:
    """The reference's ``monarch_hmm/hmm.py`` under ``path`` (a copy of the repository, a
    folder holding monarch_hmm/, or the file), or a UsageError saying what to put there."""
    p = Path(path).expanduser() if path else Path()
    for candidate in (p, p / "monarch_hmm" / "hmm.py", p / "hmm.py"):
        if path and candidate.is_file():
            return candidate
    raise UsageError(
        f"--reference {path or '(none)'}: give a copy of {REPOSITORY} (git clone {REPOSITORY} "
        f"outputs/reference/MonarchCircuits; written against commit {TESTED_COMMIT[:7]}), a "
        f"folder holding its monarch_hmm/hmm.py, or that hmm.py itself")


def load_reference(path: Path) -> tuple[types.ModuleType, bool]:
    """Import the reference's hmm.py as a module; True when huggingface_hub was missing and
    a stand-in for its mixin was used."""
    stubbed = False
    try:
        import huggingface_hub  # noqa: F401  (the reference's import)
    except ImportError:
        stub = types.ModuleType("huggingface_hub")
        stub.PyTorchModelHubMixin = type("PyTorchModelHubMixin", (), {})  # type: ignore
        sys.modules["huggingface_hub"] = stub
        stubbed = True
    spec = importlib.util.spec_from_file_location("monarchpc_reference_hmm", path)
    if spec is None or spec.loader is None:
        raise UsageError(f"--reference: cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = [n for n in ("HMM", "MonarchHMM") if not hasattr(module, n)]
    if missing:
        raise UsageError(f"--reference: {path} has no {', '.join(missing)}: not the reference's "
                         f"monarch_hmm/hmm.py (see {REPOSITORY})")
    return module, stubbed


@torch.no_grad()
def reference_model(ref: types.ModuleType, hmm: HMM, device: torch.device) -> nn.Module:
    """The reference's model (``HMM`` for a dense block, ``MonarchHMM`` for Monarch-k) on
    ``device`` holding ``hmm``'s weights. Its layouts: dense ``alpha_exp`` (h, h), rows the
    sum nodes, linear space; Monarch ``alpha_exp.weights_exp[a]`` (h / b_a, b_a, b_a) for the
    layer mixing factor a, its block index running over the other factors with the later
    ones (post) slower than the earlier ones (pre): our layer a (1, pre, post, b, b) with
    pre and post swapped. ``beta`` (h, V) is the emission in log space, ``gamma_exp`` (1, h)
    the initial distribution in linear space."""
    factors = list(hmm.transition.spec.factors)
    if list(hmm.transition.spec.axes) != list(range(len(factors))):
        raise ValueError("the reference has Monarch-k HMMs with one layer per factor only")
    h, vocab = hmm.hidden_size, hmm.vocab_size
    with torch.device(device):  # its constructor draws random weights: on the GPU, at once
        if len(factors) == 1:
            model = ref.HMM(h, vocab, 0)
            model.alpha_exp.copy_(hmm.transition.layers[0][0, 0, 0])
        else:
            model = ref.MonarchHMM(h, factors, vocab, 0)
            for w, ours, b in zip(model.alpha_exp.weights_exp, hmm.transition.layers, factors,
                                  strict=True):
                w.copy_(ours[0].transpose(0, 1).reshape(h // b, b, b))
    model.beta.copy_(hmm.emission.log())
    model.gamma_exp.copy_(hmm.initial[None])
    return model


def reference_flows(model: nn.Module, hmm: HMM) -> dict[str, Tensor]:
    """The flows of the reference's last E-step in our parameters' names and layouts:
    Monarch layers hold d log p / d w (its EM step multiplies by w), the dense transition,
    the emission (log space) and the initial distribution hold the flows themselves."""
    factors = list(hmm.transition.spec.factors)
    out = {"emission": model.beta.grad.detach(), "initial": model.gamma_exp.grad.detach()[0]}
    if len(factors) == 1:
        out["transition.layers.0"] = model.alpha_exp.grad.detach()[None, None, None]
    else:
        for a, (w, ours) in enumerate(zip(model.alpha_exp.weights_exp, hmm.transition.layers,
                                          strict=True)):
            _, pre, post, b, _ = ours.shape
            f = (w.grad * w).detach().reshape(post, pre, b, b).transpose(0, 1)
            out[f"transition.layers.{a}"] = f[None]
    return out


def reference_estep(model: nn.Module, x: Tensor) -> Tensor:
    """The reference's E-step on rows x (N, T) as its train_hmm.py runs it: gradients set to
    zero, forward, backward of the summed log-likelihoods; returns log p (N,)."""
    model.zero_grad()
    ll = model(x)
    ll.sum().backward()
    return ll.detach().reshape(-1)


def speed(seconds: float, tokens: int, device: torch.device) -> dict[str, Any]:
    return {"estep_s": seconds, "tokens_per_s": tokens / seconds, "peak_memory_gb": peak_gb(device)}


def attempt(fn: Any) -> dict[str, Any]:
    """``fn()``'s result, or the error it raised as a row entry (one failure loses no other)."""
    try:
        return fn()
    except torch.OutOfMemoryError:
        return {"error": "out of memory"}
    except Exception as err:
        return {"error": f"{type(err).__name__}: {str(err)[:300]}"}
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def compare_case(ref: types.ModuleType, name: str, factors: list[int], batch: int,
                 args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One case: the reference in TF32, then ours in each of ``args.precisions``, the same
    rows and weights; the agreement of log p and flows (reference against ours in TF32)."""
    hmm = build(factors, args.vocab, device)
    x = torch.randint(0, args.vocab, (batch, args.length), device=device,
                      generator=torch.Generator(device).manual_seed(1))
    tokens = batch * args.length
    row: dict[str, Any] = {"case": name, "factors": factors, "hidden_size": math.prod(factors),
                           "batch": batch, "length": args.length, "vocab": args.vocab,
                           "madds_per_token": hmm.madds_per_token(), "device": device_name(device)}
    tf32 = Precision("tf32")
    agreement: dict[str, Any] = {}

    def reference() -> dict[str, Any]:
        model = reference_model(ref, hmm, device)
        reset_memory(device)
        with tf32.products():
            out = speed(timed(lambda: reference_estep(model, x), device, args.reps), tokens,
                        device)
            agreement["ll"] = reference_estep(model, x)
        agreement["flows"] = {k: v.clone() for k, v in reference_flows(model, hmm).items()}
        return out

    row["reference_tf32"] = attempt(reference)
    for precision in args.precisions:
        def ours(precision: str = precision) -> dict[str, Any]:
            for p in hmm.parameters():
                p.grad = None
            reset_memory(device)
            run = fused_estep(hmm, device, args.segment, precision, args.keep_gb, args.graphs)
            out = speed(timed(lambda: run(x), device, args.reps), tokens, device)
            out["cuda_graph"] = isinstance(run, CapturedEStep)
            if args.check_rows:
                out["timed_check"] = timed_check(hmm, run, x, args.check_rows, precision)
            if precision == "tf32" and "ll" in agreement:
                for p in hmm.parameters():
                    p.grad = None
                ll = run(x).float()
                mine = dict(hmm.named_parameters())
                agreement["ll_rel_err"] = float(((ll - agreement["ll"]).abs() /
                                                 agreement["ll"].abs()).max())
                agreement["flow_rel_err_by_param"] = {
                    k: float((flows(mine[k]) - f).abs().max() / f.abs().max().clamp_min(1e-30))
                    for k, f in agreement["flows"].items()}
                for p in hmm.parameters():
                    p.grad = None
            return out

        row[f"ours_{precision}"] = attempt(ours)
    reference_speed = row["reference_tf32"].get("tokens_per_s")
    for precision in args.precisions:
        mine = row[f"ours_{precision}"].get("tokens_per_s")
        if mine and reference_speed:
            row[f"ours_{precision}_over_reference_tf32"] = mine / reference_speed
    if "ll_rel_err" in agreement:
        row["agreement"] = {"ll_rel_err": agreement["ll_rel_err"],
                            "flow_rel_err": max(agreement["flow_rel_err_by_param"].values()),
                            "flow_rel_err_by_param": agreement["flow_rel_err_by_param"],
                            "what": "reference TF32 against ours TF32, whole batch (the "
                                    "reference keeps hidden states in fp16 for its backward)"}
    return row


def markdown(rows: list[dict[str, Any]], precisions: list[str]) -> str:
    def cell(r: dict[str, Any]) -> str:
        if "tokens_per_s" not in r:
            return r.get("error", "-")
        return f"{r['tokens_per_s']:,.0f} ({r['peak_memory_gb']:.1f})" if r.get(
            "peak_memory_gb") is not None else f"{r['tokens_per_s']:,.0f}"

    head = ["model", "h", "batch", "reference TF32: tokens/s (GB)"]
    for p in precisions:
        head += [f"ours {p}: tokens/s (GB)", f"ours {p} / reference TF32"]
    head += ["log p, flows: reference vs ours TF32"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        f = r["factors"]
        model = "dense HMM" if len(f) == 1 else f"Monarch-{len(f)} ({' x '.join(map(str, f))})"
        cells = [model, f"2^{int(math.log2(r['hidden_size']))}", str(r["batch"]),
                 cell(r["reference_tf32"])]
        for p in precisions:
            ratio = r.get(f"ours_{p}_over_reference_tf32")
            cells += [cell(r[f"ours_{p}"]), f"{ratio:.1f}x" if ratio else "-"]
        a = r.get("agreement")
        cells.append(f"{a['ll_rel_err']:.1e}, {a['flow_rel_err']:.1e}" if a else "-")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def keep_gb_arg(value: str) -> float | str:
    return value if value == "auto" else float(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--reference", default="",
                        help=f"a copy of {REPOSITORY} (or its monarch_hmm/hmm.py)")
    parser.add_argument("--tiny", action="store_true", help="small cases on the CPU")
    parser.add_argument("--cases", default=None, help="comma-separated case indices")
    parser.add_argument("--precisions", default="tf32,bf16",
                        help="our E-step's precisions beside the reference's TF32")
    parser.add_argument("--segment", type=int, default=16)
    parser.add_argument("--keep-gb", type=keep_gb_arg, default=8.0,
                        help="our kept segments, GB or auto (make bench: 8)")
    parser.add_argument("--graphs", default="auto", type=lambda v: {"true": True,
                        "false": False}.get(v, v), help="our CUDA graphs: auto | true | false")
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=27)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--check-rows", type=int, default=4,
                        help="rows of our timed E-steps checked against autograd (0: none)")
    add_output_options(parser)
    args = parser.parse_args(argv)
    args.precisions = args.precisions.split(",")
    if any(p not in PRECISIONS for p in args.precisions):
        parser.error(f"--precisions must be among {', '.join(PRECISIONS)}")
    try:
        path = reference_file(args.reference)
        ref, stubbed = load_reference(path)
    except UsageError as err:
        print(f"monarchpc: error: {err}", file=sys.stderr)
        sys.exit(2)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if args.tiny:
        args.length, args.reps = min(args.length, 16), 1
    cases = TINY_CASES if args.tiny else GPU_CASES
    if args.cases:
        cases = [cases[int(i)] for i in args.cases.split(",")]
    emit = JsonLines(destination(args, f"bench_reference_{device_tag(device)}.jsonl"))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    emit({"reference": f"{REPOSITORY} monarch_hmm/hmm.py", "sha256": sha,
          "tested_commit": TESTED_COMMIT, "same_file_as_tested": sha == TESTED_SHA256,
          "huggingface_hub": "stand-in mixin" if stubbed else "installed",
          "reference_precision": "tf32 (torch.backends.cuda.matmul.allow_tf32, as its "
                                 "train_hmm.py)", "device": device_name(device),
          "date": time.strftime("%Y-%m-%d")})
    rows = []
    for name, factors, batch in cases:
        row = compare_case(ref, name, factors, batch, args, device)
        rows.append(row)
        emit(row)
    print(markdown(rows, args.precisions))
    emit.close()


if __name__ == "__main__":
    main()
