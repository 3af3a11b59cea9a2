"""Every form of the fast filtered leaky ReLU, timed on every layer of R / T (how ``fast_ops.FUSED_DEFAULT`` and
``FUSED_CHOICE`` are chosen; rerun it to tune for another GPU).

    python benchmarks/bench_lrelu_forms.py --cfg R T --batch 8

For each layer (inputs from a real forward pass of a random-weight generator, the snapshot's dtypes) prints the
milliseconds of: the unfused kernels; the banded fused kernel on 64-wide tiles with and without output-column
halves; the dense fused kernel on 128-wide tiles; the banded one on 128-wide tiles without halves; and the form the
library picks ("auto"). Next to each: the largest error of sample 0 against the plain operator in float32,
relative to its largest value. Forms that fail to compile or run print the error instead of a time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import cuda_ms  # noqa: E402
from v2s_nb.stylegan3 import build_generator, fast_config, fast_ops, ops  # noqa: E402

FORMS = {
    "unfused": None,
    "banded64h": ("banded", 64, True),
    "banded64": ("banded", 64, False),
    "dense128": ("dense", 128, False),
    "banded128": ("banded", 128, False),
    "auto": "auto",
}


def run_form(form, args):
    """The layer's forward in ``form`` (None: the unfused kernels; "auto": what the library picks)."""
    if form == "auto":
        return fast_ops.fast_filtered_lrelu_forward(*args)
    if form is None:
        with fast_config.override(use_fused=False):
            return fast_ops.fast_filtered_lrelu_forward(*args)
    out = fast_ops.fused_filtered_lrelu_forward(*args, forms=[form])
    if out is None:
        raise RuntimeError("does not apply (shared memory or separable terms)")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", nargs="+", default=["R", "T"], choices=["R", "T"])
    p.add_argument("--resolution", type=_common.positive_int, default=1024)
    p.add_argument("--batch", type=_common.positive_int, default=8)
    p.add_argument("--reps", type=_common.positive_int, default=10)
    args = p.parse_args(argv)
    _common.require_cuda(p, "bench_lrelu_forms.py")
    if not fast_ops.HAVE_TRITON:
        p.error("bench_lrelu_forms.py needs Triton (not importable here)")
    dev = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, batch {args.batch}: ms (error)")
    for cfg in args.cfg:
        G = build_generator(cfg, resolution=args.resolution, device=dev)
        syn = G.synthesis
        ws = G.mapping(torch.randn(args.batch, G.z_dim, device=dev), None)
        styles = syn.styles(ws)
        x = syn.input.forward_styles(styles["input"])
        totals = dict.fromkeys(FORMS, 0.0)
        with torch.no_grad():
            for name in syn.layer_names[:-1]:
                L = getattr(syn, name)
                dtype = L.compute_dtype(dev)
                y = ops.modulated_conv2d(x.to(dtype), L.weight, styles[name], padding=L.conv_kernel - 1,
                                         input_gain=L.magnitude_ema.rsqrt()).contiguous()
                lrelu_args = (y, L.up_filter, L.down_filter, L.bias, L.up_factor, L.down_factor, L.padding,
                              2 ** 0.5, 0.2, float(L.conv_clamp))
                ref = ops.filtered_lrelu(y[:1].float(), L.up_filter, L.down_filter, L.bias, up=L.up_factor,
                                         down=L.down_factor, padding=L.padding, gain=2 ** 0.5, slope=0.2,
                                         clamp=L.conv_clamp)
                line = f"{cfg} {name:14s} {str(dtype)[6:]:8s} up {L.up_factor}"
                for label, form in FORMS.items():
                    try:
                        out = run_form(form, lrelu_args)
                        err = float((out[:1].float() - ref).abs().max() / ref.abs().max())
                        ms = cuda_ms(lambda: run_form(form, lrelu_args), args.reps)
                        totals[label] += ms
                        line += f" | {label} {ms:7.3f} ({err:.0e})"
                    except Exception as e:  # noqa: BLE001 - a form that can't run is reported, not fatal
                        totals[label] = float("nan")
                        line += f" | {label} {type(e).__name__}"
                        if "illegal" in str(e):  # the CUDA context is gone
                            print(line, flush=True)
                            raise
                print(line, flush=True)
                x = run_form("auto", lrelu_args)
        print(f"{cfg} total " + " | ".join(f"{k} {v:.2f}" for k, v in totals.items()), flush=True)
        del G
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
