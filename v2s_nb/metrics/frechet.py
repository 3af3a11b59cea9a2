"""FID of Table 1: Fréchet distance between the feature statistics of two sets of frames.

``d² = |μ1 - μ2|² + tr(Σ1) + tr(Σ2) - 2 tr((Σ1 Σ2)^½)``

The distance itself (:func:`frechet_distance`) works on any features. Which features decides what the number
means; the extractor is pluggable (:func:`get_feature_extractor`):

* ``'inception'`` - :class:`InceptionFeatures`, the 2048-d pool features of the FID Inception-v3 (the
  TensorFlow 2015-12-05 graph ported to PyTorch), through **torch-fidelity** (also what torchmetrics'
  ``FrechetInceptionDistance`` runs) or **pytorch-fid**, whichever is installed. Only these numbers are
  comparable with the paper's FID (17.34 / 6.15). Both libraries need torchvision built for your torch; their
  weights are a download into torch's hub cache (``torch.hub.get_dir()/checkpoints``); offline, a
  :class:`v2s_nb.weights.WeightsUnavailableError` names the file, its URL and the path to put it at.
* ``'pixels'`` - :class:`PooledPixelFeatures`: a fixed random projection of 32x32 area-pooled pixels.
  **Not Inception**: works anywhere without weights, numbers are not comparable to the paper.
* ``'dlib-face'`` - :class:`FaceEmbeddingFeatures`: dlib's 128-d face embeddings (installed weights).
  **Not Inception**: measures the spread of identities, not image quality; frames without a face are left
  out (and counted).

Nothing falls back silently: ``get_feature_extractor('inception', fallback='pixels')`` is how a user *chooses*
an offline fallback; it warns, and every result names the extractor that really ran.
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.error
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import atomic_path
from ..errors import FallbackWarning
from ._common import clip_frames, progress_bar

__all__ = [
    "FeatureExtractor", "PooledPixelFeatures", "FaceEmbeddingFeatures", "InceptionFeatures", "CallableFeatures",
    "FIDResult", "EXTRACTORS", "INCEPTION_WEIGHTS", "feature_statistics", "frechet_distance",
    "frechet_distance_features", "fid", "get_feature_extractor", "inception_weights",
]


# ----------------------------------------------------------------------------------------------- the distance


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], covariance [D, D]) of features [N, D] in float64 (covariance with N - 1, as in FID)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N, D] with N >= 2, got shape {f.shape}.")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or infinity; drop those rows first.")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sym(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + a.T)


def frechet_distance(mu1, sigma1, mu2, sigma2, *, method: str = "eigh", eps: float = 1e-6) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2): means [D], covariances [D, D]
    (array-likes of floats, e.g. from :func:`feature_statistics`); the distance is in squared feature units.

    ``method='eigh'`` (default): ``tr((Σ1 Σ2)^½)`` as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix ``Σ1^½ Σ2 Σ1^½`` (which has the same eigenvalues as ``Σ1 Σ2``); eigenvalues that
    rounding pushed below zero are clipped. Real, stable also for the rank-deficient covariances of fewer
    samples than dimensions.

    ``method='sqrtm'``: ``scipy.linalg.sqrtm(Σ1 Σ2)`` with the usual fixes of the reference FID code: if the
    result is not finite, ``eps`` is added to both diagonals and it is recomputed; a complex result whose
    diagonal has imaginary parts up to 1e-3 is replaced by its real part (larger ones raise ValueError).

    A result below zero (rounding, identical sets) is returned as 0.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shapes do not match: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, "
                         f"sigma2 {s2.shape}.")
    diff = mu1 - mu2
    if method == "eigh":
        w, v = np.linalg.eigh(_sym(s1))
        root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
        ev = np.linalg.eigvalsh(_sym(root1 @ _sym(s2) @ root1))
        tr_covmean = float(np.sqrt(np.clip(ev, 0.0, None)).sum())
    elif method == "sqrtm":
        from scipy import linalg

        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(d) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                raise ValueError(f"sqrtm gave a complex matrix (largest imaginary part "
                                 f"{np.max(np.abs(covmean.imag)):.3g}); use method='eigh'.")
            covmean = covmean.real
        tr_covmean = float(np.trace(covmean))
    else:
        raise ValueError(f"method must be 'eigh' or 'sqrtm', got {method!r}.")
    out = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(out, 0.0)


def frechet_distance_features(features1, features2, **kwargs) -> float:
    """Fréchet distance between two feature sets [N1, D] and [N2, D] (see :func:`frechet_distance`)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2), **kwargs)


