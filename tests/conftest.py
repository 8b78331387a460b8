"""Shared fixtures, and the markers of the suite.

* ``kernel``: runs Triton kernels (through the interpreter on a CPU). Without an importable
  Triton such a test fails with the fix in its message, never skips: set
  MONARCHPC_ALLOW_NO_TRITON=1 to skip them knowingly.
* ``slow``: takes more than a few seconds on 2 CPU cores (subprocess runs, kill -9, data
  parallel ranks); ``make test-fast`` leaves them out.
* ``gpu``: needs a CUDA GPU (tests/gpu: the GPU tier, ``make test-gpu``); skipped, with the
  reason, where none is visible. ``--gpu-record DIR`` writes the run's record
  (tests/gpu/record.py).
"""

from __future__ import annotations

import os
from pathlib import Path

# Triton kernels run through the interpreter on this CPU (set before triton is imported).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from tests.helpers import TEXT8_PREFIX, real_data
from tests.report_runs import shared_runs


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--gpu-record", default=None, metavar="DIR",
                     help="write this run's record to DIR/test_gpu_<device>.json (make test-gpu)")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    from tests.gpu import record

    record.collect(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    folder = session.config.getoption("--gpu-record")
    if folder:
        from tests.gpu import record

        args = list(session.config.invocation_params.args)
        if "--gpu-record" in args:  # --gpu-record DIR: the folder is a machine's path
            i = args.index("--gpu-record")
            args = args[:i] + args[i + 2:]
        path = record.write(folder, int(exitstatus), args)
        print(f"\nwrote {path}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():  # as lightning-hydra-template's RunIf(min_gpus=1)
            pytest.skip("needs a CUDA GPU: the GPU tier runs with make test-gpu on one")
    if item.get_closest_marker("kernel") is None:
        return
    from monarchpc.kernels import triton

    if triton is None:
        if os.environ.get("MONARCHPC_ALLOW_NO_TRITON") == "1":
            pytest.skip("Triton is not installed (MONARCHPC_ALLOW_NO_TRITON=1)")
        pytest.fail("Triton is not installed, so this kernel test cannot run: install the dev "
                    "extra (make install; pip install triton on a machine without CUDA "
                    "torch), or set MONARCHPC_ALLOW_NO_TRITON=1 to skip the kernel tests",
                    pytrace=False)


@pytest.fixture
def text8_prefix() -> Path:
    """The real first 12.5M characters of text8 (../shared/data), or skip."""
    return real_data(TEXT8_PREFIX, "real text8 prefix")


@pytest.fixture
def runs() -> dict[str, Path]:
    """name -> run directory of the session's small real runs (tests/report_runs.py)."""
    return shared_runs()
