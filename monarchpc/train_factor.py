"""One factor run of ``init.parallel=true``, in a child process of
:func:`monarchpc.init.factor_runs.train_parallel`:

    python -m monarchpc.train_factor --config <cache_dir>/<name>/factor_config.yaml --parent PID

A module of its own: it needs the training loop (``train.run``), which imports factor_runs.
With ``--parent``, the run stops (checkpoint, exit 143) when that process dies. A stopped
run exits 128 + the signal (130 for the SIGINT its parent forwards), errors 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from monarchpc.errors import Interrupted
from monarchpc.init.factor_runs import ERRORS, train_factor
from monarchpc.run.interrupt import stop_with_parent
from monarchpc.train import run


def main(argv: list[str] | None = None) -> None:
    """Train the factor run whose saved resolved config is ``--config``
    (``<cache_dir>/<name>/factor_config.yaml``); errors end in one stderr line."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--parent", type=int, default=None,
                        help="stop (with a checkpoint) when this process dies")
    args = parser.parse_args(argv)
    if args.parent is not None:
        stop_with_parent(args.parent)
    path = args.config.resolve()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(levelname)s] %(message)s")
    config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    config["trainer"]["progress"] = False  # a log file, no bar
    try:
        train_factor(config, path.parent.parent, run)
    except tuple(ERRORS.values()) as err:
        print(f"monarchpc: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        sys.exit(err.exit_code if isinstance(err, Interrupted) else 2)


if __name__ == "__main__":
    main()
