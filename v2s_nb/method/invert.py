"""W+ inversion of aligned face crops, warm-started over a video, and pivotal tuning (PTI) — paper §3.1.

Main entry points::

    from v2s_nb.method.invert import invert, invert_sequence, pivotal_tuning, Inversion

    inv = invert(G, images)                       # uint8 [N, H, W, 3] or float [N, 3, H, W] in [-1, 1]
    inv.psnr, inv.ws                              # per-image PSNR (dB), w+ codes [N, num_ws, w_dim] on the CPU
    inv.save("ref_inv"); Inversion.load("ref_inv")  # ref_inv.npy (codes) + ref_inv.json (everything else)
    seq = invert_sequence(G, frames, checkpoint_dir="ckpt")   # a video: batches of consecutive frames
    G_pti = pivotal_tuning(G, images, inv)         # a fine-tuned copy; G itself is left untouched

Optimisation (:func:`invert`): Adam on w+ (every row free), starting from ``w_avg`` broadcast to all rows (or a
given ``init``), with the learning-rate schedule of NVIDIA's StyleGAN projectors (linear warm-up over the first
``lr_rampup`` of the steps, cosine ramp-down over the last ``lr_rampdown``) and their decaying Gaussian noise on
w early on (``w_noise``, a fraction of the spread of W). Each image's loss is

    mse_weight · MSE(G(w), x) + perceptual_weight · P(G(w), x) + w_avg_weight · mean((w - w_avg)²)
    [+ temporal_weight · mean((w_i - w_{i-1})²) in sequence mode]

and the batch loss is the *sum* over images, so that (Adam being element-wise) images inverted together give the
same codes as images inverted one by one. Images are compared at the generator's resolution, in [-1, 1].

Errors: reconstruction MSE is measured on images in [-1, 1]; PSNR = 10·log10(4 / MSE) dB, which equals the PSNR
of the same images in [0, 1] or in uint8 units.

Perceptual term: ``perceptual=None`` (pixels only), ``'lpips'`` (the ``lpips`` package with its VGG backbone,
which needs torchvision and a download; when it cannot be built the run falls back to pixels with one
:class:`PerceptualFallbackWarning`), or any callable ``f(img, target) -> [N]`` on [-1, 1] images. Cached results
and checkpoints are keyed by what the callable computes, which its name says only for a function defined at the top
level of a module; any other callable (a lambda, a ``functools.partial``, a module instance) needs a ``cache_key``
attribute (a string naming the loss and its settings) for ``cache_dir`` / ``checkpoint_dir``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import json
import math
import pickle
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..atomic import write_atomic
from .batches import HalvingBatch, batch_steps, out_of_memory
from .loss_scale import HostValues, codes_only, grad_scaler
import torch.nn.functional as F
from ..caching import entry_path, generator_hash, hash_tensor, json_key, warn_unusable
from ..errors import V2SError, V2SWarning
from ..video import ambiguous_channel_first
from ..validate import renamed_kwargs
from ..progress import progress_bar
from ..stylegan3.precompile import Workload, ensure_compiled

__all__ = [
    "Inversion", "InversionDivergedError", "PerceptualFallbackWarning", "ImageResizeWarning", "invert",
    "invert_sequence", "pivotal_tuning", "prepare_images", "generator_identity", "generator_hash",
    "default_cache_dir", "lr_schedule", "psnr_from_mse",
]

FORMAT = "v2s_nb.inversion"
FORMAT_VERSION = 1

#: Defaults of :func:`invert` (also the per-batch defaults of :func:`invert_sequence`).
DEFAULTS: dict[str, Any] = dict(
    steps=500,            # Adam steps per image (first batch of a sequence)
    lr=0.05,              # peak learning rate (w units; W's per-element spread is about 1 for FFHQ)
    lr_rampup=0.05,       # fraction of the steps spent warming the lr up linearly
    lr_rampdown=0.25,     # fraction of the steps over which the lr ramps down (cosine) to 0
    w_noise=0.05,         # initial noise on w, a fraction of W's per-element spread (NVIDIA's factor, not its scale)
    w_noise_ramp=0.75,    # noise decays to 0 over this fraction of the steps (quadratically)
    mse_weight=1.0,
    perceptual_weight=1.0,
    w_avg_weight=1e-4,    # pull toward w_avg: weight · mean((w - w_avg)^2)
    seed=0,
)


class InversionDivergedError(V2SError, FloatingPointError):
    """The loss became NaN or infinite; ``frames`` lists the frame indices concerned."""

    def __init__(self, message: str, frames: Sequence[int]):
        super().__init__(message)
        self.frames = list(frames)


class PerceptualFallbackWarning(V2SWarning):
    """``perceptual='lpips'`` was asked for but LPIPS could not be built; pixel MSE is used instead."""


class ImageResizeWarning(V2SWarning):
    """Input images were resized (or converted from grayscale / RGBA) to the generator's format."""


# ---------------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------------


