"""Sample from a trained run, or complete partial data exactly (conditional sampling, or
the most likely completion).

    python -m monarchpc.sample run_dir=outputs/<run> n=4
    python -m monarchpc.sample run_dir=outputs/<run> prefix="the president of" length=60
    python -m monarchpc.sample run_dir=outputs/<run> suffix="of the world" length=40
    python -m monarchpc.sample run_dir=outputs/<run> mask="th_ qu__k br__n f_x" top=3
    python -m monarchpc.sample run_dir=outputs/<run> mask="th_ qu__k br__n f_x" mode=map
    python -m monarchpc.sample run_dir=outputs/<image run> n=16            # PNG grid
    python -m monarchpc.sample run_dir=outputs/<image run> image=photo.jpg region=8,8,24,24
    python -m monarchpc.sample run_dir=outputs/<image run> image=photo.jpg mode=map

Text runs print one sample per line: prefix/suffix fix the start/end of every sample,
mask fixes every character but the ``_`` ones; the rest is drawn from the model's exact
conditional distribution given what is fixed. ``top=k`` also prints, for every unknown
position, the k most likely values and their exact marginal probabilities. Image runs
write PNGs: a grid of sampled patches, or, with ``image=``, the photograph with a region
masked out (``<out>-before.png``) and inpainted (``<out>-after.png``, one column per
sample).

``mode=`` chooses how the unknown values are filled in (all exact; docs/queries.md):

* ``sample`` (default): n draws from p(unknown | fixed);
* ``map``: one completion, the most likely joint assignment of the unknown values together
  with the model's latent states (HMM hidden states, HCLT latents, the intermediate indices
  between a Monarch block's layers), by max-product (Viterbi). It is the completion along
  the single most likely latent path, not the most likely completion with the latents
  summed out (marginal MAP, NP-hard in general);
* ``marginal``: one completion, each unknown value set to its own most likely value (the
  argmax of its marginal, the first value ``top=`` prints); chosen one by one, so the
  whole need not be likely.

Arguments are checked before any work: ``n``, ``length``, ``top`` and ``scale`` ranges, the
``out=`` path (its folder is created; a directory there is an error), an ``image=`` that
Pillow cannot read or that is smaller than the run's image size (never upscaled, as in
training), and the memory the samples need (n x length x h, :mod:`monarchpc.memory`)
against the device's free memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from monarchpc import memory
from monarchpc.errors import UsageError
from monarchpc.files import refuse_link
from monarchpc.queries import MISSING, marginal_argmax
from monarchpc.structures import Structure, structure_of
from monarchpc.use.cli import parse_options
from monarchpc.use.codecs import (
    Codec,
    data_kind,
    image_format,
    image_to_rows,
    parse_region,
    read_image,
    rows_to_image,
    text_codec,
)
from monarchpc.use.load import load_run, seq_len

OPTIONS = {
    "run_dir": (None, "the run directory (with its checkpoint.pt)"),
    "checkpoint": ("auto", "auto (best.pt, the best dev model, where kept; else the last), "
                           "best or last"),
    "n": (4, "number of samples (mode=sample)"),
    "length": (0, "text: tokens per sample (0: the run's row length)"),
    "prefix": ("", "text: every sample starts with this"),
    "suffix": ("", "text: every sample ends with this"),
    "mask": ("", "text: a pattern whose _ characters are filled in (sets the length)"),
    "top": (0, "text: also print the k most likely values of every unknown position"),
    "mode": ("sample", "sample: n draws from p(unknown | fixed); map: the most likely joint "
                       "assignment of the unknown values and the latent states (max-product; "
                       "one completion); marginal: each unknown value's most likely value "
                       "(one completion)"),
    "image": ("", "image runs: a photograph to inpaint"),
    "region": ("", "image runs: pixels left,top,right,bottom to inpaint (default: centre)"),
    "out": ("", "text: also write the samples here; images: PNG path stem "
                "(default <run_dir>/samples or <run_dir>/inpaint)"),
    "scale": (4, "images: PNG pixels per image pixel"),
    "seed": (0, "random seed"),
    "device": ("cpu", "cpu, cuda, cuda:1, ..."),
}


# -------------------------------------------------------------------------------- text

def check_memory(model: torch.nn.Module, rows: int, length: int, extra: int = 0) -> None:
    """Refuse (one UsageError line) ``rows`` samples of ``length`` values whose buffers
    (n x length x h messages, the rows, a working set per step; plus ``extra`` bytes)
    cannot fit in the free memory of the model's device."""
    h = int(model.hidden_size)
    need = memory.rows_bytes(rows, length, h) + rows * (length + 64) + extra  # + the text
    memory.check_fits(f"sampling n={rows:,} x length={length:,} (h={h})", need,
                      next(model.parameters()).device,
                      "ask for fewer or shorter samples (n=, length=)", UsageError)


