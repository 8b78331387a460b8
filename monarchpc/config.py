"""Every value of a run's config checked before any work, each with one line naming the fix.

The rules live with their owners (:mod:`monarchpc.settings` lists them); this module only
walks a composed config through them: the top-level keys and the groups ``trainer``,
``optim``, ``dataset`` (the chosen data set's settings), ``model`` (the chosen structure's),
``init``, ``logger`` and ``paths``. A key no owner declares is an error, as is a value its
rule refuses: the :class:`~monarchpc.errors.ConfigError` reads ``<group>.<key>=<value>:
<requirement> (<what the key means>)``. Then the builders are asked what only they know:
the model's block spec (factors of the hidden size), the ``init`` group and the engine for
``trainer.engine`` / ``trainer.precision`` on this machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from monarchpc.circuits.blocks import BlockSpec
from monarchpc.data import DATASETS, check_options, dataset_settings
from monarchpc.errors import ConfigError
from monarchpc.init.initialize import INIT, check_init
from monarchpc.learning.em import OPTIM
from monarchpc.learning.engines import engine_name, select_device
from monarchpc.paths import PATHS
from monarchpc.run.tracking import LOGGER
from monarchpc.run.trainer import TOP, TRAINER
from monarchpc.settings import Settings, check_group, nullable
from monarchpc.structures import STRUCTURES, model_settings, structure_of

GROUPS: dict[str, Settings] = {"trainer": TRAINER, "optim": OPTIM, "init": INIT,
                               "logger": LOGGER, "paths": PATHS}
"""The groups whose settings do not depend on a choice (dataset and model do)."""


def settings_help() -> str:
    """Every setting with what it means, one line each (for ``--help``): the fixed groups,
    then the model settings of each structure and the dataset settings of each data set."""
    lines = [f"  {k}: {meaning}" for k, (_, meaning) in TOP.items()]
    for group, settings in GROUPS.items():
        lines += [f"  {group}.{k}: {meaning}" for k, (_, meaning) in settings.items()]
    for name in STRUCTURES:
        lines.append(f"  model (structure {name}):")
        lines += [f"    model.{k}: {meaning}" for k, (_, meaning) in model_settings(name).items()]
    for name in DATASETS:
        lines.append(f"  dataset (name {name}):")
        lines += [f"    dataset.{k}: {m}" for k, (_, m) in dataset_settings(name).items()]
    return "\n".join(lines)


def _settings_of(group: str, cfg: DictConfig) -> Settings:
    """The settings table of a group of ``cfg`` ({} where it cannot be told)."""
    if group == "dataset" and cfg.dataset.get("name") in DATASETS:
        return dataset_settings(cfg.dataset.name)
    if group == "model":
        return model_settings(cfg.model.get("structure")) \
            if cfg.model.get("structure") in STRUCTURES else {}
    return TOP if group == "" else GROUPS.get(group, {})


def check_config(cfg: DictConfig | Mapping[str, Any]) -> BlockSpec:
    """Raise :class:`ConfigError` (one line naming the key and the fix) for the first value
    of ``cfg`` that cannot work (see the module docstring); returns the model's block spec.
    Reads nothing but ``cfg`` (and which devices this machine has)."""
    if isinstance(cfg, DictConfig):
        for key in sorted(OmegaConf.missing_keys(cfg)):
            group, _, name = key.rpartition(".")
            meaning = _settings_of(group, cfg).get(name, (None, "a required setting"))[1]
            raise ConfigError(f"{key} is required ({meaning}): give it on the command line, "
                              f"e.g. {key}=... (see configs/{group or 'train'}/)")
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    top = {k: v for k, v in c.items() if k not in GROUPS and k not in ("dataset", "model")}
    check_group("", top, TOP)
    for group, settings in GROUPS.items():
        values = dict(c.get(group) or {})
        if group == "init":  # the factor runs' overrides of optim and trainer
            for sub, rules in (("optim", OPTIM), ("trainer", TRAINER)):
                check_group(f"init.{sub}.", values.pop(sub, None) or {}, nullable(rules),
                            f"init.{sub}")
        check_group(f"{group}.", values, settings)
    dataset = dict(c.get("dataset") or {})
    check_group("dataset.", {"name": dataset.get("name")},
                {"name": (lambda v: None if v in DATASETS else
                          f"must be one of {', '.join(sorted(DATASETS))}",
                          "the data set (configs/dataset/)")})
    check_group("dataset.", dataset, dataset_settings(dataset["name"]),
                f"dataset {dataset['name']}")
    check_options(dataset)
    model = dict(c.get("model") or {})
    structure = structure_of(str(model.get("structure")))
    check_group("model.", model, model_settings(structure.name),
                f"model.structure={structure.name}")
    optim = c.get("optim") or {}
    if "eta_min" in optim and "eta0" in optim and optim["eta_min"] > optim["eta0"]:
        raise ConfigError(f"optim.eta_min={optim['eta_min']} exceeds optim.eta0="
                          f"{optim['eta0']}; lower optim.eta_min")
    config = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    spec = BlockSpec.from_config(config.model)
    check_init(config)
    engine_name(config.trainer, select_device(config.trainer.device).type, structure.fused,
                structure.name)
    return spec
