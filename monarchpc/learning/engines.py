"""Engines: how the E-step and scoring of a structure (HMM, HCLT) run on a device.

An engine offers, for rows x (N, T) of token (or pixel-channel) values:

    estep(x) -> log p(x) (N,) in nats, adding d log p / d theta into every ``param.grad``
                (so the flows theta * grad accumulate for :class:`~monarchpc.learning.em.EM`);
    score(x) -> log p(x) (N,) in nats, exact, no gradients (evaluation);

with the matrix products in one of the engine's ``precisions`` (fp32, tf32, or 16-bit
operands bf16 / fp16 with fp32 accumulation). Which engines exist:

| structure | ``trainer.engine`` | where | precisions |
| --- | --- | --- | --- |
| hmm | fused (auto on a GPU, or for 16-bit) | learning/forward_backward.py | all four |
| hclt | fused (auto on a GPU, or for 16-bit) | learning/hclt_estep.py | all four |
| hmm, hclt | autograd (auto otherwise) | ``model.log_likelihood`` + backward | fp32 tf32 |

A precision the chosen engine does not have is a ConfigError, never a silent change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from monarchpc.errors import ConfigError
from monarchpc.learning.em import accumulate_flows
from monarchpc.learning.forward_backward import DTYPES, fused_estep, hmm_estep, matmul_precision
from monarchpc.learning.hclt_estep import fused_hclt_estep, hclt_estep

PRECISIONS = tuple(DTYPES)  # fp32, tf32, bf16, fp16: the fused E-steps' operand types
ENGINES = ("auto", "fused", "autograd")
FUSED_PRECISIONS = {"hmm": PRECISIONS, "hclt": PRECISIONS}
"""The structures with a fused engine, and its precisions."""
AUTOGRAD_PRECISIONS = ("fp32", "tf32")
SCORE_PRECISION = {
    # HMMs: TF32 when training runs below fp32 (+0.00008 dev BPC against fp32 scoring on
    # the text8 prefix, docs/results/device/precision_text8_prefix.json), for speed at 2^19
    "hmm": lambda training: "fp32" if training == "fp32" else "tf32",
    # HCLTs: fp32 always (TF32 scoring added +0.0029 dev BPD on Tiny ImageNet 32,
    # docs/results/device/precision_tiny_imagenet32_hclt.json), a small cost beside training
    "hclt": lambda training: "fp32",
}
"""The precision of evaluation (exact scoring) by structure and training precision."""


@dataclass(frozen=True)
class Engine:
    """The E-step and the scorer of one model (see the module docstring)."""

    name: str
    estep: Callable[[Tensor], Tensor]
    score: Callable[[Tensor], Tensor]
    score_precision: str = "fp32"
    """The products' precision of ``score`` (run.json's ``eval_precision``)."""


def select_device(name: str) -> torch.device:
    """``trainer.device``: auto (a GPU if one is visible), cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA GPU is visible; use trainer.device=cpu")
    return torch.device(name)


def engine_name(structure: str, trainer: Any, device_type: str) -> str:
    """The engine ``trainer.engine`` chooses for ``structure`` on a device of that type,
    after checking that it exists and has ``trainer.precision`` (one ConfigError line)."""
    choice, precision = trainer.engine, trainer.precision
    if choice not in ENGINES:
        raise ConfigError(f"trainer.engine={choice!r}; use one of {', '.join(ENGINES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r}; use one of {', '.join(PRECISIONS)}")
    fused = FUSED_PRECISIONS.get(structure)
    if choice == "fused" and fused is None:
        raise ConfigError(f"trainer.engine=fused exists for {', '.join(FUSED_PRECISIONS)} only, "
                          f"not {structure}; use trainer.engine=auto or autograd")
    # auto: the fused engine on a GPU, or where only it has the precision
    auto_fused = fused is not None and (device_type == "cuda" or
                                        precision not in AUTOGRAD_PRECISIONS)
    name = "fused" if choice == "fused" or (choice == "auto" and auto_fused) else "autograd"
    have = fused if name == "fused" else AUTOGRAD_PRECISIONS
    if precision not in have:
        raise ConfigError(
            f"trainer.precision={precision} is not available to the {name} engine of "
            f"{structure} models (it has {', '.join(have)}); use one of those"
            + ("" if name == "fused" or fused is None or precision not in fused
               else " or trainer.engine=fused"))
    return name


def make_engine(model: nn.Module, trainer: Any, device: torch.device) -> Engine:
    """The engine of ``model`` (its ``structure``: hmm or hclt) on ``device`` for ``trainer``."""
    name = engine_name(model.structure, trainer, device.type)
    score_precision = SCORE_PRECISION[model.structure](trainer.precision)
    score = scorer(model, score_precision, fused=name == "fused")
    if name == "autograd":
        return Engine(name, lambda x: accumulate_flows(model, x), score, score_precision)
    if model.structure == "hclt":
        estep = fused_hclt_estep(model, device, trainer.precision, trainer.cuda_graphs)
    else:
        estep = fused_estep(model, device, int(trainer.segment), trainer.precision,
                            trainer.keep_gb, trainer.cuda_graphs,
                            trainer.get("products", "auto"))
    return Engine(name, estep, score, score_precision)


def scorer(model: nn.Module, precision: str = "fp32", fused: bool = True
           ) -> Callable[[Tensor], Tensor]:
    """An exact scorer x (N, T) -> log p (N,) that builds no autograd graph: the fused first
    pass where the structure has one (and ``fused``), else ``model.log_likelihood``; its
    products in ``precision`` whatever torch's TF32 switch says outside."""
    if fused and model.structure == "hmm":
        return lambda x: hmm_estep(model, x, segment=x.shape[1], precision=precision,
                                   grad=False)
    if fused and model.structure == "hclt":
        return lambda x: hclt_estep(model, x, precision=precision, grad=False)
    return no_grad(model.log_likelihood, precision)


def no_grad(fn: Callable[[Tensor], Tensor], precision: str = "fp32"
            ) -> Callable[[Tensor], Tensor]:
    """``fn`` run without an autograd graph, its products in ``precision`` (fp32 or tf32)."""
    def run(x: Tensor) -> Tensor:
        with torch.no_grad(), matmul_precision(precision):
            return fn(x)
    return run
