"""Image data sets: ImageNet batch files, folders and tars of images, the embedded demo."""

import contextlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monarchpc.data import DataError, build_dataset
from monarchpc.data.images import decode_images, load_demo, load_folder, load_imagenet
from monarchpc.data.transforms import (
    box_downsample,
    patches,
    unpatch,
    ycocg_r,
    ycocg_r_inverse,
)
from tests.helpers import SHARED_DATA, real_data

TINY_IMAGENET = SHARED_DATA / "tiny_imagenet"


def rows_to_images(rows: torch.Tensor, p: int, size: int) -> np.ndarray:
    """All-patch rows (N * G, p*p*3) back to images (N, S, S, 3)."""
    g = (size // p) ** 2
    return unpatch(rows.numpy().reshape(-1, g, p * p * 3), p)


def make_images(folder: Path, n: int, size: int = 64) -> np.ndarray:
    """Write n PNG images (every third greyscale) to ``folder``; return them as RGB arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        if i % 3 == 0:
            grey = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
            Image.fromarray(grey, mode="L").save(folder / f"img_{i:02d}.png")
            out.append(np.repeat(grey[:, :, None], 3, axis=2))
        else:
            rgb = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(folder / f"img_{i:02d}.png")
            out.append(rgb)
    (folder / "notes.txt").write_text("not an image")
    return np.stack(out)


def test_folder_and_tar_reading(tmp_path):
    originals = make_images(tmp_path / "imgs" / "sub", 12)
    with tarfile.open(tmp_path / "imgs.tar", "w") as tar:
        tar.add(tmp_path / "imgs", arcname="imgs")
    expected = box_downsample(originals, 2)  # 64 -> 32 by exact 2 x 2 boxes
    np.testing.assert_array_equal(decode_images(tmp_path / "imgs", 32), expected)
    np.testing.assert_array_equal(decode_images(tmp_path / "imgs.tar", 32), expected)
    np.testing.assert_array_equal(decode_images(tmp_path / "imgs.tar", 64), originals)
    with tarfile.open(tmp_path / "imgs.tar.xz", "w:xz") as tar:  # compressed tars too
        tar.add(tmp_path / "imgs", arcname="imgs")
    np.testing.assert_array_equal(decode_images(tmp_path / "imgs.tar.xz", 32), expected)

    cache = tmp_path / "cache"
    splits = load_folder(str(tmp_path / "imgs.tar"), image_size=32, patch_size=8,
                         dev_fraction=0.2, test_fraction=0.25, cache=str(cache))
    assert len(list(cache.glob("images-*.npy"))) == 1  # decoded once, cached
    assert splits.metric == "bpd" and splits.vocab_size == 512
    assert splits.vocab_sizes == [256, 511, 511] * 64
    assert splits.info["images"] == {"train": 7, "dev": 2, "test": 3}
    assert len(splits.test) == 3 * 16 and len(splits.dev) == 2 * 16  # all 4 x 4 patches
    # lossless rows give the images back exactly; the three splits are disjoint
    keys = {split: {a.tobytes() for a in
                    ycocg_r_inverse(rows_to_images(getattr(splits, split).long(), 8, 32))}
            for split in ("dev", "test")}
    assert not keys["dev"] & keys["test"]
    whole = {a.tobytes() for a in expected}
    assert keys["dev"] <= whole and keys["test"] <= whole


def test_random_patches_per_epoch(tmp_path):
    originals = box_downsample(make_images(tmp_path / "imgs", 10), 2)
    splits = load_folder(str(tmp_path / "imgs"), test=str(tmp_path / "imgs"), image_size=32,
                         transform="rgb", patch_size=8, dev_fraction=0.2, cache=str(tmp_path))
    assert splits.vocab_size == 256 and splits.train.dtype == torch.uint8
    e1, e1_again, e2 = splits.train_rows(1), splits.train_rows(1), splits.train_rows(2)
    assert e1.shape == (8, 192)  # one patch of each of the 8 training images
    assert torch.equal(e1, e1_again) and not torch.equal(e1, e2)
    assert torch.equal(splits.train_rows(0), splits.train)
    all_patches = patches(originals, 8)  # (10, 16, 192)
    owners = [np.flatnonzero((all_patches == row.numpy()).all(-1).any(-1)) for row in e1]
    assert all(len(o) == 1 for o in owners)  # every row is an aligned patch of one image
    assert len({int(o[0]) for o in owners}) == 8  # of 8 different images


def check_jpeg_folder(folder: Path, grey: str, tmp_path: Path) -> None:
    """32 JPEGs of 64 x 64 in ``folder`` (``grey`` the greyscale one): decoded as PIL
    decodes them, in RGB (greyscale: R = G = B), downsampled by 2 x 2 boxes, patched."""
    full = decode_images(folder, 64)
    assert full.shape == (32, 64, 64, 3) and full.dtype == np.uint8
    assert full.std() > 10  # pictures, not blank
    names = sorted(p.name for p in folder.iterdir())
    for i in (0, names.index(grey), 31):  # the decoder's pixels are PIL's
        with Image.open(folder / names[i]) as im:
            np.testing.assert_array_equal(full[i], np.asarray(im.convert("RGB")))
    g = names.index(grey)  # greyscale: R = G = B
    assert (full[g, ..., 0] == full[g, ..., 1]).all() and (full[g, ..., 1] == full[g, ..., 2]).all()
    np.testing.assert_array_equal(decode_images(folder, 32), box_downsample(full, 2))
    splits = load_folder(str(folder), image_size=32, cache=str(tmp_path / "cache"))
    assert splits.train.shape[1] == 192 and int(splits.train.max()) <= 510


def test_jpegs_made_here(tmp_path):
    """31 colour JPEGs and one greyscale JPEG (PIL, quality 90) of smooth random pictures:
    the JPEG path in every checkout (the real Tiny ImageNet JPEGs: the next test)."""
    folder = tmp_path / "jpegs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(32):
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)  # smooth when enlarged
        image = Image.fromarray(small).resize((64, 64), Image.Resampling.BICUBIC)
        (image.convert("L") if i == 7 else image).save(folder / f"val_{i}.JPEG", quality=90)
    with Image.open(folder / "val_7.JPEG") as im:
        assert (im.format, im.mode) == ("JPEG", "L")
    check_jpeg_folder(folder, "val_7.JPEG", tmp_path)


def test_tiny_imagenet_jpegs(tmp_path):
    """The same on real photographs (../shared/data; an extra check, skipped without it)."""
    tar_path = TINY_IMAGENET / "tiny-imagenet-200_val.tar"
    real_data(tar_path, "real JPEGs")
    folder = tmp_path / "jpegs"
    folder.mkdir()
    kept, grey = 0, None
    with tarfile.open(tar_path) as tar:  # 31 colour JPEGs and the first greyscale one
        for m in tar:
            if not m.name.endswith(".JPEG"):
                continue
            data = tar.extractfile(m).read()
            mode = Image.open(io.BytesIO(data)).mode
            if (mode == "L" and grey is None) or (mode == "RGB" and kept < 31):
                (folder / Path(m.name).name).write_bytes(data)
                kept += mode == "RGB"
                grey = Path(m.name).name if mode == "L" else grey
            if kept == 31 and grey is not None:
                break
    assert grey is not None, "expected some greyscale JPEGs in Tiny ImageNet"
    check_jpeg_folder(folder, grey, tmp_path)


def write_imagenet(root: Path, resolution: int, n: int, pickled: bool = False) -> np.ndarray:
    """Fake downsampled-ImageNet files (channel-planar rows); returns all images channel-last."""
    rng = np.random.default_rng(resolution)
    images = rng.integers(0, 256, size=(11 * n, resolution, resolution, 3), dtype=np.uint8)
    planar = images.transpose(0, 3, 1, 2).reshape(11 * n, -1)
    root.mkdir(parents=True, exist_ok=True)
    names = [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]
    for i, name in enumerate(names):
        batch = {"data": planar[i * n : (i + 1) * n], "labels": [1] * n}
        if pickled:
            with open(root / name, "wb") as f:
                pickle.dump(batch, f)
        else:
            np.savez(root / f"{name}.npz", **batch)
    return images


@pytest.mark.parametrize("pickled", [False, True])
def test_imagenet_files(tmp_path, pickled):
    images = write_imagenet(tmp_path / "in32" / "unzipped", 32, 6, pickled)
    splits = load_imagenet(32, str(tmp_path / "in32"), patch_size=8, dev_fraction=0.1,
                           cache=str(tmp_path / "cache"))
    assert len(splits.train) == 54 and splits.info["images"]["dev"] == 6
    # test = the official val file, in order; rows decode to its images exactly
    np.testing.assert_array_equal(ycocg_r_inverse(rows_to_images(splits.test, 8, 32)),
                                  images[60:])
    lossy = load_imagenet(32, str(tmp_path / "in32"), transform="lossy", patch_size=4,
                          train_patches="all", cache=str(tmp_path / "cache"))
    assert lossy.vocab_size == 256 and lossy.train.shape == (59 * 64, 48)
    again = build_dataset({"name": "imagenet", "resolution": 32, "root": str(tmp_path / "in32"),
                           "cache": str(tmp_path / "cache"), "dev_fraction": 0.1})
    assert torch.equal(again.train, splits.train) and torch.equal(again.dev, splits.dev)


def test_data_errors_name_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"Imagenet32_train_npz\.zip.*image-net\.org"):
        load_imagenet(32, str(tmp_path / "nothing"), cache=str(tmp_path))
    with pytest.raises(DataError, match=r"Imagenet64_train_part1_npz\.zip"):
        load_imagenet(64, str(tmp_path / "nothing"), cache=str(tmp_path))
    write_imagenet(tmp_path / "in64", 64, 2)
    with pytest.raises(DataError, match=r"expected 3072 for ImageNet32.*dataset\.resolution"):
        load_imagenet(32, str(tmp_path / "in64"), cache=str(tmp_path))
    with pytest.raises(DataError, match=r"dataset\.train"):
        load_folder(str(tmp_path / "missing.tar"), cache=str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        load_folder(str(tmp_path / "empty"), cache=str(tmp_path))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg.*remove or replace"):
        load_folder(str(tmp_path / "bad"), cache=str(tmp_path))
    with pytest.raises(DataError, match=r"dataset\.patch_size"):
        load_demo(patch_size=5)


def test_demo_image_splits():
    splits = load_demo()  # grace_hopper.jpg (512 x 600) in 18 x 16 crops of 32
    assert splits.info["images"] == {"train": 230, "dev": 29, "test": 29}
    assert splits.train.shape == (230 * 16, 192) and splits.test.shape == (29 * 16, 192)
    photo = np.asarray(Image.open(splits.info["source"]).convert("RGB"))
    crops = {split: ycocg_r_inverse(rows_to_images(getattr(splits, split).long(), 8, 32))
             for split in ("train", "dev", "test")}
    # crop n (row-major) is test if n % 10 == 0, dev if n % 10 == 5: crop 0 and crop 5
    np.testing.assert_array_equal(crops["test"][0], photo[:32, :32])
    np.testing.assert_array_equal(crops["dev"][0], photo[:32, 5 * 32 : 6 * 32])
    np.testing.assert_array_equal(crops["train"][0], photo[:32, 32:64])
    assert int(splits.train[:, 1::3].max()) <= 510 and splits.vocab_sizes[:3] == [256, 511, 511]
    assert np.array_equal(ycocg_r(photo[:32, :32]).reshape(-1)[:3], splits.test[0, :3].numpy())


class RunsAShellCommand:
    """A pickle payload that, if unpickled by a plain pickle.load, creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_batches_load_arrays_only(tmp_path):
    root = tmp_path / "in32"
    images = write_imagenet(root, 32, 2, pickled=True)
    for name in ["val_data", *(f"train_data_batch_{i}" for i in range(1, 11))]:
        batch = pickle.loads((root / name).read_bytes())  # protocol 2, as the official files
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    splits = load_imagenet(32, str(root), patch_size=8, dev_fraction=0.1,
                           cache=str(tmp_path / "cache"))
    np.testing.assert_array_equal(ycocg_r_inverse(rows_to_images(splits.test, 8, 32)),
                                  images[20:])
    marker = tmp_path / "marker"
    crafted = {"data": np.zeros((2, 3072), np.uint8), "labels": RunsAShellCommand(marker)}
    (root / "val_data").write_bytes(pickle.dumps(crafted, protocol=2))
    with pytest.raises(DataError, match=r"val_data \(it refers to posix\.system, which a batch "
                                        r"of arrays never does .*it could run code") as err:
        load_imagenet(32, str(root), cache=str(tmp_path / "cache2"))
    assert "\n" not in str(err.value) and not marker.exists()
    with contextlib.suppress(Exception):  # the control: a plain pickle.load runs it
        pickle.loads((root / "val_data").read_bytes())
    assert marker.exists()


def test_images_smaller_than_the_image_size_are_refused(tmp_path):
    make_images(tmp_path / "imgs", 3, size=64)
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "imgs" / "tiny.png")
    with pytest.raises(DataError, match=r"image tiny\.png in .* is 1 x 1 pixels, smaller than "
                                        r"dataset\.image_size=32 .*not upscaled"):
        load_folder(str(tmp_path / "imgs"), image_size=32, cache=str(tmp_path / "cache"))


