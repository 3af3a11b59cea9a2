"""Canonical transforms per frame (PAPER.md section 3.2): where the face is and how it is turned in-plane.

For each frame, from the 68 landmarks (pixels, x right, y down):

    e = 0.5 (mean(points 36-41) + mean(points 42-47))      eye midpoint
    v = mean(points 48-67) - e                              eyes -> mouth, points "down" in an upright face
    angle = atan2(v_x, v_y)  (degrees)                      signed angle from the image's down axis to v
    t = (e - e') / W                                        translation in image widths

Sign conventions, the same as :mod:`v2s_nb.stylegan3.transform` so a track can drive the generator as is:

* ``angle`` > 0: the face is turned **counter-clockwise as seen in the image** (the chin swings to the
  right). This is the sense of ``skimage.transform.rotate(image, +a)``.
* ``tx`` > 0: the face moved right; ``ty`` > 0: it moved down. Units: image widths (of the frames the
  landmarks come from), for both tx and ty.

``e'`` is the eye midpoint of the canonical FFHQ-aligned image (what the generator draws with an identity
input transform). The FFHQ recipe puts it half way across and at 0.475 of the height for a face whose
eye-to-mouth distance equals its eye distance (:func:`v2s_nb.face.align.ffhq_eye_midpoint` derives it;
the full range over face proportions is 0.472..0.5). For a frame of W x H pixels, e' is taken in the
W x W square centred on the frame, i.e. ``e' = (W/2, H/2 + (0.475 - 0.5) W)``; for square frames this is
simply (0.5 W, 0.475 H). Pass ``canonical_eyes=`` to use another value (e.g. measured on your reference).

The angle is unwrapped over time (no jump between +180 and -180), so it can leave [-180, 180] for a face
that spins past upside-down; smoothing and interpolation work on the unwrapped values.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .align import FFHQ_EYE_MIDPOINT
from .landmarks import EYE_LEFT, EYE_RIGHT, MOUTH, LandmarkTrack, NoFaceError, _image_size

__all__ = ["CanonicalTrack", "canonical_track", "eye_mouth_geometry"]


def eye_mouth_geometry(points) -> tuple[np.ndarray, np.ndarray]:
    """(e, v) from landmarks [..., 68, 2] (pixels): the eye midpoint e [..., 2] and the eyes-to-mouth vector
    v = mean(mouth points 48-67) - e [..., 2], both in pixels. NaN in, NaN out."""
    pts = np.asarray(points, np.float64)
    if pts.shape[-2:] != (68, 2):
        raise ValueError(f"landmarks must have shape [..., 68, 2] (dlib's 68 points, pixels), got {pts.shape}.")
    e = 0.5 * (pts[..., EYE_LEFT, :].mean(-2) + pts[..., EYE_RIGHT, :].mean(-2))
    v = pts[..., MOUTH, :].mean(-2) - e
    return e, v


def _pair(value) -> tuple[float, float]:
    try:
        x, y = (float(c) for c in value)
    except (TypeError, ValueError):
        raise ValueError(f"canonical_eyes must be an (x, y) pair of fractions of the image size, got {value!r}.") from None
    if not (np.isfinite(x) and np.isfinite(y)):
        raise ValueError(f"canonical_eyes must be finite, got {value!r}.")
    return x, y


def _interp_missing(x: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Values at frames where ``found`` is False replaced by linear interpolation in time (nearest at ends)."""
    t = np.arange(len(x))
    out = x.copy()
    out[~found] = np.interp(t[~found], t[found], x[found])
    return out


def _filter(x: np.ndarray, weights: np.ndarray, ends: str) -> np.ndarray:
    r = len(weights) // 2
    padded = np.pad(x, r, mode="symmetric" if ends == "reflect" else "edge")
    return np.convolve(padded, weights[::-1], mode="valid")


