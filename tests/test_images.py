"""v2s_nb.images: uint8 and float pictures of every documented form give the same grids and files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from v2s_nb.images import image_grid, save_image
from v2s_nb.video import FrameFormatError


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
    gray = np.random.default_rng(2).integers(0, 256, (5, 8, 8), dtype=np.uint8)  # [N, H, W]: raised for uint8
    grid = image_grid(gray, cols=2)  # (N = 3 or 4 is ambiguous with one channel-first picture: refused)
    assert grid.shape == (28, 18, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid, image_grid(gray / 255.0, cols=2))
    np.testing.assert_array_equal(grid[:8, 10:, 1], gray[1])


def test_to_uint8_refuses_pictures_and_warns_on_all_positive_values():
    # uint8 [H, W, 3] came out [H, 3, W] in 128..255; a float picture in [0, 1] came out washed out, silently
    from v2s_nb.images import ImageRangeWarning, to_uint8  # here: a name old code lacks

    u8 = np.random.default_rng(3).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    for x in (u8, u8[None], torch.from_numpy(u8).permute(2, 0, 1)):  # integer: pictures already
        with pytest.raises(FrameFormatError, match=r"dtype uint8.*as_rgb_uint8"):
            to_uint8(x)
    gen = torch.from_numpy(u8).permute(2, 0, 1).float() / 127.5 - 1
    hwc = gen.permute(1, 2, 0)
    for x, fix in ((hwc, r"permute\(2, 0, 1\)"), (hwc[None], r"permute\(0, 3, 1, 2\)")):
        with pytest.raises(FrameFormatError, match=rf"looks channel-last.*{fix}.*as_rgb_uint8"):
            to_uint8(x)
    with pytest.raises(FrameFormatError, match="NaN"):
        to_uint8(torch.full((1, 3, 4, 4), float("nan")))
    with pytest.warns(ImageRangeWarning, match=r"all values here are >= 0.*as_rgb_uint8\(x\.permute\(1, 2, 0\)"):
        to_uint8((gen + 1) / 2)  # a picture in [0, 1]
    for x in ((gen + 1) * 127.5, gen * 127.5):  # float pixel values 0..255 (also below 0): all came out white
        with pytest.raises(FrameFormatError, match=r"pixel values 0\.\.255 in a float tensor"):
            to_uint8(x)
    assert to_uint8(gen * 4, range_check=False).max() == 255  # the package's own renders: not guessed about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = to_uint8(gen[None])
    assert out.shape == (1, 16, 24, 3) and np.abs(out[0].astype(int) - u8).max() <= 1


def test_save_image_refuses_a_channel_first_picture_and_a_folder(tmp_path):
    # [3, H, W] was saved as a grey picture of its red channel; a folder failed naming a hidden temporary
    rgb = np.random.default_rng(4).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    with pytest.raises(FrameFormatError, match=r"ambiguous.*transpose\(1, 2, 0\)"):
        save_image(tmp_path / "chw.png", rgb.transpose(2, 0, 1))
    with pytest.raises(FrameFormatError, match=r"one picture \[H, W, 3\] goes here, got 5 frames.*image_grid"):
        save_image(tmp_path / "clip.png", np.stack([rgb] * 5))  # only the first frame was saved
    save_image(tmp_path / "one.png", rgb[None])  # a one-frame clip is one picture
    (tmp_path / "one.png").unlink()
    (tmp_path / "demo").mkdir()
    with pytest.raises(IsADirectoryError, match=r"demo' is a folder; give a file name such as .*demo/output\.png"):
        save_image(tmp_path / "demo", rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"] and not any((tmp_path / "demo").iterdir())


def test_image_grid_checks_cols_and_pad():
    # cols=-1 failed with numpy's "negative dimensions"; pad=-5 overlapped the tiles silently
    pics = np.zeros((5, 8, 8, 3), np.uint8)
    for cols in (-1, 0, 1.5, True):
        with pytest.raises(ValueError, match=r"cols must be a whole number >= 1"):
            image_grid(pics, cols=cols)
    for pad in (-5, 0.5):
        with pytest.raises(ValueError, match=r"pad must be a whole number of pixels >= 0"):
            image_grid(pics, pad=pad)
    for level in (300, -1, 0.5):  # 300 raised numpy's OverflowError
        with pytest.raises(ValueError, match=r"pad_value must be a grey level 0\.\.255"):
            image_grid(pics, pad_value=level)
    with pytest.raises(FrameFormatError, match="different sizes"):
        image_grid([pics[0], pics[1, :4]])
    assert image_grid(pics, cols=np.int64(5), pad=0).shape == (8, 40, 3)
    assert image_grid(pics, cols=9).shape == (8, 9 * 10 - 2, 3)


def _icc_rgb_profile(red, green, blue, gamma: float = 2.2) -> bytes:
    """A minimal ICC v2 matrix / curve RGB display profile (D50 colorants), built here: none ships with the tests."""
    import struct

    def s15(*v):
        return b"".join(struct.pack(">i", round(x * 65536)) for x in v)

    tags = [(b"desc", b"desc" + bytes(4) + struct.pack(">I", 5) + b"test\0" + bytes(8 + 3 + 67)),
            (b"cprt", b"text" + bytes(4) + b"none\0"), (b"wtpt", b"XYZ " + bytes(4) + s15(0.9642, 1.0, 0.8249)),
            *[(c + b"XYZ", b"XYZ " + bytes(4) + s15(*v)) for c, v in ((b"r", red), (b"g", green), (b"b", blue))],
            *[(c + b"TRC", b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256))) for c in (b"r", b"g", b"b")]]
    table, data, start = b"", b"", 128 + 4 + 12 * len(tags)
    for sig, body in tags:
        body += bytes(-len(body) % 4)
        table, data = table + sig + struct.pack(">II", start + len(data), len(body)), data + body
    size = start + len(data)
    header = (struct.pack(">I4xI", size, 0x02100000) + b"mntrRGB XYZ " + bytes(12) + b"acsp" + bytes(28)
              + s15(0.9642, 1.0, 0.8249) + bytes(48))
    return header + struct.pack(">I", len(tags)) + table + data


def test_photos_with_a_colour_profile_are_read_in_srgb(tmp_path):
    """A Display P3 photo (every iPhone photo) was read raw, as if sRGB: up to 40 levels off what a viewer shows."""
    import io

    from PIL import ImageCms

    from v2s_nb.images import read_image

    p3 = _icc_rgb_profile((0.5151, 0.2412, -0.0011), (0.2920, 0.6922, 0.0419), (0.1571, 0.0666, 0.7841))
    srgb = ImageCms.createProfile("sRGB")
    rgb = np.random.default_rng(5).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((16, 24), 255, np.uint8)])
    rgba[:, :8, 3] = 0
    for name, pic in (("p3.png", rgb), ("p3.jpg", rgb), ("p3_alpha.png", rgba)):
        Image.fromarray(pic).save(tmp_path / name, icc_profile=p3, **({"quality": 95} if name.endswith("jpg") else {}))
        with Image.open(tmp_path / name) as im:
            raw = np.asarray(im.convert("RGB"))
            want = np.asarray(ImageCms.profileToProfile(im.convert("RGB"), ImageCms.ImageCmsProfile(io.BytesIO(p3)),
                                                        srgb, outputMode="RGB"))
        got = read_image(tmp_path / name)
        assert np.abs(raw.astype(int) - want).max() > 20  # the profile matters
        np.testing.assert_array_equal(got[:, 8:], want[:, 8:])
        if pic is rgba:
            assert (got[:, :8] == 255).all()  # transparent: the background, still
    broken = Image.fromarray(rgb)
    broken.save(tmp_path / "broken.png", icc_profile=b"not a profile")
    np.testing.assert_array_equal(read_image(tmp_path / "broken.png"), rgb)  # read as it stores