def psnr_from_mse(mse) -> np.ndarray:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2) from their MSE; ``inf`` for a perfect match."""
    mse = np.asarray(mse, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(4.0 / mse)


def lr_schedule(step: int, steps: int, lr: float, rampup: float = 0.05, rampdown: float = 0.25) -> float:
    """NVIDIA's projector schedule: linear warm-up over ``rampup`` of the run, cosine ramp-down over the last
    ``rampdown``. ``step`` counts from 0; the first step already has a non-zero rate."""
    t = step / max(steps, 1)
    ramp = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    if rampup > 0:
        ramp *= min(1.0, (step + 1) / max(rampup * steps, 1.0))
    return lr * ramp


def generator_identity(G) -> dict:
    """What identifies a generator in saved results: its source, weight hash and shape."""
    return {"source": None if G.source is None else str(G.source), "sha256": generator_hash(G),
            "is_random": bool(getattr(G, "is_random", False)), "img_resolution": int(G.img_resolution),
            "num_ws": int(G.num_ws), "w_dim": int(G.w_dim)}


def default_cache_dir() -> Path:
    """``<v2s_nb weights cache>/inversions`` (see :func:`v2s_nb.weights.cache_dir`)."""
    from ..weights import cache_dir
    return cache_dir() / "inversions"


def _g_device_dtype(G):
    return G.device, G.mapping.w_avg.dtype


# ---------------------------------------------------------------------------------------------------------------
# Input images
# ---------------------------------------------------------------------------------------------------------------


def _frame_list(mask: np.ndarray, frame_indices: Sequence[int]) -> list[int]:
    return [int(frame_indices[i]) for i in np.flatnonzero(mask)]


def prepare_images(images, resolution: int, frame_indices: Sequence[int] | None = None) -> torch.Tensor:
    """Turn user images into float32 [N, 3, R, R] in [-1, 1] on the CPU, checked.

    Accepts (numpy or torch; a single image or a batch; a list of images is stacked):

    * pictures: uint8 (or integer 0..255) channel-last ``[N, H, W, C]`` / ``[H, W, C]``, channel-first
      ``[N, C, H, W]``, grayscale ``[N, H, W]`` / ``[H, W]`` (``[3 or 4, H, W]`` is refused: one channel-first
      picture or that many frames); float channel-last pictures are read as values in [0, 1] (the package's
      image convention, docs/architecture.md) and refused outside it;
    * generator images: float channel-first ``[N, C, H, W]`` / ``[C, H, W]`` with values in [-1, 1] (what
      ``G.synthesis`` returns); where none is below 0 (torchvision's [0, 1] tensors?) an ImageRangeWarning says so.

    ``C`` may be 3 (RGB), 1 (grayscale: replicated to RGB, with a warning) or 4 (RGBA: the alpha channel is
    dropped, with a warning, only when it is fully opaque; otherwise refused). Square images of another size
    are resized to ``resolution`` (antialiased bilinear) with an :class:`ImageResizeWarning`; non-square images
    are refused (align / crop the faces first). Non-finite values raise ``ValueError`` naming the frames.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given")
        images = np.stack([np.asarray(im.detach().cpu() if torch.is_tensor(im) else im) for im in images])
    if torch.is_tensor(images):
        arr = images.detach().to("cpu")
        arr = arr.numpy() if arr.dtype != torch.bfloat16 else arr.float().numpy()
    else:
        arr = np.asarray(images)
    if arr.dtype == bool or arr.dtype.kind not in "uif":
        raise ValueError(f"images must be uint8 (0..255) or float in [-1, 1], got dtype {arr.dtype}")
    is_int = arr.dtype.kind in "ui"
    channels_last = False

    # Bring to [N, C, H, W].
    if is_int:
        if arr.ndim == 2:  # one grayscale image
            arr = arr[None, :, :, None]
        elif arr.ndim == 3:
            if ambiguous_channel_first(arr.shape):
                raise ValueError(f"uint8 images of shape {arr.shape} are ambiguous: one channel-first picture "
                                 f"[C, H, W] or {arr.shape[0]} grayscale frames [N, H, W]; pass one picture as "
                                 "[1, C, H, W] or [H, W, C], frames as [N, H, W, 1]")
            arr = arr[None] if arr.shape[-1] in (1, 3, 4) else arr[..., None]  # one HWC image / N gray frames
        elif arr.ndim == 4:
            if arr.shape[-1] not in (1, 3, 4) and arr.shape[1] in (1, 3, 4):
                arr = arr.transpose(0, 2, 3, 1)  # channel-first uint8: unambiguous, accept it
        else:
            raise ValueError(f"uint8 images must be [N, H, W, C], [H, W, C] or [N, H, W]; got shape {arr.shape}")
        arr = arr.transpose(0, 3, 1, 2)
    else:
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise ValueError(f"float images must be [N, C, H, W] or [C, H, W] in [-1, 1]; got shape {arr.shape}")
        if arr.shape[1] not in (1, 3, 4) and arr.shape[-1] in (1, 3, 4):
            channels_last = True  # a float picture: values in [0, 1] (mapped to [-1, 1] below)
            arr = arr.transpose(0, 3, 1, 2)
    n, c, h, w = arr.shape
    if n == 0:
        raise ValueError("no images given (N = 0)")
    idx = list(range(n)) if frame_indices is None else [int(i) for i in frame_indices]
    if len(idx) != n:
        raise ValueError(f"frame_indices has {len(idx)} entries for {n} images")

    if not is_int:
        arr = arr.astype(np.float32, copy=False)
        bad = ~np.isfinite(arr).reshape(n, -1).all(axis=1)
        if bad.any():
            raise ValueError(f"images contain NaN or inf values in frame(s) {_frame_list(bad, idx)}")
        lo, hi = float(arr.min()), float(arr.max())
        if channels_last:
            if lo < -1e-3 or hi > 1.0 + 1e-3:
                raise ValueError(f"channel-last float images are pictures with values in [0, 1], got values from "
                                 f"{lo:.3g} to {hi:.3g}; pass uint8 0..255 pictures, or generator images "
                                 "channel-first [N, 3, H, W] in [-1, 1]")
            arr = np.clip(arr, 0.0, 1.0) * 2.0 - 1.0
        if lo < -10.0 or hi > 10.0:
            raise ValueError(f"float images must be in [-1, 1] (got values from {lo:.3g} to {hi:.3g}); pass uint8 "
                             "0..255 images, or scale floats with x / 127.5 - 1 (0..255) or x * 2 - 1 (0..1)")
        if lo < -2.0 or hi > 2.0:
            warnings.warn(f"float images range from {lo:.3g} to {hi:.3g}, beyond the expected [-1, 1]; they are "
                          "compared as given", ImageResizeWarning, stacklevel=3)
        elif not channels_last and lo >= 0:  # torchvision's ToTensor gives [0, 1] channel-first: read as [-1, 1],
            from ..images import ImageRangeWarning  # it is a washed-out target (black -> mid-grey)
            warnings.warn(f"channel-first float images are read as generator images in [-1, 1], but all values here "
                          f"are >= 0 (range [{lo:.3g}, {hi:.3g}]): pictures in [0, 1] (torchvision's ToTensor) "
                          "would be inverted washed out; for those pass x * 2 - 1. Images that really are all bright "
                          "are fine: ignore ImageRangeWarning.", ImageRangeWarning, stacklevel=3)
        x = torch.from_numpy(np.ascontiguousarray(arr))
        opaque = 1.0
    else:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"integer images must be 0..255 (got {lo}..{hi})")
        x = torch.from_numpy(np.ascontiguousarray(arr).astype(np.float32)) / 127.5 - 1.0
        opaque = 255

    if c == 4:
        alpha = arr[:, 3].reshape(n, -1)
        transparent = (alpha < opaque - (0 if is_int else 1e-6)).any(axis=1)
        if transparent.any():
            raise ValueError(f"RGBA images with transparent pixels (frame(s) {_frame_list(transparent, idx)}); "
                             "composite them onto a background first (alpha is not modelled by the generator)")
        warnings.warn("RGBA images: the (fully opaque) alpha channel was dropped", ImageResizeWarning, stacklevel=3)
        x = x[:, :3]
    elif c == 1:
        warnings.warn("grayscale images: replicated to 3 channels (the generator renders RGB)",
                      ImageResizeWarning, stacklevel=3)
        x = x.expand(n, 3, h, w)
    elif c != 3:
        raise ValueError(f"images must have 3 channels (RGB), or 1 (grayscale) / 4 (opaque RGBA); got {c} "
                         f"(shape {tuple(images.shape) if hasattr(images, 'shape') else arr.shape})")

    if h != w:
        raise ValueError(f"images must be square aligned face crops; got {h}x{w} (height x width). Align / crop "
                         "them first (v2s_nb.face), the generator renders {0}x{0}".format(resolution))
    if h != resolution:
        warnings.warn(f"images are {h}x{w}; resized to the generator's {resolution}x{resolution}",
                      ImageResizeWarning, stacklevel=3)
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                          antialias=h > resolution).clamp(-1, 1)
    return x.contiguous()


# ---------------------------------------------------------------------------------------------------------------
# Perceptual term
# ---------------------------------------------------------------------------------------------------------------

_LPIPS_MODELS: dict[str, Any] = {}
_LPIPS_WARNED = False


def _build_lpips(device):
    """The ``lpips`` package's VGG LPIPS on ``device``, or None (with one warning per process) if unavailable."""
    global _LPIPS_WARNED
    key = str(device)
    if key in _LPIPS_MODELS:
        return _LPIPS_MODELS[key]
    model = None
    try:
        import lpips  # noqa: F401  (needs torchvision and downloads the VGG backbone on first use)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(net="vgg", verbose=False).to(device).eval().requires_grad_(False)
    except BaseException as e:  # ImportError, offline download, missing torchvision, ...
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        if not _LPIPS_WARNED:
            _LPIPS_WARNED = True
            warnings.warn(f"perceptual='lpips' is unavailable ({type(e).__name__}: {str(e)[:200]}); using pixel "
                          "MSE only. LPIPS needs `pip install lpips torchvision` and a one-time download of the "
                          "VGG backbone.", PerceptualFallbackWarning, stacklevel=4)
        model = None
    _LPIPS_MODELS[key] = model
    return model


def _resolve_perceptual(perceptual, device) -> tuple[Callable | None, str]:
    """-> (callable(img, target) -> [N] or None, a name for the settings record)."""
    if perceptual is None or perceptual is False or perceptual == "none":
        return None, "none"
    if isinstance(perceptual, str):
        if perceptual.lower() != "lpips":
            raise ValueError(f"perceptual must be None, 'lpips' or a callable, got {perceptual!r}")
        model = _build_lpips(device)
        if model is None:
            return None, "none (lpips unavailable)"

        def lpips_fn(img, target):
            if img.shape[-1] > 256:  # as NVIDIA's projector: compare at 256 px
                img = F.interpolate(img, size=(256, 256), mode="area")
                target = F.interpolate(target, size=(256, 256), mode="area")
            return model(img, target).reshape(img.shape[0])
        return lpips_fn, "lpips-vgg"
    if callable(perceptual):
        key = getattr(perceptual, "cache_key", None)
        if key is not None:
            return perceptual, f"callable:{key}"
        name = getattr(perceptual, "__qualname__", None) or type(perceptual).__qualname__
        name = f"{getattr(perceptual, '__module__', '?')}.{name}"
        if inspect.isfunction(perceptual) and "<" not in name:  # a module's function: its name says what it is
            return perceptual, f"callable:{name}"
        return perceptual, f"unidentified callable:{name}"
    raise TypeError(f"perceptual must be None, 'lpips' or a callable, got {type(perceptual).__name__}")


