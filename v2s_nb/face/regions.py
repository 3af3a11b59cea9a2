"""Face-region masks (``'eyes'``, ``'nose'``, ``'mouth'``, ``'rest'``) from landmarks or from BiSeNet parsing.

One value comes out of every source: a :class:`RegionMasks`, a dict ``region -> bool [N, H, W]`` (image
pixels) with the attributes ``source`` (``'bisenet'`` or ``'landmarks'``), ``found`` (bool [N], False where
no face / no region pixel was found) and ``note`` (why a fallback happened, else ``None``).
The regions never overlap and ``'rest'`` is the complement of the other three (background and every other
face part: skin, brows, hair, ...), so ``rest == ~(eyes | nose | mouth)`` and ``'rest'`` is what the paper
calls "other semantic components including background".

* :func:`masks_from_landmarks` - offline, always available: convex hulls of dlib's 68-point groups
  (eyes 36-41 and 42-47, nose 27-35, mouth 48-67), filled with sub-pixel precision and dilated by a few
  pixels. Where hulls overlap after dilation the priority is mouth > eyes > nose (the nose hull reaches up
  between the eyes and down to the upper lip; the small, motion-carrying eyes and mouth keep their pixels).
* :func:`region_masks` - the single entry point: ``source='auto'`` uses BiSeNet (the paper's parser,
  :mod:`v2s_nb.face.parsing`) when its checkpoint is already in the weights cache, otherwise the landmark
  masks, and then says so with a :class:`RegionSourceWarning` and ``masks.source == 'landmarks'``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
from ..errors import V2SWarning

__all__ = ["REGIONS", "LANDMARK_GROUPS", "PRIORITY", "RegionMasks", "RegionSourceWarning", "masks_from_landmarks",
           "region_masks", "auto_dilation", "template_landmarks"]

#: Region names, in the order the API returns them; ``'rest'`` is the complement of the other three.
REGIONS = ("eyes", "nose", "mouth", "rest")
#: dlib 68-point index groups whose convex hulls make each region (one hull per group).
LANDMARK_GROUPS: dict[str, tuple[tuple[int, ...], ...]] = {
    "eyes": (tuple(range(36, 42)), tuple(range(42, 48))),
    "nose": (tuple(range(27, 36)),),
    "mouth": (tuple(range(48, 68)),),
}
#: Who keeps a pixel claimed by two regions (first wins).
PRIORITY = ("mouth", "eyes", "nose")
#: Automatic dilation: this fraction of the outer eye-corner distance (points 36-45), at least 1 px.
DILATE_FRACTION = 0.05


class RegionSourceWarning(V2SWarning):
    """``region_masks(source='auto')`` could not use BiSeNet and used the landmark masks instead."""


class RegionMasks(dict):
    """``{'eyes', 'nose', 'mouth', 'rest'} -> bool [N, H, W]`` plus where it came from.

    Attributes: ``source`` (``'bisenet'`` / ``'landmarks'`` / ``'given'``), ``found`` (bool [N]: a face was
    found / parsed in that image), ``note`` (str or None: e.g. why ``'auto'`` fell back to landmarks).
    """

    def __init__(self, masks: Mapping[str, np.ndarray], source: str = "given", found=None, note: str | None = None):
        super().__init__({k: np.asarray(v, bool) for k, v in masks.items()})
        self.source, self.note = source, note
        n = len(next(iter(self.values()))) if self else 0
        self.found = np.ones(n, bool) if found is None else np.asarray(found, bool).reshape(n)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(N, H, W)."""
        return tuple(next(iter(self.values())).shape)

    def __repr__(self) -> str:
        n, h, w = self.shape
        cover = ", ".join(f"{k} {100 * v.mean():.1f}%" for k, v in self.items())
        return f"RegionMasks({n} x {w}x{h}, source={self.source!r}, faces {int(self.found.sum())}/{n}; {cover})"

    def label_map(self) -> np.ndarray:
        """int [N, H, W]: index into ``list(self)`` of the region of each pixel (regions are disjoint)."""
        out = np.zeros(self.shape, np.int64)
        for i, m in enumerate(self.values()):
            out[m] = i
        return out

    def overlay(self, images, alpha: float = 0.45) -> np.ndarray:
        """uint8 [N, H, W, 3]: the images with eyes / nose / mouth tinted (blue / green / red)."""
        imgs = np.asarray(images, np.float32)
        if imgs.ndim == 3:
            imgs = imgs[None]
        colors = {"eyes": (40, 110, 255), "nose": (40, 220, 60), "mouth": (255, 40, 40)}
        out = imgs.copy()
        for name, col in colors.items():
            if name in self:
                m = self[name]
                out[m] = (1 - alpha) * out[m] + alpha * np.asarray(col, np.float32)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _image_size(size) -> tuple[int, int]:
    if np.ndim(size) == 0:
        size = (size, size)
    w, h = (int(v) for v in size)
    if w <= 0 or h <= 0:
        raise ValueError(f"image_size must be positive (width, height), got {(w, h)}")
    return w, h


