"""Section 3.3: global pose encoding — move only W+ rows 0-7 of the reference so its head pose matches a target.

    w_ref^p = argmin over w[0:8] of  λ_pose · mean_a (P_r(G(w))_a - target_a)²  +  λ_id · mean |w[0:8] - w_ref[0:8]|

with ``a`` over (yaw, pitch, roll) in degrees, ``λ_pose = 2`` (a scalar or one weight per angle) and
``λ_id = 0.04`` (paper 4.1). Rows 8+ are never touched. Adam on rows 0-7 (``steps``, ``lr`` in w units).

``P_r`` (``pose_fn``) is any differentiable callable returning [N, 3] degrees (yaw, pitch, roll), either on
images (``pose_input='image'``: float [N, 3, R, R] in [-1, 1] from ``G.synthesis(w)``) or on the codes
(``pose_input='w'``: [N, num_ws, w_dim]). A callable with a ``pose_input`` attribute says which itself.

Default ``P_r`` (:func:`default_pose_regressor`, ``pose_regressor='auto'``): the paper's, on the rendered image,
:class:`ImagePoseRegressor` = head pose (:func:`v2s_nb.face.head_pose.head_pose_torch`, differentiable) of the 68
PFLD landmarks (:mod:`v2s_nb.face.landmark_cnn`, the CNN of "cunjian 2019") found in the face square of the
aligned frame (:data:`~v2s_nb.face.landmark_cnn.ALIGNED_FACE_SQUARE`). The gradient reaches all of rows 0-7
through the image. Its weights are downloaded once (``v2s_nb.weights.fetch("pfld-68")``); when they can't be had,
a warning says so and the w-space surrogate is used instead.

The surrogate (``pose_regressor='w-linear'``): a ridge-regression :class:`PoseRegressor` on the mean of rows 0-7,
fitted once per generator on rendered samples whose pose is measured with :func:`v2s_nb.face.landmarks` +
:func:`v2s_nb.face.head_pose`, cached under ``cache_dir()/pose_regressor`` keyed by the generator's weight hash
(cheap, offline, but rank 1: each frame's change is one direction added to all 8 rows). Either way the pose
actually achieved is then *measured* on the rendered image with dlib + ``head_pose``
(:attr:`PoseEncoding.achieved`) and reported against the target (:meth:`PoseEncoding.report`); ``settings['pose_fn']``
names the regressor that ran. A generator whose samples contain no detectable faces (``G.is_random``, or
landmarks found on fewer than half of the samples) raises :class:`PoseUnavailableError` instead of fitting
nonsense.

Sequence mode (:func:`encode_pose_sequence`): one target per frame, in batches of frames (``batch_size``), each
batch warm-started from the previous batch's last result (``steps_first`` steps for the first batch,
``steps_next`` after), the identity term always measured against the original reference rows.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..atomic import write_atomic
from .batches import HalvingBatch, batch_steps, out_of_memory
from .loss_scale import HostValues, codes_only, grad_scaler
from torch import nn
from ..errors import FallbackWarning, V2SError
from ..progress import progress_bar, progress_iter
from ..stylegan3.precompile import Workload, batch_sizes, ensure_compiled
from ..validate import integer

__all__ = [
    "LAMBDA_POSE", "LAMBDA_ID", "POSE_ROWS", "PoseUnavailableError", "PoseEncoding", "PoseRegressor",
    "encode_pose", "encode_pose_sequence", "default_pose_regressor", "fit_pose_regressor", "measure_pose",
    "images_pose", "ImagePoseRegressor", "pfld_pose_regressor", "POSE_REGRESSORS",
]

LAMBDA_POSE = 2.0
LAMBDA_ID = 0.04
POSE_ROWS = 8
ANGLES = ("yaw", "pitch", "roll")
POSE_REGRESSORS = ("auto", "pfld", "w-linear")


class PoseUnavailableError(V2SError, RuntimeError):
    """No default pose regressor can be made for this generator (its samples contain no detectable faces)."""


# ----------------------------------------------------------------------------------------------- result


@dataclasses.dataclass
class PoseEncoding:
    """Result of :func:`encode_pose` / :func:`encode_pose_sequence`.

    ``ws``: [N, num_ws, w_dim] the pose-encoded codes (rows 8+ equal the input's); ``target``: [N, 3] degrees;
    ``predicted``: [N, 3] ``P_r`` of the result; ``achieved``: [N, 3] head pose measured on the rendered image
    (NaN where not measured or no face found); ``loss_history``: per frame, the loss at every step.
    """

    ws: torch.Tensor
    target: np.ndarray
    predicted: np.ndarray
    achieved: np.ndarray
    loss_history: list
    settings: dict

    def __len__(self) -> int:
        return int(self.ws.shape[0])

    def report(self) -> str:
        """Table: per frame, target vs predicted (P_r) vs achieved (measured) yaw / pitch / roll, degrees."""
        lines = ["frame | target yaw pitch roll | P_r yaw pitch roll | measured yaw pitch roll"]
        for i in range(len(self)):
            t, p, a = self.target[i], self.predicted[i], self.achieved[i]
            f = lambda v: " ".join(f"{x:6.1f}" for x in v)  # noqa: E731
            lines.append(f"{i:5d} | {f(t)} | {f(p)} | {f(a)}")
        err = np.abs(self.achieved - self.target)
        if np.isfinite(err).any():
            lines.append(f"mean |measured - target| (yaw, pitch, roll): {np.nanmean(err, axis=0).round(2).tolist()}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- default P_r


class PoseRegressor(nn.Module):
    """(yaw, pitch, roll) = mean(w[rows]) @ A + b: a linear map of the mean of W+ rows 0-7 (differentiable in w)."""

    pose_input = "w"

    def __init__(self, A: torch.Tensor, b: torch.Tensor, rows: int = POSE_ROWS, info: dict | None = None):
        super().__init__()
        self.register_buffer("A", torch.as_tensor(A, dtype=torch.float32))
        self.register_buffer("b", torch.as_tensor(b, dtype=torch.float32).reshape(3))
        self.rows = int(rows)
        self.info = dict(info or {})

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        x = ws[:, :self.rows].float().mean(1)
        return x @ self.A.to(x.device) + self.b.to(x.device)


class ImagePoseRegressor(nn.Module):
    """P_r(image) = head pose of the PFLD landmarks in the face square: images -> [N, 3] yaw, pitch, roll (degrees).

    ``forward(images)``: float [N, 3, H, W] in [-1, 1] (``G.synthesis`` output), differentiable w.r.t. the images.
    ``pfld``: a :class:`~v2s_nb.face.landmark_cnn.PFLD` module. ``square``: where the face is, (left, top, right,
    bottom) as fractions of the width / height (default :data:`~v2s_nb.face.landmark_cnn.ALIGNED_FACE_SQUARE`,
    right for FFHQ-aligned frames), one for all frames [4] or one per frame [N, 4]. ``iterations``: of the
    perspective pose fit (:func:`~v2s_nb.face.head_pose.head_pose_torch`). The camera is that of
    :func:`~v2s_nb.face.head_pose` (focal length = image width), so the angles are comparable with it.
    ``cuda_graphs``: on CUDA, while gradients are recorded, the pose fit (hundreds of tiny operations, each a kernel
    launch, forward and backward) is replayed from CUDA graphs recorded once per batch size: the same kernels and
    numbers without their launch cost, which otherwise outweighs the GPU work at small batches (where CUDA refuses
    a recording: eagerly, with a warning).
    """

    pose_input = "image"

    def __init__(self, pfld, square=None, iterations: int = 8, cuda_graphs: bool = True):
        super().__init__()
        from ..face.landmark_cnn import ALIGNED_FACE_SQUARE

        self.pfld = pfld
        sq = torch.as_tensor(ALIGNED_FACE_SQUARE if square is None else square, dtype=torch.float64)
        if sq.shape[-1:] != (4,) or sq.ndim > 2 or not bool(((sq[..., 2:] > sq[..., :2])).all()):
            raise ValueError(f"square must be (left, top, right, bottom) fractions [4] or [N, 4] with right > left "
                             f"and bottom > top, got {square!r}")
        self.square = sq  # on the host: crops are placed without reading the GPU back (no waiting for it)
        self.iterations = int(iterations)
        self.cuda_graphs = bool(cuda_graphs)
        self._graphed = {}  # (landmarks' shape, dtype, device, image size, iterations) -> graphed pose fit or None

    def landmarks(self, images: torch.Tensor, square: torch.Tensor | None = None) -> torch.Tensor:
        """PFLD landmarks [N, 68, 2] in image pixels of ``images`` [N, 3, H, W] in [-1, 1] (differentiable), in
        ``square`` ([4] or [N, 4] fractions; default the regressor's own)."""
        from ..face.landmark_cnn import pfld_landmarks

        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W] in [-1, 1], got {tuple(images.shape)}")
        sq = self.square if square is None else square
        if sq.ndim == 2 and len(sq) != len(images):
            raise ValueError(f"this regressor has one face square per frame ({len(sq)}) and got {len(images)} images: "
                             "per-frame squares are for read() of those frames; for other images (the generator's, "
                             "FFHQ-aligned) use a regressor with one square [4]")
        h, w = images.shape[-2:]
        px = sq * torch.tensor([w, h, w, h], dtype=torch.float64, device=sq.device)  # on the host unless given else
        x = (images.float() + 1) * 0.5
        return pfld_landmarks(self.pfld, x, px.to(x.dtype))

    @torch.no_grad()
    def read(self, frames, batch_size: int = 16) -> np.ndarray:
        """Poses [T, 3] (degrees) of aligned frames, uint8 [T, H, W, 3] (or [H, W, 3]): eq 4's targets
        P_r(D_j) read by the same regressor that reads the generator's images."""
        from ..video import as_rgb_uint8

        frames = as_rgb_uint8(frames, allow_single_image=True)
        per_frame = self.square.ndim == 2
        if per_frame and len(self.square) != len(frames):
            raise ValueError(f"this regressor has {len(self.square)} face squares (one per frame) and got "
                             f"{len(frames)} frames")
        dev = next(itertools.chain(self.pfld.parameters(), self.pfld.buffers())).device
        out = []
        for s in range(0, len(frames), int(batch_size)):
            x = torch.from_numpy(np.ascontiguousarray(frames[s:s + int(batch_size)])).to(dev)
            x = x.permute(0, 3, 1, 2).float() / 127.5 - 1
            out.append(self._pose(x, self.square[s:s + len(x)] if per_frame else None).double().cpu().numpy())
        return np.concatenate(out)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._pose(images, None)

    def _pose(self, images, square):
        from ..face.head_pose import head_pose_torch

        pts = self.landmarks(images, square)
        size = (images.shape[-1], images.shape[-2])
        fit = None
        if (self.cuda_graphs and pts.is_cuda and pts.requires_grad and torch.is_grad_enabled()
                and not torch.cuda.is_current_stream_capturing()):
            key = (tuple(pts.shape), pts.dtype, pts.device, size, self.iterations)
            if key not in self._graphed:  # recorded on these landmarks (warm-up included): all branches see real values
                from ..stylegan3.graphs import graphed_callables, record_or_none

                sample = pts.detach().clone().requires_grad_(True)
                fn = functools.partial(head_pose_torch, image_size=size, iterations=self.iterations)
                self._graphed[key] = record_or_none(
                    "the pose fit", pts.device, lambda pool: graphed_callables(fn, (sample,), pool, warm_up_iters=3))
            fit = self._graphed[key]  # None where CUDA refused the recording (a warning said so)
        if fit is None:
            return head_pose_torch(pts, size, iterations=self.iterations).float()
        # the replay writes into the recording's buffers: a copy, so a result kept by the caller stays as it was
        return fit(pts).float().clone()


def pfld_pose_regressor(device=None, *, square=None, download: bool = True) -> ImagePoseRegressor:
    """The paper's P_r as an :class:`ImagePoseRegressor` on ``device``, PFLD weights from
    ``v2s_nb.weights.fetch("pfld-68")`` (``download=False``: only pre-downloaded copies; raises
    :class:`~v2s_nb.weights.WeightsUnavailableError` when there are none)."""
    from ..face.landmark_cnn import load_pfld

    return ImagePoseRegressor(load_pfld(device, download=download), square).to(device or "cpu")


def images_pose(images: np.ndarray) -> np.ndarray:
    """Head pose [N, 3] (degrees) of uint8 images [N, H, W, 3]; NaN rows where no face is found."""
    from ..face import head_pose, landmarks
    images = np.asarray(images)
    up = 1 if images.shape[1] < 512 else 0
    tr = landmarks(images, upsample=up, progress=False)
    if not tr.found.any():
        return np.full((len(images), 3), np.nan)
    return head_pose(tr, interpolate=False)


def fit_pose_regressor(ws: torch.Tensor, poses: np.ndarray, rows: int = POSE_ROWS, ridge: float = 1e-2,
                       info: dict | None = None) -> PoseRegressor:
    """Ridge regression of ``poses`` [N, 3] on the mean of rows 0-7 of ``ws`` [N, num_ws, w_dim] (NaN rows dropped)."""
    poses = np.asarray(poses, np.float64)
    ws = torch.as_tensor(ws)
    if ws.ndim != 3:
        raise ValueError(f"ws must be [N, num_ws, w_dim] codes, got shape {tuple(ws.shape)}")
    if poses.ndim != 2 or poses.shape[1] != 3:
        raise ValueError(f"poses must be [N, 3] (yaw, pitch, roll in degrees), got shape {poses.shape}")
    if len(ws) != len(poses):  # row i of poses is the pose of code i: checked here, not an IndexError later
        raise ValueError(f"ws has {len(ws)} codes but poses has {len(poses)} rows: give one pose per code")
    ok = np.isfinite(poses).all(1)
    x = ws[:, :rows].double().mean(1).cpu().numpy()[ok]
    y = poses[ok]
    if len(y) < 4:
        raise PoseUnavailableError(f"only {len(y)} samples with a face: too few to fit a pose regressor")
    mx, my = x.mean(0), y.mean(0)
    xc = x - mx
    A = np.linalg.solve(xc.T @ xc + ridge * len(y) * np.eye(x.shape[1]), xc.T @ (y - my))
    b = my - mx @ A
    resid = y - (x @ A + b)
    info = dict(info or {}, n_fit=int(len(y)), rmse=np.sqrt((resid ** 2).mean(0)).tolist())
    return PoseRegressor(torch.from_numpy(A), torch.from_numpy(b), rows, info)


@torch.no_grad()
def default_pose_regressor(G, n_samples: int = 256, truncation_psi: float = 0.7, seed: int = 0, cache=True,
                           measure: Callable[[np.ndarray], np.ndarray] | None = None, min_found: float = 0.5,
                           batch_size: int = 8, progress: bool = True, pose_regressor: str = "auto"):
    """The default ``P_r`` for ``G`` (see the module docstring).

    ``pose_regressor``: ``'auto'`` (default): the paper's image regressor (:func:`pfld_pose_regressor`, on G's
    device) when the PFLD weights can be had (downloaded once), else a warning and ``'w-linear'``; ``'pfld'``: the
    image regressor or an error; ``'w-linear'``: the ridge :class:`PoseRegressor` on rows 0-7, fitted once on
    ``n_samples`` rendered samples, then cached (the other arguments are its settings).
    ``measure``: images uint8 [N, H, W, 3] -> [N, 3] degrees, NaN where no face (default :func:`images_pose`);
    giving one means ``'w-linear'``. Raises :class:`PoseUnavailableError` for ``'auto'`` / ``'w-linear'`` when
    ``G`` is a random-weight network or faces are found on fewer than ``min_found`` of the samples.
    """
    if pose_regressor not in POSE_REGRESSORS:
        raise ValueError(f"pose_regressor must be one of {POSE_REGRESSORS}, got {pose_regressor!r}")
    if pose_regressor == "pfld":
        return pfld_pose_regressor(G.device)
    if getattr(G, "is_random", False) and measure is None:
        raise PoseUnavailableError(
            "this generator has random weights (G.is_random): it draws no faces, so there is no head pose to fit a "
            "pose regressor on. Use a trained face model (e.g. load_generator('stylegan3-r-ffhq-1024')) or pass your "
            "own differentiable pose_fn.")
    if pose_regressor == "auto" and measure is None:
        from ..weights import WeightsChecksumError, WeightsUnavailableError
        try:
            return pfld_pose_regressor(G.device)
        except (WeightsUnavailableError, WeightsChecksumError, ImportError) as e:
            import warnings
            first = str(e).splitlines()[0]
            warnings.warn(f"the paper's pose regressor (PFLD landmarks on the rendered image) is unavailable "
                          f"({first}); falling back to pose_regressor='w-linear', a ridge map from W+ rows 0-7 "
                          "fitted on samples.", FallbackWarning, stacklevel=2)
    return _w_linear_regressor(G, n_samples, truncation_psi, seed, cache, measure, min_found, batch_size, progress)


@torch.no_grad()
def _w_linear_regressor(G, n_samples, truncation_psi, seed, cache, measure, min_found, batch_size,
                        progress) -> PoseRegressor:
    from ..caching import default_dir, entry_path, generator_hash, json_key, warn_unusable
    path = None
    if cache and measure is None:
        key = json_key({"g": generator_hash(G), "n_samples": int(n_samples), "seed": int(seed),
                        "truncation_psi": float(truncation_psi), "min_found": float(min_found)})
        path = entry_path(default_dir("pose_regressor") if cache is True else cache, "regressor", key, ".pt")
        if path.is_file():
            try:
                d = torch.load(path, weights_only=True)
                return PoseRegressor(d["A"], d["b"], int(d["rows"]), {"from_cache": str(path)})
            except Exception as e:  # truncated / corrupt file (torch raises many kinds here): recompute
                warn_unusable(path, f"unreadable ({type(e).__name__})")
    from ..images import to_uint8
    measure = measure or images_pose
    dev = G.device
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn(n_samples, G.z_dim, generator=gen)
    ws_all, poses = [], []
    for s in progress_iter(range(0, n_samples, batch_size), desc="fit pose regressor", enabled=progress,
                           unit="batch"):
        c = torch.zeros([len(z[s:s + batch_size]), G.c_dim], device=dev) if G.c_dim else None
        ws = G.mapping(z[s:s + batch_size].to(dev), c, truncation_psi=truncation_psi)
        poses.append(np.asarray(measure(to_uint8(G.synthesis(ws), range_check=False)), np.float64).reshape(-1, 3))
        ws_all.append(ws.cpu())
    poses = np.concatenate(poses)
    found = np.isfinite(poses).all(1).mean()
    if found < min_found:
        raise PoseUnavailableError(
            f"faces were detected on only {found:.0%} of {n_samples} samples of this generator (need "
            f"{min_found:.0%}): it does not draw faces the landmark detector recognises, so no pose regressor is "
            "fitted. Use a trained face model or pass your own pose_fn.")
    reg = fit_pose_regressor(torch.cat(ws_all), poses, info={"found": float(found), "n_samples": n_samples})
    if path is not None:
        state = {"A": reg.A, "b": reg.b, "rows": torch.tensor(reg.rows)}
        write_atomic(path, lambda f: torch.save(state, f))
    return reg


@torch.no_grad()
def measure_pose(G, ws, batch_size: int = 8) -> np.ndarray:
    """Head pose [N, 3] (yaw, pitch, roll in degrees) measured on ``G.synthesis(ws)``, ``ws`` [N, num_ws, w_dim],
    with landmarks + head_pose; NaN where no face."""
    from ..images import to_uint8
    batch_size = integer(batch_size, "batch_size (images per synthesis pass)", 1, 4096)  # -1 measured nothing
    dev = G.device
    ws = torch.as_tensor(ws)
    out = [images_pose(to_uint8(G.synthesis(ws[s:s + batch_size].to(dev)), range_check=False))
           for s in range(0, len(ws), batch_size)]
    return np.concatenate(out)


# ----------------------------------------------------------------------------------------------- optimisation


def _pose_input(pose_fn, pose_input):
    if pose_input is None:
        pose_input = getattr(pose_fn, "pose_input", "image")
    if pose_input not in ("image", "w"):
        raise ValueError(f"pose_input must be 'image' or 'w', got {pose_input!r}")
    return pose_input


def _poses(target, name: str) -> np.ndarray:
    """``target`` as float64 [N, 3] degrees (yaw, pitch, roll), from [3] or [N, 3]; anything else raises."""
    t = np.asarray(target, np.float64)
    if t.shape == (3,):
        t = t[None]
    if t.ndim != 2 or t.shape[1] != 3 or len(t) < 1:
        raise ValueError(f"{name} must be [3] or [N, 3] degrees (yaw, pitch, roll), got shape {t.shape}")
    return t


def _lambda_pose(lambda_pose) -> torch.Tensor:
    lp = torch.as_tensor(lambda_pose, dtype=torch.float32).reshape(-1)
    if lp.numel() == 1:
        lp = lp.expand(3)
    if lp.numel() != 3 or not torch.isfinite(lp).all() or (lp < 0).any():
        raise ValueError(f"lambda_pose must be a non-negative number or 3 of them (yaw, pitch, roll), got {lambda_pose!r}")
    return lp


def _predict(G, pose_fn, pose_input, ws):
    p = pose_fn(ws) if pose_input == "w" else pose_fn(G.synthesis(ws))
    if torch.is_grad_enabled() and ws.requires_grad and not (isinstance(p, torch.Tensor) and p.requires_grad):
        # e.g. numpy out: the pose term then gave no gradient, and the codes moved by the identity term alone
        raise TypeError(f"pose_fn returned {type(p).__name__} without a gradient path to its input, so the pose term "
                        "can't steer the codes: return a torch tensor computed from the input with differentiable "
                        "operations (no .numpy(), .detach() or .item())")
    p = torch.as_tensor(p)
    if p.shape != (ws.shape[0], 3):
        raise ValueError(f"pose_fn must return [N, 3] (yaw, pitch, roll in degrees), got {tuple(p.shape)}")
    return p.float()


def _optimise(G, w0, w_orig, target, pose_fn, pose_input, steps, lr, lp, lambda_id, rows, on_step=None):
    """Adam on the pose rows. Nothing in the loop waits for the GPU (as in :mod:`.invert`): fused Adam on CUDA, the
    losses read (and checked) one step late, so the next step is queued while the GPU works on this one."""
    dev = w0.device
    free = w0[:, :rows].clone().requires_grad_(True)
    fixed = w_orig[:, rows:].detach()  # rows past the pose rows stay the input's, whatever the start codes hold
    orig = w_orig[:, :rows].detach()
    # fused: one launch, and the loss scaler's overflow check stays on the GPU
    opt = torch.optim.Adam([free], lr=lr, fused=dev.type == "cuda" or None)
    # The default regressor reads w, not images: only an image-based pose_fn passes the fp16 layers.
    scaler = grad_scaler(G, force_fp32=pose_input == "w")
    hist = np.zeros((w0.shape[0], steps), np.float32)
    lp = lp.to(dev)

    def check(pending):  # a step's losses into the history, NaN / inf refused, once the GPU has got that far
        if pending is not None:
            step, values = pending
            hist[:, step] = values.result()
            if not np.isfinite(hist[:, step]).all():
                raise FloatingPointError(f"pose encoding diverged at step {step} (loss NaN / inf); lower lr (now {lr})")

    pending = None
    for step in range(steps):
        ws = torch.cat([free, fixed], 1)
        pred = _predict(G, pose_fn, pose_input, ws)
        loss_i = (lp * (pred - target).square()).mean(1) + lambda_id * (free - orig).abs().mean((1, 2))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss_i.sum()).backward()
        check(pending)  # the previous step's, now that this one is queued
        pending = (step, HostValues(loss_i.detach().float()))
        scaler.step(opt)
        scaler.update()
        if on_step is not None:
            on_step(step)
    check(pending)
    return torch.cat([free.detach(), fixed], 1), hist


