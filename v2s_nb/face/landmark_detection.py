"""68-point facial landmarks per frame: dlib (the models shipped in ``face_recognition_models``) or PFLD.

Two front ends give the same :class:`LandmarkTrack`: dlib's face detector (HOG or MMOD CNN) + its 68-point shape
predictor (the default), or the paper's CNNs, the RFB-320 face detector + PFLD (``detector='rfb', model='pfld'``;
:mod:`v2s_nb.face.landmark_cnn`, weights downloaded once).

Coordinates are **pixels, x to the right, y down**, with the centre of the top-left pixel at (0, 0) (dlib's
and OpenCV's convention). Point numbering is dlib's / iBUG 300-W's 68-point scheme:

====================  =========  ====================================================
name                  indices    note
====================  =========  ====================================================
``JAW``               0-16       8 is the chin
``BROW_LEFT``         17-21      image-left brow (the subject's right)
``BROW_RIGHT``        22-26
``NOSE``              27-35      30 is the nose tip
``EYE_LEFT``          36-41      image-left eye (the subject's right); 36 outer corner
``EYE_RIGHT``         42-47      image-right eye; 45 outer corner
``MOUTH``             48-67      48 / 54 are the mouth corners (image left / right)
====================  =========  ====================================================

The package ``face_recognition_models`` is used only as a folder of model files: it is located with
``importlib`` and never imported (its import fails on current setuptools: it asks for pkg_resources).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ..video import Video, VideoStream, as_rgb_uint8
from ..errors import V2SError
from ..progress import progress_bar

__all__ = [
    "LandmarkTrack",
    "NoFaceError",
    "landmarks",
    "model_path",
    "JAW", "BROW_LEFT", "BROW_RIGHT", "NOSE", "EYE_LEFT", "EYE_RIGHT", "MOUTH",
    "NOSE_TIP", "CHIN", "MOUTH_LEFT", "MOUTH_RIGHT",
]

JAW = np.arange(0, 17)
BROW_LEFT = np.arange(17, 22)
BROW_RIGHT = np.arange(22, 27)
NOSE = np.arange(27, 36)
EYE_LEFT = np.arange(36, 42)
EYE_RIGHT = np.arange(42, 48)
MOUTH = np.arange(48, 68)
NOSE_TIP, CHIN, MOUTH_LEFT, MOUTH_RIGHT = 30, 8, 48, 54

DETECTORS = ("hog", "cnn", "rfb")
MODELS = ("dlib", "pfld")
#: PFLD crop side relative to the longer side of each detector's face box: RFB 1.1 (upstream); HOG 1.35, measured
#: (HOG's box is tighter and lower: 1.35 x it gives the same square as 1.1 x RFB's on the astronaut photo).
PFLD_SCALE = {"rfb": 1.1, "hog": 1.35}
#: Each detector's own acceptance threshold on its score, the zero of the margins that :func:`_pick` compares:
#: dlib's HOG (run with ``adjust_threshold=0``) and MMOD CNN give SVM-like margins, a face above 0 (real faces
#: ~0.8-1.7 for HOG, ~1 for the CNN; false ones ~0-0.3); RFB gives a softmax probability, kept above 0.7.
SCORE_THRESHOLD = {"hog": 0.0, "cnn": 0.0, "rfb": 0.7}
#: On the first frame, faces whose margin over that threshold is below this fraction of the best one are ignored.
FIRST_FACE_MIN_MARGIN = 0.5


class NoFaceError(V2SError, ValueError):
    """No face was found where one is needed (e.g. in every frame of a clip)."""


# ----------------------------------------------------------------------------------------------- models


def model_path(name: str) -> Path:
    """Path of a dlib model file shipped by ``face_recognition_models`` (located, not imported).

    ``name`` e.g. ``"shape_predictor_68_face_landmarks.dat"`` or ``"mmod_human_face_detector.dat"``.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("The dlib face models are missing: pip install face_recognition_models "
                          "(the package is only used as a folder of model files).")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"dlib model file '{path}' is missing; reinstall face_recognition_models "
                                "(pip install --force-reinstall face_recognition_models).")
    return path


