"""Speed of the Table 1 metrics on this machine (not a test).

    python benchmarks/bench_metrics.py [--sizes 256 512 1024] [--frames 4] [--dims 128 512 2048]

* per-frame cost of ΔK / ID work: dlib landmarks (HOG, upsample 0 and 1) and the 128-d embedding;
* Fréchet distance between two 800-sample sets (the paper: 5 identities x 160 frames) at several feature
  dimensions, eigen-based vs scipy.linalg.sqrtm (2048 = Inception pool features).

On a busy shared CPU, BLAS threads can slow the linear algebra down many times over; compare with
OPENBLAS_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (argparse checks; puts this checkout first on the path)
from v2s_nb.face import landmarks  # noqa: E402
from v2s_nb.metrics import face_embeddings, frechet_distance_features  # noqa: E402


def bench_faces(sizes, frames):
    a = data.astronaut()
    face_embeddings(a, upsample=0, progress=False)  # load the models before timing
    for size in sizes:
        img = cv2.resize(a, (size, size), interpolation=cv2.INTER_CUBIC if size > 512 else cv2.INTER_AREA)
        clip = np.stack([np.roll(img, (i, -i), (0, 1)) for i in range(frames)])
        for up in (0, 1):
            t = time.perf_counter()
            tr = landmarks(clip, upsample=up, progress=False)
            lm = (time.perf_counter() - t) / frames
            t = time.perf_counter()
            face_embeddings(clip, track=tr, progress=False)
            em = (time.perf_counter() - t) / frames
            print(f"{size:5d} px upsample={up}: landmarks {lm * 1e3:7.1f} ms/frame, embedding {em * 1e3:6.1f} ms/frame "
                  f"(faces found {int(tr.found.sum())}/{frames})")


def bench_frechet(dims, n=800):
    rng = np.random.default_rng(0)
    for d in dims:
        f1 = rng.standard_normal((n, d))
        f2 = rng.standard_normal((n, d)) * 1.1 + 0.1
        out = {}
        for method in ("eigh", "sqrtm"):
            t = time.perf_counter()
            v = frechet_distance_features(f1, f2, method=method)
            out[method] = (time.perf_counter() - t, v)
        rel = abs(out["eigh"][1] - out["sqrtm"][1]) / abs(out["sqrtm"][1])
        print(f"D={d:5d}, N={n}: eigh {out['eigh'][0]:6.2f} s, sqrtm {out['sqrtm'][0]:6.2f} s, "
              f"relative difference {rel:.1e}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=_common.positive_int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--frames", type=_common.positive_int, default=4)
    p.add_argument("--dims", type=_common.positive_int, nargs="+", default=[128, 512, 2048])
    args = p.parse_args(argv)
    bench_faces(args.sizes, args.frames)
    bench_frechet(args.dims)


if __name__ == "__main__":
    main()
