"""Measure compression: monarchpc beside gzip, bzip2, xz, zstd, PNG and WebP, as records.

    python -m monarchpc.bench compression --text-run outputs/<char run> \
        --image-run outputs/<image run> --record  # = make compression-bench TEXT_RUN= IMAGE_RUN=
    python -m monarchpc.bench compression --text-run outputs/<another run> --no-baselines

Every measurement is a round trip whose output is checked against its input (bytes of the
text, pixels of every image) and becomes one JSON record in ``docs/results/compression/``
(:func:`write_record`; no absolute path of this machine): bits per unit, bytes, seconds and
MB/s of compression and decompression (MB of raw input: characters, or pixel bytes H W 3),
and for monarchpc the model's own NLL of the same data. ``monarchpc.reports.compression``
builds the table and figure from the records (``make results``).

Data: the text8 prefix's test split (its last 625,000 characters, the project's 90/5/5
split of ../shared/data/text8_prefix) and the first N Tiny ImageNet validation images
(val_0 .. val_{N-1}.JPEG of ../shared/data/tiny_imagenet; 64 x 64, 2% greyscale). The
general-purpose tools get the text file, and for images the images' raw RGB pixels
concatenated (one file, H W 3 bytes each); PNG and WebP (lossless, through Pillow) code
every image on its own, in its own mode. monarchpc times are the coding only (model loaded,
torch imported), one thread.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import lzma
import os
import platform
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monarchpc.paths import REPO_ROOT
from monarchpc.use.compress import compress_file, decompress_file, load_model, read_image_file
from monarchpc.use.load import run_info

SCHEMA = "monarchpc.compression/1"
TEXT8_PREFIX = "text8_prefix/text8_first12500000.xz"
TINY_VAL = "tiny_imagenet/tiny-imagenet-200_val.tar"
TEXT_KEY, IMAGE_KEY = "text8_prefix_test", "tiny_imagenet_val"
TOOLS: dict[str, tuple[list[str], list[str]]] = {
    "gzip -9": (["gzip", "-9", "-c"], ["gzip", "-d", "-c"]),
    "bzip2 -9": (["bzip2", "-9", "-c"], ["bzip2", "-d", "-c"]),
    "xz -9e": (["xz", "-9e", "-c"], ["xz", "-d", "-c"]),
    "zstd --ultra -22": (["zstd", "--ultra", "-22", "-q", "-c"], ["zstd", "-d", "-q", "-c"]),
}


# -------------------------------------------------------------------------------- data

def text8_prefix_test(shared: Path, work: Path) -> Path:
    """The text8 prefix's test split (its last 5%, 625,000 characters) as a file."""
    out = work / "text8_prefix_test.txt"
    if not out.is_file():
        with lzma.open(shared / TEXT8_PREFIX) as f:
            text = f.read()
        n_test = int(len(text) * 0.05)  # monarchpc.data.chars.fraction_sizes, last split
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(text[len(text) - n_test:])
    return out


def tiny_imagenet_val(shared: Path, work: Path, n: int = 100) -> Path:
    """A folder of the first ``n`` Tiny ImageNet validation images (val_0 .. val_{n-1})."""
    out = work / f"tiny_imagenet_val{n}"
    names = [f"val_{i}.JPEG" for i in range(n)]
    if not all((out / name).is_file() for name in names):
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(shared / TINY_VAL) as tar:
            for name in names:
                member = tar.extractfile(f"tiny-imagenet-200/val/images/{name}")
                assert member is not None
                (out / name).write_bytes(member.read())
    return out


def image_list(folder: Path) -> list[Path]:
    """The images of a bench folder in numeric order (val_0, val_1, ..., val_10, ...)."""
    def key(p: Path) -> tuple:
        return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name))

    return sorted((p for p in folder.iterdir() if p.is_file()), key=key)


def raw_pixels(folder: Path, work: Path) -> Path:
    """The images' RGB pixels (H W 3 bytes each, greyscale as R = G = B) in one file."""
    out = work / f"{folder.name}.rgb"
    out.write_bytes(b"".join(read_image_file(p)[0].tobytes() for p in image_list(folder)))
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------ measurements

def _best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def tool_version(argv0: str) -> str:
    out = subprocess.run([argv0, "--version"], capture_output=True, text=True)
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else argv0


def measure_tool(name: str, file: Path, repeats: int = 3) -> dict[str, Any]:
    """Round trip of ``file`` through a command-line compressor (best of ``repeats``)."""
    enc, dec = TOOLS[name]
    data = file.read_bytes()
    t_enc, packed = _best_of(lambda: subprocess.run(
        [*enc, str(file)], capture_output=True, check=True).stdout, repeats)
    t_dec, back = _best_of(lambda: subprocess.run(
        dec, input=packed, capture_output=True, check=True).stdout, repeats)
    if back != data:
        raise RuntimeError(f"{name} did not return {file.name} exactly")
    return {"method": name, "family": "general", "tool": tool_version(enc[0]),
            "bytes": len(packed), "compress_seconds": t_enc, "decompress_seconds": t_dec,
            "round_trip": {"checked": 1, "exact": True}}


