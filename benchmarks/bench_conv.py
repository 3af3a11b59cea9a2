"""The fp16 3x3 convolutions of StyleGAN3-T's fast path, per layer: cuDNN on NCHW (channels padded to multiples of
8, as ``ops.scaled_input_conv2d`` runs it; its time includes the NCHW <-> NHWC transposes cuDNN does around its
tensor-core kernels) against the forms of ``v2s_nb.stylegan3.fast_conv`` (NCHW in and out): cudnn (cuDNN on
channels-last copies made by our transposes), rows (GPUs with TMA, reading rows padded to 16 bytes as the fast path
writes them) and pointers.

    python benchmarks/bench_conv.py --batch 8

Prints, for every fp16 layer of T at 1024: the times (ms), the largest error of the Triton kernels against a float32
convolution (relative to the largest output), and the form the fast path uses (``conv2d_nchw``'s choice).

    python benchmarks/bench_conv.py --batch 8 --grads [--sweep]

The gradients instead (training): per layer, cuDNN's backward on NCHW fp16 as autograd runs it today
(``aten.convolution_backward`` on the channel-padded tensors of ``ops.scaled_input_conv2d``, its transposes
included: both gradients, and each alone) against ``fast_conv.conv2d_input_grad_nchw`` (its cudnn and pointers
forms, and the one it picks) and ``fast_conv.conv2d_weight_grad_nchw`` (with a per-sample input scale: its Triton
and cudnn forms, and the one it picks); ms, and the largest error of each against a float32 backward (TF32 off),
relative to the largest value. ``--sweep`` also times the weight gradient's kernel in
other tile configurations per layer and prints the fastest.

    python benchmarks/bench_conv.py --batch 8 --grads-1x1 [--sweep]

R's per-sample 1x1 weight gradient instead (each fp16 layer of R, on random tensors of its shapes): cuBLAS's batched
product as the layer's backward ran it before (``torch.bmm(grad_y, x^T)``) against
``fast_conv.batched_1x1_weight_grad``, and the input gradient (``torch.bmm(W^T, grad_y)`` against
``fast_conv.batched_1x1_input_grad``): ms, and each one's largest error against a float32 product; ``--sweep``
times other tile configurations of ours.

    python benchmarks/bench_conv.py --batch 8 --wgrad-paddings

    python benchmarks/bench_conv.py --batch 8 --scaled-rows

The training step's scaled input copy for the rows form (x * scale into rows padded to 16 bytes), per layer that runs
the rows form: PyTorch's ``torch.mul`` into the padded buffer (what ``fast_conv.scaled_rows`` did before its
kernel), ``fast_conv.scaled_rows`` (its Triton kernel) and, for scale, ``torch.mul`` into a contiguous buffer (no
padding: PyTorch's vectorised kernel): ms, and whether the kernel's values equal ``torch.mul``'s.

    python benchmarks/bench_conv.py --batch 8 --wgrad-per-sample

The weight gradient of the 3x3 layers (with a per-sample input scale, as the step takes it) over the whole batch
(``fast_conv.conv2d_weight_grad_nchw``) against each sample's apart with the demodulation's gradient made from them
(``fast_layer._grads_from_per_sample``: what fast_layer does where it keeps no convolution output): ms, and the
largest error of the summed kernel gradient and of those sums against float32 (the sums' reference: sum over pixels
of the output gradient times the float32 convolution output), relative to the largest value.

cuDNN's weight gradient on channels-last copies made by ``fast_conv.to_nhwc`` (the 'cudnn' form of
``fast_conv.conv2d_weight_grad_nchw``), per fp16 layer of T, with the channels padded several ways, over the whole
batch or chunks of samples, with and without cudnn.benchmark: ms, transposes included. cuDNN's choice of kernel moves
with the padding (docs/performance.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import cuda_ms  # noqa: E402
from v2s_nb.stylegan3 import build_generator, fast_conv, fast_layer  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=_common.positive_int, default=8)
    p.add_argument("--resolution", type=_common.positive_int, default=1024)
    p.add_argument("--grads", action="store_true", help="time the gradients (backward) instead of the forward")
    p.add_argument("--grads-1x1", action="store_true", help="time R's per-sample 1x1 weight gradient instead")
    p.add_argument("--sweep", action="store_true", help="with --grads / --grads-1x1: time other tile configs")
    p.add_argument("--wgrad-paddings", action="store_true",
                   help="time cuDNN's weight gradient on our channels-last copies with the channels padded several "
                        "ways, over the whole batch and chunks of samples")
    p.add_argument("--wgrad-per-sample", action="store_true",
                   help="time the weight gradient per sample (with the demodulation's gradient from it) against the "
                        "batch's")
    p.add_argument("--scaled-rows", action="store_true",
                   help="time the rows form's scaled input copy: torch.mul into padded rows against our kernel")
    args = p.parse_args(argv)
    _common.require_cuda(p, "bench_conv.py")
    dev = torch.device("cuda")
    if args.scaled_rows:
        return scaled_rows(build_generator("T", args.resolution, device=dev, calibrate=False), args.batch, dev)
    if args.grads_1x1:
        return grads_1x1(build_generator("R", args.resolution, device=dev, calibrate=False), args.batch, args.sweep,
                         dev)
    G = build_generator("T", args.resolution, device=dev, calibrate=False)
    if args.grads:
        return grads(G, args.batch, args.sweep, dev)
    if args.wgrad_paddings:
        return wgrad_paddings(G, args.batch, dev)
    if args.wgrad_per_sample:
        return wgrad_per_sample(G, args.batch, dev)
    r8 = lambda c: c + (-c) % 8  # noqa: E731
    print(f"# {torch.cuda.get_device_name()}, T {args.resolution}, batch {args.batch}, fp16 3x3 convolutions (ms)")
    rows = torch.cuda.get_device_capability()[0] >= 9
    forms = ("cudnn", "rows", "pointers")
    print(f"{'layer':>14} {'in->out @ px':>16} {'NCHW cuDNN':>10} {'cudnn':>7} {'rows':>7} {'pointers':>8} "
          f"{'rel err':>8}  fast path uses")
    tot = {"nchw": 0.0, "cudnn": 0.0, "rows": 0.0, "pointers": 0.0, "used": 0.0}
    with torch.no_grad():
        for name in G.synthesis.layer_names:
            L = getattr(G.synthesis, name)
            if not L.use_fp16 or L.conv_kernel != 3:
                continue
            c, o, size = L.in_channels, L.out_channels, int(L.in_size[0])
            ci, co = r8(c), r8(o)
            x = torch.zeros(args.batch, ci, size, size, device=dev, dtype=torch.float16)
            x[:, :c] = torch.randn(args.batch, c, size, size, device=dev, dtype=torch.float16)
            xr = torch.zeros(args.batch, ci, size, r8(size), device=dev, dtype=torch.float16)
            xr[..., :size] = x
            xr = xr[:, :c, :, :size]  # channels and rows padded, as the fast path's activation writes it
            w = torch.randn(o, c, 3, 3, device=dev) / (3 * c ** 0.5)
            kernel = F.pad(w, [0, 0, 0, 0, 0, ci - c, 0, co - o])
            t = {"nchw": cuda_ms(lambda: F.conv2d(x, kernel.half(), padding=2)[:, :o])}
            ref = F.conv2d(x[:, :c].float(), w, padding=2)
            err = 0.0
            for form, xin in (("cudnn", x[:, :c]), ("rows", xr), ("pointers", x[:, :c])):
                if form == "rows" and not rows:
                    t[form] = float("nan")
                    continue
                t[form] = cuda_ms(lambda: fast_conv.conv2d_nchw(xin, w, 2, form=form))
                out = fast_conv.conv2d_nchw(xin, w, 2, form=form)
                err = max(err, float((out.float() - ref).abs().max() / ref.abs().max()))
            used = "cudnn" if o > fast_conv.MAX_OUT_CHANNELS else ("rows" if rows else "pointers")
            for k in t:
                tot[k] += t[k]
            tot["used"] += t[used]
            print(f"{name:>14} {f'{c}->{o} @ {size}':>16} {t['nchw']:10.3f} "
                  + " ".join(f"{t[f]:{max(len(f), 7)}.3f}" for f in forms) + f" {err:8.1e}  {used}")
    print(f"{'total':>14} {'':>16} {tot['nchw']:10.3f} " + " ".join(f"{tot[f]:{max(len(f), 7)}.3f}" for f in forms)
          + f" {'':>8}  {tot['used']:.3f} ms as used")


def scaled_rows(G, batch, dev):
    """--scaled-rows: see the module's docstring."""
    print(f"# {torch.cuda.get_device_name()}, T, batch {batch}: x * scale into rows padded to {fast_conv.ROW_ALIGN} "
          "elements (ms)")
    print(f"{'layer':>14} {'channels @ px':>14} {'torch.mul':>10} {'kernel':>8} {'contiguous':>10}  equal")
    tot = [0.0, 0.0, 0.0]
    for name, c, o, size in _fp16_3x3_layers(G):
        if o > fast_conv.MAX_OUT_CHANNELS:
            continue
        x = torch.randn(batch, c, size, size, device=dev, dtype=torch.float16)
        scale = torch.rand(batch, c, device=dev) + 0.5
        s16 = scale.half()[:, :, None, None]
        padded = x.new_empty((batch, c, size, size + (-size) % fast_conv.ROW_ALIGN))[..., :size]
        t = [cuda_ms(lambda: torch.mul(x, s16, out=padded)),
             cuda_ms(lambda: fast_conv.scaled_rows(x, scale, fast_conv.ROW_ALIGN)),
             cuda_ms(lambda: torch.mul(x, s16))]
        same = torch.equal(fast_conv.scaled_rows(x, scale, fast_conv.ROW_ALIGN), torch.mul(x, s16))
        tot = [a + b for a, b in zip(tot, t)]
        print(f"{name:>14} {f'{c} @ {size}':>14} {t[0]:10.3f} {t[1]:8.3f} {t[2]:10.3f}  {same}")
    print(f"{'total':>14} {'':>14} {tot[0]:10.3f} {tot[1]:8.3f} {tot[2]:10.3f}")


