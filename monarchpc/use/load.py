"""Load a trained run: its circuit and its config.

    from monarchpc import load_run
    model, config = load_run("outputs/demo")

:func:`load_run` rebuilds the circuit of a run from its ``config.yaml`` (through the
structure registry, :mod:`monarchpc.structures`; an HCLT over the tree saved in its
``parent`` buffer, no data needed) and loads the parameters of its ``checkpoint.pt``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from monarchpc import checkpoint
from monarchpc.errors import RunDirError
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


def load_run(run_dir: str | Path, device: str | torch.device = "cpu"
             ) -> tuple[nn.Module, DictConfig]:
    """The trained circuit of ``run_dir`` (in eval mode, on ``device``) and its config.

    Parameters are the last checkpoint's (written at every evaluation, so a run still
    going or interrupted gives its latest evaluated model).
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    ckpt = checkpoint.load(run_dir, map_location="cpu")
    if ckpt is None:
        raise RunDirError(f"{run_dir} has no {checkpoint.FILENAME}: only runs that kept their "
                          f"checkpoint can be loaded (run records without one, such as those "
                          f"under docs/results/runs, cannot)")
    model = load_model(config, ckpt["model"])
    return model.to(device).eval(), config


def run_info(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``run.json`` ({} if it has none)."""
    path = Path(run_dir) / "run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def seq_len(config: DictConfig) -> int:
    """The training row length of a text run."""
    return int(config.dataset.get("seq_len") or 256)
