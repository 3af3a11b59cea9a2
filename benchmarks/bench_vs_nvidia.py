"""Our StyleGAN3 generator against NVIDIA's, in one process, with the same weights.

    python benchmarks/bench_vs_nvidia.py --nvidia-repo ~/stylegan3 --device cuda
    python benchmarks/bench_vs_nvidia.py --nvidia-repo ~/stylegan3 --device cpu --resolution 64 --batch 1 \\
        --iters 1 --warmup 0 --channel-scale 0.125          # CPU smoke test: NVIDIA's reference ops, fp32

``--nvidia-repo`` is a checkout of https://github.com/NVlabs/stylegan3 (not part of this project; nothing of it is
copied here). The script imports ``training.networks_stylegan3`` from it at run time, builds NVIDIA's generator
with the released R / T architecture (``train.py``'s arguments for ``--cfg stylegan3-r`` / ``-t``: our
``networks.CONFIGS``, mapping depth 2, ``num_fp16_res`` 4, ``conv_clamp`` 256) from a seed, and loads its state
dict into ours with :func:`v2s_nb.stylegan3.state_dict.generator_from_state_dict`. It checks once that both give
the same image for the same ws, then times, for each model in turn (the other one parked on the CPU, so the peak
counts only the timed one), with ``bench_generator.bench_one``:

* ``forward``: ``G.synthesis(ws)`` under ``no_grad``;
* ``ws``: forward + backward w.r.t. ws (loss: mean of squares of the image);
* ``weights``: forward + backward w.r.t. all synthesis parameters, gradients set to None before each step.

Mixed precision (``--dtype mixed``, the default): both run their fp16 layers in fp16 (``force_fp32=False``);
on the CPU both run float32. Printed per row: ms per call, the first call's seconds (CUDA: includes NVIDIA's
plugin build if not cached, and our kernels' compilation), peak GiB (CUDA: ``torch.cuda.max_memory_allocated``
after a reset; CPU: the process's peak RSS), the step's time over the same model's forward, and ours over
NVIDIA's. ``--nvidia-impl ref`` runs NVIDIA's reference (pure PyTorch) ops on CUDA instead of their plugins;
``--training-flags`` sets, for both, the backend flags of NVIDIA's training loop (cudnn.benchmark, no TF32).
``--graphs`` adds ours replayed from CUDA graphs (``bench_generator``'s ``impl='graph'``) as a third model.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import REPO  # noqa: E402,F401  (puts this checkout on sys.path)
from bench_generator import bench_one  # noqa: E402
from v2s_nb.stylegan3.networks import CONFIGS  # noqa: E402
from v2s_nb.stylegan3.state_dict import generator_from_state_dict  # noqa: E402

NVIDIA_URL = "https://github.com/NVlabs/stylegan3"
MODES = ("forward", "ws", "weights")


def _fail(message: str):
    """One line on stderr, exit status 2."""
    print(f"bench_vs_nvidia: {message}", file=sys.stderr)
    raise SystemExit(2)


def patch_plugin_loader(custom_ops) -> None:
    """Make NVIDIA's ``torch_utils.custom_ops.get_plugin`` work on current PyTorch.

    Their ``get_plugin`` builds each op with ``torch.utils.cpp_extension.load(...)``, drops the module that call
    returns, and then imports it by name (``importlib.import_module(module_name)``). Current PyTorch loads the
    built extension from its file without registering it under that name, so the import raises
    ModuleNotFoundError. During each ``get_plugin`` call this wrapper records what ``cpp_extension.load``
    returns and answers that by-name import with it; their files are not changed.
    """
    original = custom_ops.get_plugin
    if getattr(original, "_returns_loaded_module", False):
        return

    def get_plugin(module_name, *args, **kwargs):
        built = {}
        real_load = torch.utils.cpp_extension.load

        def load(*a, **k):
            built["module"] = real_load(*a, **k)
            return built["module"]

        def import_module(name, package=None):
            if name == module_name and built.get("module") is not None:
                return built["module"]
            return importlib.import_module(name, package)

        torch.utils.cpp_extension.load = load
        custom_ops.importlib = types.SimpleNamespace(import_module=import_module)
        try:
            return original(module_name, *args, **kwargs)
        finally:
            torch.utils.cpp_extension.load = real_load
            custom_ops.importlib = importlib

    get_plugin._returns_loaded_module = True
    custom_ops.get_plugin = get_plugin


def import_nvidia(repo: str | None, impl: str, device: torch.device):
    """NVIDIA's ``training.networks_stylegan3`` from the checkout ``repo``, its ops set up for ``impl``."""
    if not repo:
        _fail(f"--nvidia-repo PATH is required: a checkout of NVIDIA's StyleGAN3 "
              f"(git clone {NVIDIA_URL}), which this project does not ship.")
    root = Path(repo).expanduser().resolve()
    if not (root / "training" / "networks_stylegan3.py").is_file():
        _fail(f"--nvidia-repo {repo}: no training/networks_stylegan3.py there; pass a checkout of {NVIDIA_URL}.")
    try:  # their conv2d_gradfix / grid_sample_gradfix import parse_version from pkg_resources (gone in setuptools >= 81)
        import pkg_resources  # noqa: F401
    except ImportError:
        import packaging.version

        shim = types.ModuleType("pkg_resources")
        shim.parse_version = packaging.version.parse
        sys.modules["pkg_resources"] = shim
    sys.path.insert(0, str(root))
    from torch_utils import custom_ops  # noqa: E402
    from torch_utils.ops import bias_act, filtered_lrelu, upfirdn2d  # noqa: E402

    patch_plugin_loader(custom_ops)
    ops = (bias_act, upfirdn2d, filtered_lrelu)
    if impl == "ref":  # their ops take the CUDA plugin only when _init() is true
        for op in ops:
            op._init = lambda: False
    elif device.type == "cuda":  # build (or load the cached) plugins now, not inside the first timed call
        for op in ops:
            try:
                op._init()
            except Exception as e:  # noqa: BLE001 - any build failure: say what to do
                _fail(f"building NVIDIA's {op.__name__.rsplit('.', 1)[-1]} plugin failed "
                      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); it needs nvcc and ninja "
                      f"matching this PyTorch's CUDA, or pass --nvidia-impl ref for their reference ops.")
    return importlib.import_module("training.networks_stylegan3")


