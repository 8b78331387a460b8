"""Image transforms: colour spaces (YCoCg-R, quantized YCoCg), box downsampling, patches.

Images are numpy arrays (N, S, S, 3) of uint8 RGB, channel last. A colour transform maps
the last axis (R, G, B) to three integer channels; :data:`CHANNEL_VOCABS` gives each
channel's number of values.

* ``lossless``: YCoCg-R (Malvar & Sullivan 2003) in integers, exactly invertible:
  Co = R - B; t = B + (Co >> 1); Cg = G - t; Y = t + (Cg >> 1)  (floor shifts).
  Y lies in [0, 255], Co and Cg in [-255, 255]; stored as Y, Co + 255, Cg + 255, so the
  channels have 256, 511 and 511 values (the reference adds 256 and uses 512 categories;
  here the data set's ``vocab_size`` is 512 as in the reference and each variable's
  exact vocabulary, 256 or 511, goes to ``Splits.vocab_sizes``).
* ``lossy``: the reference's quantized YCoCg: r, g, b = RGB / 255 in [0, 1];
  Y = (r + 2g + b) / 4 in [0, 1], Co = r - b in [-1, 1], Cg = g - (r + b) / 2 in [-1, 1];
  Y is mapped to 2Y - 1, then every channel's [-1, 1] is cut into 256 equal bins:
  bin = min(floor((v + 1) / 2 * 256), 255). Not invertible; BPD is not comparable with RGB.
* ``rgb``: no transform (256 values per channel).

Patches: an S x S image is cut into (S / p)^2 aligned p x p patches in row-major grid
order; a patch is one row of p * p * 3 variables in (row, column, channel) order, so
variable (r * p + c) * 3 + k is channel k of pixel (r, c) of the patch, and the channel
of variable v is v % 3.
"""

from __future__ import annotations

import numpy as np

CHANNEL_VOCABS: dict[str, tuple[int, int, int]] = {
    "lossless": (256, 511, 511),
    "lossy": (256, 256, 256),
    "rgb": (256, 256, 256),
}
"""Number of values of each output channel of every colour transform."""


def ycocg_r(rgb: np.ndarray) -> np.ndarray:
    """Lossless YCoCg-R of uint8 RGB (..., 3) -> int16 (..., 3): Y, Co + 255, Cg + 255."""
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    co = r - b
    t = b + (co >> 1)
    cg = g - t
    y = t + (cg >> 1)
    return np.stack([y, co + 255, cg + 255], axis=-1)


def ycocg_r_inverse(ycc: np.ndarray) -> np.ndarray:
    """Exact inverse of :func:`ycocg_r`: int (..., 3) -> uint8 RGB (..., 3)."""
    y, co, cg = (ycc[..., i].astype(np.int16) for i in range(3))
    co, cg = co - 255, cg - 255
    t = y - (cg >> 1)
    g = cg + t
    b = t - (co >> 1)
    r = b + co
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def ycocg_lossy(rgb: np.ndarray) -> np.ndarray:
    """Quantized (lossy) YCoCg of uint8 RGB (..., 3) -> uint8 bins (..., 3) in [0, 255]."""
    r, g, b = (rgb[..., i].astype(np.float64) / 255.0 for i in range(3))
    y = (r + 2.0 * g + b) / 4.0
    co = r - b
    cg = g - (r + b) / 2.0
    v = np.stack([2.0 * y - 1.0, co, cg], axis=-1)  # every channel in [-1, 1]
    return np.minimum(np.floor((v + 1.0) / 2.0 * 256.0), 255).astype(np.uint8)


def ycocg_lossy_inverse(bins: np.ndarray) -> np.ndarray:
    """RGB uint8 (..., 3) from the centres of the bins of :func:`ycocg_lossy` (approximate)."""
    v = (bins.astype(np.float64) + 0.5) / 256.0 * 2.0 - 1.0
    y, co, cg = (v[..., 0] + 1.0) / 2.0, v[..., 1], v[..., 2]
    t = y - cg / 2.0
    g = cg + t
    b = t - co / 2.0
    r = b + co
    return np.clip(np.rint(np.stack([r, g, b], axis=-1) * 255.0), 0, 255).astype(np.uint8)


def colour_transform(rgb: np.ndarray, transform: str) -> np.ndarray:
    """Apply ``transform`` (lossless | lossy | rgb) to uint8 RGB (..., 3); compact int dtype."""
    if transform == "lossless":
        return ycocg_r(rgb)
    if transform == "lossy":
        return ycocg_lossy(rgb)
    if transform == "rgb":
        return np.asarray(rgb, dtype=np.uint8)
    raise ValueError(f"unknown colour transform {transform!r}; use lossless|lossy|rgb")


def inverse_colour_transform(values: np.ndarray, transform: str) -> np.ndarray:
    """Back to uint8 RGB (exact for lossless and rgb, bin centres for lossy)."""
    if transform == "lossless":
        return ycocg_r_inverse(values)
    if transform == "lossy":
        return ycocg_lossy_inverse(values)
    return np.asarray(values, dtype=np.uint8)


def box_downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """Average factor x factor boxes of uint8 images (N, S, S, C), rounding half up."""
    if factor == 1:
        return images
    n, s, _, c = images.shape
    if s % factor:
        raise ValueError(f"image size {s} is not a multiple of the downsampling factor {factor}")
    boxes = images.reshape(n, s // factor, factor, s // factor, factor, c).astype(np.uint32)
    area = factor * factor
    return ((boxes.sum((2, 4)) + area // 2) // area).astype(np.uint8)


def patches(images: np.ndarray, p: int) -> np.ndarray:
    """Aligned p x p patches of images (N, S, S, C) -> (N, (S/p)^2, p*p*C), row-major grid."""
    n, s, _, c = images.shape
    if s % p:
        raise ValueError(f"image size {s} is not a multiple of the patch size {p}")
    g = s // p
    x = images.reshape(n, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, g * g, p * p * c)


def unpatch(rows: np.ndarray, p: int, channels: int = 3) -> np.ndarray:
    """Inverse of :func:`patches`: (N, G, p*p*C) with G = (S/p)^2 -> images (N, S, S, C)."""
    n, gg, _ = rows.shape
    g = round(gg**0.5)
    x = rows.reshape(n, g, g, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, g * p, g * p, channels)


def select_patches(images: np.ndarray, p: int, cells: np.ndarray) -> np.ndarray:
    """Patch ``cells[n]`` (row-major grid index) of every image n of (N, S, S, C): (N, p*p*C)."""
    n, s, _, c = images.shape
    g = s // p
    grid = images.reshape(n, g, p, g, p, c)
    return grid[np.arange(n), cells // g, :, cells % g].reshape(n, p * p * c)
