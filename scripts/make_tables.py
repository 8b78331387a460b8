"""Regenerate the paper's tables (Markdown + LaTeX) from run directories (and wandb).

    python scripts/make_tables.py --runs outputs --out outputs/reports

Beside the tables, provenance_tables.md lists the run behind every cell and why each
other run was left out (its summary is printed too).
"""

from __future__ import annotations

from pathlib import Path

from monarchpc.reports.provenance import write_provenance
from monarchpc.reports.records import load_from_args, source_parser
from monarchpc.reports.tables import build_tables, write_tables


def main() -> None:
    p = source_parser(__doc__)
    p.add_argument("--text8-dataset", default="text8",
                   help="dataset name of the runs behind Tables 1, 2, 3, B.2 (e.g. chars)")
    p.add_argument("--lm1b-dataset", default="lm1b", help="dataset name for Table 4")
    p.add_argument("--imagenet32-dataset", default="imagenet32")
    p.add_argument("--imagenet64-dataset", default="imagenet64")
    p.add_argument("--table2-sizes", default=None,
                   help="comma-separated hidden sizes for Table 2's four columns")
    args = p.parse_args()
    records = load_from_args(args)
    sizes = [int(s) for s in args.table2_sizes.split(",")] if args.table2_sizes else None
    tables = build_tables(records, text8=args.text8_dataset, lm1b=args.lm1b_dataset,
                          imagenet={32: args.imagenet32_dataset, 64: args.imagenet64_dataset},
                          table2_sizes=sizes)
    for path in write_tables(tables, args.out):
        print(f"wrote {path}")
    datasets = {"text8 tables": args.text8_dataset, "lm1b table": args.lm1b_dataset,
                "imagenet32": args.imagenet32_dataset, "imagenet64": args.imagenet64_dataset}
    for line in write_provenance(Path(args.out) / "provenance_tables.md", records,
                                 {t.key: t.sources for t in tables}, datasets,
                                 "Runs behind the tables"):
        print(line)


if __name__ == "__main__":
    main()
