"""The whole preparation of a re-enactment clip, stage by stage (landmarks excluded), random weights.

    python benchmarks/bench_pipeline.py --device cuda              # R 1024, IR-SE-50 ReStyle encoder, 160 frames
    python benchmarks/bench_pipeline.py --tiny --device cpu        # tiny R 64 generator, reduced encoder, CPU

Stages, as ``v2s-nb reenact --encoder`` runs them after face alignment:

1. encode the driving clip's frames (``ReStyleEncoder.encode``, ``--iters`` ReStyle iterations, batches of
   ``--batch``) and the reference;
2. PTI of the reference (``pivotal_tuning``, ``--pti-steps`` steps, its default locality regulariser);
3. channel discovery (``discover``) on all frames' codes with region masks of a template face;
4. pose encoding as ``encode_pose_sequence`` runs it, in batches of ``--pose-batch`` frames (its default: 8 for
   an image regressor, 1 for a W+ one): the first batch (``--pose-steps-first`` steps from the reference's code),
   then one warm-started batch (``--pose-steps-next`` steps from the previous batch's last code), timed alone: its
   time per frame is its own row, and the clip's pose encoding is extrapolated from the two. It depends
   on the regressor: ``--pose-input pfld`` is the paper's P_r (PFLD on the rendered image; weights from
   ``v2s_nb.weights.fetch('pfld-68')`` or ``V2S_NB_WEIGHTS_DIR``), ``image`` a stand-in that renders every step and
   pools the image to 112 px for a linear map (the cost without PFLD), ``w`` a linear map of W+ rows 0-7.
   With ``--memory-cap-gib`` it is ``encode_pose_sequence`` itself on all frames (a batch that runs out of memory is
   halved), timed whole;
5. render the clip with the PTI generator (``Reenactor.render_video``).

Weights are random (the generator: NVIDIA's R architecture, ``build_generator``; the encoder: the released
IR-SE-50 ReStyle layout, or with ``--tiny`` a reduced one), so the timings are those of real models, the images
are not faces. Frames are smooth random images (the cost does not depend on their content). Peak memory per
stage: CUDA max allocated by torch (reset per stage); CPU: the process's peak RSS so far.

``--memory-cap-gib 15`` runs it as on a 16 GB card (a T4): ``torch.cuda.set_per_process_memory_fraction`` caps what
PyTorch's allocator may hold (the CUDA context and the kernels' code come on top, as they would there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import peak_gib, sync  # noqa: E402  (also puts this checkout on sys.path)
from v2s_nb.face import masks_from_landmarks, template_landmarks  # noqa: E402
from v2s_nb.method.encoder import ReStyleEncoder, ReStyleNet  # noqa: E402
from v2s_nb.method.invert import pivotal_tuning  # noqa: E402
from v2s_nb.method.local_channels import discover  # noqa: E402
from v2s_nb.method.pose_encoding import encode_pose, encode_pose_sequence, fit_pose_regressor  # noqa: E402
from v2s_nb.method.reenact import Reenactor, layer_names  # noqa: E402
from v2s_nb.stylegan3 import build_generator, precompile, tiny_generator  # noqa: E402


def make_frames(n, size, seed=0):
    """Smooth random uint8 frames [n, size, size, 3] (bilinear upsampling of 8x8 noise)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, 8, 8, generator=g)
    out = []
    for i in range(0, n, 16):
        up = F.interpolate(small[i:i + 16], size=(size, size), mode="bilinear", align_corners=False)
        out.append((up * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def make_encoder(G, full: bool, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if full:  # IR-SE-50: 64-channel stem, stages of 3 / 4 / 14 / 3 units of 64 / 128 / 256 / 512 channels
            units = ReStyleNet.ir_se50_units()
            net = ReStyleNet(units, in_channels=6, stem=64, n_styles=G.num_ws, style_dim=G.w_dim)
        else:
            units = ReStyleNet.ir_se50_units(widths=(16, 32, 48, 64), counts=(1, 2, 2, 1), stem=16)
            net = ReStyleNet(units, in_channels=6, stem=16, n_styles=G.num_ws, style_dim=G.w_dim)
    net = net.eval().requires_grad_(False)
    return ReStyleEncoder(net, G, G.mapping.w_avg.clone(), "psp", source="random weights (benchmark)")


class _ImagePose(torch.nn.Module):
    """Stand-in image regressor: image average-pooled to 112 px, then a fixed random linear map to 3 angles."""

    pose_input = "image"

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = torch.randn(3 * 112 * 112, 3, generator=g) * 1e-3

    def forward(self, img):
        x = F.adaptive_avg_pool2d(img.float(), (112, 112)).flatten(1)
        return x @ self.A.to(x.device)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", type=_common.device)
    ap.add_argument("--tiny", action="store_true", help="tiny R 64 generator and a reduced encoder (CPU runs)")
    ap.add_argument("--frames", type=_common.positive_int, default=160)
    ap.add_argument("--batch", type=_common.positive_int, default=8, help="frames per encoder / render batch")
    ap.add_argument("--iters", type=_common.positive_int, default=3, help="ReStyle iterations")
    ap.add_argument("--fp16", action="store_true", help="encode with the generator's fp16 layers (CUDA; the "
                                                        "reference renders its reconstructions in float32)")
    ap.add_argument("--pti-steps", type=_common.positive_int, default=350)
    ap.add_argument("--pose-input", default="image", choices=["pfld", "image", "w"])
    ap.add_argument("--pose-batch", type=_common.positive_int, default=None,
                    help="frames per pose-encoding batch (default: "
                         "encode_pose_sequence's, 8 on images, 1 on w)")
    ap.add_argument("--pose-steps-first", type=_common.positive_int, default=100)
    ap.add_argument("--pose-steps-next", type=_common.positive_int, default=30)
    ap.add_argument("--fresh-kernel-cache", action="store_true",
                    help="compile every Triton kernel into a new, empty cache (TRITON_CACHE_DIR in a temporary "
                         "folder), as on a fresh machine: the stages' times then include compiling; the encoder's "
                         "warm-up becomes a timed stage. Each stage precompiles its kernels in one process per "
                         "CPU first (v2s_nb.stylegan3.precompile; V2S_NB_PRECOMPILE_WORKERS=0: off, they compile "
                         "at first launch, one at a time)")
    ap.add_argument("--memory-cap-gib", type=_common.positive_float, default=None,
                    help="cap the GPU memory PyTorch may allocate (e.g. 15: as on a 16 GB GPU); pose encoding then "
                         "runs as encode_pose_sequence on all frames, halving a batch that runs out")
    ap.add_argument("--json", default=None, help="append the results as one JSON line to this file")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    if a.memory_cap_gib is not None:
        if dev.type != "cuda":
            ap.error("--memory-cap-gib needs --device cuda")
        if dev.index is None:  # the cap is set by index
            dev = torch.device("cuda", torch.cuda.current_device())
        total = torch.cuda.get_device_properties(dev).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, a.memory_cap_gib * 2 ** 30 / total), dev)
        print(f"GPU memory capped at {a.memory_cap_gib:g} GiB of {total / 2 ** 30:.1f}")
    if a.fresh_kernel_cache:
        import tempfile

        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_pipeline_triton_")
        from v2s_nb.stylegan3 import fast_config
        print(f"fresh Triton cache {os.environ['TRITON_CACHE_DIR']}; precompile workers "
              f"{fast_config.current().precompile_workers} (-1: one per CPU, 16 at most, {os.cpu_count()} here; "
              "0: off)")

    t = time.perf_counter()
    if a.tiny:
        G = tiny_generator("R", resolution=64).to(dev)
    else:
        G = build_generator("R", 1024, device=dev)
    E = make_encoder(G, full=not a.tiny)
    frames = make_frames(a.frames + 1, G.img_resolution)
    ref, drive = frames[:1], frames[1:]
    print(f"setup {time.perf_counter() - t:.1f} s: generator {G.img_resolution} px R (random weights), encoder "
          f"{len(E.net.units)} IR-SE units (random weights), {a.frames} frames, device {dev}")

    rows = []

    def stage(name, fn):
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        sync(dev)
        t0 = time.perf_counter()
        out = fn()
        sync(dev)
        s = time.perf_counter() - t0
        rows.append({"stage": name, "seconds": s, "peak_gib": peak_gib(dev)})
        print(f"  {name:<46s} {s:9.2f} s   peak {rows[-1]['peak_gib']:.2f} GiB", flush=True)
        if precompile.REPORTS:  # the stage precompiled its kernels first (V2S_NB_PRECOMPILE_WORKERS)
            rows[-1]["precompile"] = [{k: v for k, v in vars(r).items() if k != "failed"} for r in precompile.REPORTS]
            for r in precompile.REPORTS:
                print(f"      {r!r}")
            precompile.REPORTS.clear()
        return out

    warm_up = lambda: E.encode(drive[:a.batch], n_iters=a.iters, batch_size=a.batch, force_fp32=not a.fp16)
    if a.fresh_kernel_cache:
        stage(f"encoder warm-up ({a.batch} frames; compiles)", warm_up)
    else:
        warm_up()
    ws_drv = stage(f"encode {a.frames} frames ({a.iters} iterations)",
                   lambda: E.encode(drive, n_iters=a.iters, batch_size=a.batch, force_fp32=not a.fp16))
    w_ref = stage("encode the reference", lambda: E.encode(ref, n_iters=a.iters, force_fp32=not a.fp16))
    G_pti = stage(f"PTI of the reference ({a.pti_steps} steps)",
                  lambda: pivotal_tuning(G, ref, w_ref, steps=a.pti_steps, progress=False))
    names = layer_names(G, "3-7")
    pts = np.repeat(template_landmarks(G.img_resolution)[None], a.frames, axis=0)
    masks = masks_from_landmarks(pts, G.img_resolution)
    cs = stage(f"channel discovery ({a.frames} frames, rows 3-7)",
               lambda: discover(G, ws_drv, masks, layers=names, cache=False, progress=False))

    g = torch.Generator().manual_seed(0)
    if a.pose_input == "w":
        pose_fn = fit_pose_regressor(torch.randn(64, G.num_ws, G.w_dim, generator=g),
                                     np.random.default_rng(0).normal(size=(64, 3)) * 10).to(dev)
    elif a.pose_input == "pfld":
        from v2s_nb.method.pose_encoding import pfld_pose_regressor
        pose_fn = pfld_pose_regressor(dev)
    else:
        pose_fn = _ImagePose().to(dev)
    pb = a.pose_batch or (1 if a.pose_input == "w" else 8)
    kw = dict(pose_fn=pose_fn, measure=False)
    if a.memory_cap_gib is not None:  # the real loop, which halves a batch that runs out of memory
        targets = np.random.default_rng(1).normal(size=(a.frames, 3)) * 10
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            enc = stage(f"pose encoding ({a.pose_input}), {a.frames} frames",
                        lambda: encode_pose_sequence(G, w_ref[0], targets, steps_first=a.pose_steps_first,
                                                     steps_next=a.pose_steps_next, batch_size=pb, progress=False,
                                                     **kw))
        rows[-1]["batch_sizes"] = enc.settings["batch_sizes"]
        rows[-1]["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
        print(f"      batch sizes {enc.settings['batch_sizes']}", *rows[-1]["warnings"], sep="\n      ")
        pose_total = rows[-1]["seconds"]
    else:
        targets = np.random.default_rng(1).normal(size=(2 * pb, 3)) * 10
        first = stage(f"pose encoding: first batch ({pb} frames, {a.pose_steps_first} steps)",
                      lambda: encode_pose(G, w_ref[0], targets[:pb], steps=a.pose_steps_first, **kw))
        init = first.ws[-1:].to(dev).expand(pb, -1, -1)  # as encode_pose_sequence starts every later batch
        stage(f"pose encoding: one warm-started batch ({a.pose_steps_next} steps)",
              lambda: encode_pose(G, w_ref[0], targets[pb:], steps=a.pose_steps_next, init=init, **kw))
        batch_s = rows[-1]["seconds"]
        rows[-1]["seconds"] = batch_s / pb
        rows[-1]["stage"] = f"pose encoding ({a.pose_input}), per warm-started frame ({a.pose_steps_next} steps)"
        pose_total = rows[-2]["seconds"] + batch_s * (-(-a.frames // pb) - 1)
        print(f"  -> {batch_s / pb:.2f} s per warm-started frame; {a.frames} frames about {pose_total:.1f} s")

    tr = np.stack([np.linspace(0, 0.05, a.frames), np.zeros(a.frames), np.linspace(-5, 5, a.frames)], 1)
    r = Reenactor(G=G, G_render=G_pti, w_ref=w_ref[0].cpu(), ws_drive=ws_drv.cpu(), region_channels=cs,
                  tracks={"driving": tr}, position_mode="absolute")
    stage(f"render {a.frames} frames (PTI generator)",
          lambda: (r.prepare(), r.render_video(batch_size=a.batch, progress=False)))

    without_pose = sum(x["seconds"] for x in rows if not x["stage"].startswith("pose"))
    print(f"  {'total without pose encoding':<46s} {without_pose:9.2f} s")
    how = "" if a.memory_cap_gib is not None else " (extrapolated)"
    print(f"  {'total with pose encoding of every frame':<46s} {without_pose + pose_total:9.2f} s{how}")
    peak = max(x["peak_gib"] for x in rows)
    print(f"  peak memory {peak:.2f} GiB")
    if a.json:
        rec = {"device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
               "tiny": a.tiny, "frames": a.frames, "iters": a.iters, "fp16": a.fp16, "rows": rows,
               "fresh_kernel_cache": a.fresh_kernel_cache, "memory_cap_gib": a.memory_cap_gib,
               "total_without_pose_s": without_pose, "total_with_pose_s": without_pose + pose_total}
        with open(a.json, "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
