"""Small helpers shared by the metric modules: frame validation and progress bars."""

from __future__ import annotations

import numpy as np

from ..video import Video, as_rgb_uint8


def clip_frames(frames, name: str = "frames", allow_single_image: bool = False) -> np.ndarray:
    """uint8 RGB [T, H, W, 3] from anything :func:`v2s_nb.video.as_rgb_uint8` accepts (or a ``Video``)."""
    if isinstance(frames, Video):
        return frames.frames
    return as_rgb_uint8(frames, allow_single_image=allow_single_image, name=name)


def one_image(image, name: str = "reference") -> np.ndarray:
    """uint8 RGB [H, W, 3] for a single image (a one-frame clip is accepted too)."""
    arr = clip_frames(image, name=name, allow_single_image=True)
    if len(arr) != 1:
        raise ValueError(f"{name}: expected one image [H, W, 3], got a clip of {len(arr)} frames.")
    return arr[0]


def progress_bar(total: int | None, desc: str, enabled: bool, unit: str = "frame"):
    """:func:`v2s_nb.progress.progress_bar` with the metrics' unit (frames)."""
    from ..progress import progress_bar as bar

    return bar(total, desc, enabled=enabled, unit=unit)
