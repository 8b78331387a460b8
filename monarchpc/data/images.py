"""Image data sets as rows of patch variables (metric: bits per dimension).

Three sources, one pipeline (:func:`patch_splits`):

* ``imagenet``: the official downsampled ImageNet32/64 files (image-net.org "Downsampled
  ImageNet"): ``train_data_batch_1`` .. ``train_data_batch_10`` and ``val_data``, as npz
  or as pickled batches, each holding ``data``: N x 3*S*S uint8, channel-planar RGB.
  Train = the official train minus a held-out dev fraction; test = the official val.
* ``image_folder``: a folder or a tar file of image files (any format Pillow reads;
  greyscale and palette images become RGB; 16-bit images, Pillow's ``I;16`` modes, are
  scaled to 8 bits, v -> round(v * 255 / 65535); 32-bit integer or float images are
  refused with one line), e.g. Tiny ImageNet's folders. Non-square
  images are centre-cropped; images whose side is a multiple of ``image_size`` are
  box-downsampled exactly (64 -> 32: 2 x 2 boxes), other larger ones resized with
  Pillow's box filter; smaller images are an error.
* ``image_demo``: a real photograph shipped in the repository (docs/usage/grace_hopper.jpg,
  no download), cut into aligned crops that are dealt to train/dev/test (see
  :func:`load_demo`).

Pickled ImageNet batches are read by a restricted unpickler that builds numpy arrays,
lists, dicts and plain values only, so a crafted batch file cannot run code. Images
smaller than ``image_size`` are refused, never upscaled. Decoded images are cached as
``.npy`` (N, S, S, 3) uint8 under the project's ``data/`` folder (ignored by git), keyed by
the source files (paths, sizes, modification times) and the settings, verified and read
back memory-mapped (:mod:`monarchpc.data.cache`). Rows are p x p patches in the order of
:mod:`monarchpc.data.transforms` after a colour transform; training draws one random
aligned patch per image and epoch (``train_patches: random``, deterministic in seed and
epoch) or uses all patches (``all``); dev and test always use all patches, so BPD is
per dimension of whole images.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from monarchpc.data import DataError, Splits
from monarchpc.data.cache import cached_array, source_record
from monarchpc.data.transforms import (
    CHANNEL_VOCABS,
    box_downsample,
    colour_transform,
    patches,
    select_patches,
)
from monarchpc.paths import REPO_ROOT, resolve
from monarchpc.settings import Settings, choice, integer, list_of, number, text

DEMO_IMAGE = "docs/usage/grace_hopper.jpg"
"""The demo photograph, shipped in the repository (its source and license: docs/usage/)."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
DOWNLOAD_PAGE = "https://image-net.org/download-images.php"
IMAGENET_ZIPS = {
    32: "Imagenet32_train_npz.zip and Imagenet32_val_npz.zip "
        "(or the pickled Imagenet32_train.zip and Imagenet32_val.zip)",
    64: "Imagenet64_train_part1_npz.zip, Imagenet64_train_part2_npz.zip and "
        "Imagenet64_val_npz.zip (or the pickled Imagenet64_train_part1.zip, "
        "Imagenet64_train_part2.zip and Imagenet64_val.zip)",
}


# ----------------------------------------------------------------------------- caching
def cache_dir(option: str | None) -> Path:
    return resolve(option) if option else REPO_ROOT / "data" / "cache"


def cache_key(kind: str, files: list[Path], settings: dict[str, Any]) -> str:
    """Hash of the source files (path, size, mtime) and the settings that shape the array."""
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    blob = json.dumps([kind, stats, settings], sort_keys=True).encode()
    return f"{kind}-{hashlib.sha1(blob).hexdigest()[:16]}"


