"""ID of Table 1: L2 distance between 128-d face embeddings of the reference and each result frame.

The embeddings are dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat`` from
``face_recognition_models``) - the model behind the ``face_recognition`` package the paper cites - computed
from the 68-point shape of :func:`v2s_nb.face.landmarks`. The package ``face_recognition`` is not imported
(it quits the interpreter on current setuptools, asking for pkg_resources); dlib is called directly. Two photos of
the same person are typically closer than 0.6 (the package's default tolerance).

Frames without a face get NaN embeddings, are not averaged, and are reported (``missing``).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from ..face.landmark_detection import LandmarkTrack, NoFaceError, model_path
from ._common import clip_frames, one_image, progress_bar
from .keypoints import track_of

__all__ = ["EMBEDDING_DIM", "IdentityDistance", "face_embeddings", "identity_distance", "reference_embedding"]

EMBEDDING_DIM = 128


@functools.lru_cache(maxsize=None)
def _recognizer():
    import dlib

    return dlib.face_recognition_model_v1(str(model_path("dlib_face_recognition_resnet_model_v1.dat")))


def _shape(box, points):
    """dlib ``full_object_detection`` from a detector box and the 68 landmark points (pixels)."""
    import dlib

    rect = dlib.rectangle(*(int(round(v)) for v in box))
    pts = dlib.points()
    for x, y in points:
        pts.append(dlib.point(int(round(x)), int(round(y))))
    return dlib.full_object_detection(rect, pts)


def face_embeddings(frames, *, track: LandmarkTrack | None = None, detector: str = "hog", upsample: int = 1,
                    progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """128-d dlib face embeddings of each frame.

    ``frames``: a clip [T, H, W, 3] or one image (T = 1), any form :func:`v2s_nb.video.as_rgb_uint8` takes.
    ``track``: landmarks of these frames if already computed (skips detection), else detected with
    ``detector`` / ``upsample``; a track made on frames of another size is scaled onto these frames' pixel
    grid (same framing assumed, as in :func:`v2s_nb.metrics.keypoints.normalized_points`). Returns
    ``(emb, found)``: float64 [T, 128], NaN rows where no face was found (or a landmark point is not finite),
    and bool [T].
    """
    clip = clip_frames(frames, allow_single_image=True)
    if track is None:
        track = track_of(clip, detector=detector, upsample=upsample, progress=progress)
    if len(track) != len(clip):
        raise ValueError(f"track has {len(track)} frames for {len(clip)} frames.")
    track = _on_grid(track, (clip.shape[2], clip.shape[1]))
    # a NaN point can't be placed in dlib's shape: such frames count as without a face, as in ΔK
    found = track.found & np.isfinite(track.points).all(axis=(1, 2)) & np.isfinite(track.boxes).all(axis=1)
    emb = np.full((len(clip), EMBEDDING_DIM), np.nan)
    rec = _recognizer()
    bar = progress_bar(int(found.sum()), "face embeddings", progress)
    try:
        for i in np.flatnonzero(found):
            shape = _shape(track.boxes[i], track.points[i])
            emb[i] = np.asarray(rec.compute_face_descriptor(np.ascontiguousarray(clip[i]), shape), np.float64)
            bar.update(1)
    finally:
        bar.close()
    return emb, found


def _on_grid(track: LandmarkTrack, size: tuple[int, int]) -> LandmarkTrack:
    """``track`` with points and boxes mapped onto frames of ``size`` (width, height) when its size differs."""
    (wt, ht), (w, h) = track.image_size, size
    if (wt, ht) == (w, h):
        return track
    # pixel centres: x_new + 0.5 = (x + 0.5) * w / wt, as keypoints.normalized_points does
    scale = np.array([w / wt, h / ht])
    points = (track.points + 0.5) * scale - 0.5
    boxes = (track.boxes + 0.5) * np.tile(scale, 2) - 0.5
    return dataclasses.replace(track, points=points, boxes=boxes, image_size=(w, h))


def reference_embedding(reference, *, detector: str = "hog", upsample: int = 1) -> np.ndarray:
    """The 128-d embedding (float64 [128]) of one reference image (RGB [H, W, 3], uint8 or float in [0, 1]; any
    image form of :mod:`v2s_nb.metrics`); a float [128] or [1, 128] array or tensor (the latter is what
    :func:`face_embeddings` returns for one image) is returned as is, as float64 [128].

    Raises :class:`v2s_nb.face.NoFaceError` when no face is found in the image.
    """
    arr = np.asarray(reference.detach().cpu() if hasattr(reference, "detach") else reference)
    # [1, 128] would otherwise be read as a 1-pixel-high grey picture
    if arr.shape in ((EMBEDDING_DIM,), (1, EMBEDDING_DIM)) and np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"the reference embedding {list(arr.shape)} has NaN / infinite values; give the "
                             "reference image instead (its embedding is computed from it).")
        return arr.reshape(EMBEDDING_DIM).astype(np.float64)
    img = one_image(reference)
    emb, found = face_embeddings(img, detector=detector, upsample=upsample, progress=False)
    if not found[0]:
        raise NoFaceError(f"no face found in the reference image ({img.shape[1]}x{img.shape[0]}); ID needs the "
                          "reference's face (try upsample=2 or detector='cnn').")
    return emb[0]


@dataclasses.dataclass(frozen=True, eq=False)
class IdentityDistance:
    """ID between a reference and a result clip.

    * ``mean``: average L2 distance over frames with a face (NaN if none).
    * ``per_frame``: float [T], NaN where the result frame has no face.
    * ``found``: bool [T]; ``missing``: indices of frames without a face (not averaged, reported).
    * ``embeddings``: float [T, 128] of the result frames; ``reference``: float [128].
    """

    mean: float
    per_frame: np.ndarray
    found: np.ndarray
    embeddings: np.ndarray
    reference: np.ndarray

    @property
    def frames(self) -> int:
        return int(self.found.sum())

    @property
    def missing(self) -> np.ndarray:
        return np.flatnonzero(~self.found)

    def __repr__(self) -> str:
        return (f"IdentityDistance(mean={self.mean:.4g}, {self.frames}/{len(self.found)} frames; "
                f"no face: {len(self.missing)})")


def identity_distance(result, reference, *, track: LandmarkTrack | None = None, detector: str = "hog",
                      upsample: int = 1, progress: bool = True) -> IdentityDistance:
    """ID: mean L2 distance between the reference's embedding and each result frame's.

    ``result``: a clip [T, H, W, 3] (any clip form of :mod:`v2s_nb.metrics`) or one image [H, W, 3];
    ``track``: its landmarks if already computed. ``reference``: an image [H, W, 3] or a precomputed [128] /
    [1, 128] embedding (see :func:`reference_embedding`). Distances are in dlib's embedding units (0.6 is dlib's
    same-person threshold).
    """
    ref = reference_embedding(reference, detector=detector, upsample=upsample)
    emb, found = face_embeddings(result, track=track, detector=detector, upsample=upsample, progress=progress)
    per_frame = np.linalg.norm(emb - ref, axis=1)  # NaN rows stay NaN
    mean = float(per_frame[found].mean()) if found.any() else float("nan")
    return IdentityDistance(mean, per_frame, found, emb, ref)
