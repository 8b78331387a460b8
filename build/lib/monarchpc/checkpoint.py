"""Atomic checkpoints: the model, the trainer's counters and the config in one file.

A checkpoint is written to ``checkpoint.pt.tmp`` and renamed over ``checkpoint.pt``, so a
crash mid-write never leaves a broken checkpoint. It is taken only between EM updates,
when no partial flows exist, so resuming from it repeats exactly what the uninterrupted
run would have done.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

FILENAME = "checkpoint.pt"


def save(run_dir: Path, model: nn.Module, state: dict[str, Any], config: dict[str, Any]) -> Path:
    """Write ``{"model", "trainer", "config"}`` atomically to ``run_dir/checkpoint.pt``."""
    path = run_dir / FILENAME
    tmp = path.with_name(FILENAME + ".tmp")
    torch.save({"model": model.state_dict(), "trainer": state, "config": config}, tmp)
    os.replace(tmp, path)
    return path


def load(run_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The checkpoint of ``run_dir``, or None if it has none."""
    path = run_dir / FILENAME
    if not path.is_file():
        return None
    return torch.load(path, map_location=map_location, weights_only=False)
