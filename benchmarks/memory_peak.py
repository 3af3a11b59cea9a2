"""What is alive at the peak of one synthesis training step (CUDA): the step's allocations replayed from PyTorch's
memory history, the peak found, and the blocks alive then, grouped by the line of v2s_nb (or the benchmark) that
allocated them.

    python benchmarks/memory_peak.py --cfg R --batch 16 --mode weights          # and --mode ws; --batch 8
    python benchmarks/memory_peak.py --cfg R --batch 8 --snapshot r8.pickle     # also keep the raw snapshot

Prints the peak (GiB allocated by torch, as ``torch.cuda.max_memory_allocated`` counts it), what was allocated before
the step (parameters, ws), and the live blocks at the peak per allocating line: count, GiB, the shapes' sizes. The
raw snapshot (``--snapshot``) opens in https://pytorch.org/memory_viz. One warm-up step runs first (Triton's
compilation and the fast path's caches are not in the recorded step).
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import REPO  # noqa: E402
from v2s_nb.stylegan3 import build_generator  # noqa: E402

GIB = 2 ** 30


def _site(frames) -> str:
    """The innermost frame in this repository's code (the package or the benchmarks), as 'path:line (function)';
    else the innermost frame; '?' without frames."""
    for f in frames or ():
        name = str(f.get("filename", ""))
        if "v2s_nb" in Path(name).parts or "benchmarks" in Path(name).parts:
            try:
                name = str(Path(name).resolve().relative_to(REPO))
            except ValueError:
                pass
            return f"{name}:{f.get('line')} ({f.get('name')})"
    if frames:
        f = frames[0]
        return f"{f.get('filename')}:{f.get('line')} ({f.get('name')})"
    return "?"


def peak_from_trace(events, base=0):
    """(peak bytes, live blocks at the peak) of one device's allocation trace (``torch.cuda.memory._snapshot()
    ['device_traces'][device]``): events in order, each a dict with ``action`` ('alloc', 'free_completed', others
    ignored), ``addr``, ``size`` and ``frames``. ``base``: bytes allocated before the trace began (not in it). Live
    blocks: {addr: (size, frames)} of the trace's own allocations alive when the peak was first reached. A free of
    a block the trace did not allocate (one of ``base``'s) lowers the count by the event's size."""
    live = {}
    current = peak = base
    at_peak = {}
    for ev in events:
        action = ev.get("action")
        if action == "alloc":
            live[ev["addr"]] = (ev["size"], ev.get("frames") or [])
            current += ev["size"]
            if current > peak:
                peak, at_peak = current, dict(live)
        elif action == "free_completed":
            size = live.pop(ev["addr"], (ev["size"], None))[0]
            current -= size
    return peak, at_peak


def grouped(blocks):
    """[(site, count, bytes, sizes)] of live ``blocks`` ({addr: (size, frames)}) per allocating site, largest first."""
    groups = defaultdict(lambda: [0, 0, []])
    for size, frames in blocks.values():
        g = groups[_site(frames)]
        g[0] += 1
        g[1] += size
        g[2].append(size)
    return sorted(((site, c, b, sorted(s, reverse=True)) for site, (c, b, s) in groups.items()),
                  key=lambda r: -r[2])


def record_step(cfg, batch, mode, device, resolution=1024):
    """(snapshot, bytes allocated before the step, torch's own peak) of one step of ``cfg``'s synthesis at
    ``resolution``, mixed precision, loss = mean of squares of the image, w.r.t. ws or the weights (``mode``)."""
    G = build_generator(cfg, resolution=resolution, device=device)
    ws = G.mapping(torch.randn([batch, G.z_dim], generator=torch.Generator().manual_seed(0)).to(device), None)
    params = list(G.synthesis.parameters())
    for p in params:
        p.requires_grad_(mode == "weights")

    def step():
        for p in params:
            p.grad = None
        w = ws.detach().requires_grad_(mode == "ws")
        G.synthesis(w).square().mean().backward()

    step()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.memory._record_memory_history(max_entries=1_000_000, context="all", stacks="python")
    try:
        step()
        torch.cuda.synchronize(device)
        snapshot = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    return snapshot, base, torch.cuda.max_memory_allocated(device)


def report(snapshot, base, device_index=0, top=20, out=print):
    """Prints the peak and the live blocks at it per site (see the module's docstring); returns the peak bytes."""
    peak, blocks = peak_from_trace(snapshot["device_traces"][device_index], base)
    out(f"peak {peak / GIB:.2f} GiB: {base / GIB:.2f} allocated before the step, {(peak - base) / GIB:.2f} by it")
    out(f"{'GiB':>7} {'blocks':>6}  allocated at (largest blocks, GiB)")
    for site, count, size, sizes in grouped(blocks)[:top]:
        shown = ", ".join(f"{s / GIB:.2f}" for s in sizes[:4]) + (", ..." if len(sizes) > 4 else "")
        out(f"{size / GIB:7.2f} {count:6d}  {site}  ({shown})")
    return peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="R", choices=["R", "T"])
    p.add_argument("--batch", type=_common.positive_int, default=8)
    p.add_argument("--resolution", type=_common.positive_int, default=1024)
    p.add_argument("--mode", default="weights", choices=["ws", "weights"],
                   help="the step's gradients: w.r.t. ws, or w.r.t. the synthesis weights (PTI's)")
    p.add_argument("--top", type=_common.positive_int, default=20, help="allocating sites to list")
    p.add_argument("--snapshot", help="also write the raw snapshot (pickle) here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU (the allocator's memory history is CUDA's)")
    device = torch.device("cuda")
    snapshot, base, torch_peak = record_step(args.cfg, args.batch, args.mode, device, args.resolution)
    print(f"# {torch.cuda.get_device_name(device)}, {args.cfg} {args.resolution} batch {args.batch} mixed, step "
          f"w.r.t. {args.mode}; torch's peak {torch_peak / GIB:.2f} GiB")
    report(snapshot, base, device.index or 0, args.top)
    if args.snapshot:
        with open(args.snapshot, "wb") as f:
            pickle.dump(snapshot, f)


if __name__ == "__main__":
    main()