def test_a_cut_short_image_cache_is_rebuilt(tmp_path):
    make_images(tmp_path / "imgs", 6)
    first = load_folder(str(tmp_path / "imgs"), image_size=32, train_patches="all",
                        dev_fraction=0.2, test_fraction=0.2, cache=str(tmp_path / "cache"))
    [cache] = (tmp_path / "cache").glob("images-*.npy")
    with open(cache, "r+b") as f:
        f.truncate(cache.stat().st_size - 100)
    again = load_folder(str(tmp_path / "imgs"), image_size=32, train_patches="all",
                        dev_fraction=0.2, test_fraction=0.2, cache=str(tmp_path / "cache"))
    assert torch.equal(again.train, first.train) and torch.equal(again.test, first.test)
    assert again.info["sources"] == first.info["sources"] and first.info["sources"][0]["files"]


def test_dev_from_the_test_images(tmp_path):
    """dataset.dev_from=test: every training image trains; dev and test split the test
    images between them, disjoint, covering all of them."""
    train_imgs = box_downsample(make_images(tmp_path / "train", 6), 2)
    rng = np.random.default_rng(1)  # other pixels than the training images'
    (tmp_path / "held").mkdir()
    held = rng.integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
    for i, img in enumerate(held):
        Image.fromarray(img).save(tmp_path / "held" / f"v_{i:02d}.png")
    splits = load_folder(str(tmp_path / "train"), test=str(tmp_path / "held"), image_size=32,
                         transform="lossless", patch_size=8, train_patches="all",
                         dev_fraction=0.5, dev_from="test", cache=str(tmp_path / "cache"))
    assert splits.info["images"] == {"train": 6, "dev": 5, "test": 5}
    assert splits.info["dev_from"] == "test"
    got = {split: [a.tobytes() for a in ycocg_r_inverse(
        rows_to_images(getattr(splits, split).long(), 8, 32))] for split in
        ("train", "dev", "test")}
    assert sorted(got["train"]) == sorted(a.tobytes() for a in train_imgs)  # all of them
    assert not set(got["dev"]) & set(got["test"])
    assert sorted(got["dev"] + got["test"]) == sorted(a.tobytes() for a in held)
    # the same seed gives the same halves; another seed others
    again = load_folder(str(tmp_path / "train"), test=str(tmp_path / "held"), image_size=32,
                        patch_size=8, train_patches="all", dev_fraction=0.5, dev_from="test",
                        cache=str(tmp_path / "cache"))
    assert torch.equal(again.dev, splits.dev)
    other = load_folder(str(tmp_path / "train"), test=str(tmp_path / "held"), image_size=32,
                        patch_size=8, train_patches="all", dev_fraction=0.5, dev_from="test",
                        seed=3, cache=str(tmp_path / "cache"))
    assert not torch.equal(other.dev, splits.dev)
    with pytest.raises(DataError, match=r"dev_from=test holds dev out of dataset\.test"):
        load_folder(str(tmp_path / "train"), dev_from="test", cache=str(tmp_path / "cache"))
