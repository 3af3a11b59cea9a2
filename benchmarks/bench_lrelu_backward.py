"""The filtered leaky ReLU's fused backward kernel on the layers of a generator (CUDA), in launch variants, then the
whole training step.

    python benchmarks/bench_lrelu_backward.py --cfg R T --batch 8 --dtype mixed
    python benchmarks/bench_lrelu_backward.py --cfg T --batch 8 --variants --steps 1 8
    python benchmarks/bench_lrelu_backward.py --cfg T R --batch 8 --codes
    python benchmarks/bench_lrelu_backward.py --cfg T R --batch 8 --codes --codes-tiles 64

Per layer: milliseconds of ``fast_ops.fused_filtered_lrelu_backward`` on the layer's real input (captured from one
forward pass of ``G.synthesis`` under autograd, with the demodulation as the kernel's input gain) and a random
output gradient, in each variant (warps per program, tile edge; 'default' is what the code uses), with each
variant's largest difference from the default's input gradient (relative to its largest value). ``--codes``: also
the inference forward, the training forward that stores the activation's derivative codes
(``fast_ops.forward_with_codes``) and the backward from them, per layer (the codes path costs training + from
codes, the recomputing one forward + the default backward; every layer is timed both ways, whichever it takes),
the backward from codes in the other order of its window products (``fast_ops.CODES_COLS_FIRST`` flipped) and the
training forward with every tile masked (``fast_ops.TRAIN_INTERIOR_UNMASKED`` off).
``--codes-tiles 64``: the training forward and the backward from codes on 64-wide tiles as well (``fast_ops.CODES_TILES``),
with their d x difference from the code's tiles. ``--steps``:
batch sizes for which the whole forward / forward+backward (w.r.t. ws and w.r.t. weights) is then timed
(bench_generator's timing).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import cuda_ms  # noqa: E402
from bench_generator import bench_one  # noqa: E402
from v2s_nb.stylegan3 import build_generator, fast_layer, fast_ops  # noqa: E402


def capture_lrelu_inputs(G, batch, force_fp32):
    """The arguments (x, b, in_gain, fu, fd, up, down, padding, gain, slope, clamp) of the filtered leaky ReLU of
    every synthesis layer but ToRGB in one pass of ``G.synthesis`` with ws requiring grad, as the per-layer autograd
    Function (fast_layer) calls it: x is the layer's convolution output, in_gain its demodulation (3x3) or None."""
    calls = []
    orig = fast_layer._activation_forward

    def spy(y, bias, spec, in_gain, *rest):
        calls.append((y.detach(), bias.detach(), None if in_gain is None else in_gain.detach(),
                      *fast_layer._lrelu_args(spec)))
        return orig(y, bias, spec, in_gain, *rest)

    fast_layer._activation_forward = spy
    try:
        ws = G.mapping(torch.randn(batch, G.z_dim, device=G.device), None).requires_grad_(True)
        G.synthesis(ws, force_fp32=force_fp32)
    finally:
        fast_layer._activation_forward = orig
    if not calls:
        raise RuntimeError("no layer ran the layer Function (fast_config layer_function off, or no CUDA / Triton)")
    return calls


def _codes_path(call, gy):
    """(training forward ms, backward from codes ms, a function running that backward) of one layer's activation
    with fast_ops' present settings (small planes included), or None where forward_with_codes can't run (radial
    filters beyond MAX_RANK)."""
    x, b, g, fu, fd, up, down, padding, gain, slope, clamp = call

    def train():
        return fast_ops.forward_with_codes(x, fu, fd, b, up, down, padding, gain, slope, clamp, in_gain=g)

    with fast_ops_settings(CODES_MIN_OUT=0):  # small planes too, for the comparison
        res = train()
        if res is None:
            return None
        codes = res[1]

        def back_call():
            return fast_ops.backward_from_codes(codes, gy, x.shape, x.dtype, fu, fd, up, down, padding, gain, slope,
                                                x=x, in_gain=g)

        return cuda_ms(train), cuda_ms(back_call), back_call


