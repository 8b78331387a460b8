"""Initialization of a freshly built circuit, chosen by the ``init/`` config group.

``random``: the random stochastic parameters the circuit was built with (seeded), with
``init.space_token`` set (text8: 0) changed as the paper's reference code starts text8 runs
(:func:`space_states`).
``multiply``: circuit multiplication (paper Section 3, Table 2). Dense HMMs of sizes
h_0..h_{k-1} (the model's Monarch factors), trained by the same loop before the run (the
pipeline step :func:`monarchpc.init.factor_runs.factor_runs`) and listed in
``cfg.init.factor_runs``, are multiplied into the model: layer d of the Monarch transition
= A_d in every block, initial = kron(g_d), emission = prod_d B_d renormalized per state
(:mod:`monarchpc.init.multiply`). The factor run directories go from there into the
run's saved config, checkpoint and ``run.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from monarchpc.circuits.hmm import HMM
from monarchpc.errors import ConfigError
from monarchpc.init.factor_runs import factor_sizes, load_factor
from monarchpc.init.multiply import multiply_into
from monarchpc.settings import Settings, boolean, choice, integer, list_of, text
from monarchpc.structures import structure_of

INITS = ("random", "multiply")

INIT: Settings = {
    "name": (choice(*INITS), "the initialization"),
    "factors": (list_of(integer(2), "integers >= 2", none=True),
                "dense factor sizes of init=multiply; null: the model's factors"),
    "seed": (integer(0), "factor d is trained with init.seed + d"),
    "space_token": (integer(0, none=True), "the text8 initialization's space token; null: off"),
    "renormalize": (boolean, "renormalize the product's emission rows"),
    "cache_dir": (text(), "folder of the cached factor runs"),
    "parallel": (boolean, "train the unfinished factor runs side by side, a process each"),
    "factor_runs": (list_of(text(), "run directories", none=True),
                    "finished factor runs to multiply; null trains them"),
}
"""The ``init`` group (configs/init/); its ``optim`` and ``trainer`` keys override the
factor runs' settings and are checked against those groups' settings."""


def check_init(cfg: Any) -> None:
    """Fail fast (before any data is loaded) on an init setting that cannot work."""
    name = cfg.init.name
    if name not in INITS:
        raise ConfigError(f"unknown init {name!r}; use init=random or init=multiply")
    multiplies = structure_of(cfg.model.structure).multiply
    if name == "multiply":
        if not multiplies:
            raise ConfigError(f"init=multiply builds HMMs; model.structure is "
                              f"{cfg.model.structure!r}")
        factor_sizes(cfg)
    if cfg.init.get("space_token") is not None and not multiplies:
        raise ConfigError("init.space_token (the text8 initialization) is for HMMs; set "
                          "init.space_token=null")


def initialize(cfg: Any, model: nn.Module, vocab_size: int) -> nn.Module:
    """Return ``model`` initialized as ``cfg.init`` says (``cfg`` is the whole run config;
    for ``multiply``, ``cfg.init.factor_runs`` lists the finished factor runs)."""
    check_init(cfg)
    if cfg.init.name == "random":
        if cfg.init.get("space_token") is not None:
            space_states(model, int(cfg.init.space_token))
        return model
    dirs = list(cfg.init.get("factor_runs") or [])
    if not dirs:
        raise ConfigError("init=multiply needs its factor runs: run it through "
                          "monarchpc.train, which trains them first")
    factors = [load_factor(Path(d), vocab_size) for d in dirs]
    try:
        multiply_into(model, factors, renormalize=bool(cfg.init.get("renormalize", True)))
    except ValueError as err:  # factor runs given by hand that do not fit the model
        raise ConfigError(f"init=multiply: {err} (factor runs {[str(d) for d in dirs]})"
                          ) from None
    return model


@torch.no_grad()
def space_states(model: HMM, space: int) -> None:
    """The reference's text8 initialization of an HMM, in place (token ``space``).

    With b the last Monarch factor (dense: b = h), the designated states are those whose
    last multi-index entry is b - 1 (state i with i % b == b - 1; dense: state h - 1 alone).
    Only they may emit ``space`` (dense: that state emits nothing else), and the transition
    from one designated state to another is ~0 (1e-10): the layer that mixes the last axis
    (the only one that changes it) gets ~0 at entry (b - 1, b - 1) of every block.
    """
    if not 0 <= space < model.vocab_size:
        raise ConfigError(f"init.space_token={space} is outside the vocabulary of "
                          f"{model.vocab_size}")
    last = list(model.transition.parameters())[-1]  # layer mixing the last axis (..., b, b)
    b = last.shape[-1]
    last[..., b - 1, b - 1] = 1e-10
    last.div_(last.sum(-1, keepdim=True))
    emission = model.emission
    designated = torch.arange(model.hidden_size, device=emission.device) % b == b - 1
    emission[~designated, space] = 0.0
    if b == model.hidden_size:  # dense: the one space state emits only the space
        emission[designated] = 0.0
        emission[designated, space] = 1.0
    emission.div_(emission.sum(-1, keepdim=True))
