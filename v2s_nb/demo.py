"""The offline demo (``v2s-nb demo``): a StyleGAN3-R generator **fitted to this one photo** follows the position
and in-plane rotation of a driving clip.

No face model is downloaded. Instead a small StyleGAN3-R generator (random init, 128 px) is fitted to one
FFHQ-aligned photo (scikit-image's astronaut) by pivotal tuning (:func:`v2s_nb.method.invert.pivotal_tuning`,
pivot ``w_avg``): it then draws that one face and nothing else. It is a labelled stand-in, not a face model.

What it can honestly show: StyleGAN3-R's synthesis network is (approximately) equivariant to rotations and
translations of its Fourier-feature input whatever its weights, so rotating / translating that input
(``G.synthesis(ws, transform=M)``) turns / moves the fitted face. The fit sees only the aligned photo; the moves come
from the architecture. A network as small as the demo's is only roughly equivariant, so larger turns blur the
face (the demo measures how much: :func:`follow_check`). The demo measures the driving clip's
canonical transforms (dlib landmarks -> :func:`v2s_nb.face.canonical_track`, smoothed) and renders their
change since the first frame through the input transform, via the pipeline's
:class:`~v2s_nb.method.reenact.Reenactor` (position mode 'relative'). What it cannot
show: expressions (eyes / mouth; S-space channel mixing) and head pose (yaw / pitch; W+ pose encoding) need a
generator whose latent space spans many faces; one fitted to a single image has no such directions, so the
demo does not pretend to show them (:data:`CAN_SHOW`, :data:`CANNOT_SHOW`).

Main entry points::

    from v2s_nb.demo import run_demo, fit_to_photo, driving_clip, follow_check
    res = run_demo("out/demo.mp4")            # writes the result, side-by-side video and contact sheet
    res.paths, res.timings, res.check         # where, how long (s), detection rate / roll error

The fitted generator is cached (``<v2s_nb cache>/demo/fitted-<key>.safetensors``, key = the fit's images
+ the fit settings + the device type), so a second run skips the fit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

__all__ = ["FitSettings", "CAN_SHOW", "CANNOT_SHOW", "LABEL", "DemoResult", "reference_photo", "fit_to_photo",
           "fitted_cache_path", "aligned_crop", "moved_crops", "pivot_ws", "driving_clip", "follow_check", "side_by_side", "contact_sheet",
           "run_demo", "capabilities_text", "write_inputs", "demo_paths"]

#: What every display of the fitted generator says about it.
LABEL = "fitted to this one photo"
PHOTO_DESCRIPTION = "scikit-image's astronaut photo (NASA, public domain)"

#: Components of re-enactment a generator fitted to one photo can show, and how.
CAN_SHOW = {
    "position (tx, ty)": "translation of the Fourier-feature input: the driving clip's canonical track since "
                         "its first frame",
    "in-plane rotation (roll)": "rotation of the Fourier-feature input (StyleGAN3-R is rotation-equivariant)",
}
#: ... and those it cannot: it knows one image, so W+ / S hold no directions for them.
CANNOT_SHOW = {
    "expression (eyes, mouth)": "needs S-space channels learnt from many faces (section 3.4); not faked",
    "head pose (yaw, pitch)": "needs W+ pose directions learnt from many faces (section 3.3); not faked",
}


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """Architecture and optimisation of the demo's fit (chosen by measuring; see ``docs/performance.md``).

    A StyleGAN3-R synthesis network at ``resolution`` px with ``num_layers`` layers, the last ``num_critical``
    of them critically sampled (NVIDIA: 2 of 14; with 2 of 4 turned faces came out too blurred for dlib),
    channels ``min(channel_base / 2 / cutoff, channel_max)``, Fourier input of bandwidth ``first_cutoff``
    (cycles per image; NVIDIA's is 2: a wider input band gives the few layers detail sooner), all layers
    float32.
    Fitted by ``steps`` Adam steps on pixel MSE at peak learning rate ``lr``, warmed up linearly over the first
    ``lr_rampup`` of the steps and ramped down (cosine) over the last ``lr_rampdown``.
    """

    resolution: int = 128
    num_layers: int = 4
    channel_base: int = 4096
    channel_max: int = 128
    first_cutoff: float = 16.0
    num_critical: int = 1
    z_dim: int = 64
    w_dim: int = 64
    steps: int = 100
    lr: float = 0.02
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.5
    seed: int = 0

    def generator_kwargs(self) -> dict:
        """Arguments of :func:`v2s_nb.stylegan3.build_generator` for this architecture."""
        return dict(cfg="R", resolution=self.resolution, z_dim=self.z_dim, w_dim=self.w_dim,
                    channel_base=self.channel_base, channel_max=self.channel_max, num_layers=self.num_layers,
                    num_critical=self.num_critical,
                    first_cutoff=self.first_cutoff, first_stopband=self.first_cutoff * 2 ** 1.1,
                    num_fp16_res=0, seed=self.seed)


# ---------------------------------------------------------------------------------------------------- inputs


def reference_photo() -> np.ndarray:
    """scikit-image's astronaut photo, uint8 [512, 512, 3] (bundled with scikit-image: no download)."""
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut())


