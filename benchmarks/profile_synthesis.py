"""Where synthesis spends its time: per-layer CUDA-event timings and the top kernels (torch.profiler).

    python benchmarks/profile_synthesis.py --cfg R --batch 8 --dtype mixed
    python benchmarks/profile_synthesis.py --cfg T --batch 8 --dtype mixed --backward ws
    V2S_NB_LAYER_FUNCTION=0 python benchmarks/profile_synthesis.py --cfg T --batch 8 --backward weights  # without
    python benchmarks/profile_synthesis.py --tiny --cfg T --resolution 64 --batch 2 --device cpu --cpu-fast \
        --backward weights  # the CPU check of the per-layer Function's saved bytes

``--backward ws|weights`` profiles the training step instead: per layer, the forward under autograd, the backward
of that layer alone (for a random output gradient; w.r.t. its input and styles, plus its parameters with
``weights``) and the bytes autograd saves for it; then the top kernels of one whole forward+backward step.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import cuda_ms  # noqa: E402
from v2s_nb.stylegan3 import build_generator, fast_config, fast_layer, tiny_generator  # noqa: E402
from v2s_nb.stylegan3.networks import resolve_impl  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="R")
    p.add_argument("--resolution", type=_common.positive_int, default=1024)
    p.add_argument("--batch", type=_common.positive_int, default=8)
    p.add_argument("--dtype", default="mixed", choices=["fp32", "mixed"])
    p.add_argument("--impl", default=None)
    p.add_argument("--top", type=_common.positive_int, default=15)
    p.add_argument("--backward", choices=["ws", "weights"], help="profile forward+backward w.r.t. ws or weights")
    p.add_argument("--device", default="cuda", type=_common.device,
                   help="cuda; cpu (with --tiny) only checks that the script runs")
    p.add_argument("--tiny", action="store_true", help="the tiny test architecture instead of the released one")
    p.add_argument("--cpu-fast", action="store_true",
                   help="with --device cpu and --backward: the per-layer table through the fast path's layer logic "
                        "(each layer but ToRGB as fast_layer's Function, its pieces falling back to the plain ops), "
                        "to check its saved bytes at tiny sizes")
    args = p.parse_args(argv)
    if args.cpu_fast and (args.device != "cpu" or not args.backward):
        p.error("--cpu-fast is for --device cpu with --backward ws|weights (on CUDA the fast path runs anyway)")
    dev = torch.device(args.device)
    G = (tiny_generator(args.cfg, resolution=args.resolution).to(dev) if args.tiny
         else build_generator(args.cfg, resolution=args.resolution, device=dev))
    syn = G.synthesis
    kw = {"force_fp32": args.dtype == "fp32"}
    if args.impl:
        kw["impl"] = args.impl
    ws = G.mapping(torch.randn(args.batch, G.z_dim, device=dev), None)
    if args.backward:
        return profile_backward(G, ws, kw, args)
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


def _event_ms(fn, reps=5):
    """Milliseconds per call: CUDA events (:func:`_common.cuda_ms`), or the host clock for the script's CPU check."""
    if torch.cuda.is_available():
        return cuda_ms(fn, reps)
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) * 1e3 / reps


def _per_layer_backward(syn, styles, x, impl, kw):
    """The per-layer rows of :func:`profile_backward`: forward under autograd, backward, saved MiB."""
    tot_f = tot_b = tot_m = 0.0
    for name in syn.layer_names:
        layer = getattr(syn, name)
        xin = x.detach().requires_grad_(True)
        st = styles[name].requires_grad_(True)
        saved = {}

        def pack(t):
            saved[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
            return t

        def fwd():
            return layer.forward_styles(xin, st, impl=impl, force_fp32=kw["force_fp32"])

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = fwd()
        gy = torch.randn_like(y)
        ms_f = _event_ms(fwd)
        ms_b = _event_ms(lambda: y.backward(gy, retain_graph=True))
        mib = sum(saved.values()) / 2 ** 20
        tot_f, tot_b, tot_m = tot_f + ms_f, tot_b + ms_b, tot_m + mib
        print(f"{name:>14} fwd {ms_f:7.2f} ms  bwd {ms_b:7.2f} ms  saved {mib:9.2f} MiB  out={tuple(y.shape)} "
              f"{y.dtype}")
        x = y.detach()
        del y, gy
        for prm in layer.parameters():
            prm.grad = None
    print(f"{'total':>14} fwd {tot_f:7.2f} ms  bwd {tot_b:7.2f} ms  saved {tot_m:9.2f} MiB")


def profile_backward(G, ws, kw, args):
    """Per-layer forward under autograd / backward / saved bytes, then the top kernels of one training step."""
    syn = G.synthesis
    impl = "fast" if args.cpu_fast else resolve_impl(args.impl or "auto", ws.device)
    weights = args.backward == "weights"
    syn.requires_grad_(weights)
    with torch.no_grad():
        styles = {k: v.detach() for k, v in syn.styles(ws).items()}
        x = syn.input.forward_styles(styles["input"])
    print(f"# per-layer forward (under autograd) / backward ms and saved MiB, {args.cfg} {args.resolution} "
          f"batch {args.batch} {args.dtype}, impl {impl}, gradients w.r.t. {args.backward}, layer_function "
          f"{int(fast_config.current().layer_function)}" + (" (on the CPU)" if args.cpu_fast else ""))
    with fast_layer.on_any_device() if args.cpu_fast else contextlib.nullcontext():
        _per_layer_backward(syn, styles, x, impl, kw)

    def step():
        w = ws.detach().requires_grad_(not weights)
        syn(w, **kw).square().mean().backward()

    step()
    from torch.profiler import ProfilerActivity, profile

    cuda = ws.is_cuda
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=args.top,
                                    max_name_column_width=70))
    syn.requires_grad_(False)


if __name__ == "__main__":
    main()