def _dlib():
    try:
        import dlib
    except ImportError:  # pragma: no cover - dlib-bin is a dependency
        raise ImportError("dlib is not installed: pip install dlib-bin (prebuilt wheel, no compiler needed).") from None
    return dlib


@functools.lru_cache(maxsize=None)
def _hog_detector():
    return _dlib().get_frontal_face_detector()


@functools.lru_cache(maxsize=None)
def _cnn_detector():
    return _dlib().cnn_face_detection_model_v1(str(model_path("mmod_human_face_detector.dat")))


@functools.lru_cache(maxsize=None)
def _shape_predictor():
    return _dlib().shape_predictor(str(model_path("shape_predictor_68_face_landmarks.dat")))


def _detect(image: np.ndarray, detector: str,
            upsample: int) -> list[tuple[tuple[float, float, float, float], float, object]]:
    """Faces in one uint8 RGB image with dlib's detectors: list of ((left, top, right, bottom) px, score, rectangle)."""
    if detector == "hog":
        rects, scores, _ = _hog_detector().run(image, upsample, 0.0)
        out = list(zip(rects, scores))
    else:
        out = [(d.rect, d.confidence) for d in _cnn_detector()(image, upsample)]
    return [((r.left(), r.top(), r.right(), r.bottom()), float(s), r) for r, s in out]


# ----------------------------------------------------------------------------------------------- the track