def _keyed_by(perc_name: str, **folders) -> None:
    """ValueError where a result would be cached or checkpointed (a folder given) under a perceptual loss that its
    name doesn't identify: two lambdas, partials or module instances would share the key, and one's result would be
    returned for the other."""
    used = [k for k, v in folders.items() if v]
    if used and perc_name.startswith("unidentified"):
        raise ValueError(f"{' and '.join(used)} key results by the settings, and the perceptual callable "
                         f"{perc_name.split(':', 1)[1]} can't be told from another of its kind (a lambda, partial or "
                         "module instance); give it a cache_key attribute naming what it computes (e.g. "
                         "f.cache_key = 'lpips-alex-v0.1'), or pass a function defined at a module's top level")


def _per_image(value, n: int, what: str) -> torch.Tensor:
    value = torch.as_tensor(value)
    if value.numel() != n:
        raise ValueError(f"the {what} callable must return one value per image (shape [{n}]), "
                         f"got shape {tuple(value.shape)}")
    return value.reshape(n)


# ---------------------------------------------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------------------------------------------


def _stem(path) -> Path:
    p = Path(path)
    if p.suffix in (".json", ".npy"):
        p = p.with_suffix("")
    return p


@dataclasses.dataclass
class Inversion:
    """The result of :func:`invert` / :func:`invert_sequence`.

    Attributes:
        ws: w+ codes, float32 CPU tensor [N, num_ws, w_dim].
        mse: per-image reconstruction MSE (images in [-1, 1]), float64 [N].
        psnr: per-image PSNR in dB (``10·log10(4 / mse)``), float64 [N].
        loss_history: per image, the loss at every optimisation step it went through (float32 arrays; in
            sequence mode warm-started batches have fewer steps).
        settings: every setting of the run (steps, lr, weights, perceptual term, seed, ...).
        generator: :func:`generator_identity` of the generator used (source, weight SHA-256, shape).
        frame_indices: int64 [N], the frames' indices in the video (or 0..N-1).
        total_steps: optimisation steps run (Adam iterations, summed over batches).
        frame_steps: sum over batches of (frames in the batch × steps): the work done, in image renders.
        from_cache: True when this result was read back from a cache / checkpoint instead of computed.
    """

    ws: torch.Tensor
    mse: np.ndarray
    psnr: np.ndarray
    loss_history: list
    settings: dict
    generator: dict
    frame_indices: np.ndarray
    total_steps: int = 0
    frame_steps: int = 0
    from_cache: bool = False

    def __len__(self) -> int:
        return int(self.ws.shape[0])

    def __repr__(self) -> str:
        p = self.psnr
        return (f"Inversion({len(self)} frames, ws {tuple(self.ws.shape)}, PSNR {np.min(p):.2f}..{np.max(p):.2f} dB "
                f"(mean {np.mean(p):.2f}), {self.total_steps} steps, generator {self.generator.get('source')!r})")

    # -- rendering --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def images(self, G, batch_size: int = 8, uint8: bool = False):
        """Re-render the codes with ``G`` (e.g. the PTI generator): float [N, 3, R, R] CPU tensor in about
        [-1, 1], or uint8 [N, R, R, 3] numpy with ``uint8=True``."""
        from ..validate import integer

        batch_size = integer(batch_size, "batch_size (images per synthesis call)", 1, 4096)
        device, dtype = _g_device_dtype(G)
        out = [G.synthesis(self.ws[i:i + batch_size].to(device=device, dtype=dtype)).float().cpu()
               for i in range(0, len(self), batch_size)]
        img = torch.cat(out)
        if uint8:
            from ..images import to_uint8
            return to_uint8(img, range_check=False)
        return img

    def matches(self, G) -> bool:
        """Whether ``G`` has exactly the weights these codes were computed with."""
        return generator_hash(G) == self.generator.get("sha256")

    # -- saving -----------------------------------------------------------------------------------------------

    def save(self, path) -> Path:
        """Write ``<path>.npy`` (the codes) and ``<path>.json`` (everything else); returns the ``.json`` path.

        Each file is written to a temporary name and moved into place (``os.replace``); the JSON, written last,
        holds the SHA-256 of the codes, so a half-updated pair is refused by :meth:`load`.
        """
        stem = _stem(path)
        npy, js = Path(str(stem) + ".npy"), Path(str(stem) + ".json")
        ws = self.ws.detach().to("cpu", torch.float32).contiguous().numpy()
        write_atomic(npy, lambda f: np.save(f, ws, allow_pickle=False))
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "ws_file": npy.name,
            "ws_shape": list(ws.shape), "ws_sha256": hashlib.sha256(ws.tobytes()).hexdigest(),
            "mse": [float(v) for v in self.mse], "psnr": [float(v) for v in self.psnr],
            "frame_indices": [int(v) for v in self.frame_indices],
            "total_steps": int(self.total_steps), "frame_steps": int(self.frame_steps),
            "settings": self.settings, "generator": self.generator,
            "loss_history": [[float(v) for v in np.asarray(h, dtype=np.float32)] for h in self.loss_history],
        }
        text = json.dumps(meta, indent=1, default=str)
        write_atomic(js, lambda f: f.write(text), mode="w")
        return js

    @classmethod
    def load(cls, path) -> "Inversion":
        """Read what :meth:`save` wrote (pass the stem, the ``.json`` or the ``.npy`` path).

        A damaged or incomplete pair (truncated / empty file, missing key, wrong shape) raises one ``ValueError``
        naming the file and the cause, so caches can warn and recompute instead of crashing."""
        stem = _stem(path)
        js = Path(str(stem) + ".json")
        if not js.exists():
            raise FileNotFoundError(f"no inversion at {js}")
        try:
            meta = json.loads(js.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{js} is not a readable inversion file ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            fmt = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(f"{js} is not a v2s_nb inversion (format={fmt!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{js}: unsupported inversion format version {meta.get('format_version')!r}")
        ws_file = meta.get("ws_file")
        if not isinstance(ws_file, str) or not ws_file:
            raise ValueError(f"{js}: damaged or incomplete inversion (no 'ws_file'); re-run the inversion")
        npy = js.parent / ws_file
        try:
            # np.load on a 0-byte / cut .npy raises EOFError or ValueError; a hand-edited JSON, KeyError /
            # TypeError: all are one "damaged" ValueError for the callers (which warn and recompute)
            ws = np.load(npy, allow_pickle=False)
            matches = list(ws.shape) == list(meta["ws_shape"]) and hashlib.sha256(
                np.ascontiguousarray(ws).tobytes()).hexdigest() == meta["ws_sha256"]
            if matches:
                if ws.ndim != 3 or ws.dtype != np.float32:
                    raise ValueError(f"codes are not a float32 [N, num_ws, w_dim] array ({ws.dtype}, {ws.shape})")
                fields = dict(mse=np.asarray(meta["mse"], dtype=np.float64),
                              psnr=np.asarray(meta["psnr"], dtype=np.float64),
                              loss_history=[np.asarray(h, dtype=np.float32) for h in meta["loss_history"]],
                              settings=meta["settings"], generator=meta["generator"],
                              frame_indices=np.asarray(meta["frame_indices"], dtype=np.int64),
                              total_steps=int(meta["total_steps"]), frame_steps=int(meta["frame_steps"]))
                n = ws.shape[0]
                if not all(fields[k].shape == (n,) for k in ("mse", "psnr", "frame_indices")):
                    raise ValueError(f"mse / psnr / frame_indices are not {n} values each")
                if not (isinstance(fields["settings"], dict) and isinstance(fields["generator"], dict)):
                    raise ValueError("settings / generator are not objects")
        except (ValueError, EOFError, KeyError, TypeError, IndexError, AttributeError, OverflowError,
                pickle.UnpicklingError) as e:
            raise ValueError(f"{js} / {npy.name}: damaged or incomplete inversion ({type(e).__name__}: {e}); "
                             "re-run the inversion") from None
        if not matches:
            raise ValueError(f"{npy} does not match {js} (incomplete or mixed-up save); re-run the inversion")
        return cls(ws=torch.from_numpy(ws), from_cache=True, **fields)

    # -- combining --------------------------------------------------------------------------------------------

    @classmethod
    def concat(cls, parts: Sequence["Inversion"], settings: dict | None = None) -> "Inversion":
        """Join results of consecutive batches (same generator) into one."""
        parts = list(parts)
        if not parts:
            raise ValueError("nothing to concatenate")
        return cls(ws=torch.cat([p.ws for p in parts]), mse=np.concatenate([p.mse for p in parts]),
                   psnr=np.concatenate([p.psnr for p in parts]),
                   loss_history=[h for p in parts for h in p.loss_history],
                   settings=settings if settings is not None else parts[0].settings,
                   generator=parts[0].generator,
                   frame_indices=np.concatenate([p.frame_indices for p in parts]),
                   total_steps=sum(p.total_steps for p in parts), frame_steps=sum(p.frame_steps for p in parts),
                   from_cache=all(p.from_cache for p in parts))


# ---------------------------------------------------------------------------------------------------------------
# Optimisation core
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _w_spread(G, device, dtype, samples: int = 2000) -> float:
    """Per-element spread of W: sqrt(mean over samples and dims of (w - w_avg)^2), deterministic."""
    gen = torch.Generator(device="cpu").manual_seed(123)
    z = torch.randn([samples, G.z_dim], generator=gen).to(device)
    c = torch.zeros([samples, G.c_dim], device=device) if G.c_dim else None
    w = G.mapping(z, c)[:, 0].to(dtype)
    return float((w - G.mapping.w_avg).square().mean().sqrt())


@torch.no_grad()
def _reconstruction_mse(G, ws, targets, batch_size) -> np.ndarray:
    out = []
    for i in range(0, ws.shape[0], batch_size):
        img = G.synthesis(ws[i:i + batch_size]).float()
        out.append((img - targets[i:i + batch_size].to(img.device)).square().mean(dim=(1, 2, 3)).cpu())
    return torch.cat(out).double().numpy()


#: ``cuda_graphs=None`` (the default of the optimisation loops) records CUDA graphs for batches up to this size:
#: graphs remove the launch cost that sets the step time of single frames, and from a few frames on the GPU's work
#: does, so there they only cost set-up time and memory (measured: docs/performance.md).
CUDA_GRAPHS_MAX_BATCH = 2


def _use_graphs(cuda_graphs: bool | None, device: torch.device, batch_size: int) -> bool:
    if device.type != "cuda":
        return False
    return batch_size <= CUDA_GRAPHS_MAX_BATCH if cuda_graphs is None else bool(cuda_graphs)


def _renderer(G, batch_size: int, cuda_graphs: bool | None, ws_grad: bool = True):
    """What renders the codes being optimised: ``G.synthesis``, or on CUDA with ``cuda_graphs`` (None: for batches
    up to :data:`CUDA_GRAPHS_MAX_BATCH`) a :class:`~v2s_nb.stylegan3.GraphedTrainingSynthesis` of ``batch_size``
    (smaller batches padded; ``ws_grad``: whether gradients reach the codes)."""
    if _use_graphs(cuda_graphs, G.device, batch_size):
        from ..stylegan3 import GraphedTrainingSynthesis
        return GraphedTrainingSynthesis(G, batch_size=batch_size, ws_grad=ws_grad)
    return G.synthesis


def _optimise(G, targets: torch.Tensor, init: torch.Tensor, steps: int, cfg: dict, perc_fn, rng: torch.Generator,
              frame_indices: Sequence[int], pbar=None, prev_w: torch.Tensor | None = None,
              temporal_weight: float = 0.0, w_noise: float = 0.0, w_spread: float = 1.0, render=None):
    """Optimise one batch. -> (ws [n, num_ws, w_dim] detached on G's device, history float32 [n, steps]).
    ``render``: what renders ws (default ``G.synthesis``; see :func:`_renderer`). Nothing in the loop waits for the
    GPU: the noise goes through pinned memory, the losses are read (and checked) one step late."""
    render = G.synthesis if render is None else render
    device, dtype = _g_device_dtype(G)
    n = targets.shape[0]
    targets = targets.to(device=device, dtype=torch.float32)
    w_avg = G.mapping.w_avg.to(dtype).reshape(1, 1, -1)
    ws = init.to(device=device, dtype=dtype).clone().requires_grad_(True)
    opt = torch.optim.Adam([ws], lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8, fused=device.type == "cuda" or None)
    scaler = grad_scaler(G)
    history = np.zeros((n, steps), dtype=np.float32)

    def check(pending):  # a step's losses into the history, NaN / inf refused, once the GPU has got that far
        if pending is None:
            return
        step, values = pending
        history[:, step] = values.result()
        bad = [i for i in range(n) if not np.isfinite(history[i, step])]
        if bad:
            frames = [int(frame_indices[i]) for i in bad]
            raise InversionDivergedError(f"inversion diverged at step {step}/{steps}: the loss is NaN/inf for "
                                         f"frame(s) {frames}; lower lr (now {cfg['lr']}) or check the images",
                                         frames)
        if pbar is not None and (step % 10 == 0 or step == steps - 1):
            pbar.set_postfix(loss=f"{float(history[:, step].mean()):.4g}", refresh=False)

    pending = None
    for step in range(steps):
        lr = lr_schedule(step, steps, cfg["lr"], cfg["lr_rampup"], cfg["lr_rampdown"])
        for group in opt.param_groups:
            group["lr"] = lr
        w_in = ws
        t = step / max(steps, 1)
        if w_noise > 0 and cfg["w_noise_ramp"] > 0:
            scale = w_spread * w_noise * max(0.0, 1.0 - t / cfg["w_noise_ramp"]) ** 2
            if scale > 0:
                noise = torch.randn(ws.shape, generator=rng)
                if device.type == "cuda":  # a copy from pinned memory doesn't wait for the GPU
                    noise = noise.pin_memory()
                w_in = ws + noise.to(device=device, dtype=dtype, non_blocking=True) * scale
        img = render(w_in).float()
        loss_i = cfg["mse_weight"] * (img - targets).square().mean(dim=(1, 2, 3))
        if perc_fn is not None and cfg["perceptual_weight"]:
            loss_i = loss_i + cfg["perceptual_weight"] * _per_image(perc_fn(img, targets), n, "perceptual").float()
        if cfg["w_avg_weight"]:
            loss_i = loss_i + cfg["w_avg_weight"] * (ws - w_avg).float().square().mean(dim=(1, 2))
        if temporal_weight:
            seq = ws if prev_w is None else torch.cat([prev_w.to(device=device, dtype=dtype)[None], ws])
            diff = (seq[1:] - seq[:-1]).float().square().mean(dim=(1, 2))  # one per frame of the batch (or n-1)
            loss_i = loss_i + temporal_weight * F.pad(diff, (n - diff.shape[0], 0))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss_i.sum()).backward()
        # the previous step's losses: read now, this step's work is queued (with fp16 layers the scaler skips
        # the update of a non-finite step anyway; on a raise the codes are dropped)
        check(pending)
        pending = (step, HostValues(loss_i.detach().float()))
        scaler.step(opt)
        scaler.update()
        if pbar is not None:
            pbar.update(1)
    check(pending)
    return ws.detach(), history


