"""Converting generator output to pictures: uint8 arrays, grids, PNG files."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path
from .errors import V2SError, V2SWarning
from .video import FrameFormatError, _to_numpy, as_rgb_uint8

_PICTURES = "for pictures use v2s_nb.video.as_rgb_uint8(x, allow_single_image=True) (uint8 RGB [T, H, W, 3])"


class ImageRangeWarning(V2SWarning):
    """:func:`to_uint8` got values that are all >= 0: likely pictures in [0, 1], not generator images in [-1, 1]."""


_PIXEL_SCALE_ABOVE = 8.0  # generator output overshoots [-1, 1] a little; past this it is 0..255 pixel values


def to_uint8(img, range_check: bool = True) -> np.ndarray:
    """Generator images [N, C, H, W] (or [C, H, W]) in about [-1, 1] -> uint8 [N, H, W, C] (or [H, W, C]).

    Refused (:class:`v2s_nb.video.FrameFormatError`): integer input and channel-last shapes (pictures already:
    :func:`v2s_nb.video.as_rgb_uint8` converts those), NaN or infinite values. Values that are all >= 0 give an
    :class:`ImageRangeWarning`: pictures in [0, 1] would come out washed out (0 -> 128); values above 8 (float
    pixel values 0..255, which would all come out white) are refused. ``range_check=False``
    skips that guess, for callers that hold generator output (the package's own renders: a bright frame is no
    mistake there, and a user could not act on the warning).
    """
    t = torch.as_tensor(img).detach()
    shape = tuple(t.shape)
    if not t.is_floating_point():
        raise FrameFormatError(f"to_uint8 converts generator images (float in [-1, 1], [N, C, H, W]); got dtype "
                               f"{str(t.dtype).replace('torch.', '')}: {_PICTURES}.")
    t = t.float().cpu()
    single = t.ndim == 3
    if single:
        t = t[None]
    if t.ndim != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {tuple(t.shape)}")
    if t.shape[-1] in (3, 4) and t.shape[1] not in (1, 3, 4):
        perm = "x.permute(2, 0, 1)" if single else "x.permute(0, 3, 1, 2)"
        raise FrameFormatError(f"to_uint8 wants channel-first generator images [N, C, H, W]; shape "
                               f"{shape} looks channel-last: for generator output in [-1, 1] pass "
                               f"{perm}; {_PICTURES}.")
    if t.numel():
        lo, hi = (float(v) for v in torch.aminmax(t))  # NaN in, NaN out
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise FrameFormatError("to_uint8: the images contain NaN or infinity (a diverged inversion or broken "
                                   "generator?); they have no pixel values to convert.")
        if hi > _PIXEL_SCALE_ABOVE and range_check:
            raise FrameFormatError(f"to_uint8 maps generator images in [-1, 1] to 0..255, but these reach {hi:.4g} "
                                   f"(range [{lo:.4g}, {hi:.4g}]): pixel values 0..255 in a float tensor? They would "
                                   "all come out white. For pictures use v2s_nb.video.as_rgb_uint8 on uint8 "
                                   "channel-last frames (x.round().clamp(0, 255).to(torch.uint8)); for generator "
                                   "output, (x / 127.5 - 1) if it was scaled to 0..255.")
        if lo >= 0 and range_check:
            last = "x.permute(1, 2, 0)" if single else "x.permute(0, 2, 3, 1)"
            warnings.warn(f"to_uint8 maps generator images in [-1, 1] to 0..255, but all values here are >= 0 "
                          f"(range [{lo:.3g}, {hi:.3g}]): pictures in [0, 1] come out washed out; for those pass "
                          f"v2s_nb.video.as_rgb_uint8({last}, allow_single_image=True). Generator images that "
                          "really are all bright are fine: ignore ImageRangeWarning.", ImageRangeWarning, stacklevel=2)
    out = ((t.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return out[0] if single else out


def _picture(images, single: bool) -> np.ndarray:
    """Pictures of any dtype converted by :func:`v2s_nb.video.as_rgb_uint8` to uint8 RGB, [H, W, 3] (``single``)
    or [N, H, W, 3]: grey replicated, alpha dropped, float in [0, 1] scaled (generator images are refused there
    with the fix, :func:`to_uint8`). uint8 takes the same path, so it gives the same result as float."""
    name = "image" if single else "images"
    arr = _to_numpy(images, name)  # paths and ragged lists are refused there with the fix
    if single and arr.ndim == 3 and arr.shape[-1] == 1:  # one grey picture [H, W, 1], not a clip of H frames
        arr = arr[..., 0]
    out = as_rgb_uint8(arr, allow_single_image=single, name=name)
    if single and len(out) != 1:  # a clip given where one picture goes: all but its first frame were dropped
        raise FrameFormatError(f"{name}: one picture [H, W, 3] goes here, got {len(out)} frames "
                               f"{tuple(arr.shape)}: pick one (x[0]), or tile them with image_grid(x) first.")
    return out[0] if single else out


def image_grid(images: np.ndarray, cols: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile pictures [N, H, W, C] (C = 1, 3 or 4) or [N, H, W] (uint8, or float in [0, 1]) into one uint8 RGB
    [rows*H + pads, cols*W + pads, 3] picture (rows filled left to right; ``pad`` pixels of ``pad_value``
    between them; alpha dropped)."""
    if cols is not None and (isinstance(cols, bool) or not isinstance(cols, (int, np.integer)) or cols < 1):
        raise ValueError(f"cols must be a whole number >= 1 (or None: about a square grid), got {cols!r}.")
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be a whole number of pixels >= 0, got {pad!r}.")
    if isinstance(pad_value, bool) or not isinstance(pad_value, (int, np.integer)) or not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must be a grey level 0..255, got {pad_value!r}.")
    images = _picture(images, single=False)
    if images.ndim != 4:
        raise ValueError(f"expected [N, H, W, C] images, got shape {images.shape}")
    n, h, w, c = images.shape
    cols = int(cols) if cols is not None else int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), pad_value, dtype=images.dtype)
    for i, im in enumerate(images):
        r, k = divmod(i, cols)
        grid[r * (h + pad): r * (h + pad) + h, k * (w + pad): k * (w + pad) + w] = im
    return grid