# ----------------------------------------------------------------------------------------------- extractors


class FeatureExtractor:
    """Turns frames into one feature vector per frame.

    Subclasses set ``name``, ``dim`` and ``comparable_to_paper`` (True only for the FID Inception network) and
    implement :meth:`features` (uint8 [n, H, W, 3] -> float [n, D], NaN rows for frames it cannot use).
    ``__call__`` takes any clip form, works in batches of ``batch_size`` and shows a progress bar.
    """

    name: str = "features"
    dim: int = 0
    comparable_to_paper: bool = False
    batch_size: int = 32

    def features(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, frames, progress: bool = False) -> np.ndarray:
        clip = clip_frames(frames, allow_single_image=True)
        out = []
        bar = progress_bar(len(clip), f"features ({self.name})", progress)
        try:
            for i in range(0, len(clip), self.batch_size):
                batch = clip[i:i + self.batch_size]
                f = np.asarray(self.features(batch), np.float64)
                if f.ndim == 0 or f.shape[0] != len(batch):  # e.g. a transposed [D, n] would mix frames up
                    raise ValueError(f"feature extractor {self.name!r} returned shape {f.shape} for {len(batch)} "
                                     f"frames; it must return one row per frame, [n, D] = [{len(batch)}, D] "
                                     "(transpose a feature-major [D, n] output).")
                f = f.reshape(len(batch), -1)
                out.append(f)
                bar.update(len(batch))
        finally:
            bar.close()
        return np.concatenate(out, axis=0)

    @property
    def label(self) -> str:
        """Name plus a warning where the numbers are not the paper's kind of FID."""
        return self.name if self.comparable_to_paper else f"{self.name} (NOT Inception; not comparable to the paper)"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label}, dim={self.dim})"


class PooledPixelFeatures(FeatureExtractor):
    """Offline stand-in for Inception: each frame area-resized to ``size`` x ``size`` RGB in [0, 1], centred
    and multiplied by a fixed Gaussian random matrix (seeded, [size²·3, dim] / sqrt(size²·3)).

    It sees colour and coarse layout only. **Not Inception: FID numbers from it are not comparable with the
    paper's** (or with any published FID); use it to compare methods with each other offline.
    """

    comparable_to_paper = False

    def __init__(self, size: int = 32, dim: int = 128, seed: int = 0, batch_size: int = 64):
        self.size, self.dim, self.seed, self.batch_size = int(size), int(dim), int(seed), int(batch_size)
        self.name = f"pixels{self.size}-rp{self.dim}"
        n = self.size * self.size * 3
        self._proj = np.random.default_rng(self.seed).standard_normal((n, self.dim)) / np.sqrt(n)

    def features(self, batch: np.ndarray) -> np.ndarray:
        import cv2

        small = np.stack([cv2.resize(np.ascontiguousarray(f), (self.size, self.size), interpolation=cv2.INTER_AREA)
                          for f in batch])
        x = small.reshape(len(batch), -1).astype(np.float64) / 255.0 - 0.5
        return x @ self._proj


class FaceEmbeddingFeatures(FeatureExtractor):
    """Offline stand-in for Inception: dlib's 128-d face embeddings (the ID network), NaN for frames without a
    face (left out of the statistics and counted). **Not Inception: not comparable with the paper's FID**;
    it measures how the identity distribution moves, not image quality."""

    name = "dlib-face"
    dim = 128
    comparable_to_paper = False

    def __init__(self, detector: str = "hog", upsample: int = 1, batch_size: int = 32):
        self.detector, self.upsample, self.batch_size = detector, upsample, int(batch_size)

    def features(self, batch: np.ndarray) -> np.ndarray:
        from .identity import face_embeddings

        return face_embeddings(batch, detector=self.detector, upsample=self.upsample, progress=False)[0]


