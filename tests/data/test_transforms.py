"""Colour transforms, box downsampling and patches (monarchpc.data.transforms)."""

import numpy as np
import pytest

from monarchpc.data.transforms import (
    CHANNEL_VOCABS,
    box_downsample,
    colour_transform,
    inverse_colour_transform,
    patches,
    select_patches,
    unpatch,
    ycocg_lossy,
    ycocg_lossy_inverse,
    ycocg_r,
    ycocg_r_inverse,
)


@pytest.fixture(scope="module")
def all_colours() -> np.ndarray:
    """Every 24-bit RGB colour once: uint8 (2^24, 3)."""
    c = np.arange(2**24, dtype=np.uint32)
    return np.stack([c >> 16, (c >> 8) & 255, c & 255], axis=-1).astype(np.uint8)


def test_ycocg_r_inverts_exactly_on_all_colours(all_colours):
    ycc = ycocg_r(all_colours)
    assert ycc.dtype == np.int16
    np.testing.assert_array_equal(ycocg_r_inverse(ycc), all_colours)
    # the stored ranges: Y in [0, 255], Co + 255 and Cg + 255 in [0, 510], every value used
    for k, vocab in enumerate(CHANNEL_VOCABS["lossless"]):
        assert ycc[:, k].min() == 0 and ycc[:, k].max() == vocab - 1
        assert (np.bincount(ycc[:, k]) > 0).all()


def test_ycocg_r_integer_formula():
    # Co = R - B; t = B + (Co >> 1); Cg = G - t; Y = t + (Cg >> 1), floor shifts
    rgb = np.array([[255, 0, 0], [0, 0, 255], [10, 200, 31], [0, 0, 0]], dtype=np.uint8)
    expected = []
    for r, g, b in rgb.astype(int):
        co = r - b
        t = b + (co >> 1)
        cg = g - t
        expected.append([t + (cg >> 1), co + 255, cg + 255])
    np.testing.assert_array_equal(ycocg_r(rgb), expected)
    # red: Co = 255, t = 127, Cg = -127, Y = 127 + floor(-127 / 2) = 63
    assert ycocg_r(rgb[:1]).tolist() == [[63, 510, 128]]


def test_lossy_ycocg_ranges_and_bins(all_colours):
    corners = np.array([[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)])
    sample = np.random.default_rng(0).integers(0, 2**24, size=2**20)
    colours = np.concatenate([all_colours[sample], corners.astype(np.uint8)])
    bins = ycocg_lossy(colours)
    assert bins.dtype == np.uint8
    for k in range(3):  # each channel's [-1, 1] range is cut into 256 bins, all reached
        assert (np.bincount(bins[:, k], minlength=256) > 0).sum() == 256
    extremes = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255], [0, 255, 0],
                         [255, 0, 255], [128, 128, 128]], dtype=np.uint8)
    y, co, cg = ycocg_lossy(extremes).T.tolist()
    assert y[:2] == [0, 255]  # Y = (r + 2g + b) / 4 in [0, 1], mapped to [-1, 1]
    assert co[2:4] == [255, 0]  # Co = r - b in [-1, 1]
    assert cg[4:6] == [255, 0]  # Cg = g - (r + b) / 2 in [-1, 1]
    assert co[6] == cg[6] == 128  # grey: Co = Cg = 0 is the bin starting at 0
    # bin centres bring RGB back within the quantization error of the 2/256-wide bins
    err = np.abs(ycocg_lossy_inverse(bins).astype(int) - colours.astype(int))
    assert err.max() <= 1


def test_colour_transform_dispatch():
    rgb = np.random.default_rng(0).integers(0, 256, size=(4, 5, 5, 3), dtype=np.uint8)
    for name in ("lossless", "rgb"):
        np.testing.assert_array_equal(
            inverse_colour_transform(colour_transform(rgb, name), name), rgb)
    with pytest.raises(ValueError, match=r"use lossless\|lossy\|rgb"):
        colour_transform(rgb, "hsv")


def test_box_downsample_rounds_means():
    img = np.array([[1, 2, 10, 10], [3, 4, 10, 11], [0, 0, 255, 255], [0, 1, 255, 254]],
                   dtype=np.uint8)[None, :, :, None]
    out = box_downsample(img, 2)[0, :, :, 0]
    # means 2.5, 10.25, 0.25, 254.75 rounded half up
    np.testing.assert_array_equal(out, [[3, 10], [0, 255]])


def test_patches_tile_the_image_exactly():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    p = 8
    rows = patches(images, p)
    assert rows.shape == (3, 16, p * p * 3)
    np.testing.assert_array_equal(unpatch(rows, p), images)
    # patch k of the row-major grid is image[r*p:(r+1)*p, c*p:(c+1)*p] in (row, col, channel)
    k = 6  # grid row 1, column 2
    np.testing.assert_array_equal(rows[1, k], images[1, 8:16, 16:24].reshape(-1))
    assert rows[1, k, 3 * (2 * p + 5) + 1] == images[1, 8 + 2, 16 + 5, 1]
    cells = np.array([0, 15, 6])
    np.testing.assert_array_equal(select_patches(images, p, cells), rows[np.arange(3), cells])
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patches(images, 5)
