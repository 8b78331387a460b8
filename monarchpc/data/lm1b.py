"""LM1B (One Billion Word, Chelba et al. 2013) as packed SentencePiece rows (paper section 5.3).

Setup of the paper, after D3PM: a SentencePiece vocabulary of 8192, sequences packed to
length 128, metric perplexity. Tokenization and packing are in
:mod:`monarchpc.data.token_rows` (EOS after every sentence, last partial row dropped,
perplexity over every packed position).

Where the sentences come from (``source``):

* ``tarball`` - the official release unpacked under ``root`` (default ``data/lm1b``)::

      1-billion-word-language-modeling-benchmark-r13output/
        training-monolingual.tokenized.shuffled/news.en-000NN-of-00100     (99 shards: 01..99)
        heldout-monolingual.tokenized.shuffled/news.en.heldout-000NN-of-00050  (50: 00..49)

  one sentence per line, shards read in sorted order;
* ``disk`` - a Hugging Face ``DatasetDict`` saved with ``save_to_disk`` at ``root``
  (splits ``train`` and ``test``, column ``text``);
* ``hf`` - ``datasets.load_dataset(hf_name, revision=hf_revision)`` (network or HF cache;
  ``datasets`` >= 4 no longer runs the script of the hub's ``lm1b`` entry, so this needs
  a parquet copy of it, named by ``hf_name``/``hf_revision``);
* ``auto`` (default) - ``tarball`` if it is found under ``root``, else ``disk``.

Splits (official layout): **test** = the heldout shards of ``heldout_shards``, by default
``[0]``: ``news.en.heldout-00000-of-00050`` (6,075 sentences), the benchmark's customary test
set, on which LM1B perplexities are usually reported (``all``: the 50 heldout shards, 306,688
sentences, TFDS's ``test`` split); only those shards are needed. **dev** = the first
``dev_sentences`` sentences of the training stream (the shards are already shuffled, so
these are a random sample), removed from **train** = the rest (optionally capped at
``max_train_sentences`` for quick runs). A Hugging Face copy brings its own ``test`` split
(TFDS's, all 50 heldout shards): ``heldout_shards`` cannot select from it.
The tokenizer is trained on the first ``max_chars`` characters of train (after dev and
before any cap, so capped runs share the full run's tokenizer).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from monarchpc.data import DataError, Splits
from monarchpc.data.cache import source_record
from monarchpc.data.token_rows import TOKEN_OPTIONS, Batches, build_token_splits, take
from monarchpc.paths import resolve
from monarchpc.settings import Settings, boolean, choice, integer, list_of, text

log = logging.getLogger(__name__)

URL = ("http://www.statmt.org/lm-benchmark/"
       "1-billion-word-language-modeling-benchmark-r13output.tar.gz")
TOP = "1-billion-word-language-modeling-benchmark-r13output"
TRAIN_DIR = "training-monolingual.tokenized.shuffled"
HELDOUT_DIR = "heldout-monolingual.tokenized.shuffled"
TRAIN_GLOB = "news.en-?????-of-00100"
HELDOUT_GLOB = "news.en.heldout-?????-of-00050"
N_TRAIN_SHARDS, N_HELDOUT_SHARDS = 99, 50
BATCH = 100_000  # sentences per encoding batch


def missing_data_message(root: Path) -> str:
    return (
        f"LM1B not found under {root}. Fix, one of:\n"
        f"  1. the official release (~1.7 GB): wget {URL} && "
        f"mkdir -p {root} && tar -xzf {URL.rsplit('/', 1)[1]} -C {root}\n"
        f"     (giving {root}/{TOP}/{TRAIN_DIR}/news.en-000NN-of-00100 and "
        f"{HELDOUT_DIR}/news.en.heldout-000NN-of-00050), or point dataset.root at the "
        f"folder holding it;\n"
        f"  2. a Hugging Face copy saved with DatasetDict.save_to_disk at dataset.root "
        f"(splits train/test, column text): dataset.source=disk;\n"
        f"  3. the Hugging Face hub: dataset.source=hf dataset.hf_name=<a parquet copy of lm1b> "
        f"(needs network once, then the HF cache).")


def find_official(root: Path) -> Path | None:
    """The folder holding the official train/heldout folders: ``root/TOP`` or ``root``."""
    for top in (root / TOP, root):
        if (top / TRAIN_DIR).is_dir() and (top / HELDOUT_DIR).is_dir():
            return top
    return None


def read_shards(files: list[Path]) -> Iterator[list[str]]:
    """Non-empty lines of ``files`` in order, in batches of at most BATCH sentences."""
    for f in files:
        lines = [s for s in f.read_text(encoding="utf-8", errors="replace").split("\n")
                 if s.strip()]
        for i in range(0, len(lines), BATCH):
            yield lines[i:i + BATCH]


def train_shard(i: int) -> str:
    return f"news.en-{i:05d}-of-00100"


def heldout_shard(i: int) -> str:
    return f"news.en.heldout-{i:05d}-of-00050"


def shard_numbers(heldout_shards: list[int] | str) -> list[int]:
    """The heldout shard numbers of ``dataset.heldout_shards`` (a list, or ``all``)."""
    numbers = list(range(N_HELDOUT_SHARDS)) if heldout_shards == "all" else heldout_shards
    if isinstance(numbers, str) or not numbers or any(
            not isinstance(i, int) or not 0 <= i < N_HELDOUT_SHARDS for i in numbers):
        raise DataError(f"dataset.heldout_shards={heldout_shards!r}: give heldout shard "
                        f"numbers in 0..{N_HELDOUT_SHARDS - 1} (default [0], the customary test "
                        f"set) or all")
    return sorted(set(numbers))


def official_source(root: Path, allow_partial: bool, heldout_shards: list[int] | str,
                    ) -> tuple[dict[str, Any], Batches, Batches, list[Path]]:
    """(source key, train stream, test stream, shard files) of the official layout."""
    top = find_official(root)
    if top is None:
        raise DataError(missing_data_message(root))
    test_files = [top / HELDOUT_DIR / heldout_shard(i) for i in shard_numbers(heldout_shards)]
    missing_test = [f for f in test_files if not f.is_file()]
    if missing_test:
        raise DataError(
            f"LM1B test shard {missing_test[0].name} is missing"
            f"{f' (and {len(missing_test) - 1} more)' if len(missing_test) > 1 else ''}: "
            f"expected at {missing_test[0]}; it is in the official release ({URL}), under "
            f"{TOP}/{HELDOUT_DIR}/: unpack the release under {root}")
    train_files = sorted((top / TRAIN_DIR).glob(TRAIN_GLOB))
    found = {f.name for f in train_files}
    missing = [train_shard(i) for i in range(1, N_TRAIN_SHARDS + 1) if train_shard(i) not in found]
    if not train_files or (missing and not allow_partial):
        raise DataError(
            f"LM1B: {len(missing)} of the {N_TRAIN_SHARDS} training shards are missing in "
            f"{top / TRAIN_DIR} ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
            f"; unpack the whole release ({URL}) under {root}"
            + (", or set dataset.allow_partial=true to train on the "
               f"{len(train_files)} there" if train_files else ""))
    key = {"kind": "tarball",  # files by name and size: a cache follows the data, not its path
           "train": [(f.name, f.stat().st_size) for f in train_files],
           "test": [(f.name, f.stat().st_size) for f in test_files]}
    return (key, lambda: read_shards(train_files), lambda: read_shards(test_files),
            train_files + test_files)


def hf_source(source: str, root: Path, hf_name: str, hf_revision: str | None,
              ) -> tuple[dict[str, Any], Batches, Batches]:
    """(source key, train stream, test stream) from a Hugging Face ``DatasetDict``."""
    import datasets

    try:
        if source == "disk":
            dd = datasets.load_from_disk(str(root))
        else:
            dd = datasets.load_dataset(hf_name, revision=hf_revision)
    except Exception as err:  # whatever failed (network, cache, format): no data, name the fix
        raise DataError(f"could not load LM1B through Hugging Face ({source}): "
                        f"{type(err).__name__}: {err}\n" + missing_data_message(root)) from None
    if not {"train", "test"} <= set(dd) or "text" not in dd["train"].column_names:
        raise DataError(f"the Hugging Face LM1B at {root if source == 'disk' else hf_name} "
                        f"needs splits train/test with a column 'text'; it has "
                        f"{ {k: v.column_names for k, v in dd.items()} }")

    def batches(split: str) -> Iterator[list[str]]:
        ds = dd[split]
        for i in range(0, len(ds), BATCH):
            yield [s for s in ds[i:i + BATCH]["text"] if s.strip()]

    key = {"kind": source, "root": str(root) if source == "disk" else None,
           "hf_name": hf_name if source == "hf" else None, "hf_revision": hf_revision,
           "rows": {k: len(v) for k, v in dd.items()}}
    return key, lambda: batches("train"), lambda: batches("test")


def load(source: str = "auto", root: str = "data/lm1b", dev_sentences: int = 30_000,
         max_train_sentences: int | None = None, allow_partial: bool = False,
         heldout_shards: list[int] | str = (0,), hf_name: str = "lm1b",
         hf_revision: str | None = None, **token_options: Any) -> Splits:
    """LM1B as packed rows; see the module docstring for the sources and splits.

    ``token_options`` go to :func:`~monarchpc.data.token_rows.build_token_splits`
    (vocab_size, model_type, character_coverage, max_chars, tokenizer, seq_len, add_bos,
    cache_dir, user_defined_symbols). Relative paths: see :func:`monarchpc.paths.resolve`.
    """
    path = resolve(root)
    if source == "auto":
        source = "tarball" if find_official(path) else "disk" if (
            path / "dataset_dict.json").is_file() else ""
        if not source:
            raise DataError(missing_data_message(path))
    files: list[Path] = []  # source files to fingerprint (a Hugging Face copy: none)
    heldout_shards = heldout_shards if isinstance(heldout_shards, str) else list(heldout_shards)
    if source == "tarball":
        key, train_all, test, files = official_source(path, allow_partial, heldout_shards)
        names = [name for name, _ in key["test"]]
        test_rule = (f"the {N_HELDOUT_SHARDS} heldout shards" if heldout_shards == "all" else
                     f"heldout shard{'s' if len(names) > 1 else ''} {', '.join(names)}")
    elif source in ("disk", "hf"):
        key, train_all, test = hf_source(source, path, hf_name, hf_revision)
        test_rule = "the copy's test split (TFDS: the 50 heldout shards)"
        if heldout_shards != "all":
            log.warning(f"dataset.heldout_shards={heldout_shards} cannot select shards of a "
                        f"Hugging Face copy: its test split ({test_rule}) is the test set")
    else:
        raise DataError(f"unknown dataset.source {source!r}; use auto, tarball, disk or hf")
    stop = None if max_train_sentences is None else dev_sentences + int(max_train_sentences)
    key = {**key, "dev_sentences": dev_sentences}
    splits = build_token_splits(
        "lm1b", {**key, "max_train_sentences": max_train_sentences},
        train=lambda: take(train_all(), dev_sentences, stop),
        dev=lambda: take(train_all(), 0, dev_sentences), test=test,
        tokenizer_text=lambda: take(train_all(), dev_sentences), tokenizer_source=key,
        **token_options)
    splits.info["split_rule"] = (f"test = {test_rule}; dev = first {dev_sentences} "
                                 f"training sentences; train = the rest")
    splits.info["sources"] = [source_record(f) for f in files]
    return splits


def _heldout_shards(v: Any) -> str | None:
    ok = v == "all" or list_of(choice(*range(N_HELDOUT_SHARDS)), "")(v) is None
    return None if ok else f"must be a list of shard numbers in 0..{N_HELDOUT_SHARDS - 1}, or all"


OPTIONS: Settings = {
    "source": (choice("auto", "tarball", "disk", "hf"), "where LM1B comes from"),
    "root": (text(), "the folder of the LM1B release (or of a saved copy)"),
    "allow_partial": (boolean, "accept an incomplete LM1B release"),
    "hf_name": (text(), "the Hugging Face data set"),
    "hf_revision": (text(none=True), "its revision"),
    "heldout_shards": (_heldout_shards, "LM1B heldout shards that make the test split"),
    "dev_sentences": (integer(1), "training sentences held out as dev"),
    "max_train_sentences": (integer(1, none=True), "cap on training sentences"),
    **TOKEN_OPTIONS,
}
"""The settings of ``dataset=lm1b`` (configs/dataset/lm1b.yaml)."""
