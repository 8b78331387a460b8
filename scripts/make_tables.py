"""Regenerate the paper's tables (Markdown + LaTeX) from run directories (and wandb).

    python scripts/make_tables.py --runs outputs --out docs/results
"""

from __future__ import annotations

import argparse

from monarchpc.reports.records import load_all
from monarchpc.reports.tables import build_tables, write_tables


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["outputs"],
                   help="run directories or folders searched recursively for run.json")
    p.add_argument("--out", default="docs/results", help="output folder")
    p.add_argument("--wandb-project", action="append", default=[],
                   help="also read runs of this wandb project (entity/project); repeatable")
    p.add_argument("--text8-dataset", default="text8",
                   help="dataset name of the runs behind Tables 1, 2, 3, B.2 (e.g. chars)")
    p.add_argument("--lm1b-dataset", default="lm1b", help="dataset name for Table 4")
    p.add_argument("--imagenet32-dataset", default="imagenet32")
    p.add_argument("--imagenet64-dataset", default="imagenet64")
    p.add_argument("--table2-sizes", default=None,
                   help="comma-separated hidden sizes for Table 2's four columns")
    args = p.parse_args()
    records = load_all(args.runs, args.wandb_project)
    print(f"loaded {len(records)} runs from {', '.join(args.runs)}"
          + (f" and wandb {args.wandb_project}" if args.wandb_project else ""))
    sizes = [int(s) for s in args.table2_sizes.split(",")] if args.table2_sizes else None
    tables = build_tables(records, text8=args.text8_dataset, lm1b=args.lm1b_dataset,
                          imagenet={32: args.imagenet32_dataset, 64: args.imagenet64_dataset},
                          table2_sizes=sizes)
    for path in write_tables(tables, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