def save_image(path, image: np.ndarray) -> Path:
    """Write a picture [H, W, C] (C = 1, 3 or 4) or [H, W] (uint8, or float in [0, 1]) as an RGB PNG / JPEG
    (by extension; alpha dropped) atomically: never a half-written file."""
    from PIL import Image

    path = Path(path)
    arr = _picture(image, single=True)
    with atomic_path(path, suffix=path.suffix or ".png") as tmp:  # PIL picks the format from the suffix
        Image.fromarray(arr).save(tmp)
    return path


class ImageReadError(V2SError, ValueError):
    """An image file that cannot be read as a picture (the message names the file and why)."""


def read_image(path, *, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Read an image file as uint8 RGB [H, W, 3], the way a viewer shows it.

    * EXIF orientation is applied (phone photos stored sideways come out upright);
    * CMYK (also Adobe's inverted CMYK JPEGs) and YCbCr / LAB are converted to RGB by Pillow; CMYK and RGB(A)
      pictures with an embedded ICC profile (a phone's Display P3, a camera's Adobe RGB) are converted from it to
      sRGB, as a colour-managed viewer shows them (their values read raw look washed out);
    * 16-bit and 32-bit grayscale are scaled to 0..255 (not clipped), float images in [0, 1] or [0, 255] too;
    * palette, grayscale + alpha and RGBA images are composited over ``background`` (alpha is not dropped
      raw: transparent pixels would otherwise show whatever colour they store).

    Raises :class:`ImageReadError` (one line) for a missing-content, truncated or non-image file; a missing
    file raises ``FileNotFoundError``.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path} is an empty file (0 bytes), not an image; give a PNG or JPEG photo")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            img = _to_rgb(im, background)
    except UnidentifiedImageError:
        raise ImageReadError(f"{path} is not an image Pillow can read (wrong extension or not a picture); "
                             "give a PNG or JPEG photo") from None
    except Image.DecompressionBombError as e:  # a subclass of neither: it was reported as a bug of v2s_nb
        size = re.search(r"\((\d+) pixels\)", str(e))
        mp = f"{int(size.group(1)) / 1e6:.3g} MP" if size else "too many pixels"
        raise ImageReadError(f"{path} is too large to read safely ({mp}; Pillow's limit is "
                             f"{2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP): downscale it first, a face needs a few "
                             "megapixels at most") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data
        raise ImageReadError(f"{path} could not be decoded ({str(e).splitlines()[0][:120] or type(e).__name__}): "
                             "truncated or corrupt image") from None
    return np.ascontiguousarray(img)


def _to_rgb(im, background) -> np.ndarray:
    from PIL import Image

    mode = im.mode
    if mode in ("CMYK", "RGB", "RGBA") and im.info.get("icc_profile"):  # e.g. Display P3 (phones), Adobe RGB
        try:
            import io

            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
            im = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"),
                                           outputMode="RGBA" if mode == "RGBA" else "RGB")
            mode = im.mode
        except Exception:  # a broken profile: fall back to Pillow's plain conversion
            pass
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        if mode == "F":
            hi = 1.0 if a.size and np.nanmax(a) <= 1.0 else 255.0
        elif mode == "I" and a.size and a.max() <= 255 and a.min() >= 0:
            hi = 255.0
        elif mode == "I" and a.size and a.max() > 65535:
            hi = float(2 ** 32 - 1)
        else:
            hi = 65535.0
        g = np.rint(np.clip(np.nan_to_num(a) / hi, 0, 1) * 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1)
    if mode == "P":
        im = im.convert("RGBA")
    elif mode in ("LA", "La", "PA"):
        im = im.convert("RGBA")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        base = Image.new("RGBA", im.size, tuple(background) + (255,))
        return np.asarray(Image.alpha_composite(base, im).convert("RGB"))
    return np.asarray(im.convert("RGB"))
