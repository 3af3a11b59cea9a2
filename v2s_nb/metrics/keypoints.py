"""ΔK of Table 1: mean squared error between the 68 landmarks of driving and result frames, x and y apart.

Normalisation
-------------
The paper does not say in which units its ΔK (values ~0.2-0.4) is measured. Raw pixels make the number
depend on the resolution (the same error is 16x larger at 1024 px than at 256 px) and 0.2-0.4 px² would be a
sub-pixel match, which no re-enactment with a different identity reaches. The default here is therefore
``normalization='percent'``: each coordinate is expressed in **percent of the frame size** (x / width · 100,
y / height · 100), so ΔK is in %² and does not depend on the resolution. On FFHQ-aligned frames (the eye
centres ~25 % of the width apart) the paper's 0.2-0.4 then means an RMS landmark error of 0.45-0.63 % of the
frame, i.e. ~5-6 px at 1024 px or ~2 % of the eye-centre distance: the magnitude one expects from a re-enactment
that follows the driving face closely. This is a choice made to get comparable magnitudes, not a
reproduction of the paper's (unstated) units; the units travel with every result (``units``).

Other choices: ``'iod'`` divides by the driving frame's inter-ocular distance (outer eye corners, points 36
and 45 - the 300-W convention; scale-free, and independent of the framing, but on FFHQ crops, where that
distance is ~35 % of the width, its numbers are ~1200x smaller than ``'percent'``'s, so 0.2-0.4 would mean
an RMS error of half the eye distance) and
``'pixels'`` keeps the driving frame's pixels. When result and driving frames differ in size (a 1024 px
rendering of 256 px aligned driving crops), the result's landmarks are first scaled onto the driving frame's
pixel grid: ΔK assumes both show the same framing (aligned crops), as the method's outputs do.

Frames where no face is found in the driving or in the result frame (or a landmark point is not finite) are
not averaged; they are counted and listed (``missing_driving``, ``missing_result``, ``missing``), never
silently dropped.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from ..errors import V2SWarning
from ..face.landmark_detection import LandmarkTrack, landmarks

__all__ = ["NORMALIZATIONS", "KeypointDistance", "keypoint_distance", "normalized_points", "track_of",
           "default_front_end", "front_end_of"]

NORMALIZATIONS = ("percent", "iod", "pixels")
UNITS = {"percent": "% of frame size, squared", "iod": "inter-ocular distance (outer corners), squared",
         "pixels": "driving-frame pixels, squared"}


@dataclasses.dataclass(frozen=True, eq=False)
class KeypointDistance:
    """ΔK between a result clip and its driving clip.

    * ``x``, ``y``: the mean squared landmark error along x and y over the counted frames (NaN if none).
    * ``per_frame``: float [T, 2], each frame's squared error averaged over the 68 points (NaN where not
      counted); ``x == nanmean(per_frame[:, 0])``.
    * ``valid``: bool [T], frames with a face in both clips.
    * ``missing_driving`` / ``missing_result``: int indices of frames without a face in that clip.
    * ``normalization`` and ``units``: how coordinates were scaled (see the module docstring).
    * ``detector``: the landmark front end of both tracks (``'rfb+pfld'``, ``'hog'``, ... or ``'given'``), or
      ``'driving: X, result: Y'`` when they differ.
    """

    x: float
    y: float
    per_frame: np.ndarray
    valid: np.ndarray
    missing_driving: np.ndarray
    missing_result: np.ndarray
    normalization: str
    units: str
    detector: str = "given"

    @property
    def frames(self) -> int:
        """How many frames were averaged."""
        return int(self.valid.sum())

    @property
    def missing(self) -> np.ndarray:
        """Indices of the frames left out (no face in the driving frame, the result frame, or both)."""
        return np.flatnonzero(~self.valid)

    def __repr__(self) -> str:
        t = len(self.valid)
        return (f"KeypointDistance(x={self.x:.4g}, y={self.y:.4g} [{self.units}], {self.frames}/{t} frames; "
                f"no face in driving: {len(self.missing_driving)}, in result: {len(self.missing_result)}; "
                f"landmarks: {self.detector})")


def track_of(frames_or_track, *, detector: str = "hog", upsample: int = 1, progress: bool = True,
             desc: str = "frames", model: str | None = None) -> LandmarkTrack:
    """A :class:`LandmarkTrack` for frames (detected now) or the track itself if one is given."""
    if isinstance(frames_or_track, LandmarkTrack):
        return frames_or_track
    return landmarks(frames_or_track, detector=detector, upsample=upsample, progress=progress, model=model)


def _known_length(x) -> int | None:
    """Frames in a track, a Video or a [T, H, W, C] array / tensor, without decoding anything; None where that
    can't be told cheaply (a stream, or a 3-d array: one picture or a grey clip)."""
    from ..video import Video

    if isinstance(x, (LandmarkTrack, Video)):
        return len(x)
    shape = getattr(x, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) == 4 else None


def _check_same_length(n_result: int, n_driving: int) -> None:
    if n_result != n_driving:
        raise ValueError(f"ΔK compares frame i with frame i: got {n_result} result frames for {n_driving} driving "
                         "frames.")


def default_front_end() -> tuple[str, str]:
    """ΔK's landmark front end: ``('rfb', 'pfld')``, the paper's CNNs, when their weights can be had
    (:func:`v2s_nb.weights.fetch`: downloaded once), else ``('hog', 'dlib')`` with a warning saying so."""
    from ..face.landmark_cnn import weights_path
    from ..weights import WeightsChecksumError, WeightsUnavailableError

    try:
        import onnx  # noqa: F401

        weights_path("pfld-68")
        weights_path("rfb-320-face-detector")
        return "rfb", "pfld"
    except (WeightsUnavailableError, WeightsChecksumError, ImportError) as e:
        import warnings

        from ..errors import FallbackWarning

        warnings.warn(f"ΔK: the paper's landmark CNN (RFB-320 + PFLD) is unavailable ({str(e).splitlines()[0]}); "
                      "using dlib's HOG detector + 68-point predictor instead, so the values are not measured "
                      "with the paper's detector.", FallbackWarning, stacklevel=3)
        return "hog", "dlib"


