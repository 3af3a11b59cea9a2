"""Preparing a re-enactment step by step: faces → inversions → channels → pose codes → a :class:`Reenactor`.

This is what ``v2s-nb reenact`` does before it renders (the command line calls these functions), split into one
function per stage of the paper so that each result can be looked at::

    from v2s_nb import prepare as P
    from v2s_nb.stylegan3 import load_generator

    G = load_generator("stylegan3-r-ffhq-1024", device="cuda")
    faces = P.faces("me.png", "talk.mp4", resolution=G.img_resolution)       # section 3.2
    faces.show()                                                               # the photo, aligned crops, landmarks
    inv = P.inversions(G, faces, encoder="restyle-e4e-ffhq")                  # section 3.1 (+ PTI of the reference)
    inv.show()                                                                 # reconstructions beside the frames, PSNR
    ch = P.channels(inv, layers="3-7")                                         # section 3.4
    ch.show()                                                                  # masks and the chosen channels' maps
    pose = P.pose_codes(inv)                                                   # section 3.3, eq 4
    pose.show()                                                                # yaw / pitch / roll, target vs achieved
    r = P.reenactor(inv, ch, pose)                                             # section 3.5-3.6
    frames = r.render_video()

Each stage returns a small value (:class:`Faces`, :class:`Inversions`, :class:`Channels`, :class:`PoseCodes`)
whose ``repr`` says what it holds, with ``show()`` (draws its picture in a notebook) and ``figure()`` (the same
picture as a matplotlib Figure). Every stage caches what it computed under ``cache`` (default
:func:`default_cache`: ``<v2s_nb cache>/prepare``, per user), keyed by the inputs (file contents, generator
weights, settings), so a second call with the same inputs reads the results back. Progress goes to ``say``
(default: ``print``, i.e. stdout) and to tqdm.auto bars (``progress=False`` turns them off).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .method.invert import DEFAULTS as _INVERT_DEFAULTS, STEPS_NEXT as _STEPS_NEXT
from .validate import smoothing_kernel

__all__ = ["FaceClip", "Faces", "Inversions", "Channels", "PoseCodes", "default_cache", "faces", "face_clip",
           "inversions", "channels", "pose_codes", "reenactor", "reference_masks", "cache_key", "save_arrays",
           "load_arrays"]

Say = Callable[[str], None] | None
POSE_SOURCES = ("driving", "co-driving")


def default_cache() -> Path:
    """``<v2s_nb cache>/prepare`` (:func:`v2s_nb.weights.cache_dir`: ``$V2S_NB_CACHE``, else
    ``$XDG_CACHE_HOME/v2s_nb``, else ``~/.cache/v2s_nb``): per user, not shared through ``/tmp``."""
    from .weights import cache_dir

    return cache_dir() / "prepare"


def _cache(cache) -> Path:
    if cache is False:  # the stages' results live in the folder (resume, reruns): there is no "off"
        raise ValueError("cache=False: the stages keep their results in a folder (that is how a rerun or an "
                         "interrupted run resumes); pass a folder, or None (or True) for the per-user default")
    folder = default_cache() if cache is None or cache is True else Path(cache).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"cache must be a folder, but {folder} is a file; pass another folder (or None "
                                 "for the per-user default)")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _tell(say: Say, msg: str) -> None:
    if say is not None and say is not False:  # say=False reads as "quiet", as None does
        say(msg)


# ------------------------------------------------------------------------------------------ cache helpers


def cache_key(obj) -> str:
    """A cache file's key for ``obj`` (a dict of settings): :func:`v2s_nb.caching.json_key` cut to
    :data:`~v2s_nb.caching.KEY_CHARS` hex digits."""
    from .caching import KEY_CHARS, json_key

    return json_key(obj)[:KEY_CHARS]


def _arrays_digest(arrays) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_arrays(path, **arrays) -> None:
    """Save arrays as ``.npz``, atomically, with a ``_sha256`` entry over all of them (checked by
    :func:`load_arrays`)."""
    from .atomic import write_atomic

    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    objects = [k for k, a in arrays.items() if a.dtype.hasobject]
    if objects:  # saved as pickles, which load_arrays refuses to read: the entry would never be used
        raise TypeError(f"save_arrays stores numbers and strings only; {objects} hold Python objects (ragged lists "
                        "or None?): give arrays of one shape and a numeric dtype")
    digest = np.asarray(_arrays_digest(arrays))
    write_atomic(path, lambda f: np.savez(f, _sha256=digest, **arrays))


def load_arrays(path, keys=()) -> dict | None:
    """Arrays written by :func:`save_arrays`, or None (with a warning naming the file and why) when the file is
    unreadable (truncated), lacks ``keys``, or its arrays do not match their stored digest (altered)."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as d:
            out = {k: d[k] for k in d.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        why = f"unreadable ({type(e).__name__}: {str(e)[:100]})"
    else:
        digest = str(out.pop("_sha256", ""))
        missing = [k for k in keys if k not in out]
        if missing:
            why = f"missing {missing}"
        elif digest != _arrays_digest(out):
            why = "its arrays do not match their stored digest (altered, or written by an older version)"
        else:
            return out
    from .caching import warn_unusable

    warn_unusable(path, why, stacklevel=4)
    return None


# ------------------------------------------------------------------------------------------ pictures


def _display(fig, dpi: int = 100) -> None:
    """Show a Figure in IPython / Jupyter as a PNG (whatever the matplotlib backend); nothing in plain Python."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:  # plain Python: nothing to draw into
        return
    if get_ipython() is not None:
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        display(Image(data=buf.getvalue(), format="png"))


def _new_figure(rows: int, cols: int, size: float = 1.9, extra_height: float = 0.35):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size * cols, (size + extra_height) * rows), layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _picks(n: int, k: int) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist()))


#: The most frames a stage's figure shows per clip (each is a column; the players show every frame).
MAX_FIGURE_FRAMES = 24


def _figure_columns(frames, clips, least: int) -> int:
    """Columns of a figure of ``frames`` frames per clip: ``frames`` checked (1..:data:`MAX_FIGURE_FRAMES`), no more
    than the longest clip has, and at least ``least``."""
    frames = _check_int("frames", frames, 1, MAX_FIGURE_FRAMES)
    return max(min(frames, max(len(c) for c in clips)), least)


class _Shows:
    """``show()`` draws :meth:`figure` in a notebook (nothing in plain Python); ``figure()`` returns it."""

    def figure(self, **kwargs):  # pragma: no cover - every stage overrides it
        raise NotImplementedError

    def show(self, **kwargs) -> None:
        """Draw this stage's picture in the notebook (see :meth:`figure` for the arguments)."""
        _display(self.figure(**kwargs))


# ------------------------------------------------------------------------------------------ 1 · faces


_FACES_KEYS = ("aligned", "points", "fps", "track", "interpolated")
# a video's decoding errors (frame, ffmpeg's message), kept with its faces so a cache hit reports them too
_DECODE_KEYS = ("decode_frames", "decode_messages")


def _decode_arrays(errs) -> dict:
    return {"decode_frames": np.asarray([f for f, _ in errs], np.int64).reshape(-1),
            "decode_messages": np.asarray([m for _, m in errs], str).reshape(-1)}


@dataclasses.dataclass(repr=False)
class FaceClip:
    """One input after the face front end.

    Attributes:
        path: the file. kind: ``'image'`` or ``'video'``.
        aligned: uint8 [T, R, R, 3], FFHQ-aligned crops at the generator's resolution R (T = 1 for an image).
        points: float [T, 68, 2], the landmarks in crop pixels.
        fps: frames per second (0 for an image).
        track: float [T, 4], the (smoothed) canonical track: tx, ty (image widths), angle (degrees), face size
            (an image: zeros [1, 3], it has no track).
        interpolated: bool [T], frames without a detected face (filled from their neighbours).
        cached: read back from the cache instead of computed.
        landmarks_from: the front end that found the landmarks: 'hog' / 'cnn' (dlib's) or 'rfb+pfld' ('' unknown).
    """

    path: Path
    kind: str
    aligned: np.ndarray
    points: np.ndarray
    fps: float
    track: np.ndarray
    interpolated: np.ndarray
    cached: bool = False
    landmarks_from: str = ""

    def __len__(self) -> int:
        return int(len(self.aligned))

    @property
    def resolution(self) -> int:
        return int(self.aligned.shape[1])

    def __repr__(self) -> str:
        what = "1 image" if self.kind == "image" else f"{len(self)} frames at {self.fps:g} fps"
        gaps = int(np.sum(self.interpolated))
        return (f"FaceClip({self.path.name}: {what}, {self.resolution} px crops"
                + (f", {gaps} frame(s) without a face interpolated" if gaps else "")
                + (", from the cache" if self.cached else "") + ")")


def face_clip(path, kind: str, resolution: int, *, cache=None, detector: str = "hog", upsample: int = 1,
              smooth: int = 3, smooth_method: str = "robust", strict: bool = False, device=None,
              progress: bool = True, say: Say = print) -> FaceClip:
    """Landmarks, FFHQ-aligned crops at ``resolution`` px, crop landmarks and the (smoothed) canonical track of an
    image (``kind='image'``) or a video file (``kind='video'``); cached in ``cache`` keyed by the file's bytes
    and the settings, a video's entry with the decoding errors ffmpeg concealed (frames and messages). Those are
    warned about (:class:`v2s_nb.video.CorruptFramesWarning`) or, with ``strict``, raised
    (:class:`v2s_nb.video.VideoReadError`) on every call, cached or not. ``detector`` / ``upsample`` / ``device``:
    as in :func:`faces`. Raises :class:`v2s_nb.face.NoFaceError` when no face is found."""
    from .face import NoFaceError, align_face, align_video, canonical_track, landmarks
    from .face.landmark_detection import front_end_name
    from .caching import sha256_file

    if kind not in ("image", "video"):
        raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
    smoothing_kernel(smooth, "smooth")  # before the landmarks, not after
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    folder = _cache(cache)
    settings = {"sha": sha256_file(path), "kind": kind, "res": int(resolution), "detector": detector,
                "upsample": upsample, "smooth": smooth, "smooth_method": smooth_method,
                "v": 5}  # 3: videos read frame for frame as decoded (a variable-rate one had duplicates before);
    # outlier frames aligned as frames without a face (they kept the false detection's crop before). 4: the first
    # face is a confident one, not the largest box (landmarks()); the inversions' cache, keyed by the crops, still hits.
    # 5: the outlier test takes each window's trend out; non-square pixels made square, transparency over white, the
    # default one of several video streams read, photos with a colour profile converted to sRGB
    f = folder / f"faces-{kind}-{cache_key(settings)}.npz"
    front_end = front_end_name(detector)
    out = load_arrays(f, _FACES_KEYS + (_DECODE_KEYS if kind == "video" else ())) if f.is_file() else None
    if out is not None:
        if kind == "video":
            from .video import report_decode_errors

            errs = list(zip(out["decode_frames"].tolist(), out["decode_messages"].tolist()))
            report_decode_errors(path, errs, strict, stacklevel=3)
        return FaceClip(path, kind, out["aligned"], out["points"], float(out["fps"]), out["track"],
                        out["interpolated"].astype(bool), cached=True, landmarks_from=front_end)
    if kind == "image":
        from .images import read_image

        img = read_image(path)  # EXIF orientation, CMYK / 16-bit / palette / alpha handled
        tr = landmarks(img, detector=detector, upsample=upsample, progress=False, device=device)
        if not tr.found[0]:
            other = "detector='cnn'" if detector == "rfb" else "detector='cnn', detector='rfb' or upsample=2"
            raise NoFaceError(f"no face was found in the reference image {path}; give a photo with one clearly "
                              f"visible, roughly frontal face (or try {other})")
        al = align_face(img, tr.points[0], resolution)
        out = {"aligned": al.image[None], "points": al.to_crop(tr.points[0])[None], "fps": 0.0,
               "track": np.zeros((1, 3)), "interpolated": np.zeros(1, bool)}
    else:
        from .video import decode_errors, report_decode_errors, stream_video

        # decoding errors ffmpeg concealed: a warning naming the frames (an error with strict), kept in the cache
        errs = decode_errors(path)
        report_decode_errors(path, errs, strict, stacklevel=3)
        # the video is read twice, a chunk at a time (landmarks, then the crops): decoded whole, a minute of 1080p
        # video held 11 GB; now only the crops are kept
        with stream_video(path) as stream:
            tr = landmarks(stream, detector=detector, upsample=upsample, progress=progress, device=device)
        fps = float(stream.fps)
        _tell(say, f"{path}: {len(tr)} frames {stream.width}x{stream.height} at {fps:g} fps")
        if not tr.found.any():
            raise NoFaceError(f"no face was found in any frame of {path}")
        if (~tr.found).any():
            _tell(say, f"no face in frame(s) {tr.missing.tolist()} of {path}: track interpolated from neighbours "
                       "(the frames' codes are interpolated too when the reenactor is made)")
        track = canonical_track(tr)
        if smooth and len(track) >= smooth:
            track = track.smooth(smooth, method=smooth_method)
        elif smooth:
            _tell(say, f"{path} has {len(track)} frame(s), fewer than the smoothing kernel ({smooth}): track not "
                       "smoothed")
        if track.outliers.any():
            _tell(say, f"outlier frame(s) {np.flatnonzero(track.outliers).tolist()} of {path} (face far from its "
                       "neighbours, e.g. a false detection): re-interpolated from neighbours (codes too)")
            # the false detection's crop and landmarks go too: the frame is aligned as one without a face (its crop
            # square from its neighbours', its points NaN), so its inversion and pose aren't those of a non-face
            gone = track.outliers
            tr = dataclasses.replace(tr, points=np.where(gone[:, None, None], np.nan, tr.points),
                                     boxes=np.where(gone[:, None], np.nan, tr.boxes), found=tr.found & ~gone)
        with stream_video(path) as stream:
            clip = align_video(stream, tr, resolution, progress=progress)
        pts = np.einsum("tij,tkj->tki", clip.frame_to_crop[:, :2, :2], tr.points) + clip.frame_to_crop[:, None, :2, 2]
        out = {"aligned": clip.frames, "points": pts, "fps": fps, "track": track.as_array(face_size=True),
               "interpolated": track.interpolated, **_decode_arrays(errs)}
    save_arrays(f, **{k: np.asarray(v) for k, v in out.items()})
    return FaceClip(path, kind, np.asarray(out["aligned"]), np.asarray(out["points"]), float(out["fps"]),
                    np.asarray(out["track"]), np.asarray(out["interpolated"], bool), cached=False,
                    landmarks_from=front_end)


@dataclasses.dataclass(repr=False)
class Faces(_Shows):
    """Stage 1 (section 3.2): the reference photo and the driving (and co-driving) videos, aligned.

    ``reference`` / ``driving`` / ``co_driving`` are :class:`FaceClip` (``co_driving`` may be None);
    ``seconds``: how long the stage took."""

    reference: FaceClip
    driving: FaceClip
    co_driving: FaceClip | None = None
    seconds: float = 0.0

    @property
    def resolution(self) -> int:
        return self.reference.resolution

    @property
    def cached(self) -> bool:
        return all(c.cached for c in self.clips().values())

    def clips(self) -> dict[str, FaceClip]:
        """{'reference', 'driving'[, 'co-driving']: FaceClip}."""
        out = {"reference": self.reference, "driving": self.driving}
        if self.co_driving is not None:
            out["co-driving"] = self.co_driving
        return out

    def __repr__(self) -> str:
        parts = [f"{k} {c.path.name} ({'image' if c.kind == 'image' else f'{len(c)} frames at {c.fps:g} fps'})"
                 for k, c in self.clips().items()]
        found = sorted({c.landmarks_from for c in self.clips().values() if c.landmarks_from})
        return (f"Faces({self.resolution} px aligned crops" + (f", {' / '.join(found)} landmarks" if found else "")
                + ": " + "; ".join(parts)
                + ("; from the cache" if self.cached else f"; {self.seconds:.1f} s") + ")")

    def figure(self, frames: int = 5, landmarks: bool = True):
        """The reference photo as given and its aligned crop, then ``frames`` aligned frames of each video, with
        the 68 landmarks (dots) when ``landmarks``."""
        from .images import read_image

        videos = [(k, c) for k, c in self.clips().items() if c.kind == "video"]
        cols = _figure_columns(frames, [c for _, c in videos], 2)
        fig, axes = _new_figure(1 + len(videos), cols)
        try:  # read again: the stage keeps only the crops (the photo may be large)
            photo = read_image(self.reference.path)
        except (OSError, ValueError) as e:  # moved, deleted (a notebook's upload folder), unreadable: the crops stay
            axes[0, 0].text(0.5, 0.5, f"reference photo\nno longer readable:\n{self.reference.path.name}\n"
                                      f"({type(e).__name__})", ha="center", va="center", fontsize=7, wrap=True)
        else:
            axes[0, 0].imshow(photo)
            axes[0, 0].set_title(f"reference photo\n{photo.shape[1]}x{photo.shape[0]} px", fontsize=8)
        rows = [("reference", self.reference, [0])] + [(k, c, _picks(len(c), frames)) for k, c in videos]
        for r, (name, clip, picks) in enumerate(rows):
            for col, j in enumerate(picks):
                ax = axes[r, col + (1 if r == 0 else 0)]
                ax.imshow(clip.aligned[j])
                if landmarks and np.isfinite(clip.points[j]).all():
                    ax.scatter(clip.points[j, :, 0], clip.points[j, :, 1], s=1.5, c="lime", linewidths=0)
                title = "aligned" if r == 0 else f"{name} {j}" + (" (interp.)" if clip.interpolated[j] else "")
                ax.set_title(title, fontsize=8)
        for ax in axes.ravel():
            if not ax.images and not ax.texts:
                ax.axis("off")
        fig.suptitle(f"faces: FFHQ-aligned crops at {self.resolution} px with their landmarks", fontsize=9)
        return fig


def faces(reference, driving, co_driving=None, *, resolution: int, cache=None, detector: str = "hog",
          upsample: int = 1, smooth: int = 3, smooth_method: str = "robust", strict: bool = False, device=None,
          progress: bool = True, say: Say = print) -> Faces:
    """Stage 1: landmarks, FFHQ-aligned crops at ``resolution`` px (the generator's ``img_resolution``) and
    smoothed canonical tracks of the reference photo and the driving / co-driving videos.

    Args:
        reference: a face photo (PNG / JPG ...). driving: a video file. co_driving: another video, or None / "".
        resolution: side of the aligned crops in pixels (use ``G.img_resolution``).
        cache: folder for the results (default :func:`default_cache`).
        detector: 'hog' (default) or 'cnn': dlib's face detector and its 68-point shape predictor, on the CPU;
            'rfb': the RFB-320 face detector and the PFLD landmark CNN, the paper's front end (the one its P_r and
            the keypoint metric read), on ``device``; their weights are downloaded once
            (:func:`v2s_nb.weights.fetch`). Each detector's results are cached apart.
        upsample: dlib's detectors only: how many times a frame is doubled before detection (0-4).
        device: where the 'rfb' front end's CNNs run (default the CPU).
        smooth / smooth_method: the canonical track's kernel (odd, >= 3; 0 = off) and method
            ('robust' | 'mean' | 'gaussian').
        strict: stop on decoding errors in a video (default: warn, naming the frames).
    """
    t0 = time.perf_counter()
    _check_choice("detector", detector, ("hog", "cnn", "rfb"))
    if device is not None:
        device = torch.device(device)  # a bad name fails here, before any file is read
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r}, but PyTorch sees no CUDA GPU on this machine; use "
                             "device='cpu' (or None)")
    _check_choice("smooth_method", smooth_method, ("robust", "mean", "gaussian"))
    _check_int("resolution", resolution, 16, 4096)
    _check_int("upsample", upsample, 0, 4)
    smoothing_kernel(smooth, "smooth")
    inputs = {"reference": reference, "driving": driving, "co_driving": co_driving}
    for name, p in inputs.items():  # an array here failed in pathlib, or as 'truth value ... ambiguous'
        if p is not None and not isinstance(p, (str, os.PathLike)):
            save = "v2s_nb.images.save_image" if name == "reference" else "v2s_nb.video.write_video"
            raise TypeError(f"{name} must be the path of a {'photo' if name == 'reference' else 'video'} file, got "
                            f"{type(p).__name__}: save it first ({save}); the stages are cached by their files")
    co_driving = co_driving or None  # "" = no co-driving video, as in the notebook's parameters
    inputs["co_driving"] = co_driving
    for name, p in inputs.items():
        if p is None and name != "co_driving":
            raise ValueError(f"{name} is None; pass the path of a {'photo' if name == 'reference' else 'video'}")
        if p is not None and not Path(p).is_file():
            raise FileNotFoundError(f"input file not found: {p} ({name})")
    kw = dict(cache=cache, detector=detector, upsample=upsample, smooth=smooth, smooth_method=smooth_method,
              strict=strict, device=device, progress=progress, say=say)
    ref = face_clip(reference, "image", resolution, **kw)
    drv = face_clip(driving, "video", resolution, **kw)
    co = face_clip(co_driving, "video", resolution, **kw) if co_driving is not None else None
    if co is not None and len(co) != len(drv):  # said here, before any frame is inverted, not after all were
        from .method.reenact import LengthMismatchWarning

        n = min(len(drv), len(co))
        warnings.warn(f"the driving video {drv.path.name} has {len(drv)} frames and the co-driving video "
                      f"{co.path.name} {len(co)}: both are truncated to the shorter ({n} frames), the frames past it "
                      f"are not inverted. Trim the longer video to {n} frames (or give videos of the same length) "
                      "to silence this.", LengthMismatchWarning, stacklevel=2)
        drv, co = _first_frames(drv, n), _first_frames(co, n)
    return Faces(ref, drv, co, seconds=time.perf_counter() - t0)