def _fp16_3x3_layers(G):
    """(name, in channels, out channels, input size) of the synthesis layers with fp16 3x3 convolutions."""
    for name in G.synthesis.layer_names:
        L = getattr(G.synthesis, name)
        if L.use_fp16 and L.conv_kernel == 3:
            yield name, L.in_channels, L.out_channels, int(L.in_size[0])


def _rel(a, ref):
    return float((a.float() - ref).abs().max() / ref.abs().max())


def _fastest(candidates):
    """(ms, label, candidates that failed to run, candidates tried) of the fastest of ``candidates``: (label, call)
    pairs, each call timed by ``cuda_ms``."""
    best, skipped, tried = (float("inf"), None), 0, 0
    for label, call in candidates:
        tried += 1
        try:
            ms = cuda_ms(call, reps=5)
        except Exception:  # noqa: BLE001 - e.g. too many resources (OutOfResources): skip it
            skipped += 1
            continue
        best = min(best, (ms, label), key=lambda b: b[0])
    return (*best, skipped, tried)


def _sweep_wgrad(x, gy, sms):
    """:func:`_fastest` of the weight-gradient tile configurations among blocks x pixels a step x warps x programs
    per multiprocessor."""
    n, c, h, w = x.shape
    o = gy.shape[1]
    configs = [fast_conv._wgrad_config(c, o, n, gy.shape[2] * gy.shape[3], 3, sms, blocks=blocks,
                                       pixels_per_step=pix, warps=warps, programs_per_sm=per_sm)
               for blocks in fast_conv.WGRAD_STEPS for pix in (16, 32, 64) for warps in (4, 8)
               for per_sm in (4, 8, 16)]
    return _fastest((cfg, lambda cfg=cfg: fast_conv.conv2d_weight_grad_nchw(x, gy, 3, 2, config=cfg))
                    for cfg in configs)


