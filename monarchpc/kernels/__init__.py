"""GPU kernels (Triton), each with the PyTorch twin it is tested against.

Every family of kernels is chosen with one setting, ``triton``, ``torch`` or ``auto``
(:func:`choose`): Triton runs on a GPU, or on the CPU through its interpreter
(``TRITON_INTERPRET=1``, as the tests do); the PyTorch twins run anywhere.
"""

from __future__ import annotations

import os

import torch

try:  # Triton ships with CUDA builds of torch; on a CPU it runs under TRITON_INTERPRET=1
    import triton
except ImportError:  # pragma: no cover - exercised on machines without Triton
    triton = None

KINDS = ("auto", "triton", "torch")


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_usable(device: torch.device) -> bool:
    """Whether the Triton kernels can run on ``device`` (a GPU, or the CPU interpreter)."""
    if triton is None:
        return False
    return device.type == "cuda" or interpreting()


def choose(kind: str, device: torch.device, setting: str = "kernels",
           auto_triton: bool = True) -> str:
    """``triton`` or ``torch`` for a ``kind`` of ``setting`` (triton, torch or auto: Triton
    on a GPU where ``auto_triton``); an unknown kind is a ValueError, Triton where it cannot
    run a RuntimeError naming the fix."""
    if kind not in KINDS:
        raise ValueError(f"{setting} must be auto, triton or torch, got {kind!r}")
    if kind == "auto":
        return "triton" if auto_triton and device.type == "cuda" and triton_usable(device) \
            else "torch"
    if kind == "triton" and not triton_usable(device):
        raise RuntimeError(f"Triton {setting} need Triton and a GPU (or TRITON_INTERPRET=1); "
                           f"install triton or use {setting}=torch")
    return kind
