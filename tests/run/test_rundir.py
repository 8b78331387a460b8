"""Run directories: one run at a time (a lock naming its holder, taken over from a dead
process), resume checks, and .hydra/ written only by runs that pass their checks."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import yaml
from omegaconf import DictConfig

from monarchpc import checkpoint
from monarchpc.errors import ConfigError
from monarchpc.paths import REPO_ROOT
from monarchpc.run.rundir import LOCK, RunLock, check_resume, write_hydra_files

HOLDER = """
import sys, time
from monarchpc.run.rundir import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_holder_fails_at_once_naming_pid_and_host(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with RunLock(run_dir) as lock:
        holder = yaml.safe_load((run_dir / LOCK).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(ConfigError) as err:
            RunLock(run_dir).acquire()  # another open file: flock conflicts in one process too
        message = str(err.value)
        assert f"in use by pid {os.getpid()} on host {socket.gethostname()}" in message
        assert "another run_name" in message and "\n" not in message
        assert lock.fd is not None
    assert not (run_dir / LOCK).exists()  # released and removed
    with RunLock(run_dir):  # free again
        pass


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path: Path, caplog) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], text=True,
                            stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"in use by pid {proc.pid} on host"):
            RunLock(run_dir).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (run_dir / f"{checkpoint.FILENAME}.{proc.pid}.tmp").write_bytes(b"half a checkpoint")
    with caplog.at_level(logging.WARNING), RunLock(run_dir):
        assert yaml.safe_load((run_dir / LOCK).read_text())["pid"] == os.getpid()
        assert not list(run_dir.glob("*.tmp"))  # the killed writer's leftovers are gone
    assert f"took over the lock of pid {proc.pid}" in caplog.text


def test_resume_needs_a_checkpoint_and_a_fresh_run_needs_none(tmp_path: Path) -> None:
    assert check_resume(tmp_path, resume=False) is False
    with pytest.raises(ConfigError, match=r"resume=true but .* holds no checkpoint\.pt"):
        check_resume(tmp_path, resume=True)
    (tmp_path / checkpoint.FILENAME).write_bytes(b"x")
    assert check_resume(tmp_path, resume=True) is True
    with pytest.raises(ConfigError, match=r"already holds a run .*pass resume=true"):
        check_resume(tmp_path, resume=False)


def run_hydra_app(task, overrides: list[str]) -> None:
    """Run ``task`` as the project's Hydra app (configs/train.yaml) with ``overrides``."""
    app = hydra.main(version_base="1.3", config_path=str(REPO_ROOT / "configs"),
                     config_name="train")(task)
    argv = sys.argv
    sys.argv = ["train", "logger=none", "hydra/job_logging=none",
                "hydra/hydra_logging=none", *overrides]
    try:
        app()
    finally:
        sys.argv = argv


def test_hydra_files_are_written_only_by_runs_that_pass_their_checks(tmp_path: Path) -> None:
    """With hydra.output_subdir=null Hydra writes nothing; write_hydra_files then writes the
    same config.yaml and overrides.yaml as Hydra does, and a rejected call writes none."""
    task_overrides = ["model=hmm", "model.hidden_size=32", "run_name=r"]
    run_hydra_app(lambda cfg: None, [*task_overrides, f"hydra.run.dir={tmp_path / 'hydra'}",
                                     "hydra.output_subdir=.hydra"])  # Hydra's own writing

    def checked(cfg: DictConfig) -> None:
        write_hydra_files(tmp_path / "ours", cfg)

    run_hydra_app(checked, [*task_overrides, f"hydra.run.dir={tmp_path / 'ours'}",
                            "hydra.output_subdir=null"])
    for name in ("config.yaml", "overrides.yaml"):
        assert (tmp_path / "ours" / ".hydra" / name).read_text() == \
            (tmp_path / "hydra" / ".hydra" / name).read_text(), name
    ours = yaml.safe_load((tmp_path / "ours" / ".hydra" / "hydra.yaml").read_text())
    assert ours["hydra"]["runtime"]["output_dir"] == str(tmp_path / "ours")

    existing = tmp_path / "ours" / ".hydra" / "overrides.yaml"
    before = existing.read_text()

    def rejected(cfg: DictConfig) -> None:
        raise ConfigError("rejected before any write")

    with pytest.raises(SystemExit):  # Hydra's exit for a failed task
        run_hydra_app(rejected, ["model.hidden_size=64", f"hydra.run.dir={tmp_path / 'ours'}",
                                 "hydra.output_subdir=null"])
    assert existing.read_text() == before