def grads(G, batch, sweep, dev):
    """The --grads table: see the module's docstring."""
    r8 = lambda c: c + (-c) % 8  # noqa: E731
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    print(f"# {torch.cuda.get_device_name()}, T, batch {batch}, gradients of the fp16 3x3 convolutions (ms); "
          "errors: largest |difference| from a float32 backward / largest |value|")
    print(f"{'layer':>14} {'in->out @ px':>16} | {'cuDNN both':>10} {'dgrad':>7} {'wgrad':>7} | {'in cudnn':>8} "
          f"{'in ptrs':>7} {'picks':>8} {'weight':>7} {'new sum':>7} | {'err in':>7} {'err w':>7} "
          f"{'cuDNN in':>8} {'cuDNN w':>7} | {'w triton':>8} {'w cudnn':>7} {'picks':>6}"
          + ("  fastest weight config (ms)" if sweep else ""))
    tot = dict.fromkeys(("both", "new"), 0.0)
    for name, c, o, size in _fp16_3x3_layers(G):
        ci, co = r8(c), r8(o)
        g = torch.Generator(device=dev).manual_seed(c * o)
        # today's autograd: cuDNN on channel-padded NCHW fp16 (ops.scaled_input_conv2d)
        xp = torch.zeros(batch, ci, size, size, device=dev, dtype=torch.float16)
        xp[:, :c] = torch.randn(batch, c, size, size, device=dev, generator=g, dtype=torch.float16)
        w = torch.randn(o, c, 3, 3, device=dev, generator=g) / (3 * c ** 0.5)
        kp = F.pad(w, [0, 0, 0, 0, 0, ci - c, 0, co - o]).half()
        gyp = torch.zeros(batch, co, size + 2, size + 2, device=dev, dtype=torch.float16)
        gyp[:, :o] = torch.randn(batch, o, size + 2, size + 2, device=dev, generator=g, dtype=torch.float16) / 8
        gy = gyp[:, :o].contiguous()
        # the fast path's x: a channel slice of a row-padded buffer
        xr = torch.zeros(batch, ci, size, r8(size), device=dev, dtype=torch.float16)
        xr[..., :size] = xp
        x = xr[:, :c, :, :size]

        def cudnn(mask):
            return torch.ops.aten.convolution_backward(gyp, xp, kp, None, [1, 1], [2, 2], [1, 1], False, [0, 0], 1,
                                                       mask)

        t = {"both": cuda_ms(lambda: cudnn([True, True, False])), "dgrad": cuda_ms(lambda: cudnn([True, False, False])),
             "wgrad": cuda_ms(lambda: cudnn([False, True, False]))}
        for form in ("cudnn", "pointers", None):
            t[form] = cuda_ms(lambda: fast_conv.conv2d_input_grad_nchw(gy, w, 2, x.shape, form=form))
        scale = torch.rand(batch, c, device=dev, generator=g) + 0.5
        for form in ("triton", "cudnn"):
            t[form + " w"] = cuda_ms(lambda: fast_conv.conv2d_weight_grad_nchw(x, gy, 3, 2, scale=scale, form=form))
        wform = fast_conv.weight_grad_form()
        t["weight"] = t[wform + " w"]
        picks = "cudnn" if c > fast_conv.MAX_OUT_CHANNELS else "pointers"
        new = t[None] + t["weight"]
        tot["both"] += t["both"]
        tot["new"] += new
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            ref_x, ref_w, _ = torch.ops.aten.convolution_backward(
                gy.float(), x.float(), w.half().float(), None, [1, 1], [2, 2], [1, 1], False, [0, 0], 1,
                [True, True, False])
        old_x, old_w, _ = cudnn([True, True, False])
        errs = (_rel(fast_conv.conv2d_input_grad_nchw(gy, w, 2, x.shape), ref_x),
                _rel(fast_conv.conv2d_weight_grad_nchw(x, gy, 3, 2), ref_w),
                _rel(old_x[:, :c], ref_x), _rel(old_w[:o, :c], ref_w))
        line = (f"{name:>14} {f'{c}->{o} @ {size}':>16} | {t['both']:10.3f} {t['dgrad']:7.3f} {t['wgrad']:7.3f} | "
                f"{t['cudnn']:8.3f} {t['pointers']:7.3f} {picks:>8} {t['weight']:7.3f} {new:7.3f} | "
                + " ".join(f"{e:{wd}.1e}" for e, wd in zip(errs, (7, 7, 8, 7)))
                + f" | {t['triton w']:8.3f} {t['cudnn w']:7.3f} {wform:>6}")
        if sweep:
            ms, cfg, skipped, tried = _sweep_wgrad(x, gy, sms)
            line += f"  {cfg} ({ms:.3f}; {skipped} of {tried} could not run)"
        print(line, flush=True)
        del xp, xr, x, gyp, gy, ref_x, ref_w, old_x, old_w
        torch.cuda.empty_cache()
    print(f"{'total':>14} {'':>16} | {tot['both']:10.3f} {'':>7} {'':>7} | {'':>8} {'':>7} {'':>8} {'':>7} "
          f"{tot['new']:7.3f}")


