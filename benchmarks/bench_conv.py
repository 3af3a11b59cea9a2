"""The fp16 3x3 convolutions of StyleGAN3-T's fast path, per layer: cuDNN on NCHW (channels padded to multiples of
8, as ``ops.scaled_input_conv2d`` runs it; its time includes the NCHW <-> NHWC transposes cuDNN does around its
tensor-core kernels) against the forms of ``v2s_nb.stylegan3.fast_conv`` (NCHW in and out): cudnn (cuDNN on
channels-last copies made by our transposes), rows (GPUs with TMA, reading rows padded to 16 bytes as the fast path
writes them) and pointers.

    python benchmarks/bench_conv.py --batch 8

Prints, for every fp16 layer of T at 1024: the times (ms), the largest error of the Triton kernels against a float32
convolution (relative to the largest output), and the form the fast path uses (``conv2d_nchw``'s choice).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cuda_ms  # noqa: E402
from v2s_nb.stylegan3 import build_generator, fast_conv  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--resolution", type=int, default=1024)
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    G = build_generator("T", args.resolution, device=dev, calibrate=False)
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


if __name__ == "__main__":
    main()
