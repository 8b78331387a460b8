"""The compression table and figure, rebuilt from the records of ``docs/results/compression``.

    python -m monarchpc.reports.compression --records docs/results/compression --out docs/results

Records are written by ``scripts/compression_bench.py`` (:mod:`monarchpc.use.bench`), one
JSON per measured round trip; a larger model's row is added by adding its record. Writes
``table_compression.md`` / ``.tex`` (bits per character or dimension beside the speeds)
and ``figure_compression.png`` / ``.pdf`` (bits against MB/s, one panel per data set).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from monarchpc.reports.plots import _message, _save
from monarchpc.reports.tables import DASH, Table

DATA_ORDER = ["text8_prefix_test", "tiny_imagenet_val"]
SHORT = {"text8_prefix_test": "text8 prefix, test split", "tiny_imagenet_val": "Tiny ImageNet val"}
KEY = "table_compression"
FIGURE = "figure_compression"
REFERENCES = [("text8_prefix_test", "runs/text8_prefix/b2-monarch2-h32768/run.json", "test_bpc",
               "NLL only: Monarch-2 h=2^15, GPU, 20 epochs (no checkpoint here)")]
"""Dashed lines in the figure: a committed run's test metric (docs/results/runs), the bits
its model promises on the same data; its checkpoint is not kept, so it cannot be coded."""


def references(results: Path) -> list[tuple[str, float, str]]:
    """(data, bits per unit, label) of the REFERENCES found under ``results``."""
    out = []
    for data, path, key, label in REFERENCES:
        if (results / path).is_file():
            value = (json.loads((results / path).read_text()).get("final") or {}).get(key)
            if value is not None:
                out.append((data, float(value), label))
    return out


def load_records(folder: str | Path) -> list[dict[str, Any]]:
    """Every ``*.json`` record of ``folder`` (sorted by file name); none if it is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def model_label(rec: dict[str, Any]) -> str:
    """monarchpc: the model of the record, e.g. "Monarch-2 HMM h=256, 3 epochs"."""
    m = rec.get("model")
    if not m:
        return rec["method"]
    if m.get("structure") == "hclt":
        kind = "Monarch-HCLT" if m.get("block") == "monarch" else "HCLT"
    else:
        kind = f"Monarch-{m.get('k')} HMM" if m.get("block") == "monarch" else "HMM"
    epochs = m.get("epochs")
    return (f"monarchpc: {kind} h={m.get('hidden_size')}"
            + (f", {epochs} epoch{'s' * (epochs != 1)}" if epochs else "")
            + f" ({m.get('trained_on', '?')})")


def _order(rec: dict[str, Any]) -> tuple:
    data = rec["data"]
    return (DATA_ORDER.index(data) if data in DATA_ORDER else len(DATA_ORDER), data,
            rec["bits_per_unit"])


def _speed(v: float | None) -> str:
    if v is None:
        return DASH
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def table(records: Sequence[dict[str, Any]]) -> Table:
    """Bits per unit, size and speeds of every record, grouped by data set."""
    rows = []
    for rec in sorted(records, key=_order):
        nll = rec.get("model_nll_bits_per_unit")
        over = rec.get("over_nll_percent")
        rows.append([
            SHORT.get(rec["data"], rec["data_label"]), model_label(rec),
            f"{rec['bits_per_unit']:.3f}",
            DASH if nll is None else f"{nll:.3f} ({over:+.2f}%)",
            f"{rec['bytes']:,}",
            _speed(rec.get("compress_mb_per_s")), _speed(rec.get("decompress_mb_per_s")),
            f"{rec['round_trip']['checked']} exact" if rec["round_trip"].get("exact") else "NO",
        ])
    machines = sorted({f"{r['machine']['cpu']} ({r['machine']['cores']} cores)"
                       for r in records if r.get("machine")})
    labels = sorted({f"{SHORT.get(r['data'], r['data'])}: {r['data_label']}" for r in records})
    notes = [
        "Data: " + "; ".join(labels) + ".",
        "Bits per character (text) or per dimension (images: H x W x 3 pixel channels; the "
        "2 greyscale images count 3 per pixel too) of the whole compressed output, headers "
        "included; MB/s of raw input (characters or pixel bytes). Every row is a round trip "
        "checked byte for byte (pixel for pixel); 'exact' counts the checked files.",
        "monarchpc: python -m monarchpc.compress / decompress with the run named (trained on "
        "this CPU, small and short), one thread, float64 conditionals, rANS with frequencies "
        "of total 2^20; the 'model NLL' column is the run's own -log2 p of the same data "
        "(text in rows of 4096 characters, images patch by patch) and how much the file "
        "exceeds it. Times are the coding alone (the model loaded).",
        "gzip, bzip2, xz and zstd compress the text file, and for images the 100 images' raw "
        "RGB pixels in one file; PNG (Pillow, optimize) and WebP (lossless, quality 100, "
        "method 6) code each image on its own. Times: best of 3 runs (PNG/WebP: one).",
        "For scale: the committed Monarch-2 h = 2^15 GPU run (docs/results/runs) scores "
        "1.823 test BPC on the same text (rows of 256); its checkpoint is not kept, so it has "
        "no row here. A record of a larger run added to docs/results/compression adds a row.",
    ]
    if machines:
        notes.append(f"Measured on {', '.join(machines)}, cores shared with other jobs: "
                     f"speeds are indicative.")
    return Table(KEY, "Lossless compression: bits per character / dimension and speed",
                 ["data", "method", "bits per char. / dim.", "model NLL (file over it)", "bytes",
                  "compress MB/s", "decompress MB/s", "round trip"], rows, notes)


