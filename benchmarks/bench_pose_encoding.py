"""Pose encoding (eq 4) per Adam step, and its two parts: ms per step of ``encode_pose`` with the image regressor,
beside the generator's forward + backward to the codes alone and the regressor's forward + backward to the images
alone, at each batch size.

    python benchmarks/bench_pose_encoding.py --device cuda --pose-input pfld --batch 1 8     # the paper's P_r
    python benchmarks/bench_pose_encoding.py --device cuda --pose-input image                # a stand-in P_r
    python benchmarks/bench_pose_encoding.py --device cpu --tiny --batch 1 4                 # the CPU check

Random generator weights (the 1024 px R architecture; ``--tiny``: the 64 px test generator), random start codes and
target poses: the work per step is that of a real run. Times are wall-clock between GPU synchronisations, so
what the host does (kernel launches, waits for the GPU) counts as it does in the pipeline: a step that waits for
the GPU in the middle costs more than its parts. ``--pose-input pfld`` needs the PFLD weights
(``V2S_NB_WEIGHTS_DIR`` offline); ``image`` is the stand-in of ``bench_pipeline.py`` (a pooled linear map).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts this checkout first on the path)
from v2s_nb.method.loss_scale import codes_only  # noqa: E402
from v2s_nb.method.pose_encoding import POSE_ROWS, encode_pose  # noqa: E402
from v2s_nb.stylegan3 import build_generator, tiny_generator  # noqa: E402


def _wall_ms(fn, reps, device):
    """Milliseconds per call of ``fn``: wall-clock over ``reps`` calls between synchronisations, after one call."""
    fn()
    _common.sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    _common.sync(device)
    return (time.perf_counter() - t0) / reps * 1000


def regressor(kind, device):
    if kind == "pfld":
        from v2s_nb.method.pose_encoding import pfld_pose_regressor
        return pfld_pose_regressor(device)
    from bench_pipeline import _ImagePose
    return _ImagePose().to(device)


def bench(G, pose_fn, batch, steps, seed=0):
    """{'generator', 'regressor', 'step'}: ms per call / per Adam step at ``batch`` codes."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, G.z_dim, generator=g).to(G.device)
    with torch.no_grad():
        w_ref = G.mapping(z, None, truncation_psi=0.7)
    targets = np.random.default_rng(seed).uniform(-15, 15, size=(batch, 3))
    free = w_ref[:, :POSE_ROWS].clone().requires_grad_(True)
    fixed = w_ref[:, POSE_ROWS:]

    def generator_step():
        free.grad = None
        G.synthesis(torch.cat([free, fixed], 1)).float().square().mean().backward()

    with torch.no_grad():
        images = G.synthesis(w_ref).float()
    images.requires_grad_(True)

    def regressor_step():
        images.grad = None
        pose_fn(images).sum().backward()

    out = {}
    with codes_only(G):
        out["generator"] = _wall_ms(generator_step, max(2, steps // 2), G.device)
    out["regressor"] = _wall_ms(regressor_step, max(2, steps // 2), G.device)
    encode_pose(G, w_ref, targets, pose_fn=pose_fn, steps=2, measure=False)  # warm-up
    _common.sync(G.device)
    t0 = time.perf_counter()
    encode_pose(G, w_ref, targets, pose_fn=pose_fn, steps=steps, measure=False)
    _common.sync(G.device)
    out["step"] = (time.perf_counter() - t0) / steps * 1000
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", type=_common.device)
    ap.add_argument("--tiny", action="store_true", help="the 64 px test generator (CPU runs)")
    ap.add_argument("--batch", type=_common.positive_int, nargs="+", default=[1, 8])
    ap.add_argument("--steps", type=_common.positive_int, default=20, help="Adam steps timed per batch size")
    ap.add_argument("--pose-input", default="pfld", choices=["pfld", "image"])
    ap.add_argument("--json", default=None, help="append the results as one JSON line to this file")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    G = tiny_generator("R", resolution=64).to(dev) if a.tiny else build_generator("R", 1024, device=dev)
    pose_fn = regressor(a.pose_input, dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"pose encoding, R {G.img_resolution} px (random weights), P_r {a.pose_input}, on {name}; ms per step")
    print(f"{'batch':>5}  {'generator':>10}  {'P_r':>8}  {'sum':>8}  {'step':>8}  {'step / sum':>10}")
    rows = []
    # the regressor's pose fit replayed from CUDA graphs, and eager (where the regressor has the switch)
    graphs = [True, False] if hasattr(pose_fn, "cuda_graphs") and dev.type == "cuda" else [None]
    for b in a.batch:
        for on in graphs:
            if on is not None:
                pose_fn.cuda_graphs = on
            r = bench(G, pose_fn, b, a.steps)
            total = r["generator"] + r["regressor"]
            label = {True: " (P_r graphs)", False: " (P_r eager)", None: ""}[on]
            print(f"{b:>5}  {r['generator']:10.1f}  {r['regressor']:8.1f}  {total:8.1f}  {r['step']:8.1f}  "
                  f"{r['step'] / total:10.2f}{label}", flush=True)
            rows.append({"batch": b, "pose_graphs": on, **r})
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps({"device": name, "pose_input": a.pose_input, "resolution": G.img_resolution,
                                "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
