"""The Hydra launcher of ``hydra/launcher=slurm``: hydra-submitit-launcher's SlurmLauncher
whose checkpoint hook requeues a job so that it resumes from its checkpoint.

submitit calls ``checkpoint`` (in the job, on SIGUSR2 before the time limit or on
preemption, after the training loop has written its checkpoint: see
:func:`monarchpc.run.interrupt.hand_over`) and requeues what it returns: here the same
job with ``resume=true`` added once its run directory holds a checkpoint
(:func:`monarchpc.run.requeue.requeue_overrides`). Imported only by that launcher config
(it needs the ``slurm`` extra: pip install -e ".[slurm]").
"""

from __future__ import annotations

from typing import Any

from hydra_plugins.hydra_submitit_launcher import submitit_launcher

from monarchpc.run.requeue import job_run_dir, requeue_overrides


def _resumable(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The job's arguments (sweep overrides first) with resume=true once it has a checkpoint."""
    if not args:
        return args
    return (requeue_overrides(list(args[0]), job_run_dir()), *args[1:])


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """Every sweep job a SLURM job; a requeued job resumes from its checkpoint."""

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        return super().checkpoint(*_resumable(args), **kwargs)


class LocalLauncher(submitit_launcher.LocalLauncher):
    """The same on this machine (submitit's local executor), to try requeueing without SLURM."""

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        return super().checkpoint(*_resumable(args), **kwargs)
