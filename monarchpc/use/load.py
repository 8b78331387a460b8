"""Load a trained run: its circuit and its config.

    from monarchpc import load_run
    model, config = load_run("outputs/demo")

:func:`load_run` rebuilds the circuit of a run from its ``config.yaml`` (through the
structure registry, :mod:`monarchpc.structures`; an HCLT over the tree saved in its
``parent`` buffer, no data needed) and loads the parameters of one of its checkpoints:
``checkpoint="auto"`` (the default) takes ``best.pt``, the model at the lowest dev metric
(what the tables report), where the run kept one (``trainer.keep_best``), else
``checkpoint.pt``, the latest; ``"best"`` and ``"last"`` ask for one of them.

Both files are checked before they are used, each problem one line naming the fix
(:class:`~monarchpc.errors.RunDirError`, :class:`~monarchpc.errors.CheckpointError`): a
``config.yaml`` that is not YAML, not a mapping, or whose interpolations do not resolve
(a missing environment variable, a loop), or that lacks the keys a run has; a checkpoint
whose parameters are missing, of the wrong shape, non-finite, negative or not normalized.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from monarchpc import checkpoint
from monarchpc.errors import CheckpointError, ConfigError, RunDirError, UsageError
from monarchpc.files import read_json_object
from monarchpc.learning.em import invalid
from monarchpc.structures import load_model

CONFIG_FIX = ("restore it (the run's .hydra/config.yaml holds the composed config), or move "
              "it away to use the copy in checkpoint.pt")
NORMALIZED = 1e-3
"""How far a parameter row's sum may be from 1 (float32 rounding over thousands of terms)."""


def checked_config(config: Any, where: str) -> DictConfig:
    """``config`` resolved and checked for what loading a run reads (one RunDirError line)."""
    from monarchpc.data import DATASETS
    from monarchpc.structures import STRUCTURES

    if not isinstance(config, DictConfig):
        kind = "list" if isinstance(config, ListConfig) else type(config).__name__
        raise RunDirError(f"{where} holds a YAML {kind}, not a run's config (a mapping); "
                          f"{CONFIG_FIX}")
    try:
        resolved = OmegaConf.create(OmegaConf.to_container(config, resolve=True))
    except Exception as err:  # any interpolation error of OmegaConf
        detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise RunDirError(f"{where} does not resolve ({detail}); {CONFIG_FIX}") from None
    model, data = resolved.get("model"), resolved.get("dataset")
    if not isinstance(model, DictConfig) or model.get("structure") not in STRUCTURES \
            or not isinstance(data, DictConfig) or data.get("name") not in DATASETS:
        raise RunDirError(f"{where} lacks a run's model.structure ({', '.join(STRUCTURES)}) "
                          f"or dataset.name (a known data set); {CONFIG_FIX}")
    try:
        from monarchpc.circuits.blocks import BlockSpec

        BlockSpec.from_config(model)
    except (ConfigError, TypeError, ValueError) as err:
        raise RunDirError(f"{where} has an unusable model section ({err}); {CONFIG_FIX}") \
            from None
    return resolved  # type: ignore[return-value]


def load_config(run_dir: str | Path) -> DictConfig:
    """The resolved config a run used (``config.yaml``, else the checkpoint's copy)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist; pass run_dir=outputs/<run>")
    path = run_dir / "config.yaml"
    if path.is_file():
        try:
            config = OmegaConf.load(path)
        except Exception as err:  # YAML syntax errors and the like
            detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else \
                type(err).__name__
            raise RunDirError(f"{path} is not valid YAML ({detail}); {CONFIG_FIX}") from None
        return checked_config(config, str(path))
    ckpt = checkpoint.load(run_dir)
    if ckpt is None:
        raise RunDirError(f"{run_dir} holds neither config.yaml nor {checkpoint.FILENAME}: "
                          f"it is not a finished run directory")
    return checked_config(OmegaConf.create(ckpt["config"]),
                          f"the config in {run_dir / checkpoint.FILENAME}")


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
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist; pass run_dir=outputs/<run>")
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


def checked_model(config: DictConfig, state: dict[str, Any], path: Path) -> nn.Module:
    """The circuit of ``config`` with the parameters ``state`` of the checkpoint ``path``,
    refused with one CheckpointError line if they do not fit it or are not probabilities."""
    fix = ("the checkpoint does not belong to this config.yaml or is damaged: use the run's "
           "own checkpoint.pt (or train the run again)")
    try:
        model = load_model(config, state)
    except (RuntimeError, KeyError, IndexError, ValueError, TypeError, AttributeError) as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = "; ".join(lines[:3])[:240] if lines else type(err).__name__
        raise CheckpointError(f"{path} does not fit the run's model ({detail}); {fix}") \
            from None
    for name, param in model.named_parameters():
        problem = invalid(param.detach())
        if problem is None and param.numel() and \
                float((param.detach().double().sum(-1) - 1).abs().max()) > NORMALIZED:
            problem = "its rows do not sum to 1"
        if problem:
            raise CheckpointError(f"{path}: parameter {name} is not a table of probabilities "
                                  f"({problem}); "
                                  f"{fix}")
    return model


def load_run(run_dir: str | Path, device: str | torch.device = "cpu",
             checkpoint: str = "auto") -> tuple[nn.Module, DictConfig]:
    """The trained circuit of ``run_dir`` (in eval mode, on ``device``) and its config.

    ``checkpoint``: ``"auto"`` (default) the model of best.pt, the lowest dev metric
    during training (what the tables report), where the run kept one, else the latest
    (checkpoint.pt, written at every evaluation: a run still going or interrupted gives
    its latest evaluated model); ``"best"`` best.pt only; ``"last"`` checkpoint.pt.
    """
    run_dir = Path(run_dir)
    name = checkpoint_file(run_dir, checkpoint)  # said first: without it, no config matters
    config = load_config(run_dir)
    model = checked_model(config, read_checkpoint(run_dir, checkpoint)["model"],
                          run_dir / name)
    return model.to(device).eval(), config


def run_info(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``run.json`` ({} if it has none)."""
    path = Path(run_dir) / "run.json"
    return read_json_object(path, "restore it or move it away (it is rewritten by the next "
                                  "training of that run)") or {}


def seq_len(config: DictConfig) -> int:
    """The training row length of a text run."""
    return int(config.dataset.get("seq_len") or 256)