@dataclasses.dataclass(frozen=True, eq=False)
class CanonicalTrack:
    """Per-frame canonical transform of a clip (see the module docstring for units and signs).

    * ``tx``, ``ty``: float64 [T], translation in image widths (+ = right / down);
    * ``angle``: float64 [T], in-plane rotation in degrees (+ = counter-clockwise as seen);
    * ``interpolated``: bool [T], True for frames without a face whose values were interpolated;
    * ``image_size``: (width, height) of the frames the track was measured on, in pixels;
    * ``canonical_eyes``: e' used, as (x, y) fractions of the canonical square image.
    """

    tx: np.ndarray
    ty: np.ndarray
    angle: np.ndarray
    interpolated: np.ndarray
    image_size: tuple[int, int]
    canonical_eyes: tuple[float, float] = FFHQ_EYE_MIDPOINT

    def __post_init__(self):
        arrays = [np.array(getattr(self, k), np.float64).reshape(-1) for k in ("tx", "ty", "angle")]
        t = len(arrays[0])
        if any(len(a) != t for a in arrays):
            raise ValueError(f"tx, ty and angle must have the same length, got {[len(a) for a in arrays]}.")
        if not all(np.isfinite(a).all() for a in arrays):
            raise ValueError("tx, ty and angle must be finite (interpolate missing frames first).")
        interp = np.array(self.interpolated, bool).reshape(-1)
        if interp.shape != (t,):
            raise ValueError(f"interpolated must have shape [{t}], got {np.shape(self.interpolated)}.")
        for k, a in zip(("tx", "ty", "angle"), arrays):
            a.flags.writeable = False
            object.__setattr__(self, k, a)
        interp.flags.writeable = False
        object.__setattr__(self, "interpolated", interp)
        object.__setattr__(self, "image_size", _image_size(self.image_size))
        object.__setattr__(self, "canonical_eyes", _pair(self.canonical_eyes))

    # ------------------------------------------------------------------ basics

    @classmethod
    def identity(cls, num_frames: int, image_size=1024) -> "CanonicalTrack":
        """A track of ``num_frames`` identity transforms (no motion)."""
        z = np.zeros(int(num_frames))
        return cls(z, z, z, np.zeros(int(num_frames), bool), image_size)

    def __len__(self) -> int:
        return int(self.tx.shape[0])

    def __getitem__(self, index) -> "CanonicalTrack":
        """Sub-track for a slice, index array or boolean mask over frames."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return self.replace(tx=self.tx[index], ty=self.ty[index], angle=self.angle[index],
                            interpolated=self.interpolated[index])

    def as_array(self) -> np.ndarray:
        """float64 [T, 3]: columns tx (widths), ty (widths), angle (degrees)."""
        return np.stack([self.tx, self.ty, self.angle], axis=1)

    def replace(self, **changes) -> "CanonicalTrack":
        """Copy with some fields replaced (e.g. ``track.replace(angle=np.zeros(len(track)))``)."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        return (f"CanonicalTrack({len(self)} frames, {self.image_size[0]}x{self.image_size[1]}, "
                f"{int(self.interpolated.sum())} interpolated)")

    # ------------------------------------------------------------------ operations

    def smooth(self, kernel: int = 3, method: str = "mean", sigma: float | None = None,
               ends: str = "reflect") -> "CanonicalTrack":
        """A NEW track with tx, ty and angle each filtered over time by a centred (zero-lag) filter.

        ``kernel``: odd window length in frames, >= 3 (PAPER.md default 3). ``method``: 'mean' (box filter,
        as in the paper) or 'gaussian' (weights exp(-k^2 / 2 sigma^2) over the same window; ``sigma``
        in frames defaults to kernel / 4). ``ends``: how the track is extended past its ends:
        'reflect' (mirror, the first / last frame repeated once) or 'nearest' (repeat the end value).
        The number of frames is kept; a constant track stays constant; a step that is symmetric about a
        frame (or a half frame) keeps its midpoint there. ``interpolated`` is carried over unchanged.
        """
        if isinstance(kernel, bool) or not isinstance(kernel, (int, np.integer)) or kernel < 3 or kernel % 2 == 0:
            raise ValueError(f"kernel must be an odd integer >= 3 (a centred window of frames), got {kernel!r}.")
        if ends not in ("reflect", "nearest"):
            raise ValueError(f"ends must be 'reflect' or 'nearest', got {ends!r}.")
        r = int(kernel) // 2
        if method == "mean":
            if sigma is not None:
                raise ValueError("sigma is only used with method='gaussian'.")
            w = np.full(int(kernel), 1.0 / kernel)
        elif method == "gaussian":
            sigma = kernel / 4.0 if sigma is None else float(sigma)
            if not np.isfinite(sigma) or sigma <= 0:
                raise ValueError(f"sigma must be a positive number of frames, got {sigma!r}.")
            k = np.arange(-r, r + 1, dtype=np.float64)
            w = np.exp(-0.5 * (k / sigma) ** 2)
            w /= w.sum()
        else:
            raise ValueError(f"method must be 'mean' or 'gaussian', got {method!r}.")
        return self.replace(tx=_filter(self.tx, w, ends), ty=_filter(self.ty, w, ends),
                            angle=_filter(self.angle, w, ends))

    def relative_to(self, frame: int = 0) -> "CanonicalTrack":
        """A NEW track of the motion relative to one frame: tx - tx[frame], ty - ty[frame],
        angle - angle[frame] (so that frame becomes the identity)."""
        if not -len(self) <= int(frame) < len(self):
            raise IndexError(f"frame {frame} is outside the track of {len(self)} frames.")
        f = int(frame)
        return self.replace(tx=self.tx - self.tx[f], ty=self.ty - self.ty[f], angle=self.angle - self.angle[f])

    def input_transforms(self, pivot: str = "centre") -> np.ndarray:
        """float64 [T, 3, 3]: values for ``G.synthesis.input.transform``, one per frame, made by
        :func:`v2s_nb.stylegan3.transform.input_transform` (the one implementation of the convention).

        ``pivot='centre'`` (default, PAPER.md): (tx, ty, angle) are passed as they are; the generator turns
        the image about its centre and shifts it by t.
        ``pivot='eyes'``: the translation is corrected so that the turn is about the canonical eye midpoint
        e' instead, i.e. e' ends up exactly at e' + t: t_gen = t + (e' - c) - R (e' - c), c the image centre.
        The two differ by |e' - c| sin(angle) ~ 0.025 sin(angle) widths.
        """
        from ..stylegan3.transform import forward_matrix, input_transform

        tx, ty = self.tx, self.ty
        if pivot == "eyes":
            off = np.array([self.canonical_eyes[0] - 0.5, self.canonical_eyes[1] - 0.5])
            rot = forward_matrix(np.zeros(len(self)), np.zeros(len(self)), self.angle)[:, :2, :2]
            moved = rot @ off
            tx, ty = tx + off[0] - moved[:, 0], ty + off[1] - moved[:, 1]
        elif pivot != "centre":
            raise ValueError(f"pivot must be 'centre' or 'eyes', got {pivot!r}.")
        return input_transform(tx, ty, self.angle)

    def plot(self, title: str | None = None):
        """Matplotlib figure: translation (tx, ty in % of width) and angle (degrees) against the frame index;
        interpolated frames are marked with grey bars. Returns the figure."""
        import matplotlib.pyplot as plt

        fig, (a0, a1) = plt.subplots(2, 1, figsize=(7, 4), sharex=True)
        t = np.arange(len(self))
        a0.plot(t, 100 * self.tx, label="tx (right +)")
        a0.plot(t, 100 * self.ty, label="ty (down +)")
        a0.set_ylabel("% of width")
        a0.legend(loc="best", fontsize="small")
        a1.plot(t, self.angle, color="C2", label="angle (ccw +)")
        a1.set_ylabel("degrees")
        a1.set_xlabel("frame")
        a1.legend(loc="best", fontsize="small")
        for ax in (a0, a1):
            for i in np.flatnonzero(self.interpolated):
                ax.axvspan(i - 0.5, i + 0.5, color="0.85", lw=0)
            ax.grid(alpha=0.3)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return fig


