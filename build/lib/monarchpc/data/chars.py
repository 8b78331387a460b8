"""Character data: any local text, normalized the text8 way, as rows of 27 symbols.

Normalization follows Matt Mahoney's text8 filter: lowercase, digits spelled out
("1" -> " one "), every other character becomes a space, runs of spaces collapse to one.
Symbols: space = 0, "a".."z" = 1..26. Files may be plain, .xz, .gz, .bz2 or .zip (all members).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from monarchpc.data import DataError, Splits, rows
from monarchpc.paths import resolve

VOCAB = " abcdefghijklmnopqrstuvwxyz"
OPENERS = {".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}
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
         seq_len: int = 256, max_chars: int | None = None, cache_dir: str | None = None) -> Splits:
    """Local text file(s), normalized and joined by a space, split by ``fractions``.

    With ``cache_dir`` the encoded characters are cached there, keyed by the files' paths,
    sizes and modification times.
    """
    files = [resolve(p) for p in ([paths] if isinstance(paths, str) else list(paths))]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise DataError(f"chars: missing file(s) {missing}; set dataset.paths to existing text "
                        f"files (plain, .xz, .gz, .bz2 or .zip)")
    key = hashlib.sha256(repr([(str(p), p.stat().st_size, p.stat().st_mtime_ns, max_chars)
                               for p in files]).encode()).hexdigest()[:16]
    cache = resolve(cache_dir) / f"chars-{key}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        codes = np.load(cache)
    else:
        text = " ".join(normalize_text8(read_text(p)) for p in files)
        text = re.sub(" +", " ", text)
        codes = encode(text[:max_chars] if max_chars else text)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, codes)
    info = {"name": "chars", "files": [str(p) for p in files], "chars": int(codes.size)}
    return char_splits(codes, fraction_sizes(codes.size, fractions), seq_len, info)
