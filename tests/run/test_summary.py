"""The sweep summary (monarchpc/summary.py): a real multirun through the CLI, and failed jobs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.core.utils import JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf

from monarchpc.paths import REPO_ROOT
from monarchpc.run.summary import ERROR_FILE, SweepSummary, write_summary


@pytest.mark.slow
def test_multirun_writes_and_prints_its_summary(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "monarchpc.train", "-m", "logger=none", "trainer.progress=false",
         "model=hmm,monarch2_hmm", "model.hidden_size=16", "dataset=synthetic",
         "dataset.n_train=64", "optim.epochs=1", f"paths.output_dir={tmp_path}",
         f"hydra.sweep.dir={sweep}"], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    md = (sweep / "summary.md").read_text()
    assert md in proc.stdout  # printed at the end of the multirun
    assert "2 jobs; shared overrides: " in md and "model.hidden_size=16" in md
    rows = list(csv.DictReader((sweep / "summary.csv").read_text().splitlines()))
    assert [r["job"] for r in rows] == ["0", "1"]
    for r in rows:
        info = json.loads((sweep / r["dir"] / "run.json").read_text())
        assert r["status"] == "finished" == info["status"]
        assert float(r["test_bpc"]) == info["final"]["test_bpc"]
        assert int(r["madds_per_token"]) == info["madds_per_token"]
        assert "model=" + ("hmm" if info["block"] == "dense" else "monarch2_hmm") in \
            r["overrides"]
        last = json.loads((sweep / r["dir"] / "metrics.jsonl").read_text().splitlines()[-1])
        assert float(r["train_seconds"]) == last["wall_time"]
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {r['job']} |"))
        assert f"| {float(r['dev_bpc']):.4f} |" in line and f"| {r['dir']} |" in line
    header = next(ln for ln in md.splitlines() if ln.startswith("| job |"))
    assert header.startswith("| job | model | status | dev_bpc | test_bpc |")


def test_failed_job_gets_its_error_in_the_summary(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for num, value in ((0, "a"), (1, "b")):
        job = sweep / f"{num}-x"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- seed=1\n- model={value}\n")
        (job / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
    config = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(sweep / "1-x")},
                                         "sweep": {"dir": str(sweep)},
                                         "mode": RunMode.MULTIRUN}})
    failed = SimpleNamespace(status=JobStatus.FAILED,
                             _return_value=ValueError("range() arg 3 must not be zero"))
    SweepSummary().on_job_end(config, failed)
    assert (sweep / "1-x" / ERROR_FILE).read_text() == \
        "ValueError: range() arg 3 must not be zero\n"
    md = (sweep / "summary.md").read_text()
    assert "| 0 | a | not started |" in md
    assert "| 1 | b | failed: ValueError: range() arg 3 must not be zero |" in md
    assert "shared overrides: seed=1" in md
    assert write_summary(sweep) == md
