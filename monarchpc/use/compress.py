"""Lossless compression with a trained circuit: its exact conditionals drive an rANS coder.

    python -m monarchpc.compress run_dir=outputs/<char run> file=notes.txt out=notes.mpc
    python -m monarchpc.decompress run_dir=outputs/<char run> file=notes.mpc out=notes.txt
    python -m monarchpc.compress run_dir=outputs/<image run> file=photo.png    # or a folder
    python -m monarchpc.decompress run_dir=outputs/<image run> file=photo.png.mpc

What is coded
-------------
* Character runs (text8, chars, demo): the file's bytes, which must already be
  text8-normalized (only ``a``-``z`` and space; anything else, a newline included, is
  refused with one line naming the first such byte). ``normalize=true`` codes the file's
  text8 normalization instead (lowercase, digits spelled out, every other run of
  characters one space: :func:`monarchpc.data.chars.normalize_text8`); decompression then
  returns that normalized text. Either way decompression returns the coded bytes exactly.
  The text is cut into independent rows of ``row`` characters (default 4096, the last one
  shorter; ``batch`` rows go through the model at once), and the HMM codes x_t | x_<t of
  each row from its start with forward messages:
  a_1 = g, p(x_t = v | x_<t) = a_t . B[:, v] (a_t normalized), a_{t+1} = A^T (a_t * B[:, x_t]).
* Image runs (HCLT, colour transform ``lossless`` (YCoCg-R) or ``rgb``): the pixels of the
  image as the file holds them (RGB or greyscale, any size: not the centre-cropped,
  downsampled image the run trains on), under the run's colour transform, cut into the run's
  p x p patches (rows of 3 p^2 variables); variables of patches that overhang the right or
  bottom edge are marginalized (MISSING), never coded. The variables of all patches are
  coded in one fixed order, the tree's breadth-first order (root first, ``hclt.order``),
  each given the earlier ones: p(x_v | x_<v) = p(x_<=v) / p(x_<v), all values of x_v at once
  from messages along the root-to-v path (:class:`HCLTSteps`; the uncoded variables are
  whole subtrees, marginalized exactly). Decompression writes
  PNGs with exactly the original pixel values (RGB, or L for greyscale sources); other
  modes (alpha, palette, 16-bit) are refused. Batches: ``batch`` patches (of all images of
  a folder together) go through the model at once.

Coding
------
rANS (:mod:`monarchpc.use.rans`) over R lanes (automatic: one per 16,384 symbols, at most
64): the symbols of one model step, over all rows of a batch, are spread over the lanes,
which the decoder steps together. Frequencies total 2^20 per table, every value at least
1. The file exceeds the model's own NLL by the rounding of the frequencies, the coder
(below 2^-11 bits a symbol), the lanes' final states (8 bytes each) and the header (about
40 bytes, plus a few bytes and the name of every image of a folder).

Exactness
---------
Encoder and decoder compute the conditionals with the same code, in the same order and
batch shapes (the encoder steps through the data exactly as the decoder must), on the CPU
in float64, with the thread count recorded in the header; :func:`monarchpc.use.rans.quantize`
turns them into integer frequencies (total 2^20, every value at least 1) with float64
element-wise operations. What must match between the two sides is recorded as a
fingerprint and checked (refused with one line unless ``force=true``): the torch version,
its CPU instruction set (``torch.backends.cpu.get_cpu_capability()``), the numpy version
and the thread count. GPUs are not supported: their float results depend on the kernel
launch configuration. The run's checkpoint hash (its first 16 bytes of sha256) is in the
header: decompressing with another run is refused with one line; a CRC-32 of the coded
content and the coder's end state check the result.

Container (little-endian): magic ``MPCZ``, version, kind (1 text, 2 images), frequency
bits, threads, run id (16 bytes), fingerprint (4), CRC-32 (4), then varints (text: length,
row, batch, lanes; images: count, batch, lanes, per image width, height, mode and, for a
folder, the file name), then the lanes' final rANS states (8 bytes each) and the words.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from monarchpc.checkpoint import FILENAME as CHECKPOINT
from monarchpc.circuits.hclt import HCLT
from monarchpc.circuits.hmm import HMM
from monarchpc.conditionals import HCLTSteps, HCLTTree, HMMSteps, Steps
from monarchpc.data.chars import normalize_text8
from monarchpc.data.transforms import ycocg_r, ycocg_r_inverse
from monarchpc.errors import DataError, RunDirError, UsageError
from monarchpc.use import rans
from monarchpc.use.cli import parse_options
from monarchpc.use.codecs import data_kind, image_format
from monarchpc.use.load import load_config, load_run

MAGIC = b"MPCZ"
VERSION = 1
KIND_TEXT, KIND_IMAGES = 1, 2
RUN_ID_BYTES = 16
SUFFIX = ".mpc"
LOSSLESS = ("lossless", "rgb")
MODES = ("RGB", "L")
MAX_LANES = 64
SYMBOLS_PER_LANE = 16384
"""Automatic lanes: at least this many symbols each, so the 8-byte final state of a lane
costs at most 64 / 16384 bits per symbol (under 0.5% of 1 bit per symbol)."""
DEFAULT_ROW = 4096
DEFAULT_BATCH = {KIND_TEXT: 1024, KIND_IMAGES: 512}


class CompressedFileError(DataError):
    """A compressed file that cannot be decoded here (another run, machine, or corrupt)."""


# ------------------------------------------------------------------------------ identity

def run_id(run_dir: str | Path) -> bytes:
    """The first 16 bytes of the sha256 of the run's ``checkpoint.pt``."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no {CHECKPOINT}: compression needs a run that kept "
                          f"its checkpoint")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()[:RUN_ID_BYTES]


