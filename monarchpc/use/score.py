"""Score new data with a trained run: bits per character / dimension, or perplexity.

    python -m monarchpc.score run_dir=outputs/<text run> file=notes.txt
    python -m monarchpc.score run_dir=outputs/<image run> file=photo.jpg     # or a folder

The file goes through the run's data pipeline: text is normalized the text8 way (character
runs) or cut into sentences, one per non-blank line, each followed by EOS (SentencePiece
runs), then cut into rows of the run's row length (``length=`` to change it; the last,
shorter row is scored too); images are centre-cropped and downsampled to the run's image
size, colour-transformed and cut into patches. The metric is exact: the total negative
log-likelihood over every scored unit (character, token or pixel channel).

As in training, a file that is not text (more than 1% control characters or bytes that are
not UTF-8) is refused unless the run was trained with ``dataset.allow_non_text=true``, and
images smaller than the run's image size are refused, never upscaled. The memory a batch
of rows takes (batch x length x h) is estimated before scoring and refused with one line
if it cannot fit in the device's free memory (:mod:`monarchpc.memory`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from monarchpc import memory
from monarchpc.data import dataset
from monarchpc.errors import RunDirError, UsageError
from monarchpc.learning.engines import autograd_scorer
from monarchpc.run import evaluate
from monarchpc.structures import structure_of
from monarchpc.use.cli import parse_options
from monarchpc.use.codecs import PieceCodec, image_format, image_to_rows, read_image, text_codec
from monarchpc.use.load import checkpoint_file, load_run, seq_len

OPTIONS = {
    "run_dir": (None, "the run directory (with its checkpoint.pt)"),
    "checkpoint": ("auto", "auto (best.pt, the best dev model, where kept; else the last), "
                           "best or last"),
    "file": (None, "a text file (plain, .xz, .gz, .bz2, .zip), or an image file or folder"),
    "length": (0, "text: row length (0: the run's); -1: the whole file as one row"),
    "batch": (64, "rows per forward pass"),
    "device": ("cpu", "cpu, cuda, cuda:1, ..."),
    "json": (False, "print one JSON object instead of a sentence"),
}


def text_ids(path: Path, config: Any, run_dir: Path) -> list[int]:
    """The token ids of a text file through the run's pipeline (a file that is not text is
    refused, as training refuses it)."""
    from monarchpc.data.chars import check_text, read_text

    text = read_text(path)
    check_text(text, path, bool(config.dataset.get("allow_non_text", False)),
               "give a UTF-8 text file (the run was trained on text: its "
               "dataset.allow_non_text is false)")
    codec = text_codec(config, run_dir)
    if isinstance(codec, PieceCodec):
        return [i for line in text.splitlines() if line.strip()
                for i in codec.encode(line.strip(), add_eos=True)]
    return codec.encode(text)


def text_rows(ids: list[int], length: int) -> list[Tensor]:
    """Rows of ``length`` ids (the last one may be shorter); -1: one row of everything."""
    if length < 0:
        length = len(ids)
    return [torch.tensor(ids[i:i + length]) for i in range(0, len(ids), length)]


def image_rows(path: Path, config: Any) -> tuple[Tensor, int]:
    """Patch rows of one image file, or of every image in a folder; and the image count."""
    from monarchpc.data.images import is_image

    fmt = image_format(config)
    files = sorted(p for p in path.rglob("*") if is_image(p.name)) if path.is_dir() else [path]
    if not files:
        raise UsageError(f"no image files in {path}")
    return torch.cat([image_to_rows(read_image(f, fmt.size), fmt) for f in files]), len(files)


def check_memory(model: torch.nn.Module, rows: list[Tensor], batch: int) -> None:
    """Refuse (one UsageError line) rows whose largest batch cannot fit in memory."""
    lengths: dict[int, int] = {}
    for r in rows:
        lengths[len(r)] = lengths.get(len(r), 0) + 1
    need = max(memory.rows_bytes(min(batch, count), length, int(model.hidden_size),
                                 views=structure_of(model.structure).position_views)
               for length, count in lengths.items())
    longest = max(lengths)
    memory.check_fits(f"scoring {min(batch, lengths[longest])} row(s) of {longest:,} units "
                      f"at once (h={model.hidden_size})", need,
                      next(model.parameters()).device,
                      "score shorter rows (length=N, e.g. the run's row length: length=0) "
                      "or fewer at once (batch=N)", UsageError)


def total_nll(model: torch.nn.Module, rows: list[Tensor], batch: int) -> float:
    """Sum of -log p (nats, exact fp32 products) over ``rows`` of any lengths: rows of
    equal length go through :func:`monarchpc.run.evaluate.total_nll` together."""
    device = next(model.parameters()).device
    by_length: dict[int, list[Tensor]] = {}
    for r in rows:
        by_length.setdefault(len(r), []).append(r)
    score = autograd_scorer(model, "fp32")
    return sum(evaluate.total_nll(score, torch.stack(group), batch, device)[0]
               for group in by_length.values())


def score(run_dir: Path, file: Path, length: int = 0, batch: int = 64,
          device: str = "cpu", checkpoint: str = "auto") -> dict[str, Any]:
    """{"metric", "value", "nll_nats", "units", "rows", "checkpoint", ...} of ``file`` under
    the run's model (``checkpoint``: see :func:`monarchpc.use.load.load_run`)."""
    if not file.exists():
        raise RunDirError(f"file {file} not found")
    if not (file.is_file() or file.is_dir()):  # /dev/zero, a pipe, a socket: no end or size
        raise UsageError(f"file={file} is not a regular file or folder: give a text file, an "
                         f"image file or a folder of images")
    if batch < 1:
        raise UsageError(f"batch must be >= 1, got {batch}")
    if length < -1:
        raise UsageError(f"length must be -1 (the whole file as one row), 0 (the run's row "
                         f"length) or a positive row length, got {length}")
    model, config = load_run(run_dir, device, checkpoint)
    which = checkpoint_file(run_dir, checkpoint)
    metric = dataset(config.dataset.name).metric
    extra: dict[str, Any] = {}
    if metric == "bpd":
        patches, images = image_rows(file, config)
        rows = list(patches)
        extra["images"] = images
    elif file.is_dir():
        raise UsageError(f"file={file} is a folder; a text run scores one text file")
    else:
        ids = text_ids(file, config, run_dir)
        if not ids:
            raise UsageError(f"{file} holds no text the run's vocabulary can encode")
        rows = text_rows(ids, length or seq_len(config))
    check_memory(model, rows, batch)  # before any batch is scored
    nll = total_nll(model, rows, batch)
    units = sum(len(r) for r in rows)
    return {"file": str(file), "run_dir": str(run_dir), "metric": metric,
            "value": evaluate.metric_value(metric, nll, units), "nll_nats": nll, "units": units,
            "rows": len(rows), "bits_per_unit": nll / units / math.log(2), "checkpoint": which,
            **extra}


def main(argv: list[str]) -> None:
    opts = parse_options(argv, OPTIONS, __doc__ or "")
    result = score(Path(opts["run_dir"]), Path(opts["file"]), opts["length"], opts["batch"],
                   opts["device"], opts["checkpoint"])
    if opts["json"]:
        print(json.dumps(result))
        return
    unit = {"bpc": "characters", "bpd": "dimensions", "ppl": "tokens"}[result["metric"]]
    print(f"{result['file']}: {result['metric'].upper()} {result['value']:.4f} over "
          f"{result['units']:,} {unit} in {result['rows']:,} rows "
          f"(NLL {result['nll_nats']:.1f} nats; {result['checkpoint']})")
