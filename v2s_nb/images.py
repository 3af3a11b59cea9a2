"""Converting generator output to pictures: uint8 arrays, grids, PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path


def to_uint8(img) -> np.ndarray:
    """Generator images [N, C, H, W] (or [C, H, W]) in about [-1, 1] -> uint8 [N, H, W, C] (or [H, W, C])."""
    t = torch.as_tensor(img).detach().float().cpu()
    single = t.ndim == 3
    if single:
        t = t[None]
    if t.ndim != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {tuple(t.shape)}")
    out = ((t.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return out[0] if single else out


def image_grid(images: np.ndarray, cols: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile uint8 images [N, H, W, C] into one [rows*H, cols*W, C] picture (rows filled left to right)."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected [N, H, W, C] images, got shape {images.shape}")
    n, h, w, c = images.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), pad_value, dtype=images.dtype)
    for i, im in enumerate(images):
        r, k = divmod(i, cols)
        grid[r * (h + pad): r * (h + pad) + h, k * (w + pad): k * (w + pad) + w] = im
    return grid


def save_image(path, image: np.ndarray) -> Path:
    """Write a uint8 [H, W, C] image (PNG / JPEG by extension) atomically: never a half-written file."""
    from PIL import Image

    path = Path(path)
    arr = np.asarray(image)
    with atomic_path(path, suffix=path.suffix or ".png") as tmp:  # PIL picks the format from the suffix
        Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr).save(tmp)
    return path