def auto_dilation(points) -> int:
    """Dilation radius in pixels for one face [68, 2]: 5% of the outer eye-corner distance, at least 1."""
    p = np.asarray(points, np.float64)
    d = np.hypot(*(p[45] - p[36]))
    return max(1, int(round(DILATE_FRACTION * d))) if np.isfinite(d) else 1


def _fill_hull(mask: np.ndarray, pts: np.ndarray) -> None:
    import cv2

    hull = cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2)
    fixed = np.rint(hull.astype(np.float64) * 16).astype(np.int32)  # 4 fractional bits
    cv2.fillPoly(mask, [fixed], 1, lineType=cv2.LINE_8, shift=4)


def masks_from_landmarks(points, image_size, dilate: int | None = None) -> RegionMasks:
    """Region masks from dlib 68-point landmarks.

    Args:
        points: float [N, 68, 2] or [68, 2], pixels (x right, y down), or a :class:`~v2s_nb.face.LandmarkTrack`.
            A face whose points of a region are not all finite (NaN = no face) gets that region empty.
        image_size: (width, height) of the images, or one int for square images (taken from a
            ``LandmarkTrack`` when it is given one).
        dilate: dilation radius in pixels (elliptical kernel of side 2 * dilate + 1); ``None``: per face,
            5% of the outer eye-corner distance (about 3 px for a face 60 px between the eye corners); 0: none.
    Returns:
        :class:`RegionMasks` with ``source='landmarks'``: bool [N, H, W] per region, disjoint (priority
        mouth > eyes > nose), ``'rest'`` the complement.
    """
    import cv2

    if hasattr(points, "points") and hasattr(points, "found"):  # a LandmarkTrack
        if image_size is None:
            image_size = points.image_size
        points = points.points
    pts = np.asarray(points, np.float64)
    if pts.ndim == 2:
        pts = pts[None]
    if pts.ndim != 3 or pts.shape[1:] != (68, 2):
        raise ValueError(f"points must have shape [N, 68, 2] or [68, 2], got {pts.shape}")
    w, h = _image_size(image_size)
    if dilate is not None and (int(dilate) != dilate or dilate < 0):
        raise ValueError(f"dilate must be a non-negative integer number of pixels or None, got {dilate!r}")
    n = len(pts)
    out = {name: np.zeros((n, h, w), bool) for name in REGIONS}
    found = np.isfinite(pts[:, 27:68]).all(axis=(1, 2))
    for i in range(n):
        taken = np.zeros((h, w), bool)
        r = auto_dilation(pts[i]) if dilate is None else int(dilate)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)) if r > 0 else None
        for name in PRIORITY:
            m = np.zeros((h, w), np.uint8)
            for group in LANDMARK_GROUPS[name]:
                g = pts[i, list(group)]
                if np.isfinite(g).all():
                    _fill_hull(m, g)
            if kernel is not None:
                m = cv2.dilate(m, kernel)
            mb = m.astype(bool) & ~taken
            out[name][i] = mb
            taken |= mb
        out["rest"][i] = ~taken
    return RegionMasks(out, source="landmarks", found=found)


