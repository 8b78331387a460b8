"""Step-size (EM learning-rate) schedules: eta as a function of the update index."""

from __future__ import annotations

import math

SCHEDULES = ("linear", "cosine", "constant")


def step_size(schedule: str, update: int, total_updates: int, eta0: float = 1.0,
              eta_min: float = 0.0) -> float:
    """Step size of update ``update`` (0-based) out of ``total_updates``.

    linear: eta0 -> eta_min over all updates (the text8 recipe, 1 -> 0; update u uses
    the value at u / total_updates, so no update is wasted at eta = 0);
    cosine: half a cosine from eta0 to eta_min (the image recipe); constant: eta0.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown step-size schedule {schedule!r}; choose one of {SCHEDULES}")
    if schedule == "constant" or total_updates <= 0:
        return eta0
    frac = min(max(update / total_updates, 0.0), 1.0)
    if schedule == "linear":
        return eta0 + (eta_min - eta0) * frac
    return eta_min + 0.5 * (eta0 - eta_min) * (1.0 + math.cos(math.pi * frac))