def _resolve_pose_fn(G, pose_fn):
    if pose_fn is None or isinstance(pose_fn, str):
        return default_pose_regressor(G, pose_regressor=pose_fn or "auto")
    if not callable(pose_fn):
        raise TypeError(f"pose_fn must be a callable (image or w -> [N, 3] degrees), got {type(pose_fn).__name__}")
    return pose_fn


def encode_pose(G, w_ref, target, pose_fn=None, *, pose_input: str | None = None, steps: int = 100,
                lr: float = 0.01, lambda_pose=LAMBDA_POSE, lambda_id: float = LAMBDA_ID, rows: int = POSE_ROWS,
                init=None, measure: bool | None = None, on_step: Callable[[int], None] | None = None) -> PoseEncoding:
    """Pose-encode ``w_ref`` ([num_ws, w_dim] or [N, num_ws, w_dim]) toward ``target`` ([3] or [N, 3] degrees).

    ``pose_fn``: P_r, a callable (see the module docstring), or None / ``'auto'`` / ``'pfld'`` / ``'w-linear'`` for
    :func:`default_pose_regressor`'s choices; ``settings['pose_fn']`` of the result names the one that ran.
    ``init``: start codes (default ``w_ref``); the identity term always compares to ``w_ref``.
    ``measure``: measure the achieved pose on the rendered image with head_pose (default: unless ``G.is_random``).
    ``on_step``: called with the step's index after every Adam step (e.g. to move a progress bar).
    """
    pose_fn = _resolve_pose_fn(G, pose_fn)
    pose_input = _pose_input(pose_fn, pose_input)
    if not (isinstance(steps, (int, np.integer)) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (np.isfinite(lr) and lr > 0) or not (np.isfinite(lambda_id) and lambda_id >= 0):
        raise ValueError(f"lr must be > 0 and lambda_id >= 0 (finite), got lr={lr!r}, lambda_id={lambda_id!r}")
    lp = _lambda_pose(lambda_pose)
    dev = G.device
    w = torch.as_tensor(w_ref).detach().float().to(dev)
    if w.ndim == 2:
        w = w[None]
    if w.ndim != 3 or w.shape[1:] != (G.num_ws, G.w_dim):
        raise ValueError(f"w_ref must be [{G.num_ws}, {G.w_dim}] or [N, {G.num_ws}, {G.w_dim}], got {tuple(w.shape)}")
    if not torch.isfinite(w).all():  # else reported as a divergence of the optimisation, 'lower lr'
        raise ValueError("w_ref contains NaN / inf: a diverged inversion? Invert the reference again")
    if not 1 <= rows <= G.num_ws:
        raise ValueError(f"rows must be in 1..{G.num_ws}, got {rows}")
    t = torch.as_tensor(_poses(target, "target"), dtype=torch.float32).to(dev)
    if not torch.isfinite(t).all():
        raise ValueError("target pose contains NaN / inf")
    if t.shape[0] == 1 and w.shape[0] > 1:
        t = t.expand(w.shape[0], 3)
    if w.shape[0] == 1 and t.shape[0] > 1:
        w = w.expand(t.shape[0], -1, -1)
    if t.shape[0] != w.shape[0]:
        raise ValueError(f"w_ref has {w.shape[0]} codes and target {t.shape[0]} poses: give one pose per code, or "
                         "one code or one pose for all")
    w0 = w
    if init is not None:
        w0 = torch.as_tensor(init).detach().float().to(dev)
        if w0.shape in ((G.num_ws, G.w_dim), (1, G.num_ws, G.w_dim)):
            w0 = w0.reshape(1, G.num_ws, G.w_dim).expand_as(w)
        if w0.shape != w.shape:
            raise ValueError(f"init must be [{G.num_ws}, {G.w_dim}] or [{w.shape[0]}, {G.num_ws}, {G.w_dim}] (one "
                             f"start code for all, or one per code), got {tuple(w0.shape)}")
        if not torch.isfinite(w0).all():
            raise ValueError("init contains NaN / inf")
    with codes_only(G):
        out, hist = _optimise(G, w0, w, t, pose_fn, pose_input, int(steps), float(lr), lp, float(lambda_id),
                              int(rows), on_step)
    with torch.no_grad():
        pred = _predict(G, pose_fn, pose_input, out).cpu().numpy()
    if measure is None:
        measure = not getattr(G, "is_random", False)
    achieved = measure_pose(G, out) if measure else np.full((len(out), 3), np.nan)
    settings = {"steps": int(steps), "lr": float(lr), "lambda_pose": lp.tolist(), "lambda_id": float(lambda_id),
                "rows": int(rows), "pose_input": pose_input,
                "pose_fn": getattr(pose_fn, "__qualname__", type(pose_fn).__qualname__)}
    return PoseEncoding(out.cpu(), t.cpu().numpy().astype(np.float64), pred.astype(np.float64), achieved,
                        list(hist), settings)


class _BatchCheckpoints:
    """The finished batches of :func:`encode_pose_sequence` in ``folder``, one ``.pt`` file each, keyed by what the
    batch was computed from (generator, reference codes, targets, start codes, P_r, settings), not by the folder."""

    def __init__(self, folder, G, pose_fn, kwargs):
        from ..caching import generator_hash

        self.folder = Path(folder)
        self.base = {"g": generator_hash(G), "pose_fn": getattr(pose_fn, "__qualname__", type(pose_fn).__qualname__),
                     "settings": {k: v for k, v in kwargs.items()}}

    def _where(self, start, ref, tgt, init, steps):
        from ..caching import json_key

        key = json_key(dict(self.base, start=int(start), steps=int(steps), ref=ref, targets=np.asarray(tgt),
                            init=None if init is None else init.detach().float().cpu()))
        return self.folder / f"frames_{start:06d}-{start + len(tgt) - 1:06d}.pt", key

    def load(self, start, ref, tgt, init, steps) -> PoseEncoding | None:
        from ..caching import warn_unusable

        path, key = self._where(start, ref, tgt, init, steps)
        if not path.is_file():
            return None
        try:
            d = torch.load(path, weights_only=True)
            if d["key"] != key:
                warn_unusable(path, "from other codes / targets / settings / generator", stacklevel=4)
                return None
            ws, hist = d["ws"], d["loss_history"].numpy()
            if ws.shape[0] != len(tgt) or hist.shape[0] != len(tgt) or not torch.isfinite(ws).all():
                raise ValueError(f"{tuple(ws.shape)} codes for {len(tgt)} frames")
            return PoseEncoding(ws, np.asarray(tgt, np.float64), d["predicted"].numpy().astype(np.float64),
                                np.full((len(tgt), 3), np.nan), list(hist), dict(d["settings"]))
        except Exception as e:  # truncated / corrupt (torch raises many kinds here): optimised again
            warn_unusable(path, f"unreadable ({type(e).__name__}: {str(e)[:100]})", stacklevel=4)
            return None

    def save(self, start, ref, tgt, init, steps, part: PoseEncoding) -> None:
        path, key = self._where(start, ref, tgt, init, steps)
        state = {"key": key, "ws": part.ws.detach().float().cpu(), "predicted": torch.from_numpy(part.predicted),
                 "loss_history": torch.from_numpy(np.stack(part.loss_history)), "settings": part.settings}
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f: torch.save(state, f))