class CallableFeatures(FeatureExtractor):
    """Wraps a user function ``frames uint8 [n, H, W, 3] -> features [n, D]`` (NaN rows = unusable frame)."""

    def __init__(self, fn: Callable, name: str | None = None, comparable_to_paper: bool = False,
                 batch_size: int = 32):
        self.fn, self.batch_size = fn, int(batch_size)
        self.name = name or getattr(fn, "__name__", "custom")
        self.comparable_to_paper = bool(comparable_to_paper)

    def features(self, batch):
        f = self.fn(batch)
        if hasattr(f, "detach"):
            f = f.detach().cpu().numpy()
        return f


#: The FID Inception-v3 weights each backend loads: (file name, URL).
INCEPTION_WEIGHTS = {
    "torch-fidelity": ("weights-inception-2015-12-05-6726825d.pth",
                       "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                       "weights-inception-2015-12-05-6726825d.pth"),
    "pytorch-fid": ("pt_inception-2015-12-05-6726825d.pth",
                    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                    "pt_inception-2015-12-05-6726825d.pth"),
}
_BACKEND_MODULES = {"torch-fidelity": "torch_fidelity", "pytorch-fid": "pytorch_fid"}


def inception_weights(backend: str = "torch-fidelity", *, download: bool = True) -> Path:
    """Local path of the FID Inception weights for ``backend``, in torch's hub cache
    (``torch.hub.get_dir()/checkpoints/<file>``, where the libraries themselves look).

    Missing: downloaded when ``download`` (and the network allow it); otherwise
    :class:`v2s_nb.weights.WeightsUnavailableError`, whose message names the file, its URL and the path to
    put a hand-downloaded copy at. The file's SHA-256 must start with the hex digits in its name (torch hub's
    convention): checked on download (:class:`v2s_nb.weights.WeightsChecksumError` if not) and for a cached
    copy, which is removed and fetched again when it does not match.
    """
    import torch

    from ..weights import WeightsChecksumError, WeightsUnavailableError, sha256_file

    if backend not in INCEPTION_WEIGHTS:
        raise ValueError(f"backend must be one of {tuple(INCEPTION_WEIGHTS)}, got {backend!r}.")
    filename, url = INCEPTION_WEIGHTS[backend]
    prefix = _hash_prefix(filename)
    target = Path(torch.hub.get_dir()) / "checkpoints" / filename
    removed = ""
    if target.is_file():
        got = sha256_file(target)
        if got.startswith(prefix):
            return target
        # an empty / truncated / foreign file would load as garbage or fail deep inside the library
        target.unlink()
        removed = (f"the cached copy at {target} had the wrong SHA-256 ({got[:len(prefix)]}..., expected "
                   f"{prefix}... as its name says) and was removed; ")
    hint = (f"download {url} and put it at {target} (torch's hub cache, see torch.hub.get_dir(); set TORCH_HOME "
            "to move it), or pass weights='<path>' to InceptionFeatures; or choose an offline extractor that is "
            "not Inception (feature_extractor='pixels' or 'dlib-face'; its FID is not comparable to the paper).")
    if not download:
        raise WeightsUnavailableError(f"FID Inception weights '{filename}' are not in the cache: {removed}{hint}",
                                      name=filename, url=url, target=target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(target, suffix=".pth") as tmp:
            torch.hub.download_url_to_file(url, str(tmp), hash_prefix=prefix, progress=True)
    except (urllib.error.URLError, OSError, TimeoutError, ConnectionError) as e:
        raise WeightsUnavailableError(f"could not download the FID Inception weights '{filename}' ({e}): "
                                      f"{removed}{hint}", name=filename, url=url, target=target) from e
    except RuntimeError as e:  # torch.hub's hash_prefix check; the download is already deleted
        raise WeightsChecksumError(f"the downloaded FID Inception weights '{filename}' from {url} failed the "
                                   f"SHA-256 check ({e}); nothing was saved. Try again, or {hint}", name=filename,
                                   url=url, path=target, kind="sha256", expected=prefix, got=None) from e
    return target


def _hash_prefix(filename: str) -> str:
    """The SHA-256 prefix in a torch hub file name (``name-<hex>.pth``, torch.hub's convention)."""
    m = re.search(r"-([0-9a-f]{8,})\.", filename)
    if m is None:
        raise ValueError(f"weight file name {filename!r} carries no SHA-256 prefix (expected 'name-<hex>.pth').")
    return m.group(1)


def _installed_backend(backend: str) -> str:
    import importlib.util

    names = list(_BACKEND_MODULES) if backend == "auto" else [backend]
    for b in names:
        if b not in _BACKEND_MODULES:
            raise ValueError(f"backend must be 'auto' or one of {tuple(_BACKEND_MODULES)}, got {backend!r}.")
        if importlib.util.find_spec(_BACKEND_MODULES[b]) is not None:
            return b
    raise ImportError(
        "Inception features for FID need torch-fidelity (pip install torch-fidelity; torchmetrics' FID uses it "
        "too) or pytorch-fid (pip install pytorch-fid); both need torchvision built for your torch - install "
        "them with the torch build you use, or a CUDA torch may be pulled in. Offline / without them, choose a "
        "stand-in that is NOT Inception (numbers not comparable to the paper): feature_extractor='pixels' or "
        "'dlib-face', or get_feature_extractor('inception', fallback='pixels').")


class InceptionFeatures(FeatureExtractor):
    """2048-d pool features of the FID Inception-v3 through torch-fidelity or pytorch-fid.

    ``backend``: ``'auto'`` (torch-fidelity if importable, else pytorch-fid), ``'torch-fidelity'`` or
    ``'pytorch-fid'``. ``weights``: path of the weight file; default: torch's hub cache, downloaded on first
    use (see :func:`inception_weights`). Frames of any size are resized by the library (to 299 x 299, the
    TensorFlow-compatible way in torch-fidelity). The model is built here, so a missing library or weight file
    fails at once with an error saying what to install or where to put the file.
    """

    comparable_to_paper = True
    dim = 2048

    def __init__(self, backend: str = "auto", weights: str | os.PathLike | None = None, device=None,
                 batch_size: int = 32, download: bool = True):
        import torch

        self.backend = _installed_backend(backend)
        self.name = f"inception-v3-fid ({self.backend})"
        self.batch_size = int(batch_size)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        path = Path(weights) if weights is not None else inception_weights(self.backend, download=download)
        if not path.is_file():
            raise FileNotFoundError(f"Inception weight file not found: {path}")
        if self.backend == "torch-fidelity":
            try:
                from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
            except Exception as e:  # e.g. a torchvision that does not match torch
                raise ImportError(f"torch-fidelity is installed but does not import ({type(e).__name__}: {e}); it "
                                  "needs torchvision built for your torch.") from e
            model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                feature_extractor_weights_path=str(path))
        else:
            try:
                from pytorch_fid.inception import InceptionV3
            except Exception as e:
                raise ImportError(f"pytorch-fid is installed but does not import ({type(e).__name__}: {e}); it "
                                  "needs torchvision built for your torch.") from e

            cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS["pytorch-fid"][0]
            if path.resolve() != cached.resolve():
                raise ValueError(f"pytorch-fid loads its weights from torch's hub cache only: put the file at "
                                 f"{cached} (or use backend='torch-fidelity', which takes any path).")
            model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]])  # finds the cached file, no download
        self.model = model.to(self.device).eval()

    def features(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).to(self.device)
        with torch.no_grad():
            if self.backend == "torch-fidelity":
                f = self.model(x)[0]
            else:
                f = self.model(x.float() / 255.0)[0].squeeze(-1).squeeze(-1)
        return f.double().cpu().numpy()