def template_landmarks(image_size=1024) -> np.ndarray:
    """A frontal, FFHQ-like 68-point face (float [68, 2] pixels, dlib order) centred in a square image.

    Not a measured mean shape: a hand-made layout (eyes at 46% height, mouth at 72%) for demos and tests, e.g.
    region masks for the samples of a random generator, which draws no face.
    """
    s = float(image_size if np.ndim(image_size) == 0 else min(image_size))
    p = np.zeros((68, 2))
    t = np.linspace(np.pi, 0, 17)  # jaw, image-left to image-right through the chin
    p[0:17] = np.c_[0.5 + 0.29 * np.cos(t), 0.45 + 0.47 * np.sin(t)]
    bx = np.linspace(0.27, 0.45, 5)
    p[17:22] = np.c_[bx, 0.385 - 0.025 * np.sin(np.linspace(0.2, np.pi - 0.2, 5))]
    p[22:27] = np.c_[1 - bx[::-1], p[17:22, 1][::-1]]
    p[27:31] = np.c_[np.full(4, 0.5), np.linspace(0.46, 0.60, 4)]
    p[31:36] = np.c_[np.linspace(0.445, 0.555, 5), [0.625, 0.632, 0.636, 0.632, 0.625]]
    for first, cx in ((36, 0.37), (42, 0.63)):
        hw, hh = 0.055, 0.02
        p[first:first + 6] = [(cx - hw, 0.46), (cx - hw / 3, 0.46 - hh), (cx + hw / 3, 0.46 - hh), (cx + hw, 0.46),
                              (cx + hw / 3, 0.46 + hh), (cx - hw / 3, 0.46 + hh)]
    k = np.arange(12)
    p[48:60] = np.c_[0.5 + 0.10 * np.cos(np.pi + k * np.pi / 6), 0.72 + 0.04 * np.sin(np.pi + k * np.pi / 6)]
    k = np.arange(8)
    p[60:68] = np.c_[0.5 + 0.065 * np.cos(np.pi + k * np.pi / 4), 0.72 + 0.015 * np.sin(np.pi + k * np.pi / 4)]
    return p * s - 0.5


def _as_uint8_images(images) -> np.ndarray:
    from .parsing import _as_images
    return _as_images(images)


def _num_faces(landmarks) -> int | None:
    """Frames in a LandmarkTrack or a points array [N, 68, 2] / [68, 2] (None for other shapes: checked later)."""
    if hasattr(landmarks, "points") and hasattr(landmarks, "found"):
        return len(landmarks.points)
    shape = np.shape(landmarks)
    return 1 if len(shape) == 2 else shape[0] if len(shape) == 3 else None


