"""Re-enactment speed with inputs prepared (ws, channel sets, tracks): time per re-rendered frame (render_frame,
i.e. mixing + one synthesis from cached S codes) and for a whole 160-frame video (render_video).

    python benchmarks/bench_reenact.py --tiny                 # tiny random generator on the CPU
    python benchmarks/bench_reenact.py --r1024 --device cuda  # 1024 px R architecture, random weights, on a GPU
    python benchmarks/bench_reenact.py --demo --cpus 2        # `v2s-nb demo`: stages, total, peak RSS
    python benchmarks/bench_reenact.py --demo --device cuda   # the same on a GPU
    python benchmarks/bench_reenact.py --cpu-ops              # the demo generator: CPU filtered lrelu, old vs new

``--cpu-ops`` times the demo's generator (``v2s_nb.demo.FitSettings``, batch 1) with the CPU form of
``ops.filtered_lrelu`` against the step-by-step formulation (``ops.filtered_lrelu_stepwise``, the code before it),
interleaved in one process: synthesis without autograd (a render), synthesis + backward to the weights (one fit
step), and a render at batch 1 vs 4 per frame. With ``--threads 1`` (default) it reads the thread's CPU time,
which other jobs on a shared machine inflate much less than the wall time; with more threads, the wall time.

``--demo`` runs ``v2s-nb demo`` twice in a subprocess with an empty fitted-generator cache (a temporary
``V2S_NB_CACHE``): first cold (the fit runs), then again (the fitted generator and the landmarks are reused).
It prints the demo's own stage timings (``<out>.v2s/timings.json``), the wall time of the whole command
(Python start and imports included), its CPU time (user + system, all threads and ffmpeg; on a loaded machine a
steadier figure than the wall time), the child's peak resident memory, and the load average around the run.
``--cpus N`` pins the demo to the first N CPUs (Linux), as on a 2-core machine.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (also puts this checkout on sys.path)
from _common import sync  # noqa: E402


def make_reenactor(G, T, device):
    from v2s_nb.method.reenact import Reenactor
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ws = G.mapping(torch.randn(T + 1, G.z_dim, generator=g).to(device), None, truncation_psi=0.7).cpu()
    names = G.synthesis.style_names
    rc = {"eyes": {names[3]: list(range(0, 8))}, "mouth": {names[6]: list(range(4, 12))}}
    tr = np.stack([np.linspace(0, 0.05, T), np.zeros(T), np.linspace(-5, 5, T)], 1)
    # the track is [T, 3] (no face size), so the position is the printed one (absolute mode)
    return Reenactor(G=G, w_ref=ws[0], ws_drive=ws[1:], region_channels=rc, tracks={"driving": tr},
                     position_mode="absolute")


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
    vid = r.render_video(batch_size=batch, progress=False)
    sync(device)
    video = time.perf_counter() - t
    return {"prepare_s": prep, "render_frame_s": per_frame, f"render_video_{T}_s": video,
            "video_per_frame_s": video / T, "shape": vid.shape}


def bench_demo(device="cpu", cpus=None):
    import json
    import os
    import resource

    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    pin = None
    if cpus:
        avail = sorted(os.sched_getaffinity(0))
        if len(avail) < cpus:
            raise SystemExit(f"--cpus {cpus}: only {len(avail)} CPUs are available to this process")
        use = set(avail[:cpus])
        env["OMP_NUM_THREADS"] = str(cpus)

        def pin():
            os.sched_setaffinity(0, use)
    print(f"CPUs available: {len(os.sched_getaffinity(0))}; demo pinned to: {cpus or 'all'}; device {device}; "
          f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as d:
        env["V2S_NB_CACHE"] = f"{d}/cache"
        for run in ("cold (fit runs)", "again (fit cached)"):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "v2s_nb.cli", "demo", "--out", f"{d}/demo.mp4", "--quiet",
                            "--device", device], check=True, env=env, preexec_fn=pin, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            rss = after.ru_maxrss / 1024  # kB -> MB (Linux)
            cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            summary = json.loads(Path(f"{d}/demo.mp4.v2s/timings.json").read_text())
            stages = ", ".join(f"{k} {v:.1f}" for k, v in summary["timings_s"].items())
            print(f"demo {run}: wall {wall:.1f} s (Python start + imports + demo), CPU time {cpu:.1f} s; "
                  f"stages (s): {stages}; "
                  f"peak RSS so far {rss:.0f} MB; fit {summary['fit_psnr_db']:.1f} dB; faces "
                  f"{summary['detection_rate']:.0%}, max roll error {summary['max_roll_error_deg']:.2f} deg; "
                  f"load average after: {os.getloadavg()}")


def bench_cpu_ops(threads=1, reps=5):
    import importlib

    from v2s_nb.demo import FitSettings, pivot_ws
    from v2s_nb.stylegan3 import build_generator, ops
    networks = importlib.import_module("v2s_nb.stylegan3.networks")

    torch.set_num_threads(threads)
    clock = time.thread_time if threads == 1 else time.perf_counter
    G = build_generator(device="cpu", **FitSettings().generator_kwargs())
    ws = pivot_ws(G)
    for p in G.parameters():
        p.requires_grad_(True)

    def render(batch):
        with torch.no_grad():
            G.synthesis(ws.expand(batch, -1, -1))

    def fit_step():
        G.zero_grad(set_to_none=True)
        G.synthesis(ws).square().mean().backward()

    forms = {"stepwise (before)": ops.filtered_lrelu_stepwise, "CPU form": ops.filtered_lrelu}
    cases = {"render (no grad), per frame, batch 1": lambda: render(1),
             "render (no grad), per frame, batch 4": lambda: render(4),
             "fit step (forward + backward)": fit_step}
    times = {(f, c): [] for f in forms for c in cases}
    try:
        for _ in range(reps):
            for f, fn in forms.items():
                networks.filtered_lrelu = fn
                for c, run in cases.items():
                    run()  # warm
                    t = clock()
                    run()
                    times[f, c].append((clock() - t) / (4 if "batch 4" in c else 1))
    finally:
        networks.filtered_lrelu = ops.filtered_lrelu
    what = "thread CPU time" if threads == 1 else "wall time"
    print(f"demo generator (StyleGAN3-R 128 px, 4 layers), {threads} thread(s), median {what} of {reps}, ms "
          f"(load average {os.getloadavg()[0]:.1f}):")
    for c in cases:
        old, new = (float(np.median(times[f, c])) * 1000 for f in forms)
        print(f"  {c}: stepwise {old:.0f}, CPU form {new:.0f}, ratio {old / new:.2f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny random generator (--tiny-resolution)")
    p.add_argument("--tiny-resolution", type=_common.positive_int, nargs="+", default=[64],
                   help="resolutions of the tiny generator")
    p.add_argument("--r1024", action="store_true", help="1024 px R architecture, random weights")
    p.add_argument("--device", default="cpu", type=_common.device)
    p.add_argument("--frames", type=_common.positive_int, default=160)
    p.add_argument("--batch", type=_common.positive_int, default=8)
    p.add_argument("--demo", action="store_true", help="time `v2s-nb demo` (stages, total, peak RSS)")
    p.add_argument("--cpu-ops", action="store_true", help="the demo generator's CPU filtered lrelu: old vs new")
    p.add_argument("--threads", type=_common.positive_int, default=1, help="with --cpu-ops: torch threads")
    p.add_argument("--cpus", type=_common.positive_int, default=None,
                   help="with --demo: pin the demo to the first N CPUs")
    a = p.parse_args(argv)
    if not (a.tiny or a.r1024 or a.demo or a.cpu_ops):
        p.error("nothing to time: pass one or more of --tiny, --r1024, --demo, --cpu-ops (examples: --help)")
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
        bench_demo(a.device, a.cpus)
    if a.cpu_ops:
        bench_cpu_ops(a.threads)


if __name__ == "__main__":
    main()
