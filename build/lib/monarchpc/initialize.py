"""Initialization of a freshly built circuit, chosen by the ``init/`` config group.

``random``: the random stochastic parameters the circuit was built with (seeded).
``multiply``: circuit multiplication (paper Section 3, Table 2). Dense HMMs of sizes
h_0..h_{k-1} (the model's Monarch factors) are trained by the same loop, or reused from
their cache (:mod:`monarchpc.factor_runs`), and their product is written into the model:
layer d of the Monarch transition = A_d in every block, initial = kron(g_d), emission =
prod_d B_d renormalized per state (:mod:`monarchpc.circuits.multiply`). The factor run
directories are recorded in ``cfg.init.factor_runs`` and from there in the run's saved
config, checkpoint and ``run.json``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from monarchpc.circuits.factory import ConfigError
from monarchpc.circuits.hmm import HMM
from monarchpc.circuits.multiply import multiply_into
from monarchpc.data import Splits
from monarchpc.factor_runs import factor_runs, factor_sizes, load_factor

INITS = ("random", "multiply")


def check_init(cfg: Any) -> None:
    """Fail fast (before any data is loaded) on an init setting that cannot work."""
    name = cfg.init.name
    if name not in INITS:
        raise ConfigError(f"unknown init {name!r}; use init=random or init=multiply")
    if name == "multiply":
        if cfg.model.structure != "hmm":
            raise ConfigError(f"init=multiply builds HMMs; model.structure is "
                              f"{cfg.model.structure!r}")
        factor_sizes(cfg)


def initialize(cfg: Any, model: nn.Module, splits: Splits) -> nn.Module:
    """Return ``model`` initialized as ``cfg.init`` says (``cfg`` is the whole run config)."""
    check_init(cfg)
    if cfg.init.name == "random":
        return model
    assert isinstance(model, HMM)
    dirs = factor_runs(cfg, splits)
    factors = [load_factor(d, splits.vocab_size) for d in dirs]
    try:
        multiply_into(model, factors, renormalize=bool(cfg.init.get("renormalize", True)))
    except ValueError as err:  # factor runs given by hand that do not fit the model
        raise ConfigError(f"init=multiply: {err} (factor runs {[str(d) for d in dirs]})"
                          ) from None
    cfg.init.factor_runs = [str(d) for d in dirs]
    return model
