"""Fault injection on the data side: caches that numpy cannot read as plain arrays, and
images of more than 8 bits per channel (issue 29). Each is rebuilt, converted exactly or
refused with one line; none trains silently on wrong values or ends in a traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from monarchpc.data import DataError
from monarchpc.data.cache import load_array, save_array, sidecar
from monarchpc.data.images import decode_images, load_folder, to_square
from monarchpc.files import file_sha256
from tests.data.test_images import make_images, rows_to_images


def forge(path, array: np.ndarray) -> None:
    """Overwrite a cache with ``array`` (pickled if it must be) and make its sidecar match."""
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=True)
    meta = json.loads(sidecar(path).read_text())
    meta.update(size=path.stat().st_size, sha256=file_sha256(path))
    sidecar(path).write_text(json.dumps(meta))


@pytest.mark.parametrize("mmap", [False, True])
def test_an_object_array_cache_is_rebuilt_never_unpickled(tmp_path, mmap, caplog) -> None:
    path = tmp_path / "codes.npy"
    save_array(path, np.arange(10, dtype=np.uint8), [{"name": "x"}])
    forge(path, np.array([{"a": 1}, "b"], dtype=object))
    assert load_array(path, mmap) is None  # not loaded: the loader builds it again
    assert not path.exists() and not sidecar(path).exists()
    assert "not usable" in caplog.text


def test_an_object_array_image_cache_is_rebuilt_by_the_loader(tmp_path) -> None:
    make_images(tmp_path / "imgs", 6)
    kwargs = dict(image_size=32, train_patches="all", dev_fraction=0.2, test_fraction=0.2,
                  cache=str(tmp_path / "cache"))
    first = load_folder(str(tmp_path / "imgs"), **kwargs)
    [cache] = (tmp_path / "cache").glob("images-*.npy")
    forge(cache, np.array([None] * 6, dtype=object))
    again = load_folder(str(tmp_path / "imgs"), **kwargs)
    assert torch.equal(again.train, first.train) and torch.equal(again.test, first.test)


def test_16_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path) -> None:
    """A folder with a 16-bit PNG (mode I;16) decodes to round(v * 255 / 65535), where
    Pillow's own conversion made 99.6% of its pixels 255."""
    folder = tmp_path / "imgs"
    rgb = make_images(folder, 3, size=32)
    deep = np.random.default_rng(1).integers(0, 65536, (32, 32)).astype(np.uint16)
    Image.fromarray(deep).save(folder / "img_03.png")
    assert Image.open(folder / "img_03.png").mode == "I;16"
    decoded = decode_images(folder, 32)
    eight = ((deep.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    assert np.array_equal(decoded[3], np.repeat(eight[..., None], 3, -1))
    assert np.array_equal(decoded[:3], rgb)  # 8-bit ones as before
    assert (decoded[3] == 255).mean() < 0.01
    # big-endian 16 bits alike, and through the training loader's rows
    big_endian = Image.frombytes("I;16B", (32, 32), deep.astype(">u2").tobytes())
    assert np.array_equal(to_square(big_endian, 32)[..., 0], eight)
    splits = load_folder(str(folder), image_size=32, train_patches="all", dev_fraction=0.25,
                         test_fraction=0.25, cache=str(tmp_path / "cache"), transform="rgb")
    every = np.concatenate([rows_to_images(r, 8, 32) for r in (splits.train, splits.dev,
                                                               splits.test)])
    assert any(np.array_equal(img, np.repeat(eight[..., None], 3, -1)) for img in every)


@pytest.mark.parametrize("mode", ["I", "F"])
def test_images_of_unknown_bit_depth_are_refused_with_a_line(tmp_path, mode) -> None:
    folder = tmp_path / "imgs"
    make_images(folder, 2, size=32)
    values = np.full((32, 32), 70000, dtype=np.int32 if mode == "I" else np.float32)
    Image.fromarray(values, mode).save(folder / "deep.tif")
    with pytest.raises(DataError, match=rf"image deep\.tif in .* has Pillow mode '{mode}'.*"
                                        r"convert it to an 8- or 16-bit PNG") as err:
        decode_images(folder, 32)
    assert "\n" not in str(err.value)
