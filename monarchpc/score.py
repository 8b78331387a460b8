"""``python -m monarchpc.score``: see :mod:`monarchpc.use.score` (``--help`` lists the
options)."""

from monarchpc.use.cli import run_cli
from monarchpc.use.score import main

if __name__ == "__main__":
    run_cli(main)
