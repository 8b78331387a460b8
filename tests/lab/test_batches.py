"""lab/batches.py: issue 33's device batches name real jobs that pass the checks, fit their
calls, cover the daggered runs, run small on the CPU, and land their records."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monarchpc.config import check_config
from monarchpc.paths import REPO_ROOT
from monarchpc.reports.records import load_runs
from monarchpc.train import run
from tests.helpers import TEXT8_PREFIX, compose_config

spec = importlib.util.spec_from_file_location("batches", REPO_ROOT / "lab" / "batches.py")
batches = importlib.util.module_from_spec(spec)
sys.modules["batches"] = batches  # (its dataclasses look their module up there)
spec.loader.exec_module(batches)

torch.set_num_threads(1)


def overrides(batch, job: str) -> list[str]:
    campaign = batches.CAMPAIGNS[batch.campaign]
    return [*campaign.common, *batches.job_lines(campaign)[job]]


ALL_JOBS = [(b, job) for b in batches.BATCHES for job, _ in b.jobs]


def test_batches_name_real_jobs_and_fit_their_calls() -> None:
    batches.check_batches()  # every job exists in its jobs file, none in two batches
    for b in batches.BATCHES:
        assert batches.makespan(b) <= batches.DEADLINE * b.calls, b.id
        assert all(seconds > 0 for _, seconds in b.jobs)
    assert batches.makespan(batches.Batch("x", "0", "text8_prefix", 2,
                                          [("a", 3), ("b", 5), ("c", 4)], "")) == 7
    # part 1 reruns exactly the published runs marked with the dagger
    daggered = {(Path(r.path).parent.name, r.name)
                for r in load_runs([REPO_ROOT / "docs/results/runs"]) if r.truncated_tf32}
    part1 = {(b.campaign, job) for b in batches.BATCHES if b.part == "1" for job, _ in b.jobs}
    assert len(daggered) == 14 and part1 == daggered
    # part 3 runs every job of its jobs file; part 2 the five sizes the issue names
    full = batches.CAMPAIGNS["tiny_imagenet_full"]
    assert {job for b, job in ALL_JOBS if b.part == "3"} == set(batches.job_lines(full))
    assert {job for b, job in ALL_JOBS if b.part == "2"} == {
        "t2-random-h65536", "t2-multiply-h65536", "b2-monarch2-h131072", "b2-hmm-h16384",
        "b2-monarch3-h65536"}


@pytest.mark.parametrize("batch, job", ALL_JOBS, ids=[job for _, job in ALL_JOBS])
def test_every_batch_job_passes_the_config_checks(batch, job: str) -> None:
    cfg = compose_config(overrides(batch, job))
    check_config(cfg)
    if batch.campaign == "tiny_imagenet_full":  # all the training images; dev from val
        assert cfg.dataset.train.endswith("train-first100.tar.xz")
        assert (cfg.dataset.dev_from, cfg.dataset.dev_fraction) == ("test", 0.5)


# ------------------------------------------------------------------- tiny versions

def write_tar(path: Path, n: int, seed: int) -> None:
    """A tar of ``n`` 64 x 64 JPEGs of random pixels."""
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
            info = tarfile.TarInfo(f"images/img_{i:03d}.JPEG")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))


def tiny(batch, job: str, tmp: Path) -> list[str]:
    """The job's overrides with data, sizes and length made tiny (its structure, init,
    schedule and data options kept), for two updates on the CPU."""
    settings = dict(o.split("=", 1) for o in overrides(batch, job))
    structure = settings["model"]
    settings["model.hidden_size"] = "16" if structure in ("hclt", "hmm") else "64"
    settings.update({"trainer.stop_after": "2", "trainer.eval_every": "1",
                     "trainer.device": "cpu", "trainer.cpu_threads": "1",
                     "trainer.precision": "fp32", "trainer.eval_batch_size": "256"})
    if batch.campaign == "text8_prefix":
        settings.update({"dataset.paths": f"[{TEXT8_PREFIX}]", "dataset.max_chars": "20000",
                         "dataset.seq_len": "32", "dataset.long_rows": "4",
                         "optim.batch_size": "64", "optim.accumulate": "2"})
        if settings.get("init") == "multiply":
            settings.update({"init.optim.batch_size": "256", "init.optim.epochs": "1"})
    else:
        settings.update({"dataset.train": str(tmp / "train.tar"),
                         "dataset.test": str(tmp / "val.tar"),
                         "dataset.cache": str(tmp / "cache"), "model.chow_liu_bins": "8",
                         "optim.batch_size": "128", "optim.accumulate": "2"})
    return [f"{k}={v}" for k, v in settings.items()]


NEW_JOBS = [(b, job) for b, job in ALL_JOBS if b.part in ("2", "3")]


@pytest.mark.slow
def test_a_tiny_version_of_every_new_job_runs(tmp_path: Path) -> None:
    write_tar(tmp_path / "train.tar", 24, seed=0)
    write_tar(tmp_path / "val.tar", 12, seed=1)
    for batch, job in NEW_JOBS:
        cfg = compose_config(tiny(batch, job, tmp_path), tmp_path / job)
        check_config(cfg)
        run(cfg)
        info = json.loads((tmp_path / job / "run.json").read_text())
        assert info["updates"] == 2 and info["status"] == "interrupted", job
        assert info["best"]["checkpoint"] == "best.pt", job
        if batch.campaign == "tiny_imagenet_full":
            assert info["data"]["images"] == {"train": 24, "dev": 6, "test": 6}, job


# ------------------------------------------------------------------- run and land

def test_run_then_land_brings_the_records_home(tmp_path: Path, monkeypatch) -> None:
    """``run`` on a GPU id (here the CPU: the tiny jobs pick it): one campaign process per
    batch, the finished runs' records packed in records.tar.gz and the summaries as
    campaign-<batch>.log; ``land`` puts them into the runs folder, over older records of the
    same names."""
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("# two tiny runs\nsmall-a: model.hidden_size=4\nsmall-b: seed=1\n")
    common = ["dataset=synthetic", "dataset.n_train=64", "dataset.n_dev=16",
              "dataset.n_test=16", "dataset.seq_len=8", "model=hmm", "model.hidden_size=8",
              "optim.batch_size=16", "optim.epochs=1", "trainer.device=cpu",
              "trainer.cpu_threads=1", "logger=none", "trainer.progress=false"]
    monkeypatch.setitem(batches.CAMPAIGNS, "tiny", batches.Campaign(str(jobs), common, ""))
    batch = batches.Batch("T-1", "0", "tiny", 2, [("small-a", 1), ("small-b", 1)], "")
    monkeypatch.setitem(batches.BY_ID, "T-1", batch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    out = tmp_path / "out"
    monkeypatch.setenv("OUT", str(out))
    batches.cmd_run(["T-1"], 120, work=tmp_path / "work")
    assert (out / "records.tar.gz").is_file()
    log = (out / "campaign-T-1.log").read_text()
    assert "| small-a | finished |" in log and "| small-b | finished |" in log
    runs = tmp_path / "runs"
    (runs / "tiny" / "small-a").mkdir(parents=True)
    (runs / "tiny" / "small-a" / "stale.json").write_text("{}")  # of the run it replaces
    batches.cmd_land(out, runs)
    for name in ("small-a", "small-b"):
        landed = runs / "tiny" / name
        assert sorted(p.name for p in landed.iterdir()) == ["config.yaml", "metrics.jsonl",
                                                           "run.json"]
        text = (landed / "run.json").read_text() + (landed / "config.yaml").read_text()
        assert str(tmp_path) not in text and str(REPO_ROOT) not in text
        info = json.loads((landed / "run.json").read_text())
        assert info["status"] == "finished" and info["gpu_seconds"] > 0
    assert (runs / "tiny" / "campaign-T-1.log").read_text() == log