def measure_pillow(fmt: str, files: list[Path], repeats: int = 1) -> dict[str, Any]:
    """Every image coded on its own as lossless PNG (optimize) or WebP (quality 100,
    method 6), decoded and compared pixel by pixel."""
    from PIL import Image, features

    sources = []
    for f in files:
        with Image.open(f) as im:
            im.load()
            sources.append(im.copy())
    options = {"PNG": {"optimize": True},
               "WEBP": {"lossless": True, "quality": 100, "method": 6}}[fmt]

    def encode() -> list[bytes]:
        out = []
        for im in sources:
            buf = io.BytesIO()
            im.save(buf, fmt, **options)
            out.append(buf.getvalue())
        return out

    def decode(blobs: list[bytes]) -> list[np.ndarray]:
        return [np.asarray(Image.open(io.BytesIO(b)).convert(im.mode))
                for b, im in zip(blobs, sources, strict=True)]

    t_enc, blobs = _best_of(encode, repeats)
    t_dec, pixels = _best_of(lambda: decode(blobs), repeats)
    exact = sum(np.array_equal(p, np.asarray(im)) for p, im in zip(pixels, sources, strict=True))
    if exact != len(files):
        raise RuntimeError(f"{fmt} changed the pixels of {len(files) - exact} images")
    version = features.version("webp") if fmt == "WEBP" else features.version("zlib")
    label = "PNG (optimize)" if fmt == "PNG" else "WebP lossless (q100, m6)"
    return {"method": label, "family": "image codec",
            "tool": f"Pillow {Image.__version__}, lib{'webp' if fmt == 'WEBP' else 'z'} "
                    f"{version}",
            "bytes": sum(map(len, blobs)), "compress_seconds": t_enc,
            "decompress_seconds": t_dec, "round_trip": {"checked": len(files), "exact": True}}


def model_info(run_dir: Path) -> dict[str, Any]:
    """What identifies and describes the run (from run.json and config.yaml)."""
    from monarchpc.use.compress import run_id

    info = run_info(run_dir)
    _, config = load_model(run_dir)
    final = info.get("final") or {}
    return {"run": run_dir.name, "checkpoint_sha256_16": run_id(run_dir).hex(),
            "structure": info.get("structure"), "block": info.get("block"),
            "k": info.get("k"), "hidden_size": info.get("hidden_size"),
            "madds_per_token": info.get("madds_per_token"),
            "dataset": config.dataset.name,
            "image_size": config.dataset.get("image_size"),
            "epochs": config.optim.epochs, "updates": info.get("updates"),
            "test_metric_recorded": {k: v for k, v in final.items() if k.startswith("test")},
            "trained_on": "this CPU"}


def measure_monarchpc(run_dir: Path, path: Path, work: Path, **options: Any) -> dict[str, Any]:
    """Round trip of a text file or a folder of images through the commands' functions."""
    packed = work / f"{path.name}.mpc"
    out = work / f"{path.name}.decoded"
    if out.is_dir():
        shutil.rmtree(out)
    enc = compress_file(run_dir, path, packed, **options)
    dec = decompress_file(run_dir, packed, out)
    if path.is_dir():
        from PIL import Image

        files = image_list(path)
        for f in files:
            with Image.open(f) as a, Image.open(out / f.with_suffix(".png").name) as b:
                if a.mode != b.mode or not np.array_equal(np.asarray(a), np.asarray(b)):
                    raise RuntimeError(f"monarchpc did not rebuild the pixels of {f.name}")
        checked = len(files)
    else:
        if out.read_bytes() != path.read_bytes():
            raise RuntimeError(f"monarchpc did not return {path.name} exactly")
        checked = 1
    settings = {k: v for k, v in options.items() if v}
    settings.update(lanes=enc["lanes"], threads=options.get("threads", 1))
    return {"method": "monarchpc", "family": "model", "model": model_info(run_dir),
            "settings": settings, "bytes": enc["bytes"], "header_bytes": enc["header_bytes"],
            "state_bytes": enc["state_bytes"], "nll_bits": enc["nll_bits"],
            "compress_seconds": enc["seconds"], "decompress_seconds": dec["seconds"],
            "round_trip": {"checked": checked, "exact": True}}


# ----------------------------------------------------------------------------- records

def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        names = re.findall(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = names[0].strip() if names else cpu
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "numpy": np.__version__, "note": "cores shared with other jobs: speeds are noisy"}


