"""Registers, spills and shared memory of the filtered leaky ReLU's backward kernel per layer and launch variant,
compiled for a GPU architecture without running anything: works on a machine with no GPU (Triton and its bundled
``cuobjdump`` are enough).

    python benchmarks/kernel_resources.py --cfg T R --arch 90
    python benchmarks/kernel_resources.py --cfg T --variants 128:1:8 128:1:16 128:2:4

A variant is ``tile:row_blocks:warps`` (tile: the upsampled tile edge; row blocks: ``SPLIT``). Per layer of the
released architecture at ``--resolution`` (channel counts don't change the kernel, so a narrow copy is built), the
kernel is compiled as :func:`v2s_nb.stylegan3.fast_ops.fused_filtered_lrelu_backward` launches it (fp16 for the
snapshot's fp16 layers, float32 for the others; its tensors 16-byte aligned, as a launch on PyTorch's tensors
specializes them) and ``cuobjdump -res-usage`` reads its registers per thread, stack
(bytes spilled per thread) and static shared memory; Triton's dynamic shared memory is printed too. A kernel at 255
registers runs one 8-warp program per SM; stack bytes are spills to local memory. Speed still has to be measured on
the GPU (``bench_lrelu_backward.py``); this says which variants can be fast, between GPU runs. The compiler's version
matters (registers and spills differ between Triton releases): to see what the GPU machine's Triton makes of a kernel,
put that release first on the path, e.g. ``pip install --no-deps --target /tmp/triton36 triton==3.6.0`` and
``PYTHONPATH=/tmp/triton36 python benchmarks/kernel_resources.py ...``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402 (puts this checkout first on the path)
from v2s_nb.stylegan3 import build_generator, fast_ops  # noqa: E402


def _cuobjdump():
    """The cuobjdump Triton ships with (or one on PATH)."""
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.exists() else "cuobjdump"


KERNELS = ("backward", "codes", "train")


def compile_backward(layer, dtype, tile, split, warps, arch, kernel="backward", cols_first=False, masked=True):
    """(registers, stack bytes, static shared bytes, Triton's shared bytes) of one of the activation's kernels for
    ``layer``: ``backward`` (recomputes the pre-activation), ``codes`` (the backward from stored derivative codes;
    ``cols_first``: in its COLS_FIRST order, else rows first), ``train`` (the training forward that stores them;
    ``masked`` False: its interior tiles' form, without bounds tests)."""
    rank_tol = 2.5e-4 if dtype == torch.float16 else 1e-7
    plan = fast_ops._build_fused_plan(layer.up_filter, layer.down_filter, layer.up_factor, layer.down_factor,
                                      layer.padding, dtype, torch.device("cpu"), tile, rank_tol)
    if plan is None:
        raise ValueError("the down-filter needs more separable terms than the kernel takes")
    t = "fp16" if dtype == torch.float16 else "fp32"
    mats = {k: f"*{t}" for k in ("ax_ptr", "ay_ptr", "dx_ptr", "dy_ptr")}
    window = ("jshift_y", "jshift_x", "used_y", "used_x")
    shape = ("h", "w", "h_out", "w_out")
    if kernel == "backward":
        fn = fast_ops._fused_backward_kernel
        signature = {"x_ptr": f"*{t}", "b_ptr": "*fp32", "g_ptr": "*fp32", **mats, "gy_ptr": f"*{t}",
                     "gx_ptr": "*fp32"}
        signature.update({k: "i32" for k in (*shape, "channels", *window)})
        signature.update({k: "fp32" for k in ("gain", "slope", "clamp")})
        extra = dict(SCALE=dtype == torch.float16, HAS_GAIN=True)
    elif kernel == "codes":
        fn = fast_ops._fused_backward_codes_kernel
        signature = {"codes_ptr": "*u8", "gy_ptr": f"*{t}", "gx_ptr": "*fp32", **mats}
        signature.update({k: "i32" for k in (*shape, *window)})
        signature.update({k: "fp32" for k in ("gain", "slope")})
        extra = dict(SCALE=dtype == torch.float16)
    else:
        fn = fast_ops._fused_train_kernel
        signature = {"x_ptr": f"*{t}", "b_ptr": "*fp32", "g_ptr": "*fp32", **mats, "out_ptr": f"*{t}",
                     "codes_ptr": "*u8"}
        signature.update({k: "i32" for k in (*shape, "channels", "jshift_y", "jshift_x")})
        signature.update({k: "fp32" for k in ("gain", "slope", "clamp")})
        extra = dict(HAS_GAIN=True, MASKED=masked)
        signature.update(dict.fromkeys(("n_ty", "n_tx", "ty_off", "ty_split", "ty_jump", "tx_off", "tx_split",
                                        "tx_jump"), "i32"))
    signature["BO"] = "i32"
    if kernel == "backward":
        window = dict(KJX=plan["kjx"], KJY=plan["kjy"])
    else:
        window = fast_ops.codes_window(plan, dtype, layer.up_factor)
    constants = dict(UP=layer.up_factor, DOWN=layer.down_factor, R=plan["r"], **window, BU=tile, BOP=plan["bop"],
                     PRECISION=plan["precision"], **extra, SPLIT=split)
    if kernel == "codes":
        constants["COLS_FIRST"] = cols_first
    compiled = _common.compile_for_gpu(fn, signature, constants, arch, {"num_warps": warps})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED):(\d+)", usage))
    return int(fields["REG"]), int(fields["STACK"]), int(fields["SHARED"]), int(compiled.metadata.shared)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", nargs="+", default=["T", "R"], choices=["R", "T"])
    p.add_argument("--resolution", type=_common.positive_int, default=1024)
    p.add_argument("--arch", type=_common.positive_int, default=90,
                   help="compute capability x 10 (90: Hopper, H100 / H200)")
    p.add_argument("--kernel", choices=KERNELS, default="backward",
                   help="backward: recomputes the pre-activation; codes: the backward from the training forward's "
                        "derivative codes; train: that forward")
    p.add_argument("--variants", nargs="+", default=["128:1:8", "128:1:4", "128:2:4", "64:1:4"],
                   help="tile:row_blocks:warps (the code runs 128:1:8 on fp16 2x layers in the recomputing backward "
                        "and 128:1:4 in the codes kernels, 128:2:4 on fp16 4x layers, 64:1:4 on the float32 layers' "
                        "small planes)")
    p.add_argument("--unmasked", action="store_true",
                   help="with --kernel train: its interior tiles' form (no bounds tests), as the code launches it for "
                        "tiles whose window and output lie inside the plane")
    order = p.add_mutually_exclusive_group()
    order.add_argument("--cols-first", dest="cols_first", action="store_const", const=True, default=None,
                       help="with --kernel codes: the kernel in its COLS_FIRST order (default: "
                            "fast_ops.CODES_COLS_FIRST)")
    order.add_argument("--rows-first", dest="cols_first", action="store_const", const=False,
                       help="with --kernel codes: the kernel in the other order (rows first)")
    args = p.parse_args(argv)
    try:
        variants = [tuple(int(v) for v in text.split(":")) for text in args.variants]
        assert all(len(v) == 3 for v in variants)
    except (ValueError, AssertionError):
        p.error("--variants: each as tile:row_blocks:warps, e.g. 128:1:8")
    if args.cols_first is not None and args.kernel != "codes":
        p.error("--cols-first / --rows-first is an order of the codes kernel: add --kernel codes")
    if args.cols_first is None:
        args.cols_first = fast_ops.CODES_COLS_FIRST
    if args.unmasked and args.kernel != "train":
        p.error("--unmasked is a form of the training forward: add --kernel train")
    import triton

    order = (" (columns first)" if args.cols_first else " (rows first)") if args.kernel == "codes" else ""
    print(f"# {args.kernel} kernel{order}, sm_{args.arch}, Triton "
          f"{triton.__version__}: registers / stack (spilled bytes) per thread / Triton shared KiB")
    for cfg in args.cfg:
        # Channel counts don't enter the kernel: a narrow copy of the architecture has the same layers' filters.
        G = build_generator(cfg, resolution=args.resolution, channel_scale=1 / 16, seed=0)
        syn = G.synthesis
        for name in syn.layer_names[:-1]:
            layer = getattr(syn, name)
            dtype = layer.compute_dtype(torch.device("cuda"), False)
            row = []
            for tile, split, warps in variants:
                try:
                    regs, stack, _, shared = compile_backward(layer, dtype, tile, split, warps, args.arch,
                                                                 args.kernel, args.cols_first, not args.unmasked)
                    row.append(f"{tile}:{split}:{warps} {regs:3d}/{stack:4d}/{shared / 1024:5.1f}")
                except Exception as e:  # a variant that does not compile: say so, go on
                    row.append(f"{tile}:{split}:{warps} failed ({type(e).__name__})")
            print(f"{cfg} {name:>12} {str(dtype)[6:]:>7} up {layer.up_factor} | " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
