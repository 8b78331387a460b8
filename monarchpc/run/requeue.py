"""Resuming a SLURM job that was requeued after a time limit or a preemption.

``hydra/launcher=slurm`` (``hydra_plugins/monarchpc_launcher``) runs every job through submitit.
SLURM warns a job with SIGUSR2 (``signal_delay_s`` before its time limit, and on
preemption): the training loop stops at the next update boundary and writes its checkpoint
(:mod:`monarchpc.run.interrupt`), then submitit's handler calls the launcher's checkpoint
hook, which re-submits the job with :func:`requeue_overrides` (``resume=true`` once the
job's run directory holds a checkpoint) and requeues it. A job that SLURM requeues by
itself runs its saved submission again: :func:`resume_if_requeued` resumes it too when
its run directory holds a checkpoint. This module needs no submitit (testable anywhere).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from monarchpc.run import rundir

log = logging.getLogger("monarchpc")

CHECKPOINT = "checkpoint.pt"


def requeue_overrides(overrides: list[str], run_dir: Path | None) -> list[str]:
    """The command-line overrides a requeued job runs with: ``overrides`` with ``resume``
    set to true when ``run_dir`` holds a checkpoint (a job stopped before its first
    checkpoint starts afresh, as it began)."""
    kept = [o for o in overrides if o.lstrip("+~").partition("=")[0] != "resume"]
    if run_dir is not None and (Path(run_dir) / CHECKPOINT).is_file():
        return [*kept, "resume=true"]
    return list(overrides)


def job_run_dir() -> Path | None:
    """The run directory this process last locked (the job's run), or None."""
    return rundir.last_run_dir


def resumable_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """A launcher job's arguments (its sweep overrides first) as its requeue re-submits
    them: with resume=true once the job's run directory holds a checkpoint."""
    if not args:
        return args
    return (requeue_overrides(list(args[0]), job_run_dir()), *args[1:])


def resume_if_requeued(cfg: DictConfig, environ: dict[str, str] | None = None) -> bool:
    """Set ``cfg.resume`` for a SLURM job that SLURM has restarted (``SLURM_RESTART_COUNT``
    >= 1) when its run directory already holds a checkpoint; True if it did."""
    env = os.environ if environ is None else environ
    restarts = env.get("SLURM_RESTART_COUNT", "0")
    if cfg.get("resume") or not restarts.isdigit() or int(restarts) < 1:
        return False
    if not (Path(str(cfg.run_dir)) / CHECKPOINT).is_file():
        return False
    log.warning(f"SLURM job {env.get('SLURM_JOB_ID')} restarted ({restarts}x): resuming "
                f"{cfg.run_dir} from its checkpoint")
    cfg.resume = True
    return True
