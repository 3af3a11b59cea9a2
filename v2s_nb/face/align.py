"""FFHQ face alignment (the recipe NVIDIA used to build the FFHQ data set), at any output size.

From the 68 landmarks (pixels, x right, y down):

    eye_left  = mean(points 36-41)         eye_right = mean(points 42-47)
    eye_avg   = (eye_left + eye_right) / 2, eye_to_eye = eye_right - eye_left
    mouth_avg = (point 48 + point 54) / 2,  eye_to_mouth = mouth_avg - eye_avg
    x  = eye_to_eye - rot90(eye_to_mouth)           rot90(a, b) = (-b, a)
    x /= |x|;  x *= max(2.0 |eye_to_eye|, 1.8 |eye_to_mouth|)
    y  = rot90(x)                                   (x turned 90 degrees towards +y, "down")
    c  = eye_avg + 0.1 eye_to_mouth
    quad = [c - x - y, c - x + y, c + x + y, c + x - y]   (top-left, bottom-left, bottom-right, top-right)

The oriented square ``quad`` (side 2|x|) is resampled to ``output_size`` x ``output_size`` pixels. Its
corners are the *outer edges* of the output's corner pixels (FFHQ passes ``quad + 0.5`` to PIL's QUAD
transform, which works in pixel-edge coordinates), so the crop centre ``c`` lands exactly on the centre of
the output. Unlike FFHQ, the area outside the frame is filled by reflection (or edge replication), without
FFHQ's blurred-border effect.

Every aligned crop comes with the 3x3 matrix ``crop_to_frame`` mapping homogeneous crop pixel coordinates
(x, y, 1) to frame pixel coordinates (both: centre of the top-left pixel at (0, 0)), and its inverse
``frame_to_crop``, so results computed on crops can be pasted back.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..video import VideoStream, as_rgb_uint8
from ..progress import progress_bar
from .landmark_detection import (EYE_LEFT, EYE_RIGHT, MOUTH_LEFT, MOUTH_RIGHT, LandmarkTrack, NoFaceError,
                                 _check_frames_size, _chunks_of)

__all__ = ["AlignedFace", "AlignedClip", "ffhq_quad", "ffhq_crop_matrix", "align_face", "align_video",
           "FFHQ_EYE_MIDPOINT"]

def ffhq_eye_midpoint(mouth_to_eye_ratio: float = 1.0) -> tuple[float, float]:
    """Where the FFHQ recipe puts the eye midpoint, as (x, y) fractions of the crop size.

    For an upright face with eye distance ``d = |eye_to_eye|`` and ``h = |eye_to_mouth|`` (perpendicular to
    the eye line), the recipe gives ``x`` along the eye line with half-side ``s = max(2 d, 1.8 h)`` and
    centres the crop at ``eye_avg + 0.1 eye_to_mouth``. The eyes therefore sit ``0.1 h`` above the centre of a
    crop of side ``2 s``: at a fraction ``0.5 - 0.05 h / s`` of the height, and exactly half way across.

    * ``h <= 10/9 d`` (eye distance dominates, the usual case): ``y = 0.5 - 0.025 h / d``;
    * ``h > 10/9 d`` (long faces): ``y = 0.5 - 0.05 / 1.8 = 0.4722``.

    ``mouth_to_eye_ratio`` is ``h / d``. With the representative ``h / d = 1`` this is (0.5, 0.475), the
    value of :data:`FFHQ_EYE_MIDPOINT`; the astronaut photo (``skimage.data.astronaut``) measures
    h / d = 0.86, i.e. y = 0.478. Over all proportions y stays within [0.472, 0.5).
    """
    r = float(mouth_to_eye_ratio)
    if not np.isfinite(r) or r < 0:
        raise ValueError(f"mouth_to_eye_ratio must be a non-negative number, got {mouth_to_eye_ratio!r}.")
    s = max(2.0, 1.8 * r)  # in units of d
    return 0.5, 0.5 - 0.05 * r / s


#: Eye midpoint of an FFHQ-aligned crop, as (x, y) fractions of the crop's width / height: (0.5, 0.475); see
#: :func:`ffhq_eye_midpoint` for the derivation. Used as e' by :func:`v2s_nb.face.canonical_track`.
FFHQ_EYE_MIDPOINT = ffhq_eye_midpoint(1.0)


def _check_points(points) -> np.ndarray:
    pts = np.asarray(points, np.float64)
    if pts.shape[-2:] != (68, 2):
        raise ValueError(f"landmarks must have shape [..., 68, 2] (dlib's 68 points, pixels), got {pts.shape}.")
    return pts


def ffhq_quad(points) -> np.ndarray:
    """The FFHQ crop square(s) from 68 landmarks [..., 68, 2] (pixels): corners [..., 4, 2] in the order
    top-left, bottom-left, bottom-right, top-right of the aligned image (see the module docstring).
    NaN landmarks give NaN corners, as do landmarks without extent (eyes and mouth within a pixel: all zeros, say),
    which no face has."""
    pts = _check_points(points)
    eye_left = pts[..., EYE_LEFT, :].mean(-2)
    eye_right = pts[..., EYE_RIGHT, :].mean(-2)
    eye_avg = 0.5 * (eye_left + eye_right)
    eye_to_eye = eye_right - eye_left
    mouth_avg = 0.5 * (pts[..., MOUTH_LEFT, :] + pts[..., MOUTH_RIGHT, :])
    eye_to_mouth = mouth_avg - eye_avg

    def rot90(v):  # quarter turn from +x towards +y (down): (a, b) -> (-b, a)
        return np.stack([-v[..., 1], v[..., 0]], -1)

    x = eye_to_eye - rot90(eye_to_mouth)
    with np.errstate(invalid="ignore", divide="ignore"):  # landmarks without extent: NaN, refused below
        x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    half = np.maximum(2.0 * np.linalg.norm(eye_to_eye, axis=-1), 1.8 * np.linalg.norm(eye_to_mouth, axis=-1))
    half = np.where(half >= 1.0, half, np.nan)  # a crop square under a pixel: no face
    x = x * half[..., None]
    y = rot90(x)
    c = eye_avg + 0.1 * eye_to_mouth
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y], -2)


def ffhq_crop_matrix(quad, output_size: int) -> np.ndarray:
    """3x3 matrix [..., 3, 3] mapping output crop pixels (x, y, 1) to frame pixels for square(s) ``quad``
    [..., 4, 2] resampled to ``output_size`` pixels (pixel centres at integers in both)."""
    q = np.asarray(quad, np.float64)
    s = _check_size(output_size)
    c = q.mean(-2)
    ex = 0.5 * (q[..., 3, :] - q[..., 0, :])  # = x (half side along the crop's x axis)
    ey = 0.5 * (q[..., 1, :] - q[..., 0, :])  # = y
    m = np.zeros(q.shape[:-2] + (3, 3))
    # crop pixel i -> edge coordinate i + 0.5 -> fraction (i + 0.5) / S -> frame c + x (2 f - 1) (+ y ...)
    m[..., :2, 0] = 2.0 * ex / s
    m[..., :2, 1] = 2.0 * ey / s
    m[..., :2, 2] = c + (ex + ey) * (1.0 / s - 1.0)
    m[..., 2, 2] = 1.0
    return m


def _check_size(output_size) -> int:
    if isinstance(output_size, bool) or not isinstance(output_size, (int, np.integer)) or output_size < 1:
        raise ValueError(f"output_size must be a positive int (pixels), got {output_size!r}.")
    return int(output_size)


_BORDERS = {"reflect": "BORDER_REFLECT_101", "edge": "BORDER_REPLICATE", "constant": "BORDER_CONSTANT"}


def _warp(image: np.ndarray, crop_to_frame: np.ndarray, size: int, border: str, antialias: bool) -> np.ndarray:
    import cv2

    m = crop_to_frame.copy()
    scale = float(np.sqrt(abs(np.linalg.det(m[:2, :2]))))  # frame pixels per crop pixel
    src = image
    if antialias and scale >= 2.0:
        # shrink the frame first with area averaging so the bilinear warp does not alias
        k = int(np.floor(scale))
        h, w = image.shape[:2]
        nw, nh = max(1, int(round(w / k))), max(1, int(round(h / k)))
        src = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        fx, fy = nw / w, nh / h
        shrink = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1.0]])
        m = shrink @ m
    return cv2.warpAffine(src, m[:2], (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=getattr(cv2, _BORDERS[border]))


@dataclasses.dataclass(frozen=True, eq=False)
class AlignedFace:
    """One FFHQ-aligned crop: ``image`` uint8 [S, S, 3]; ``crop_to_frame`` / ``frame_to_crop`` float64 [3, 3]
    (homogeneous pixel coordinates, see the module docstring); ``quad`` float64 [4, 2], the crop square's
    corners in the frame (pixels)."""

    image: np.ndarray
    crop_to_frame: np.ndarray
    frame_to_crop: np.ndarray
    quad: np.ndarray

    def to_crop(self, xy) -> np.ndarray:
        """Frame pixel coordinates [..., 2] -> crop pixel coordinates [..., 2]."""
        return _apply(self.frame_to_crop, xy)

    def to_frame(self, xy) -> np.ndarray:
        """Crop pixel coordinates [..., 2] -> frame pixel coordinates [..., 2]."""
        return _apply(self.crop_to_frame, xy)


def _apply(m: np.ndarray, xy) -> np.ndarray:
    xy = np.asarray(xy, np.float64)
    return xy @ m[:2, :2].T + m[:2, 2]


def _check_border(border: str) -> None:
    if border not in _BORDERS:
        raise ValueError(f"border must be one of {tuple(_BORDERS)}, got {border!r}.")


def align_face(image, points, output_size: int = 1024, *, border: str = "reflect",
               antialias: bool = True) -> AlignedFace:
    """FFHQ-align one face: ``image`` [H, W, 3] (any form :func:`v2s_nb.video.as_rgb_uint8` accepts),
    ``points`` its 68 landmarks [68, 2] in pixels (or a one-frame :class:`LandmarkTrack`, whose frame size must
    be the image's). Returns an :class:`AlignedFace` with an
    ``output_size`` x ``output_size`` uint8 crop.

    ``border``: how the area outside the frame is filled: 'reflect' (mirror, default), 'edge' (repeat the
    border pixels) or 'constant' (black). ``antialias``: when the crop shrinks the face by 2x or more, the
    frame is first area-averaged down by the integer part of the factor.
    """
    img = as_rgb_uint8(image, allow_single_image=True, name="image")
    if len(img) != 1:
        raise ValueError(f"align_face takes one image [H, W, 3]; for a clip use align_video (got {len(img)} frames).")
    if isinstance(points, LandmarkTrack):
        if len(points) != 1:
            raise ValueError(f"align_face takes one face: got a LandmarkTrack of {len(points)} frames; pass "
                             "track[i] with its frame, or use align_video for the clip.")
        _check_frames_size(points, img, "align_face: image")
        points = points.points[0]
    pts = _check_points(points)
    if pts.shape != (68, 2):
        raise ValueError(f"align_face takes the landmarks of one face [68, 2], got {pts.shape}.")
    if not np.isfinite(pts[36:68]).all():
        raise NoFaceError("the landmarks contain NaN (no face in this image); align a frame where a face was found.")
    size = _check_size(output_size)
    _check_border(border)
    quad = ffhq_quad(pts)
    if not np.isfinite(quad).all():
        across = np.ptp(pts, axis=0).round(2).tolist()
        raise NoFaceError(f"the landmarks span no face (eyes and mouth within a pixel of each other: {across} px "
                          "across); pass the 68 points found in this image.")
    m = ffhq_crop_matrix(quad, size)
    return AlignedFace(_warp(img[0], m, size, border, antialias), m, np.linalg.inv(m), quad)


@dataclasses.dataclass(frozen=True, eq=False)
class AlignedClip:
    """FFHQ-aligned crops of a clip: ``frames`` uint8 [T, S, S, 3]; ``crop_to_frame`` / ``frame_to_crop``
    float64 [T, 3, 3]; ``quads`` float64 [T, 4, 2]; ``interpolated`` bool [T] (True where the frame had no
    face and its crop square was interpolated from the neighbouring frames)."""

    frames: np.ndarray
    crop_to_frame: np.ndarray
    frame_to_crop: np.ndarray
    quads: np.ndarray
    interpolated: np.ndarray

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def _fill_missing(values: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Linear interpolation over frames [T, ...] where ``found`` is False (ends: nearest found frame)."""
    t = np.arange(len(values))
    flat = values.reshape(len(values), -1).copy()
    for j in range(flat.shape[1]):
        flat[~found, j] = np.interp(t[~found], t[found], flat[found, j])
    return flat.reshape(values.shape)


def align_video(frames, track: LandmarkTrack | np.ndarray, output_size: int = 1024, *,
                border: str = "reflect", antialias: bool = True, progress: bool = True) -> AlignedClip:
    """FFHQ-align every frame of a clip with its landmarks (a :class:`LandmarkTrack` measured on frames of this
    W x H, else ``ValueError``; or an array [T, 68, 2] in pixels of these frames, NaN where no face). Frames without a
    face get a crop square interpolated linearly
    from their neighbours' squares (nearest at the ends) and are flagged in ``interpolated``. A clip with
    no face at all raises :class:`NoFaceError`. Returns an :class:`AlignedClip`.

    ``frames``: a clip [T, H, W, 3] (any form :func:`v2s_nb.video.as_rgb_uint8` accepts), a
    :class:`~v2s_nb.video.Video`, or chunks such as a :class:`~v2s_nb.video.VideoStream`: read once, one chunk in
    memory, so a long 4K video needs the memory of its crops only (the crop squares come from the landmarks)."""
    pts = track.points if isinstance(track, LandmarkTrack) else _check_points(track)
    if pts.ndim == 2:
        pts = pts[None]
    chunks, total = _chunks_of(frames)
    if total is not None and not isinstance(frames, VideoStream) and total != len(pts):  # a stream's is a guess
        raise ValueError(f"got {total} frames but landmarks for {len(pts)} frames.")
    size = _check_size(output_size)
    _check_border(border)
    quads = ffhq_quad(pts)
    found = np.isfinite(quads).all(axis=(1, 2))
    if not found.any():
        raise NoFaceError("no face in any frame of the clip, so there is nothing to align; check the video, or "
                          "try landmarks(..., detector='cnn', upsample=1) for small or turned faces.")
    quads = _fill_missing(quads, found)
    mats = ffhq_crop_matrix(quads, size)
    out = np.empty((len(pts), size, size, 3), np.uint8)
    i = 0
    bar = progress_bar(total=len(pts), desc="align", unit="frame", enabled=progress)
    try:
        for chunk in chunks:
            if isinstance(track, LandmarkTrack):
                _check_frames_size(track, chunk, "align_video: frames")
            if i + len(chunk) > len(pts):
                raise ValueError(f"got more than {len(pts)} frames but landmarks for {len(pts)} frames.")
            for frame in chunk:
                out[i] = _warp(frame, mats[i], size, border, antialias)
                i += 1
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    if i != len(pts):
        raise ValueError(f"got {i} frames but landmarks for {len(pts)} frames.")
    return AlignedClip(out, mats, np.linalg.inv(mats), quads, ~found)
