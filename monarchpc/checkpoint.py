"""Atomic checkpoints of tensors and plain values, loaded without running any code.

A checkpoint is one ``torch.save`` file, ``run_dir/checkpoint.pt``: a dict of sections,
``"model"`` (the state dict), ``"trainer"`` (the loop's counters), ``"config"`` (the
resolved config) and any extra sections the loop adds (an optimizer state, the data
fingerprint, ...). Every section is built from tensors and plain values only: dicts with
string keys, lists, tuples, str, int, float, bool and None. :func:`save` refuses anything
else, and :func:`load` reads with ``torch.load(weights_only=True)``, so a crafted file (a
pickle whose objects would run code when rebuilt) is refused with one line, never run.

Writes go through :func:`monarchpc.files.atomic_write`: a crash mid-write leaves the
previous checkpoint; a full disk leaves it too, with no temporary file, and one
:class:`CheckpointError` line. A model with a non-finite parameter is never saved (see
:mod:`monarchpc.run.divergence`), so the last checkpoint is always a good one. A checkpoint
is taken only between EM updates, when no partial flows exist, so resuming from it
repeats exactly what the uninterrupted run would have done.

``run_dir/best.pt`` (:data:`BEST`, ``trainer.keep_best``) is a second file of the same
format and safety: the model at the evaluation of the lowest dev metric so far, with that
evaluation in its ``"best"`` section; the loop writes it (atomically) right after the
checkpoint of the update it belongs to, so it never holds a model the checkpoint has not
reached (see :meth:`monarchpc.run.trainer.Trainer.save`). Both files are read by
:func:`load`; ``filename`` chooses.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from monarchpc.errors import CheckpointError, DataError, DivergedError
from monarchpc.files import atomic_write

FILENAME = "checkpoint.pt"
BEST = "best.pt"
"""The model at the best dev evaluation (written when ``trainer.keep_best`` is true)."""
FORMAT = 2
"""Checkpoint format: 2 holds ``"format"``; files without it (format 1) load alike."""
SECTIONS = ("format", "model", "trainer", "config")
PLAIN = (str, int, float, bool, type(None), Tensor)
FIX = ("move it away and start the run afresh (or choose another run_name); a checkpoint "
       "from elsewhere must hold tensors and plain values only")


def non_finite(tensors: Mapping[str, Tensor]) -> str | None:
    """The name of the first floating tensor of ``tensors`` holding NaN or inf, else None.

    Each tensor is summed (no temporary of its size): a NaN or inf anywhere makes its sum
    non-finite, while probabilities and expected counts sum to far below the float range.
    One device synchronization for all tensors together.
    """
    named = [(k, t) for k, t in tensors.items()
             if isinstance(t, Tensor) and t.is_floating_point() and t.numel()]
    if not named:
        return None
    device = named[0][1].device
    sums = torch.stack([t.detach().sum(dtype=torch.float32).to(device) for _, t in named])
    finite = torch.isfinite(sums).tolist()
    return next((k for (k, _), ok in zip(named, finite, strict=True) if not ok), None)


def check_plain(value: Any, where: str = "checkpoint") -> None:
    """Raise TypeError naming the first entry of ``value`` that is not a tensor or plain value."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a key {key!r} of type {type(key).__name__}; "
                                f"checkpoints take string keys only")
            check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, PLAIN):
        raise TypeError(f"{where} is a {type(value).__name__}; checkpoints hold tensors and "
                        f"plain values only (convert it, e.g. with OmegaConf.to_container or "
                        f"dataclasses.asdict)")


def save(run_dir: Path, model: nn.Module, state: dict[str, Any], config: dict[str, Any],
         filename: str = FILENAME, **sections: Any) -> Path:
    """Write ``{"format", "model", "trainer": state, "config", **sections}`` atomically to
    ``run_dir/<filename>`` (:data:`FILENAME` or :data:`BEST`); returns its path.

    Raises TypeError for a section that is not plain (see :func:`check_plain`),
    :class:`DivergedError` (nothing written) for a non-finite parameter and
    :class:`CheckpointError` when the file cannot be written (the old one is kept).
    """
    clash = sorted(set(sections) & set(SECTIONS))
    if clash:
        raise TypeError(f"checkpoint sections {clash} are reserved")
    payload = {"format": FORMAT, "model": model.state_dict(), "trainer": state,
               "config": config, **sections}
    check_plain(payload)
    bad = non_finite(payload["model"])
    if bad:
        raise DivergedError(f"not saving a checkpoint: the model's {bad} holds NaN or inf; "
                            f"the last checkpoint in {run_dir} is kept")
    path = Path(run_dir) / filename
    try:
        atomic_write(path, lambda f: torch.save(payload, f))
    except DataError as err:
        raise CheckpointError(f"{err}; the previous checkpoint is kept: continue with "
                              f"resume=true once there is space") from None
    return path


def load(run_dir: Path, map_location: str | torch.device = "cpu",
         filename: str = FILENAME) -> dict[str, Any] | None:
    """The checkpoint ``run_dir/<filename>`` (a dict of sections), or None if there is none.

    Raises :class:`CheckpointError` for an empty, truncated, corrupt or crafted file, or
    one that is not a monarchpc checkpoint; nothing in the file is ever executed.
    """
    path = Path(run_dir) / filename
    if not path.is_file():
        return None
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (a write cut short by a crash or a full "
                              f"disk); {FIX}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # whatever the file holds: one line, and nothing of it run
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln),
                      lines[0] if lines else type(err).__name__)
        raise CheckpointError(f"{path} is corrupt or holds more than tensors and plain values "
                              f"({detail[:160]}); it was not loaded, and nothing in it was "
                              f"run; {FIX}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) \
            or not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"{path} is not a monarchpc checkpoint (it needs the sections "
                              f"'model' and 'config'); {FIX}")
    fmt = ckpt.get("format", 1)
    if not isinstance(fmt, int) or fmt > FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {fmt!r}, not one this monarchpc "
                              f"reads (1 to {FORMAT}); update monarchpc to resume it")
    return ckpt
