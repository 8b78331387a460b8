"""Fault injection on a run directory and a run's ending (issue 29): planted links, a lock
file naming a live process, a file-size limit, models too large for memory, signals (exit
128 + signal, SLURM requeue), sweeps. Each probe would fail without its fix."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from monarchpc import memory
from monarchpc.circuits.blocks import BlockSpec
from monarchpc.errors import ConfigError, DataError, Interrupted
from monarchpc.files import atomic_write, write_failure
from monarchpc.paths import REPO_ROOT
from monarchpc.run import interrupt, requeue
from monarchpc.run.rundir import RunLock
from monarchpc.structures import STRUCTURES
from monarchpc.train import run
from tests.helpers import compose_config

TINY = ["dataset=synthetic", "dataset.n_train=128", "dataset.n_dev=32", "dataset.n_test=32",
        "model=hmm", "model.hidden_size=8", "optim.batch_size=32", "optim.epochs=1",
        "trainer.eval_every=1000", "trainer.eval_at_start=false", "trainer.long_eval=never",
        "trainer.cpu_threads=1"]
LONG = [*TINY, "optim.epochs=100000", "trainer.checkpoint_every=1"]


# ----------------------------------------------------------------------- planted links

@pytest.mark.parametrize("name", ["run.lock", "metrics.jsonl", "train.log"])
def test_a_planted_link_in_a_run_directory_is_never_written_through(tmp_path: Path,
                                                                    name: str) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("do not touch\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / name).symlink_to(victim)
    with pytest.raises(DataError, match=f"{name} is a symbolic link .*remove the link") as err:
        run(compose_config(TINY, run_dir))
    assert "\n" not in str(err.value)
    assert victim.read_text() == "do not touch\n"


@pytest.mark.parametrize("name", ["config.yaml", "run.json", "checkpoint.pt.tmp"])
def test_files_written_atomically_replace_a_link_not_its_target(tmp_path: Path,
                                                                name: str) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("do not touch\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    link = run_dir / (f"checkpoint.pt.{os.getpid()}.tmp" if name.endswith(".tmp") else name)
    link.symlink_to(victim)
    run(compose_config(TINY, run_dir))
    assert victim.read_text() == "do not touch\n"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


def test_atomic_write_refuses_a_link_at_its_temporary_file(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("do not touch\n")
    target = tmp_path / "out.json"
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    tmp.symlink_to(victim)
    monkeypatch.setattr(Path, "is_symlink", lambda self: False)  # a link planted just then
    with pytest.raises(DataError, match="is a symbolic link"):
        atomic_write(target, lambda f: f.write(b"new"))
    assert victim.read_text() == "do not touch\n" and not target.exists()


# ----------------------------------------------------------------------------- lock

def test_a_lock_file_naming_a_live_process_is_not_said_to_have_ended(tmp_path: Path,
                                                                     caplog) -> None:
    """A copied run directory's run.lock names pid 1 of this host: alive, but not holding
    the lock; the take-over message must not say that process ended."""
    (tmp_path / "run.lock").write_text(json.dumps({"pid": 1, "host": socket.gethostname(),
                                                   "started": "earlier"}))
    with caplog.at_level("WARNING"), RunLock(tmp_path):
        pass
    assert "pid 1 is alive but is not that run" in caplog.text
    assert "ended" not in caplog.text


# ---------------------------------------------------------------------- write failures

def test_a_file_size_limit_is_named_not_the_free_space(tmp_path: Path) -> None:
    message = write_failure(OSError(errno.EFBIG, "File too large"), tmp_path)
    assert "file-size limit" in message and "ulimit -f" in message and "free" not in message
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))\n"
            "from pathlib import Path\nfrom monarchpc.files import atomic_write\n"
            "from monarchpc.errors import DataError\n"
            "try:\n    atomic_write(Path(sys.argv[1]), lambda f: f.write(b'x' * 100000))\n"
            "except DataError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "big.bin")],
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert "file-size limit of this process is 4,096 bytes" in out.stdout, out
    assert "GB free" not in out.stdout and not list(tmp_path.glob("*.tmp"))


# ------------------------------------------------------------------------------ memory

@pytest.mark.parametrize("hidden", [2 ** 20, 2 ** 40])
def test_a_model_too_large_for_memory_is_refused_before_anything(tmp_path: Path,
                                                                 hidden: int) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=rf"model.hidden_size={hidden} .*needs about .* GB, "
                                          r"but only .* GB of RAM is free now") as err:
        run(compose_config([*TINY, f"model.hidden_size={hidden}"], run_dir))
    assert "\n" not in str(err.value)
    assert not run_dir.exists()  # no lock, no data read, no directory


def test_the_memory_bound_uses_the_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 1000)
    memory.check_fits("x", 800, "cpu", "fix", ValueError)  # 80%: allowed
    with pytest.raises(ValueError, match=r"x needs about 8\.01e-07 GB, but only 1e-06 GB"):
        memory.check_fits("x", 801, "cpu", "fix", ValueError)
    spec = BlockSpec.monarch((4, 4))  # two layers of h x 4, initial 16, emission 16 x 10
    assert STRUCTURES["hmm"].parameters(spec, 10, 1) == 2 * 16 * 4 + 16 + 160


# ---------------------------------------------------------------------------- signals

def signal_when_training(run_dir: Path, signum: int) -> threading.Thread:
    """Send ``signum`` to this process once the run has checkpointed an update."""
    def send() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if json.loads((run_dir / "run.json").read_text())["updates"] >= 1:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)
        os.kill(os.getpid(), signum)
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_the_run_as_interrupted_not_finished(tmp_path: Path, signum: int,
                                                           code: int) -> None:
    run_dir = tmp_path / "run"
    signal_when_training(run_dir, signum)
    with pytest.raises(Interrupted, match="continue with resume=true") as err:
        run(compose_config(LONG, run_dir))
    assert err.value.exit_code == code
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and info["updates"] >= 1
    assert (run_dir / "checkpoint.pt").is_file()


def test_stop_after_ends_the_run_with_success(tmp_path: Path) -> None:
    run(compose_config([*LONG, "trainer.stop_after=2"], tmp_path / "run"))  # no exception
    assert json.loads((tmp_path / "run" / "run.json").read_text())["updates"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_command_exits_128_plus_the_signal(tmp_path: Path, signum: int, code: int
                                               ) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "monarchpc.train", "logger=none",
                             "trainer.progress=false", *LONG, f"run_dir={run_dir}",
                             f"paths.output_dir={tmp_path}"], cwd=REPO_ROOT,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "checkpoint.pt").is_file():
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"monarchpc: stopped: stopped by {signal.Signals(signum).name}" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------- requeue

def test_a_requeued_job_resumes_once_it_has_a_checkpoint(tmp_path: Path) -> None:
    overrides = ["model=hmm", "resume=false", "seed=3"]
    assert requeue.requeue_overrides(overrides, tmp_path) == overrides  # nothing to resume
    assert requeue.requeue_overrides(overrides, None) == overrides
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert requeue.requeue_overrides(overrides, tmp_path) == ["model=hmm", "seed=3",
                                                              "resume=true"]
    cfg = compose_config(TINY, tmp_path)
    assert not requeue.resume_if_requeued(cfg, {})  # not a restarted SLURM job
    assert not cfg.resume
    assert requeue.resume_if_requeued(cfg, {"SLURM_RESTART_COUNT": "1", "SLURM_JOB_ID": "7"})
    assert cfg.resume


class FakeSubmitit:
    """Stands in for submitit's signal handler in a job (its two methods we call)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def checkpoint_and_try_requeue(self, signum: int, frame: object = None) -> None:
        self.calls.append(("requeue", signum))

    def checkpoint_and_exit(self, signum: int, frame: object = None) -> None:
        self.calls.append(("save submission", signum))


