"""Re-enactment speed with inputs prepared (ws, channel sets, tracks): time per re-rendered frame (render_frame,
i.e. mixing + one synthesis from cached S codes) and for a whole 160-frame video (render_video).

    python benchmarks/bench_reenact.py --tiny                 # tiny random generator on the CPU
    python benchmarks/bench_reenact.py --r1024 --device cuda  # 1024 px R architecture, random weights, on a GPU
    python benchmarks/bench_reenact.py --tiny --demo          # + wall time of `v2s-nb demo` (CPU)
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import sync  # noqa: E402  (also puts this checkout on sys.path)


def make_reenactor(G, T, device):
    from v2s_nb.method.reenact import Reenactor
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ws = G.mapping(torch.randn(T + 1, G.z_dim, generator=g).to(device), None, truncation_psi=0.7).cpu()
    names = G.synthesis.style_names
    rc = {"eyes": {names[3]: list(range(0, 8))}, "mouth": {names[6]: list(range(4, 12))}}
    tr = np.stack([np.linspace(0, 0.05, T), np.zeros(T), np.linspace(-5, 5, T)], 1)
    return Reenactor(G=G, w_ref=ws[0], ws_drive=ws[1:], region_channels=rc, tracks={"driving": tr})


def bench(G, device, T=160, batch=8, reps=5):
    r = make_reenactor(G, T, device)
    t = time.perf_counter()
    r.prepare()
    prep = time.perf_counter() - t
    r.render_frame(0)  # warm-up
    sync(device)
    t = time.perf_counter()
    for j in range(reps):
        r.render_frame(j, alpha=-1 + 0.1 * j)
    sync(device)
    per_frame = (time.perf_counter() - t) / reps
    t = time.perf_counter()
    vid = r.render_video(batch=batch, progress=False)
    sync(device)
    video = time.perf_counter() - t
    return {"prepare_s": prep, "render_frame_s": per_frame, f"render_video_{T}_s": video,
            "video_per_frame_s": video / T, "shape": vid.shape}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--tiny-resolution", type=int, nargs="+", default=[64], help="resolutions of the tiny generator")
    p.add_argument("--r1024", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--frames", type=int, default=160)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--demo", action="store_true", help="also time `v2s-nb demo` (CPU)")
    a = p.parse_args()
    if a.tiny:
        from v2s_nb.stylegan3 import tiny_generator
        for res in a.tiny_resolution:
            G = tiny_generator("R", resolution=res).to(a.device)
            print(f"tiny R {res} px,", a.device, bench(G, a.device, a.frames, a.batch))
    if a.r1024:
        from v2s_nb.stylegan3 import build_generator
        G = build_generator("R", 1024, device=a.device)
        print("R 1024 px (random weights),", a.device, bench(G, a.device, a.frames, a.batch))
    if a.demo:
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "v2s_nb.cli", "demo", "--out", f"{d}/demo.mp4", "--quiet"],
                           check=True)
            print(f"demo wall time (cold, CPU): {time.perf_counter() - t:.1f} s")
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "v2s_nb.cli", "demo", "--out", f"{d}/demo.mp4", "--quiet"],
                           check=True)
            print(f"demo wall time (intermediates reused): {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
