"""One factor run of ``init.parallel=true``, in a child process of
:func:`monarchpc.init.factor_runs.train_parallel`:

    python -m monarchpc.train_factor --config <cache_dir>/<name>/factor_config.yaml

A module of its own: it needs the training loop (``train.run``), which imports factor_runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from monarchpc.init.factor_runs import ERRORS, FactorRunIncomplete, train_factor
from monarchpc.train import run


def main(argv: list[str] | None = None) -> None:
    """Train the factor run whose saved resolved config is ``--config``
    (``<cache_dir>/<name>/factor_config.yaml``); errors end in one stderr line."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--config", type=Path, required=True)
    path = parser.parse_args(argv).config.resolve()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(levelname)s] %(message)s")
    config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    config["trainer"]["progress"] = False  # a log file, no bar
    try:
        train_factor(config, path.parent.parent, run)
    except tuple(ERRORS.values()) as err:
        print(f"monarchpc: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        sys.exit(130 if isinstance(err, FactorRunIncomplete) else 2)


if __name__ == "__main__":
    main()