def _frame_landmarks(image: np.ndarray, *, detector: str = "hog", upsample: int = 0) -> np.ndarray:
    from .face import NoFaceError, landmarks

    tr = landmarks(image, detector=detector, upsample=upsample, progress=False)
    if not tr.found[0]:
        raise NoFaceError(f"no face was found in the demo photo by dlib's {detector} detector at upsample {upsample}; "
                          "pass upsample=1 (or detector='cnn')")
    return tr.points[0]


def moved_crops(photo: np.ndarray, points: np.ndarray, motion, size: int) -> np.ndarray:
    """FFHQ crops of ``photo`` (face landmarks ``points`` [68, 2]) at ``size`` px, each with its content moved by
    one row of ``motion`` [T, 3] = (tx, ty in image widths, right / down positive; angle in degrees,
    counter-clockwise as seen, about the crop centre): the convention of :mod:`v2s_nb.stylegan3.transform`, so
    ``G.synthesis(ws, transform=input_transform(tx, ty, angle))`` moves a generated crop the same way. Sampled
    from the photo (the borders hold real picture where the photo has it). Returns uint8 [T, size, size, 3]."""
    from .face.align import _warp, ffhq_crop_matrix, ffhq_quad
    from .stylegan3.transform import forward_matrix

    crop_to_photo = ffhq_crop_matrix(ffhq_quad(points), size)
    c = (size - 1) / 2.0
    centre = np.array([[1, 0, c], [0, 1, c], [0, 0, 1.0]])
    motion = np.asarray(motion, np.float64).reshape(-1, 3)
    out = np.empty((len(motion), size, size, 3), np.uint8)
    for i, (tx, ty, a) in enumerate(motion):
        # content moves by A (crop pixels -> crop pixels); output pixel q shows crop pixel A^-1 q
        move = centre @ forward_matrix(tx * size, ty * size, a) @ np.linalg.inv(centre)
        out[i] = _warp(photo, crop_to_photo @ np.linalg.inv(move), size, "reflect", True)
    return out


def driving_clip(photo: np.ndarray, points: np.ndarray, frames: int = 32, size: int = 256, roll: float = 10.0,
                 shift: float = 0.06) -> tuple[np.ndarray, np.ndarray]:
    """A driving clip made from one photo: its FFHQ crop (``size`` px) turned and moved smoothly over one period
    (:func:`moved_crops`).

    Frame i (u = i / frames): roll ``roll · sin(2πu)`` degrees, translation ``(shift · sin(πu),
    -shift / 2 · sin(2πu))`` image widths. Returns (frames uint8 [T, size, size, 3], motion float64 [T, 3] =
    the (tx, ty, angle) applied).
    """
    if frames < 2:
        raise ValueError(f"the driving clip needs at least 2 frames, got {frames}")
    u = np.arange(frames) / frames
    motion = np.stack([shift * np.sin(np.pi * u), -0.5 * shift * np.sin(2 * np.pi * u),
                       roll * np.sin(2 * np.pi * u)], 1)
    return moved_crops(photo, points, motion, size), motion