def front_end_of(track_detector: str) -> tuple[str, str] | None:
    """``(detector, model)`` for :func:`v2s_nb.face.landmarks` that made a track whose ``detector`` is
    ``track_detector`` (``'hog'``, ``'cnn'``, ``'rfb+pfld'``, ``'hog+pfld'``); None when it records none
    (``'given'``: points from elsewhere)."""
    det, _, model = str(track_detector).partition("+")
    if det not in ("hog", "cnn", "rfb") or model not in ("", "pfld"):
        return None
    return det, model or ("pfld" if det == "rfb" else "dlib")


def normalized_points(result: LandmarkTrack, driving: LandmarkTrack, normalization: str = "percent"):
    """(result points, driving points), float [T, 68, 2], in the units of ``normalization``.

    The result's landmarks are first mapped onto the driving frame's pixel grid when the sizes differ.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
    (wr, hr), (wd, hd) = result.image_size, driving.image_size
    # pixel centres: x_d + 0.5 = (x_r + 0.5) * wd / wr
    if (wr, hr) == (wd, hd):
        pr = result.points
    else:
        pr = (result.points + 0.5) * np.array([wd / wr, hd / hr]) - 0.5
    pd = driving.points
    if normalization == "percent":
        size = np.array([wd, hd], np.float64)
        return pr / size * 100.0, pd / size * 100.0
    if normalization == "iod":
        iod = np.hypot(*(pd[:, 45] - pd[:, 36]).T)[:, None, None]  # [T, 1, 1], NaN where no face
        with np.errstate(divide="ignore", invalid="ignore"):
            return pr / iod, pd / iod
    return pr, pd


def keypoint_distance(result, driving, normalization: str = "percent", *, detector: str | None = None,
                      upsample: int = 1, progress: bool = True, model: str | None = None) -> KeypointDistance:
    """ΔK (x and y) between ``result`` and ``driving`` frames, frame i against frame i.

    ``result`` / ``driving``: clips [T, H, W, 3] in any form :func:`v2s_nb.face.landmarks` takes, or
    ready :class:`~v2s_nb.face.LandmarkTrack` objects (then nothing is detected again). Both must have the
    same number of frames. ``normalization``: ``'percent'`` (default), ``'iod'`` or ``'pixels'``; see the
    module docstring for what each means and why ``'percent'`` is the default. ``detector`` / ``model`` /
    ``upsample`` are passed to :func:`v2s_nb.face.landmarks`; by default (``detector=None``) frames get the paper's
    front end, RFB-320 + PFLD, when its weights can be had, else dlib's HOG + 68 points with a warning
    (:func:`default_front_end`). When one side is a track and the other frames, the frames are measured with
    the track's front end (if it records one), so both sides come from one detector; when the two sides'
    front ends still differ, a :class:`~v2s_nb.errors.V2SWarning` says so. ``detector`` of the result says
    which ran (``'driving: ..., result: ...'`` when they differ).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
    given_d, given_r = isinstance(driving, LandmarkTrack), isinstance(result, LandmarkTrack)
    if detector is None and model is None and given_d != given_r:
        # one side is a ready track: landmarks of two front ends differ by ~0.1 %² on identical frames
        detector, model = front_end_of((driving if given_d else result).detector) or (None, None)
    if detector is None and not (given_d and given_r):
        detector, model = default_front_end() if model is None else ("rfb" if model == "pfld" else "hog", model)
    detector = detector or "hog"
    n_d, n_r = _known_length(driving), _known_length(result)
    if n_d is not None and n_r is not None:  # said before the landmark detection, not after it
        _check_same_length(n_r, n_d)
    tr_d = track_of(driving, detector=detector, upsample=upsample, progress=progress, model=model)
    tr_r = track_of(result, detector=detector, upsample=upsample, progress=progress, model=model)
    name = tr_d.detector
    if tr_d.detector != tr_r.detector:
        name = f"driving: {tr_d.detector}, result: {tr_r.detector}"
        warnings.warn(f"ΔK compares landmarks of two front ends ({name}): the difference of the detectors alone "
                      "adds to ΔK (~0.1 %² on identical frames). Give both clips as frames, or as tracks made with "
                      "the same detector.", V2SWarning, stacklevel=2)
    _check_same_length(len(tr_r), len(tr_d))  # streams and 3-d arrays: known once read
    pr, pd = normalized_points(tr_r, tr_d, normalization)
    # a frame with any non-finite point (e.g. a NaN jaw point of a given track) counts as without a face
    ok_d = tr_d.found & np.isfinite(tr_d.points).all(axis=(1, 2))
    ok_r = tr_r.found & np.isfinite(tr_r.points).all(axis=(1, 2))
    with np.errstate(invalid="ignore", over="ignore"):
        per_frame = ((pr - pd) ** 2).mean(axis=1)  # [T, 2]
    valid = ok_d & ok_r & np.isfinite(per_frame).all(axis=1)  # e.g. 'iod' of a zero eye distance
    per_frame[~valid] = np.nan
    if valid.any():
        x, y = (float(v) for v in per_frame[valid].mean(axis=0))
    else:
        x = y = float("nan")
    return KeypointDistance(x, y, per_frame, valid, np.flatnonzero(~ok_d), np.flatnonzero(~ok_r), normalization,
                            UNITS[normalization], name)
