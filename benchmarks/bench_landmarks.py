"""Landmark extraction speed: frames per second of ``v2s_nb.face.landmarks`` (dlib's HOG / CNN + 68-point
predictor, or RFB-320 + PFLD), and the cost of the paper's pose regressor P_r(image) forward + backward.

Frames are the astronaut photo (``skimage.data.astronaut``, one face) resized to each size, slightly shifted frame
to frame so no two are identical. Detection + 68-point fitting are timed together, after one warm-up frame (model
loading is excluded). ``rfb`` means RFB-320 + PFLD (the paper's CNNs; their weights must be available to
``v2s_nb.weights.fetch``, e.g. through ``V2S_NB_WEIGHTS_DIR``); it runs on ``--device``, and ``--upsample`` does
not apply to it.

P_r: ``ImagePoseRegressor`` (crop of the aligned face square -> PFLD -> differentiable head pose) on a batch of
images [B, 3, R, R] in [-1, 1], forward and backward to the images, milliseconds per frame (generator excluded).
Examples::

    python benchmarks/bench_landmarks.py --sizes 256 512 --frames 30 --detectors hog rfb cnn --cnn-frames 3
    python benchmarks/bench_landmarks.py --detectors rfb --pose-sizes 256 1024 --device cuda
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts this checkout first on the path)
from v2s_nb.face import landmarks  # noqa: E402


def make_frames(size: int, n: int) -> np.ndarray:
    """n frames [n, size, size, 3] uint8 of the astronaut, shifted by up to 4 px between frames."""
    img = cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        m = np.float32([[1, 0, (i % 5) - 2], [0, 1, (i % 3) - 1]])
        out[i] = cv2.warpAffine(img, m, (size, size), borderMode=cv2.BORDER_REFLECT_101)
    return out


def bench(size: int, detector: str, upsample: int, n: int, device: str = "cpu") -> tuple[float, float]:
    """(frames per second, fraction of frames with a face)."""
    frames = make_frames(size, n)
    kw = {"device": device} if detector == "rfb" else {}
    landmarks(frames[:1], detector=detector, upsample=upsample, progress=False, **kw)  # warm-up / model load
    _common.sync(device)
    t0 = time.perf_counter()
    track = landmarks(frames, detector=detector, upsample=upsample, progress=False, **kw)
    _common.sync(device)
    dt = time.perf_counter() - t0
    return n / dt, float(track.found.mean())


def bench_pose_regressor(size: int, batch: int, device: str, reps: int) -> float:
    """Milliseconds per frame of P_r(image) forward + backward to the image, batch of ``batch`` frames."""
    from v2s_nb.method.pose_encoding import pfld_pose_regressor

    P = pfld_pose_regressor(device)
    img = cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    x0 = torch.from_numpy(img).permute(2, 0, 1).float().div(127.5).sub(1).to(device)
    x = x0[None].repeat(batch, 1, 1, 1).requires_grad_(True)

    def step():
        x.grad = None
        P(x).sum().backward()

    step()  # warm-up
    _common.sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    _common.sync(device)
    return (time.perf_counter() - t0) / reps / batch * 1000


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=_common.positive_int, nargs="+", default=[256, 512],
                    help="frame sizes in pixels (square)")
    ap.add_argument("--frames", type=_common.positive_int, default=30, help="frames per HOG / RFB measurement")
    ap.add_argument("--detectors", nargs="+", default=["hog", "rfb", "cnn"], choices=["hog", "cnn", "rfb"],
                    help="hog / cnn: dlib detector + 68-point predictor; rfb: RFB-320 + PFLD")
    ap.add_argument("--upsample", type=_common.nonnegative_int, nargs="+", default=[0, 1],
                    help="dlib detector upsampling levels")
    ap.add_argument("--cnn-frames", type=_common.positive_int, default=3,
                    help="frames per dlib CNN measurement (slow on a CPU)")
    ap.add_argument("--device", default="cpu", type=_common.device,
                    help="device of RFB + PFLD and of P_r (cpu, cuda, ...)")
    ap.add_argument("--pose-sizes", type=_common.positive_int, nargs="*", default=[256, 1024],
                    help="image sizes for P_r forward + backward (none: skip)")
    ap.add_argument("--pose-batches", type=_common.positive_int, nargs="+", default=[1, 8], help="P_r batch sizes")
    ap.add_argument("--pose-reps", type=_common.positive_int, default=5, help="timed repetitions per P_r measurement")
    args = ap.parse_args(argv)

    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}; device {args.device}"
          + (f" ({torch.cuda.get_device_name(args.device)})" if args.device.startswith("cuda") else ""))
    print(f"{'size':>6} {'front end':>10} {'upsample':>8} {'frames':>6} {'frames/s':>9} {'ms/frame':>9} {'found':>6}")
    for size in args.sizes:
        for det in args.detectors:
            for up in (args.upsample if det != "rfb" else [0]):
                n = args.cnn_frames if det == "cnn" else args.frames
                fps, found = bench(size, det, up, n, args.device)
                name = "rfb+pfld" if det == "rfb" else f"dlib {det}"
                print(f"{size:>6} {name:>10} {up if det != 'rfb' else '-':>8} {n:>6} {fps:>9.2f} {1000 / fps:>9.1f} "
                      f"{found:>6.0%}", flush=True)
    if args.pose_sizes:
        print(f"\nP_r(image) = head pose of PFLD landmarks, forward + backward to the image, on {args.device}")
        print(f"{'size':>6} {'batch':>6} {'ms/frame':>9}")
        for size in args.pose_sizes:
            for b in args.pose_batches:
                ms = bench_pose_regressor(size, b, args.device, args.pose_reps)
                print(f"{size:>6} {b:>6} {ms:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
