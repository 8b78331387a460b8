"""Regenerate the paper's figures 4-7, test BPC vs GPU-seconds and the image runs' dev
curves (PNG + PDF) from run directories (and wandb).

    python scripts/make_plots.py --runs outputs --out outputs/reports

Beside the figures, provenance_plots.md lists the run behind every point and why each
other run was left out (its summary is printed too).
"""

from __future__ import annotations

from pathlib import Path

from monarchpc.reports.plots import build_plots, figure_notes, figure_sources
from monarchpc.reports.provenance import write_provenance
from monarchpc.reports.records import load_from_args, source_parser


def main() -> None:
    p = source_parser(__doc__)
    p.add_argument("--text8-dataset", default="text8",
                   help="dataset name of the runs behind Figures 4 and 5 (e.g. chars)")
    p.add_argument("--imagenet64-dataset", default="imagenet64",
                   help="dataset name of the runs behind Figure 7 and the dev curves")
    p.add_argument("--imagenet32-dataset", default="imagenet32",
                   help="dataset name of more runs behind the dev curves (one figure per "
                        "image size, from the runs' data.image_size)")
    args = p.parse_args()
    records = load_from_args(args)
    for path in build_plots(records, args.out, text8=args.text8_dataset,
                            imagenet64=args.imagenet64_dataset,
                            imagenet32=args.imagenet32_dataset):
        print(f"wrote {path}")
    sources = figure_sources(records, args.text8_dataset, args.imagenet64_dataset,
                             args.imagenet32_dataset)
    datasets = {"figures 4-5 and GPU-seconds": args.text8_dataset,
                "figure 7 and dev curves": args.imagenet64_dataset,
                "dev curves": args.imagenet32_dataset}
    for line in write_provenance(Path(args.out) / "provenance_plots.md", records, sources,
                                 datasets, "Runs behind the figures",
                                 figure_notes(records, args.text8_dataset)):
        print(line)


if __name__ == "__main__":
    main()
