"""``pytest --gpu-record DIR``: one JSON record of a test run (the GPU tier's, by
``make test-gpu``) at DIR/test_gpu_<device>.json: device, versions, each test's outcome,
seconds and message (failure's last line, or skip reason), and the counts. Hooks in the
root conftest call :func:`collect` and :func:`write`; nothing happens without the option."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import pytest
import torch

RESULTS: dict[str, dict[str, Any]] = {}


def collect(report: pytest.TestReport) -> None:
    """Keep a test's outcome: a failed or skipped setup, else its call (and a failing
    teardown over a passed call)."""
    entry = RESULTS.setdefault(report.nodeid, {"test": report.nodeid, "outcome": "passed",
                                               "seconds": 0.0, "message": None})
    entry["seconds"] += report.duration
    if report.skipped:
        entry["outcome"] = "skipped"
        longrepr = report.longrepr
        entry["message"] = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    elif report.failed:
        entry["outcome"] = "failed" if report.when == "call" else "error"
        entry["message"] = str(report.longrepr).strip().splitlines()[-1][:500]


def write(folder: str, exitstatus: int, args: list[str]) -> Path:
    """The record of the collected results into ``folder`` (created); returns its path.
    ``args``: pytest's, recorded without ``--gpu-record=DIR`` (a machine's path)."""
    from monarchpc.bench.recipe import git_commit, versions
    from monarchpc.bench.records import device_tag

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    tests = sorted(RESULTS.values(), key=lambda r: r["test"])
    counts = {k: sum(t["outcome"] == k for t in tests)
              for k in ("passed", "failed", "error", "skipped")}
    record = {"what": "the GPU test tier: CUDA-graph replay, TF32 operand rounding, the fp32 "
                      "fallback at 32^3, bf16 bands (tests marked gpu, tests/gpu)",
              "device": torch.cuda.get_device_name(device) if cuda else "cpu",
              "date": time.strftime("%Y-%m-%d"), "commit": git_commit(),
              "versions": versions() | {"platform": platform.machine()},
              "command": "pytest " + " ".join(a for a in args if not a.startswith(
                  "--gpu-record")), "exit_status": exitstatus,
              "counts": counts, "tests": tests}
    path = Path(folder) / f"test_gpu_{device_tag(device)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path