def write_inputs(folder, *, frames: int = 32, fps: float = 16.0, size: int = 256, detector: str = "hog",
                 upsample: int = 0) -> dict:
    """The demo's input files in ``folder``: ``astronaut.png`` (the photo) and ``driving.mp4`` (its
    :func:`driving_clip`, H.264 through ffmpeg). Returns {'reference': Path, 'driving': Path, 'photo': uint8
    [512, 512, 3], 'points': its landmarks [68, 2], 'motion': the clip's (tx, ty, angle) [T, 3]}."""
    from .images import save_image
    from .video import write_video

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    photo = reference_photo()
    ref = folder / "astronaut.png"
    if not ref.is_file():
        save_image(ref, photo)
    points = _frame_landmarks(photo, detector=detector, upsample=upsample)
    clip, motion = driving_clip(photo, points, frames=frames, size=size)
    drv = write_video(folder / "driving.mp4", clip, fps=fps)
    return {"reference": ref, "driving": drv, "photo": photo, "points": points, "motion": motion}


# ------------------------------------------------------------------------------------------------------ fit


def aligned_crop(photo: np.ndarray, points: np.ndarray, settings: FitSettings = FitSettings()) -> np.ndarray:
    """The image the fit matches: the photo's FFHQ-aligned crop, uint8 [R, R, 3], R = ``settings.resolution``."""
    from .face import align_face

    photo = np.asarray(photo)
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
        raise ValueError(f"photo must be a uint8 RGB image [H, W, 3], got {photo.dtype} {photo.shape}")
    points = np.asarray(points, np.float64)
    if points.shape != (68, 2) or not np.isfinite(points).all():
        raise ValueError(f"points must be the face's 68 dlib landmarks [68, 2] in pixels (v2s_nb.face.landmarks), "
                         f"got shape {points.shape}")
    return align_face(photo, points, settings.resolution).image


def _fit_key(aligned: np.ndarray, settings: FitSettings, device: torch.device) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(aligned).tobytes())
    h.update(str(aligned.shape).encode())
    h.update(json.dumps({"settings": dataclasses.asdict(settings), "device": device.type, "v": 1},
                        sort_keys=True).encode())
    return h.hexdigest()[:24]


def fitted_cache_path(photo: np.ndarray, points: np.ndarray, settings: FitSettings = FitSettings(), device="cpu",
                      cache_dir=None) -> Path:
    """Where :func:`fit_to_photo` keeps the generator fitted to ``photo`` (face landmarks ``points``) with
    ``settings`` on ``device``'s type: ``<cache_dir>/fitted-<key>.safetensors``, the key a hash of the aligned
    crop and the settings; ``cache_dir`` defaults to ``<v2s_nb cache>/demo``."""
    if cache_dir is None:
        from .caching import default_dir
        cache_dir = default_dir("demo")
    aligned = aligned_crop(photo, points, settings)
    return Path(cache_dir) / f"fitted-{_fit_key(aligned, settings, torch.device(device))}.safetensors"


def pivot_ws(G) -> torch.Tensor:
    """The pivot the generator was fitted at: ``w_avg`` on every w+ row, float32 [1, num_ws, w_dim] on G's device."""
    return G.mapping.w_avg[None, None].expand(1, G.num_ws, G.w_dim).clone()


def fit_to_photo(photo: np.ndarray, points: np.ndarray, settings: FitSettings = FitSettings(), *, device="cpu",
                 cache_dir=None, use_cache: bool = True, photo_description: str = PHOTO_DESCRIPTION,
                 progress: bool = True):
    """A StyleGAN3-R generator fitted to ONE photo by pivotal tuning (it draws that face and nothing else).

    ``photo``: uint8 [H, W, 3]; ``points``: its face's 68 landmarks [68, 2] (pixels). A random-init generator
    (:func:`v2s_nb.stylegan3.build_generator`, ``settings.generator_kwargs()``) is tuned with
    :func:`v2s_nb.method.invert.pivotal_tuning` at the pivot ``w_avg`` (no locality term: there is nothing
    else to keep) to match :func:`aligned_crop`. Render it with ``G.synthesis(pivot_ws(G), transform=...)``.

    The result is cached as safetensors (:func:`fitted_cache_path`, with the digest of its tensors) and loaded
    from there when present (``use_cache=False``: always fit, and do not write); a damaged cached file (one whose
    tensors do not match their digest, or one without a digest, which cannot be checked) is fitted again, with a
    :class:`~v2s_nb.errors.CacheWarning`. Returns the generator (eval mode, on ``device``), with
    ``source`` saying what it is; ``is_random`` is False, but it is not a face model.
    """
    return _fit_or_load(photo, points, settings, device=device, cache_dir=cache_dir, use_cache=use_cache,
                        photo_description=photo_description, progress=progress)[0]


