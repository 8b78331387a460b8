"""Data sets as token rows: every loader returns a :class:`Splits`.

A data set is chosen by ``dataset.name`` (its YAML in the Hydra group ``dataset/``) and
declared once in :data:`DATASETS`: its loader, the kind of data (which decides the metric
and how ``sample``/``score``/``compress`` encode text or images) and the table of settings
its loader takes (declared beside the loader). Modules are imported on use, so heavy
optional imports stay out of start-up. Loaders validate their inputs and raise
:class:`DataError` with the exact fix (what to fetch, where to put it) before any model is
built. Adding a data set: docs/extending.md.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from monarchpc.errors import ConfigError, DataError  # DataError: loaders raise it from here
from monarchpc.settings import Settings, integer, text

METRICS = {"chars": "bpc", "ints": "bpc", "tokens": "ppl", "image": "bpd"}
"""The metric of each kind of data: bits per character, perplexity, bits per dimension."""


@dataclass(frozen=True)
class Dataset:
    """One entry of :data:`DATASETS`: ``loader`` and ``options`` are "module:name" paths of
    the loader function and of its :data:`~monarchpc.settings.Settings` table; ``kind`` is
    chars (text8-normalized characters), tokens (SentencePiece pieces), ints (integers
    written as numbers) or image (patch rows of images under a colour transform)."""

    loader: str
    options: str
    kind: str

    def resolve(self, path: str) -> Any:
        module, name = path.split(":")
        return getattr(importlib.import_module(module), name)

    @property
    def metric(self) -> str:
        return METRICS[self.kind]


DATASETS: dict[str, Dataset] = {
    "text8": Dataset("monarchpc.data.text8:load", "monarchpc.data.text8:OPTIONS", "chars"),
    "text8_prefix": Dataset("monarchpc.data.text8:load_prefix",
                            "monarchpc.data.text8:PREFIX_OPTIONS", "chars"),
    "chars": Dataset("monarchpc.data.chars:load", "monarchpc.data.chars:OPTIONS", "chars"),
    "demo": Dataset("monarchpc.data.demo:load", "monarchpc.data.demo:OPTIONS", "chars"),
    "synthetic": Dataset("monarchpc.data.synthetic:load", "monarchpc.data.synthetic:OPTIONS",
                         "ints"),
    "lm1b": Dataset("monarchpc.data.lm1b:load", "monarchpc.data.lm1b:OPTIONS", "tokens"),
    "lines": Dataset("monarchpc.data.lines:load", "monarchpc.data.lines:OPTIONS", "tokens"),
    "imagenet": Dataset("monarchpc.data.images:load_imagenet",
                        "monarchpc.data.images:IMAGENET_OPTIONS", "image"),
    "image_folder": Dataset("monarchpc.data.images:load_folder",
                            "monarchpc.data.images:FOLDER_OPTIONS", "image"),
    "image_demo": Dataset("monarchpc.data.images:load_demo",
                          "monarchpc.data.images:DEMO_OPTIONS", "image"),
}

EVAL: Settings = {
    "name": (text(), "the data set (configs/dataset/)"),
    "long_rows": (integer(1), "rows of the long test evaluation"),
}
"""Dataset settings read by the training loop, not passed to the loader."""
EVAL_KEYS = tuple(EVAL)


def dataset(name: str) -> Dataset:
    """The registered data set ``name`` (``dataset.name``), or a ConfigError."""
    if name not in DATASETS:
        raise ConfigError(f"dataset.name={name!r}: unknown data set; use one of "
                          f"{', '.join(sorted(DATASETS))} (configs/dataset/)")
    return DATASETS[name]


def dataset_settings(name: str) -> Settings:
    """Every ``dataset.*`` setting of data set ``name``: the loop's and its loader's."""
    entry = dataset(name)
    return {**EVAL, **entry.resolve(entry.options)}


def check_options(d: dict[str, Any]) -> None:
    """Checks between a data set's settings (each already valid on its own)."""
    side = next((k for k in ("image_size", "crop_size", "resolution") if k in d), None)
    if side and "patch_size" in d and d[side] % d["patch_size"]:
        raise ConfigError(f"dataset.patch_size={d['patch_size']} does not divide "
                          f"dataset.{side}={d[side]}; use a divisor of it (e.g. 4 or 8)")
    if "train_fraction" in d and d["train_fraction"] + d.get("dev_fraction", 0) >= 1:
        raise ConfigError(f"dataset.train_fraction + dataset.dev_fraction = "
                          f"{d['train_fraction'] + d.get('dev_fraction', 0)} leaves no test "
                          f"lines; make their sum < 1")
    if d.get("dev_from") == "test" and d.get("test") is None:
        raise ConfigError("dataset.dev_from=test holds dev out of dataset.test, which is null: "
                          "give dataset.test (a folder or tar of images) or dev_from=train")
    if d.get("text_size") and "split" in d and sum(d["split"]) > d["text_size"]:
        raise ConfigError(f"dataset.split={d['split']} needs {sum(d['split']):,} characters, "
                          f"more than dataset.text_size={d['text_size']:,}; shrink the split")


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
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)} "
                        f"(configs/dataset/)")
    options = {k: v for k, v in dict(cfg).items() if k not in EVAL_KEYS}
    loader = DATASETS[name].resolve(DATASETS[name].loader)
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