def _settings(kwargs: dict, perc_name: str, **extra) -> dict:
    s = {k: kwargs[k] for k in DEFAULTS}
    s["perceptual"] = perc_name
    s.update(extra)
    return s


def _checked_settings(settings: dict) -> dict:
    """The optimisation's numbers checked before any step: a NaN weight made every loss NaN, which was then
    reported as a divergence with advice to lower lr."""
    from ..validate import finite
    for k, v in settings.items():
        if k in ("lr", "lr_next"):
            if finite(v, f"{k} (Adam's learning rate)") <= 0:
                raise ValueError(f"{k} must be > 0 (Adam's learning rate), got {v!r}")
        elif k in ("mse_weight", "perceptual_weight", "w_avg_weight", "w_noise", "locality_weight"):
            finite(v, k, lo=0)
        elif k in ("lr_rampup", "lr_rampdown", "w_noise_ramp"):
            finite(v, f"{k} (a fraction of the steps)", lo=0, hi=1)
    return settings


def _check_init(init, G, n: int, device, dtype, name: str = "init") -> torch.Tensor:
    w_avg = G.mapping.w_avg.to(dtype)
    if init is None:
        return w_avg.reshape(1, 1, -1).expand(n, G.num_ws, G.w_dim).to(device).clone()
    if isinstance(init, Inversion):
        init = init.ws
    init = torch.as_tensor(init).detach().to(device=device, dtype=dtype)
    if init.ndim == 1:
        init = init[None, None]
    elif init.ndim == 2:
        init = init[None]
    if init.ndim != 3 or init.shape[1:] != (G.num_ws, G.w_dim) or init.shape[0] not in (1, n):
        raise ValueError(f"{name} must be [N, {G.num_ws}, {G.w_dim}] (or broadcastable [{G.num_ws}, {G.w_dim}] / "
                         f"[{G.w_dim}]) for N = {n}; got shape {tuple(init.shape)}")
    if not torch.isfinite(init).all():
        raise ValueError(f"{name} contains NaN or inf")
    return init.expand(n, -1, -1).clone()


