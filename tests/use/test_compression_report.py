"""The compression table and figure from records, and the measurement helpers on real files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monarchpc.bench import compression as bench
from monarchpc.reports import compression as report


def record(data: str, method: str, bits: float, **extra: object) -> dict:
    unit = "character" if data == bench.TEXT_KEY else "dimension"
    measured = {"method": method, "family": extra.pop("family", "general"),
                "bytes": int(bits * 1000 / 8), "compress_seconds": 2.0,
                "decompress_seconds": 1.0, "round_trip": {"checked": 1, "exact": True},
                **extra}
    return bench.finish_record(measured, {"data": data, "data_label": f"{data} label",
                                          "unit": unit, "units": 1000, "raw_bytes": 1000})


def test_table_and_figure_from_records(tmp_path: Path) -> None:
    model = {"run": "r", "structure": "hmm", "block": "monarch", "k": 2, "hidden_size": 256,
             "epochs": 3, "trained_on": "this CPU"}
    records = [record(bench.TEXT_KEY, "gzip -9", 2.7),
               record(bench.TEXT_KEY, "monarchpc", 2.4, family="model", model=model,
                      nll_bits=2395.0, header_bytes=40),
               record(bench.IMAGE_KEY, "PNG (optimize)", 5.9, family="image codec")]
    folder = tmp_path / "records"
    paths = [bench.write_record(r, folder) for r in records]
    assert [p.name for p in paths] == ["text8_prefix_test__gzip-9.json",
                                       "text8_prefix_test__monarchpc__r.json",
                                       "tiny_imagenet_val__png-optimize.json"]
    assert not any("/work" in p.read_text() or str(tmp_path) in p.read_text() for p in paths)
    written = report.write(folder, tmp_path / "out")
    assert sorted(p.name for p in written) == sorted([
        "table_compression.md", "table_compression.tex", "figure_compression.png",
        "figure_compression.pdf"])
    md = (tmp_path / "out" / "table_compression.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| text8")]
    assert "Monarch-2 HMM h=256, 3 epochs (this CPU)" in rows[0] and "2.400" in rows[0]
    assert "2.395 (+0.21%)" in rows[0] and "gzip -9" in rows[1]  # sorted by bits
    assert "Tiny ImageNet val" in md and "\\begin{tabular}" in \
        (tmp_path / "out" / "table_compression.tex").read_text()
    assert json.loads(paths[1].read_text())["over_nll_percent"] == pytest.approx(100 * 5 / 2395)


def test_pillow_and_tool_measurements_are_checked_round_trips(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)).save(folder / "val_10.png")
    Image.fromarray(rng.integers(0, 256, (8, 8)).astype(np.uint8)).save(folder / "val_2.png")
    assert [p.name for p in bench.image_list(folder)] == ["val_2.png", "val_10.png"]
    raw = bench.raw_pixels(folder, tmp_path)
    assert raw.stat().st_size == 2 * 8 * 8 * 3
    for fmt in ("PNG", "WEBP"):
        m = bench.measure_pillow(fmt, bench.image_list(folder))
        assert m["round_trip"] == {"checked": 2, "exact": True} and m["bytes"] > 0
    if shutil.which("gzip"):
        m = bench.measure_tool("gzip -9", raw, repeats=1)
        assert m["round_trip"]["exact"] and m["tool"].startswith("gzip")
