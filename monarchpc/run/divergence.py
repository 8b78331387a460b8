"""The divergence guard: EM stops before a bad update reaches the parameters.

EM in linear space cannot recover from a NaN: one NaN flow makes its whole row of
parameters NaN at the next update, and every later likelihood NaN. The loop calls
:func:`check` once per EM update, after the E-step (a non-finite log-likelihood or flow),
then takes the update through :func:`em_step`, which writes nothing unless every new
parameter is finite, non-negative and has no all-zero row. Both raise
:class:`~monarchpc.errors.DivergedError` naming the setting to change, so the loop can stop
with status "diverged" and keep its last (good) parameters and checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from monarchpc.checkpoint import non_finite
from monarchpc.errors import DivergedError
from monarchpc.learning.em import EM, InvalidUpdate


def hint(optim: Mapping[str, Any], trainer: Mapping[str, Any]) -> str:
    """Which setting to change after a divergence, judged from the run's optim/trainer config."""
    if float(optim.get("pseudocount", 0.1)) <= 0 and float(optim.get("floor", 0.0)) <= 0:
        return ("set optim.pseudocount > 0 (the default is 0.1) or optim.floor=1e-10 (the "
                "reference's): without either a parameter that reaches 0 turns its flows "
                "into 0 * inf = NaN")
    if trainer.get("precision") in ("bf16", "fp16"):
        return (f"use trainer.precision=fp32 or tf32 (trainer.precision="
                f"{trainer.get('precision')} overflowed or underflowed)")
    return "raise optim.pseudocount or lower optim.eta0"


def check(model: nn.Module, log_likelihood: float, update: int, fix: str) -> None:
    """Raise :class:`DivergedError` if the update's log-likelihood (nats, any sign
    convention), the flows accumulated in ``param.grad`` or the parameters are not finite.

    ``update``: the number of the update about to be taken (for the message); ``fix``: the
    advice of :func:`hint`.
    """
    what = None
    if not math.isfinite(log_likelihood):
        what = f"the training log-likelihood is {log_likelihood}"
    else:
        params = dict(model.named_parameters())
        grads = {name: p.grad for name, p in params.items() if p.grad is not None}
        if bad := non_finite(grads):
            what = f"the flows of {bad} hold NaN or inf"
        elif bad := non_finite(params):
            what = f"the parameter {bad} holds NaN or inf"
    if what is not None:
        raise DivergedError(f"EM diverged at update {update}: {what}. Fix: {fix}; the last "
                            f"good checkpoint is kept (start a new run_name with the change)")


def em_step(em: EM, model: nn.Module, eta: float, update: int, fix: str) -> None:
    """``em.step(model, eta)``; an update that would write invalid parameters (negative,
    non-finite, a row of zeros) raises :class:`DivergedError` instead, the model unchanged."""
    try:
        em.step(model, eta)
    except InvalidUpdate as err:
        raise DivergedError(f"EM diverged at update {update}: {err}. Fix: {fix}; the "
                            f"parameters before it are kept (start a new run_name with the "
                            f"change)") from None
