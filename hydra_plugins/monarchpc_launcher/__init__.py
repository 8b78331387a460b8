"""Hydra launchers of ``hydra/launcher=slurm`` and ``hydra/launcher=local``: those of
hydra-submitit-launcher with a checkpoint hook that makes a requeued job resume.

submitit calls ``checkpoint`` in the job when it is warned by SIGUSR2 (before the time
limit, or on preemption), after the training loop has stopped at an update boundary with
its checkpoint (:func:`monarchpc.run.interrupt.hand_over`), and requeues what it returns:
the same job with ``resume=true`` added once its run directory holds a checkpoint
(:func:`monarchpc.run.requeue.resumable_args`). Hydra takes launchers from the
``hydra_plugins`` package only, hence this module; without the ``slurm`` extra (pip install
-e ".[slurm]") it defines nothing.
"""

from __future__ import annotations

from typing import Any

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher
except ImportError:  # the slurm extra is not installed: no launcher (and no warning)
    submitit_launcher = None

if submitit_launcher is not None:
    from monarchpc.run.requeue import resumable_args

    class SlurmLauncher(submitit_launcher.SlurmLauncher):
        """Every sweep job a SLURM job; a requeued job resumes from its checkpoint."""

        def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
            return super().checkpoint(*resumable_args(args), **kwargs)

    class LocalLauncher(submitit_launcher.LocalLauncher):
        """The same on this machine (submitit's local executor), to try requeueing."""

        def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
            return super().checkpoint(*resumable_args(args), **kwargs)
