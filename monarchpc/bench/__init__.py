"""Benchmarks, profiles and precision studies of the fused E-steps: ``python -m
monarchpc.bench`` (see ``__main__.py``)."""