def cached_images(path: Path, make: Callable[[], np.ndarray], sources: list[Path]
                  ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(images, source records) of the verified cache ``path``, built by ``make`` if needed."""
    return cached_array(path, lambda: (make(), [source_record(f) for f in sources]), mmap=True)


# ----------------------------------------------------------------------------- ImageNet
def find_imagenet_files(root: Path, batches: list[int]) -> tuple[list[Path], Path]:
    """The train batch files and the val file under ``root`` (searched recursively)."""
    found = {f.name.removesuffix(".npz"): f for f in sorted(root.rglob("*"))
             if f.is_file() and (f.name.startswith(("train_data_batch_", "val_data")))}
    names = [f"train_data_batch_{i}" for i in batches] + ["val_data"]
    missing = [n for n in names if n not in found]
    if missing:
        raise FileNotFoundError(", ".join(missing))
    return [found[n] for n in names[:-1]], found["val_data"]


class BatchUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, lists, dicts and plain values only (what the official
    batches hold); any other class or function in the file raises UnpicklingError."""

    ALLOWED = frozenset({
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a batch of "
                                         f"arrays never does (it was not loaded: it could "
                                         f"run code)")
        return super().find_class(module, name)


def read_imagenet_file(path: Path, resolution: int) -> np.ndarray:
    """One npz or pickled batch -> uint8 (N, S, S, 3) channel-last."""
    try:
        if path.suffix == ".npz":
            with np.load(path) as z:  # allow_pickle=False: arrays only
                data = z["data"]
        else:
            with open(path, "rb") as f:  # the official batches: latin1 pickles of a dict
                data = BatchUnpickler(f, encoding="latin1").load()["data"]
        if not isinstance(data, np.ndarray):
            raise TypeError(f"its 'data' is a {type(data).__name__}, not an array")
    except Exception as err:
        raise DataError(f"cannot read {path} ({err}); it is not a downsampled-ImageNet "
                        f"batch: download it again from {DOWNLOAD_PAGE}") from None
    width = 3 * resolution * resolution
    if data.ndim != 2 or data.shape[1] != width:
        raise DataError(f"{path} holds rows of {data.shape[1:]} values, expected {width} for "
                        f"ImageNet{resolution}: are these files of another resolution? Set "
                        f"dataset.resolution or dataset.root accordingly")
    planar = np.asarray(data, dtype=np.uint8).reshape(-1, 3, resolution, resolution)
    return planar.transpose(0, 2, 3, 1)


def read_imagenet(resolution: int, root: Path, batches: list[int], store: Path
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Train and val images (N, S, S, 3) uint8 (memory-mapped caches) and provenance."""
    try:
        train_files, val_file = find_imagenet_files(root, batches)
    except FileNotFoundError as err:
        raise DataError(
            f"ImageNet{resolution} not found under {root} (missing: {err}). Download "
            f"{IMAGENET_ZIPS[resolution]} from the 'Downsampled ImageNet' section of "
            f"{DOWNLOAD_PAGE} (free account needed), unzip them into {root} (sub-folders "
            f"are fine), or point dataset.root at the folder holding train_data_batch_1..10 "
            f"and val_data (.npz or pickle)") from None

    def concat(files: list[Path]) -> np.ndarray:
        return np.concatenate([read_imagenet_file(f, resolution) for f in files])

    key = cache_key(f"imagenet{resolution}-train", train_files, {})
    train, train_sources = cached_images(store / f"{key}.npy", lambda: concat(train_files),
                                         train_files)
    key = cache_key(f"imagenet{resolution}-val", [val_file], {})
    test, test_sources = cached_images(store / f"{key}.npy", lambda: concat([val_file]),
                                       [val_file])
    info = {"source": str(root), "train_files": [f.name for f in train_files],
            "test_file": val_file.name, "sources": train_sources + test_sources}
    return train, test, info


def load_imagenet(resolution: int = 32, root: str | None = None, transform: str = "lossless",
                  patch_size: int = 8, train_patches: str = "random",
                  dev_fraction: float = 0.01, train_batches: list[int] | None = None,
                  max_train_images: int | None = None, max_test_images: int | None = None,
                  seed: int = 0, cache: str | None = None) -> Splits:
    """Downsampled ImageNet (resolution 32 or 64) as patch rows; see the module docstring."""
    if resolution not in IMAGENET_ZIPS:
        raise DataError(f"dataset.resolution must be 32 or 64, got {resolution}")
    folder = resolve(root) if root else REPO_ROOT / "data" / f"imagenet{resolution}"
    batches = list(train_batches or range(1, 11))
    train, test, info = read_imagenet(resolution, folder, batches, cache_dir(cache))
    train_idx, dev_idx = split_indices(len(train), dev_fraction, seed, max_train_images)
    test_idx = np.arange(min(len(test), max_test_images or len(test)))
    info.update(name=f"imagenet{resolution}")
    return patch_splits((train, train_idx), (train, dev_idx), (test, test_idx), transform,
                        patch_size, train_patches, seed, info)


# ----------------------------------------------------------------------------- folders
def is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES and not Path(name).name.startswith("._")


def folder_images(path: Path) -> list[Path]:
    """The image files under a folder (recursively), sorted by relative path."""
    return sorted(f for f in path.rglob("*") if f.is_file() and is_image(f.name))


def image_bytes(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, encoded bytes) of every image file of a folder or tar file (plain or
    compressed: .tar.xz, .tar.gz, .tar.bz2), sorted by name."""
    if path.is_dir():
        for f in folder_images(path):
            yield str(f.relative_to(path)), f.read_bytes()
    elif path.is_file() and tarfile.is_tarfile(path):
        # one pass in the archive's order, then sorted: a compressed tar (.tar.xz, .tar.gz)
        # cannot seek back without decompressing again from its start
        with tarfile.open(path) as tar:
            found = {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                     for m in tar if m.isfile() and is_image(m.name)}
        yield from sorted(found.items())
    else:
        raise DataError(f"{path} is neither a folder nor a tar file of images: set "
                        f"dataset.train (and dataset.test) to one, e.g. Tiny ImageNet's "
                        f"tiny-imagenet-200 folder (http://cs231n.stanford.edu/"
                        f"tiny-imagenet-200.zip, unzipped)")


EIGHT_BIT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK",
                   "YCbCr")
"""Pillow modes of 8 bits per channel (or fewer) that ``convert("RGB")`` maps exactly."""


def to_rgb8(image: Image.Image, name: str = "image") -> Image.Image:
    """``image`` as 8-bit RGB. 16-bit modes (``I;16``, ``I;16B``, ...) are scaled,
    v -> round(v * 255 / 65535); Pillow's own conversion would clip them to 255. Modes
    without a known bit depth (``I``: 32-bit integers, ``F``: floats) raise DataError."""
    mode = image.mode
    if mode.startswith("I;16"):
        values = np.asarray(image).astype(np.uint32)  # 0..65535, any byte order
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in EIGHT_BIT_MODES:
        return image.convert("RGB")
    kind = {"I": "32-bit integers", "F": "floats"}.get(mode, "not 8 or 16 bits per channel")
    raise DataError(f"{name} has Pillow mode {mode!r} ({kind}), "
                    f"whose scale to 8 bits is unknown: convert it to an 8- or 16-bit "
                    f"PNG (or remove it)")


def to_square(image: Image.Image, size: int, name: str = "image") -> np.ndarray:
    """RGB uint8 (size, size, 3): centre crop to a square, then box-downsample or resize
    (down only: the image's shorter side must be at least ``size``); see :func:`to_rgb8`."""
    image = to_rgb8(image, name)
    w, h = image.size
    s = min(w, h)
    if (w, h) != (s, s):
        left, top = (w - s) // 2, (h - s) // 2
        image = image.crop((left, top, left + s, top + s))
    if s % size == 0:
        return box_downsample(np.asarray(image)[None], s // size)[0]
    return np.asarray(image.resize((size, size), Image.Resampling.BOX))


def decode_images(path: Path, image_size: int) -> np.ndarray:
    """Every image of a folder or tar file, sorted by name: uint8 (N, S, S, 3)."""
    out = []
    for name, data in image_bytes(path):
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception as err:
            raise DataError(f"cannot decode image {name} in {path} ({err}): remove or "
                            f"replace that file") from None
        if min(image.size) < image_size:
            raise DataError(f"image {name} in {path} is {image.size[0]} x {image.size[1]} "
                            f"pixels, smaller than dataset.image_size={image_size} (images "
                            f"are not upscaled): remove it or lower dataset.image_size")
        out.append(to_square(image, image_size, f"image {name} in {path}"))
    if not out:
        raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    return np.stack(out)


def read_images(path: Path, image_size: int, store: Path
                ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(:func:`decode_images`, source records), cached (a folder is keyed by its files, a
    tar by itself)."""
    if not path.exists():
        raise DataError(f"image source {path} not found: set dataset.train / dataset.test to a "
                        f"folder or tar file of images (for Tiny ImageNet: unzip "
                        f"http://cs231n.stanford.edu/tiny-imagenet-200.zip and give its "
                        f"train/ and val/images/ folders)")
    files = [path] if path.is_file() else folder_images(path)
    # decoder 2: 16-bit images scaled to 8 bits (caches of decoder 1 clipped them)
    key = cache_key("images", files, {"image_size": image_size, "decoder": 2})
    return cached_images(store / f"{key}.npy", lambda: decode_images(path, image_size), [path])


def load_folder(train: str, test: str | None = None, image_size: int = 32,
                transform: str = "lossless", patch_size: int = 8,
                train_patches: str = "random", dev_fraction: float = 0.05,
                test_fraction: float = 0.1, max_train_images: int | None = None,
                max_test_images: int | None = None, seed: int = 0,
                cache: str | None = None, dev_from: str = "train") -> Splits:
    """Images of a folder or tar file (``train``; ``test`` another one, or a held-out
    ``test_fraction`` of ``train``), as patch rows; see the module docstring.

    Dev is a seeded ``dev_fraction`` of the training images (``dev_from="train"``), or of
    the ``test`` images (``dev_from="test"``: the rest of them is test, so dev and test
    are disjoint halves of one held-out set at 0.5, and every training image trains).
    ``max_test_images`` caps test after dev is taken."""
    if dev_from not in ("train", "test"):
        raise DataError(f"dataset.dev_from must be train or test, got {dev_from!r}")
    if dev_from == "test" and test is None:
        raise DataError("dataset.dev_from=test holds dev out of dataset.test, which is null: "
                        "give dataset.test (a folder or tar of images) or dev_from=train")
    store = cache_dir(cache)
    train_images, sources = read_images(resolve(train), image_size, store)
    if dev_from == "test":
        test_images, test_sources = read_images(resolve(test), image_size, store)
        sources = sources + test_sources
        test_idx, dev_idx = split_indices(len(test_images), dev_fraction, seed)
        train_idx, _ = split_indices(len(train_images), 0.0, seed, max_train_images)
        dev_images = test_images
    elif test is None:
        rest, test_idx = split_indices(len(train_images), test_fraction, seed + 1)
        test_images = train_images
        train_idx, dev_idx = split_indices(len(rest), dev_fraction, seed, max_train_images)
        train_idx, dev_idx = rest[train_idx], rest[dev_idx]
        dev_images = train_images
    else:
        test_images, test_sources = read_images(resolve(test), image_size, store)
        sources = sources + test_sources
        test_idx = np.arange(len(test_images))
        train_idx, dev_idx = split_indices(len(train_images), dev_fraction, seed,
                                           max_train_images)
        dev_images = train_images
    test_idx = test_idx[: max_test_images or len(test_idx)]
    info = {"source": str(resolve(train)), "test_source": str(resolve(test)) if test else None,
            "dev_from": dev_from, "sources": sources}
    return patch_splits((train_images, train_idx), (dev_images, dev_idx),
                        (test_images, test_idx), transform, patch_size, train_patches, seed,
                        info)


# ----------------------------------------------------------------------------- demo
def load_demo(image: str = DEMO_IMAGE, crop_size: int = 32,
              transform: str = "lossless", patch_size: int = 8, train_patches: str = "all",
              seed: int = 0) -> Splits:
    """A photograph cut into aligned ``crop_size`` crops, dealt to train/dev/test.

    ``image``: a path to any image (default: the shipped docs/usage/grace_hopper.jpg,
    512 x 600). The image is cut from its top-left corner into a grid of crops (the remainder
    at the right and bottom is dropped); crop n, numbered row-major, goes to test if
    n % 10 == 0, to dev if n % 10 == 5, else to train (80/10/10, spread over the image).
    """
    path = resolve(image)
    if not path.is_file():
        raise DataError(f"demo image {image!r} not found: set dataset.image to an image file "
                        f"(the default, {DEMO_IMAGE}, ships with the repository)")
    rgb = np.asarray(Image.open(path).convert("RGB"))
    rows, cols = rgb.shape[0] // crop_size, rgb.shape[1] // crop_size
    if rows * cols < 10:
        raise DataError(f"{path} gives only {rows * cols} crops of {crop_size}; lower "
                        f"dataset.crop_size")
    crops = rgb[: rows * crop_size, : cols * crop_size].reshape(rows, crop_size, cols,
                                                                crop_size, 3)
    crops = crops.transpose(0, 2, 1, 3, 4).reshape(-1, crop_size, crop_size, 3)
    n = np.arange(len(crops))
    info = {"source": str(path), "crops": f"{rows} x {cols} of {crop_size}",
            "sources": [source_record(path)]}
    return patch_splits((crops, n[(n % 10 != 0) & (n % 10 != 5)]), (crops, n[n % 10 == 5]),
                        (crops, n[n % 10 == 0]), transform, patch_size, train_patches, seed,
                        info)


# ----------------------------------------------------------------------------- pipeline
def split_indices(n: int, fraction: float, seed: int, max_keep: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random ``fraction`` of range(n) held out: (kept, held_out), both sorted.

    ``max_keep`` caps the kept part (the first ones of the random order)."""
    order = np.random.default_rng(seed).permutation(n)
    held = round(n * fraction)
    kept = order[held:][: max_keep or n]
    return np.sort(kept), np.sort(order[:held])


def eval_rows(images: np.ndarray, idx: np.ndarray, p: int, transform: str,
              chunk: int = 8192) -> torch.Tensor:
    """All patches of images[idx], colour-transformed: (len(idx) * (S/p)^2, p*p*3)."""
    parts = [patches(colour_transform(np.asarray(images[idx[i : i + chunk]]), transform), p)
             for i in range(0, len(idx), chunk)]
    return torch.from_numpy(np.concatenate(parts).reshape(-1, p * p * 3))


def random_patch_rows(images: np.ndarray, idx: np.ndarray, p: int, transform: str,
                      seed: int, epoch: int, chunk: int = 65536) -> torch.Tensor:
    """One aligned patch of every image of images[idx], drawn from (seed, epoch): (N, p*p*3)."""
    g = images.shape[1] // p
    cells = np.random.default_rng([seed, epoch]).integers(0, g * g, size=len(idx))
    parts = [select_patches(np.asarray(images[idx[i : i + chunk]]), p, cells[i : i + chunk])
             for i in range(0, len(idx), chunk)]
    rgb = np.concatenate(parts).reshape(len(idx), p * p, 3)
    return torch.from_numpy(colour_transform(rgb, transform).reshape(len(idx), p * p * 3))


def patch_splits(train: tuple[np.ndarray, np.ndarray], dev: tuple[np.ndarray, np.ndarray],
                 test: tuple[np.ndarray, np.ndarray], transform: str, patch_size: int,
                 train_patches: str, seed: int, info: dict[str, Any]) -> Splits:
    """Splits of patch rows from (images (N, S, S, 3) uint8, indices) of each split."""
    if transform not in CHANNEL_VOCABS:
        raise DataError(f"unknown dataset.transform {transform!r}; use lossless|lossy|rgb")
    if train_patches not in ("random", "all"):
        raise DataError(f"dataset.train_patches must be random|all, got {train_patches!r}")
    size = train[0].shape[1]
    if size % patch_size:
        raise DataError(f"dataset.patch_size={patch_size} does not divide the image size "
                        f"{size}; use a divisor such as 4 or 8")
    for split, (_, idx) in zip(("train", "dev", "test"), (train, dev, test), strict=True):
        if len(idx) == 0:
            raise DataError(f"the {split} split is empty: give more images or change the "
                            f"dataset's fractions / limits")
    p, d = patch_size, 3 * patch_size * patch_size
    vocabs = CHANNEL_VOCABS[transform]
    epoch_train = None
    if train_patches == "random":
        latest: dict[int, torch.Tensor] = {}  # the last epoch drawn (callers ask repeatedly)

        def epoch_train(epoch: int) -> torch.Tensor:
            if epoch not in latest:
                latest.clear()
                latest[epoch] = random_patch_rows(*train, p, transform, seed, epoch)
            return latest[epoch]
        train_rows = epoch_train(0)
    else:
        train_rows = eval_rows(*train, p, transform)
    info.update(transform=transform, patch_size=p, image_size=size, train_patches=train_patches,
                images={"train": len(train[1]), "dev": len(dev[1]), "test": len(test[1])},
                variable_order="(row, column, channel) of the patch; channel = v % 3",
                channel_vocabs=list(vocabs))
    return Splits(train=train_rows, dev=eval_rows(*dev, p, transform),
                  test=eval_rows(*test, p, transform), vocab_size=512 if max(vocabs) > 256
                  else 256, metric="bpd", info=info, epoch_train=epoch_train,
                  vocab_sizes=[vocabs[v % 3] for v in range(d)])


IMAGE_OPTIONS: Settings = {
    "transform": (choice("lossless", "lossy", "rgb"), "the colour transform"),
    "patch_size": (integer(1), "side of the patches that make the rows"),
    "train_patches": (choice("random", "all"), "training patches per image"),
    "seed": (integer(0), "the seed of the splits and the random patches"),
}
HELD_OUT: Settings = {
    "dev_fraction": (number(0.0, 1.0, open_low=True), "share held out as dev"),
    "max_train_images": (integer(1, none=True), "cap on training images"),
    "max_test_images": (integer(1, none=True), "cap on test images"),
    "cache": (text(none=True), "folder of the decoded images"),
}
IMAGENET_OPTIONS: Settings = {
    "resolution": (choice(32, 64), "the downsampled ImageNet"),
    "root": (text(none=True), "the folder of the npz/pickle batches"),
    "train_batches": (list_of(choice(*range(1, 11)), "numbers 1..10", none=True),
                      "train_data_batch_i files; null for all"),
    **IMAGE_OPTIONS, **HELD_OUT,
}
"""The settings of ``dataset=imagenet32`` / ``imagenet64``."""
FOLDER_OPTIONS: Settings = {
    "train": (text(), "folder or tar of training images"),
    "test": (text(none=True), "folder or tar of test images; null holds some out"),
    "image_size": (integer(1), "side the images are reduced to"),
    "test_fraction": (number(0.0, 1.0, open_low=True), "share held out as test"),
    "dev_from": (choice("train", "test"), "the images dev is held out of (dev_fraction of "
                                          "them): train, or test (the rest is test)"),
    **IMAGE_OPTIONS, **HELD_OUT,
}
"""The settings of ``dataset=image_folder``."""
DEMO_OPTIONS: Settings = {
    "image": (text(), "the demo photograph"),
    "crop_size": (integer(1), "side of the demo's crops"),
    **IMAGE_OPTIONS,
}
"""The settings of ``dataset=image_demo``."""
