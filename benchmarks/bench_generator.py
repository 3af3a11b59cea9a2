"""Speed and memory of StyleGAN3 synthesis (random weights, the released R / T architectures).

    python benchmarks/bench_generator.py --cfg R T --resolution 1024 --batch 1 8 --dtype fp32 mixed --device cuda
    python benchmarks/bench_generator.py --cfg R T --resolution 64 --batch 1 8 --device cpu --tiny

Prints one row per combination: images/s of ``G.synthesis(ws)`` (noise_mode='const'), the first call's time
(which includes any compilation), and peak memory (CUDA: max allocated by torch; CPU: peak RSS of the process
so far). ``--backward`` times one forward+backward step w.r.t. ws instead; ``--modes forward ws weights`` times
the forward, the step w.r.t. ws and the step w.r.t. the synthesis weights (PTI's) in one process, side by side
(loss: mean of squares of the image). ``--json FILE`` appends results.
``--fast NAME=VALUE ...`` sets fast-path knobs of :mod:`v2s_nb.stylegan3.fast_config` for the run (e.g.
``--fast bf16x3=0 modulation_kernels=0``), to time the library with and without a choice; ``--codes-tiles 2:64``
runs the derivative codes' kernels of the fp16 2x layers on 64-wide tiles (``fast_ops.CODES_TILES``);
``--codes-order rows`` the backward from codes in its rows-first order (``fast_ops.CODES_COLS_FIRST`` off).

    python benchmarks/bench_generator.py --cfg R T --batch 1 8 --dtype mixed --modes forward ws weights --device cuda
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
from v2s_nb.stylegan3 import (GraphedSynthesis, GraphedTrainingSynthesis, build_generator, fast_config,  # noqa: E402
                               fast_ops, tiny_generator)


def codes_tiles(entries):
    """``--codes-tiles`` entries 'UP:EDGE' -> {(torch.float16, UP): (EDGE,)} for fast_ops.CODES_TILES."""
    tiles = {}
    for entry in entries:
        try:
            up, edge = (int(v) for v in entry.split(":"))
        except ValueError:
            raise ValueError(f"{entry!r}: give the upsampling factor and the tile edge as UP:EDGE, e.g. 2:64") from None
        if up not in (2, 4) or edge not in (64, 128):
            raise ValueError(f"{entry!r}: the layers upsample by 2 or 4, and the tiles are 64 or 128 wide")
        tiles[(torch.float16, up)] = (edge,)
    return tiles


def bench_one(G, batch, dtype, device, iters, warmup, backward=False, impl=None):
    """Times of one configuration. ``backward``: False (synthesis only), True or 'ws' (forward+backward w.r.t.
    ws), or 'weights' (w.r.t. the synthesis parameters, ws fixed; gradients set to None before each step)."""
    force_fp32 = dtype == "fp32"
    kwargs = {"force_fp32": force_fp32}
    if impl not in (None, "graph"):
        kwargs["impl"] = impl
    gen = torch.Generator(device="cpu").manual_seed(0)
    ws = G.mapping(torch.randn([batch, G.z_dim], generator=gen).to(device), None)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    graphed = None
    if impl == "graph":  # the fast path replayed from CUDA graphs (GraphedSynthesis, GraphedTrainingSynthesis)
        if device.type != "cuda":
            raise ValueError("impl 'graph' needs CUDA")
        if backward:  # recorded on the first call, with the parameters' requires_grad set below
            graphed = GraphedTrainingSynthesis(G, batch, ws_grad=backward != "weights", force_fp32=force_fp32)
        else:
            graphed = GraphedSynthesis(G, batch, force_fp32=force_fp32)
    synthesis = graphed if graphed is not None else (lambda w: G.synthesis(w, **kwargs))

    def step():
        if backward == "weights":
            for prm in params:
                prm.grad = None
            synthesis(ws).square().mean().backward()
            return
        if backward:
            w = ws.detach().requires_grad_(True)
            synthesis(w).square().mean().backward()
            return
        with torch.no_grad():
            synthesis(ws)

    params = list(G.synthesis.parameters()) if backward == "weights" else []
    saved = [prm.requires_grad for prm in params]
    for prm in params:
        prm.requires_grad_(True)
    try:
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        first = time.perf_counter() - t0
        for _ in range(warmup):
            step()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        _sync(device)
        dt = (time.perf_counter() - t0) / iters
    finally:
        for prm, flag in zip(params, saved):
            prm.requires_grad_(flag)
            prm.grad = None
    return {"img_per_s": batch / dt, "ms_per_call": dt * 1e3, "first_call_s": first, "peak_gib": _peak_gib(device)}


def fast_settings(pairs) -> dict:
    """``['use_fused=0', 'chunk_mb=256']`` -> {'use_fused': False, 'chunk_mb': 256}, typed as FastConfig's fields."""
    import dataclasses

    types = {f.name: f.type for f in dataclasses.fields(fast_config.FastConfig)}
    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in types:
            raise ValueError(f"{pair!r}: want NAME=VALUE with NAME one of {sorted(types)}")
        kind = types[name]
        if kind in ("bool", bool):
            if text not in ("0", "1"):
                raise ValueError(f"{pair!r}: {name} takes 0 or 1")
            out[name] = text == "1"
        else:
            out[name] = (int if kind in ("int", int) else float)(text)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", nargs="+", default=["R", "T"], choices=["R", "T"])
    p.add_argument("--resolution", type=_common.positive_int, default=1024)
    p.add_argument("--batch", type=_common.positive_int, nargs="+", default=[1, 8])
    p.add_argument("--dtype", nargs="+", default=["fp32"], choices=["fp32", "mixed"],
                   help="fp32, or mixed = the snapshot's fp16 layers in fp16 (CUDA only)")
    p.add_argument("--impl", nargs="+", default=[None],
                   help="implementations to compare: auto, fast, plain, or graph (fast, replayed from CUDA graphs: "
                        "the forward, or with ws / weights the forward and the backward)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", type=_common.device)
    p.add_argument("--tiny", action="store_true", help="the tiny test architecture instead of the released one")
    p.add_argument("--iters", type=_common.positive_int, default=10)
    p.add_argument("--warmup", type=_common.nonnegative_int, default=2)
    p.add_argument("--backward", action="store_true", help="time forward+backward w.r.t. ws instead")
    p.add_argument("--modes", nargs="+", choices=["forward", "ws", "weights"],
                   help="what to time, side by side: synthesis only, forward+backward w.r.t. ws, w.r.t. weights")
    p.add_argument("--json", help="append results as JSON lines to this file")
    p.add_argument("--fast", nargs="+", default=[], metavar="NAME=VALUE",
                   help="fast_config knobs for this run, e.g. use_fused=0 chunk_mb=256 (see its docstring)")
    p.add_argument("--codes-tiles", nargs="+", default=[], metavar="UP:EDGE",
                   help="the derivative codes' kernels on the fp16 layers of that upsampling factor on tiles of that "
                        "edge (fast_ops.CODES_TILES), e.g. 2:64 4:64")
    p.add_argument("--codes-order", choices=["rows", "cols"],
                   help="the backward from codes' order of its window products (fast_ops.CODES_COLS_FIRST: cols); "
                        "default: the library's")
    args = p.parse_args(argv)
    if args.codes_order:
        fast_ops.CODES_COLS_FIRST = args.codes_order == "cols"
        print(f"# fast_ops.CODES_COLS_FIRST: {fast_ops.CODES_COLS_FIRST}")
    try:
        settings = fast_settings(args.fast)
        fast_config.configure(**settings)
    except (TypeError, ValueError) as e:
        p.error(f"--fast: {e}")
    if settings:
        print(f"# fast_config: {fast_config.current()}")
    try:
        fast_ops.CODES_TILES.update(codes_tiles(args.codes_tiles))
    except ValueError as e:
        p.error(f"--codes-tiles: {e}")
    if args.codes_tiles:
        print(f"# fast_ops.CODES_TILES: {fast_ops.CODES_TILES}")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    modes = args.modes or (["ws"] if args.backward else ["forward"])
    print(f"# {name}, torch {torch.__version__}, modes {' '.join(modes)} (ws / weights: forward+backward w.r.t. them)")
    print(f"{'cfg':>3} {'res':>5} {'batch':>5} {'dtype':>6} {'impl':>8} {'mode':>8} {'img/s':>8} {'ms/call':>9} "
          f"{'first s':>8} {'peak GiB':>9}")
    for cfg in args.cfg:
        if args.tiny:
            G = tiny_generator(cfg, resolution=args.resolution).to(device)
        else:
            G = build_generator(cfg, resolution=args.resolution, device=device)
        for impl in args.impl:
            for dtype in args.dtype:
                for batch in args.batch:
                    for mode in modes:
                        backward = False if mode == "forward" else mode
                        head = f"{cfg:>3} {args.resolution:>5} {batch:>5} {dtype:>6} {str(impl):>8} {mode:>8}"
                        try:
                            r = bench_one(G, batch, dtype, device, args.iters, args.warmup, backward, impl)
                        except torch.cuda.OutOfMemoryError:
                            print(f"{head}   out of memory")
                            torch.cuda.empty_cache()
                            continue
                        print(f"{head} {r['img_per_s']:8.2f} {r['ms_per_call']:9.1f} {r['first_call_s']:8.2f} "
                              f"{r['peak_gib']:9.2f}", flush=True)
                        if args.json:
                            with open(args.json, "a") as f:
                                f.write(json.dumps(dict(cfg=cfg, resolution=args.resolution, batch=batch,
                                                        dtype=dtype, impl=impl, device=name, mode=mode,
                                                        backward=backward, **r)) + "\n")
        del G
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
