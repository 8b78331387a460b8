"""Regenerate the paper's figures 4-7 (PNG + PDF) from run directories (and wandb).

    python scripts/make_plots.py --runs outputs --out docs/results
"""

from __future__ import annotations

import argparse

from monarchpc.reports.plots import build_plots
from monarchpc.reports.records import load_all


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["outputs"],
                   help="run directories or folders searched recursively for run.json")
    p.add_argument("--out", default="docs/results", help="output folder")
    p.add_argument("--wandb-project", action="append", default=[],
                   help="also read runs of this wandb project (entity/project); repeatable")
    p.add_argument("--text8-dataset", default="text8",
                   help="dataset name of the runs behind Figures 4 and 5 (e.g. chars)")
    p.add_argument("--imagenet64-dataset", default="imagenet64",
                   help="dataset name of the runs behind Figure 7")
    args = p.parse_args()
    records = load_all(args.runs, args.wandb_project)
    print(f"loaded {len(records)} runs from {', '.join(args.runs)}"
          + (f" and wandb {args.wandb_project}" if args.wandb_project else ""))
    for path in build_plots(records, args.out, text8=args.text8_dataset,
                            imagenet64=args.imagenet64_dataset):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
