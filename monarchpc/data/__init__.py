"""Data sets as token rows: every loader returns a :class:`Splits`.

A data set is chosen by name in the Hydra group ``dataset/``; its YAML is passed to the
loader registered here in ``LOADERS`` (a "module:function" path, imported on use so that
heavy optional imports stay out of start-up). Loaders validate their inputs and raise
:class:`DataError` with the exact fix (what to fetch, where to put it) before any model
is built.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from monarchpc.errors import DataError  # re-exported: loaders raise it from here

LOADERS: dict[str, str] = {
    "text8": "monarchpc.data.text8:load",
    "text8_prefix": "monarchpc.data.text8:load_prefix",
    "chars": "monarchpc.data.chars:load",
    "demo": "monarchpc.data.demo:load",
    "synthetic": "monarchpc.data.synthetic:load",
    "lm1b": "monarchpc.data.lm1b:load",
    "lines": "monarchpc.data.lines:load",
    "imagenet": "monarchpc.data.images:load_imagenet",
    "image_folder": "monarchpc.data.images:load_folder",
    "image_demo": "monarchpc.data.images:load_demo",
}


EVAL_KEYS = ("name", "long_rows")
"""Dataset config keys read by the training loop, not passed to the loader."""


@dataclass
class Splits:
    """Train/dev/test rows of one data set.

    ``train``, ``dev``, ``test``: integer tensors (N, T) of token (or pixel-channel) values
    in [0, vocab_size), kept in a compact dtype (uint8/int16); take ``.long()`` per batch.
    ``test_stream``: the test split as one 1-D line, for "long" evaluation (or None).
    ``metric``: "bpc" (bits per character), "bpd" (bits per dimension) or "ppl" (perplexity).
    ``info``: provenance recorded in the run (source file, sizes, checksums, ...);
    ``info["sources"]``: the source files ({"name", "size", "sha256"} each), which the
    data fingerprint (monarchpc/data/fingerprint.py) records in checkpoints.
    ``epoch_train``: optional function epoch -> train rows, for data sets that draw new
    training rows every epoch (a random patch per image); it must be deterministic in
    the epoch so that resumed runs see the same data.
    ``vocab_sizes``: optional vocabulary of each variable (T,), each <= ``vocab_size``
    (images under YCoCg-R: 256 for Y, 511 for Co and Cg); models that support it give
    values beyond a variable's vocabulary no probability.
    """

    train: Tensor
    dev: Tensor
    test: Tensor
    vocab_size: int
    metric: str = "bpc"
    test_stream: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
    epoch_train: Callable[[int], Tensor] | None = None
    vocab_sizes: list[int] | None = None

    def train_rows(self, epoch: int) -> Tensor:
        """The training rows of epoch ``epoch`` (0-based)."""
        return self.train if self.epoch_train is None else self.epoch_train(epoch)

    @property
    def seq_len(self) -> int:
        return int(self.train.shape[1])

    def describe(self) -> str:
        return (f"{self.info.get('name', 'data')}: vocab {self.vocab_size}, rows of "
                f"{self.seq_len}: train {len(self.train):,} / dev {len(self.dev):,} / "
                f"test {len(self.test):,}")


def build_dataset(cfg: Any) -> Splits:
    """Load the data set named ``cfg.name`` with the options of its config group."""
    name = cfg["name"]
    if name not in LOADERS:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(LOADERS)} "
                        f"(configs/dataset/)")
    module, func = LOADERS[name].split(":")
    options = {k: v for k, v in dict(cfg).items() if k not in EVAL_KEYS}
    loader = getattr(importlib.import_module(module), func)
    try:
        inspect.signature(loader).bind(**options)
    except TypeError as err:
        raise DataError(f"dataset {name!r}: {err} (check the keys of configs/dataset/"
                        f"{name}.yaml and your overrides)") from None
    splits: Splits = loader(**options)
    splits.info.setdefault("name", name)
    return splits


def rows(stream: Tensor, seq_len: int) -> Tensor:
    """Cut a 1-D stream into full rows (N, seq_len), dropping the remainder."""
    n = stream.numel() // seq_len
    return stream[: n * seq_len].reshape(n, seq_len)