def region_masks(images=None, landmarks=None, source: str = "auto", *, image_size=None, net=None,
                 dilate: int | None = None, region_classes=None, device=None, batch_size: int = 4,
                 parse_size: int | None = None) -> RegionMasks:
    """Masks of ``'eyes'``, ``'nose'``, ``'mouth'`` and ``'rest'`` for images, from BiSeNet or from landmarks.

    Args:
        images: RGB [N, H, W, 3] (or one [H, W, 3]; any form :func:`v2s_nb.video.as_rgb_uint8` accepts, e.g.
            grey [N, H, W]); may be ``None`` for ``source='landmarks'`` when ``landmarks`` and ``image_size`` (or
            a ``LandmarkTrack``) are given. The masks are H x W.
        landmarks: [N, 68, 2] points (pixels of the images) or a :class:`~v2s_nb.face.LandmarkTrack` for the
            landmark source, one face per image (else ``ValueError``); when missing they are detected with
            :func:`v2s_nb.face.landmarks`.
        image_size: (width, height) pixels or an int, when ``images`` is None; given with images or a
            ``LandmarkTrack`` it must agree with their size (else ``ValueError``).
        source: ``'bisenet'`` (the paper's parser; fetched on first use, raises when unavailable),
            ``'landmarks'`` (offline, always works), or ``'auto'``: BiSeNet if ``net`` is given or its checkpoint
            is already in the weights cache, else the landmarks, with a :class:`RegionSourceWarning`.
        net: a loaded :func:`~v2s_nb.face.parsing.load_bisenet` module to reuse.
        dilate: landmark masks only, see :func:`masks_from_landmarks`.
        region_classes: BiSeNet only, class ids per region (default :data:`~v2s_nb.face.parsing.REGION_CLASSES`).
        parse_size: BiSeNet only, side the images are resized to for parsing (default 512, as upstream).
    Returns:
        :class:`RegionMasks`; ``.source`` says which source made it and ``.note`` why ``'auto'`` fell back.
    """
    if source not in ("auto", "bisenet", "landmarks"):
        raise ValueError(f"source must be 'auto', 'bisenet' or 'landmarks', got {source!r}")
    # one size and one count for images, landmarks and image_size, checked whichever source is used
    arr = None if images is None else _as_uint8_images(images)
    if arr is not None:
        size = (arr.shape[2], arr.shape[1])
        if image_size is not None and _image_size(image_size) != size:
            raise ValueError(f"image_size={image_size!r} but the images are {size[0]}x{size[1]} pixels; leave "
                             "image_size out when giving the images (the masks are the images' size).")
        image_size = size
    if landmarks is not None:
        from .landmark_detection import LandmarkTrack, _check_frames_size, _track_size

        if isinstance(landmarks, LandmarkTrack) and arr is not None:
            _check_frames_size(landmarks, arr, "region_masks: images")
        elif isinstance(landmarks, LandmarkTrack):
            image_size = _track_size(landmarks, image_size, "region_masks: image_size")
        n = _num_faces(landmarks)
        if arr is not None and n is not None and n != len(arr):
            raise ValueError(f"region_masks got {len(arr)} image(s) but landmarks for {n}; give one face's "
                             "landmarks [68, 2] per image (e.g. np.repeat(points[None], len(images), 0)).")
    note = None
    if source in ("auto", "bisenet"):
        from . import parsing

        if images is None:
            raise ValueError(f"source={source!r} needs the images")
        use = source == "bisenet" or net is not None
        if not use:
            if parsing.bisenet_available():
                use = True
            else:
                from ..weights import cache_path
                note = (f"BiSeNet checkpoint not found (verified) in V2S_NB_WEIGHTS_DIR or the weights cache "
                        f"({cache_path('bisenet-face-parsing')}); using landmark masks. Run "
                        "v2s_nb.weights.fetch('bisenet-face-parsing') once to use BiSeNet.")
        if use:
            try:
                if net is None:
                    net = parsing.load_bisenet(device=device)
                labels = parsing.parse(arr, net, batch_size=batch_size, device=device,
                                       size=parse_size or parsing.PARSE_SIZE)
                regs = parsing.labels_to_regions(labels, region_classes)
                found = np.stack([regs[k].any(axis=(1, 2)) for k in regs if k != "rest"]).any(axis=0)
                return RegionMasks({k: regs[k] for k in REGIONS}, source="bisenet", found=found)
            except Exception as e:  # noqa: BLE001 - 'auto' must still give masks; 'bisenet' re-raises
                if source == "bisenet":
                    raise
                note = f"BiSeNet could not be used ({type(e).__name__}: {e}); using landmark masks."
        warnings.warn(note, RegionSourceWarning, stacklevel=2)

    if landmarks is None:
        if images is None:
            raise ValueError("landmark masks need the images or their landmarks")
        from .landmark_detection import landmarks as detect
        landmarks = detect(arr, progress=False)
    if image_size is None:
        raise ValueError("give image_size (width, height) when images are not given")
    found = getattr(landmarks, "found", None)
    masks = masks_from_landmarks(landmarks, image_size, dilate=dilate)
    if found is not None:
        masks.found = np.asarray(found, bool) & masks.found
    masks.note = note
    return masks