# The channel paddings --wgrad-paddings tries (inputs, outputs): multiples of 8 and of 32, powers of two (what
# fast_conv's cudnn weight gradient uses), and powers of two for the inputs only.
_PADDINGS = {"r8": lambda c, o: (_round_up(c, 8), _round_up(o, 8)),
             "r32": lambda c, o: (_round_up(c, 32), _round_up(o, 32)),
             "p2": lambda c, o: (fast_conv._pow2(c), fast_conv._pow2(o)),
             "p2in": lambda c, o: (fast_conv._pow2(c), _round_up(o, 8))}


def _round_up(c, m):
    return c + (-c) % m


def wgrad_paddings(G, batch, dev):
    """The --wgrad-paddings table: per fp16 3x3 layer of T, ms of our transposes (x and the output gradient to
    channels-last, channels padded) plus cuDNN's weight gradient, per padding and chunk of samples (the batch, 4, 2),
    and with cudnn.benchmark on."""
    chunks = sorted({batch, min(batch, 4), min(batch, 2)}, reverse=True)
    cols = [(pad, chunk, bm) for pad in _PADDINGS for chunk in chunks for bm in (False, True)]
    print(f"# {torch.cuda.get_device_name()}, T, batch {batch}: transposes + cuDNN's weight gradient (ms) per channel "
          "padding (r8 / r32: multiples of 8 / 32, p2: powers of two, p2in: inputs only), chunk of samples, "
          "cudnn.benchmark (b)")
    labels = [f"{pad} {chunk}" + (" b" if bm else "") for pad, chunk, bm in cols]
    print(f"{'layer':>14} {'in->out @ px':>16} " + " ".join(f"{label:>10}" for label in labels))
    for name, c, o, size in _fp16_3x3_layers(G):
        x = torch.randn(batch, c, size, size, device=dev, dtype=torch.float16)
        gy = torch.randn(batch, o, size + 2, size + 2, device=dev, dtype=torch.float16)
        times = []
        for pad, chunk, bm in cols:
            ci, co = _PADDINGS[pad](c, o)
            kernel = torch.empty(co, 3, 3, ci, device=dev, dtype=torch.float16).permute(0, 3, 1, 2)

            def step(ci=ci, co=co, chunk=chunk, kernel=kernel):
                for k in range(0, batch, chunk):
                    torch.ops.aten.convolution_backward(fast_conv.to_nhwc(gy[k:k + chunk], co),
                                                        fast_conv.to_nhwc(x[k:k + chunk], ci), kernel, None, [1, 1],
                                                        [2, 2], [1, 1], False, [0, 0], 1, [False, True, False])
            with torch.backends.cudnn.flags(enabled=True, benchmark=bm):
                times.append(cuda_ms(step, reps=3))
        print(f"{name:>14} {f'{c}->{o} @ {size}':>16} " + " ".join(f"{t:10.3f}" for t in times), flush=True)
        del x, gy
        torch.cuda.empty_cache()