@dataclasses.dataclass(frozen=True, eq=False)
class LandmarkTrack:
    """Landmarks of one person through a clip.

    * ``points``: float64 [T, 68, 2], pixels (x right, y down); NaN in frames without a face.
    * ``found``: bool [T], True where a face was detected.
    * ``boxes``: float64 [T, 4], the detector box (left, top, right, bottom) in pixels; NaN where no face.
    * ``scores``: float64 [T], detector confidence of the followed face (NaN where none).
    * ``num_faces``: int [T], how many faces the detector saw in each frame.
    * ``image_size``: (width, height) of the frames in pixels.
    * ``detector``: which detector made it ('hog', 'cnn', 'rfb', or 'given' for :meth:`from_points`), followed by
      ``+pfld`` when PFLD placed the points (e.g. ``'rfb+pfld'``).
    """

    points: np.ndarray
    found: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    num_faces: np.ndarray
    image_size: tuple[int, int]
    detector: str = "given"

    def __post_init__(self):
        pts = np.asarray(self.points, np.float64)
        if pts.ndim != 3 or pts.shape[1:] != (68, 2):
            raise ValueError(f"points must have shape [T, 68, 2], got {pts.shape}.")
        t = pts.shape[0]
        found = np.asarray(self.found, bool).reshape(-1)
        if found.shape != (t,):
            raise ValueError(f"found must have shape [{t}], got {np.shape(self.found)}.")
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "found", found)
        object.__setattr__(self, "boxes", np.asarray(self.boxes, np.float64).reshape(t, 4))
        object.__setattr__(self, "scores", np.asarray(self.scores, np.float64).reshape(t))
        object.__setattr__(self, "num_faces", np.asarray(self.num_faces, np.int64).reshape(t))
        object.__setattr__(self, "image_size", _image_size(self.image_size))

    @classmethod
    def from_points(cls, points, image_size) -> "LandmarkTrack":
        """A track from given landmark coordinates [T, 68, 2] (or one face [68, 2]); rows that contain NaN in
        the eyes or mouth (points 36-67) count as "no face". Boxes are the landmarks' bounding boxes."""
        pts = np.asarray(points, np.float64)
        if pts.ndim == 2:
            pts = pts[None]
        if pts.ndim != 3 or pts.shape[1:] != (68, 2):
            raise ValueError(f"points must have shape [T, 68, 2] (or [68, 2]), got {pts.shape}.")
        found = np.isfinite(pts[:, 36:68]).all(axis=(1, 2))
        boxes = np.full((len(pts), 4), np.nan)
        if found.any():
            boxes[found] = np.concatenate([np.nanmin(pts[found], axis=1), np.nanmax(pts[found], axis=1)], axis=1)
        return cls(pts, found, boxes, np.where(found, 1.0, np.nan), found.astype(np.int64), image_size, "given")

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @property
    def missing(self) -> np.ndarray:
        """Indices (int [K]) of the frames without a face."""
        return np.flatnonzero(~self.found)

    def __getitem__(self, index) -> "LandmarkTrack":
        """Sub-track for a slice, index array or boolean mask over frames."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return LandmarkTrack(self.points[index], self.found[index], self.boxes[index], self.scores[index],
                             self.num_faces[index], self.image_size, self.detector)

    def __repr__(self) -> str:
        w, h = self.image_size
        return (f"LandmarkTrack({len(self)} frames, {w}x{h}, face found in {int(self.found.sum())}, "
                f"detector={self.detector!r})")

    def draw(self, frames, *, color=(0, 255, 0), radius: int | None = None, box: bool = True) -> np.ndarray:
        """Copy of ``frames`` ([T, H, W, 3], the track's T and ``image_size``) with the landmarks (and detector
        boxes) drawn on; uint8."""
        import cv2

        out = as_rgb_uint8(frames, allow_single_image=True).copy()
        if len(out) != len(self):
            raise ValueError(f"got {len(out)} frames for a track of {len(self)} frames.")
        _check_frames_size(self, out, "LandmarkTrack.draw: frames")
        r = radius if radius is not None else max(1, int(round(min(self.image_size) / 256)))
        for i in np.flatnonzero(self.found):
            img = out[i]
            for x, y in self.points[i]:
                cv2.circle(img, (int(round(x)), int(round(y))), r, color, -1, lineType=cv2.LINE_AA)
            if box and np.isfinite(self.boxes[i]).all():
                x0, y0, x1, y1 = (int(round(v)) for v in self.boxes[i])
                cv2.rectangle(img, (x0, y0), (x1, y1), color, max(1, r // 2))
        return out

    def plot(self, frame: int = 0, image=None, ax=None):
        """Matplotlib figure of one frame's landmarks (over ``image`` [H, W, 3] if given); returns the figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(4, 4))
        else:
            fig = ax.figure
        if image is not None:
            ax.imshow(as_rgb_uint8(image, allow_single_image=True)[0])
        else:
            w, h = self.image_size
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.set_aspect("equal")
        if self.found[frame]:
            p = self.points[frame]
            ax.plot(p[:, 0], p[:, 1], ".", color="lime", ms=4)
        ax.set_title(f"frame {frame}" + ("" if self.found[frame] else " (no face)"))
        ax.set_axis_off()
        return fig


def _image_size(size) -> tuple[int, int]:
    """(width, height) from an int (square) or a pair; positive ints."""
    if np.ndim(size) == 0:
        size = (size, size)
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be an int or a (width, height) pair of ints, got {size!r}.") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"image_size must be positive, got {(w, h)}.")
    return w, h


def _track_size(track: LandmarkTrack, image_size=None, where: str = "image_size") -> tuple[int, int]:
    """The track's (width, height); a given ``image_size`` must agree with it (its points are pixels of frames of
    that size, so another size would give silently wrong results)."""
    w, h = track.image_size
    if image_size is not None and _image_size(image_size) != (w, h):
        gw, gh = _image_size(image_size)
        raise ValueError(f"{where} is {gw}x{gh} pixels but the LandmarkTrack was measured on {w}x{h} frames; "
                         "leave image_size out (the track knows its size), or, if the frames really were resized, "
                         f"rescale the points (pixel centres): LandmarkTrack.from_points((track.points + 0.5) * "
                         f"[{gw} / {w}, {gh} / {h}] - 0.5, ({gw}, {gh})).")
    return w, h


