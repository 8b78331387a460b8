"""Every setting of a run checked before any data, model or GPU work.

:func:`check_config` raises one :class:`~monarchpc.errors.ConfigError` line naming the key
and the fix; the groups' own builders (the block spec, the engine, the init) are asked
too, so nothing fails later on a value that could have been refused here.
"""

from __future__ import annotations

from typing import Any

from monarchpc.circuits.sum_blocks import BlockSpec
from monarchpc.errors import ConfigError
from monarchpc.initialize import check_init
from monarchpc.learning.em import UPDATES
from monarchpc.learning.engines import engine_name, select_device
from monarchpc.learning.schedules import SCHEDULES


def check_config(cfg: Any) -> BlockSpec:
    """Check the model, init, optim and trainer groups; return the model's block spec."""
    spec = BlockSpec.from_config(cfg.model)
    check_init(cfg)
    o, t = cfg.optim, cfg.trainer
    if o.schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule={o.schedule!r} is unknown; use one of {SCHEDULES}")
    for key in ("batch_size", "accumulate", "epochs"):
        if int(o[key]) < 1:
            raise ConfigError(f"optim.{key} must be >= 1, got {o[key]}")
    if float(o.pseudocount) < 0:
        raise ConfigError(f"optim.pseudocount must be >= 0, got {o.pseudocount}")
    if o.get("update", "probs") not in UPDATES:
        raise ConfigError(f"optim.update={o.update!r}; use one of {UPDATES}")
    if not 0.0 <= float(o.get("floor", 0.0)) < 1.0:
        raise ConfigError(f"optim.floor must lie in [0, 1) (reference: 1e-10), got {o.floor}")
    if not 0.0 <= float(o.eta_min) <= float(o.eta0) <= 1.0:
        raise ConfigError(f"need 0 <= optim.eta_min <= optim.eta0 <= 1, got "
                          f"{o.eta_min}, {o.eta0}")
    if int(t.eval_every) < 1:
        raise ConfigError(f"trainer.eval_every must be >= 1 (updates between evaluations), "
                          f"got {t.eval_every}")
    if t.get("checkpoint_every") is not None and int(t.checkpoint_every) < 1:
        raise ConfigError(f"trainer.checkpoint_every must be null (= eval_every) or >= 1, "
                          f"got {t.checkpoint_every}")
    if t.long_eval not in ("never", "final", "always"):
        raise ConfigError("trainer.long_eval must be never, final or always")
    device = select_device(t.device)
    engine_name(cfg.model.structure, t, device.type)
    return spec
