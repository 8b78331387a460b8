"""The GPU tier (``make test-gpu``): Triton must compile for the GPU, not run in its CPU
interpreter, which the suite's root conftest turns on unless TRITON_INTERPRET is set."""

from __future__ import annotations

import pytest
import torch

from monarchpc.kernels import interpreting


@pytest.fixture(autouse=True)
def compiled_triton() -> None:
    if torch.cuda.is_available() and interpreting():
        pytest.fail("TRITON_INTERPRET=1 runs Triton kernels in the CPU interpreter; run the GPU "
                    "tier with TRITON_INTERPRET=0 (make test-gpu does)", pytrace=False)