def _make_pbar(progress, total, desc):
    return progress_bar(total, desc, enabled=progress, leave=True) if progress else None


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------


def _cache_lookup(cache_dir, prefix, targets, init_ws, gen_id, settings, idx):
    """(cache file stem or None, cached Inversion or None), keyed by images, start codes, generator, settings."""
    if not cache_dir:
        return None, None
    cache_dir = default_cache_dir() if cache_dir is True else Path(cache_dir)
    h = hashlib.sha256()
    hash_tensor(h, targets)
    hash_tensor(h, init_ws.float().cpu())
    key = json_key({"images": h.hexdigest(), "generator": gen_id["sha256"], "settings": settings})
    cache_file = entry_path(cache_dir, prefix, key)
    if Path(str(cache_file) + ".json").exists():
        try:
            inv = Inversion.load(cache_file)
            inv.frame_indices = np.asarray(idx, dtype=np.int64)
            return cache_file, inv
        except (ValueError, OSError) as e:
            warn_unusable(f"{cache_file}.json", f"unreadable ({e})", stacklevel=4)
    return cache_file, None


def invert(G, images, *, steps: int = DEFAULTS["steps"], lr: float = DEFAULTS["lr"],
           lr_rampup: float = DEFAULTS["lr_rampup"], lr_rampdown: float = DEFAULTS["lr_rampdown"],
           w_noise: float = DEFAULTS["w_noise"], w_noise_ramp: float = DEFAULTS["w_noise_ramp"],
           mse_weight: float = DEFAULTS["mse_weight"], perceptual=None,
           perceptual_weight: float = DEFAULTS["perceptual_weight"], w_avg_weight: float = DEFAULTS["w_avg_weight"],
           init=None, seed: int = DEFAULTS["seed"], batch_size: int = 8, frame_indices: Sequence[int] | None = None,
           cache_dir=None, checkpoint_dir=None, cuda_graphs: bool | None = None, progress: bool = True) -> Inversion:
    """Project images into W+ of ``G`` (every image independently; ``batch_size`` of them per optimiser run).

    Args:
        G: a :class:`v2s_nb.stylegan3.Generator` (any device; its device and dtype are used).
        images: aligned square crops: uint8 [N, H, W, 3] or float [N, 3, H, W] in [-1, 1] (see
            :func:`prepare_images` for grayscale / RGBA / other sizes).
        steps: Adam steps per image. lr, lr_rampup, lr_rampdown: see :func:`lr_schedule`.
        w_noise, w_noise_ramp: Gaussian noise added to w at step t, std ``w_noise · spread(W) · max(0, 1 - t /
            w_noise_ramp)²`` (the form of NVIDIA's projector), spread(W) being the per-element std of mapped
            samples around ``w_avg``; 0 disables it. NVIDIA's projector scales its factor (also 0.05) by the RMS
            norm of w - w_avg instead, about sqrt(w_dim) times this spread (22x at w_dim 512): its noise is that
            much stronger than this default's.
        mse_weight, perceptual, perceptual_weight: the reconstruction loss (see the module docstring).
        w_avg_weight: weight of the pull toward ``w_avg``.
        init: start codes [N, num_ws, w_dim] (or one code broadcast to all images); default ``w_avg`` on every row.
        seed: seeds the noise on w, ``seed + b`` for the ``b``-th batch (results are deterministic for a given seed,
            device and batch split).
        batch_size: images optimised together (memory vs. speed; results do not depend on it without noise).
        frame_indices: the frames' indices, used in messages and stored (default 0..N-1).
        cache_dir: a folder (or True for :func:`default_cache_dir`): results are stored there keyed by a hash of
            the images, the generator's weights, the settings and ``init``, and reused instead of recomputed.
        checkpoint_dir: each finished batch is saved there (``images_<first>-<last>.npy/.json``, atomically); a
            re-run with the same images, start codes, generator and settings loads finished batches instead of
            optimising them again (one that is unreadable or from other inputs is redone, with a CacheWarning).
        cuda_graphs: on CUDA, render from CUDA graphs (:class:`~v2s_nb.stylegan3.GraphedTrainingSynthesis`,
            recorded once for ``batch_size`` frames; a last, smaller batch is padded): the same kernels without
            eager PyTorch's launch cost, which sets the step time at small batches. None (default): for batches of
            up to :data:`CUDA_GRAPHS_MAX_BATCH` frames. Ignored on the CPU.
        progress: show a ``tqdm.auto`` progress bar with the current loss.
    Returns:
        :class:`Inversion`.
    Raises:
        ValueError: unusable images (wrong shape / channels / aspect ratio / range, NaN — naming the frames).
        InversionDivergedError: the loss became NaN / inf; names the frames.
    """
    kwargs = dict(steps=int(steps), lr=float(lr), lr_rampup=float(lr_rampup), lr_rampdown=float(lr_rampdown),
                  w_noise=float(w_noise), w_noise_ramp=float(w_noise_ramp), mse_weight=float(mse_weight),
                  perceptual_weight=float(perceptual_weight), w_avg_weight=float(w_avg_weight), seed=int(seed))
    _checked_settings(kwargs)
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    device, dtype = _g_device_dtype(G)
    targets = prepare_images(images, G.img_resolution, frame_indices)
    n = targets.shape[0]
    idx = list(range(n)) if frame_indices is None else [int(i) for i in frame_indices]
    init_ws = _check_init(init, G, n, device, dtype)
    perc_fn, perc_name = _resolve_perceptual(perceptual, device)
    _keyed_by(perc_name, cache_dir=cache_dir, checkpoint_dir=checkpoint_dir)
    settings = _settings(kwargs, perc_name, mode="invert", batch_size=int(batch_size),
                         init="w_avg" if init is None else "given")
    gen_id = generator_identity(G)

    cache_file, cached = _cache_lookup(cache_dir, "inv", targets, init_ws, gen_id, settings, idx)
    if cached is not None:
        return cached

    w_spread = _w_spread(G, device, dtype) if w_noise > 0 else 1.0
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    pbar = _make_pbar(progress, steps * math.ceil(n / batch_size), f"invert {n} image(s)")
    render = _renderer(G, min(batch_size, n), cuda_graphs)  # recorded on first use: not when every batch is loaded
    ws_out, mse_out, hist = [], [], []
    try:
        for b, s in enumerate(range(0, n, batch_size)):
            e = min(s + batch_size, n)
            part = _batch(G, ckpt, "images", b, s, idx[s:e], targets[s:e], init_ws[s:e], steps, kwargs, settings,
                          gen_id, perc_fn, pbar, render, w_noise=w_noise, w_spread=w_spread)
            ws_out.append(part.ws)
            mse_out.append(np.asarray(part.mse))
            hist.extend(part.loss_history)
    finally:
        if pbar is not None:
            pbar.close()
    mse = np.concatenate(mse_out)
    inv = Inversion(ws=torch.cat(ws_out), mse=mse, psnr=psnr_from_mse(mse), loss_history=hist, settings=settings,
                    generator=gen_id, frame_indices=np.asarray(idx, dtype=np.int64),
                    total_steps=steps * math.ceil(n / batch_size), frame_steps=steps * n)
    if cache_file is not None:
        inv.save(cache_file)
    return inv


