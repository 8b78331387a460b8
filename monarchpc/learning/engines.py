"""Engines: how a model's E-step and exact scoring run on a device.

An engine offers, for rows x (N, T) of token (or pixel-channel) values:

    estep(x) -> log p(x) (N,) in nats, adding d log p / d theta into every ``param.grad``
                (so the flows theta * grad accumulate for :class:`~monarchpc.learning.em.EM`);
    score(x) -> log p(x) (N,) in nats, exact, no gradients (evaluation);

with the matrix products in a :class:`~monarchpc.learning.precision.Precision`. Two kinds:

| ``trainer.engine`` | what runs | precisions |
| --- | --- | --- |
| fused (auto on a GPU, or for 16-bit) | the structure's :class:`Fused` E-step | all four |
| autograd (auto otherwise) | ``model.log_likelihood`` + backward | fp32, tf32 |

Which structures have a fused E-step is the structure registry's business
(:mod:`monarchpc.structures`); an engine is handed one. A precision the chosen engine does
not have is a ConfigError, never a silent change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from monarchpc.errors import ConfigError
from monarchpc.learning.em import accumulate_flows
from monarchpc.learning.precision import PRECISIONS, Precision

ENGINES = ("auto", "fused", "autograd")
AUTOGRAD_PRECISIONS = ("fp32", "tf32")
Rows = Callable[[Tensor], Tensor]
"""A function from rows (N, T) long to log-likelihoods (N,) in nats."""


@dataclass(frozen=True)
class Fused:
    """A structure's fused E-step (no autograd graph), as two factories:

    ``estep(model, device, trainer, precision)`` -> the training E-step (``trainer``: the
    ``trainer`` config group, for its segment, memory and CUDA-graph settings);
    ``score(model, precision)`` -> the exact scorer (its first pass only).
    """

    estep: Callable[[nn.Module, torch.device, Any, Precision], Rows]
    score: Callable[[nn.Module, Precision], Rows]


@dataclass(frozen=True)
class Engine:
    """The E-step and the scorer of one model (see the module docstring)."""

    name: str
    estep: Rows
    score: Rows
    score_precision: str = "fp32"
    """The products' precision of ``score`` (run.json's ``eval_precision``)."""


def select_device(name: str) -> torch.device:
    """``trainer.device``: auto (a GPU if one is visible), cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA GPU is visible; use trainer.device=cpu")
    return torch.device(name)


def engine_name(trainer: Any, device_type: str, fused: Fused | None, structure: str) -> str:
    """The engine ``trainer.engine`` chooses on a device of that type for a model whose
    structure (named ``structure``, for messages) has the ``fused`` E-step (or None), after
    checking that the engine exists and has ``trainer.precision`` (one ConfigError line)."""
    choice, precision = trainer.engine, trainer.precision
    if choice not in ENGINES:
        raise ConfigError(f"trainer.engine={choice!r}; use one of {', '.join(ENGINES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r}; use one of {', '.join(PRECISIONS)}")
    if choice == "fused" and fused is None:
        raise ConfigError(f"trainer.engine=fused: {structure} models have no fused E-step; use "
                          f"trainer.engine=auto or autograd")
    # auto: the fused engine on a GPU, or where only it has the precision
    auto_fused = fused is not None and (device_type == "cuda" or
                                        precision not in AUTOGRAD_PRECISIONS)
    name = "fused" if choice == "fused" or (choice == "auto" and auto_fused) else "autograd"
    if name == "autograd" and precision not in AUTOGRAD_PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision} is not available to the autograd engine of "
            f"{structure} models (it has {', '.join(AUTOGRAD_PRECISIONS)}); use one of those"
            + (" or trainer.engine=fused" if fused is not None else ""))
    return name


def make_engine(model: nn.Module, trainer: Any, device: torch.device, fused: Fused | None,
                score_precision: str) -> Engine:
    """The engine of ``model`` on ``device`` for the ``trainer`` config: its structure's
    ``fused`` E-step (or None) and the precision of evaluation."""
    name = engine_name(trainer, device.type, fused, model.structure)
    precision, scoring = Precision(trainer.precision), Precision(score_precision)
    if name == "autograd":
        def estep(x: Tensor) -> Tensor:
            with precision.products():
                return accumulate_flows(model, x)
        return Engine(name, estep, autograd_scorer(model, scoring), score_precision)
    assert fused is not None
    return Engine(name, fused.estep(model, device, trainer, precision),
                  fused.score(model, scoring), score_precision)


def autograd_scorer(model: nn.Module, precision: Precision | str = "fp32") -> Rows:
    """``model.log_likelihood`` without an autograd graph, its products in ``precision``
    (fp32 or tf32) whatever torch's TF32 switch says outside."""
    precision = Precision.of(precision)

    def score(x: Tensor) -> Tensor:
        with torch.no_grad(), precision.products():
            return model.log_likelihood(x)
    return score
