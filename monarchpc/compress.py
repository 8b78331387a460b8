"""Compress a file with a trained run: ``python -m monarchpc.compress run_dir=... file=...``.

See :mod:`monarchpc.use.compress` (``--help`` lists the options)."""

from monarchpc.use.cli import run_cli
from monarchpc.use.compress import compress_main as main

__all__ = ["main"]

if __name__ == "__main__":
    run_cli(main)