def wgrad_per_sample(G, batch, dev):
    """The --wgrad-per-sample table: per fp16 3x3 layer of T, ms of the weight gradient over the batch and per sample
    plus the demodulation's gradient from it, with their errors against float32."""
    print(f"# {torch.cuda.get_device_name()}, T, batch {batch}: weight gradient (ms) over the batch / per sample with "
          f"the sums kernel * gradient (form {fast_conv.weight_grad_form()}); errors against float32")
    print(f"{'layer':>14} {'in->out @ px':>16} {'batch':>7} {'per sample':>10} {'d kernel err':>12} "
          f"{'sums err':>9}")
    total = [0.0, 0.0]
    for name, c, o, size in _fp16_3x3_layers(G):
        x = torch.randn(batch, c, size, size, device=dev, dtype=torch.float16)
        gy = torch.randn(batch, o, size + 2, size + 2, device=dev, dtype=torch.float16) * 1e-2
        scale = torch.rand(batch, c, device=dev) + 0.5
        kernel = torch.randn(o, c, 3, 3, device=dev) / (3 * c ** 0.5)
        ones = torch.ones(batch, o, device=dev)  # dcoefs 1: d dcoefs is the sums of the output gradient times y
        per_sample = lambda: fast_layer._grads_from_per_sample(x, gy, kernel, scale, ones)  # noqa: E731
        times = (cuda_ms(lambda: fast_conv.conv2d_weight_grad_nchw(x, gy, 3, 2, scale=scale)), cuda_ms(per_sample))
        sums, g_k = per_sample()
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            xs = x.float() * scale[:, :, None, None]
            ref_k = torch.ops.aten.convolution_backward(gy.float(), xs, kernel, None, [1, 1], [2, 2], [1, 1], False,
                                                        [0, 0], 1, [False, True, False])[1]
            ref_sums = (gy.float() * F.conv2d(xs, kernel, padding=2)).sum((2, 3))
        total = [a + b for a, b in zip(total, times)]
        print(f"{name:>14} {f'{c}->{o} @ {size}':>16} {times[0]:7.2f} {times[1]:10.2f} {_rel(g_k, ref_k):12.1e} "
              f"{_rel(sums, ref_sums):9.1e}", flush=True)
        del x, gy, xs
        torch.cuda.empty_cache()
    print(f"{'total':>14} {'':>16} {total[0]:7.2f} {total[1]:10.2f}")