def _fit_or_load(photo, points, settings, *, device, cache_dir, use_cache, photo_description, progress):
    """:func:`fit_to_photo`, returning (G, whether G was loaded from the cache)."""
    from .caching import warn_unusable
    from .method.invert import pivotal_tuning
    from .stylegan3 import SnapshotError, build_generator, save_generator
    from .stylegan3.checkpoint import load_checkpoint

    device = torch.device(device)
    aligned = aligned_crop(photo, points, settings)
    path = fitted_cache_path(photo, points, settings, device, cache_dir)
    source = (f"StyleGAN3-R {settings.resolution} px {LABEL} ({photo_description}) by pivotal tuning, "
              f"{settings.steps} steps from random init: a stand-in that draws one face, NOT a face model")
    if use_cache and path.is_file():
        try:  # a cache entry must prove its bytes: one without a digest is not trusted
            G = load_checkpoint(path, require_digest=True).to(device=device, dtype=torch.float32)
        except (SnapshotError, OSError, ValueError) as e:  # damaged: fitted again, not a stop
            warn_unusable(path, f"unreadable ({e})")
        else:
            # said by this code, not by the file: load_checkpoint marks a file's own claim of trained weights
            # UNVERIFIED, which read as a warning about the demo's own stand-in on every later run
            G.source = f"{source} (fitted earlier: {path.name} in the cache)"
            return G, True
    G0 = build_generator(device=device, **settings.generator_kwargs())
    G = pivotal_tuning(G0, aligned[None], pivot_ws(G0), steps=settings.steps, lr=settings.lr, lr_rampup=settings.lr_rampup,
                       lr_rampdown=settings.lr_rampdown, locality_weight=0.0, batch_size=1, seed=settings.seed,
                       progress=progress)
    G.is_random = False
    G.source = source
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_generator(G, path)
    return G, False


# ------------------------------------------------------------------------------------------------ measuring


def follow_check(driving: np.ndarray, result: np.ndarray, *, upsample_driving: int = 0,
                 upsample_result: int = 1) -> dict:
    """Measure how the result follows the driving clip: dlib landmarks on both, canonical angle (eyes -> mouth)
    relative to each clip's first frame with a face in both.

    ``driving``, ``result``: uint8 [T, H, W, 3] clips (any sizes); ``upsample_*``: dlib's detector upsampling
    for each (1 finds faces down to ~40 px). Returns a dict: ``detected`` (bool [T], a
    face in the result frame), ``detection_rate`` (fraction of result frames), ``roll_driving`` /
    ``roll_result`` (degrees [T], NaN without a face), ``reference_frame`` (the first frame with a face in
    both; -1 if none), ``roll_driving_rel`` / ``roll_result_rel`` (degrees [T], relative to it),
    ``roll_error`` (degrees [T], |result - driving| of the relative rolls, NaN where either lacks a face), ``max_roll_error`` / ``mean_roll_error`` (degrees),
    ``frames`` (T).
    """
    from .face import landmarks
    from .face.canonical import eye_mouth_geometry

    def rolls(clip, upsample):
        tr = landmarks(clip, upsample=upsample, progress=False)
        _, v = eye_mouth_geometry(tr.points)
        a = np.degrees(np.arctan2(v[:, 0], v[:, 1]))
        return np.where(tr.found, a, np.nan), tr.found

    n = min(len(driving), len(result))
    a_d, f_d = rolls(np.asarray(driving)[:n], upsample_driving)
    a_r, f_r = rolls(np.asarray(result)[:n], upsample_result)
    both = np.flatnonzero(f_d & f_r)
    j = int(both[0]) if len(both) else -1
    rel_d = a_d - a_d[j] if j >= 0 else np.full(n, np.nan)
    rel_r = a_r - a_r[j] if j >= 0 else np.full(n, np.nan)
    err = np.abs(rel_r - rel_d)
    ok = np.isfinite(err)
    return {"frames": n, "detected": f_r, "detection_rate": float(f_r.mean()) if n else 0.0,
            "roll_driving": a_d, "roll_result": a_r, "reference_frame": j, "roll_driving_rel": rel_d,
            "roll_result_rel": rel_r, "roll_error": err,
            "max_roll_error": float(err[ok].max()) if ok.any() else float("nan"),
            "mean_roll_error": float(err[ok].mean()) if ok.any() else float("nan"),
            "compared_frames": int(ok.sum())}


