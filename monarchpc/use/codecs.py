"""The data side of a trained run: text <-> token ids, images <-> patch rows.

The data set's kind (:data:`monarchpc.data.DATASETS`) decides the codec:

* :func:`text_codec`: chars (text8-style characters: space = 0, a..z = 1..26), tokens
  (SentencePiece pieces of lm1b / WikiText-2 runs), ints (integers, the synthetic data);
* :func:`image_format`: the image size, patch size and colour transform of an image run,
  with :func:`image_to_rows` / :func:`rows_to_image` between RGB images and patch rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from monarchpc.data import dataset
from monarchpc.errors import RunDirError, UsageError
from monarchpc.use.load import run_info


def data_kind(config: DictConfig) -> str:
    """The kind of a run's data: chars, tokens, ints or image."""
    return dataset(config.dataset.name).kind


# -------------------------------------------------------------------------------- text

@dataclass
class CharCodec:
    """text8 characters: space = 0, a..z = 1..26; other text is normalized the text8 way."""

    vocab: str = " abcdefghijklmnopqrstuvwxyz"

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` after text8 normalization (lowercase, digits spelled out)."""
        from monarchpc.data.chars import normalize_text8

        return [self.vocab.index(c) for c in normalize_text8(text)]

    def encode_mask(self, mask: str, unknown: str = "_") -> list[int]:
        """Ids of a pattern whose ``unknown`` characters are missing (-1)."""
        bad = sorted({c for c in mask.lower() if c != unknown and c not in self.vocab})
        if bad:
            raise UsageError(f"mask may hold only a-z, space and {unknown!r} (unknown), not "
                              f"{''.join(bad)!r}")
        return [-1 if c == unknown else self.vocab.index(c) for c in mask.lower()]

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        return "".join(self.vocab[int(i)] for i in ids)


@dataclass
class IntCodec:
    """Integer tokens written as numbers separated by spaces (the synthetic data)."""

    vocab_size: int

    def encode(self, text: str) -> list[int]:
        ids = [int(t) for t in text.split()]
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise UsageError(f"tokens must be integers in [0, {self.vocab_size})")
        return ids

    def encode_mask(self, mask: str, unknown: str = "_") -> list[int]:
        return [-1 if t == unknown else self.encode(t)[0] for t in mask.split()]

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        return " ".join(str(int(i)) for i in ids)


@dataclass
class PieceCodec:
    """SentencePiece pieces (lm1b, WikiText-2 runs); ``add_eos`` ends every sentence."""

    processor: Any

    def encode(self, text: str, add_eos: bool = False) -> list[int]:
        return list(self.processor.encode(text, add_eos=add_eos))

    def encode_mask(self, mask: str, unknown: str = "_") -> list[int]:
        raise UsageError("mask= works on character runs only; a token run takes prefix= "
                          "and/or suffix= (whole pieces)")

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        eos = self.processor.eos_id()
        sentences, current = [], []
        for i in (int(i) for i in ids):
            if i == eos:
                sentences.append(current)
                current = []
            else:
                current.append(i)
        sentences.append(current)
        return " </s> ".join(self.processor.decode(s) for s in sentences).strip()


Codec = CharCodec | IntCodec | PieceCodec


def text_codec(config: DictConfig, run_dir: str | Path | None = None) -> Codec:
    """The codec of a text run (see the module docstring)."""
    kind = data_kind(config)
    if kind == "chars":
        return CharCodec()
    if kind == "ints":
        return IntCodec(int(config.dataset.vocab_size))
    if kind == "tokens":
        import sentencepiece as spm

        info = run_info(run_dir) if run_dir is not None else {}
        path = (info.get("data") or {}).get("tokenizer") or config.dataset.get("tokenizer")
        if not path or not Path(path).is_file():
            raise RunDirError(f"the run's SentencePiece model ({path}) is missing: it lives in "
                              f"the data cache (data/tokenizers/) of the machine that trained "
                              f"the run; copy it there or set dataset.tokenizer in "
                              f"{run_dir}/config.yaml")
        return PieceCodec(spm.SentencePieceProcessor(model_file=str(path)))
    raise UsageError(f"dataset {config.dataset.name!r} is not a text data set (image runs: "
                     f"use image=)")


# ------------------------------------------------------------------------------ images

@dataclass
class ImageFormat:
    """How an image run sees images: ``size`` x ``size`` RGB, ``patch`` x ``patch``
    patches of (row, column, channel) variables, under colour ``transform``."""

    size: int
    patch: int
    transform: str

    @property
    def num_vars(self) -> int:
        return 3 * self.patch * self.patch


def image_format(config: DictConfig) -> ImageFormat:
    """The :class:`ImageFormat` of an image run's config."""
    ds = config.dataset
    if data_kind(config) != "image":
        raise UsageError(f"dataset {ds.name!r} is not an image data set")
    size = next(ds[k] for k in ("resolution", "image_size", "crop_size") if k in ds)
    return ImageFormat(int(size), int(ds.patch_size), str(ds.transform))


def read_image(path: str | Path, size: int) -> np.ndarray:
    """An image file as uint8 RGB (size, size, 3): centre crop, then downsample (as the data;
    16-bit images are scaled to 8 bits). An unreadable image, or one smaller than ``size``,
    raises one :class:`UsageError` line."""
    from PIL import Image

    from monarchpc.data.images import to_square

    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"image file {path} not found" if not path.exists() else
                          f"{path} is not a regular file; give an image file (PNG, JPEG, ...)")
    try:
        image = Image.open(path)
        image.load()
    except Exception as err:  # empty, truncated, not an image: whatever Pillow raises
        detail = str(err).strip().splitlines()[0][:120] if str(err).strip() else \
            type(err).__name__
        raise UsageError(f"cannot read image {path} ({detail}): give an image file Pillow "
                         f"reads (PNG, JPEG, ...), whole and not empty") from None
    if min(image.size) < size:
        raise UsageError(f"image {path} is {image.size[0]} x {image.size[1]} pixels, smaller "
                         f"than the run's image size {size} x {size} (images are not "
                         f"upscaled, as in training): give a larger image")
    return to_square(image, size, f"image {path}")


def image_to_rows(rgb: np.ndarray, fmt: ImageFormat) -> torch.Tensor:
    """uint8 RGB (S, S, 3) -> patch rows (G, 3 p^2) long, colour-transformed."""
    from monarchpc.data.transforms import colour_transform, patches

    return torch.from_numpy(patches(colour_transform(rgb[None], fmt.transform),
                                    fmt.patch)[0].astype(np.int64))


def to_rgb(values: np.ndarray, transform: str) -> np.ndarray:
    """Colour-transformed values (..., 3) -> uint8 RGB (..., 3), clipped to [0, 255].

    Sampled YCoCg-R triples can leave the RGB cube (each channel is drawn on its own);
    ``transforms.ycocg_r_inverse`` would wrap them around, so the lifting steps are
    repeated here in a wide integer type and clipped.
    """
    from monarchpc.data.transforms import inverse_colour_transform

    if transform != "lossless":
        return inverse_colour_transform(values, transform)
    y, co, cg = (values[..., i].astype(np.int64) for i in range(3))
    co, cg = co - 255, cg - 255
    t = y - (cg >> 1)
    b = t - (co >> 1)
    return np.clip(np.stack([b + co, cg + t, b], axis=-1), 0, 255).astype(np.uint8)


def rows_to_image(rows: torch.Tensor, fmt: ImageFormat) -> np.ndarray:
    """Patch rows (G, 3 p^2) -> uint8 RGB (S, S, 3) (values of -1 become grey)."""
    from monarchpc.data.transforms import unpatch

    values = rows.cpu().numpy().astype(np.int64)
    missing = values < 0
    img = unpatch(np.where(missing, 0, values)[None], fmt.patch)[0]
    rgb = to_rgb(img, fmt.transform)
    grey = unpatch(missing[None], fmt.patch)[0].any(-1)
    rgb[grey] = 128
    return rgb


def parse_region(text: str | None, size: int) -> tuple[int, int, int, int]:
    """A pixel box "left,top,right,bottom" (right/bottom exclusive); default: the centre
    half of the image."""
    if text is None:
        return size // 4, size // 4, 3 * size // 4, 3 * size // 4
    parts = [int(p) for p in re.split(r"[ ,:]+", str(text).strip("()[] ")) if p]
    if len(parts) != 4:
        raise UsageError(f"region={text!r}: give left,top,right,bottom in pixels of the "
                          f"{size}x{size} image, e.g. region=8,8,24,24")
    left, top, right, bottom = parts
    if not (0 <= left < right <= size and 0 <= top < bottom <= size):
        raise UsageError(f"region={text!r} must lie inside the {size}x{size} image with "
                          f"left < right and top < bottom")
    return left, top, right, bottom
