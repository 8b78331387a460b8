"""Data: text8 preparation (split, vocabulary, rows, checksum failures), local text, demo."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from monarchpc.data import DataError, build_dataset
from monarchpc.data import text8 as text8_data
from monarchpc.data.chars import decode, encode, normalize_text8
from monarchpc.data.demo import corpus


def fake_text8(tmp_path: Path, n: int = 4000, seed: int = 0) -> tuple[Path, bytes]:
    rng = np.random.default_rng(seed)
    raw = bytes(rng.choice(list(b" abcdefghijklmnopqrstuvwxyz"), size=n).tolist())
    zpath = tmp_path / "text8.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("text8", raw)
    return zpath, raw


def load_fake(zpath: Path, raw: bytes, root: Path, **overrides) -> object:
    options = {"path": str(zpath), "root": str(root), "download": False,
               "zip_size": zpath.stat().st_size, "text_size": len(raw),
               "sha256": hashlib.sha256(raw).hexdigest(), "split": [3000, 500, 500],
               "seq_len": 16} | overrides
    return text8_data.load(**options)


def test_text8_split_vocabulary_rows_and_cache(tmp_path: Path) -> None:
    zpath, raw = fake_text8(tmp_path)
    splits = load_fake(zpath, raw, tmp_path / "cache")
    assert splits.vocab_size == 27 and splits.metric == "bpc"
    assert splits.train.shape == (3000 // 16, 16)
    assert splits.dev.shape == (500 // 16, 16) and splits.test.shape == (500 // 16, 16)
    assert decode(splits.train.reshape(-1)) == raw[: 187 * 16].decode()
    assert decode(splits.dev[0]) == raw[3000:3016].decode()
    assert decode(splits.test_stream) == raw[3500:4000].decode()
    assert (tmp_path / "cache" / "text8.npy").is_file()
    again = text8_data.load(root=str(tmp_path / "cache"), download=False, split=[3000, 500, 500],
                            seq_len=16, text_size=len(raw), sha256=hashlib.sha256(raw).hexdigest())
    assert torch.equal(again.train, splits.train)  # served from the cache, no source needed
    with pytest.raises(DataError, match="not found"):  # a cache of other text is not text8's
        text8_data.load(root=str(tmp_path / "cache"), download=False, split=[3000, 500, 500])


def test_text8_checksum_and_size_failures_name_the_fix(tmp_path: Path) -> None:
    zpath, raw = fake_text8(tmp_path)
    with pytest.raises(DataError, match=r"checksum mismatch.*mattmahoney.net/dc/text8.zip"):
        load_fake(zpath, raw, tmp_path / "a", sha256="0" * 64)
    with pytest.raises(DataError, match=r"expected 31,344,016.*incomplete or corrupt"):
        load_fake(zpath, raw, tmp_path / "b", zip_size=31_344_016)
    with pytest.raises(DataError, match="holds 4,000 characters, expected 100,000,000"):
        load_fake(zpath, raw, tmp_path / "c", text_size=100_000_000)
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a valid zip"):
        load_fake(tmp_path / "bad.zip", raw, tmp_path / "d", zip_size=None)


def test_text8_missing_file_says_what_to_fetch_and_where(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        text8_data.load(root=str(tmp_path / "none"), download=False)
    message = str(err.value)
    assert "http://mattmahoney.net/dc/text8.zip" in message
    assert "31,344,016 bytes" in message and str(tmp_path / "none" / "text8.zip") in message


def test_text8_rejects_other_characters(tmp_path: Path) -> None:
    raw = b"Hello, World! " * 300
    (tmp_path / "text8").write_bytes(raw)
    with pytest.raises(DataError, match="not text8"):
        text8_data.load(path=str(tmp_path / "text8"), root=str(tmp_path / "r"), sha256=None,
                        text_size=None, split=[3000, 500, 500], seq_len=16)


def test_normalization_follows_text8() -> None:
    assert normalize_text8("Hello, World!  It's 1984.") == "hello world it s one nine eight four "
    text = "the quick brown fox"
    assert decode(encode(text)) == text
    assert encode(" az").tolist() == [0, 1, 26]
    with pytest.raises(DataError):
        encode("no capitals? NO")


@pytest.mark.parametrize("suffix", ["txt", "xz", "gz", "zip"])
def test_chars_reads_plain_and_compressed_files(tmp_path: Path, suffix: str) -> None:
    text = ("Probabilistic circuits, 2 kinds: dense & Monarch. " * 80).encode()
    path = tmp_path / f"corpus.{suffix}"
    if suffix == "xz":
        path.write_bytes(lzma.compress(text))
    elif suffix == "gz":
        path.write_bytes(gzip.compress(text))
    elif suffix == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("a.txt", text)
    else:
        path.write_bytes(text)
    splits = build_dataset({"name": "chars", "paths": [str(path)], "fractions": [0.8, 0.1, 0.1],
                            "seq_len": 32, "long_rows": 4})
    normalized = re.sub(" +", " ", normalize_text8(text.decode()))
    assert decode(splits.train.reshape(-1)) == normalized[: splits.train.numel()]
    assert splits.info["chars"] == len(normalized)


def test_chars_on_the_real_text8_prefix(text8_prefix: Path, tmp_path: Path) -> None:
    splits = build_dataset({"name": "chars", "paths": [str(text8_prefix)], "max_chars": 200_000,
                            "seq_len": 256, "cache_dir": str(tmp_path)})
    assert decode(splits.train[0, :30]) == " anarchism originated as a ter"[:30]
    assert splits.vocab_size == 27 and splits.train.shape[1] == 256
    assert len(list(tmp_path.glob("chars-*.npy"))) == 1


def test_demo_corpus_is_embedded_and_normalized() -> None:
    text = corpus()
    assert 300_000 < len(text) < 500_000
    assert set(text) <= set(" abcdefghijklmnopqrstuvwxyz")
    splits = build_dataset({"name": "demo", "long_rows": 25})
    assert splits.train.shape[1] == 256 and len(splits.dev) > 50


def test_unknown_dataset_and_bad_options_fail_clearly() -> None:
    with pytest.raises(DataError, match="unknown dataset 'text9'"):
        build_dataset({"name": "text9"})
    with pytest.raises(DataError, match="unexpected keyword argument 'seqlen'"):
        build_dataset({"name": "demo", "seqlen": 3})
    with pytest.raises(DataError, match="missing file"):
        build_dataset({"name": "chars", "paths": ["/nonexistent/corpus.txt"]})


def test_synthetic_data_records_the_true_model() -> None:
    splits = build_dataset({"name": "synthetic", "n_train": 64, "n_dev": 8, "n_test": 8})
    assert splits.train.shape == (64, 32) and int(splits.train.max()) < 6
    assert 0 < splits.info["true_test_bpc"] < np.log2(6)
