"""Where synthesis spends its time: per-layer CUDA-event timings and the top kernels (torch.profiler).

    python benchmarks/profile_synthesis.py --cfg R --batch 8 --dtype mixed
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from v2s_nb.stylegan3 import build_generator  # noqa: E402
from v2s_nb.stylegan3.networks import resolve_impl  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--cfg", default="R")
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="mixed", choices=["fp32", "mixed"])
    p.add_argument("--impl", default=None)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    G = build_generator(args.cfg, resolution=args.resolution, device=dev)
    syn = G.synthesis
    kw = {"force_fp32": args.dtype == "fp32"}
    if args.impl:
        kw["impl"] = args.impl
    ws = G.mapping(torch.randn(args.batch, G.z_dim, device=dev), None)
    with torch.no_grad():
        for _ in range(2):
            syn(ws, **kw)
        styles = syn.styles(ws)
        x = syn.input.forward_styles(styles["input"])
        impl = resolve_impl(args.impl or "auto", dev)  # what syn(ws) runs; a layer alone defaults to "plain"
        print(f"# per-layer time, {args.cfg} {args.resolution} batch {args.batch} {args.dtype}, impl {impl}")
        total = 0.0
        for name in syn.layer_names:
            layer = getattr(syn, name)
            fn = (lambda x=x, layer=layer, name=name: layer.forward_styles(x, styles[name], impl=impl,
                                                                           force_fp32=kw["force_fp32"]))
            fn()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(5):
                y = fn()
            b.record()
            torch.cuda.synchronize()
            ms = a.elapsed_time(b) / 5
            total += ms
            print(f"{name:>14} {ms:8.2f} ms  up={layer.up_factor} down={layer.down_factor} "
                  f"radial={layer.down_radial} out={tuple(y.shape)}")
            x = y
        print(f"{'total':>14} {total:8.2f} ms")
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            syn(ws, **kw)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.top, max_name_column_width=60))


if __name__ == "__main__":
    main()