def numerics(threads: int) -> str:
    """What must be equal on both sides for equal float64 conditionals (see the docstring)."""
    capability = torch.backends.cpu.get_cpu_capability()
    numpy_version = ".".join(np.__version__.split(".")[:2])
    return f"torch {torch.__version__} cpu {capability} numpy {numpy_version} threads {threads}"


def fingerprint(threads: int) -> int:
    return zlib.crc32(numerics(threads).encode())


# ----------------------------------------------------------------------------- container

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class _Reader:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CompressedFileError("the compressed file is truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def varint(self) -> int:
        n, shift = 0, 0
        while True:
            byte = self.take(1)[0]
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return n
            if shift > 63:
                raise CompressedFileError("the compressed file is corrupt (bad length)")


@dataclass
class ImageEntry:
    """One image of a container: ``width`` x ``height`` pixels, PIL ``mode``, file ``name``."""

    width: int
    height: int
    mode: str = "RGB"
    name: str = ""


@dataclass
class Header:
    """Everything before the coded stream (see the module docstring)."""

    kind: int
    run: bytes
    threads: int = 1
    scale_bits: int = rans.SCALE_BITS
    fingerprint: int = 0
    crc: int = 0
    batch: int = 1
    lanes: int = 1
    length: int = 0  # text: characters
    row: int = 0  # text: characters per row
    images: list[ImageEntry] = field(default_factory=list)

    FIXED = struct.Struct("<4sBBBB16sII")

    def pack(self) -> bytes:
        out = self.FIXED.pack(MAGIC, VERSION, self.kind, self.scale_bits, self.threads,
                              self.run, self.fingerprint, self.crc)
        if self.kind == KIND_TEXT:
            fields = [self.length, self.row, self.batch, self.lanes]
            return out + b"".join(map(_varint, fields))
        named = len(self.images) > 1
        out += b"".join(map(_varint, [len(self.images), self.batch, self.lanes]))
        for im in self.images:
            out += _varint(im.width) + _varint(im.height) + bytes([MODES.index(im.mode)])
            if named:
                name = im.name.encode()
                out += _varint(len(name)) + name
        return out

    @classmethod
    def unpack(cls, data: bytes) -> tuple[Header, int]:
        """The header of ``data`` and the offset where the lanes' states begin."""
        if len(data) < cls.FIXED.size or data[:4] != MAGIC:
            raise CompressedFileError("not a monarchpc compressed file (no MPCZ header)")
        _, version, kind, sb, threads, run, fp, crc = cls.FIXED.unpack_from(data)
        if version != VERSION or kind not in (KIND_TEXT, KIND_IMAGES):
            raise CompressedFileError(f"compressed file format {version} (kind {kind}) is not "
                                      f"one this version reads (format {VERSION})")
        r = _Reader(data, cls.FIXED.size)
        h = cls(kind, run, threads, sb, fp, crc)
        if kind == KIND_TEXT:
            h.length, h.row, h.batch, h.lanes = (r.varint() for _ in range(4))
        else:
            count, h.batch, h.lanes = (r.varint() for _ in range(3))
            for _ in range(count):
                w, hh, mode = r.varint(), r.varint(), r.take(1)[0]
                if mode >= len(MODES):
                    raise CompressedFileError("the compressed file is corrupt (image mode)")
                name = r.take(r.varint()).decode("utf-8", "replace") if count > 1 else ""
                h.images.append(ImageEntry(w, hh, MODES[mode], name))
        if not 1 <= sb <= rans.MAX_SCALE_BITS or h.lanes < 1 or h.batch < 1 or (
                kind == KIND_TEXT and h.row < 1):
            raise CompressedFileError("the compressed file is corrupt (bad header fields)")
        return h, r.pos


def pack(header: Header, states: np.ndarray, words: np.ndarray) -> bytes:
    return header.pack() + states.astype("<u8").tobytes() + words.astype("<u4").tobytes()


def unpack(data: bytes) -> tuple[Header, np.ndarray, np.ndarray]:
    """(header, final states (R,) uint64, words (W,) uint32) of a compressed file."""
    header, pos = Header.unpack(data)
    end = pos + 8 * header.lanes
    if end > len(data) or (len(data) - end) % 4:
        raise CompressedFileError("the compressed file is truncated or corrupt")
    states = np.frombuffer(data[pos:end], dtype="<u8").astype(np.uint64)
    words = np.frombuffer(data[end:], dtype="<u4").astype(np.uint32)
    return header, states, words


# ------------------------------------------------------------------------------ driver

def _lane_grid(n: int, lanes: int) -> int:
    """Coder steps for n symbols over ``lanes`` lanes (symbol i -> step i // lanes, lane
    i % lanes)."""
    return -(-n // lanes)


def _tables(steps: Steps, t: int, scale_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cumulative frequencies (n, V + 1), active (n,), probabilities (n, V)) of step t."""
    probs, active = steps.probs(t)
    p = probs.detach().double().numpy()
    return rans.cumulative(rans.quantize(p, scale_bits)), active.numpy(), p


def encode_steps(chunks: Iterator[tuple[Steps, Tensor]], lanes: int, scale_bits: int
                 ) -> tuple[np.ndarray, np.ndarray, float]:
    """Code every chunk (its steps and symbols (n, n_steps)) in order; returns the final
    states, the words, and the model's own NLL of the coded symbols in bits (float)."""
    starts, freqs = [], []
    nll = 0.0
    for steps, symbols in chunks:
        rows = np.arange(len(symbols))
        k = _lane_grid(len(symbols), lanes)
        for t in range(steps.n_steps):
            cum, active, p = _tables(steps, t, scale_bits)
            sym = np.where(active, symbols[:, t].numpy(), 0)
            start = np.where(active, cum[rows, sym], 0)
            freq = np.where(active, cum[rows, sym + 1] - start, 0)
            grid_s, grid_f = (np.zeros(k * lanes, dtype=np.int64) for _ in range(2))
            grid_s[:len(rows)], grid_f[:len(rows)] = start, freq
            starts.append(grid_s.reshape(k, lanes))
            freqs.append(grid_f.reshape(k, lanes))
            with np.errstate(divide="ignore"):
                nll -= float(np.log2(p[rows, sym])[active].sum())
            steps.advance(t, torch.from_numpy(sym))
    if not starts:
        return np.full(lanes, rans.STATE_LOW, dtype=np.uint64), np.zeros(0, np.uint32), 0.0
    states, words = rans.encode(np.concatenate(starts), np.concatenate(freqs), scale_bits)
    return states, words, nll


def decode_steps(chunks: Iterator[Steps], decoder: rans.Decoder, lanes: int,
                 scale_bits: int) -> Iterator[Tensor]:
    """Decode what :func:`encode_steps` coded: the symbols (n, n_steps) of every chunk."""
    for steps in chunks:
        cum_rows = None
        out: list[Tensor] = []
        for t in range(steps.n_steps):
            cum, active, _ = _tables(steps, t, scale_bits)
            n = len(cum)
            k = _lane_grid(n, lanes)
            if cum_rows is None or cum_rows.shape[1] != cum.shape[1]:
                cum_rows = np.zeros((k * lanes, cum.shape[1]), dtype=np.int64)
            cum_rows[:n] = cum
            act = np.zeros(k * lanes, dtype=bool)
            act[:n] = active
            sym = np.concatenate([decoder.decode(cum_rows[i * lanes:(i + 1) * lanes],
                                                 act[i * lanes:(i + 1) * lanes])
                                  for i in range(k)])[:n]
            sym = torch.from_numpy(np.where(active, sym, 0))
            steps.advance(t, sym)
            out.append(sym)
        yield torch.stack(out, 1) if out else torch.zeros(0, 0, dtype=torch.long)


def auto_lanes(symbols: int, rows: int) -> int:
    """Lanes for ``symbols`` symbols in batches of ``rows`` rows (see SYMBOLS_PER_LANE)."""
    return max(1, min(MAX_LANES, symbols // SYMBOLS_PER_LANE, rows))


# -------------------------------------------------------------------------------- text

def text_symbols(data: bytes) -> np.ndarray:
    """Bytes of a text8-normalized text -> symbols (n,) int64 (space 0, a..z 1..26).

    Raises DataError naming the first byte outside the alphabet."""
    codes = np.frombuffer(data, dtype=np.uint8)
    ok = (codes == 32) | ((codes >= 97) & (codes <= 122))
    if not ok.all():
        i = int(np.argmin(ok))
        raise DataError(f"byte {i:,} ({bytes(data[i:i + 1])!r}) is not in the run's alphabet "
                        f"(a-z and space: text8-normalized text); pass normalize=true to code "
                        f"the text8 normalization of the file instead")
    return np.where(codes == 32, 0, codes.astype(np.int64) - 96)


def text_rows(n: int, row: int) -> Tensor:
    """Lengths (N,) of the rows of ``row`` characters that cut a text of n characters."""
    full, rest = divmod(n, row)
    return torch.tensor([row] * full + ([rest] if rest else []), dtype=torch.long)


def _text_chunks(hmm: HMM, lengths: Tensor, batch: int) -> Iterator[HMMSteps]:
    for i in range(0, len(lengths), batch):
        yield HMMSteps(hmm, lengths[i:i + batch])


def compress_text(hmm: HMM, run: bytes, data: bytes, row: int = DEFAULT_ROW,
                  lanes: int = 0, batch: int = 1024, scale_bits: int = rans.SCALE_BITS,
                  threads: int = 1) -> tuple[bytes, dict[str, Any]]:
    """The compressed file of the normalized text ``data`` and its statistics
    (``nll_bits``: the model's own NLL of the same rows)."""
    symbols = text_symbols(data)
    lengths = text_rows(len(symbols), row)
    lanes = lanes or auto_lanes(len(symbols), min(batch, max(len(lengths), 1)))
    padded = np.zeros((len(lengths), row), dtype=np.int64)
    padded.reshape(-1)[:len(symbols)] = symbols
    x = torch.from_numpy(padded)
    chunks = ((HMMSteps(hmm, lengths[i:i + batch]), x[i:i + batch])
              for i in range(0, len(lengths), batch))
    with _threads(threads), torch.no_grad():
        states, words, nll = encode_steps(chunks, lanes, scale_bits)
    header = Header(KIND_TEXT, run, threads, scale_bits, fingerprint(threads),
                    zlib.crc32(data), batch, lanes, len(symbols), row)
    out = pack(header, states, words)
    return out, _stats(out, header, len(data), len(symbols), nll)


def decompress_text(hmm: HMM, header: Header, states: np.ndarray, words: np.ndarray) -> bytes:
    """The text of a compressed file (its header and stream from :func:`unpack`)."""
    lengths = text_rows(header.length, header.row)
    with _decoding(states, words, header) as decoder:
        rows = [r[i, :int(n)] for r, ls in zip(
            decode_steps(_text_chunks(hmm, lengths, header.batch), decoder, header.lanes,
                         header.scale_bits),
            lengths.split(header.batch) if len(lengths) else (), strict=True)
            for i, n in enumerate(ls)]
    codes = torch.cat(rows).numpy() if rows else np.zeros(0, np.int64)
    data = np.where(codes == 0, 32, codes + 96).astype(np.uint8).tobytes()
    _check_crc(data, header)
    return data


# ------------------------------------------------------------------------------ images

def read_image_file(path: Path) -> tuple[np.ndarray, str]:
    """uint8 RGB (H, W, 3) pixels of an image file and its mode (RGB or L, greyscale
    converted to R = G = B); other modes are refused (they would lose information)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode not in MODES:
                raise DataError(f"{path} is a {mode} image: only RGB and greyscale (L) images "
                                f"can be coded exactly (alpha, palettes and 16-bit values would "
                                f"be lost); convert it to RGB first")
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as err:
        raise DataError(f"cannot read image {path} ({err})") from None
    return rgb, mode


def image_patches(rgb: np.ndarray, p: int, transform: str) -> tuple[Tensor, Tensor]:
    """Patch rows (G, 3 p^2) long of uint8 RGB (H, W, 3) under ``transform``, grid
    row-major as :func:`monarchpc.data.transforms.patches`, and which values lie inside
    the image (G, 3 p^2) bool (the grid overhangs the right/bottom edge otherwise)."""
    h, w, _ = rgb.shape
    gh, gw = -(-h // p), -(-w // p)
    values = ycocg_r(rgb) if transform == "lossless" else rgb.astype(np.int16)
    pad = np.zeros((gh * p, gw * p, 3), dtype=np.int64)
    inside = np.zeros((gh * p, gw * p, 3), dtype=bool)
    pad[:h, :w], inside[:h, :w] = values, True

    def cut(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(
            a.reshape(gh, p, gw, p, 3).transpose(0, 2, 1, 3, 4).reshape(gh * gw, 3 * p * p)))

    return cut(pad), cut(inside)


def patches_image(rows: Tensor, height: int, width: int, p: int, transform: str) -> np.ndarray:
    """Inverse of :func:`image_patches`: uint8 RGB (height, width, 3)."""
    gh, gw = -(-height // p), -(-width // p)
    a = rows.numpy().reshape(gh, gw, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(gh * p, gw * p, 3)
    a = a[:height, :width]
    return ycocg_r_inverse(a) if transform == "lossless" else a.astype(np.uint8)


def _image_chunks(tree: HCLTTree, present: Tensor, batch: int) -> Iterator[HCLTSteps]:
    for i in range(0, len(present), batch):
        yield HCLTSteps(tree, present[i:i + batch])


def _pixels_crc(images: list[np.ndarray]) -> int:
    crc = 0
    for rgb in images:
        crc = zlib.crc32(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes(), crc)
    return crc


def compress_images(hclt: HCLT, run: bytes, patch: int, transform: str,
                    images: list[tuple[str, np.ndarray, str]], lanes: int = 0,
                    batch: int = 512, scale_bits: int = rans.SCALE_BITS, threads: int = 1
                    ) -> tuple[bytes, dict[str, Any]]:
    """The compressed file of ``images`` [(name, uint8 RGB (H, W, 3), mode)] and its
    statistics."""
    if transform not in LOSSLESS:
        raise UsageError(f"the run's colour transform {transform!r} is lossy: only runs with "
                         f"dataset.transform lossless or rgb can code pixels exactly")
    cut = [image_patches(rgb, patch, transform) for _, rgb, _ in images]
    values = torch.cat([v for v, _ in cut]) if cut else torch.zeros(0, 3 * patch * patch)
    present = torch.cat([m for _, m in cut]) if cut else values.bool()
    n_symbols = int(present.sum())
    lanes = lanes or auto_lanes(n_symbols, min(batch, max(len(values), 1)))
    tree = HCLTTree(hclt)
    in_order = values[:, hclt.order].long()  # step order
    chunks = ((HCLTSteps(tree, present[i:i + batch]), in_order[i:i + batch])
              for i in range(0, len(values), batch))
    with _threads(threads), torch.no_grad():
        states, words, nll = encode_steps(chunks, lanes, scale_bits)
    entries = [ImageEntry(rgb.shape[1], rgb.shape[0], mode, name) for name, rgb, mode in images]
    header = Header(KIND_IMAGES, run, threads, scale_bits, fingerprint(threads),
                    _pixels_crc([rgb for _, rgb, _ in images]), batch, lanes, images=entries)
    out = pack(header, states, words)
    raw = sum(rgb.size for _, rgb, _ in images)
    return out, _stats(out, header, raw, n_symbols, nll)


def decompress_images(hclt: HCLT, patch: int, transform: str, header: Header,
                      states: np.ndarray, words: np.ndarray) -> list[np.ndarray]:
    """The uint8 RGB images (H, W, 3) of a compressed file."""
    cut = [image_patches(np.zeros((e.height, e.width, 3), np.uint8), patch, transform)[1]
           for e in header.images]
    d = 3 * patch * patch
    present = torch.cat(cut) if cut else torch.zeros(0, d, dtype=torch.bool)
    with _decoding(states, words, header) as decoder:
        decoded = [rows[:, hclt.inverse] for rows in decode_steps(  # back to variable order
            _image_chunks(HCLTTree(hclt), present, header.batch), decoder, header.lanes,
            header.scale_bits)]
    rows = torch.cat(decoded) if decoded else torch.zeros(0, d, dtype=torch.long)
    out, i = [], 0
    for e, m in zip(header.images, cut, strict=True):
        out.append(patches_image(rows[i:i + len(m)], e.height, e.width, patch, transform))
        i += len(m)
    _check_crc_value(_pixels_crc(out), header)
    return out


# ------------------------------------------------------------------------------ shared

class _threads:
    """Torch intra-op threads set to ``n`` inside the block (restored after)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.old)


@contextmanager
def _decoding(states: np.ndarray, words: np.ndarray, header: Header
              ) -> Iterator[rans.Decoder]:
    """A decoder of the stream, run with the header's thread count and no gradients; it
    must end exactly at the stream's end (a StreamError becomes one line)."""
    try:
        with _threads(header.threads), torch.no_grad():
            decoder = rans.Decoder(states, words, header.scale_bits)
            yield decoder
        decoder.finish()
    except rans.StreamError as err:
        raise CompressedFileError(str(err)) from None


def _check_crc(data: bytes, header: Header) -> None:
    _check_crc_value(zlib.crc32(data), header)


def _check_crc_value(crc: int, header: Header) -> None:
    if crc != header.crc:
        raise CompressedFileError("the decoded content fails its CRC-32 check: the file is "
                                  "corrupt or the conditionals differed from the encoder's")


def _stats(out: bytes, header: Header, raw_bytes: int, symbols: int, nll: float
           ) -> dict[str, Any]:
    header_bytes = len(header.pack())
    return {"bytes": len(out), "header_bytes": header_bytes, "state_bytes": 8 * header.lanes,
            "raw_bytes": raw_bytes, "symbols": symbols, "nll_bits": nll, "lanes": header.lanes,
            "bits_per_symbol": 8 * len(out) / symbols if symbols else 0.0,
            "nll_bits_per_symbol": nll / symbols if symbols else 0.0}


def load_model(run_dir: Path) -> tuple[nn.Module, Any]:
    """The run's circuit in float64 on the CPU without gradients (every parameter
    renormalized along its last dimension in float64), and its config; refuses runs whose
    data compression does not support."""
    config = load_config(run_dir)
    kind = data_kind(config)
    if kind not in ("chars", "image"):
        raise UsageError(f"run {run_dir} models {config.dataset.name} data ({kind}): "
                         f"compression supports character runs (text8-style text) and image "
                         f"runs")
    if kind == "image" and image_format(config).transform not in LOSSLESS:
        raise UsageError(f"run {run_dir} uses the lossy colour transform: only runs with "
                         f"dataset.transform lossless or rgb can code pixels exactly")
    model, config = load_run(run_dir, "cpu")
    wanted = HCLT if kind == "image" else HMM  # the conditionals it has (conditionals.py)
    if not isinstance(model, wanted):
        raise UsageError(f"run {run_dir}: compression codes {kind} data with "
                         f"{wanted.__name__} runs, not {type(model).__name__}")
    model = model.double().requires_grad_(False)
    with torch.no_grad():  # float32 rows sum to 1 +- 1e-7: exactly normalized in float64
        for p in model.parameters():
            p /= p.sum(-1, keepdim=True)
    return model, config


def check_header(header: Header, run: bytes, force: bool) -> None:
    """Refuse a file of another run, or coded where the conditionals may differ."""
    if header.run != run:
        raise CompressedFileError(f"the file was compressed with another run (checkpoint "
                                  f"{header.run.hex()[:12]}, this run_dir's is "
                                  f"{run.hex()[:12]}): decompress it with the run that "
                                  f"compressed it")
    if header.fingerprint != fingerprint(header.threads) and not force:
        raise CompressedFileError(f"the file was compressed where the float64 conditionals "
                                  f"may differ from this machine's ({numerics(header.threads)}): "
                                  f"use the same torch, CPU instruction set and numpy, or "
                                  f"force=true to try (the CRC check then tells)")


# --------------------------------------------------------------------------- commands

COMPRESS_OPTIONS = {
    "run_dir": (None, "the run directory (with its checkpoint.pt)"),
    "file": (None, "text: a text8-normalized file; images: an image file or a folder of them"),
    "out": ("", "the compressed file (default <file>.mpc)"),
    "normalize": (False, "text: code the text8 normalization of the file (decompression "
                         "returns the normalized text)"),
    "row": (DEFAULT_ROW, "text: characters per independently coded row"),
    "lanes": (0, "rANS lanes (0: one per 16384 symbols, at most 64)"),
    "batch": (0, "rows (text) or patches (images) per model pass (0: 1024 / 512)"),
    "threads": (1, "torch threads (recorded: decompression uses the same number)"),
    "device": ("cpu", "cpu only (see the module docstring: Exactness)"),
    "json": (False, "print one JSON object instead of a sentence"),
}

DECOMPRESS_OPTIONS = {
    "run_dir": (None, "the run directory that compressed the file"),
    "file": (None, "a file written by monarchpc.compress"),
    "out": ("", "text: the output file; one image: a PNG; several: a folder "
                "(default: file without .mpc, images as .png)"),
    "force": (False, "decode even where the recorded numerics differ from this machine's"),
    "device": ("cpu", "cpu only (see the module docstring: Exactness)"),
    "json": (False, "print one JSON object instead of a sentence"),
}


def image_files(path: Path) -> list[Path]:
    from monarchpc.data.images import is_image

    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_image(p.name))
        if not files:
            raise UsageError(f"no image files in {path}")
        return files
    return [path]


def compress_file(run_dir: Path, file: Path, out: Path | None = None, normalize: bool = False,
                  row: int = DEFAULT_ROW, lanes: int = 0, batch: int = 0, threads: int = 1
                  ) -> dict[str, Any]:
    """Compress ``file`` with the run; writes ``out`` and returns its statistics."""
    if not file.exists():
        raise RunDirError(f"file {file} not found")
    if row < 1 or lanes < 0 or batch < 0 or threads < 1 or threads > 255:
        raise UsageError("row, threads (<= 255) must be >= 1 and lanes, batch >= 0")
    run = run_id(run_dir)
    model, config = load_model(run_dir)
    out = out or _new(file.with_name(file.name + SUFFIX))
    start = time.perf_counter()
    if data_kind(config) == "image":
        fmt = image_format(config)
        files = image_files(file)
        images = [(str(f.relative_to(file)) if file.is_dir() else f.name, *read_image_file(f))
                  for f in files]
        blob, stats = compress_images(model, run, fmt.patch, fmt.transform, images, lanes,
                                      batch or DEFAULT_BATCH[KIND_IMAGES], threads=threads)
        stats["images"] = len(images)
        stats["unit"] = "dimension"
    else:
        if file.is_dir():
            raise UsageError(f"{file} is a folder: a character run compresses one text file")
        data = file.read_bytes()
        if normalize:
            text = data.decode("utf-8", errors="replace")
            data = normalize_text8(text).encode("ascii")
        blob, stats = compress_text(model, run, data, row, lanes,
                                    batch or DEFAULT_BATCH[KIND_TEXT], threads=threads)
        stats["unit"] = "character"
        stats["normalized"] = normalize
    seconds = time.perf_counter() - start
    out.write_bytes(blob)
    return {"file": str(file), "out": str(out), "seconds": seconds,
            "mb_per_s": stats["raw_bytes"] / 1e6 / seconds if seconds else 0.0, **stats}


def decompress_file(run_dir: Path, file: Path, out: Path | None = None, force: bool = False
                    ) -> dict[str, Any]:
    """Decompress ``file`` with the run; writes ``out`` and returns what was written."""
    from PIL import Image

    if not file.is_file():
        raise RunDirError(f"file {file} not found")
    data = file.read_bytes()
    header, states, words = unpack(data)
    run = run_id(run_dir)
    check_header(header, run, force)
    model, config = load_model(run_dir)
    is_image_run = data_kind(config) == "image"
    if is_image_run != (header.kind == KIND_IMAGES):
        raise CompressedFileError("the file's kind does not match the run")  # same run: corrupt
    stem = file.with_suffix("") if file.suffix == SUFFIX else file.with_name(file.name + ".out")
    start = time.perf_counter()
    if header.kind == KIND_TEXT:
        text = decompress_text(model, header, states, words)
        seconds = time.perf_counter() - start
        out = out or _new(stem)
        out.write_bytes(text)
        written, raw = [out], len(text)
    else:
        fmt = image_format(config)
        images = decompress_images(model, fmt.patch, fmt.transform, header, states, words)
        seconds = time.perf_counter() - start
        if len(images) == 1:
            out = out or _new(stem.with_suffix(".png"))
            targets = [out]
        else:
            out = out or _new(stem)
            targets = [out / Path(_safe_name(e.name)).with_suffix(".png") for e in header.images]
        for path, rgb, e in zip(targets, images, header.images, strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            im = Image.fromarray(rgb)
            (im.convert("L") if e.mode == "L" else im).save(path, format="PNG")
        written, raw = targets, sum(rgb.size for rgb in images)
    return {"file": str(file), "out": str(out), "written": len(written), "seconds": seconds,
            "raw_bytes": raw, "mb_per_s": raw / 1e6 / seconds if seconds else 0.0}


def _new(path: Path) -> Path:
    """A default output path, which must not exist yet (an explicit out= may overwrite)."""
    if path.exists():
        raise UsageError(f"{path} exists: pass out=<path> to write elsewhere (or over it)")
    return path


def _safe_name(name: str) -> str:
    """A relative path inside the output folder (no absolute parts, no ``..``)."""
    parts = [p for p in Path(name).parts if p not in ("", ".", "..", "/") and ":" not in p]
    return str(Path(*parts)) if parts else "image"


def check_device(device: str) -> None:
    if device != "cpu":
        raise UsageError(f"device={device}: compression runs on the CPU only; encoder and "
                         f"decoder must compute bit-identical float64 conditionals, which GPU "
                         f"kernels do not promise across devices, drivers and launches")


def compress_main(argv: list[str]) -> None:
    opts = parse_options(argv, COMPRESS_OPTIONS, __doc__ or "")
    check_device(opts["device"])
    stats = compress_file(Path(opts["run_dir"]), Path(opts["file"]),
                          Path(opts["out"]) if opts["out"] else None, opts["normalize"],
                          opts["row"], opts["lanes"], opts["batch"], opts["threads"])
    if opts["json"]:
        print(json.dumps(stats))
        return
    unit = stats["unit"]
    over = (stats["bits_per_symbol"] / stats["nll_bits_per_symbol"] - 1) * 100 \
        if stats["nll_bits_per_symbol"] else 0.0
    print(f"wrote {stats['out']}: {stats['symbols']:,} {unit}s -> {stats['bytes']:,} bytes, "
          f"{stats['bits_per_symbol']:.4f} bits per {unit} (model NLL "
          f"{stats['nll_bits_per_symbol']:.4f}, {over:+.2f}%), {stats['seconds']:.1f} s, "
          f"{stats['mb_per_s']:.3f} MB/s")


def decompress_main(argv: list[str]) -> None:
    opts = parse_options(argv, DECOMPRESS_OPTIONS, __doc__ or "")
    check_device(opts["device"])
    stats = decompress_file(Path(opts["run_dir"]), Path(opts["file"]),
                            Path(opts["out"]) if opts["out"] else None, opts["force"])
    if opts["json"]:
        print(json.dumps(stats))
        return
    what = f"{stats['written']} images" if stats["written"] > 1 else stats["out"]
    print(f"wrote {what}: {stats['raw_bytes']:,} bytes in {stats['seconds']:.1f} s, "
          f"{stats['mb_per_s']:.3f} MB/s")