def codes_row(call, gy):
    """(inference forward ms, training forward ms, codes backward ms, the codes backward in the other order of its
    products ms (``fast_ops.CODES_COLS_FIRST`` flipped), that order's largest d x difference relative to the largest
    value, the training forward with every tile masked ms (``fast_ops.TRAIN_INTERIOR_UNMASKED`` off)) of one layer's
    activation (small planes included, where the code keeps no codes), or None where forward_with_codes can't run."""
    x, b, g, fu, fd, up, down, padding, gain, slope, clamp = call
    timed = _codes_path(call, gy)
    if timed is None:
        return None
    train, back, back_call = timed
    inference = cuda_ms(lambda: fast_ops.fast_filtered_lrelu_forward(x, fu, fd, b, up, down, padding, gain, slope,
                                                                      clamp, in_gain=g))
    ref = back_call()[0].float()
    with fast_ops_settings(CODES_COLS_FIRST=not fast_ops.CODES_COLS_FIRST):
        other, diff = cuda_ms(back_call), float((back_call()[0].float() - ref).abs().max() / ref.abs().max())
    with fast_ops_settings(TRAIN_INTERIOR_UNMASKED=False):
        masked = _codes_path(call, gy)[0]
    return inference, train, back, other, diff, masked


def codes_on_tiles(call, gy, edge):
    """(training forward ms, backward from codes ms, that backward's largest d x difference from the backward on the
    code's tiles relative to its largest value) of one layer with its codes kernels on ``edge``-wide tiles
    (``fast_ops.CODES_TILES``), or None where forward_with_codes can't run."""
    x, up = call[0], call[5]
    ref = _codes_path(call, gy)
    with fast_ops_settings(CODES_TILES={**fast_ops.CODES_TILES, (x.dtype, up): (edge,)}):
        timed = _codes_path(call, gy)
        if ref is None or timed is None:
            return None
        d_x = timed[2]()[0].float()
    d_ref = ref[2]()[0].float()
    return timed[0], timed[1], float((d_x - d_ref).abs().max() / d_ref.abs().max())


F16, F32 = torch.float16, torch.float32
VARIANTS = {  # name: fast_ops settings changed for the variant ('default': as the code runs it)
    "default": {},
    "warps8": dict(BACKWARD_WARPS={F16: 8, F32: 4}, BACKWARD_SPLIT={F16: 1, F32: 1}, BACKWARD_LAUNCH={}),
    "warps4": dict(BACKWARD_WARPS={F16: 4, F32: 4}, BACKWARD_SPLIT={F16: 1, F32: 1}, BACKWARD_LAUNCH={}),
    "split2": dict(BACKWARD_WARPS={F16: 8, F32: 4}, BACKWARD_SPLIT={F16: 2, F32: 2}, BACKWARD_LAUNCH={}),
    "split4": dict(BACKWARD_WARPS={F16: 8, F32: 4}, BACKWARD_SPLIT={F16: 4, F32: 4}, BACKWARD_LAUNCH={}),
    "split2-warps4": dict(BACKWARD_WARPS={F16: 4, F32: 4}, BACKWARD_SPLIT={F16: 2, F32: 2}, BACKWARD_LAUNCH={}),
    # the float32 layers' launch and the small planes' first tile edge (the defaults' other settings kept)
    "f32-warps8": dict(BACKWARD_WARPS={F16: 8, F32: 8}),
    "f32-split2-warps8": dict(BACKWARD_WARPS={F16: 8, F32: 8}, BACKWARD_SPLIT={F16: 1, F32: 2}),
    "small-tile32": dict(BACKWARD_TILES=(128, 32)),
    "small-tile128": dict(BACKWARD_SMALL_OUT=0),
    # the fp16 4x layers' (row blocks, warps)
    "x4-split2-warps8": dict(BACKWARD_LAUNCH={(F16, 4): (2, 8)}),
    "x4-split4-warps4": dict(BACKWARD_LAUNCH={(F16, 4): (4, 4)}),
    "x4-split4-warps8": dict(BACKWARD_LAUNCH={(F16, 4): (4, 8)}),
}


@contextlib.contextmanager
def fast_ops_settings(**settings):
    """fast_ops' module settings (e.g. BACKWARD_WARPS) changed for the ``with`` block, restored after it."""
    saved = {k: getattr(fast_ops, k) for k in settings}
    try:
        for k, v in settings.items():
            setattr(fast_ops, k, v)
        yield
    finally:
        for k, v in saved.items():
            setattr(fast_ops, k, v)


def _tried(row, label, run):
    """run()'s result, or None after noting in ``row`` why there is none: '<label> failed (<exception type>)' where
    it does not compile or run here (the benchmark goes on), '<label> n/a' where it returned None."""
    try:
        res = run()
    except Exception as e:  # noqa: BLE001 - any failure of one variant is reported, not fatal
        row.append(f"{label} failed ({type(e).__name__})")
        return None
    if res is None:
        row.append(f"{label} n/a")
    return res


