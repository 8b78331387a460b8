"""Data parallel training (gloo on the CPU): 2 ranks give the parameters and records of 1
rank at the same effective batch, checkpoints resume under another world size, and ranks
agree on the run directory and on when to stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from monarchpc import checkpoint
from monarchpc.paths import REPO_ROOT
from monarchpc.run.distributed import Dist, cluster_env, first_host
from monarchpc.run.interrupt import StopRequest
from monarchpc.train import run
from tests.helpers import compose_config

# 257 training rows in micro-batches of 32: the 9th micro-batch holds 1 row, so rank 1's
# share of it is empty, and with accumulate=2 it is an update of its own (5 per epoch)
# where rank 1 has no flows at all.
SMALL = ["dataset=synthetic", "dataset.n_train=257", "dataset.n_dev=63", "dataset.n_test=64",
         "model=monarch2_hmm", "model.hidden_size=16", "optim.batch_size=32",
         "optim.accumulate=2", "optim.epochs=3", "trainer.eval_every=3"]


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if k != "wall_time"} for ln in lines]


def assert_same_run(a: Path, b: Path) -> None:
    """Same parameters (up to float summation order) and the same records."""
    pa, pb = checkpoint.load(a)["model"], checkpoint.load(b)["model"]
    for key in pa:
        torch.testing.assert_close(pa[key], pb[key], rtol=1e-5, atol=1e-7, msg=key)
    ra, rb = records(a), records(b)
    assert [r["update"] for r in ra] == [r["update"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-9), key


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Ranks run one thread each (as torchrun sets); on a busy 2-core machine two threads
    per process make these tiny runs 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: SMALL on one process."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    run(compose_config(SMALL, run_dir))
    first = checkpoint.load(run_dir)
    assert first["trainer"]["update"] == 15
    return run_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_ranks_equal_one_process(single: Path, tmp_path: Path) -> None:
    # Each rank names its own run (r0, r1), as clocks a second apart would: rank 0's wins.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "monarchpc.train", "logger=none", "trainer.progress=false", *SMALL,
         f"paths.output_dir={tmp_path}", "run_name=r${oc.env:RANK}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r0"], proc.stderr
    info = json.loads((tmp_path / "r0" / "run.json").read_text())
    assert info["world_size"] == 2 and info["rank_divergence"] == 0.0
    assert info["status"] == "finished" and info["updates"] == 15
    assert_same_run(single, tmp_path / "r0")
    recs = records(tmp_path / "r0")  # and they learned
    assert recs[-1]["dev_bpc"] < recs[0]["dev_bpc"] - 0.1


def _rank(rank: int, world: int, port: int, overrides: list[str], run_dir: Path) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    run(compose_config(overrides, run_dir))


@pytest.mark.slow
def test_checkpoints_resume_under_another_world_size(single: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run(compose_config([*SMALL, "trainer.stop_after=4"], run_dir))  # 1 rank: updates 1-4
    mp.start_processes(_rank, args=(2, free_port(), [*SMALL, "resume=true",  # 2 ranks: 5-8
                                                      "trainer.stop_after=8"], run_dir),
                       nprocs=2, start_method="spawn")
    info = json.loads((run_dir / "run.json").read_text())
    assert (info["status"], info["updates"], info["world_size"]) == ("interrupted", 8, 2)
    run(compose_config([*SMALL, "resume=true"], run_dir))  # 1 rank again: 9-15
    assert_same_run(single, run_dir)


def test_shards_cover_every_row_once() -> None:
    rows = torch.arange(7)
    for world in (1, 2, 3, 8):
        shares = [Dist(rank=r, world=world).shard(rows) for r in range(world)]
        assert torch.equal(torch.cat(shares), rows)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_cluster_env_from_srun_and_submitit() -> None:
    srun = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1",
            "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NODELIST": "gpu[007-008]",
            "SLURM_JOB_ID": "123456"}
    assert cluster_env(srun) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                                 "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "gpu007",
                                 "MASTER_PORT": "23456"}  # 20000 + the job id mod 40000
    assert cluster_env({**srun, "WORLD_SIZE": "8"}) == {}  # torchrun inside srun: its own
    assert cluster_env({**srun, "SLURM_STEP_NUM_TASKS": "1"}) == {}
    assert cluster_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}) == {}  # batch script
    local = {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_GLOBALID": "1",
             "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_LOCALID": "1",
             "SUBMITIT_LOCAL_JOB_ID": "4242"}
    env = cluster_env(local)
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"]) == ("1", "2", "127.0.0.1")
    assert env["MASTER_PORT"] == "24242" and env["LOCAL_WORLD_SIZE"] == "2"
    array_task = {**srun, "SLURM_JOB_ID": "7654321_3"}  # the digits of the id: 76543213
    assert cluster_env(array_task)["MASTER_PORT"] == "43213"
    assert first_host("node1,node2") == "node1" and first_host("a-b[3,5-9]") == "a-b3"


def test_deferred_stop_waits_for_agreement() -> None:
    with StopRequest(deferred=True) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.pending and not stop.requested
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.pending and stop.requested


def test_slurm_launcher_config_composes_with_the_plugin() -> None:
    # the plugin is in the dev extra, so this runs wherever the tests do (never skipped)
    import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    # the plugin's SlurmLauncher with monarchpc's requeue hook (resume from the checkpoint)
    from hydra_plugins import monarchpc_launcher

    assert launcher._target_ == "hydra_plugins.monarchpc_launcher.SlurmLauncher"
    bases = [f"{c.__module__}.{c.__name__}" for c in monarchpc_launcher.SlurmLauncher.__mro__]
    # (by name: Hydra's plugin scan may load the plugin's module a second time)
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in bases
    assert launcher.max_num_timeout > 0  # a job that hits its time limit is requeued
    assert launcher.tasks_per_node == 4 and launcher.nodes == 1
    assert "export NCCL_NVLS_ENABLE=0" in launcher.setup
