"""Load a trained run: its circuit and its config.

    from monarchpc import load_run
    model, config = load_run("outputs/demo")

:func:`load_run` rebuilds the circuit of a run from its ``config.yaml`` (through the
structure registry, :mod:`monarchpc.structures`; an HCLT over the tree saved in its
``parent`` buffer, no data needed) and loads the parameters of one of its checkpoints:
``checkpoint="auto"`` (the default) takes ``best.pt``, the model at the lowest dev metric
(what the tables report), where the run kept one (``trainer.keep_best``), else
``checkpoint.pt``, the latest; ``"best"`` and ``"last"`` ask for one of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from monarchpc import checkpoint
from monarchpc.errors import RunDirError, UsageError
from monarchpc.structures import load_model


def load_config(run_dir: str | Path) -> DictConfig:
    """The resolved config a run used (``config.yaml``, else the checkpoint's copy)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist; pass run_dir=outputs/<run>")
    if (run_dir / "config.yaml").is_file():
        return OmegaConf.load(run_dir / "config.yaml")  # type: ignore[return-value]
    ckpt = checkpoint.load(run_dir)
    if ckpt is None:
        raise RunDirError(f"{run_dir} holds neither config.yaml nor {checkpoint.FILENAME}: "
                          f"it is not a finished run directory")
    return OmegaConf.create(ckpt["config"])


CHECKPOINTS = ("auto", "best", "last")
"""What :func:`load_run` loads: best.pt where there is one, else checkpoint.pt; best.pt;
checkpoint.pt."""


def checkpoint_file(run_dir: str | Path, which: str = "auto") -> str:
    """The file name (best.pt or checkpoint.pt) that ``which`` (:data:`CHECKPOINTS`) picks
    in ``run_dir``; RunDirError where it is missing, UsageError for an unknown ``which``."""
    if which not in CHECKPOINTS:
        raise UsageError(f"checkpoint={which!r}: use auto (best.pt if kept, else the last), "
                         f"best or last")
    run_dir = Path(run_dir)
    has_best = (run_dir / checkpoint.BEST).is_file()
    if which == "best" and not has_best:
        raise RunDirError(f"{run_dir} has no {checkpoint.BEST} (a run with "
                          f"trainer.keep_best=false, or from before it, or not evaluated yet): "
                          f"use checkpoint=last")
    name = checkpoint.BEST if which == "best" or (which == "auto" and has_best) \
        else checkpoint.FILENAME
    if not (run_dir / name).is_file():
        raise RunDirError(f"{run_dir} has no {name}: only runs that kept their checkpoint can "
                          f"be loaded (run records without one, such as those under "
                          f"docs/results/runs, cannot)")
    return name


def read_checkpoint(run_dir: str | Path, which: str = "auto") -> dict[str, Any]:
    """The sections of the checkpoint file ``which`` picks (see :func:`checkpoint_file`)."""
    name = checkpoint_file(run_dir, which)
    ckpt = checkpoint.load(Path(run_dir), map_location="cpu", filename=name)
    if ckpt is None:  # removed since checkpoint_file looked
        raise RunDirError(f"{Path(run_dir) / name} has gone")
    return ckpt


def load_run(run_dir: str | Path, device: str | torch.device = "cpu",
             checkpoint: str = "auto") -> tuple[nn.Module, DictConfig]:
    """The trained circuit of ``run_dir`` (in eval mode, on ``device``) and its config.

    ``checkpoint``: ``"auto"`` (default) the model of best.pt, the lowest dev metric
    during training (what the tables report), where the run kept one, else the latest
    (checkpoint.pt, written at every evaluation: a run still going or interrupted gives
    its latest evaluated model); ``"best"`` best.pt only; ``"last"`` checkpoint.pt.
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    model = load_model(config, read_checkpoint(run_dir, checkpoint)["model"])
    return model.to(device).eval(), config


def run_info(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``run.json`` ({} if it has none)."""
    path = Path(run_dir) / "run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def seq_len(config: DictConfig) -> int:
    """The training row length of a text run."""
    return int(config.dataset.get("seq_len") or 256)
