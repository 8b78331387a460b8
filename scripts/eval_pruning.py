"""Evaluate a run's HMM with hidden states pruned in the forward pass (Figure 6).

    python scripts/eval_pruning.py --run outputs/<run> --fractions 0,0.5,0.9,0.95,0.99

Writes <run>/pruning.json, which scripts/make_plots.py draws as Figure 6.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from monarchpc.reports.measure import evaluate_pruning


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", nargs="+", required=True, help="run director(y/ies)")
    p.add_argument("--fractions", default="0,0.5,0.75,0.9,0.95,0.99",
                   help="comma-separated fractions of hidden states pruned")
    p.add_argument("--split", default="test", help="data split (rows of the run's data set)")
    p.add_argument("--max-rows", type=int, default=512, help="rows evaluated")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--between-layers", action="store_true",
                   help="also prune between the layers of a Monarch transition")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    args = p.parse_args()
    fractions = [float(f) for f in args.fractions.split(",")]
    for run in args.run:
        r = evaluate_pruning(run, fractions, split=args.split, max_rows=args.max_rows,
                             batch_size=args.batch_size, between_layers=args.between_layers,
                             device=args.device)
        for pt in r["points"]:
            print(f"{run}: {pt['pruned_fraction']:.0%} pruned -> "
                  f"{pt['bits_per_token']:.4f} bits per token")
        print(f"wrote {Path(run) / 'pruning.json'}")


if __name__ == "__main__":
    main()
