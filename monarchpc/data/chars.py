"""Character data: any local text, normalized the text8 way, as rows of 27 symbols.

Normalization follows Matt Mahoney's text8 filter: lowercase, digits spelled out
("1" -> " one "), every other character becomes a space, runs of spaces collapse to one.
Symbols: space = 0, "a".."z" = 1..26. Files may be plain, .xz, .gz, .bz2 or .zip (all members).

Input must be text: a file in which more than 1% of the characters are control
characters or bytes that are not UTF-8 (a binary file, another encoding) is refused,
unless ``allow_non_text`` is set; normalization would silently turn those into spaces.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monarchpc.data import DataError, Splits, rows
from monarchpc.data.cache import cached_array, source_record
from monarchpc.paths import resolve
from monarchpc.settings import Settings, boolean, integer, list_of, number, text

VOCAB = " abcdefghijklmnopqrstuvwxyz"
OPENERS = {".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}
NON_TEXT = re.compile("[\x00-\x08\x0e-\x1f\x7f\ufffd]")
"""Characters no text holds: control characters other than whitespace, and U+FFFD, what
bytes that are not UTF-8 decode to."""
MAX_NON_TEXT = 0.01
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def read_text(path: str | Path) -> str:
    """The text of a plain or compressed file (.xz, .gz, .bz2, .zip: members concatenated)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"text file not found: {path}; check dataset.paths")
    suffix = path.suffix.lower()
    try:
        if suffix in OPENERS:
            with OPENERS[suffix](path) as f:
                raw = f.read()
        elif suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                raw = b" ".join(zf.read(name) for name in zf.namelist() if not name.endswith("/"))
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, lzma.LZMAError, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read {path} ({err}); the file is corrupt or truncated: "
                        f"fetch it again") from err
    return raw.decode("utf-8", errors="replace")


TRAIN_FIX = "convert it to UTF-8, or set dataset.allow_non_text=true to train on it anyway"


def check_text(text: str, path: Path, allow_non_text: bool = False, fix: str = TRAIN_FIX
               ) -> None:
    """Raise DataError (ending with ``fix``) if more than 1% of ``text`` (read from
    ``path``) is not text."""
    bad = len(NON_TEXT.findall(text))
    if text and bad > MAX_NON_TEXT * len(text) and not allow_non_text:
        raise DataError(f"chars: {path} is not UTF-8 text: {bad / len(text):.1%} of its "
                        f"characters are control characters or undecodable bytes (a binary "
                        f"file or another encoding); {fix}")


def normalize_text8(text: str) -> str:
    """Normalize text the text8 way (see module docstring); returns only ' ' and a-z."""
    text = text.lower()
    for d, word in enumerate(DIGITS):
        text = text.replace(str(d), f" {word} ")
    text = re.sub(r"[^a-z]+", " ", text)
    return text


def encode(text: str) -> np.ndarray:
    """Map a normalized text (only ' ' and a-z) to uint8 codes 0..26."""
    codes = np.frombuffer(text.encode("ascii"), dtype=np.uint8).copy()
    codes[codes == ord(" ")] = ord("a") - 1
    codes -= ord("a") - 1
    if codes.size and codes.max() >= len(VOCAB):
        raise DataError("text contains symbols outside the text8 vocabulary of 27; "
                        "normalize it with normalize_text8 first")
    return codes


def decode(codes: np.ndarray | torch.Tensor) -> str:
    """Inverse of :func:`encode`."""
    return "".join(VOCAB[int(c)] for c in np.asarray(codes).reshape(-1))


