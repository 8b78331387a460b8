"""Memory estimates checked before allocating: a request that cannot fit ends in one line.

Before the training loop builds a model, before ``sample`` draws and before ``score``
scores, the bytes of the largest allocation are estimated from the sizes alone and
compared with the memory the device has free now:

* CPU: ``MemAvailable`` of /proc/meminfo (else the free physical pages, os.sysconf);
* GPU: ``torch.cuda.mem_get_info`` (free bytes on that device).

An estimate above :data:`SHARE` of the free memory is refused (the rest is left to what
the estimate leaves out: the interpreter, temporaries, other processes). The estimates:

* the parameters of a model (counted by its structure in :mod:`monarchpc.structures`,
  with :func:`block_parameters`) from the block spec and the data's sizes, times 3 for
  training (parameters, their flows in ``.grad``, and the E-step's working set of at
  least the same size);
* sample buffers: n x length x h float32 backward messages plus the rows (use/sample.py);
* score rows: batch x length x h float32 emissions plus a Python view per position
  (use/score.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

SHARE = 0.8
"""The share of a device's free memory one estimated allocation may take."""
VIEW_BYTES = 700
"""Bytes of one tensor view object (the per-position views of a row), measured ~640."""


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Free memory of ``device`` in bytes now (None if it cannot be told)."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def shown(n: float) -> str:
    """Bytes for people: ``"1.5 GB"``, ``"4.4e+12 GB"``."""
    gb = n / 1e9
    return f"{gb:.3g} GB" if gb < 1e6 else f"{gb:.2g} GB"


def check_fits(what: str, need: float, device: torch.device | str, fix: str,
               error: type[Exception]) -> None:
    """Raise ``error`` (one line: the estimate, the free memory, ``fix``) if ``need`` bytes
    exceed :data:`SHARE` of ``device``'s free memory."""
    free = available_bytes(device)
    if free is None or need <= SHARE * free:
        return
    name = "RAM" if torch.device(device).type == "cpu" else f"memory on {device}"
    raise error(f"{what} needs about {shown(need)}, but only {shown(free)} of {name} is "
                f"free now (at most {SHARE:.0%} of it is used): {fix}")


def block_parameters(factors: Sequence[int], axes: Sequence[int], blocks: int = 1) -> int:
    """Parameters of ``blocks`` sum blocks of one spec: every layer holds h x b_axis."""
    h = math.prod(int(b) for b in factors)
    return blocks * sum(h * int(factors[a]) for a in axes)


def rows_bytes(rows: int, length: int, hidden: int, views: bool = False) -> int:
    """Bytes of a pass over ``rows`` x ``length`` values of a circuit with ``hidden`` states:
    float32 messages (rows x length x h), three int64 copies of the rows, a working set of
    8 vectors (rows x h) per step, and with ``views`` one tensor view per position (the
    HMM's per-step views of its emission lookup)."""
    return (rows * length * (4 * hidden + 24) + 8 * rows * 4 * hidden
            + (length * VIEW_BYTES if views else 0))