# -------------------------------------------------------------------------------------------------- outputs


def _label_bar(width: int, text: str, height: int = 22) -> np.ndarray:
    import cv2

    bar = np.full((height, width, 3), 24, np.uint8)
    scale = 0.42
    (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    while tw > width - 8 and scale > 0.25:
        scale -= 0.02
        (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(bar, text, (max(4, (width - tw) // 2), height - 7), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (235, 235, 235), 1, cv2.LINE_AA)
    return bar


def side_by_side(driving: np.ndarray, result: np.ndarray, *, left: str = "driving clip",
                 right: str = f"generator {LABEL}") -> np.ndarray:
    """uint8 [T, H + bar, 2W, 3]: driving | result (the result resized to the driving frames' size, bicubic),
    each with a caption bar on top. T = the shorter clip."""
    import cv2

    n = min(len(driving), len(result))
    h, w = driving.shape[1:3]
    top = np.concatenate([_label_bar(w, left), _label_bar(w, right)], 1)
    out = []
    for i in range(n):
        res = result[i] if result.shape[1:3] == (h, w) else cv2.resize(result[i], (w, h),
                                                                       interpolation=cv2.INTER_CUBIC)
        out.append(np.concatenate([top, np.concatenate([driving[i], res], 1)], 0))
    return np.stack(out)


def contact_sheet(path, driving: np.ndarray, result: np.ndarray, *, picks=None, title: str, notes=(),
                  driving_label: str = "driving", result_label: str = "result", angles=None) -> Path:
    """A PNG: a few frames, driving above, result below, labelled; ``title`` on top and ``notes`` (lines)
    underneath. ``angles``: optional (driving rolls, result rolls) in degrees [T] printed under the frames.
    Written atomically, 256-colour palette (a few hundred KB at most). Returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from PIL import Image

    from .atomic import atomic_path

    n = min(len(driving), len(result))
    picks = list(np.linspace(0, n - 1, 5).round().astype(int)) if picks is None else [int(p) for p in picks]
    cols = len(picks)
    fig, axes = plt.subplots(2, cols, figsize=(1.75 * cols, 4.3 + 0.17 * len(notes)), dpi=100, squeeze=False)
    for k, i in enumerate(picks):
        for row, (clip, name) in enumerate(((driving, driving_label), (result, result_label))):
            ax = axes[row, k]
            ax.imshow(clip[i], interpolation="lanczos")
            ax.set_xticks([])
            ax.set_yticks([])
            lab = f"frame {i}"
            if angles is not None and np.isfinite(angles[row][i]):
                lab += f", roll {angles[row][i]:+.1f}°"
            ax.set_xlabel(lab, fontsize=7)
            if k == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    if notes:
        fig.text(0.01, 0.01, "\n".join(notes), fontsize=6.5, va="bottom", ha="left", family="monospace")
    fig.tight_layout(rect=(0, 0.017 * len(notes) + 0.02, 1, 1))
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    img = Image.fromarray(rgba[..., :3].copy()).quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, optimize=True)
    return path


def capabilities_text() -> str:
    """The lines the demo prints: what a generator fitted to one photo can and cannot show."""
    w = max(len(k) for k in list(CAN_SHOW) + list(CANNOT_SHOW))
    lines = ["  can show:"] + [f"    {k:<{w}}  {v}" for k, v in CAN_SHOW.items()]
    lines += ["  cannot show (it knows one image; nothing is faked):"]
    lines += [f"    {k:<{w}}  {v}" for k, v in CANNOT_SHOW.items()]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the demo


@dataclasses.dataclass
class DemoResult:
    """What :func:`run_demo` made: ``paths`` {name: Path}, ``timings`` {stage: seconds}, ``check`` (see
    :func:`follow_check`), ``generator`` (the fitted one) and ``fitted_from_cache``."""

    paths: dict
    timings: dict
    check: dict
    generator: object
    fitted_from_cache: bool

    def __repr__(self) -> str:
        c = self.check
        return (f"DemoResult(generator {LABEL}; {c['detection_rate']:.0%} result frames with a face, max roll "
                f"error {c['max_roll_error']:.2f}°; total {self.timings.get('total', float('nan')):.1f} s)")


def demo_paths(out) -> dict:
    """Where the demo writes, for ``--out`` = ``out`` (``x/demo.mp4``): the result video (``out``), the
    side-by-side video and contact sheet beside it, the inputs in ``x/demo_inputs/``, intermediates in
    ``x/demo.mp4.v2s/``."""
    out = Path(out)
    return {"result": out, "side_by_side": out.with_name(f"{out.stem}_side_by_side.mp4"),
            "contact_sheet": out.with_name(f"{out.stem}_contact_sheet.png"),
            "inputs": out.with_name(f"{out.stem}_inputs"), "intermediates": Path(str(out) + ".v2s")}


def run_demo(out, *, frames: int = 32, fps: float = 16.0, settings: FitSettings = FitSettings(), device="cpu",
             detector: str = "hog", upsample: int = 0, result_upsample: int = 1, smooth: int = 3, cache_dir=None,
             quiet: bool = False,
             say: Callable[[str], None] | None = None) -> DemoResult:
    """The offline demo, end to end (see the module docstring). Writes the files of :func:`demo_paths` and
    ``<intermediates>/timings.json``, all four together at the end (:func:`~v2s_nb.atomic.write_together`: an
    interrupted run leaves the previous run's set as it was). ``upsample``: dlib's for the photo and the driving
    clip (faces of 100+ px); ``result_upsample``: for the 128 px result frames. ``cache_dir``: where the fitted
    generator is kept (default ``<v2s_nb cache>/demo``). ``say``: where progress lines go (default stderr; nothing when ``quiet``)."""
    from .atomic import write_together
    from .face import align_face
    from .method.reenact import Reenactor
    from .prepare import face_clip
    from .video import read_video, write_video

    if say is None:
        def say(msg):
            if not quiet:
                print(msg, file=sys.stderr, flush=True)
    device = torch.device(device)
    paths = demo_paths(out)
    cache = paths["intermediates"]
    cache.mkdir(parents=True, exist_ok=True)
    paths["inputs"].mkdir(parents=True, exist_ok=True)
    timings = {}
    t_all = time.perf_counter()
    t = t_all

    def lap(name):
        nonlocal t
        now = time.perf_counter()
        timings[name] = now - t
        t = now

    res = settings.resolution
    say(f"[1/5] inputs: {PHOTO_DESCRIPTION} (landmarks, FFHQ-aligned at {res} px) and a {frames}-frame driving "
        "clip made from it (roll, translation), written as .mp4")
    inp = write_inputs(paths["inputs"], frames=frames, fps=fps, detector=detector, upsample=upsample)
    aligned = aligned_crop(inp["photo"], inp["points"], settings)
    lap("inputs")

    fitted_path = fitted_cache_path(inp["photo"], inp["points"], settings, device, cache_dir)
    say(f"[2/5] generator {LABEL} by pivotal tuning ({settings.steps} steps, StyleGAN3-R {res} px)")
    # whether the fit came from the cache is known only after loading: a damaged entry is fitted again
    G, cached = _fit_or_load(inp["photo"], inp["points"], settings, device=device, cache_dir=cache_dir,
                             use_cache=True, photo_description=PHOTO_DESCRIPTION, progress=not quiet)
    if cached:
        say(f"      loaded from the cache ({fitted_path.name})")
    with torch.no_grad():
        mse = float((G.synthesis(pivot_ws(G)).float().cpu() - torch.from_numpy(aligned).permute(2, 0, 1)[None]
                     .float().div(127.5).sub(1)).square().mean())
    fit_psnr = 10 * np.log10(4 / mse)
    say(f"      reconstruction of the photo: {fit_psnr:.1f} dB PSNR")
    lap("fit")

    say("[3/5] driving clip read back: dlib landmarks, canonical track (smoothed)")
    drv = face_clip(inp["driving"], "video", res, cache=cache, detector=detector, upsample=upsample, smooth=smooth,
                    progress=not quiet, say=lambda m: say("      " + m))
    driving = read_video(inp["driving"]).frames
    lap("landmarks")

    say("[4/5] render: position + rotation through the Fourier-feature input (Reenactor, no expression / pose)")
    w = pivot_ws(G).cpu()[0]
    r = Reenactor(G=G, w_ref=w, ws_drive=w[None].expand(len(drv.track), -1, -1), region_channels={},
                  layers=tuple(range(1, min(8, G.num_ws))),  # nothing is mixed: no region channels
                  tracks={"driving": drv.track}, pose="none", position="driving", fps=drv.fps,
                  points={"reference": align_face(inp["photo"], inp["points"], res).to_crop(inp["points"]),
                          "driving": drv.points},
                  info={"generator_spec": {"kind": "source", "source": str(fitted_path)},
                        "generator": G.source, "reference": str(inp["reference"]), "driving": str(inp["driving"]),
                        "shown": list(CAN_SHOW), "not_shown": list(CANNOT_SHOW)})
    result = r.render_video(batch_size=1, progress=not quiet)  # one frame a call: the fastest per frame on CPUs
    r.save(cache / "reenactor")
    outputs = {k: paths[k] for k in ("result", "side_by_side", "contact_sheet")}
    outputs["timings"] = cache / "timings.json"
    with write_together(outputs) as tmp:  # one run's set: moved into place together once all are written
        write_video(tmp["result"], result, fps=drv.fps, crf=12)  # near-lossless: the check reads this file
        lap("render")

        say("[5/5] check (dlib on the result frames), side-by-side video, contact sheet")
        result = read_video(tmp["result"]).frames  # measure what was written (H.264, near-lossless)
        check = follow_check(driving, result, upsample_driving=upsample, upsample_result=result_upsample)
        lap("check")
        write_video(tmp["side_by_side"], side_by_side(driving, result, left="driving clip (real photo, moved)",
                                                      right=f"generator {LABEL} ({res} px)"), fps=drv.fps)
        found = int(check["detected"].sum())
        notes = ["shown:     " + "; ".join(CAN_SHOW),
                 "not shown: " + "; ".join(CANNOT_SHOW) + " (it knows one image)",
                 f"measured:  dlib finds a face in {found}/{check['frames']} result frames; roll follows the driving "
                 f"clip within {check['max_roll_error']:.1f}° (max), {check['mean_roll_error']:.1f}° (mean)"]
        contact_sheet(tmp["contact_sheet"], driving, result, title=f"v2s-nb demo: StyleGAN3-R {LABEL} "
                      f"(a stand-in, not a face model), driven by a clip of the same photo",
                      notes=notes, driving_label="driving clip", result_label=f"{LABEL}",
                      angles=(check["roll_driving_rel"], check["roll_result_rel"]))
        lap("outputs")
        timings["total"] = time.perf_counter() - t_all
        from .atomic import write_atomic
        summary = {"timings_s": timings, "fitted_from_cache": cached, "fit_psnr_db": fit_psnr,
                   "detection_rate": check["detection_rate"], "max_roll_error_deg": check["max_roll_error"],
                   "mean_roll_error_deg": check["mean_roll_error"], "frames": check["frames"],
                   "settings": dataclasses.asdict(settings), "device": str(device), "generator": G.source}
        write_atomic(tmp["timings"], lambda f: f.write(json.dumps(summary, indent=1).encode()))
    return DemoResult(paths=paths, timings=timings, check=check, generator=G, fitted_from_cache=cached)