def nvidia_generator(nv_module, cfg: str, resolution: int, channel_scale: float, seed: int):
    """NVIDIA's Generator with the released ``cfg`` architecture at ``resolution``, weights from ``seed``."""
    kwargs = dict(CONFIGS[cfg])
    kwargs["channel_base"] = int(kwargs["channel_base"] * channel_scale)
    kwargs["channel_max"] = int(kwargs["channel_max"] * channel_scale)
    torch.manual_seed(seed)
    G = nv_module.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=resolution, img_channels=3,
                            mapping_kwargs={"num_layers": 2}, magnitude_ema_beta=0.5 ** (32 / (20 * 1e3)),
                            num_fp16_res=4, conv_clamp=256, **kwargs)
    return G.eval().requires_grad_(False)


@torch.no_grad()
def compare(nv, ours, device, force_fp32: bool) -> tuple[float, float, float]:
    """Max |difference| of the mapping's ws and of the images for one z; and the image's max |value|."""
    z = torch.randn([1, nv.z_dim], generator=torch.Generator().manual_seed(1)).to(device)
    ws_nv, ws_ours = nv.mapping(z, None), ours.mapping(z, None)
    img_nv = nv.synthesis(ws_nv, force_fp32=force_fp32).float()
    img_ours = ours.synthesis(ws_nv, force_fp32=force_fp32).float()
    return ((ws_nv - ws_ours).abs().max().item(), (img_nv - img_ours).abs().max().item(),
            img_nv.abs().max().item())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nvidia-repo", metavar="PATH", help=f"a checkout of {NVIDIA_URL} (required)")
    p.add_argument("--cfg", nargs="+", default=["R", "T"], choices=["R", "T"])
    p.add_argument("--resolution", type=_common.positive_int, default=1024)
    p.add_argument("--batch", type=_common.positive_int, nargs="+", default=[1, 8])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--dtype", default="mixed", choices=["fp32", "mixed"],
                   help="mixed: the fp16 layers in fp16 (CUDA; NVIDIA's num_fp16_res 4, conv_clamp 256)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", type=_common.device)
    p.add_argument("--nvidia-impl", default="cuda", choices=["cuda", "ref"],
                   help="NVIDIA's ops: their CUDA plugins (built at run time) or their reference implementations")
    p.add_argument("--channel-scale", type=float, default=1.0,
                   help="multiplies channel_base and channel_max (1 = released; smaller for CPU smoke tests)")
    p.add_argument("--training-flags", action="store_true",
                   help="for both models, the backend flags NVIDIA's training loop sets: cudnn.benchmark on, TF32 "
                        "off for cuDNN and matmul (default: PyTorch's defaults)")
    p.add_argument("--graphs", action="store_true",
                   help="also time ours replayed from CUDA graphs (GraphedSynthesis for the forward, "
                        "GraphedTrainingSynthesis for the steps; CUDA only), as the model 'graphs'")
    p.add_argument("--seed", type=int, default=0, help="seed of NVIDIA's weight initialisation")
    p.add_argument("--iters", type=_common.positive_int, default=10)
    p.add_argument("--warmup", type=_common.nonnegative_int, default=2)
    p.add_argument("--json", help="append results as JSON lines to this file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.graphs and device.type != "cuda":
        _fail("--graphs needs --device cuda (CUDA graphs).")
    if not 0 < args.channel_scale <= 1:
        _fail(f"--channel-scale {args.channel_scale}: want a number in (0, 1].")
    nv_module = import_nvidia(args.nvidia_repo, args.nvidia_impl, device)
    if args.training_flags:  # as NVIDIA's training/training_loop.py sets them, process-wide
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# {name}, torch {torch.__version__}, {args.resolution} px, dtype {args.dtype}, channel scale "
          f"{args.channel_scale:g}, NVIDIA ops {args.nvidia_impl if device.type == 'cuda' else 'ref (CPU)'}; "
          f"cudnn.benchmark {torch.backends.cudnn.benchmark}, TF32 cuDNN {torch.backends.cudnn.allow_tf32} "
          f"matmul {torch.backends.cuda.matmul.allow_tf32}")
    if device.type != "cuda":
        print("# CPU: a smoke test only; the timings say nothing about the GPU (both run float32 here).")
    modes = [m for m in MODES if m in args.modes]
    for cfg in args.cfg:
        nv = nvidia_generator(nv_module, cfg, args.resolution, args.channel_scale, args.seed)
        ours = generator_from_state_dict(nv.state_dict(), where=f"NVIDIA's {cfg} generator")
        fp16_nv = [n for n in nv.synthesis.layer_names if getattr(nv.synthesis, n).use_fp16]
        fp16_ours = [n for n in ours.synthesis.layer_names if getattr(ours.synthesis, n).use_fp16]
        if fp16_nv != fp16_ours:
            _fail(f"{cfg}: fp16 layers differ (NVIDIA {fp16_nv}, ours {fp16_ours}); the comparison would be unfair.")
        for G in (nv, ours):
            G.to(device)
        checks = [("fp32", True)] + ([("mixed", False)] if args.dtype == "mixed" and device.type == "cuda" else [])
        for label, force_fp32 in checks:
            dws, dimg, peak = compare(nv, ours, device, force_fp32)
            print(f"# {cfg} same weights, {label}: max |ws diff| {dws:.3g}, max |image diff| {dimg:.3g} "
                  f"(image max |value| {peak:.3g}); fp16 layers {len(fp16_nv)} of {len(nv.synthesis.layer_names)}",
                  flush=True)
        for G in (nv, ours):
            G.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()

        models = [("nvidia", nv, None), ("ours", ours, None)] + ([("graphs", ours, "graph")] if args.graphs else [])
        print(f"{'cfg':>3} {'batch':>5} {'model':>7} {'mode':>8} {'ms/call':>9} {'first s':>8} {'peak GiB':>9} "
              f"{'x fwd':>6} {'ours/NV':>8}")
        for batch in args.batch:
            times = {}
            for mode in modes:
                for model, G, impl in models:
                    head = f"{cfg:>3} {batch:>5} {model:>7} {mode:>8}"
                    G.to(device)
                    try:
                        r = bench_one(G, batch, args.dtype, device, args.iters, args.warmup,
                                      False if mode == "forward" else mode, impl=impl)
                    except torch.cuda.OutOfMemoryError:
                        print(f"{head}   out of memory", flush=True)
                        continue
                    finally:
                        G.to("cpu")
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                    times[model, mode] = r["ms_per_call"]
                    fwd = times.get((model, "forward"))
                    x_fwd = f"{r['ms_per_call'] / fwd:6.2f}" if fwd and mode != "forward" else f"{'':>6}"
                    vs = times.get(("nvidia", mode)) if model != "nvidia" else None
                    vs = f"{r['ms_per_call'] / vs:8.2f}" if vs else f"{'':>8}"
                    print(f"{head} {r['ms_per_call']:9.1f} {r['first_call_s']:8.2f} {r['peak_gib']:9.2f} "
                          f"{x_fwd} {vs}", flush=True)
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(dict(cfg=cfg, resolution=args.resolution, batch=batch, model=model,
                                                    mode=mode, dtype=args.dtype, device=name,
                                                    nvidia_impl=args.nvidia_impl,
                                                    channel_scale=args.channel_scale, **r)) + "\n")
        del nv, ours


if __name__ == "__main__":
    main()
