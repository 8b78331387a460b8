"""The benchmarks' records: one JSON line per result, printed and written to a file.

A benchmark writes under ``outputs/bench/`` unless asked for a record (``--record``: into
``docs/results/device/``, where the files the docs cite live) or given ``--out``. Shared by
the benchmarks (it imports nothing of Triton, so those that run under the Triton
interpreter may import it before setting TRITON_INTERPRET).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from monarchpc.paths import REPO_ROOT

RECORDS = REPO_ROOT / "docs" / "results" / "device"
OUTPUTS = REPO_ROOT / "outputs" / "bench"


def device_tag(device: torch.device) -> str:
    """A short name for the device in file names: h100, h200, ... (else the lowercased
    name), or cpu."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    for tag in ("h100", "h200", "b200", "a100"):
        if tag in name:
            return tag
    return "".join(c if c.isalnum() else "_" for c in name)


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--out`` and ``--record`` (see :func:`destination`)."""
    parser.add_argument("--out", default=None,
                        help="write the JSON lines to this file ('' for none; default "
                             "outputs/bench/<name>)")
    parser.add_argument("--record", action="store_true",
                        help="write into docs/results/device/<name>: a record the docs cite")


def destination(args: argparse.Namespace, name: str) -> str:
    """The file a benchmark writes: ``--out`` when given ('' for none), else ``name``
    under docs/results/device (``--record``) or outputs/bench; its folder is created."""
    folder = RECORDS if args.record else OUTPUTS
    path = args.out if args.out is not None else str(folder / name)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return path


class JsonLines:
    """``record(row)`` prints ``row`` as one JSON line and writes it to ``path`` (flushed at
    once, so an interrupted run keeps its rows); no file when ``path`` is empty or None.
    ``mode``: ``w`` starts the file afresh, ``a`` appends."""

    def __init__(self, path: str | None, mode: str = "w") -> None:
        self.file = open(path, mode) if path else None  # noqa: SIM115 (closed in close())

    def __call__(self, row: dict[str, Any]) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()