def text_pattern(codec: Codec, opts: dict[str, Any], default_length: int,
                 check: Any = lambda length: None) -> list[int]:
    """The row to complete: fixed ids and MISSING (-1) where the model fills in.
    ``check(length)`` runs before the row is built (the memory check)."""
    if opts["mask"]:
        if opts["prefix"] or opts["suffix"]:
            raise UsageError("give either mask= or prefix=/suffix=, not both")
        check(len(opts["mask"]))
        return codec.encode_mask(opts["mask"])
    prefix, suffix = codec.encode(opts["prefix"]), codec.encode(opts["suffix"])
    length = opts["length"] or max(default_length, len(prefix) + len(suffix))
    if len(prefix) + len(suffix) > length:
        raise UsageError(f"prefix and suffix take {len(prefix) + len(suffix)} tokens, more "
                          f"than length={length}")
    check(length)
    return prefix + [MISSING] * (length - len(prefix) - len(suffix)) + suffix


def top_values(codec: Codec, marginals: Tensor, pattern: list[int], k: int) -> list[str]:
    """One line per unknown position: its k most likely values with probabilities."""
    lines = []
    for t, v in enumerate(pattern):
        if v != MISSING:
            continue
        probs, ids = marginals[t].topk(min(k, marginals.shape[-1]))
        shown = ", ".join(f"{codec.decode([int(i)])!r} {float(p):.3f}"
                          for p, i in zip(probs, ids, strict=True))
        lines.append(f"position {t}: {shown}")
    return lines


MODES = ("sample", "map", "marginal")


def fill(model: torch.nn.Module, structure: Structure, x: Tensor, opts: dict[str, Any],
         generator: torch.Generator) -> Tensor:
    """Rows ``x`` (N, D) with their MISSING values filled in by ``opts["mode"]``: n samples
    of the rows (n N rows: the first sample of every row, then the second, ...), or one most
    likely completion of each row (N rows)."""
    mode = opts["mode"]
    if mode == "sample":
        return structure.sample(model, x.repeat(opts["n"], 1), generator)
    if mode == "map":
        if structure.complete is None:
            raise UsageError(f"mode=map needs max-product completion, which {structure.name} "
                             f"models lack")
        return structure.complete(model, x)[0]
    if structure.marginals is None:
        raise UsageError(f"mode=marginal needs marginals, which {structure.name} models lack")
    return marginal_argmax(x, structure.marginals(model, x))


def sample_text(model: torch.nn.Module, structure: Structure, codec: Codec,
                opts: dict[str, Any], default_length: int) -> list[str]:
    """Printed lines: the samples or the completion (and, with ``top``, the marginals of
    unknown positions)."""
    vocab = int(getattr(model, "vocab_size", 0))
    top = 4 * vocab + 4 * int(model.hidden_size) if opts["top"] > 0 else 0  # per position
    rows = opts["n"] if opts["mode"] == "sample" else 1

    def check(length: int) -> None:
        check_memory(model, rows, length, top * length)

    pattern = text_pattern(codec, opts, default_length, check)
    device = next(model.parameters()).device
    x = torch.tensor([pattern], device=device)
    gen = torch.Generator(device=device).manual_seed(opts["seed"])
    lines = [codec.decode(row) for row in fill(model, structure, x, opts, gen).cpu()]
    if opts["top"] > 0:
        if structure.marginals is None:
            raise UsageError(f"top= needs marginals, which {structure.name} models lack")
        marginals = structure.marginals(model, x)[0].cpu()
        lines += top_values(codec, marginals, pattern, opts["top"])
    return lines


# ------------------------------------------------------------------------------ images

def save_png(rgb: np.ndarray, path: Path, scale: int) -> Path:
    """Write uint8 RGB (H, W, 3), each pixel a ``scale`` x ``scale`` square."""
    from PIL import Image

    big = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
    write_file(path, lambda p: Image.fromarray(big).save(p))
    return path