def test_sigusr2_checkpoints_then_hands_over_to_submitit(tmp_path: Path) -> None:
    """SLURM's SIGUSR2 under submitit: the run stops at an update boundary with a
    checkpoint, then submitit's handler (restored after the run) requeues the job, whose
    overrides then hold resume=true."""
    fake = FakeSubmitit()
    previous = signal.signal(signal.SIGUSR2, fake.checkpoint_and_try_requeue)
    try:
        run_dir = tmp_path / "run"
        signal_when_training(run_dir, signal.SIGUSR2)
        with pytest.raises(Interrupted) as err:
            run(compose_config(LONG, run_dir))
        assert fake.calls == []  # the run's own handler took the signal first
        interrupt.hand_over(err.value.signum)
        assert fake.calls == [("requeue", signal.SIGUSR2)]
        interrupt.hand_over(signal.SIGTERM)  # a SLURM preemption's SIGTERM
        assert fake.calls[-1] == ("save submission", signal.SIGTERM)
        assert requeue.job_run_dir() == run_dir
        assert requeue.requeue_overrides(["x=1"], requeue.job_run_dir()) == ["x=1",
                                                                            "resume=true"]
    finally:
        signal.signal(signal.SIGUSR2, previous)
    interrupt.hand_over(signal.SIGUSR2)  # the default handler: nothing happens


