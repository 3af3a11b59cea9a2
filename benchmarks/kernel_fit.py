"""Which of the fast path's Triton kernels fit which GPU: the shared memory each kernel a training step launches
needs per program, compiled for other GPU generations, against what those GPUs give one program. No GPU needed.

    python benchmarks/kernel_fit.py --cfg T R --arch 75 86 90

The generator (the released architecture at ``--resolution``, random weights, batch 1) runs one inference forward
and one step w.r.t. ws and one w.r.t. the weights on the CPU under Triton's interpreter, with every kernel launch
recorded and skipped (the snapshot's fp16 layers in fp16, as on CUDA; the forms a GPU without TMA takes, as on every
GPU before Hopper). Each distinct launch is then compiled for each ``--arch`` (Triton's compiler, as the GPU
machine's would at the first launch) and its shared memory printed in KiB, marked ``!`` past the GPU's limit per
program: there Triton raises OutOfResources when the kernel loads, and the fast path takes the next choice it has
(smaller tiles, the recomputing backward, the plain operator) or stops with that error. Compiling for sm_75 is slow
(minutes per kernel that spills). The compiler's release matters: a machine's Triton may need more or less.

Another release: record the launches once with this one (``--save-launches``; an old release's interpreter may not
run the package), then compile them with the other first on the path, which also says whether it builds them::

    python benchmarks/kernel_fit.py --save-launches launches.json [--hopper]
    pip install --no-deps --target /tmp/triton34 triton==3.4.0
    PYTHONPATH=/tmp/triton34 python benchmarks/kernel_fit.py --launches launches.json --arch 80 89

``--hopper`` records the forms an sm_90 GPU takes (the rows-form convolutions on TMA descriptors), for ``--arch 90``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402 (puts this checkout first on the path)

# Shared memory one program may take (KiB; the opt-in maximum per block) by compute capability
LIMIT_KIB = {75: 64, 80: 163, 86: 99, 87: 163, 89: 99, 90: 227}
GPUS = {75: "T4, RTX 20", 80: "A100", 86: "RTX 30, A10, A40", 87: "Jetson Orin", 89: "L4, RTX 40", 90: "H100, H200"}
_TYPES = {"float16": "fp16", "float32": "fp32", "bfloat16": "bf16", "uint8": "u8", "int8": "i8", "int32": "i32",
          "int64": "i64", "bool": "i1"}


def record(cfg: str, resolution: int, hopper: bool = False) -> list:
    """[(module, kernel, signature, constexprs, options, launches)] of the Triton launches of one inference forward
    and one step each w.r.t. ws and the weights of ``cfg`` at batch 1. Needs TRITON_INTERPRET=1 (set before Triton
    was imported); nothing is computed by the kernels (their outputs stay as allocated). ``hopper``: the forms a GPU
    with TMA takes (the rows-form convolutions on tensor descriptors) instead of those of the GPUs before it."""
    import torch
    import triton.runtime.interpreter as interpreter

    from v2s_nb.stylegan3 import build_generator, fast_conv, fast_ops, networks

    seen = {}

    def run(self, *args, grid, warmup, **kwargs):
        signature, constexprs, options = {}, {}, {}
        for name, a in zip(self.arg_names, args):
            if torch.is_tensor(a):
                signature[name] = "*" + _TYPES[str(a.dtype).removeprefix("torch.")]
            elif type(a).__name__ == "TensorDescriptor":  # as Triton's launch names it
                dtype = _TYPES[str(a.base.dtype).removeprefix("torch.")]
                signature[name] = f"tensordesc<{dtype}{list(a.block_shape)}>"
            elif isinstance(a, bool):
                signature[name] = "i1"
            elif isinstance(a, int):
                signature[name] = "i64" if abs(a) >= 2 ** 31 else "i32"
            elif isinstance(a, float):
                signature[name] = "fp32"
            else:  # None: a constant of the specialisation
                constexprs[name] = a
        for k, v in kwargs.items():
            (options if k in ("num_warps", "num_stages") else constexprs)[k] = v
        key = json.dumps([self.fn.__module__, self.fn.__name__, signature, constexprs, options], sort_keys=True)
        seen[key] = seen.get(key, 0) + 1

    interpreter.InterpretedFunction.run = run
    # as on CUDA: the snapshot's fp16 layers in fp16, the fused activation kernels on (they test x.is_cuda)
    networks.SynthesisLayer.compute_dtype = lambda self, device, force_fp32=False: (
        torch.float16 if self.use_fp16 and not force_fp32 else torch.float32)
    fast_ops.can_use_fast = lambda x, fu, fd: fu is not None and fd is not None and fu.ndim == 1
    networks.resolve_impl = lambda impl, device: "fast"
    fast_conv.applies = lambda x, weight: (x.dtype == torch.float16 and weight.shape[2] == weight.shape[3]
                                           and not torch.is_grad_enabled())  # its test of x.is_cuda left out
    if hopper:
        fast_conv._has_tma = lambda device: True
    G = build_generator(cfg, resolution=resolution, seed=0)
    syn = G.synthesis
    ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)), None).detach()
    with torch.no_grad():
        syn.from_styles(syn.styles(ws), impl="fast")
    for wrt in ("ws", "weights"):
        syn.requires_grad_(wrt == "weights")
        w = ws.clone().requires_grad_(wrt == "ws")
        syn.from_styles(syn.styles(w), impl="fast").float().square().mean().backward()
    return [json.loads(k) + [n] for k, n in seen.items()]


def shared_kib(launch, arch: int):
    """Triton's shared memory (KiB) of one recorded launch compiled for sm_``arch``, or the compiler's error."""
    module, name, signature, constexprs, options = launch[:5]
    fn = getattr(importlib.import_module(module), name)
    constexprs = dict(constexprs)
    for p in fn.params:  # constexpr parameters left at their defaults by the launch
        if p.name not in signature and p.name not in constexprs and p.has_default:
            constexprs[p.name] = p.default
    try:
        return _common.compile_for_gpu(fn, signature, constexprs, arch, options).metadata.shared / 1024
    except Exception as e:  # a kernel that does not compile for that GPU: say so, go on
        return f"{type(e).__name__}: {str(e).splitlines()[0][:60]}"


def _describe(launch) -> str:
    constexprs, options = launch[3], launch[4]
    shown = {k: v for k, v in constexprs.items() if k.isupper() and v is not None and k != "PRECISION"}
    return " ".join([f"{k}={v}" for k, v in sorted(shown.items())] + [f"{k[4:]}={v}" for k, v in options.items()])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", nargs="+", default=["T", "R"], choices=["R", "T"])
    p.add_argument("--resolution", type=_common.positive_int, default=1024)
    p.add_argument("--arch", nargs="+", type=int, default=[75, 86, 90], choices=sorted(LIMIT_KIB),
                   help="compute capabilities to compile for (75: T4, 80: A100, 86: RTX 30, 89: L4, 90: H100)")
    p.add_argument("--record", metavar="JSON", help=argparse.SUPPRESS)  # the interpreter child's output
    p.add_argument("--hopper", action="store_true",
                   help="record the forms an sm_90 GPU takes (the rows-form convolutions on TMA descriptors; Triton "
                        "3.4+), for --arch 90")
    p.add_argument("--save-launches", metavar="JSON", help="record the launches into this file, compile nothing")
    p.add_argument("--launches", metavar="JSON",
                   help="compile the launches of a --save-launches file (recorded under another Triton release: an "
                        "old release's interpreter may not run this code, its compiler still can)")
    args = p.parse_args(argv)
    if args.record:
        json.dump({cfg: record(cfg, args.resolution, args.hopper) for cfg in args.cfg}, open(args.record, "w"))
        return
    try:
        import triton  # noqa: F401
    except ImportError:
        p.error("Triton is not installed (pip install triton)")
    if args.launches:
        try:
            launches = json.loads(Path(args.launches).read_text())
        except (OSError, ValueError) as e:
            p.error(f"--launches {args.launches}: {e}; write one with --save-launches")
        missing = [cfg for cfg in args.cfg if cfg not in launches]
        if missing:
            p.error(f"--launches {args.launches} holds no launches of {', '.join(missing)} (it has "
                    f"{', '.join(launches) or 'none'}); pass --cfg accordingly")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "launches.json"
            env = dict(os.environ, TRITON_INTERPRET="1")
            subprocess.run([sys.executable, __file__, "--record", str(out), "--resolution", str(args.resolution),
                            "--cfg", *args.cfg] + ["--hopper"] * args.hopper, env=env, check=True)
            launches = json.loads(out.read_text())
    if args.save_launches:
        Path(args.save_launches).write_text(json.dumps(launches))
        return
    warnings.simplefilter("ignore")  # the compiler's notes on its own defaults
    print(f"# shared memory per program, KiB, Triton {triton.__version__}; '!': more than the GPU gives one program")
    print("# " + " | ".join(f"sm_{a} ({GPUS[a]}): {LIMIT_KIB[a]}" for a in args.arch))
    for cfg in args.cfg:
        rows = {}  # launches that differ only in argument types the kernel doesn't specialise on print as one row
        for launch in launches[cfg]:
            key = (launch[1], _describe(launch))
            if key in rows:
                rows[key][0] += launch[5]
                continue
            cells = []
            for arch in args.arch:
                kib = shared_kib(launch, arch)
                cells.append(f"{kib:7.1f}{'!' if kib > LIMIT_KIB[arch] else ' '}" if isinstance(kib, float) else kib)
            rows[key] = [launch[5], " | ".join(cells)]
        for (name, described), (count, row) in rows.items():
            print(f"{cfg} {name:30s} x{count:<3d} {row}  {described}")


if __name__ == "__main__":
    main()
