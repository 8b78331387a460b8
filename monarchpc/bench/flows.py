"""How far the bf16 and TF32 HCLT E-steps land from fp32: log-likelihood and flows.

    python -m monarchpc.bench flows                        # Monarch h = 1024, 4096 on a GPU
    python -m monarchpc.bench flows --cases dense-512-512,monarch-1024-1000 --precisions bf16

Builds bench_hclt.py's HCLT (192 variables, the Chow-Liu tree of synthetic patches),
runs one E-step in fp32 (exact products) and one per low precision on the same rows, and
prints one JSON line per (case, precision): the mean and largest error of log p (nats a
row), and per parameter group (the block layers, the leaves, the root) the flows'
signed bias sum(F - F32) / sum |F32|, their L1 error sum |F - F32| / sum |F32| and the
largest error relative to the largest flow. A bias shared by all groups rescales the flows
and leaves EM unchanged; the log-likelihood's bias shifts every BPD scored that way.
"""

from __future__ import annotations

import argparse

import torch

from monarchpc.bench.hclt import build, patches_and_tree
from monarchpc.bench.records import JsonLines, add_output_options, destination, device_tag
from monarchpc.learning.em import flows
from monarchpc.learning.hclt_estep import hclt_estep


def flows_by_group(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """theta * d log p / d theta of every parameter group, flattened (after an E-step)."""
    groups = {f"layer{l}": [w] for l, w in enumerate(model.blocks.layers)}
    groups |= {"leaves": list(model.leaves), "root": [model.root]}
    return {name: torch.cat([flows(p).flatten() for p in params])
            for name, params in groups.items()}


def estep(model: torch.nn.Module, x: torch.Tensor, precision: str
          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    for p in model.parameters():
        p.grad = None
    ll = hclt_estep(model, x, precision)  # fp32 runs exact products whatever TF32 says
    return ll, flows_by_group(model)


def compare(ll: torch.Tensor, groups: dict[str, torch.Tensor], ll32: torch.Tensor,
            groups32: dict[str, torch.Tensor]) -> dict[str, float]:
    row = {"ll_bias_nats": float((ll - ll32).mean()),
           "ll_max_abs_nats": float((ll - ll32).abs().max())}
    for name, f in groups.items():
        ref = groups32[name]
        row[f"{name}_bias"] = float((f - ref).sum() / ref.abs().sum())
        row[f"{name}_l1_rel"] = float((f - ref).abs().sum() / ref.abs().sum())
        row[f"{name}_max_rel"] = float((f - ref).abs().max() / ref.abs().max())
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="monarch-1024-1000,monarch-1024-512,monarch-4096-512",
                        help="comma-separated BLOCK-HIDDEN-BATCH (block: dense or monarch)")
    parser.add_argument("--precisions", default="bf16,tf32")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    add_output_options(parser)  # name: precision_flows_hclt_<device>.jsonl
    args = parser.parse_args(argv)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    data, parent = patches_and_tree(device.type == "cpu", device)
    emit = JsonLines(destination(args, f"precision_flows_hclt_{device_tag(device)}.jsonl"))
    for case in args.cases.split(","):
        block, h, n = case.split("-")
        h, n = int(h), int(n)
        model = build(parent, block, h, device)
        x = data[:n].to(device)
        ll32, groups32 = estep(model, x, "fp32")
        for precision in args.precisions.split(","):
            ll, groups = estep(model, x, precision)
            row = {"structure": "hclt", "block": block, "hidden_size": h, "batch": n,
                   "precision": precision, "device": torch.cuda.get_device_name(device)
                   if device.type == "cuda" else "cpu", **compare(ll, groups, ll32, groups32)}
            emit(row)
        del model
    emit.close()


if __name__ == "__main__":
    main()