def test_the_slurm_launcher_requeues_with_resume(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra_plugins import monarchpc_launcher
    from monarchpc.run import rundir

    launcher = monarchpc_launcher.SlurmLauncher.__new__(monarchpc_launcher.SlurmLauncher)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    rundir.last_run_dir = tmp_path
    delayed = launcher.checkpoint(["model=hmm"], "hydra.sweep.dir", 0, "id", {})
    assert delayed.args[0] == ["model=hmm", "resume=true"] and delayed.function is launcher


# ------------------------------------------------------------------------------ sweeps

@pytest.mark.slow
def test_every_sweep_job_has_its_hydra_dir_and_a_failed_job_fails_the_sweep(
        tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "monarchpc.train", "-m", "logger=none",
                           "trainer.progress=false", *TINY, "optim.epochs=0,1",
                           f"paths.output_dir={tmp_path}"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "1 job(s) of the sweep failed" in proc.stderr
    jobs = sorted((tmp_path / "multirun").glob("*/*-hmm-h8"))
    assert len(jobs) == 2
    for job in jobs:
        assert {p.name for p in (job / ".hydra").iterdir()} == {"config.yaml", "hydra.yaml",
                                                                "overrides.yaml"}
    assert "optim.epochs=0" in (jobs[0] / "error.txt").read_text()
    assert json.loads((jobs[1] / "run.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_a_job_stopped_by_sigusr2_is_requeued_and_resumes(tmp_path: Path) -> None:
    """hydra/launcher=local (submitit's local executor, our requeue hook): SIGUSR2 to the
    job, as SLURM sends before a time limit or on preemption, stops it with a checkpoint;
    submitit requeues it and the requeued job resumes from that checkpoint and finishes."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = [*TINY, "optim.epochs=150", "trainer.checkpoint_every=5"]  # 600 updates
    proc = subprocess.Popen([sys.executable, "-m", "monarchpc.train", "-m",
                             "hydra/launcher=local", "logger=none", "trainer.progress=false",
                             *args, f"paths.output_dir={tmp_path}"], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, job = time.time() + 180, None
        while time.time() < deadline and proc.poll() is None:
            job = next((tmp_path / "multirun").glob("*/0-hmm-h8"), None) \
                if (tmp_path / "multirun").is_dir() else None
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                if json.loads((job / "run.json").read_text())["updates"] >= 5:
                    break  # in the EM loop
            time.sleep(0.05)
        assert job is not None and proc.poll() is None, "the job never checkpointed"
        os.kill(json.loads((job / "run.lock").read_text())["pid"], signal.SIGUSR2)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    log = (job / "train.log").read_text()
    assert "stop requested (SIGUSR2)" in log
    stopped = int(log.split("stopped at update ")[1].split("/")[0])
    assert f"resuming {job} at update {stopped}" in log and 0 < stopped < 600
    info = json.loads((job / "run.json").read_text())
    assert (info["status"], info["updates"]) == ("finished", 600)
