"""Speed and memory of W+ inversion (v2s_nb.method.invert), random-weight generators.

    python benchmarks/bench_invert.py                         # GPU: R 1024, batch 1 8 16, 160-frame sequence
    python benchmarks/bench_invert.py --tiny --device cpu --batch 1 4 --steps 10 --seq-frames 16

Prints, per batch size, projection throughput in frames·steps/s (one step = render + backward + Adam update for
every frame of the batch; eager and, on CUDA, from CUDA graphs: ``--graphs``), the set-up per call and peak memory
(CUDA: max allocated by torch; CPU: peak RSS of the process so far);
then PTI's speed (``pivotal_tuning`` of one reference frame: steps/s between a 2-step and a ``--pti-steps`` call,
the set-up per call (the copy of G; with ``--pti-graphs 1`` the CUDA graphs' recording) and peak memory); then the
wall time of ``invert_sequence`` over ``--seq-frames`` frames at the API's default schedule (batch 8, steps_first
500, steps_next 150; with ``--tiny`` on the CPU a twentieth of those steps, 25 and 7; unless overridden), and that
time extrapolated to 160 frames (at the schedule run) when fewer were run.
Off CUDA, where invert and PTI ignore ``cuda_graphs``, ``--graphs`` and ``--pti-graphs`` default to 0 alone (a ``1``
row would time the same eager loop again). So the CPU command above stays a smoke run of about a minute on 2 idle
cores: at the full schedule its 16 frames alone are 5,200 frame-steps, over ten minutes there. On a machine busy
with other work, ``--threads 1`` can be several times faster than torch's default of one thread per core.
``--json FILE`` appends the results as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import peak_gib as _peak_gib, sync as _sync  # noqa: E402
from v2s_nb.method.invert import DEFAULTS, STEPS_NEXT, invert, invert_sequence, pivotal_tuning  # noqa: E402
from v2s_nb.stylegan3 import build_generator, tiny_generator  # noqa: E402

#: ``--tiny`` on the CPU (a smoke run and a CPU figure): the sequence run's steps are the API's divided by this.
TINY_CPU_SCHEDULE_DIVISOR = 20


def _targets(G, n, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        ws = G.mapping(torch.randn([n, G.z_dim], generator=gen).to(G.device), None)
        return G.synthesis(ws).float().cpu().clamp(-1, 1)


def _sequence_targets(G, n, seed=1):
    """A smooth clip: frames along the line between two random w's."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        w = G.mapping(torch.randn([2, G.z_dim], generator=gen).to(G.device), None)
        t = torch.linspace(0, 1, n, device=G.device).reshape(-1, 1, 1)
        out = [G.synthesis(w[:1].lerp(w[1:], t[i:i + 8])).float().cpu() for i in range(0, n, 8)]
    return torch.cat(out).clamp(-1, 1)