def _batch(G, ckpt, name: str, b: int, start: int, frames: list, targets, init, steps: int, cfg: dict,
           settings: dict, gen_id: dict, perc_fn, pbar, render, **optimise) -> Inversion:
    """Batch ``b`` of an inversion (the images of ``frames``, from the ``start``-th image on): loaded from the folder
    ``ckpt`` where it was saved from the same images, start codes, generator and settings
    (``<name>_<first>-<last>``), else optimised (its noise from ``seed + b``: a batch doesn't depend on those before
    it, so a resumed run equals an uninterrupted one) and saved there. ``optimise``: :func:`_optimise`'s other
    arguments."""
    key = path = None
    if ckpt is not None:
        key = _batch_key(targets, init, gen_id["sha256"], settings, {"start": start})
        path = ckpt / f"{name}_{frames[0]:06d}-{frames[-1]:06d}"
    part = _saved_batch(path, key)
    if part is not None:
        if pbar is not None:
            pbar.update(steps)
        return part
    if pbar is not None:
        pbar.set_description(f"invert frames {frames[0]}..{frames[-1]}")
    rng = torch.Generator(device="cpu").manual_seed(int(settings["seed"]) + b)
    with codes_only(G):
        w, hst = _optimise(G, targets, init, steps, cfg, perc_fn, rng, frames, pbar=pbar, render=render, **optimise)
    mse = _reconstruction_mse(G, w, targets, len(frames))
    part = Inversion(ws=w.float().cpu(), mse=mse, psnr=psnr_from_mse(mse), loss_history=list(hst),
                     settings=dict(settings, checkpoint_key=key, batch_index=b), generator=gen_id,
                     frame_indices=np.asarray(frames, dtype=np.int64), total_steps=steps,
                     frame_steps=steps * len(frames))
    if path is not None:
        part.save(path)
    return part


def _saved_batch(path, key) -> Inversion | None:
    """The batch checkpointed at ``path`` when it was saved under ``key``; else None, with a CacheWarning where an
    unreadable one or one from other inputs was there (it is redone)."""
    if path is None or not Path(str(path) + ".json").exists():
        return None
    try:
        part = Inversion.load(path)
    except (ValueError, OSError) as err:  # Inversion.load: every kind of damage is a ValueError
        warn_unusable(f"{path}.json", f"unreadable ({err})", stacklevel=4)
        return None
    if part.settings.get("checkpoint_key") != key:
        warn_unusable(f"{path}.json", "from other frames / settings / generator", stacklevel=4)
        return None
    return part


def _batch_key(targets: torch.Tensor, init: torch.Tensor, gen_sha: str, settings: dict, extra: dict) -> str:
    h = hashlib.sha256()
    hash_tensor(h, targets)
    hash_tensor(h, init.float().cpu())
    return json_key({"images": h.hexdigest(), "generator": gen_sha, "settings": settings, **extra})


#: Steps of every warm-started batch of :func:`invert_sequence` (the first batch runs ``DEFAULTS["steps"]``).
STEPS_NEXT = 150


@renamed_kwargs(batch="batch_size")
def invert_sequence(G, frames, *, batch_size: int = 8, steps_first: int = DEFAULTS["steps"],
                    steps_next: int = STEPS_NEXT,
                    temporal_weight: float = 0.0, lr: float = DEFAULTS["lr"], lr_next: float | None = None,
                    lr_rampup: float = DEFAULTS["lr_rampup"],
                    lr_rampdown: float = DEFAULTS["lr_rampdown"], w_noise: float = DEFAULTS["w_noise"],
                    w_noise_ramp: float = DEFAULTS["w_noise_ramp"], mse_weight: float = DEFAULTS["mse_weight"],
                    perceptual=None, perceptual_weight: float = DEFAULTS["perceptual_weight"],
                    w_avg_weight: float = DEFAULTS["w_avg_weight"], init=None, seed: int = DEFAULTS["seed"],
                    frame_indices: Sequence[int] | None = None, checkpoint_dir=None, cache_dir=None,
                    cuda_graphs: bool | None = None, progress: bool = True) -> Inversion:
    """Invert the frames of a video, in batches of ``batch_size`` consecutive frames.

    The first batch starts from ``w_avg`` (or ``init``: one code, or one per frame of the first batch) and runs
    ``steps_first`` steps with the decaying noise on w; every later batch starts each of its frames from the
    previous frame's result (the last frame of the batch before) and runs ``steps_next`` steps at peak learning
    rate ``lr_next`` (default ``lr / 2``: the start is already close), without noise.
    With ``temporal_weight > 0`` each frame is also pulled toward its predecessor:
    ``temporal_weight · mean((w_i - w_{i-1})²)`` (the first frame of a batch toward the fixed result of the frame
    before it).

    ``checkpoint_dir``: each finished batch is saved there (``frames_<first>-<last>.npy/.json``, atomically); a
    re-run with the same frames, generator and settings loads finished batches instead of recomputing them, and
    recomputes any that is missing, unreadable or stale (other frames / settings / generator). ``cache_dir``:
    as in :func:`invert`, for the whole result. ``cuda_graphs``: as in :func:`invert` (one recording for all
    batches).

    A batch that runs out of GPU memory is redone with half the frames, with a
    :class:`~v2s_nb.errors.FallbackWarning`, and later batches keep that size (then ``settings['batch_sizes']``
    lists the sizes tried); at one frame a batch it raises :class:`~v2s_nb.method.batches.GPUMemoryError`.

    The result's ``total_steps`` (Adam iterations) and ``frame_steps`` (frames × steps, the rendering work) say
    what the run cost; ``settings['batch_steps']`` lists the steps of each batch.
    """
    kwargs = dict(steps=int(steps_first), lr=float(lr), lr_rampup=float(lr_rampup), lr_rampdown=float(lr_rampdown),
                  w_noise=float(w_noise), w_noise_ramp=float(w_noise_ramp), mse_weight=float(mse_weight),
                  perceptual_weight=float(perceptual_weight), w_avg_weight=float(w_avg_weight), seed=int(seed))
    _checked_settings(dict(kwargs, lr_next=1.0 if lr_next is None else lr_next))
    batch = batch_size
    if batch < 1 or steps_first < 1 or steps_next < 1:
        raise ValueError(f"batch_size, steps_first and steps_next must be >= 1 (got {batch}, {steps_first}, "
                         f"{steps_next})")
    lr_next = float(lr) / 2 if lr_next is None else float(lr_next)
    kwargs_next = dict(kwargs, lr=lr_next)
    device, dtype = _g_device_dtype(G)
    targets = prepare_images(frames, G.img_resolution, frame_indices)
    n = targets.shape[0]
    idx = list(range(n)) if frame_indices is None else [int(i) for i in frame_indices]
    first_init = _check_init(init, G, min(batch, n), device, dtype)
    perc_fn, perc_name = _resolve_perceptual(perceptual, device)
    _keyed_by(perc_name, cache_dir=cache_dir, checkpoint_dir=checkpoint_dir)
    settings = _settings(kwargs, perc_name, mode="sequence", batch=int(batch), steps_first=int(steps_first),
                         steps_next=int(steps_next), lr_next=lr_next, temporal_weight=float(temporal_weight),
                         init="w_avg" if init is None else "given")
    settings["batch_steps"] = batch_steps(0, n, batch, steps_first, steps_next)
    gen_id = generator_identity(G)

    cache_file, cached = _cache_lookup(cache_dir, "seq", targets, first_init, gen_id, settings, idx)
    if cached is not None:
        return cached

    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    w_spread = _w_spread(G, device, dtype) if w_noise > 0 else 1.0
    pbar = _make_pbar(progress, sum(settings["batch_steps"]), f"invert {n} frames")
    # a batch that runs out of GPU memory is redone with half the frames, and the rest keep that size
    size = HalvingBatch(batch, "inversion", device, stacklevel=3)  # renamed_kwargs' wrapper in between
    render = _renderer(G, min(batch, n), cuda_graphs)  # recorded on first use: not when every batch is loaded
    parts: list[Inversion] = []
    prev_w, s = None, 0
    try:
        while s < n:
            e, b = min(s + size.frames, n), len(parts)
            init_b = first_init[: e - s] if b == 0 else prev_w[None].expand(e - s, -1, -1)
            part = None
            try:
                part = _batch(G, ckpt, "frames", b, s, idx[s:e], targets[s:e], init_b,
                              steps_first if b == 0 else steps_next, kwargs if b == 0 else kwargs_next, settings,
                              gen_id, perc_fn, pbar, render, w_noise=w_noise if b == 0 else 0.0, w_spread=w_spread,
                              prev_w=prev_w, temporal_weight=float(temporal_weight))
            except Exception as exc:
                if not out_of_memory(exc):
                    raise
            if part is None:  # out of memory; leaving the except block has freed the failed try's tensors
                render = None  # a recorded renderer's graphs hold the larger batch's memory
                size.halve()
                render = _renderer(G, min(size.frames, n), cuda_graphs)
                if pbar is not None:
                    pbar.total = pbar.n + sum(batch_steps(s, n, size.frames, steps_first, steps_next))
                    pbar.refresh()
                continue
            parts.append(part)
            prev_w = part.ws[-1].to(device=device, dtype=dtype)
            s = e
    finally:
        if pbar is not None:
            pbar.close()
    if size.halvings:  # what was run: the key above stays the one asked for, so a re-run finds this result
        settings = dict(settings, batch_sizes=list(size.sizes), batch_steps=[p.total_steps for p in parts])
    inv = Inversion.concat(parts, settings=settings)
    inv.frame_indices = np.asarray(idx, dtype=np.int64)
    if cache_file is not None:
        inv.from_cache = False
        inv.save(cache_file)
    return inv