def finish_record(measured: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """A record: the measurement with its data set's description and derived numbers."""
    units, raw = data["units"], data["raw_bytes"]
    rec = {"schema": SCHEMA, **data, **measured}
    rec["bits_per_unit"] = 8 * measured["bytes"] / units
    if "nll_bits" in measured:
        rec["model_nll_bits_per_unit"] = measured["nll_bits"] / units
        rec["over_nll_percent"] = 100 * (8 * measured["bytes"] / measured["nll_bits"] - 1)
        payload = 8 * (measured["bytes"] - measured["header_bytes"])
        rec["payload_over_nll_percent"] = 100 * (payload / measured["nll_bits"] - 1)
    rec["compress_mb_per_s"] = raw / 1e6 / measured["compress_seconds"]
    rec["decompress_mb_per_s"] = raw / 1e6 / measured["decompress_seconds"]
    rec["machine"] = machine()
    rec["date"] = datetime.date.today().isoformat()
    return rec


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def write_record(rec: dict[str, Any], out: Path) -> Path:
    """``<out>/<data>__<method>[__<run>].json``."""
    name = f"{rec['data']}__{slug(rec['method'])}"
    if rec.get("model"):
        name += f"__{slug(rec['model']['run'])}"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
    return path


def text_data(file: Path) -> dict[str, Any]:
    n = file.stat().st_size
    return {"data": TEXT_KEY, "data_label": "text8 prefix, test split (last 625,000 chars)",
            "file": {"name": file.name, "sha256": sha256(file)},
            "unit": "character", "units": n, "raw_bytes": n}


def image_data(folder: Path, raw: Path) -> dict[str, Any]:
    n = raw.stat().st_size
    return {"data": IMAGE_KEY,
            "data_label": f"Tiny ImageNet validation, first {len(image_list(folder))} "
                          f"images (64 x 64)",
            "file": {"name": raw.name, "sha256": sha256(raw),
                     "images": len(image_list(folder))},
            "unit": "dimension", "units": n, "raw_bytes": n}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text-run", type=Path, help="a character run directory")
    p.add_argument("--image-run", type=Path, help="an image (HCLT) run directory")
    p.add_argument("--images", type=int, default=100, help="Tiny ImageNet validation images")
    p.add_argument("--shared", type=Path, default=REPO_ROOT.parent / "shared" / "data",
                   help="the folder holding text8_prefix/ and tiny_imagenet/ (developers' data)")
    p.add_argument("--work", type=Path, default=REPO_ROOT / "outputs" / "bench")
    p.add_argument("--out", type=Path, default=None,
                   help="the records' folder (default outputs/bench/compression)")
    p.add_argument("--record", action="store_true",
                   help="write the records into docs/results/compression (make results reads)")
    p.add_argument("--no-baselines", action="store_true", help="monarchpc rows only")
    p.add_argument("--row", type=int, default=0, help="text: row length (0: the default)")
    p.add_argument("--batch", type=int, default=0, help="rows/patches per model pass")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = (REPO_ROOT / "docs" / "results" if args.record else args.work) / "compression"
    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    options = {"batch": args.batch, "threads": args.threads}

    records = []
    text = text8_prefix_test(args.shared, work)
    text_input = text_data(text)
    if args.text_run:
        records.append(finish_record(measure_monarchpc(
            args.text_run, text, work, **options, **({"row": args.row} if args.row else {})),
            text_input))
    folder = tiny_imagenet_val(args.shared, work, args.images)
    raw = raw_pixels(folder, work)
    image_input = image_data(folder, raw)
    if args.image_run:
        records.append(finish_record(
            measure_monarchpc(args.image_run, folder, work, **options), image_input))
    if not args.no_baselines:
        for name, (enc, _) in TOOLS.items():
            if shutil.which(enc[0]) is None:
                print(f"skipped {name}: {enc[0]} is not installed")
                continue
            records.append(finish_record(measure_tool(name, text), text_input))
            records.append(finish_record(measure_tool(name, raw), image_input))
        files = image_list(folder)
        for fmt in ("PNG", "WEBP"):
            records.append(finish_record(measure_pillow(fmt, files), image_input))
    for rec in records:
        path = write_record(rec, args.out)
        extra = (f" (model NLL {rec['model_nll_bits_per_unit']:.4f}, "
                 f"{rec['over_nll_percent']:+.2f}%)" if "model_nll_bits_per_unit" in rec else "")
        print(f"{rec['data']:<18} {rec['method']:<26} {rec['bits_per_unit']:.4f} bits/"
              f"{rec['unit']}{extra}, {rec['compress_mb_per_s']:.3g} / "
              f"{rec['decompress_mb_per_s']:.3g} MB/s -> {path}")
