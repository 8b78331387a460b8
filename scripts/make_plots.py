"""Regenerate the paper's figures 4-7 (PNG + PDF) from run directories (and wandb).

    python scripts/make_plots.py --runs outputs --out docs/results
"""

from __future__ import annotations

from monarchpc.reports.plots import build_plots
from monarchpc.reports.records import load_from_args, source_parser


def main() -> None:
    p = source_parser(__doc__)
    p.add_argument("--text8-dataset", default="text8",
                   help="dataset name of the runs behind Figures 4 and 5 (e.g. chars)")
    p.add_argument("--imagenet64-dataset", default="imagenet64",
                   help="dataset name of the runs behind Figure 7")
    args = p.parse_args()
    records = load_from_args(args)
    for path in build_plots(records, args.out, text8=args.text8_dataset,
                            imagenet64=args.imagenet64_dataset):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
