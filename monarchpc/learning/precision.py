"""The matrix-product precision of an E-step, as one value passed down to the kernels.

| name | operands of the sum-block products | accumulation | scales, sums, gradients |
| --- | --- | --- | --- |
| fp32 | fp32, exact products | fp32 | fp32 |
| tf32 | fp32 rounded to TF32 (10 mantissa bits) | fp32 | fp32 |
| bf16 | bf16 | fp32 | fp32 |
| fp16 | fp16 (fp32's precision, 5 exponent bits) | fp32 | fp32 |

Triton kernels get :attr:`Precision.tf32` as an argument. cuBLAS (the PyTorch twins of the
kernels) reads torch's process-wide TF32 switch instead, so an E-step runs inside
:meth:`Precision.products`, which sets the switch for the duration of the call and restores
it: nothing in the package leaves the switch changed. This module is the only place that
reads or writes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from monarchpc.errors import ConfigError

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
          "fp16": torch.float16}
PRECISIONS = tuple(DTYPES)


@dataclass(frozen=True)
class Precision:
    """One of :data:`PRECISIONS` (see the module docstring)."""

    name: str = "fp32"

    def __post_init__(self) -> None:
        if self.name not in DTYPES:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                              f"{self.name!r}")

    @classmethod
    def of(cls, precision: Precision | str) -> Precision:
        """``precision`` as a value (a name is converted)."""
        return precision if isinstance(precision, Precision) else cls(precision)

    @property
    def dtype(self) -> torch.dtype:
        """The operand type of the products (and of the hidden states kept for them)."""
        return DTYPES[self.name]

    @property
    def tf32(self) -> bool:
        """Whether fp32 operands are rounded to TF32 (Triton's ``input_precision``)."""
        return self.name == "tf32"

    @property
    def switch(self) -> bool:
        """torch's TF32 switch during an E-step: off only for exact fp32. 16-bit E-steps
        keep their few fp32 products (the root's dot product, scales) in TF32."""
        return self.name != "fp32"

    @contextlib.contextmanager
    def products(self) -> Iterator[None]:
        """torch's TF32 switch set to :attr:`switch` while the block runs, then restored."""
        matmul = torch.backends.cuda.matmul
        before = matmul.allow_tf32
        matmul.allow_tf32 = self.switch
        try:
            yield
        finally:
            matmul.allow_tf32 = before


FP32 = Precision("fp32")