EXTRACTORS = {"inception": InceptionFeatures, "pixels": PooledPixelFeatures, "dlib-face": FaceEmbeddingFeatures}


def get_feature_extractor(spec="inception", *, fallback=None, **kwargs) -> FeatureExtractor:
    """A :class:`FeatureExtractor` from a name (``'inception'``, ``'pixels'``, ``'dlib-face'``), an extractor
    (returned as is) or a callable ``frames -> [n, D]`` (wrapped, labelled not comparable to the paper).

    ``fallback``: an extractor (spec) to use *instead* when ``spec`` cannot be built (library or weights
    missing); the user's explicit choice. It warns, and the returned extractor's ``name`` says what runs.
    ``kwargs`` go to the named extractor's constructor.
    """
    from ..weights import WeightsChecksumError, WeightsUnavailableError

    if isinstance(spec, FeatureExtractor):
        return spec
    if callable(spec) and not isinstance(spec, str):
        return CallableFeatures(spec)
    if spec not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {spec!r}: use one of {tuple(EXTRACTORS)}, a FeatureExtractor, "
                         "or a callable frames -> [n, D].")
    try:
        return EXTRACTORS[spec](**kwargs)
    except (ImportError, WeightsUnavailableError, WeightsChecksumError, FileNotFoundError) as e:
        if fallback is None:
            raise
        fb = get_feature_extractor(fallback)
        warnings.warn(f"feature extractor {spec!r} is unavailable ({type(e).__name__}: {e}); using the fallback "
                      f"you chose: {fb.label}.", FallbackWarning, stacklevel=2)
        return fb


