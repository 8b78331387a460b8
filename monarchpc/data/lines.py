"""Any local text file of sentences (one per line) as packed SentencePiece rows.

The token-level stand-in for LM1B on machines without it (configs/dataset/wikitext2.yaml:
a WikiText-2 text file, e.g. its validation split). Same tokenizer, separator,
packing and perplexity as LM1B (see :mod:`monarchpc.data.token_rows`).

The file may be plain, ``.xz`` or ``.gz`` (UTF-8). Blank lines are skipped; each other
line, stripped, is one sentence. Split by fraction of the lines in file order, in
contiguous blocks (so a paragraph's neighbours mostly land in the same split): the first
``train_fraction`` of the lines is train, the next ``dev_fraction`` dev, the rest test.
The whole file is read into memory.
"""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path
from typing import Any

from monarchpc.data import DataError, Splits
from monarchpc.data.token_rows import TOKEN_OPTIONS, build_token_splits
from monarchpc.files import file_sha256
from monarchpc.paths import resolve
from monarchpc.settings import Settings, integer, number, text


def read_lines(path: Path) -> list[str]:
    """The non-blank lines of a plain/.xz/.gz text file, stripped."""
    opener = {".xz": lzma.open, ".gz": gzip.open}.get(path.suffix, open)
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return [s.strip() for s in f if s.strip()]
    except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path} as UTF-8 text ({err}); re-fetch the file or fix "
                        f"dataset.path") from None


def split_lines(lines: list[str], train_fraction: float, dev_fraction: float,
                ) -> tuple[list[str], list[str], list[str]]:
    """Contiguous train/dev/test blocks of ``lines`` by fraction (test gets the rest)."""
    if not (train_fraction > 0 and dev_fraction > 0 and train_fraction + dev_fraction < 1):
        raise DataError(f"need 0 < train_fraction, 0 < dev_fraction and their sum < 1, got "
                        f"{train_fraction} and {dev_fraction} (dataset.train_fraction, "
                        f"dataset.dev_fraction)")
    a = int(len(lines) * train_fraction)
    b = a + int(len(lines) * dev_fraction)
    return lines[:a], lines[a:b], lines[b:]


def load(path: str, train_fraction: float = 0.8, dev_fraction: float = 0.1,
         max_lines: int | None = None, **token_options: Any) -> Splits:
    """Sentences of the text file ``path`` (relative: see monarchpc.paths.resolve) as rows.

    ``max_lines``: use only the first lines of the file (quick tests). ``token_options`` go
    to :func:`~monarchpc.data.token_rows.build_token_splits` (vocab_size, model_type,
    character_coverage, max_chars, tokenizer, seq_len, add_bos, cache_dir,
    user_defined_symbols).
    """
    file = resolve(path)
    if not file.is_file():
        raise DataError(f"text file {file} not found; fix dataset.path (WikiText-2: "
                        f"wiki.valid.tokens of https://s3.amazonaws.com/research.metamind.io/"
                        f"wikitext/wikitext-2-v1.zip, unzipped)")
    lines = read_lines(file)[:max_lines]
    train, dev, test = split_lines(lines, train_fraction, dev_fraction)
    key = {"kind": "lines", "file": file.name, "sha256": file_sha256(file),
           "max_lines": max_lines, "train_fraction": train_fraction,
           "dev_fraction": dev_fraction}
    name = file.name.split(".")[0]
    splits = build_token_splits(f"lines-{name}", key, train=lambda: iter([train]),
                                dev=lambda: iter([dev]), test=lambda: iter([test]),
                                **token_options)
    source = {"name": file.name, "size": file.stat().st_size, "sha256": key["sha256"]}
    splits.info.update(path=str(file), lines=len(lines), sources=[source],
                       split_rule=f"contiguous line blocks {train_fraction}/{dev_fraction}/rest")
    return splits


OPTIONS: Settings = {
    "path": (text(), "the text file of sentences, one per line"),
    "train_fraction": (number(0.0, 1.0, open_low=True), "share of lines for train"),
    "dev_fraction": (number(0.0, 1.0, open_low=True), "share of lines for dev"),
    "max_lines": (integer(1, none=True), "lines used; null for all"),
    **TOKEN_OPTIONS,
}
"""The settings of ``dataset=wikitext2`` (configs/dataset/wikitext2.yaml) and any text of
lines."""
