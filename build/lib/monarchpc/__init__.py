"""monarchpc: probabilistic circuits with dense or Monarch sum blocks, trained by stochastic EM.

Data flow: ``data`` -> ``circuits`` -> ``learning`` -> ``train`` (the loop) -> ``reports``.
A trained run is used through ``monarchpc.load_run(run_dir) -> (model, config)``
(:mod:`monarchpc.api`), exact conditional queries (:mod:`monarchpc.conditional`) and the
``python -m monarchpc.sample`` / ``python -m monarchpc.score`` commands.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_run"]


def __getattr__(name: str) -> Any:
    # load_run is imported on first use, so that `import monarchpc` stays light (no torch)
    if name == "load_run":
        from monarchpc.api import load_run

        return load_run
    raise AttributeError(f"module 'monarchpc' has no attribute {name!r}")