def _check_frames_size(track: LandmarkTrack, frames: np.ndarray, what: str) -> None:
    """Frames uint8 [T, H, W, 3] must be the size the track was measured on (else the points land elsewhere)."""
    h, w = frames.shape[1:3]
    tw, th = track.image_size
    if (w, h) != (tw, th):
        raise ValueError(f"{what}: {w}x{h} pixels, but the LandmarkTrack was measured on {tw}x{th} frames; give "
                         "the frames the landmarks were found on, or rescale the points (pixel centres): "
                         f"LandmarkTrack.from_points((track.points + 0.5) * [{w} / {tw}, {h} / {th}] - 0.5, "
                         f"({w}, {h})).")


# ----------------------------------------------------------------------------------------------- detection


def _pick(faces, prev_box, threshold: float = 0.0) -> int:
    """Index of the face to follow.

    ``faces``: [(box (left, top, right, bottom), score, ...)]. ``prev_box``: the followed face's box in the
    previous frame with a face, or None. ``threshold``: the detector's acceptance threshold on the score
    (:data:`SCORE_THRESHOLD`). First face: the largest of the confident boxes (:func:`_confident`). Afterwards: the
    box that overlaps the previous one most (intersection over union), so the same person is followed even when a
    larger face appears; when no box overlaps it, the box whose centre is nearest to the previous centre.
    """
    boxes = np.array([f[0] for f in faces], np.float64)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    if prev_box is None:
        return int(np.argmax(np.where(_confident([f[1] for f in faces], threshold), area, -1.0)))
    p = np.asarray(prev_box, np.float64)
    iw = np.clip(np.minimum(boxes[:, 2], p[2]) - np.maximum(boxes[:, 0], p[0]), 0, None)
    ih = np.clip(np.minimum(boxes[:, 3], p[3]) - np.maximum(boxes[:, 1], p[1]), 0, None)
    inter = iw * ih
    union = area + max(p[2] - p[0], 0.0) * max(p[3] - p[1], 0.0) - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    if iou.max() > 0:
        return int(np.argmax(iou))
    centres = 0.5 * (boxes[:, :2] + boxes[:, 2:])
    return int(np.argmin(np.hypot(*(centres - 0.5 * (p[:2] + p[2:])).T)))


def _confident(scores, threshold: float = 0.0) -> np.ndarray:
    """Which faces (bool [K]) may be picked as the first face: those whose margin (score - ``threshold``) is at
    least :data:`FIRST_FACE_MIN_MARGIN` of the best margin; all of them when a score is missing (NaN / None) or
    no margin is positive (then the area alone decides).

    Why: the first face decides whom the whole clip follows, and the largest box alone is not safe: dlib's HOG
    finds the astronaut photo's face (256 px) with score 1.45 and, larger, the mission patch with 0.02. Among
    faces of similar confidence (within a factor of 2 of margin) the largest is still taken (the main subject).
    The margin over the detector's own threshold puts dlib's margins and RFB's probabilities (0.7-1) on one
    footing: an RFB box at 0.75 next to one at 0.99 is as doubtful as a HOG box at 0.1 next to one at 1.2.
    """
    m = np.array([np.nan if s is None else s for s in scores], np.float64) - float(threshold)
    if not np.isfinite(m).all() or m.max() <= 0:
        return np.ones(len(m), bool)
    return m >= FIRST_FACE_MIN_MARGIN * m.max()


def _chunks_of(frames) -> tuple[Iterable[np.ndarray], int | None]:
    """(iterable of uint8 [n, H, W, 3] chunks, total frame count or None if unknown)."""
    if isinstance(frames, Video):
        return [frames.frames], len(frames)
    if isinstance(frames, VideoStream):
        return frames, frames.info.approx_frames or None
    if isinstance(frames, (np.ndarray, str, os.PathLike)) or hasattr(frames, "detach") \
            or not isinstance(frames, Iterable):  # a path: refused whole by as_rgb_uint8 with the fix
        arr = as_rgb_uint8(frames, allow_single_image=True)
        return [arr], len(arr)
    # any other iterable (list of frames [H, W, 3], list of chunks [n, H, W, 3], generator): item by item
    gen = (as_rgb_uint8(c, allow_single_image=True, name=f"frames (item {i})") for i, c in enumerate(frames))
    total = sum(_num_frames(f) for f in frames) if isinstance(frames, (list, tuple)) else None
    return gen, total


