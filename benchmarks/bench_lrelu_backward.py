"""The filtered leaky ReLU's backward kernels side by side on the layers of a generator (CUDA), then the whole
training step with each.

    python benchmarks/bench_lrelu_backward.py --cfg R T --batch 8 --dtype mixed
    python benchmarks/bench_lrelu_backward.py --cfg T --batch 8 --steps 1 8

Per layer: milliseconds of ``fast_ops.fused_filtered_lrelu_backward``'s dense kernel and of the banded kernel
(:mod:`v2s_nb.stylegan3.fast_backward`) in its variants, on the layer's real input (captured from one forward pass
of ``G.synthesis`` under autograd) and a random output gradient, with each variant's largest difference from the
dense kernel's input gradient (relative to its largest value). ``--steps``: batch sizes for which the whole
forward / forward+backward (w.r.t. ws and w.r.t. weights) is then timed with each form (bench_generator's timing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cuda_ms  # noqa: E402
from bench_generator import bench_one  # noqa: E402
from v2s_nb.stylegan3 import build_generator, fast_backward, fast_config, fast_ops  # noqa: E402


def capture_lrelu_inputs(G, batch, force_fp32):
    """The arguments of every fast filtered leaky ReLU call of one synthesis pass with ws requiring grad."""
    calls = []
    orig = fast_ops._FilteredLReLU.apply

    def spy(x, b, fu, fd, up, down, padding, gain, slope, clamp):
        calls.append((x.detach(), b.detach(), fu, fd, up, down, padding, gain, slope, clamp))
        return orig(x, b, fu, fd, up, down, padding, gain, slope, clamp)

    fast_ops._FilteredLReLU.apply = spy
    try:
        ws = G.mapping(torch.randn(batch, G.z_dim, device=G.device), None).requires_grad_(True)
        G.synthesis(ws, force_fp32=force_fp32)
    finally:
        fast_ops._FilteredLReLU.apply = orig
    return calls


VARIANTS = {  # name: (tiles, warps, relaxed atomics); None: the dense kernel
    "dense": None,
    "chosen": "chosen",  # fused_filtered_lrelu_backward with fast_config backward_form 'banded': BANDED_FORMS, else dense
    "banded": ((128,), 8, True),
    "banded-acqrel": ((128,), 8, False),
    "banded-64": ((64,), 4, True),
}


def run_variant(name, args, gy):
    x, b, fu, fd, up, down, padding, gain, slope, clamp = args
    spec = VARIANTS[name]
    if spec is None or spec == "chosen":
        with fast_config.override(backward_form="dense" if spec is None else "banded"):
            return fast_ops.fused_filtered_lrelu_backward(x, fu, fd, b, up, down, padding, gain, slope, clamp, gy)
    tiles, warps, relaxed = spec
    return fast_backward.banded_filtered_lrelu_backward(x, fu, fd, b, up, down, padding, gain, slope, clamp, gy,
                                                        tiles=tiles, warps=warps, relaxed=relaxed)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", nargs="+", default=["R", "T"], choices=["R", "T"])
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="mixed", choices=["fp32", "mixed"])
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                   help="kernels to compare per layer (none: only the whole steps)")
    p.add_argument("--steps", type=int, nargs="*", default=[], help="batch sizes for the whole-step comparison")
    p.add_argument("--iters", type=int, default=5)
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    for cfg in args.cfg:
        G = build_generator(cfg, resolution=args.resolution, device=dev)
        calls = capture_lrelu_inputs(G, args.batch, args.dtype == "fp32") if args.variants else []
        if calls:
            print(f"# {cfg} {args.resolution} batch {args.batch} {args.dtype}: backward ms per layer (max rel. diff "
                  f"of d x from dense)")
        totals = dict.fromkeys(args.variants, 0.0)
        for i, call in enumerate(calls):
            x = call[0]
            h_out, w_out = fast_ops._output_size(x.shape[2], x.shape[3], call[2], call[3], call[4], call[5], call[6])
            gy = torch.randn((*x.shape[:2], h_out, w_out), device=dev, dtype=x.dtype) * 1e-3
            ref = run_variant("dense", call, gy) if "dense" in args.variants else None
            row = []
            for name in args.variants:
                if name == "banded-64" and x.dtype != torch.float16:
                    row.append(f"{name} -")
                    continue
                try:
                    res = run_variant(name, call, gy)
                except Exception as e:  # a variant that does not compile or run here: say so, go on
                    row.append(f"{name} failed ({type(e).__name__})")
                    continue
                if res is None:
                    row.append(f"{name} n/a")
                    continue
                ms = cuda_ms(lambda: run_variant(name, call, gy), reps=args.iters)
                totals[name] += ms
                err = "" if ref is None else (
                    f" ({float((res[0].float() - ref[0].float()).abs().max() / ref[0].float().abs().max()):.1e})")
                row.append(f"{name} {ms:7.2f}{err}")
            print(f"{i:2d} {tuple(x.shape)} {str(x.dtype)[6:]} up {call[4]} down {call[5]} | " + " | ".join(row),
                  flush=True)
        if calls:
            print("total | " + " | ".join(f"{k} {v:.1f} ms" for k, v in totals.items()), flush=True)
        del calls
        for batch in args.steps:
            for form in ("dense", "banded"):  # fast_config's backward_form: dense only, or banded where it applies
                with fast_config.override(backward_form=form):
                    for mode in ("forward", "ws", "weights"):
                        r = bench_one(G, batch, args.dtype, dev, args.iters, 1, False if mode == "forward" else mode)
                        print(f"step {cfg} batch {batch} {args.dtype} backward-form {form:>6} {mode:>8}: "
                              f"{r['ms_per_call']:7.1f} ms  peak {r['peak_gib']:.2f} GiB", flush=True)
        del G
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
