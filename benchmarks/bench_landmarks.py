"""Landmark extraction speed on the CPU: frames per second of ``v2s_nb.face.landmarks``.

Frames are the astronaut photo (``skimage.data.astronaut``, one face) resized to each size, slightly
shifted frame to frame so no two are identical. Detection + 68-point fitting are timed together, after
one warm-up frame (model loading is excluded). Example::

    python benchmarks/bench_landmarks.py --sizes 256 512 --frames 30 --detectors hog cnn --cnn-frames 3
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import cv2
import numpy as np
from skimage import data

from v2s_nb.face import landmarks


def make_frames(size: int, n: int) -> np.ndarray:
    """n frames [n, size, size, 3] uint8 of the astronaut, shifted by up to 4 px between frames."""
    img = cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        m = np.float32([[1, 0, (i % 5) - 2], [0, 1, (i % 3) - 1]])
        out[i] = cv2.warpAffine(img, m, (size, size), borderMode=cv2.BORDER_REFLECT_101)
    return out


def bench(size: int, detector: str, upsample: int, n: int) -> tuple[float, float]:
    """(frames per second, fraction of frames with a face)."""
    frames = make_frames(size, n)
    landmarks(frames[:1], detector=detector, upsample=upsample, progress=False)  # warm-up / model load
    t0 = time.perf_counter()
    track = landmarks(frames, detector=detector, upsample=upsample, progress=False)
    dt = time.perf_counter() - t0
    return n / dt, float(track.found.mean())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="frame sizes in pixels (square)")
    ap.add_argument("--frames", type=int, default=30, help="frames per HOG measurement")
    ap.add_argument("--detectors", nargs="+", default=["hog", "cnn"], choices=["hog", "cnn"])
    ap.add_argument("--upsample", type=int, nargs="+", default=[0, 1], help="detector upsampling levels")
    ap.add_argument("--cnn-frames", type=int, default=3, help="frames per CNN measurement (it is slow on a CPU)")
    args = ap.parse_args(argv)

    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"{'size':>6} {'detector':>8} {'upsample':>8} {'frames':>6} {'frames/s':>9} {'ms/frame':>9} {'found':>6}")
    for size in args.sizes:
        for det in args.detectors:
            for up in args.upsample:
                n = args.cnn_frames if det == "cnn" else args.frames
                fps, found = bench(size, det, up, n)
                print(f"{size:>6} {det:>8} {up:>8} {n:>6} {fps:>9.2f} {1000 / fps:>9.1f} {found:>6.0%}", flush=True)


if __name__ == "__main__":
    main()