def _num_frames(item) -> int:
    """Frames in one item of a frame list, by :func:`as_rgb_uint8`'s single-image rule."""
    shape = np.shape(item)
    single = len(shape) == 2 or (len(shape) == 3 and shape[-1] in (3, 4))
    return 1 if single or not shape else int(shape[0])


def front_end_name(detector: str, model: str | None = None) -> str:
    """What :func:`landmarks` names its front end (:attr:`LandmarkTrack.detector`): the detector, with '+pfld' when
    PFLD fits the points (``model`` None: the detector's default model)."""
    model = ("pfld" if detector == "rfb" else "dlib") if model is None else model
    return detector if model == "dlib" else f"{detector}+pfld"


def landmarks(frames, detector: str = "hog", upsample: int = 1, progress: bool = True, model: str | None = None,
              device=None, batch_size: int = 16) -> LandmarkTrack:
    """Detect one person's face in every frame and fit 68 landmarks (dlib's or PFLD's).

    ``frames``: a clip [T, H, W, 3] or one image [H, W, 3] (T = 1) in any form
    :func:`v2s_nb.video.as_rgb_uint8` accepts (grayscale, RGBA and float [0, 1] are converted), a
    :class:`~v2s_nb.video.Video`, or an iterable of chunks / frames such as a
    :class:`~v2s_nb.video.VideoStream` (then only one chunk is in memory at a time).

    ``detector``: ``'hog'`` (dlib's HOG + linear SVM frontal detector; fast on a CPU) or ``'cnn'`` (dlib's
    MMOD CNN; finds more rotated / profile faces, much slower on a CPU: docs/performance.md).
    ``upsample``: how many times the image is doubled before detection (0 = none; 1 finds faces down to
    ~40 px instead of ~80 px at about 4x the cost); dlib's detectors only. ``'rfb'``: the RFB-320 CNN face
    detector (the frame resized to 320 x 240; faces down to ~20 px of that; score > 0.7, NMS IoU 0.3).

    ``model``: ``'dlib'`` (shape predictor, with ``'hog'`` / ``'cnn'``) or ``'pfld'`` (the PFLD CNN on a square
    crop around the box, with ``'rfb'`` / ``'hog'``); default ``'pfld'`` for ``detector='rfb'``, else ``'dlib'``.
    ``device`` / ``batch_size``: where and how many frames at a time the CNNs (RFB, PFLD) run (default CPU, 16).
    Their weights come from :func:`v2s_nb.weights.fetch` (downloaded once; ``$V2S_NB_WEIGHTS_DIR`` first).

    Several faces in a frame: in the first frame with a face the largest of the confident ones is taken (a box
    whose detector score is far below the best one's, e.g. dlib's weak false faces on a logo, is passed over);
    afterwards the one whose box overlaps the previous face's box most (intersection over union; the nearest box
    centre when none overlaps), so the same person is followed even when a larger face (or a false detection)
    appears. Frames without a face get NaN points and ``found == False`` (nothing is dropped or interpolated here; see
    :func:`v2s_nb.face.canonical_track` for that). Returns a :class:`LandmarkTrack`.
    """
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}.")
    model = ("pfld" if detector == "rfb" else "dlib") if model is None else model
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}.")
    if (model == "pfld" and detector not in PFLD_SCALE) or (model == "dlib" and detector == "rfb"):
        raise ValueError(f"model={model!r} does not go with detector={detector!r}: use 'pfld' with 'rfb' or 'hog', "
                         "'dlib' with 'hog' or 'cnn'.")
    if isinstance(upsample, bool) or not isinstance(upsample, (int, np.integer)) or not 0 <= upsample <= 4:
        raise ValueError(f"upsample must be an integer 0..4 (times the image is doubled), got {upsample!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    chunks, total = _chunks_of(frames)
    # load the models before the progress bar starts
    rfb = pfld = predictor = None
    if detector == "rfb":
        from .landmark_cnn import load_rfb
        rfb = load_rfb(device)
    else:
        (_hog_detector if detector == "hog" else _cnn_detector)()
    if model == "pfld":
        from .landmark_cnn import load_pfld
        pfld = load_pfld(device)
    else:
        predictor = _shape_predictor()
    name = front_end_name(detector, model)

    pts, found, boxes, scores, counts = [], [], [], [], []
    size = None
    prev_box = None
    bar = progress_bar(total=total, desc=f"landmarks ({name})", unit="frame", enabled=progress)
    try:
        for chunk in chunks:
            if size is None:
                size = (chunk.shape[2], chunk.shape[1])
            elif (chunk.shape[2], chunk.shape[1]) != size:
                raise ValueError(f"all frames must have the same size: got {chunk.shape[2]}x{chunk.shape[1]} "
                                 f"after {size[0]}x{size[1]}.")
            for s in range(0, len(chunk), int(batch_size)):
                part = chunk[s:s + int(batch_size)]
                if detector == "rfb":
                    dets = rfb.detect(np.ascontiguousarray(part), threshold=SCORE_THRESHOLD["rfb"])
                    faces_all = [[(tuple(float(v) for v in d[:4]), float(d[4]), None) for d in ds] for ds in dets]
                else:
                    faces_all = [_detect(np.ascontiguousarray(im), detector, int(upsample)) for im in part]
                picked = []
                for image, faces in zip(part, faces_all):
                    counts.append(len(faces))
                    if not faces:
                        picked.append(None)
                        pts.append(np.full((68, 2), np.nan))
                        found.append(False)
                        boxes.append(np.full(4, np.nan))
                        scores.append(np.nan)
                        continue
                    box, score, rect = faces[_pick(faces, prev_box, SCORE_THRESHOLD[detector])]
                    picked.append(box)
                    if predictor is not None:
                        shape = predictor(np.ascontiguousarray(image), rect)
                        pts.append(np.array([(p.x, p.y) for p in shape.parts()], np.float64))
                    else:
                        pts.append(None)  # filled below, the whole batch at once
                    found.append(True)
                    boxes.append(np.array(box, np.float64))
                    scores.append(score)
                    prev_box = np.array(box, np.float64)
                if pfld is not None:
                    _pfld_fill(pfld, part, picked, pts, PFLD_SCALE[detector])
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    if size is None:
        raise ValueError("landmarks() got no frames; give at least one frame.")
    return LandmarkTrack(np.stack(pts), np.array(found), np.stack(boxes), np.array(scores), np.array(counts),
                         size, name)


def _pfld_fill(pfld, images: np.ndarray, picked: list, pts: list, scale: float) -> None:
    """Replace the trailing ``None`` entries of ``pts`` (one per non-None box in ``picked``, in order) with PFLD's
    68 points [68, 2] (pixels) for those frames of ``images`` (uint8 [n, H, W, 3])."""
    import torch

    from .landmark_cnn import face_square, pfld_landmarks

    idx = [i for i, b in enumerate(picked) if b is not None]
    if not idx:
        return
    x = torch.from_numpy(np.ascontiguousarray(images[idx])).to(pfld.device).permute(0, 3, 1, 2).float() / 255.0
    sq = face_square(np.array([picked[i] for i in idx], np.float64), scale)
    with torch.no_grad():
        out = pfld_landmarks(pfld, x, torch.as_tensor(sq, dtype=torch.float32)).double().cpu().numpy()
    holes = [j for j in range(len(pts) - len(picked), len(pts)) if pts[j] is None]
    for j, p in zip(holes, out):
        pts[j] = p
