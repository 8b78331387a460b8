"""Using a trained model: load a run directory, and encode/decode its data.

    from monarchpc import load_run
    model, config = load_run("outputs/demo-monarch2_hmm-h256-...")

:func:`load_run` rebuilds the circuit of a run from its ``config.yaml`` and loads the
parameters of its ``checkpoint.pt``. An HCLT is rebuilt over the tree saved in its
``parent`` buffer (no data needed). The data side:

* :func:`text_codec`: text <-> token ids of a text run (text8-style characters: space = 0,
  a..z = 1..26; SentencePiece pieces for lm1b / WikiText-2 runs; integers for synthetic);
* :func:`image_format`: the image size, patch size and colour transform of an image run,
  with :func:`image_to_rows` / :func:`rows_to_image` between RGB images and patch rows.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from monarchpc import checkpoint
from monarchpc.circuits.factory import build_model
from monarchpc.circuits.hclt import hclt_from_tree
from monarchpc.circuits.sum_blocks import BlockSpec
from monarchpc.errors import ConfigError, DataError


class RunDirError(FileNotFoundError):
    """A run directory, or a file it needs, is missing; the message names the fix."""


class UsageError(ValueError):
    """A command-line argument or query that cannot work; the message names the fix."""


CHAR_DATASETS = ("text8", "chars", "demo")
TOKEN_DATASETS = ("lm1b", "lines")
IMAGE_DATASETS = ("imagenet", "image_folder", "image_demo")


# ------------------------------------------------------------------------------ loading

def load_config(run_dir: str | Path) -> DictConfig:
    """The resolved config a run used (``config.yaml``, else the checkpoint's copy)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist; pass run_dir=outputs/<run>")
    if (run_dir / "config.yaml").is_file():
        return OmegaConf.load(run_dir / "config.yaml")  # type: ignore[return-value]
    ckpt = checkpoint.load(run_dir)
    if ckpt is None:
        raise RunDirError(f"{run_dir} holds neither config.yaml nor {checkpoint.FILENAME}: "
                          f"it is not a finished run directory")
    return OmegaConf.create(ckpt["config"])


def load_run(run_dir: str | Path, device: str | torch.device = "cpu"
             ) -> tuple[nn.Module, DictConfig]:
    """The trained circuit of ``run_dir`` (in eval mode, on ``device``) and its config.

    Parameters are the last checkpoint's (written at every evaluation, so a run still
    going or interrupted gives its latest evaluated model).
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    ckpt = checkpoint.load(run_dir, map_location="cpu")
    if ckpt is None:
        raise RunDirError(f"{run_dir} has no {checkpoint.FILENAME}: only runs that kept their "
                          f"checkpoint can be loaded (run records without one, such as those "
                          f"under docs/results/runs, cannot)")
    state: dict[str, torch.Tensor] = ckpt["model"]
    if config.model.structure == "hclt":
        model = rebuild_hclt(config, state)
    else:
        model = build_model(config.model, int(state["emission"].shape[1]))
    model.load_state_dict(state)
    return model.to(device).eval(), config


def image_vocab_sizes(config: DictConfig, num_vars: int) -> list[int]:
    """Each variable's vocabulary (D,) of an image run: its colour channel's (v % 3)."""
    from monarchpc.data.transforms import CHANNEL_VOCABS

    return [CHANNEL_VOCABS[config.dataset.transform][v % 3] for v in range(num_vars)]


def rebuild_hclt(config: DictConfig, state: dict[str, torch.Tensor]) -> nn.Module:
    """An HCLT of the run's model config over the tree saved in ``state["parent"]``."""
    parent = state["parent"]
    return hclt_from_tree(config.model, BlockSpec.from_config(config.model), parent,
                          image_vocab_sizes(config, len(parent)))


def run_info(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``run.json`` ({} if it has none)."""
    path = Path(run_dir) / "run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def seq_len(config: DictConfig) -> int:
    """The training row length of a text run."""
    return int(config.dataset.get("seq_len") or 256)


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
    name = config.dataset.name
    if name in CHAR_DATASETS:
        return CharCodec()
    if name == "synthetic":
        return IntCodec(int(config.dataset.vocab_size))
    if name in TOKEN_DATASETS:
        import sentencepiece as spm

        info = run_info(run_dir) if run_dir is not None else {}
        path = (info.get("data") or {}).get("tokenizer") or config.dataset.get("tokenizer")
        if not path or not Path(path).is_file():
            raise RunDirError(f"the run's SentencePiece model ({path}) is missing: it lives in "
                              f"the data cache (data/tokenizers/) of the machine that trained "
                              f"the run; copy it there or set dataset.tokenizer in "
                              f"{run_dir}/config.yaml")
        return PieceCodec(spm.SentencePieceProcessor(model_file=str(path)))
    raise UsageError(f"dataset {name!r} is not a text data set (image runs: use image=)")


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
    if ds.name not in IMAGE_DATASETS:
        raise UsageError(f"dataset {ds.name!r} is not an image data set")
    size = {"imagenet": ds.get("resolution"), "image_folder": ds.get("image_size"),
            "image_demo": ds.get("crop_size")}[ds.name]
    return ImageFormat(int(size), int(ds.patch_size), str(ds.transform))


def read_image(path: str | Path, size: int) -> np.ndarray:
    """An image file as uint8 RGB (size, size, 3): centre crop, then downsample (as the data)."""
    from PIL import Image

    from monarchpc.data.images import to_square

    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"image file {path} not found")
    return to_square(Image.open(path), size)


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


# -------------------------------------------------------------------------- command line

Options = dict[str, tuple[Any, str]]
"""Command-line options: name -> (default, one-line description); a default of None
marks a required option. Values take the type of their default."""


def parse_options(argv: list[str], options: Options, doc: str) -> dict[str, Any]:
    """``key=value`` arguments -> {key: value} typed as the defaults; ``--help`` prints
    ``doc`` and every option, then exits. A bad argument raises :class:`UsageError`."""
    if any(a in ("-h", "--help", "help") for a in argv):
        width = max(map(len, options))
        lines = [f"  {k:<{width}}  {h}" + ("" if d is None or d == "" else f" (default {d})")
                 for k, (d, h) in options.items()]
        print(doc.strip() + "\n\noptions (key=value):\n" + "\n".join(lines))
        raise SystemExit(0)
    out = {k: d for k, (d, _) in options.items()}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or key not in options:
            raise UsageError(f"unknown argument {arg!r}: use key=value with key one of "
                              f"{', '.join(options)} (--help describes them)")
        default = options[key][0]
        try:
            if isinstance(default, bool):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                out[key] = value.lower() in ("true", "1")
            else:
                out[key] = type(default)(value) if default is not None else value
        except ValueError:
            raise UsageError(f"{key}={value!r}: expected a {type(default).__name__}") from None
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise UsageError(f"missing {', '.join(f'{k}=...' for k in missing)} "
                          f"(--help lists the options)")
    return out


def run_cli(main: Any, argv: list[str] | None = None) -> None:
    """Run a command's ``main(argv)`` (default: the process's arguments); a bad argument,
    run directory or data file becomes one line on stderr and exit status 2."""
    import sys

    try:
        main(sys.argv[1:] if argv is None else argv)
    except (RunDirError, UsageError, ConfigError, DataError) as err:
        print(f"monarchpc: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
