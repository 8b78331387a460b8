"""Text8: the first 10^8 characters of English Wikipedia, cleaned to a-z and space.

Official source: http://mattmahoney.net/dc/text8.zip (31,344,016 bytes), holding one file
``text8`` of 100,000,000 characters. Split as in the paper: the first 90M characters
train, the next 5M dev, the last 5M test, each cut into rows of 256; the test split is
also kept as one line for "long" evaluation. The verified characters are cached as
``<root>/text8.npy`` (verified on every read, see :mod:`monarchpc.data.cache`).

``dataset=text8_prefix`` (:func:`load_prefix`) trains on the first N characters of the same
official file instead (default 12,500,000, one eighth: the data of the committed runs under
docs/results/runs/text8_prefix), checked against their sha256 and split 90/5/5 % exactly as
``dataset=chars`` split them (:func:`~monarchpc.data.chars.fraction_sizes`).
"""

from __future__ import annotations

import hashlib
import lzma
import shutil
import urllib.request
import zipfile
from pathlib import Path

from monarchpc.data import DataError, Splits
from monarchpc.data.cache import load_array, save_array, text_record
from monarchpc.data.chars import VOCAB, char_splits, encode, fraction_sizes, fractions_rule
from monarchpc.paths import resolve
from monarchpc.settings import Settings, boolean, integer, list_of, sha256, text

URL = "http://mattmahoney.net/dc/text8.zip"
ZIP_SIZE = 31_344_016
TEXT_SIZE = 100_000_000
# sha256 of the unzipped 10^8 characters, as published alongside the corpus in public
# reproduction notes; set dataset.sha256=null to skip the check.
TEXT_SHA256 = "6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7"
SPLIT = (90_000_000, 5_000_000, 5_000_000)
PREFIX_CHARS = 12_500_000
# sha256 of the first 12,500,000 characters of text8: those of the committed text8-prefix
# runs (docs/results/runs/text8_prefix: dataset=chars on a copy of exactly these characters,
# text8_first12500000.xz, 3,145,272 bytes, sha256 ac6a13da...).
PREFIX_SHA256 = "0e535fcbf0064c2dda5c5b611de12ba3fb0d928fe2e9b9d7528e2934097b3cb7"


def fix_hint(root: Path, url: str, zip_size: int | None) -> str:
    size = f" ({zip_size:,} bytes)" if zip_size else ""
    return (f"download {url}{size} and put it at {root / 'text8.zip'} (or unzipped as "
            f"{root / 'text8'}), or point dataset.path at a local copy")