def grid(images: list[np.ndarray], columns: int, gap: int = 1) -> np.ndarray:
    """Images (h, w, 3) side by side in rows of ``columns``, separated by white lines."""
    h, w, _ = images[0].shape
    rows = -(-len(images) // columns)
    out = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = img
    return out


def image_paths(opts: dict[str, Any], run_dir: Path) -> list[Path]:
    """The PNGs ``sample`` writes for an image run (checked by :func:`output_path`)."""
    if not opts["image"]:
        paths = [Path(opts["out"] or run_dir / "samples").with_suffix(".png")]
    else:
        stem = Path(opts["out"] or run_dir / "inpaint")
        paths = [stem.with_name(stem.name + f"-{k}.png") for k in ("before", "after")]
    if not opts["out"]:  # the run directory's own files: never through a planted link
        for path in paths:
            refuse_link(path)
    return [output_path(path) for path in paths]


def sample_images(model: torch.nn.Module, structure: Structure, config: Any,
                  opts: dict[str, Any], run_dir: Path) -> list[Path]:
    """Sampled patches as one PNG grid, or an inpainted photograph (before/after PNGs)."""
    fmt = image_format(config)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(opts["seed"])
    n, scale = (opts["n"] if opts["mode"] == "sample" else 1), opts["scale"]
    paths = image_paths(opts, run_dir)  # checked before sampling
    check_memory(model, n, fmt.num_vars, 3 * n * (fmt.size * scale) ** 2 * 2)  # + PNG grids
    if not opts["image"]:
        x = torch.full((1, fmt.num_vars), MISSING, device=device)
        rows = fill(model, structure, x, opts, gen).cpu()
        n = len(rows)
        patches = [rows_to_image(r[None], fmt) for r in rows]  # each a 1-patch image
        return [save_png(grid(patches, columns=int(np.ceil(np.sqrt(n)))), paths[0], scale)]
    rgb = read_image(opts["image"], fmt.size)
    left, top, right, bottom = parse_region(opts["region"] or None, fmt.size)
    hole = np.zeros((fmt.size, fmt.size, 3), dtype=bool)
    hole[top:bottom, left:right] = True
    rows = image_to_rows(rgb, fmt)
    hole_rows = image_to_rows(hole.astype(np.uint8), type(fmt)(fmt.size, fmt.patch, "rgb"))
    masked = torch.where(hole_rows.bool(), MISSING, rows)
    filled = fill(model, structure, masked.to(device), opts, gen).cpu()
    n = len(filled) // len(rows)  # completions of the photograph
    filled = filled.reshape(n, *rows.shape)
    before = save_png(grid([rgb, rows_to_image(masked, fmt)], 2), paths[0], scale)
    after = save_png(grid([rows_to_image(f, fmt) for f in filled], n), paths[1], scale)
    return [before, after]


def output_path(path: Path) -> Path:
    """``path`` as a file to write: its folder created, a directory there refused."""
    if path.is_dir():
        raise UsageError(f"out={path} is a directory; give a file path, e.g. "
                         f"out={path / 'samples'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"out={path}: cannot create its folder {path.parent} "
                         f"({err.strerror}); give a writable path") from None
    return path


def write_file(path: Path, write: Any) -> None:
    """``write(path)``; an OSError (permissions, full disk) becomes one UsageError line."""
    try:
        write(path)
    except OSError as err:
        raise UsageError(f"cannot write {path} ({err.strerror}); give another out=") from None


def check_options(opts: dict[str, Any]) -> None:
    """The ranges of the numeric options and the mode (one UsageError line)."""
    for key, low in (("n", 1), ("length", 0), ("top", 0), ("scale", 1)):
        if opts[key] < low:
            raise UsageError(f"{key} must be >= {low}, got {opts[key]}")
    if opts["mode"] not in MODES:
        raise UsageError(f"mode={opts['mode']!r}: use one of {', '.join(MODES)}")


def main(argv: list[str]) -> None:
    opts = parse_options(argv, OPTIONS, __doc__ or "")
    check_options(opts)
    run_dir = Path(opts["run_dir"])
    model, config = load_run(run_dir, opts["device"], opts["checkpoint"])
    structure = structure_of(config.model.structure)
    if data_kind(config) == "image":
        if opts["prefix"] or opts["suffix"] or opts["mask"]:
            raise UsageError("prefix=, suffix= and mask= are for text runs; an image run "
                              "takes image=<photo> [region=left,top,right,bottom]")
        if opts["top"]:
            raise UsageError("top= lists values of text positions; for an image run, "
                              "mode=marginal fills every pixel with its most likely value")
        for path in sample_images(model, structure, config, opts, run_dir):
            print(f"wrote {path}")
        return
    if opts["image"]:
        raise UsageError("image= needs an image run; this run models text")
    out = output_path(Path(opts["out"])) if opts["out"] else None  # before sampling
    lines = sample_text(model, structure, text_codec(config, run_dir), opts, seq_len(config))
    print("\n".join(lines))
    if out is not None:
        write_file(out, lambda p: p.write_text("\n".join(lines) + "\n"))
