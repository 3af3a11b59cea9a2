"""Canonical transforms per frame (the paper's section 3.2; docs/method.md): where the face is and how it is turned
in-plane.

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
from .landmark_detection import EYE_LEFT, EYE_RIGHT, MOUTH, LandmarkTrack, NoFaceError, _image_size, _track_size

__all__ = ["CanonicalTrack", "canonical_track", "eye_mouth_geometry", "FFHQ_FACE_SIZE"]

#: Eye-to-mouth distance of an FFHQ-aligned face as a fraction of the crop width, for a face whose eye-to-mouth
#: distance equals its eye distance (the same assumption as FFHQ_EYE_MIDPOINT): the recipe's crop is 4 eye
#: distances wide, so 1/4.
FFHQ_FACE_SIZE = 0.25


def eye_mouth_geometry(points) -> tuple[np.ndarray, np.ndarray]:
    """(e, v) from landmarks [..., 68, 2] (pixels): the eye midpoint e [..., 2] and the eyes-to-mouth vector
    v = mean(mouth points 48-67) - e [..., 2], both in pixels. NaN in, NaN out."""
    pts = np.asarray(points, np.float64)
    if pts.shape[-2:] != (68, 2):
        raise ValueError(f"landmarks must have shape [..., 68, 2] (dlib's 68 points, pixels), got {pts.shape}.")
    e = 0.5 * (pts[..., EYE_LEFT, :].mean(-2) + pts[..., EYE_RIGHT, :].mean(-2))
    v = pts[..., MOUTH, :].mean(-2) - e
    return e, v


def _pair(value, name: str = "canonical_eyes") -> tuple[float, float]:
    try:
        x, y = (float(c) for c in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an (x, y) pair of fractions of the image size, got {value!r}.") from None
    if not (np.isfinite(x) and np.isfinite(y)):
        raise ValueError(f"{name} must be finite, got {value!r}.")
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
    * ``interpolated``: bool [T], True for frames whose values were interpolated (no face, or an outlier
      rejected by ``smooth(method='robust')``);
    * ``image_size``: (width, height) of the frames the track was measured on, in pixels;
    * ``canonical_eyes``: e' used, as (x, y) fractions of the canonical square image;
    * ``face_size``: float64 [T] or None, the eye-to-mouth distance |v| in image widths (the face's scale; used
      by the face-unit :meth:`relative_to` and by the outlier test);
    * ``outliers``: bool [T], frames the robust smoother rejected (a subset of ``interpolated``).
    """

    tx: np.ndarray
    ty: np.ndarray
    angle: np.ndarray
    interpolated: np.ndarray
    image_size: tuple[int, int]
    canonical_eyes: tuple[float, float] = FFHQ_EYE_MIDPOINT
    face_size: np.ndarray | None = None
    outliers: np.ndarray | None = None

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
        if self.face_size is not None:
            fs = np.array(self.face_size, np.float64).reshape(-1)
            if fs.shape != (t,) or not np.isfinite(fs).all() or (fs <= 0).any():
                raise ValueError(f"face_size must be {t} finite positive values (eye-to-mouth distance in image "
                                 f"widths), got shape {fs.shape}.")
            fs.flags.writeable = False
            object.__setattr__(self, "face_size", fs)
        out = np.zeros(t, bool) if self.outliers is None else np.array(self.outliers, bool).reshape(-1)
        if out.shape != (t,):
            raise ValueError(f"outliers must have shape [{t}], got {np.shape(self.outliers)}.")
        out.flags.writeable = False
        object.__setattr__(self, "outliers", out)
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
                            interpolated=self.interpolated[index], outliers=self.outliers[index],
                            face_size=None if self.face_size is None else self.face_size[index])

    def as_array(self, face_size: bool = False) -> np.ndarray:
        """float64 [T, 3]: columns tx (widths), ty (widths), angle (degrees); with ``face_size=True``
        [T, 4] with the face size (widths) as a fourth column (``ValueError`` when the track has none)."""
        cols = [self.tx, self.ty, self.angle]
        if face_size:
            if self.face_size is None:
                raise ValueError("this track has no face_size (make it with canonical_track() from landmarks)")
            cols.append(self.face_size)
        return np.stack(cols, axis=1)

    def replace(self, **changes) -> "CanonicalTrack":
        """Copy with some fields replaced (e.g. ``track.replace(angle=np.zeros(len(track)))``)."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        return (f"CanonicalTrack({len(self)} frames, {self.image_size[0]}x{self.image_size[1]}, "
                f"{int(self.interpolated.sum())} interpolated, {int(self.outliers.sum())} outliers)")

    # ------------------------------------------------------------------ operations

    def smooth(self, kernel: int = 3, method: str = "mean", sigma: float | None = None,
               ends: str = "reflect", outlier_window: int = 7, outlier_sigmas: float = 3.0) -> "CanonicalTrack":
        """A NEW track with tx, ty and angle (and face_size) each filtered over time by a centred (zero-lag) filter.

        ``kernel``: odd window length in frames, >= 3 (the paper's default 3). ``method``: 'mean' (box filter,
        as in the paper), 'gaussian' (weights exp(-k^2 / 2 sigma^2) over the same window; ``sigma``
        in frames defaults to kernel / 4), or 'robust': first an outlier test (:meth:`outlier_frames`, a
        Hampel test with ``outlier_window`` / ``outlier_sigmas`` on tx, ty, angle and face size), the rejected
        frames re-interpolated from their neighbours like frames without a face (flagged in ``outliers`` and
        ``interpolated``), then the 'gaussian' filter. ``ends``: how the track is extended past its ends:
        'reflect' (mirror, the first / last frame repeated once; 'nearest' for a kernel of 2 T frames or more,
        whose windows would take in both mirrored ends and run the motion backwards) or 'nearest' (repeat the end
        value).
        The number of frames is kept and the filter is symmetric, so nothing lags; a constant track stays
        constant; a step that is symmetric about a frame (or a half frame) keeps its midpoint there.
        """
        if isinstance(kernel, bool) or not isinstance(kernel, (int, np.integer)) or kernel < 3 or kernel % 2 == 0:
            raise ValueError(f"kernel must be an odd integer >= 3 (a centred window of frames), got {kernel!r}.")
        if ends not in ("reflect", "nearest"):
            raise ValueError(f"ends must be 'reflect' or 'nearest', got {ends!r}.")
        r = int(kernel) // 2
        if r >= len(self):  # a window over both mirrored ends would run the motion backwards
            ends = "nearest"
        if method == "mean":
            if sigma is not None:
                raise ValueError("sigma is only used with method='gaussian' or 'robust'.")
            w = np.full(int(kernel), 1.0 / kernel)
        elif method in ("gaussian", "robust"):
            sigma = kernel / 4.0 if sigma is None else float(sigma)
            if not np.isfinite(sigma) or sigma <= 0:
                raise ValueError(f"sigma must be a positive number of frames, got {sigma!r}.")
            k = np.arange(-r, r + 1, dtype=np.float64)
            w = np.exp(-0.5 * (k / sigma) ** 2)
            w /= w.sum()
        else:
            raise ValueError(f"method must be 'mean', 'gaussian' or 'robust', got {method!r}.")
        track = self
        if method == "robust":
            bad = self.outlier_frames(outlier_window, outlier_sigmas)
            good = ~(bad | self.interpolated)
            if good.any() and bad.any():
                track = self.replace(
                    tx=_interp_missing(self.tx, good), ty=_interp_missing(self.ty, good),
                    angle=_interp_missing(self.angle, good),
                    face_size=None if self.face_size is None else _interp_missing(self.face_size, good),
                    interpolated=self.interpolated | bad, outliers=self.outliers | bad)
        return track.replace(tx=_filter(track.tx, w, ends), ty=_filter(track.ty, w, ends),
                             angle=_filter(track.angle, w, ends),
                             face_size=None if track.face_size is None else _filter(track.face_size, w, ends))

    def outlier_frames(self, window: int = 7, sigmas: float = 3.0) -> np.ndarray:
        """bool [T]: frames whose tx, ty, angle or face size is far from its neighbours (a Hampel test).

        For each frame and each of the four values, over a ``window`` of frames (odd, >= 5) centred on it (near the
        ends the same number of frames, moved inward): the window's straight-line trend is taken out (the median
        slope between its frames' pairs, Theil-Sen, which one outlier in the window does not move), and the frame is
        an outlier when its value is more than ``sigmas * max(scale, floor)`` from the median ``m`` of what is left,
        ``scale`` being ``1.4826 MAD`` of what is left. Without the trend a fast turn or move counted as spread, so
        a false face during it went unflagged, and the end frame of a clip starting with a fast motion was
        flagged (its one-sided window's median lay inside the motion). The floors keep landmark jitter on a still
        face from counting: 5% of the median face size for tx, ty and face size (widths; 0.005 widths without a
        face size) and 2 degrees for the angle. Frames already interpolated (no face) take no part and are never
        flagged.
        """
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 5 or window % 2 == 0:
            raise ValueError(f"outlier_window must be an odd integer >= 5 (frames), got {window!r}.")
        sigmas = float(sigmas)
        if not np.isfinite(sigmas) or sigmas <= 0:
            raise ValueError(f"outlier_sigmas must be a positive number, got {sigmas!r}.")
        known = ~self.interpolated
        fs = self.face_size
        unit = 0.05 * float(np.median(fs[known])) if fs is not None and known.any() else 0.005
        series = [(self.tx, unit), (self.ty, unit), (self.angle, 2.0)]
        if fs is not None:
            series.append((fs, unit))
        bad = np.zeros(len(self), bool)
        idx = np.flatnonzero(known)
        width = min(int(window), len(idx))
        if width < 4:  # too few frames with a face to tell an outlier from the motion
            return bad
        t = idx.astype(np.float64)
        lo = np.clip(np.arange(len(idx)) - int(window) // 2, 0, len(idx) - width)
        win = lo[:, None] + np.arange(width)  # [N, width]: each frame's window (positions in idx)
        a, b = np.triu_indices(width, 1)  # the window's pairs of frames
        tw = t[win]
        for x, floor in series:
            xs = x[idx]
            xw = xs[win]
            slope = np.median((xw[:, b] - xw[:, a]) / (tw[:, b] - tw[:, a]), axis=1)
            rest = xw - slope[:, None] * (tw - t[:, None])  # each window seen from its frame, the trend taken out
            m = np.median(rest, axis=1)
            scale = np.maximum(1.4826 * np.median(np.abs(rest - m[:, None]), axis=1), floor)
            bad[idx] |= np.abs(xs - m) > sigmas * scale
        return bad

    def relative_to(self, frame: int = 0, face_size: float | None = None) -> "CanonicalTrack":
        """A NEW track of the motion relative to one frame (that frame becomes the identity).

        ``face_size=None``: in the track's own units, tx - tx[frame], ty - ty[frame], angle - angle[frame].
        ``face_size=S`` (face units; needs ``self.face_size``): the translation is the change of the eye-mouth
        centre ``c = e + v / 2`` since ``frame``, divided by the face size at ``frame`` and multiplied by ``S``,
        the face size (eye-to-mouth distance) wanted in the output, in output widths (an FFHQ-aligned face:
        about :data:`FFHQ_FACE_SIZE`); the angle is the change of the signed angle. The result is then in
        output widths whatever the framing of the measured clip (a face filmed small moves as much as one
        filmed large), and its ``face_size`` is the measured one rescaled the same way.
        """
        if not -len(self) <= int(frame) < len(self):
            raise IndexError(f"frame {frame} is outside the track of {len(self)} frames.")
        f = int(frame)
        if face_size is None:
            return self.replace(tx=self.tx - self.tx[f], ty=self.ty - self.ty[f], angle=self.angle - self.angle[f])
        if self.face_size is None:
            raise ValueError("relative_to(face_size=...) needs the track's face sizes; make the track with "
                             "canonical_track() from landmarks (or pass face_size=None for image-width units).")
        out_size = float(face_size)
        if not np.isfinite(out_size) or out_size <= 0:
            raise ValueError(f"face_size must be a positive fraction of the output width, got {face_size!r}.")
        a = np.radians(self.angle)
        cx = self.tx + 0.5 * self.face_size * np.sin(a)
        cy = self.ty + 0.5 * self.face_size * np.cos(a)
        g = out_size / self.face_size[f]
        return self.replace(tx=(cx - cx[f]) * g, ty=(cy - cy[f]) * g, angle=self.angle - self.angle[f],
                            face_size=self.face_size * g)

    def input_transforms(self, pivot="centre") -> np.ndarray:
        """float64 [T, 3, 3]: values for ``G.synthesis.input.transform``, one per frame, made by
        :func:`v2s_nb.stylegan3.transform.input_transform` (the one implementation of the convention).

        ``pivot='centre'`` (default, the paper's): (tx, ty, angle) are passed as they are; the generator turns
        the image about its centre and shifts it by t.
        ``pivot='eyes'``: the translation is corrected so that the turn is about the canonical eye midpoint
        e' instead, i.e. e' ends up exactly at e' + t: t_gen = t + (e' - c) - R (e' - c), c the image centre.
        The two differ by |e' - c| sin(angle) ~ 0.025 sin(angle) widths.
        ``pivot=(x, y)``: the same about that point (fractions of the output's width / height), e.g. the output
        face's eye-mouth centre for a face-unit :meth:`relative_to` track, whose t is that centre's motion.
        """
        from ..stylegan3.transform import forward_matrix, input_transform

        tx, ty = self.tx, self.ty
        point = None
        if isinstance(pivot, str):
            if pivot == "eyes":
                point = self.canonical_eyes
            elif pivot != "centre":
                raise ValueError(f"pivot must be 'centre', 'eyes' or an (x, y) pair of fractions, got {pivot!r}.")
        else:
            point = _pair(pivot, "pivot")
        if point is not None:
            off = np.array([point[0] - 0.5, point[1] - 0.5])
            rot = forward_matrix(np.zeros(len(self)), np.zeros(len(self)), self.angle)[:, :2, :2]
            moved = rot @ off
            tx, ty = tx + off[0] - moved[:, 0], ty + off[1] - moved[:, 1]
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
    """Canonical transform (tx, ty, angle) of every frame from its landmarks (docs/method.md; the paper's section 3.2).

    ``landmarks``: a :class:`~v2s_nb.face.LandmarkTrack`, or an array [T, 68, 2] / [68, 2] in pixels with
    NaN rows for frames without a face. ``image_size``: the frames' (width, height) in pixels, or an int for
    square frames; needed with an array; with a LandmarkTrack taken from it (a different value raises
    ``ValueError``: tx, ty are in widths of the frames the points were measured on). ``canonical_eyes``: e' as
    (x, y) fractions of a square canonical image (default :data:`~v2s_nb.face.align.FFHQ_EYE_MIDPOINT` = (0.5, 0.475)).

    Frames without a face keep their place: their values are interpolated linearly from the nearest frames
    with a face (the first / last known value at the ends) and flagged in ``.interpolated`` (bool [T]).
    ``.face_size`` holds each frame's eye-to-mouth distance in image widths (the face's scale).
    A clip with no face at all raises :class:`~v2s_nb.face.NoFaceError`.
    """
    if isinstance(landmarks, LandmarkTrack):
        pts, found = landmarks.points, landmarks.found.copy()
        size = _track_size(landmarks, image_size, "canonical_track: image_size")
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
    # (ex, ey) are fractions of the crop's extent; landmarks index pixel centres, half a pixel in from its edge
    e_prime = np.array([ex * w, 0.5 * h + (ey - 0.5) * w]) - 0.5

    angle = np.full(len(found), np.nan)
    angle[found] = np.unwrap(np.degrees(np.arctan2(v[found, 0], v[found, 1])), period=360.0)
    t = (e - e_prime) / w
    tx = _interp_missing(np.where(found, t[:, 0], np.nan), found)
    ty = _interp_missing(np.where(found, t[:, 1], np.nan), found)
    angle = _interp_missing(angle, found)
    fs = _interp_missing(np.where(found, np.hypot(v[:, 0], v[:, 1]) / w, np.nan), found)
    return CanonicalTrack(tx, ty, angle, ~found, size, (ex, ey), face_size=fs)
