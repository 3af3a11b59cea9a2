"""v2s_nb.images: uint8 and float pictures of every documented form give the same grids and files."""

from __future__ import annotations

import numpy as np
from PIL import Image

from v2s_nb.images import image_grid, save_image


def test_save_one_channel_picture(tmp_path):
    g = np.random.default_rng(0).random((32, 48, 1))  # [H, W, 1] float: was read as 32 frames, one row written
    u8 = np.rint(g * 255).astype(np.uint8)
    for name, pic in (("float.png", g), ("u8.png", u8), ("u16.png", u8.astype(np.uint16))):
        with Image.open(save_image(tmp_path / name, pic)) as im:
            assert im.size == (48, 32)
            np.testing.assert_array_equal(np.asarray(im.convert("L")), u8[..., 0])


def test_uint8_and_float_take_the_same_path(tmp_path):
    rgba = np.random.default_rng(1).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    for pic in (rgba, rgba / 255.0):  # uint8 RGBA to JPEG raised "cannot write mode RGBA as JPEG"
        with Image.open(save_image(tmp_path / "x.jpg", pic)) as im:
            assert im.mode == "RGB" and im.size == (8, 8)
    gray = np.random.default_rng(2).integers(0, 256, (4, 8, 8), dtype=np.uint8)  # [N, H, W]: raised for uint8
    grid = image_grid(gray, cols=2)
    assert grid.shape == (18, 18, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid, image_grid(gray / 255.0, cols=2))
    np.testing.assert_array_equal(grid[:8, 10:, 1], gray[1])