def char_splits(codes: np.ndarray, sizes: tuple[int, int, int], seq_len: int,
                info: dict) -> Splits:
    """Consecutive train/dev/test spans of ``sizes`` characters, each cut into rows.

    The test span is also kept whole as ``test_stream`` for long evaluation.
    """
    n_train, n_dev, n_test = sizes
    if n_train + n_dev + n_test > codes.size:
        raise DataError(f"{info.get('name', 'data')}: needs {sum(sizes):,} characters, "
                        f"has {codes.size:,}")
    stream = torch.from_numpy(codes)
    train = stream[:n_train]
    dev = stream[n_train:n_train + n_dev]
    test = stream[n_train + n_dev:n_train + n_dev + n_test]
    if min(train.numel(), dev.numel(), test.numel()) < seq_len:
        raise DataError(f"{info.get('name', 'data')}: every split needs at least one row of "
                        f"{seq_len} characters (sizes {sizes}); use more text or a smaller "
                        f"dataset.seq_len")
    return Splits(train=rows(train, seq_len), dev=rows(dev, seq_len), test=rows(test, seq_len),
                  vocab_size=len(VOCAB), metric="bpc", test_stream=test.clone(), info=info)


def fraction_sizes(total: int, fractions: list[float] | tuple[float, ...]) -> tuple[int, int, int]:
    """Split ``total`` characters by three fractions (train, dev, test)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) > 1.0 + 1e-9:
        raise DataError(f"dataset.fractions must be three non-negative numbers summing to at "
                        f"most 1, got {list(fractions)}")
    n_train, n_dev = int(total * fractions[0]), int(total * fractions[1])
    return n_train, n_dev, min(int(total * fractions[2]), total - n_train - n_dev)


def load(paths: str | list[str], fractions: list[float] = (0.9, 0.05, 0.05),
         seq_len: int = 256, max_chars: int | None = None, cache_dir: str | None = None,
         allow_non_text: bool = False) -> Splits:
    """Local text file(s), normalized and joined by a space, split by ``fractions``.

    With ``cache_dir`` the encoded characters are cached there (verified on read), keyed by
    the files' paths, sizes and modification times. ``allow_non_text``: accept files that
    are not text (see the module docstring).
    """
    files = [resolve(p) for p in ([paths] if isinstance(paths, str) else list(paths))]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise DataError(f"chars: missing file(s) {missing}; set dataset.paths to existing text "
                        f"files (plain, .xz, .gz, .bz2 or .zip)")

    def build() -> tuple[np.ndarray, list[dict]]:
        texts = []
        for p in files:
            text = read_text(p)
            check_text(text, p, allow_non_text)
            texts.append(normalize_text8(text))
        text = re.sub(" +", " ", " ".join(texts))
        return encode(text[:max_chars] if max_chars else text), [source_record(p) for p in files]

    if cache_dir:
        key = hashlib.sha256(repr([(str(p), p.stat().st_size, p.stat().st_mtime_ns, max_chars,
                                    allow_non_text) for p in files]).encode()).hexdigest()[:16]
        codes, sources = cached_array(resolve(cache_dir) / f"chars-{key}.npy", build)
    else:
        codes, sources = build()
    info = {"name": "chars", "files": [str(p) for p in files], "chars": int(codes.size),
            "sources": sources}
    return char_splits(codes, fraction_sizes(codes.size, fractions), seq_len, info)


def fractions_rule(v: Any) -> str | None:
    """3 fractions (train, dev, test), each > 0, summing to at most 1."""
    ok = list_of(number(0.0, 1.0, open_low=True), "", 3)(v) is None and sum(v) <= 1.0 + 1e-9
    return None if ok else "must be 3 fractions (train, dev, test), each > 0, summing to <= 1"


OPTIONS: Settings = {
    "paths": (list_of(text(), "file paths"), "text files to read"),
    "fractions": (fractions_rule, "train/dev/test shares of the text"),
    "seq_len": (integer(2), "characters per row; one has no transition to learn"),
    "max_chars": (integer(1, none=True), "characters used; null for all"),
    "cache_dir": (text(none=True), "folder of the data caches"),
    "allow_non_text": (boolean, "true trains on files that are not text (binary, not UTF-8)"),
}
"""The settings of ``dataset=chars`` (configs/dataset/chars.yaml)."""
