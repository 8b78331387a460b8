"""monarchpc: probabilistic circuits with dense or Monarch sum blocks, trained by stochastic EM.

Data flow: ``data`` -> ``circuits`` -> ``learning`` -> ``train`` (the loop) -> ``reports``.
A trained run is used through ``monarchpc.load_run(run_dir) -> (model, config)``
(:mod:`monarchpc.use.load`), exact conditional queries (:mod:`monarchpc.queries`) and the
``python -m monarchpc.sample`` / ``python -m monarchpc.score`` commands.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_run"]


def _dataset_choice(*, _root_: Any) -> str:
    """The dataset's config-group choice (wikitext2, imagenet32, ...) under a Hydra app, else
    ``dataset.name`` (configs composed by tests or scripts): run names say the data set."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return str(HydraConfig.get().runtime.choices["dataset"])
    except ValueError:  # no Hydra app is running
        return str(_root_.dataset.name)


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("dataset_choice", _dataset_choice, replace=True)


_register_resolvers()


def __getattr__(name: str) -> Any:
    # load_run is imported on first use, so that `import monarchpc` stays light (no torch)
    if name == "load_run":
        from monarchpc.use.load import load_run

        return load_run
    raise AttributeError(f"module 'monarchpc' has no attribute {name!r}")