def _sweep_1x1(x, gy):
    """:func:`_fastest` of ``fast_conv.batched_1x1_weight_grad``'s tile configurations (labels: config, programs
    per multiprocessor)."""
    labels = [((bo, bi, pix, warps, 3), per_sm) for bo, bi in ((64, 64), (32, 64), (128, 64), (64, 128))
              for pix in (32, 64) for warps in (4, 8) for per_sm in (2, 4, 8)]
    return _fastest((lab, lambda lab=lab: fast_conv.batched_1x1_weight_grad(x, gy, config=lab[0],
                                                                             programs_per_sm=lab[1]))
                    for lab in labels)


def _sweep_1x1_input(weight, gy):
    """:func:`_fastest` of ``fast_conv.batched_1x1_input_grad``'s tile configurations."""
    configs = [(bi, bk, pix, warps, 3) for bi in (64, 128) for bk in (32, 64) for pix in (64, 128, 256)
               for warps in (4, 8)]
    return _fastest((cfg, lambda cfg=cfg: fast_conv.batched_1x1_input_grad(weight, gy, config=cfg))
                    for cfg in configs)


def grads_1x1(G, batch, sweep, dev):
    """The --grads-1x1 table: see the module's docstring."""
    print(f"# {torch.cuda.get_device_name()}, R, batch {batch}, per-sample weight gradient of the fp16 1x1 "
          "convolutions (ms); errors: largest |difference| from a float32 product / largest |value|")
    print(f"{'layer':>14} {'in->out @ px':>16} | {'w cuBLAS':>8} {'w ours':>8} {'x cuBLAS':>8} {'x ours':>8} | "
          "errors: w cuBLAS, w ours, x cuBLAS, x ours" + ("  fastest configs (ms)" if sweep else ""))
    tot = dict.fromkeys(("cublas", "ours", "cublas_x", "ours_x"), 0.0)
    for name in G.synthesis.layer_names[:-1]:
        L = getattr(G.synthesis, name)
        if not L.use_fp16:
            continue
        c, o, size = L.in_channels, L.out_channels, int(L.in_size[0])
        g = torch.Generator(device=dev).manual_seed(c * o)
        x = torch.randn(batch, c, size, size, device=dev, generator=g, dtype=torch.float16)
        gy = torch.randn(batch, o, size, size, device=dev, generator=g, dtype=torch.float16) / 8
        xm, gm = x.reshape(batch, c, -1), gy.reshape(batch, o, -1)
        wt = torch.randn(batch, o, c, device=dev, generator=g) / c ** 0.5
        t = {"cublas": cuda_ms(lambda: torch.bmm(gm, xm.transpose(1, 2))),
             "ours": cuda_ms(lambda: fast_conv.batched_1x1_weight_grad(x, gy)),
             "cublas_x": cuda_ms(lambda: torch.bmm(wt.half().transpose(1, 2), gm)),
             "ours_x": cuda_ms(lambda: fast_conv.batched_1x1_input_grad(wt, gy))}
        ref = torch.bmm(gm.float(), xm.float().transpose(1, 2))
        ref_x = torch.bmm(wt.half().float().transpose(1, 2), gm.float())
        errs = (_rel(torch.bmm(gm, xm.transpose(1, 2)), ref), _rel(fast_conv.batched_1x1_weight_grad(x, gy), ref),
                _rel(torch.bmm(wt.half().transpose(1, 2), gm), ref_x),
                _rel(fast_conv.batched_1x1_input_grad(wt, gy).reshape(batch, c, -1), ref_x))
        for k in tot:
            tot[k] += t[k]
        line = (f"{name:>14} {f'{c}->{o} @ {size}':>16} | {t['cublas']:8.3f} {t['ours']:8.3f} "
                f"{t['cublas_x']:8.3f} {t['ours_x']:8.3f} | " + " ".join(f"{e:8.1e}" for e in errs))
        if sweep:
            ms, cfg, skipped, tried = _sweep_1x1(x, gy)
            line += f"  weight {cfg} ({ms:.3f}; {skipped} of {tried} could not run)"
            ms, cfg, skipped, tried = _sweep_1x1_input(wt, gy)
            line += f"  input {cfg} ({ms:.3f}; {skipped} of {tried} could not run)"
        print(line, flush=True)
        del x, gy, xm, gm, ref
        torch.cuda.empty_cache()
    print(f"{'total':>14} {'':>16} | " + " ".join(f"{v:8.3f}" for v in tot.values()))


if __name__ == "__main__":
    main()