def _step_time(run, steps, device):
    """(s per step, s of set-up per call, s of the ``steps`` call) of ``run(steps)``, an optimisation call that sets
    up first (copies, with graphs their recording): timed for 2 steps and for ``steps``, after a 2-step call that
    compiles, peak memory reset before each."""
    times = []
    for n in (2, 2, steps):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        t = time.perf_counter()
        run(n)
        _sync(device)
        times.append(time.perf_counter() - t)
    per_step = (times[2] - times[1]) / (steps - 2)
    return per_step, times[1] - 2 * per_step, times[2]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cfg", default="R", choices=["R", "T"])
    ap.add_argument("--resolution", type=_common.positive_int, default=1024)
    ap.add_argument("--tiny", action="store_true", help="tiny_generator(cfg, resolution) instead of the released "
                                                        "architecture (for CPU runs; --resolution defaults to 64)")
    ap.add_argument("--channel-max", type=_common.positive_int, default=None, help="--tiny only: channel cap")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", type=_common.device)
    ap.add_argument("--batch", type=_common.positive_int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--steps", type=_common.positive_int, default=20,
                    help="steps of the timed projection call per batch size "
                         "(at least 3; the rate is taken against a 2-step call)")
    ap.add_argument("--graphs", type=int, nargs="+", default=None, choices=[0, 1],
                    help="invert's cuda_graphs settings to time the projection with, one after the other "
                         "(default: 0 1 on CUDA, 0 elsewhere)")
    ap.add_argument("--pti-steps", type=_common.nonnegative_int, default=20,
                    help="timed PTI steps (0: skip; else at least 3)")
    ap.add_argument("--pti-graphs", type=int, nargs="+", default=None, choices=[0, 1],
                    help="PTI's cuda_graphs settings to time, one after the other (each call records its own graphs: "
                         "set-up; default: 0 1 on CUDA, 0 elsewhere)")
    ap.add_argument("--seq-frames", type=_common.nonnegative_int, default=160,
                    help="frames of the sequence run (0: skip)")
    ap.add_argument("--seq-batch", type=_common.positive_int, default=8)
    for name, api in (("--steps-first", DEFAULTS["steps"]), ("--steps-next", STEPS_NEXT)):
        ap.add_argument(name, type=_common.positive_int, default=None,
                        help=f"default {api} (the API's); with --tiny on the CPU {api // TINY_CPU_SCHEDULE_DIVISOR}")
    ap.add_argument("--threads", type=_common.positive_int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if 0 < args.pti_steps < 3 or args.steps < 3:
        ap.error("--steps and --pti-steps: at least 3 (--pti-steps 0 skips PTI): the rates are taken against a "
                 "2-step call")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.graphs is None:
        args.graphs = [0, 1] if device.type == "cuda" else [0]
    if args.pti_graphs is None:
        args.pti_graphs = [0, 1] if device.type == "cuda" else [0]
    div = TINY_CPU_SCHEDULE_DIVISOR if args.tiny and device.type == "cpu" else 1
    if args.steps_first is None:
        args.steps_first = DEFAULTS["steps"] // div
    if args.steps_next is None:
        args.steps_next = STEPS_NEXT // div

    t0 = time.perf_counter()
    if args.tiny:
        res = args.resolution if args.resolution != 1024 else 64
        G = tiny_generator(args.cfg, resolution=res, seed=0, channel_max=args.channel_max).to(device)
    else:
        G = build_generator(args.cfg, args.resolution, device=device)
    print(f"generator: {G.source} on {device} ({time.perf_counter() - t0:.1f} s to build); "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)
    results = {"generator": G.source, "device": str(device), "torch": torch.__version__,
               "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "threads": torch.get_num_threads(), "throughput": []}

    print(f"{'batch':>5} {'graphs':>6} {'frames*steps/s':>15} {'s/step':>8} {'set-up s':>8} {'peak GiB':>9}")
    for b in args.batch:
        images = _targets(G, b)
        for graphs in args.graphs:
            per_step, setup, call_s = _step_time(lambda steps: invert(G, images, steps=steps, batch_size=b,
                                                                      cuda_graphs=bool(graphs), progress=False),
                                                 args.steps, device)
            row = {"batch": b, "cuda_graphs": graphs, "steps": args.steps, "frame_steps_per_s": b / per_step,
                   "s_per_step": per_step, "setup_s": setup, "peak_gib": _peak_gib(device)}
            results["throughput"].append(row)
            print(f"{b:>5} {graphs:>6} {row['frame_steps_per_s']:>15.2f} {row['s_per_step']:>8.3f} "
                  f"{row['setup_s']:>8.2f} {row['peak_gib']:>9.2f}", flush=True)

    if args.pti_steps > 0:
        image = _targets(G, 1, seed=2)
        with torch.no_grad():
            w = G.mapping(torch.randn([1, G.z_dim], generator=torch.Generator().manual_seed(3)).to(device), None)
        results["pti"] = []
        for graphs in args.pti_graphs:
            per_step, setup, call_s = _step_time(lambda steps: pivotal_tuning(G, image, w, steps=steps,
                                                                              cuda_graphs=bool(graphs),
                                                                              progress=False),
                                                 args.pti_steps, device)
            row = {"steps": args.pti_steps, "cuda_graphs": graphs, "call_s": call_s, "setup_s": setup,
                   "steps_per_s": 1 / per_step, "peak_gib": _peak_gib(device)}
            results["pti"].append(row)
            print(f"PTI (cuda_graphs={int(graphs)}): {args.pti_steps} steps in {row['call_s']:.2f} s: "
                  f"{row['steps_per_s']:.2f} steps/s after {row['setup_s']:.2f} s of set-up, peak "
                  f"{row['peak_gib']:.2f} GiB", flush=True)

    if args.seq_frames > 0:
        frames = _sequence_targets(G, args.seq_frames)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        t = time.perf_counter()
        inv = invert_sequence(G, frames, batch_size=args.seq_batch, steps_first=args.steps_first,
                              steps_next=args.steps_next, progress=False)
        _sync(device)
        dt = time.perf_counter() - t
        sizes = inv.settings.get("batch_sizes", [args.seq_batch])  # recorded where a batch was halved
        est160 = None  # not after a halving (a batch ran out of GPU memory): the formula assumes one batch size
        if len(sizes) == 1:
            n_batches = -(-args.seq_frames // args.seq_batch)
            # Extrapolate: first batch as measured, the other batches at the measured per-batch cost.
            per_next = ((dt * (inv.frame_steps - args.seq_batch * args.steps_first) / inv.frame_steps)
                        / max(n_batches - 1, 1))
            first = dt - per_next * (n_batches - 1)
            est160 = first + per_next * (-(-160 // args.seq_batch) - 1)
        seq = {"frames": args.seq_frames, "batch": args.seq_batch, "steps_first": args.steps_first,
               "steps_next": args.steps_next, "seconds": dt, "total_steps": inv.total_steps,
               "frame_steps": inv.frame_steps, "psnr_min": float(inv.psnr.min()), "psnr_mean": float(inv.psnr.mean()),
               "peak_gib": _peak_gib(device), "seconds_160_frames_est": est160, "batch_sizes": sizes}
        results["sequence"] = seq
        print(f"sequence: {args.seq_frames} frames, batch {args.seq_batch}, steps {args.steps_first}/"
              f"{args.steps_next}: {dt:.1f} s ({inv.total_steps} steps, {inv.frame_steps} frame-steps), PSNR min "
              f"{seq['psnr_min']:.2f} mean {seq['psnr_mean']:.2f} dB, peak {seq['peak_gib']:.2f} GiB"
              + ("" if args.seq_frames == 160 else f"; 160 frames ≈ {est160:.0f} s (extrapolated)" if est160
                 else f"; batch sizes {sizes} (halved when out of memory), not extrapolated"), flush=True)

    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(results) + "\n")
    return results


if __name__ == "__main__":
    main()
