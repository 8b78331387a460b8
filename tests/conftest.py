"""Shared fixtures: one family of small real runs per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_runs import make_runs

# Two CPU threads on a shared 2-core machine make small matmuls up to 50x slower
# (threads spin while the other core is busy); one thread keeps the tests quick.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> run directory; the root is ``runs["hmm4"].parent``."""
    return make_runs(tmp_path_factory.mktemp("outputs"))