def canonical_track(landmarks, image_size=None, *, canonical_eyes=FFHQ_EYE_MIDPOINT) -> CanonicalTrack:
    """Canonical transform (tx, ty, angle) of every frame from its landmarks (PAPER.md section 3.2).

    ``landmarks``: a :class:`~v2s_nb.face.LandmarkTrack`, or an array [T, 68, 2] / [68, 2] in pixels with
    NaN rows for frames without a face. ``image_size``: the frames' (width, height) in pixels, or an int for
    square frames; taken from the LandmarkTrack when omitted. ``canonical_eyes``: e' as (x, y) fractions of
    a square canonical image (default :data:`~v2s_nb.face.align.FFHQ_EYE_MIDPOINT` = (0.5, 0.475)).

    Frames without a face keep their place: their values are interpolated linearly from the nearest frames
    with a face (the first / last known value at the ends) and flagged in ``.interpolated`` (bool [T]).
    A clip with no face at all raises :class:`~v2s_nb.face.NoFaceError`.
    """
    if isinstance(landmarks, LandmarkTrack):
        pts, found = landmarks.points, landmarks.found.copy()
        size = _image_size(image_size if image_size is not None else landmarks.image_size)
    else:
        pts = np.asarray(landmarks, np.float64)
        if pts.ndim == 2:
            pts = pts[None]
        if image_size is None:
            raise ValueError("image_size is needed with a landmark array: pass image_size=(width, height) in pixels "
                             "(or pass the LandmarkTrack, which knows it).")
        size = _image_size(image_size)
        found = None
    e, v = eye_mouth_geometry(pts)
    ok = np.isfinite(e).all(-1) & np.isfinite(v).all(-1) & (np.hypot(v[:, 0], v[:, 1]) > 0)
    found = ok if found is None else (found & ok)
    if len(found) == 0:
        raise ValueError("the landmark track is empty (0 frames).")
    if not found.any():
        raise NoFaceError(f"no face was found in any of the {len(found)} frames, so there is no canonical transform "
                          "to measure; check the clip, or try landmarks(..., detector='cnn', upsample=1) for small "
                          "or strongly turned faces.")
    ex, ey = _pair(canonical_eyes)
    w, h = size
    e_prime = np.array([0.5 * w + (ex - 0.5) * w, 0.5 * h + (ey - 0.5) * w])

    angle = np.full(len(found), np.nan)
    angle[found] = np.unwrap(np.degrees(np.arctan2(v[found, 0], v[found, 1])), period=360.0)
    t = (e - e_prime) / w
    tx = _interp_missing(np.where(found, t[:, 0], np.nan), found)
    ty = _interp_missing(np.where(found, t[:, 1], np.nan), found)
    angle = _interp_missing(angle, found)
    return CanonicalTrack(tx, ty, angle, ~found, size, (ex, ey))