def encode_pose_sequence(G, w_ref, targets, pose_fn=None, *, steps_first: int = 100, steps_next: int = 30,
                         batch_size: int | None = None, progress: bool = True, measure: bool | None = None,
                         checkpoint_dir=None, **kwargs) -> PoseEncoding:
    """One pose code per target frame ([T, 3] degrees), ``batch_size`` frames optimised together. ``w_ref``: one
    code [num_ws, w_dim] for all frames, or one per frame [T, num_ws, w_dim] (each frame's rows 8+ and identity term).

    Each batch starts from the previous batch's last result (warm start; the first from ``w_ref``) and runs
    ``steps_first`` (first batch) or ``steps_next`` Adam steps. ``batch_size`` default: 8 for a P_r on images (one
    backward pass through G serves 8 frames), 1 for a P_r on w (cheap; each frame starts from its predecessor).
    A batch that runs out of GPU memory (8 frames at 1024 px don't fit a 16 GB GPU) is redone with half the frames, with
    a :class:`~v2s_nb.errors.FallbackWarning`, and later batches keep that size (``settings['batch_sizes']`` lists the
    sizes tried); at one frame a batch it raises :class:`~v2s_nb.method.batches.GPUMemoryError`.
    ``checkpoint_dir``: each finished batch is saved there (``frames_<first>-<last>.pt``, atomically); a re-run
    with the same generator, codes, targets, P_r and settings loads the finished batches instead of optimising them
    again (one from other inputs, or unreadable, is redone with a :class:`~v2s_nb.errors.CacheWarning`).
    """
    pose_fn = _resolve_pose_fn(G, pose_fn)
    targets = _poses(targets, "targets")
    if batch_size is None:
        batch_size = 8 if _pose_input(pose_fn, kwargs.get("pose_input")) == "image" else 1
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1 (frames optimised together), got {batch_size!r}")
    for name, value in (("steps_first", steps_first), ("steps_next", steps_next)):  # before the first batch's work
        if not (isinstance(value, (int, np.integer)) and value >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    w_ref = torch.as_tensor(w_ref).detach().float()
    if w_ref.ndim == 3 and len(w_ref) == 1:
        w_ref = w_ref[0]
    per_frame = w_ref.ndim == 3  # one reference code per target frame (encode_pose checks the shapes)
    if per_frame and len(w_ref) != len(targets):
        raise ValueError(f"w_ref has {len(w_ref)} codes and targets {len(targets)} poses: give one code for all "
                         "frames, or one per frame")
    n = len(targets)
    on_images = _pose_input(pose_fn, kwargs.get("pose_input")) == "image"  # a regressor on W renders nothing here
    if on_images:
        ensure_compiled(G, [Workload(b, "ws") for b in batch_sizes(n, batch_size)], progress)
    ckpt = _BatchCheckpoints(checkpoint_dir, G, pose_fn, kwargs) if checkpoint_dir else None
    # a batch that runs out of GPU memory is redone with half the frames, and the rest keep that size
    size = HalvingBatch(batch_size, "pose encoding", getattr(G, "device", "cpu"))
    parts, prev, start = [], None, 0
    bar = progress_bar(total=sum(batch_steps(0, n, batch_size, steps_first, steps_next)), desc="pose encoding",
                       unit="step", enabled=progress)
    try:
        while start < n:
            tgt = targets[start:start + size.frames]
            steps_b = steps_first if start == 0 else steps_next
            init = None if prev is None else prev[-1:].expand(len(tgt), -1, -1)
            ref = w_ref[start:start + len(tgt)] if per_frame else w_ref
            bar.set_description(f"pose encoding frames {start}..{start + len(tgt) - 1}")
            part = ckpt.load(start, ref, tgt, init, steps_b) if ckpt is not None else None
            if part is not None:
                bar.update(steps_b)
            else:
                try:
                    part = encode_pose(G, ref, tgt, pose_fn, steps=steps_b, init=init, measure=False,
                                       on_step=lambda _: bar.update(1), **kwargs)
                except Exception as exc:
                    if not out_of_memory(exc):
                        raise
                if part is None:  # out of memory; leaving the except block has freed the failed try's tensors
                    size.halve()
                    bar.total = bar.n + sum(batch_steps(start, n, size.frames, steps_first, steps_next))
                    bar.refresh()
                    if on_images:
                        ensure_compiled(G, [Workload(b, "ws") for b in batch_sizes(n - start, size.frames)],
                                        progress)
                    continue
                if ckpt is not None:
                    ckpt.save(start, ref, tgt, init, steps_b, part)
            parts.append(part)
            prev = part.ws
            start += len(tgt)
    finally:
        bar.close()
    ws = torch.cat([p.ws for p in parts])
    if measure is None:
        measure = not getattr(G, "is_random", False)
    achieved = measure_pose(G, ws) if measure else np.full((len(ws), 3), np.nan)
    settings = dict(parts[0].settings, steps_first=steps_first, steps_next=steps_next, batch_size=int(batch_size),
                    batch_sizes=list(size.sizes), mode="sequence")
    return PoseEncoding(ws, targets, np.concatenate([p.predicted for p in parts]), achieved,
                        [h for p in parts for h in p.loss_history], settings)
