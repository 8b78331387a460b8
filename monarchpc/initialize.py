"""Initialization of a freshly built circuit, chosen by the ``init/`` config group.

``random``: the random stochastic parameters the circuit was built with (seeded).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from monarchpc.circuits.factory import ConfigError
from monarchpc.data import Splits


def initialize(cfg: Any, model: nn.Module, splits: Splits) -> nn.Module:
    """Return ``model`` initialized as ``cfg.init`` says (``cfg`` is the whole run config)."""
    name = cfg.init.name
    if name == "random":
        return model
    raise ConfigError(f"unknown init {name!r}; use init=random")