def locate(path: str | None, root: Path, url: str, download: bool,
           zip_size: int | None) -> Path:
    """The text8 source file: ``path``, else ``root``/text8.zip or text8, else a download."""
    if path is not None:
        src = resolve(path)
        if not src.is_file():
            raise DataError(f"text8: dataset.path={path} does not exist; "
                            + fix_hint(root, url, zip_size))
        return src
    for name in ("text8.zip", "text8"):
        if (root / name).is_file():
            return root / name
    if not download:
        raise DataError("text8: not found and dataset.download=false; "
                        + fix_hint(root, url, zip_size))
    root.mkdir(parents=True, exist_ok=True)
    part = root / "text8.zip.part"
    print(f"downloading {url} -> {root / 'text8.zip'}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as err:
        part.unlink(missing_ok=True)
        raise DataError(f"text8: download failed ({err}); " + fix_hint(root, url, zip_size)
                        ) from err
    part.replace(root / "text8.zip")
    return root / "text8.zip"


def read_verified(src: Path, url: str, zip_size: int | None, text_size: int | None,
                  sha256: str | None) -> bytes:
    """The corpus bytes of ``src`` (zip or plain), checked against the expected sizes/hash."""
    hint = fix_hint(src.parent, url, zip_size)
    if src.suffix == ".zip":
        if zip_size is not None and src.stat().st_size != zip_size:
            raise DataError(f"text8: {src} has {src.stat().st_size:,} bytes, expected "
                            f"{zip_size:,}: the download is incomplete or corrupt; delete it "
                            f"and {hint}")
        try:
            with zipfile.ZipFile(src) as zf:
                raw = zf.read(zf.namelist()[0])
        except (zipfile.BadZipFile, IndexError, OSError) as err:
            raise DataError(f"text8: {src} is not a valid zip ({err}); delete it and {hint}"
                            ) from err
    else:
        raw = src.read_bytes()
    if text_size is not None and len(raw) != text_size:
        raise DataError(f"text8: {src} holds {len(raw):,} characters, expected {text_size:,}; "
                        f"delete it and {hint}")
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise DataError(f"text8: checksum mismatch for {src} (sha256 of the text is "
                        f"{hashlib.sha256(raw).hexdigest()}, expected {sha256}); the file is "
                        f"corrupt or not text8: delete it and {hint}")
    return raw


def load(path: str | None = None, root: str = "data/text8", url: str = URL,
         download: bool = True, zip_size: int | None = ZIP_SIZE,
         text_size: int | None = TEXT_SIZE, sha256: str | None = TEXT_SHA256,
         split: list[int] = SPLIT, seq_len: int = 256) -> Splits:
    """Text8 as 27-symbol rows (see module docstring); downloads when allowed and needed."""
    root_dir = resolve(root)
    cache = root_dir / "text8.npy"
    found = load_array(cache)
    if found is not None:
        text = found[1][0]  # the source record of the cached characters
        if sha256 not in (None, text["sha256"]) or text_size not in (None, text["size"]):
            found = None  # built with dataset.sha256=null or another text_size: check it now
    if found is not None:
        codes, sources = found
        source = str(cache)
    else:
        src = locate(path, root_dir, url, download, zip_size)
        raw = read_verified(src, url, zip_size, text_size, sha256)
        if raw.translate(None, delete=b" abcdefghijklmnopqrstuvwxyz"):
            raise DataError(f"text8: {src} contains characters other than a-z and space; "
                            f"it is not text8 (use dataset=chars for other text)")
        codes = encode(raw.decode("ascii"))
        sources = [text_record("text8", raw)]
        save_array(cache, codes, sources)
        source = str(src)
    info = {"name": "text8", "source": source, "chars": int(codes.size), "split": list(split),
            "sources": sources}
    return char_splits(codes, tuple(split), seq_len, info)


def read_prefix(src: Path, n: int, url: str, zip_size: int | None) -> bytes:
    """The first ``n`` characters of ``src``: text8.zip (its first member), an .xz copy, or
    the unzipped text; only those are decompressed."""
    hint = fix_hint(src.parent, url, zip_size)
    try:
        if src.suffix == ".zip":
            if zip_size is not None and src.stat().st_size != zip_size:
                raise DataError(f"text8: {src} has {src.stat().st_size:,} bytes, expected "
                                f"{zip_size:,}: the download is incomplete or corrupt; delete "
                                f"it and {hint}")
            with zipfile.ZipFile(src) as zf, zf.open(zf.namelist()[0]) as f:
                return f.read(n)
        opener = lzma.open if src.suffix == ".xz" else open
        with opener(src, "rb") as f:
            return f.read(n)
    except (zipfile.BadZipFile, IndexError, OSError, EOFError, lzma.LZMAError) as err:
        raise DataError(f"text8: cannot read {src} ({err}): it is truncated or corrupt; delete "
                        f"it and {hint}") from err


def load_prefix(path: str | None = None, root: str = "data/text8", url: str = URL,
                download: bool = True, zip_size: int | None = ZIP_SIZE,
                prefix_chars: int = PREFIX_CHARS, prefix_sha256: str | None = PREFIX_SHA256,
                fractions: list[float] = (0.9, 0.05, 0.05), seq_len: int = 256) -> Splits:
    """The first ``prefix_chars`` characters of text8 as 27-symbol rows, split by ``fractions``.

    Reads the official text8.zip (found, or downloaded, as :func:`load` does) or, with
    ``path``, any copy holding at least those characters (plain, .zip or .xz). The
    characters must hash to ``prefix_sha256`` (null: not checked). The record names them
    ``text8[:N]`` whatever file they came from, so runs on the official zip and on a copy
    of the prefix have the same data fingerprint.
    """
    src = locate(path, resolve(root), url, download, zip_size)
    raw = read_prefix(src, prefix_chars, url, zip_size)
    hint = fix_hint(src.parent, url, zip_size)
    if len(raw) < prefix_chars:
        raise DataError(f"text8_prefix: {src} holds {len(raw):,} characters, fewer than "
                        f"dataset.prefix_chars={prefix_chars:,}; it is truncated: delete it "
                        f"and {hint}")
    digest = hashlib.sha256(raw).hexdigest()
    if prefix_sha256 is not None and digest != prefix_sha256:
        raise DataError(f"text8_prefix: the first {prefix_chars:,} characters of {src} have "
                        f"sha256 {digest}, expected {prefix_sha256}: the file is corrupt or "
                        f"not text8; delete it and {hint}")
    if raw.translate(None, delete=VOCAB.encode()):
        raise DataError(f"text8_prefix: {src} contains characters other than a-z and space; "
                        f"it is not text8 (use dataset=chars for other text)")
    codes = encode(raw.decode("ascii"))
    info = {"name": "text8_prefix", "file": src.name, "url": url, "chars": prefix_chars,
            "prefix_sha256": digest, "fractions": list(fractions),
            "sources": [text_record(f"text8[:{prefix_chars}]", raw)]}
    return char_splits(codes, fraction_sizes(prefix_chars, fractions), seq_len, info)


OPTIONS: Settings = {
    "path": (text(none=True), "a local text8.zip or unzipped text8 to use instead of root/"),
    "root": (text(), "the folder text8.zip is downloaded to and cached in"),
    "download": (boolean, "fetch the data when it is missing"),
    "url": (text(), "where to download from"),
    "zip_size": (integer(1, none=True), "expected size of the download; null skips the check"),
    "text_size": (integer(1, none=True), "expected characters; null skips the check"),
    "sha256": (sha256, "expected sha256 of the text"),
    "split": (list_of(integer(1), "positive integers", 3), "train/dev/test characters"),
    "seq_len": (integer(2), "characters per row; one has no transition to learn"),
}
"""The settings of ``dataset=text8`` (configs/dataset/text8.yaml)."""

PREFIX_OPTIONS: Settings = {
    "path": OPTIONS["path"], "root": OPTIONS["root"], "download": OPTIONS["download"],
    "url": OPTIONS["url"], "zip_size": OPTIONS["zip_size"],
    "prefix_chars": (integer(1), "leading characters of text8 used"),
    "prefix_sha256": (sha256, "expected sha256 of those characters"),
    "fractions": (fractions_rule, "train/dev/test shares of the prefix"),
    "seq_len": OPTIONS["seq_len"],
}
"""The settings of ``dataset=text8_prefix`` (configs/dataset/text8_prefix.yaml)."""
