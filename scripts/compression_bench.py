"""Compression records: monarchpc runs beside gzip, bzip2, xz, zstd, PNG and WebP.

    python scripts/compression_bench.py --text-run outputs/<char run> \
        --image-run outputs/<image run>
    python scripts/compression_bench.py --text-run outputs/<another run> --no-baselines

Writes one JSON record per measurement into --out (docs/results/compression); every one is
a checked round trip (see monarchpc/use/bench.py). ``make results`` turns the records into
docs/results/table_compression.md/.tex and figure_compression.png/.pdf.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from monarchpc.paths import REPO_ROOT
from monarchpc.use import bench


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text-run", type=Path, help="a character run directory")
    p.add_argument("--image-run", type=Path, help="an image (HCLT) run directory")
    p.add_argument("--images", type=int, default=100, help="Tiny ImageNet validation images")
    p.add_argument("--shared", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    p.add_argument("--work", type=Path, default=REPO_ROOT / "outputs" / "bench")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "results" / "compression")
    p.add_argument("--no-baselines", action="store_true", help="monarchpc rows only")
    p.add_argument("--row", type=int, default=0, help="text: row length (0: the default)")
    p.add_argument("--batch", type=int, default=0, help="rows/patches per model pass")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    options = {"batch": args.batch, "threads": args.threads}

    records = []
    text = bench.text8_prefix_test(args.shared, work)
    text_data = bench.text_data(text)
    if args.text_run:
        records.append(bench.finish_record(bench.measure_monarchpc(
            args.text_run, text, work, **options, **({"row": args.row} if args.row else {})),
            text_data))
    folder = bench.tiny_imagenet_val(args.shared, work, args.images)
    raw = bench.raw_pixels(folder, work)
    image_data = bench.image_data(folder, raw)
    if args.image_run:
        records.append(bench.finish_record(
            bench.measure_monarchpc(args.image_run, folder, work, **options), image_data))
    if not args.no_baselines:
        for name, (enc, _) in bench.TOOLS.items():
            if shutil.which(enc[0]) is None:
                print(f"skipped {name}: {enc[0]} is not installed")
                continue
            records.append(bench.finish_record(bench.measure_tool(name, text), text_data))
            records.append(bench.finish_record(bench.measure_tool(name, raw), image_data))
        files = bench.image_list(folder)
        for fmt in ("PNG", "WEBP"):
            records.append(bench.finish_record(bench.measure_pillow(fmt, files), image_data))
    for rec in records:
        path = bench.write_record(rec, args.out)
        extra = (f" (model NLL {rec['model_nll_bits_per_unit']:.4f}, "
                 f"{rec['over_nll_percent']:+.2f}%)" if "model_nll_bits_per_unit" in rec else "")
        print(f"{rec['data']:<18} {rec['method']:<26} {rec['bits_per_unit']:.4f} bits/"
              f"{rec['unit']}{extra}, {rec['compress_mb_per_s']:.3g} / "
              f"{rec['decompress_mb_per_s']:.3g} MB/s -> {path}")


if __name__ == "__main__":
    main()