class _TuningCheckpoint:
    """:func:`pivotal_tuning`'s state in one file: the trained weights, the optimiser's and loss scaler's states and
    the next step, with the key of what the tuning started from (generator, images, pivots, settings)."""

    def __init__(self, path, what: dict):
        self.path = Path(path)
        self.key = json_key(what)

    def restore(self, params, opt, scaler) -> int:
        """Load a matching saved state into ``params``, ``opt`` and ``scaler``; the step to go on from (0: none)."""
        if not self.path.is_file():
            return 0
        try:
            d = torch.load(self.path, map_location="cpu", weights_only=True)
            if d["key"] != self.key:
                warn_unusable(self.path, "saved by another tuning (other generator / images / pivots / settings)",
                              stacklevel=4)
                return 0
            saved = d["params"]
            if len(saved) != len(params) or any(t.shape != p.shape for t, p in zip(saved, params)):
                raise ValueError("its weights are not this generator's")
            with torch.no_grad():
                for p, t in zip(params, saved):
                    p.copy_(t)
            opt.load_state_dict(d["opt"])
            scaler.load_state_dict(d["scaler"])
            return int(d["step"])
        except Exception as e:  # truncated / corrupt (torch raises many kinds here): tuned from the start
            warn_unusable(self.path, f"unreadable ({type(e).__name__}: {str(e)[:100]})", stacklevel=4)
            return 0

    def save(self, step: int, params, opt, scaler) -> None:
        state = {"key": self.key, "step": int(step), "params": [p.detach().cpu() for p in params],
                 "opt": opt.state_dict(), "scaler": scaler.state_dict()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, lambda f: torch.save(state, f))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def pivotal_tuning(G, images, ws, *, steps: int = 350, lr: float = 3e-4, mse_weight: float = 1.0, perceptual=None,
                   perceptual_weight: float = 1.0, locality_weight: float = 0.1, locality_radius: float | None = None,
                   locality_samples: int = 1, locality_every: int = 1, locality_truncation: float = 0.5,
                   batch_size: int = 4, seed: int = 0, frame_indices: Sequence[int] | None = None,
                   lr_rampup: float = 0.0, lr_rampdown: float = 0.0, cuda_graphs: bool | None = None,
                   checkpoint=None, checkpoint_seconds: float = 60.0, progress: bool = True):
    """Pivotal tuning (PTI, Roich et al. 2022): fine-tune a copy of ``G`` so that the pivots ``ws`` render
    ``images`` exactly, keeping the generator unchanged elsewhere.

    Only the synthesis network is trained (the mapping network and ``w_avg`` are frozen); ``G`` itself is never
    modified. Each step: a batch of pivots (all of them when there are at most ``batch_size``) with loss
    ``mse_weight · MSE + perceptual_weight · P`` against their images, plus, every ``locality_every`` steps, the
    locality regulariser of PTI: for ``locality_samples`` codes ``w_r = w_p + r · (w_z - w_p) / ||w_z - w_p||``
    (``w_z`` from the mapping of random z at truncation ``locality_truncation``, ``w_p`` a pivot; the norm over the
    whole code, all w+ rows, as PTI's),
    ``locality_weight · (mse_weight · MSE + perceptual_weight · P)`` (the same weighting, as PTI's) between the
    tuned and the original generator's renders.
    ``locality_radius`` defaults to PTI's 30 for 512-d W, scaled by ``sqrt(w_dim / 512)`` for other widths.

    Args:
        images: as for :func:`invert` (the same crops that were inverted).
        ws: an :class:`Inversion` or codes [N, num_ws, w_dim].
        steps, lr: Adam steps and learning rate (PTI: 350 steps, 3e-4).
        lr_rampup, lr_rampdown: fractions of the steps for a linear warm-up / cosine ramp-down of the learning
            rate, as :func:`lr_schedule` (default 0 and 0: constant ``lr``, as PTI).
        cuda_graphs: on CUDA, run the tuned generator's forward and backward from CUDA graphs
            (:class:`~v2s_nb.stylegan3.GraphedTrainingSynthesis`, recorded on the first step) and the locality
            term's reference renders from one (:class:`~v2s_nb.stylegan3.GraphedSynthesis`): the same kernels
            without eager PyTorch's launch cost, which at small batches can set the step time. None (default): when
            a step renders at most :data:`CUDA_GRAPHS_MAX_BATCH` codes (one pivot and one locality code). Ignored
            on the CPU. Each step renders the pivots and the locality codes in one batch.
        checkpoint: a file where the tuning's state (the weights, Adam's moments, the loss scale, the step) is saved
            every ``checkpoint_seconds`` of tuning, atomically. A call with the same generator, images, pivots and
            settings resumes from it, to the same result as an uninterrupted run (up to the GPU's nondeterminism);
            one saved by another tuning, or unreadable, is set aside with a :class:`~v2s_nb.errors.CacheWarning`.
            Removed when the tuning finishes.
    Returns:
        The tuned generator (eval mode, ``requires_grad`` off, on ``G``'s device), with ``source`` saying it was
        tuned; save it with :func:`v2s_nb.stylegan3.save_generator`.
    Raises:
        InversionDivergedError: NaN / inf loss, naming the frames of the batch.
    """
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1, got {steps} and {batch_size}")
    _checked_settings(dict(lr=lr, mse_weight=mse_weight, perceptual_weight=perceptual_weight,
                           locality_weight=locality_weight, lr_rampup=lr_rampup, lr_rampdown=lr_rampdown))
    if not checkpoint_seconds >= 0:
        raise ValueError(f"checkpoint_seconds must be >= 0 (seconds between saves), got {checkpoint_seconds!r}")
    device, dtype = _g_device_dtype(G)
    if isinstance(ws, Inversion):
        if frame_indices is None and len(ws.frame_indices) == len(images):
            frame_indices = [int(i) for i in ws.frame_indices]
        ws = ws.ws
    targets = prepare_images(images, G.img_resolution, frame_indices)
    n = targets.shape[0]
    idx = list(range(n)) if frame_indices is None else [int(i) for i in frame_indices]
    codes = torch.as_tensor(ws).shape
    if len(codes) == 3 and codes[0] not in (1, n):
        raise ValueError(f"ws has {codes[0]} pivot codes for {n} images: give one per image (an Inversion of the "
                         "same frames) or one for all")
    pivots = _check_init(ws, G, n, device, dtype, name="ws")
    targets = targets.to(device)
    perc_fn, perc_name = _resolve_perceptual(perceptual, device)
    _keyed_by(perc_name, checkpoint=checkpoint)
    # the steps' renders: the pivots with the locality codes, the pivots alone between locality steps, and the
    # locality codes' reference renders
    k_local = int(locality_samples) if locality_weight and locality_every else 0
    m_piv = min(n, int(batch_size))
    loads = {Workload(m_piv + k_local, "weights")}
    loads |= {Workload(m_piv, "weights")} if not k_local or int(locality_every) > 1 else set()
    loads |= {Workload(k_local)} if k_local else set()
    ensure_compiled(G, sorted(loads, key=repr), progress)
    radius = 30.0 * math.sqrt(G.w_dim / 512) if locality_radius is None else float(locality_radius)

    G_orig = G
    G_t = copy.deepcopy(G).requires_grad_(False)
    G_t.synthesis.requires_grad_(True)
    G_t.train(False)
    params = [p for p in G_t.synthesis.parameters() if p.requires_grad]
    # fused: one launch for all parameters, and the loss scaler's overflow check stays on the GPU (no sync)
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), fused=device.type == "cuda" or None)
    scaler = grad_scaler(G_t)
    rng = torch.Generator(device="cpu").manual_seed(int(seed))
    resume = None
    if checkpoint is not None:
        settings = dict(steps=int(steps), lr=float(lr), mse_weight=float(mse_weight), perceptual=perc_name,
                        perceptual_weight=float(perceptual_weight), locality_weight=float(locality_weight),
                        radius=radius, locality_samples=int(locality_samples), locality_every=int(locality_every),
                        locality_truncation=float(locality_truncation), batch_size=int(batch_size), seed=int(seed),
                        lr_rampup=float(lr_rampup), lr_rampdown=float(lr_rampdown), fp16=scaler.is_enabled())
        resume = _TuningCheckpoint(checkpoint, {"g": generator_identity(G)["sha256"], "images": targets,
                                                "pivots": pivots.float().cpu(), "settings": settings})
    start = resume.restore(params, opt, scaler) if resume is not None else 0

    def rec_loss(img, tgt):
        loss = mse_weight * (img - tgt).square().mean(dim=(1, 2, 3))
        if perc_fn is not None and perceptual_weight:
            loss = loss + perceptual_weight * _per_image(perc_fn(img, tgt), img.shape[0], "perceptual").float()
        return loss

    k = int(locality_samples) if locality_weight and locality_every else 0  # locality codes per locality step
    m = min(n, batch_size)  # pivots per step
    # The random draws of every step up front (the same stream as drawing them step by step), and the locality
    # codes w_r in one mapping call: no host-to-device copy inside the loop waits for the GPU.
    sels, local_steps, zs, picks = [], [], [], []
    for step in range(steps):
        sels.append(torch.arange(n) if n <= batch_size else torch.randperm(n, generator=rng)[:batch_size])
        if k and step % locality_every == 0:
            local_steps.append(step)
            zs.append(torch.randn([k, G.z_dim], generator=rng))
            picks.append(torch.randint(n, [k], generator=rng))
    sel_dev = torch.stack(sels).to(device) if sels else None
    w_rs = {}
    if local_steps:
        with torch.no_grad():
            z = torch.cat(zs).to(device)
            c = torch.zeros([z.shape[0], G.c_dim], device=device) if G.c_dim else None
            w_z = G_orig.mapping(z, c, truncation_psi=locality_truncation).to(dtype)
            p = pivots[torch.cat(picks).to(device)]
            d = w_z - p
            # PTI's step: ``radius`` over the whole code (all w+ rows together), not per row
            step = radius * d / d.flatten(1).norm(dim=1).clamp_min(1e-8)[:, None, None]
            w_r = (p + step).reshape(-1, k, *p.shape[1:])
        w_rs = dict(zip(local_steps, w_r.unbind(0)))

    render = _renderer(G_t, m + k, cuda_graphs, ws_grad=False)
    render_ref = G_orig.synthesis
    if k and render is not G_t.synthesis:  # graphs: the locality term's reference renders from one too
        from ..stylegan3 import GraphedSynthesis
        render_ref = GraphedSynthesis(G_orig, batch_size=k)

    def check(pending):  # the NaN / inf check of a step, read once the GPU has got that far
        if pending is None:
            return
        step, values = pending
        loss_value, loss_mean = values.result()
        if not math.isfinite(loss_value):
            bad = [idx[int(i)] for i in sels[step].tolist()]
            raise InversionDivergedError(f"pivotal tuning diverged at step {step}/{steps} (NaN/inf loss) on "
                                         f"frame(s) {bad}; lower lr (now {lr})", bad)
        if pbar is not None and (step % 10 == 0 or step == steps - 1):
            pbar.set_postfix(loss=f"{loss_mean:.4g}", refresh=False)

    pbar = _make_pbar(progress, steps, f"PTI on {n} pivot(s)" + (f", resumed at step {start}" if start else ""))
    if pbar is not None and start:
        pbar.update(start)
    scheduled = bool(lr_rampup or lr_rampdown)
    pending = None
    saved_at = time.monotonic()
    try:
        for step in range(start, steps):
            if scheduled:
                for group in opt.param_groups:
                    group["lr"] = lr_schedule(step, steps, lr, lr_rampup, lr_rampdown)
            sel = sel_dev[step]
            codes = pivots[sel]
            w_r = w_rs.get(step)
            if w_r is not None:
                with torch.no_grad():
                    ref = render_ref(w_r).float()
                codes = torch.cat([codes, w_r])  # one render for the pivots and the locality codes
            # before the render: a graphed render copies gradients still held from the last step (graphs.py)
            opt.zero_grad(set_to_none=True)
            img = render(codes).float()
            loss_i = rec_loss(img[:m], targets[sel])
            loss = loss_i.sum()
            if w_r is not None:
                reg = rec_loss(img[m:], ref)
                loss = loss + locality_weight * reg.sum()
            scaler.scale(loss).backward()
            # A non-finite loss is caught one step late (a read now would wait for this step's GPU work); with
            # fp16 layers the scaler skips such a step's update anyway, and on a raise the copy is dropped.
            check(pending)
            pending = (step, HostValues(torch.stack([loss.detach(), loss_i.detach().mean()])))
            scaler.step(opt)
            scaler.update()
            if pbar is not None:
                pbar.update(1)
            if resume is not None and step + 1 < steps and time.monotonic() - saved_at >= checkpoint_seconds:
                check(pending)  # a diverged step is never saved as one to resume from
                pending = None
                resume.save(step + 1, params, opt, scaler)
                saved_at = time.monotonic()
        check(pending)
    finally:
        if pbar is not None:
            pbar.close()
    if resume is not None:
        resume.remove()
    G_t.requires_grad_(False).eval()
    G_t.is_random = bool(getattr(G, "is_random", False))
    G_t.source = (f"{G.source} + PTI ({n} pivot(s), {steps} steps, lr {lr}, locality {locality_weight}, "
                  f"perceptual {perc_name})")
    return G_t
