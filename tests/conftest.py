"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

# Triton kernels run through the interpreter on this CPU (set before triton is imported).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from tests.helpers import TEXT8_PREFIX
from tests.report_runs import shared_runs


@pytest.fixture
def text8_prefix() -> Path:
    """The real first 12.5M characters of text8 (../shared/data), or skip."""
    if not TEXT8_PREFIX.is_file():
        pytest.skip(f"real text8 prefix not found at {TEXT8_PREFIX}")
    return TEXT8_PREFIX


@pytest.fixture
def runs() -> dict[str, Path]:
    """name -> run directory of the session's small real runs (tests/report_runs.py)."""
    return shared_runs()