def _first_frames(clip: FaceClip, n: int) -> FaceClip:
    """``clip`` cut to its first ``n`` frames (the cache entry keeps them all)."""
    if len(clip) <= n:
        return clip
    return dataclasses.replace(clip, aligned=clip.aligned[:n], points=clip.points[:n], track=clip.track[:n],
                               interpolated=clip.interpolated[:n])


def _check_choice(name, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_int(name, value, lo, hi) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------------------ 2 · inversions


@dataclasses.dataclass(repr=False)
class Inversions(_Shows):
    """Stage 2 (section 3.1): W+ codes of the reference and of every driving / co-driving frame.

    Attributes:
        G: the generator the codes are for (pose encoding and channel discovery run on it).
        G_render: the generator to render with: ``G`` fine-tuned around the reference (PTI) or ``G`` itself.
        faces: the :class:`Faces` that were inverted.
        reference / driving / co_driving: :class:`~v2s_nb.method.invert.Inversion` (codes [N, num_ws, w_dim] on the
            CPU, PSNR in dB per frame); ``co_driving`` may be None.
        method: ``'encoder'`` (ReStyle) or ``'optimisation'``; ``encoder``: its name / path (or None).
        pti_steps: PTI steps run on the reference (0: no PTI); ``reference_psnr_pti``: the reference's PSNR (dB)
            rendered by ``G_render`` (None without PTI).
        seconds: how long the stage took.
    """

    G: Any
    G_render: Any
    faces: Faces
    reference: Any
    driving: Any
    co_driving: Any = None
    method: str = "optimisation"
    encoder: str | None = None
    pti_steps: int = 0
    reference_psnr_pti: float | None = None
    seconds: float = 0.0

    @property
    def w_ref(self) -> torch.Tensor:
        """The reference's code [num_ws, w_dim]."""
        return self.reference.ws[0]

    @property
    def ws_drive(self) -> torch.Tensor:
        return self.driving.ws

    @property
    def ws_codrive(self) -> torch.Tensor | None:
        return None if self.co_driving is None else self.co_driving.ws

    def clips(self) -> dict[str, Any]:
        out = {"reference": self.reference, "driving": self.driving}
        if self.co_driving is not None:
            out["co-driving"] = self.co_driving
        return out

    def __repr__(self) -> str:
        how = (f"ReStyle encoder {self.encoder}" if self.method == "encoder" else "optimisation")
        ref = f"reference {float(self.reference.psnr[0]):.1f} dB"
        if self.pti_steps:
            ref += f" (after {self.pti_steps} PTI steps: {self.reference_psnr_pti:.1f} dB)"
        vids = "; ".join(f"{k} {len(v)} frames, {np.min(v.psnr):.1f}..{np.max(v.psnr):.1f} dB"
                         for k, v in self.clips().items() if k != "reference")
        return (f"Inversions({how}, W+ {tuple(self.w_ref.shape)}: {ref}; {vids}; "
                f"rendering with {'the PTI-tuned copy of G' if self.G_render is not self.G else 'G'}; "
                f"{self.seconds:.1f} s)")

    def figure(self, frames: int = 4):
        """Each clip's aligned frames (top) above their reconstructions G(w) (bottom) with the PSNR (dB); the
        reference also as rendered by the PTI generator when there is one."""
        clips = self.clips()
        faces = self.faces.clips()
        pti = self.G_render is not self.G
        cols = _figure_columns(frames, [v for k, v in clips.items() if k != "reference"], 3 if pti else 2)
        fig, axes = _new_figure(2 * len(clips), cols)
        for r, (name, inv) in enumerate(clips.items()):
            picks = [0] if name == "reference" else _picks(len(inv), frames)
            recon = _render(self.G, inv.ws[picks])
            for col, j in enumerate(picks):
                axes[2 * r, col].imshow(faces[name].aligned[j])
                axes[2 * r, col].set_title(f"{name} {j}" if name != "reference" else "reference (aligned)",
                                           fontsize=8)
                axes[2 * r + 1, col].imshow(recon[col])
                axes[2 * r + 1, col].set_title(f"G(w): {float(inv.psnr[j]):.1f} dB", fontsize=8)
            if name == "reference" and pti:
                axes[2 * r + 1, 1].imshow(_render(self.G_render, inv.ws[:1])[0])
                axes[2 * r + 1, 1].set_title(f"PTI G(w): {self.reference_psnr_pti:.1f} dB", fontsize=8)
        for ax in axes.ravel():
            if not ax.images:
                ax.axis("off")
        how = f"ReStyle encoder ({self.encoder})" if self.method == "encoder" else "optimisation"
        fig.suptitle(f"inversions by {how}: frames above, reconstructions below (PSNR)", fontsize=9)
        return fig


@torch.no_grad()
def _render(G, ws) -> np.ndarray:
    from .images import to_uint8

    dev = next(G.parameters()).device
    return to_uint8(G.synthesis(torch.as_tensor(ws).to(dev, torch.float32)).float().cpu(), range_check=False)


def _encoder(G, encoder, note: Say):
    """The ReStyle encoder ``encoder`` when it was trained with G's weights, else None (with a message)."""
    if encoder is None:
        return None
    from .method.encoder import encoder_for

    return encoder_for(G, encoder, say=None if note is None else (lambda m: note(
        m + " (pass the generator it was trained with, e.g. --checkpoint stylegan3-r-ffhq-1024)")))


def _pti(G, ref_aligned, w_ref, cache: Path, steps: int, progress: bool, say: Say):
    """G fine-tuned around the reference (PTI), cached in ``cache`` keyed by G, the code, the image and steps.
    A cached generator is used only when its tensors match the digest saved with them (one without a digest,
    from an older v2s_nb, cannot be checked): otherwise it is tuned again, with a CacheWarning. An interrupted
    tuning resumes from its last saved state (``pti-<key>.resume.pt``)."""
    from .caching import generator_hash
    from .method.invert import pivotal_tuning
    from .stylegan3 import save_generator
    from .stylegan3.checkpoint import load_checkpoint

    from .caching import warn_unusable
    from .stylegan3 import SnapshotError

    key = cache_key({"g": generator_hash(G), "w": w_ref.numpy().tobytes().hex(),
                     "img": hashlib.sha256(ref_aligned.tobytes()).hexdigest(), "steps": steps,
                     "locality": "whole-code"})  # (tuned before the locality step was PTI's: not reused)
    f = cache / f"pti-{key}.safetensors"
    if f.is_file():
        try:
            G_pti = load_checkpoint(f, require_digest=True).to(device=G.device, dtype=next(G.parameters()).dtype)
        except (SnapshotError, OSError, ValueError) as e:  # damaged: done again, not a stop
            warn_unusable(f, f"unreadable ({e})")
        else:
            _tell(say, f"PTI generator reused ({f.name})")
            return G_pti
    _tell(say, f"pivotal tuning of the reference ({steps} steps)")
    # its state is saved every minute there: an interrupted tuning goes on from it (removed once done)
    G_pti = pivotal_tuning(G, ref_aligned, w_ref[None], steps=steps, progress=progress,
                           checkpoint=cache / f"pti-{key}.resume.pt")
    save_generator(G_pti, f)
    return G_pti


#: Settings of the inversion that :func:`inversions` makes itself (its own arguments), not ``invert_kwargs``'s.
_STAGE_SETS = {"steps", "steps_first", "steps_next", "batch_size", "cache_dir", "checkpoint_dir", "progress",
               "frame_indices", "init"}


def inversions(G, faces: Faces, *, encoder=None, encoder_iters: int = 3, refine_steps: int = 0,
               invert_steps: int = _INVERT_DEFAULTS["steps"], invert_steps_next: int = _STEPS_NEXT,
               invert_batch_size: int = 8, batch_size: int = 8,
               invert_kwargs: dict | None = None, pti: bool | None = None, pti_steps: int = 350, cache=None,
               progress: bool = True, say: Say = print, note: Say = "say") -> Inversions:
    """Stage 2: W+ codes of the reference photo and of every frame, then PTI of the reference.

    With an ``encoder`` (a :class:`~v2s_nb.method.encoder.ReStyleEncoder`, a ``.pt`` path or a known name such as
    ``'restyle-e4e-ffhq'``) that was trained with ``G``'s weights, every image is encoded (``encoder_iters``
    ReStyle iterations, ``batch_size`` images at a time), optionally refined by ``refine_steps`` optimisation steps.
    Otherwise, and with a message saying so when an encoder was given, codes come from optimisation: the
    reference with ``invert_steps``, the videos in warm-started batches of ``invert_batch_size`` frames
    (``invert_steps`` for the first, ``invert_steps_next`` for the others; each finished batch is saved, so an
    interrupted call resumes). ``invert_kwargs``: other settings of :func:`~v2s_nb.method.invert.invert` for
    the optimisation (e.g. ``lr``, ``w_noise``).

    ``pti``: pivotal tuning of the reference (``pti_steps`` steps) for ``G_render``; default on for trained
    generators, off for random-weight ones. ``note``: where the encoder-fallback message goes (default: ``say``).
    Everything is cached under ``cache`` (``<cache>/inversions``, ``<cache>/pti-*.safetensors``).
    """
    from .method.encoder import invert_with_encoder
    from .caching import generator_hash
    from .method.invert import invert, invert_sequence, prepare_images, psnr_from_mse

    if not isinstance(faces, Faces):
        raise TypeError(f"faces must be the Faces of v2s_nb.prepare.faces(...), got {type(faces).__name__}")
    if not (hasattr(G, "synthesis") and hasattr(G, "img_resolution")):
        raise TypeError(f"G must be a generator, got {type(G).__name__} {str(G)[:60]!r}: load one first, e.g. "
                        "G = v2s_nb.stylegan3.load_generator('stylegan3-r-ffhq-1024')")
    own = sorted(set(invert_kwargs or {}) & _STAGE_SETS)  # before any work, not after the reference is inverted
    if own:
        raise ValueError(f"invert_kwargs sets {own}, which this stage decides itself: use its own arguments "
                         "(invert_steps, invert_steps_next, invert_batch_size, cache, progress) instead")
    res = int(G.img_resolution)
    if faces.resolution != res:
        raise ValueError(f"the faces were aligned at {faces.resolution} px but the generator draws {res} px; call "
                         f"faces(..., resolution=G.img_resolution)")
    for name, v, lo in (("encoder_iters", encoder_iters, 1), ("refine_steps", refine_steps, 0),
                        ("invert_steps", invert_steps, 1), ("invert_steps_next", invert_steps_next, 1),
                        ("invert_batch_size", invert_batch_size, 1), ("batch_size", batch_size, 1),
                        ("pti_steps", pti_steps, 1)):
        _check_int(name, v, lo, 100_000)
    note = say if note == "say" else note
    t0 = time.perf_counter()
    folder = _cache(cache)
    inv_dir = folder / "inversions"
    ref, drv, co = faces.reference, faces.driving, faces.co_driving
    E = _encoder(G, encoder, note)
    if E is not None:
        _tell(say, f"ReStyle-{E.kind} encoder ({encoder if isinstance(encoder, (str, Path)) else E.source}), "
                   f"{encoder_iters} iterations" + (f" + {refine_steps} refinement steps" if refine_steps else ""))
        enc = dict(n_iters=encoder_iters, batch_size=batch_size, refine_steps=refine_steps, cache_dir=inv_dir,
                   progress=progress)
        inv_ref = invert_with_encoder(E, G, ref.aligned, **dict(enc, batch_size=1))
        inv_drv = invert_with_encoder(E, G, drv.aligned, **enc)
        inv_co = invert_with_encoder(E, G, co.aligned, **enc) if co is not None else None
    else:
        _tell(say, f"optimisation: reference {invert_steps} steps, videos {invert_steps} (first batch of "
                   f"{invert_batch_size}) / {invert_steps_next} (warm-started batches)")
        kw = dict(invert_kwargs or {})
        inv_ref = invert(G, ref.aligned, steps=invert_steps, cache_dir=inv_dir, progress=progress, **kw)
        seq = dict(steps_first=invert_steps, steps_next=invert_steps_next, cache_dir=inv_dir,
                   batch_size=invert_batch_size, progress=progress, **kw)
        # Each finished batch is saved under batches/<role>/<key of frames, generator, settings>/ (one folder per
        # run, so a shared cache holds several), so an interrupted call resumes from the batches it finished.
        g_sha = generator_hash(G)

        def batches(role, clip):  # keyed without the cache folder's path: a moved folder still resumes
            return inv_dir / "batches" / role / cache_key({
                "frames": hashlib.sha256(clip.aligned.tobytes()).hexdigest(), "g": g_sha,
                "settings": {k: v for k, v in seq.items() if k not in ("progress", "cache_dir")}})

        inv_drv = invert_sequence(G, drv.aligned, checkpoint_dir=batches("driving", drv), **seq)
        inv_co = (invert_sequence(G, co.aligned, checkpoint_dir=batches("co-driving", co), **seq)
                  if co is not None else None)
    if pti is None:
        pti = not getattr(G, "is_random", False)
    G_render, psnr_pti = G, None
    if pti:
        G_render = _pti(G, ref.aligned, inv_ref.ws[0], folder, pti_steps, progress, say)
        target = prepare_images(ref.aligned, res)
        mse = float((inv_ref.images(G_render) - target).square().mean())
        psnr_pti = float(psnr_from_mse(mse))
    return Inversions(G, G_render, faces, inv_ref, inv_drv, inv_co, method="encoder" if E is not None else
                      "optimisation", encoder=None if E is None else str(E.source),
                      pti_steps=int(pti_steps) if pti else 0, reference_psnr_pti=psnr_pti,
                      seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ 3 · channels


def reference_masks(reference: FaceClip, source: str = "auto", device=None):
    """Region masks of the aligned reference (the paper's SegNet(I_ref^c)), :class:`~v2s_nb.face.RegionMasks`
    bool [1, R, R]: BiSeNet (``'bisenet'``; ``'auto'`` when its weights are cached) or landmark hulls
    (``'landmarks'``; ``'auto'`` otherwise, with ``.note`` saying why)."""
    from .face import RegionSourceWarning, region_masks

    _check_choice("regions", source, ("auto", "bisenet", "landmarks"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RegionSourceWarning)  # said in .note instead
        return region_masks(reference.aligned, landmarks=reference.points, source=source,
                            image_size=reference.resolution, device=device)


@dataclasses.dataclass(repr=False)
class Channels(_Shows):
    """Stage 3 (section 3.4): the S channels of each region (``X_s``) found on the aligned reference.

    Attributes:
        sets: :class:`~v2s_nb.method.local_channels.ChannelSets` (IoU scores, selected channels per region and
            layer). masks: the reference's :class:`~v2s_nb.face.RegionMasks` they were scored against.
        layers: the W+ rows (tuple of int) whose S layers were searched. inversions: the stage-2 result.
    """

    sets: Any
    masks: Any
    layers: tuple
    inversions: Inversions
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        """{region: number of channels over all searched layers}."""
        return {reg: int(sum(n for n in by_layer.values())) for reg, by_layer in self.sets.counts().items()}

    def __repr__(self) -> str:
        rows = f"rows {self.layers[0]}-{self.layers[-1]}" if len(self.layers) > 1 else f"row {self.layers[0]}"
        return (f"Channels({rows}, masks from {self.masks.source}: "
                + ", ".join(f"{k} {v}" for k, v in self.counts().items())
                + f" channels; t_fg {self.sets.settings.get('t_fg'):g}, t_bg {self.sets.settings.get('t_bg'):g}"
                + ("; from the cache" if getattr(self.sets, "from_cache", False) else "") + ")")

    def figure(self):
        """Per region: its mask on the aligned reference, and the mean (normalised) feature map of the channels
        chosen for it, drawn over the reference."""
        from .method.local_channels import layer_maps

        ref = self.inversions.faces.reference.aligned[0]
        regions = [r for r in self.sets.regions]
        fig, axes = _new_figure(2, max(len(regions), 1), size=2.2)
        maps = layer_maps(self.inversions.G, self.inversions.w_ref[None], self.sets.layers)
        res = ref.shape[0]
        for col, reg in enumerate(regions):
            axes[0, col].imshow(ref)
            axes[0, col].imshow(np.ma.masked_where(~self.masks[reg][0], self.masks[reg][0]), cmap="autumn",
                                alpha=0.55, vmin=0, vmax=1)
            axes[0, col].set_title(f"{reg} mask ({self.masks.source})", fontsize=8)
            acc, n = np.zeros((res, res)), 0
            for layer, sel in self.sets[reg].items():
                idx = np.asarray(sel.channels if hasattr(sel, "channels") else sel, np.int64)
                if len(idx):
                    m = torch.nn.functional.interpolate(maps[layer][:, idx], size=(res, res), mode="bilinear",
                                                        align_corners=False)
                    acc += m[0].sum(0).float().cpu().numpy()  # the maps are on G's device
                    n += len(idx)
            axes[1, col].imshow(ref)
            if n:
                axes[1, col].imshow(acc / n, cmap="magma", alpha=0.6, vmin=0, vmax=1)
            axes[1, col].set_title(f"{n} chosen channels: mean map", fontsize=8)
        fig.suptitle("S channels per region (X_s): the mask they were scored against, and where they fire",
                     fontsize=9)
        return fig


def channels(inversions: Inversions, *, layers="3-7", regions: str = "auto", t_fg: float | None = None,
             t_bg: float | None = None, cache=None, progress: bool = True, say: Say = print) -> Channels:
    """Stage 3: S-channel discovery (eq 5-6) on the S layers of W+ rows ``layers`` (default 3-7), scored against
    region masks of the aligned reference (``regions``: 'auto' | 'bisenet' | 'landmarks', see
    :func:`reference_masks`) with the reference's code as the latent. ``t_fg`` / ``t_bg``: selection thresholds
    (None: the package defaults 0.2 / 0.1). Cached under ``<cache>/channels``."""
    from .method.local_channels import discover
    from .method.reenact import layer_names, parse_layers

    if not isinstance(inversions, Inversions):
        raise TypeError(f"inversions must be the result of v2s_nb.prepare.inversions(...), got "
                        f"{type(inversions).__name__}")
    rows = parse_layers(layers)
    G = inversions.G
    names = layer_names(G, rows)
    for name, v in (("t_fg", t_fg), ("t_bg", t_bg)):
        if v is not None and not (isinstance(v, numbers.Real) and not isinstance(v, bool) and 0.0 <= float(v) <= 1.0):
            raise ValueError(f"{name} must be a number in [0, 1] (or None for the default), got {v!r}")
    t0 = time.perf_counter()
    folder = _cache(cache)
    masks = reference_masks(inversions.faces.reference, regions, device=next(G.parameters()).device)
    _tell(say, f"masks: {masks.source}" + (f" ({masks.note})" if masks.note else ""))
    cs = discover(G, inversions.w_ref[None], masks, layers=names, cache=folder / "channels", progress=progress)
    if t_fg is not None or t_bg is not None:
        cs = cs.reselect(t_fg, t_bg)
    return Channels(cs, masks, rows, inversions, seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ 4 · pose codes


@dataclasses.dataclass(repr=False)
class PoseCodes(_Shows):
    """Stage 4 (section 3.3, eq 4): the reference re-posed to each frame's head pose (W+ rows 0-7).

    Attributes:
        codes: {'driving' | 'co-driving': float32 [T, num_ws, w_dim]}.
        targets / achieved: {source: float [T, 3]} yaw, pitch, roll in degrees: read from the frames, and
            measured on the re-posed reference.
        skipped: {source: why} for sources that were asked for but could not be encoded.
        regressor: the pose regressor's class name (or None).
        inversions: the stage-2 result the codes were made from (None: not recorded).
    """

    codes: dict
    targets: dict
    achieved: dict
    skipped: dict
    regressor: str | None = None
    seconds: float = 0.0
    inversions: Any = None

    def __repr__(self) -> str:
        parts = []
        for k, ws in self.codes.items():
            err = np.nanmean(np.abs(self.achieved[k] - self.targets[k]), axis=0)
            parts.append(f"{k} {len(ws)} frames, mean |achieved - target| yaw/pitch/roll "
                         f"{'/'.join(f'{e:.1f}' for e in err)} deg")
        parts += [f"{k} skipped: {why}" for k, why in self.skipped.items()]
        return "PoseCodes(" + ("; ".join(parts) or "none asked for") + ")"

    def figure(self):
        """Yaw, pitch and roll per frame: the target read from the frames and what the re-posed reference has."""
        from matplotlib.figure import Figure

        if not self.codes:
            text = ("pose encoding skipped:\n" + "\n".join(f"{k}: {why}" for k, why in self.skipped.items())
                    if self.skipped else "pose encoding: no source was asked for (no pose codes)")
            fig = Figure(figsize=(9, 0.3 + 0.25 * text.count("\n")))
            fig.text(0.01, 0.5, text, fontsize=8, va="center")
            return fig
        fig = Figure(figsize=(9, 2.4 * len(self.codes)), layout="constrained")
        axes = np.asarray(fig.subplots(len(self.codes), 3, squeeze=False))
        for r, k in enumerate(self.codes):
            for c, name in enumerate(("yaw", "pitch", "roll")):
                ax = axes[r, c]
                ax.plot(self.targets[k][:, c], label="target (frames)")
                ax.plot(self.achieved[k][:, c], "--", label="achieved (re-posed reference)")
                ax.set_title(f"{k}: {name}", fontsize=9)
                ax.set_xlabel("frame", fontsize=8)
                ax.set_ylabel("degrees", fontsize=8)
        axes[0, 0].legend(fontsize=7)
        return fig


def _pose_code(G, w_ref, clip: FaceClip, reg, cache: Path, which: str, steps: int, steps_next: int,
               progress: bool, say: Say, batch_size: int | None = None):
    """(ws [T, num_ws, w_dim], targets [T, 3], achieved [T, 3]) for one video, cached keyed by G, w_ref, the
    targets, the steps and the regressor; the finished batches of an unfinished run under ``pose_batches/``."""
    from .caching import generator_hash
    from .face import head_pose
    from .method.pose_encoding import encode_pose_sequence

    # Eq 4 compares P_r(G(w)) with P_r(D_j): the targets are read by the same regressor when it reads images
    # (another detector would add its own constant offset to every frame's pose).
    targets = reg.read(clip.aligned) if hasattr(reg, "read") else head_pose(clip.points,
                                                                            image_size=clip.resolution)
    # frames without a face (their crops are not a face): the pose between their neighbours', not one read off them
    targets = _fill_gaps(np.asarray(targets, np.float64), clip.interpolated)
    key = cache_key({"g": generator_hash(G), "w": hashlib.sha256(w_ref.numpy().tobytes()).hexdigest(),
                     "t": targets.round(4).tolist(), "steps": [steps, steps_next],
                     "regressor": type(reg).__name__})
    f = cache / f"pose-{which}-{key}.npz"
    got = load_arrays(f, ("ws", "achieved")) if f.is_file() else None
    if got is not None and got["ws"].ndim == 3 and len(got["ws"]) == len(targets) and np.isfinite(got["ws"]).all():
        _check_measured(got["achieved"], which)  # a cached entry whose pose could not be measured: refused again
        return torch.from_numpy(got["ws"]), targets, got["achieved"]
    # each finished batch is saved there, so an interrupted call resumes from the batches it finished
    enc = encode_pose_sequence(G, w_ref, targets, reg, steps_first=steps, steps_next=steps_next, batch_size=batch_size,
                               progress=progress, checkpoint_dir=cache / "pose_batches" / which / key)
    ws = enc.ws.detach().float().cpu()
    achieved = np.asarray(enc.achieved, np.float64)
    save_arrays(f, ws=ws.numpy(), achieved=achieved)
    _check_measured(achieved, which)
    err = np.nanmean(np.abs(achieved - enc.target), axis=0)
    _tell(say, f"pose ({which}): mean |measured - target| yaw/pitch/roll = {np.round(err, 2).tolist()} degrees")
    return ws, targets, achieved


def _check_measured(achieved, which: str) -> None:
    """Raise :class:`~v2s_nb.method.pose_encoding.PoseUnavailableError` when no frame's achieved pose could be
    measured (no face detected on any re-posed reference): the codes would move the head blindly."""
    from .method.pose_encoding import PoseUnavailableError

    achieved = np.asarray(achieved, np.float64)
    if len(achieved) and not np.isfinite(achieved).all(axis=-1).any():
        raise PoseUnavailableError(
            f"no face was detected on any of the {len(achieved)} re-posed references ({which}), so the head pose "
            "they reach cannot be measured: this generator does not draw faces the landmark detector recognises. "
            "Use a trained face model (e.g. stylegan3-r-ffhq-1024), or make the re-enactment without pose "
            "transfer (pose='none').")


def pose_codes(inversions: Inversions, sources=None, *, steps: int = 100, steps_next: int = 30,
               batch_size: int | None = None, cache=None, progress: bool = True, say: Say = print) -> PoseCodes:
    """Stage 4: pose encoding (eq 4) of the reference to the head pose of every frame of each video in
    ``sources`` ('driving', 'co-driving'; default: the one :func:`reenactor` takes the pose from, the co-driving video
    when there is one, else the driving video), on the original generator ``inversions.G`` (``steps`` for the first
    frame, ``steps_next`` for the warm-started ones; ``batch_size`` frames a batch, default
    :func:`~v2s_nb.method.pose_encoding.encode_pose_sequence`'s, halved where a batch runs out of GPU memory). Skipped,
    with the reason in ``.skipped`` and a message, when the generator has random weights or no pose regressor is
    available. Cached under ``cache``; an interrupted call resumes from the batches of frames it finished
    (``<cache>/pose_batches``)."""
    from .method.pose_encoding import PoseUnavailableError, default_pose_regressor
    from .errors import FallbackWarning

    if not isinstance(inversions, Inversions):
        raise TypeError(f"inversions must be the result of v2s_nb.prepare.inversions(...), got "
                        f"{type(inversions).__name__}")
    if sources is None:
        sources = _default_source(inversions.faces)
    sources = (sources,) if isinstance(sources, str) else tuple(sources)
    clips = inversions.faces.clips()
    for s in sources:
        _check_choice("pose source", s, POSE_SOURCES)
        if s not in clips:
            raise ValueError(f"pose source {s!r} needs a co-driving video: pass co_driving to faces(...)")
    _check_int("steps", steps, 1, 100_000)
    _check_int("steps_next", steps_next, 1, 100_000)
    if batch_size is not None:
        _check_int("batch_size", batch_size, 1, 4096)
    t0 = time.perf_counter()
    G = inversions.G
    out = PoseCodes({}, {}, {}, {}, inversions=inversions)
    if not sources:
        return out
    why = None
    if getattr(G, "is_random", False):
        why = ("the generator has random weights, so there is no head pose to match (use a trained face model, "
               "e.g. stylegan3-r-ffhq-1024)")
    else:
        try:
            reg = default_pose_regressor(G, progress=progress)
        except PoseUnavailableError as e:
            why = str(e)
    if why is not None:
        for s in sources:
            out.skipped[s] = why
            _tell(say, f"pose encoding ({s}): skipped: {why}")
        return out
    folder = _cache(cache)
    out.regressor = type(reg).__name__
    for s in sources:
        try:
            ws, tgt, ach = _pose_code(G, inversions.w_ref, clips[s], reg, folder, s, steps, steps_next, progress,
                                      say, batch_size=batch_size)
        except PoseUnavailableError as e:  # as for a generator without a pose regressor: skipped, no pose transfer;
            out.skipped[s] = str(e)  # a warning, not a line of say: the codes were made, then found blind
            warnings.warn(f"pose encoding ({s}) skipped, the head keeps the reference's pose: {e}",
                          FallbackWarning, stacklevel=2)
            continue
        out.codes[s], out.targets[s], out.achieved[s] = ws, tgt, ach
    out.seconds = time.perf_counter() - t0
    return out


def _fill_gaps(x, gaps):
    """``x`` (tensor or array [T, ...]) with the rows where ``gaps`` (bool [T]) is True replaced by the linear
    interpolation between the nearest rows where it is False (the nearest one's value at the ends), as the faces
    stage fills the track (:func:`.face.align._fill_missing`); ``x`` itself when there is nothing to fill (no gap,
    or no row to fill from)."""
    from .face.align import _fill_missing

    bad = np.zeros(len(x), bool)
    g = np.asarray(gaps, bool).reshape(-1)[:len(x)]
    bad[:len(g)] = g
    if not bad.any() or bad.all():
        return x
    if isinstance(x, torch.Tensor):
        return torch.from_numpy(_fill_missing(x.detach().cpu().numpy(), ~bad)).to(device=x.device, dtype=x.dtype)
    return _fill_missing(np.asarray(x), ~bad)


def _check_made_from(what: str, remake: str, theirs, inv: Inversions, sources=()) -> None:
    """ValueError when the stage result ``what`` was made from other inputs than ``inv``'s (e.g. a notebook's earlier
    cells re-run with another photo, and not the cell that made it): mixed in, it would bring another person's codes
    or another video's poses. Compared: the reference's code, and the clips of ``sources`` (their landmarks), so the
    same inputs run again (equal results, from the cache) pass."""
    if theirs is None or theirs is inv:
        return
    same = theirs.w_ref.shape == inv.w_ref.shape and torch.equal(theirs.w_ref, inv.w_ref)
    mine, old = inv.faces.clips(), theirs.faces.clips()
    for s in sources:
        same = same and s in mine and s in old and np.array_equal(old[s].points, mine[s].points, equal_nan=True)
    if not same:
        raise ValueError(f"the {what} were made from other inputs than these inversions (another reference photo, "
                         f"video or generator): run {remake} again with these inversions, or pass the inversions "
                         f"they were made from")


def _default_source(faces) -> str:
    """Where the head pose and the position come from by default: the co-driving video when there is one."""
    return "co-driving" if faces.co_driving is not None else "driving"


# ------------------------------------------------------------------------------------------ 5 · Reenactor


def reenactor(inversions: Inversions, channels: Channels, poses: PoseCodes | None = None, *, pose: str | None = None,
              position: str | None = None, regions=("eyes", "nose", "mouth"), motion: str = "relative",
              strength: float = 1.0, anchor="first", position_mode: str = "relative", alpha=None, beta=None,
              gamma=None, zeta=None, baseline: str | None = None, info: dict | None = None):
    """The prepared stages as a :class:`~v2s_nb.method.reenact.Reenactor` (renders any frame from cached S codes).

    ``pose`` / ``position``: the source of the head pose and of the position track ('driving', 'co-driving' or
    'none'; default: the co-driving video when there is one, else the driving video; a pose source without
    codes becomes 'none'). ``regions``: the regions whose channels form ``X_s``. The rest are the Reenactor's
    settings (motion mode, expression strength k, anchor frame, position mode, eq 10-12's coefficients, eq 7's
    reading); the W+ rows mixed are the ones the channels were found on.
    """
    from .method.reenact import Reenactor

    if (not isinstance(inversions, Inversions) or not isinstance(channels, Channels)
            or not isinstance(poses, (PoseCodes, type(None)))):
        got = ", ".join(type(x).__name__ for x in (inversions, channels, poses))
        raise TypeError("reenactor(inversions, channels, poses) takes the results of v2s_nb.prepare.inversions, "
                        f".channels and .pose_codes (poses may be None), in that order; got {got}")
    _check_made_from("channels", "channels(inv, ...)", channels.inversions, inversions)
    if poses is not None:
        _check_made_from("pose codes", "pose_codes(inv, ...)", poses.inversions, inversions, poses.codes)
    faces = inversions.faces
    clips = faces.clips()
    default = _default_source(faces)
    pose = default if pose is None else pose
    position = default if position is None else position
    for name, src in (("pose", pose), ("position", position)):
        _check_choice(name, src, POSE_SOURCES + ("none",))
        if src == "co-driving" and faces.co_driving is None:
            raise ValueError(f"{name}='co-driving' needs a co-driving video: pass co_driving to faces(...)")
    codes = dict(poses.codes) if poses is not None else {}
    if codes and pose != "none" and pose not in codes:  # computed, then dropped without a word
        warnings.warn(f"the pose codes are for {sorted(codes)}, not for the pose source {pose!r}: the head keeps the "
                      f"reference's pose. Pass pose={sorted(codes)[0]!r}, or make codes for {pose!r} with "
                      f"pose_codes(inv, [{pose!r}])", stacklevel=2)
    if isinstance(anchor, str) and anchor.lstrip("-").isdigit():
        anchor = int(anchor)
    tracks = {k: c.track for k, c in clips.items() if k != "reference"}
    co = faces.co_driving
    # Frames without a face (flagged by the faces stage) were inverted and pose-encoded from crops that show no face:
    # their codes are replaced here by the codes interpolated between the nearest frames with one (held at the ends),
    # so the cached inversions stay as they are and every way of making a Reenactor from the stages gets the same.
    ws_drive = _fill_gaps(inversions.ws_drive, faces.driving.interpolated)
    ws_codrive = None if inversions.ws_codrive is None else _fill_gaps(inversions.ws_codrive, co.interpolated)
    codes = {k: _fill_gaps(v, clips[k].interpolated) if k in clips else v for k, v in codes.items()}
    return Reenactor(G=inversions.G, G_render=inversions.G_render, w_ref=inversions.w_ref,
                     ws_drive=ws_drive, ws_codrive=ws_codrive, region_channels=channels.sets,
                     pose_codes=codes, tracks=tracks, pose=pose if pose in codes else "none", position=position,
                     regions=regions, layers=channels.layers, alpha=alpha, beta=beta, gamma=gamma, zeta=zeta,
                     baseline=baseline, motion_mode=motion, strength=strength, position_mode=position_mode,
                     anchor=anchor,
                     points={"reference": faces.reference.points[0], "driving": faces.driving.points,
                             **({"co-driving": co.points} if co is not None else {})},
                     fps=faces.driving.fps, fps_codrive=co.fps if co is not None else None,
                     info={"reference": str(faces.reference.path), "driving": str(faces.driving.path),
                           "co_driving": None if co is None else str(co.path), **(info or {})})
