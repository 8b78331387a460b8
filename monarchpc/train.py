"""Train a circuit: the Hydra entry point of every data set, structure and preset.

    python -m monarchpc.train experiment=demo
    python -m monarchpc.train -m model=hmm,monarch2_hmm model.hidden_size=256,1024

Composes the config (configs/), checks every setting (:mod:`monarchpc.config`), then runs
the training loop (:mod:`monarchpc.run.trainer`). A setting or data file that cannot work
ends in one line on stderr (``monarchpc: error: ...``, exit status 2); a run that diverged
exits 3; a run stopped by Ctrl-C or SIGTERM keeps its checkpoint and exits 130 / 143 (128 +
the signal, also while training factor runs; SLURM's SIGUSR2: 140, after submitit has
requeued the job, see monarchpc/run/requeue.py); a second Ctrl-C aborts at once (130).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from monarchpc.config import check_config, settings_help
from monarchpc.data import Splits
from monarchpc.errors import ConfigError, DataError, DivergedError, Interrupted
from monarchpc.paths import REPO_ROOT
from monarchpc.run.interrupt import hand_over
from monarchpc.run.requeue import resume_if_requeued
from monarchpc.run.trainer import train

OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT), replace=True)
OmegaConf.register_new_resolver("settings_help", settings_help, replace=True)  # --help


def run(cfg: DictConfig, splits: Splits | None = None,
        overrides: list[str] | None = None) -> dict[str, Any]:
    """Check ``cfg`` (:class:`ConfigError` on the first bad setting), then train as
    configured; returns the last evaluation record.

    ``splits``: the data of ``cfg.dataset`` if already loaded (factor runs of init=multiply).
    ``overrides``: the command line's, recorded in ``.hydra/overrides.yaml``.
    """
    check_config(cfg)
    return train(cfg, run, splits, overrides)


@hydra.main(version_base="1.3", config_path=str(REPO_ROOT / "configs"), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Console entry point; returns the final dev metric (for Hydra sweepers)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if cfg.run_dir is None:
        cfg.run_dir = hydra_cfg.runtime.output_dir
    try:
        resume_if_requeued(cfg)  # a SLURM job requeued after its checkpoint: resume it
        record = run(cfg, overrides=list(hydra_cfg.overrides.task))
    except (ConfigError, DataError) as err:
        if hydra_cfg.mode == RunMode.MULTIRUN:  # this job fails, the sweep goes on
            job_failed(err, hydra_cfg.runtime.output_dir)
            return None
        fail("error", err, cfg.run_dir, 2)
    except DivergedError as err:
        if hydra_cfg.mode == RunMode.MULTIRUN:  # a result of the sweep (run.json: diverged)
            print(f"monarchpc: diverged: {err}", file=sys.stderr)
            return None
        fail("diverged", err, cfg.run_dir, 3)
    except Interrupted as err:  # the checkpoint is written (factor runs' too)
        hand_over(err.signum)  # under submitit: requeue the job (and exit)
        fail("stopped", err, cfg.run_dir, err.exit_code)
    except KeyboardInterrupt:
        fail("stopped", "aborted by a second Ctrl-C: the updates since the last checkpoint "
                        "are lost; continue with resume=true and the same run_name",
             cfg.run_dir, 130)
    return next((v for k, v in record.items() if k.startswith("dev_")), None)


def job_failed(err: Exception, job_dir: str) -> None:
    """A sweep job that failed: its line on stderr and in ``error.txt`` in its directory
    (the sweep's summary lists it as failed, and the sweep exits 2 at its end; see
    monarchpc/run/summary.py); the other jobs still run."""
    from monarchpc.files import atomic_write
    from monarchpc.run.summary import ERROR_FILE

    print(f"monarchpc: error: {err}", file=sys.stderr)
    text = f"{type(err).__name__}: {err}\n"
    atomic_write(Path(job_dir) / ERROR_FILE, lambda f: f.write(text.encode()))


def fail(kind: str, err: Exception | str, run_dir: str, code: int) -> None:
    """One line on stderr and the exit status; the empty directory Hydra made for a rejected
    run goes (a run directory with anything in it stays as it is)."""
    print(f"monarchpc: {kind}: {err}", file=sys.stderr)
    path = Path(run_dir)
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
    sys.exit(code)


if __name__ == "__main__":
    # Run the importable monarchpc.train.main, not this __main__ copy: launchers that
    # pickle the task function (hydra/launcher=slurm, submitit) can then pickle it by name.
    from monarchpc.train import main as importable_main

    importable_main()