def run_variant(name, args, gy):
    x, b, g, fu, fd, up, down, padding, gain, slope, clamp = args
    with fast_ops_settings(**VARIANTS[name]):
        return fast_ops.fused_filtered_lrelu_backward(x, fu, fd, b, up, down, padding, gain, slope, clamp, gy,
                                                      in_gain=g)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", nargs="+", default=["R", "T"], choices=["R", "T"])
    p.add_argument("--resolution", type=_common.positive_int, default=1024)
    p.add_argument("--batch", type=_common.positive_int, default=8)
    p.add_argument("--dtype", default="mixed", choices=["fp32", "mixed"])
    p.add_argument("--variants", nargs="*", default=["default"], choices=list(VARIANTS),
                   help="kernels to compare per layer (none: only the whole steps)")
    p.add_argument("--codes", action="store_true",
                   help="also per layer: the inference forward, the training forward that stores the derivative "
                        "codes and the backward from them (ms)")
    p.add_argument("--codes-tiles", type=_common.positive_int, nargs="*", default=[], metavar="EDGE",
                   help="also per layer: the training forward and the backward from codes on tiles of this edge "
                        "(fast_ops.CODES_TILES), with the d x difference from the code's tiles")
    p.add_argument("--steps", type=_common.positive_int, nargs="*", default=[],
                   help="batch sizes for the whole-step comparison")
    p.add_argument("--iters", type=_common.positive_int, default=5)
    args = p.parse_args(argv)
    _common.require_cuda(p, "bench_lrelu_backward.py")
    dev = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    for cfg in args.cfg:
        G = build_generator(cfg, resolution=args.resolution, device=dev)
        calls = capture_lrelu_inputs(G, args.batch, args.dtype == "fp32") if args.variants or args.codes else []
        if calls:
            print(f"# {cfg} {args.resolution} batch {args.batch} {args.dtype}: backward ms per layer (max rel. diff "
                  f"of d x from the default)")
        codes_names = ["inference", "training", "from codes", "other order", None, "training masked"]
        totals = dict.fromkeys(args.variants + ([k for k in codes_names if k] if args.codes else [])
                               + [f"{k} {e}" for e in args.codes_tiles for k in ("training", "from codes")], 0.0)
        for i, call in enumerate(calls):
            x = call[0]
            h_out, w_out = fast_ops._output_size(x.shape[2], x.shape[3], *call[3:8])
            gy = torch.randn((*x.shape[:2], h_out, w_out), device=dev, dtype=x.dtype) * 1e-3
            ref = run_variant("default", call, gy)
            row = []
            for name in args.variants:
                res = _tried(row, name, lambda: run_variant(name, call, gy))
                if res is None:
                    continue
                ms = cuda_ms(lambda: run_variant(name, call, gy), reps=args.iters)
                totals[name] += ms
                err = "" if ref is None else (
                    f" ({float((res[0].float() - ref[0].float()).abs().max() / ref[0].float().abs().max()):.1e})")
                row.append(f"{name} {ms:7.2f}{err}")
            if args.codes:
                times = codes_row(call, gy)
                if times is None:
                    row.append("codes n/a")
                else:
                    for name, ms in zip(codes_names, times):
                        if name:
                            totals[name] += ms
                    row.append("forward {:6.2f} training {:6.2f} from codes {:6.2f} (other order {:6.2f}, "
                               "d x diff {:.1e}; training all masked {:6.2f})".format(*times))
            for edge in args.codes_tiles:
                res = _tried(row, f"tiles {edge}", lambda: codes_on_tiles(call, gy, edge))
                if res is None:
                    continue
                totals[f"training {edge}"] += res[0]
                totals[f"from codes {edge}"] += res[1]
                row.append("tiles {}: training {:6.2f} from codes {:6.2f} (d x diff {:.1e})".format(edge, *res))
            print(f"{i:2d} {tuple(x.shape)} {str(x.dtype)[6:]} up {call[5]} down {call[6]} | " + " | ".join(row),
                  flush=True)
        if calls:
            print("total | " + " | ".join(f"{k} {v:.1f} ms" for k, v in totals.items()), flush=True)
        del calls
        for batch in args.steps:
            for mode in ("forward", "ws", "weights"):
                r = bench_one(G, batch, args.dtype, dev, args.iters, 1, False if mode == "forward" else mode)
                print(f"step {cfg} batch {batch} {args.dtype} {mode:>8}: {r['ms_per_call']:7.1f} ms  "
                      f"peak {r['peak_gib']:.2f} GiB", flush=True)
        del G
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