def figure(records: Sequence[dict[str, Any]], out: str | Path,
           refs: Sequence[tuple[str, float, str]] = ()) -> list[Path]:
    """Bits per unit against compression (filled) and decompression (hollow) MB/s; ``refs``
    (data, bits, label) are drawn as dashed lines."""
    datas = sorted({r["data"] for r in records}, key=lambda d: (
        DATA_ORDER.index(d) if d in DATA_ORDER else len(DATA_ORDER), d)) or DATA_ORDER
    fig = Figure(figsize=(5.5 * len(datas), 4.2))
    axes = fig.subplots(1, len(datas), squeeze=False)[0]
    for ax, data in zip(axes, datas, strict=True):
        recs = sorted((r for r in records if r["data"] == data), key=lambda r: r["method"])
        if not recs:
            _message(ax, "no records")
            continue
        for i, r in enumerate(recs):
            ours = r.get("family") == "model"
            color = "tab:red" if ours else ("tab:green" if r.get("family") == "image codec"
                                            else "tab:blue")
            x = [r["compress_mb_per_s"], r["decompress_mb_per_s"]]
            y = [r["bits_per_unit"]] * 2
            ax.plot(x, y, color=color, lw=0.8, alpha=0.6)
            ax.plot(x[0], y[0], "o", color=color, ms=7 if ours else 5)
            ax.plot(x[1], y[1], "o", mfc="white", color=color, ms=7 if ours else 5)
            label = model_label(r).removeprefix("monarchpc: ").split(" (")[0] if ours \
                else r["method"]
            ax.annotate(label, (x[0], y[0]), textcoords="offset points",
                        xytext=(4, 4 if i % 2 else -10),  # alternate: close rows overlap
                        fontsize=7, color=color)
        for ref_data, bits, label in refs:
            if ref_data == data:
                ax.axhline(bits, ls="--", color="tab:red", lw=0.8, alpha=0.7)
                ax.annotate(label, (0.02, bits), xycoords=("axes fraction", "data"),
                            textcoords="offset points", xytext=(0, 3), fontsize=7,
                            color="tab:red")
        ax.set_xscale("log")
        ax.set_xlabel("MB/s (filled: compression, hollow: decompression)")
        ax.set_ylabel(f"bits per {recs[0]['unit']}")
        ax.set_title(recs[0]["data_label"], fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out, FIGURE)


def write(records_dir: str | Path, out: str | Path) -> list[Path]:
    """The table (.md, .tex) and the figure (.png, .pdf) of the records in ``records_dir``."""
    records = load_records(records_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t = table(records)
    paths = []
    for suffix, text in ((".md", t.markdown()), (".tex", t.latex())):
        path = out / f"{KEY}{suffix}"
        path.write_text(text)
        paths.append(path)
    return paths + figure(records, out, references(Path(records_dir).parent))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", default="docs/results/compression")
    p.add_argument("--out", default="docs/results")
    args = p.parse_args(argv)
    for path in write(args.records, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
