"""Decompress a file of ``monarchpc.compress``:
``python -m monarchpc.decompress run_dir=... file=...``.

See :mod:`monarchpc.use.compress` (``--help`` lists the options)."""

from monarchpc.use.cli import run_cli
from monarchpc.use.compress import decompress_main as main

__all__ = ["main"]

if __name__ == "__main__":
    run_cli(main)
