"""``python -m monarchpc.sample``: see :mod:`monarchpc.use.sample` (``--help`` lists the
options)."""

from monarchpc.use.cli import run_cli
from monarchpc.use.sample import main

if __name__ == "__main__":
    run_cli(main)