# ----------------------------------------------------------------------------------------------- FID


@dataclasses.dataclass(frozen=True)
class FIDResult:
    """FID between two frame sets, with what it was computed from.

    ``value``; ``features``: the extractor's name; ``comparable_to_paper``; ``n_a`` / ``n_b``: frames used;
    ``dropped_a`` / ``dropped_b``: indices of frames the extractor could not use (e.g. no face).
    """

    value: float
    features: str
    comparable_to_paper: bool
    n_a: int
    n_b: int
    dropped_a: tuple[int, ...] = ()
    dropped_b: tuple[int, ...] = ()

    def __float__(self) -> float:
        return float(self.value)


def _usable(features: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    ok = np.isfinite(features).all(axis=1)
    return features[ok], tuple(int(i) for i in np.flatnonzero(~ok))


def _why(ext: FeatureExtractor) -> str:
    """Why an extractor leaves frames out, in words."""
    return "no face found" if isinstance(ext, FaceEmbeddingFeatures) else "no usable features"


def fid(frames_a, frames_b, feature_extractor="inception", *, fallback=None, method: str = "eigh",
        progress: bool = True) -> FIDResult:
    """FID between two sets of frames (clips [N, H, W, 3], any form :func:`v2s_nb.video.as_rgb_uint8` takes).

    ``feature_extractor``: see :func:`get_feature_extractor`; ``fallback`` is passed on. Frames the extractor
    cannot use (NaN features, e.g. no face for ``'dlib-face'``) are left out and listed in the result. For
    ready features use :func:`frechet_distance_features`.
    """
    ext = get_feature_extractor(feature_extractor, fallback=fallback)
    fa, da = _usable(ext(frames_a, progress=progress))
    fb, db = _usable(ext(frames_b, progress=progress))
    if len(fa) < 2 or len(fb) < 2:  # a covariance needs two samples; say it in frames, not feature rows
        sides = "; ".join(f"{what}: {len(f) + len(d)} frame(s) given, {len(d)} left out ({_why(ext)}), {len(f)} usable"
                          for what, f, d in (("frames_a", fa, da), ("frames_b", fb, db)))
        raise ValueError(f"FID needs at least 2 usable frames in each set ({sides}); give more frames.")
    value = frechet_distance_features(fa, fb, method=method)
    return FIDResult(value, ext.name, ext.comparable_to_paper, len(fa), len(fb), da, db)
