"""``v2s-nb`` command line: the notebook toolkit's jobs in batch.

    v2s-nb generate --checkpoint stylegan3-r-ffhq-1024 --seeds 0-7 --out grid.png
    v2s-nb generate --seeds 0-15 --out grid.png         # tiny random generator (not a face model)
    v2s-nb reenact --reference me.png --driving talk.mp4 [--co-driving head.mp4] \
                   --checkpoint stylegan3-r-ffhq-1024 --out out/me.mp4 [--alpha -1 --beta 1 --gamma 1 --zeta 0.5]
    v2s-nb demo [--out out/demo.mp4]                     # offline: a generator fitted to one photo follows a clip

``reenact`` keeps its intermediates (landmarks / aligned crops / tracks, inversions, channel sets, pose codes)
in ``<out>.v2s/``, keyed by the inputs and settings, so a second run with other coefficients only mixes and
renders. Those stages are the public functions of :mod:`v2s_nb.prepare` (faces, inversions, channels, pose_codes,
reenactor), which notebooks and scripts can call one at a time. Motion (``--motion relative|absolute|paper``,
``--anchor``, ``--position relative|absolute``): see
:mod:`v2s_nb.method.motion`; the defaults move the reference's own face as the driver moves from its first
frame, in face units. Channel discovery (section 3.4) uses region masks of the *aligned reference* (the paper's
SegNet(I_ref^c)): BiSeNet when its weights are cached (``--regions auto``, the default) or asked for
(``--regions bisenet``), landmark hulls otherwise (``--regions landmarks``), with the reference's inversion as
the latent.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
import warnings


def parse_seeds(text: str) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11]; seeds in 0..2**32-1, at most ``validate.MAX_SEEDS`` of them
    (checked on the range bounds before the list is built)."""
    from .validate import MAX_SEEDS, parse_int_ranges

    try:
        return parse_int_ranges(text, "seed", lo=0, hi=2**32 - 1, max_count=MAX_SEEDS)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


#: What ``--device`` accepts (checked when parsed, before PyTorch sees it: its own message lists 20 device types).
DEVICES = "cpu, cuda, cuda:N (a GPU index, e.g. cuda:0) or auto"


def device_name(text: str) -> str:
    """``--device`` text, checked and lower-cased: cpu, cuda, cuda:N or auto (argparse ``type=``)."""
    name = str(text).strip().lower()
    if not re.fullmatch(r"cpu|auto|cuda(:[0-9]+)?", name):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use {DEVICES}")
    return name


def _device(name: str | None):
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:  # namespaces built by hand skip the parser's check
        name = device_name(name)
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"--device {e}") from None
    if name == "auto":
        return _device(None)
    dev = torch.device(name)
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"--device {name} was asked for but no CUDA GPU is available; use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"--device {name}: this machine has {n} CUDA GPU{'s' if n > 1 else ''} "
                             f"(cuda:0{f' to cuda:{n - 1}' if n > 1 else ''}); give one of those, or cuda / cpu")
    return dev


def cmd_generate(args) -> int:
    from pathlib import Path

    import numpy as np
    import torch

    from .images import image_grid, save_image, to_uint8
    from .stylegan3 import load_generator, set_input_transform, tiny_generator

    from .validate import check_output_path

    inputs = [args.checkpoint] if args.checkpoint and Path(str(args.checkpoint)).exists() else []
    check_output_path(args.out, suffixes=(".png", ".jpg", ".jpeg"), inputs=inputs, what="--out")
    seeds = args.seeds if isinstance(args.seeds, list) else parse_seeds(args.seeds)
    device = _device(args.device)
    if args.checkpoint:
        G = load_generator(args.checkpoint, device=device)
    else:
        G = tiny_generator(args.cfg, resolution=args.tiny_resolution).to(device)
        print(f"note: no --checkpoint given; using a tiny RANDOM-WEIGHT {args.cfg} generator "
              f"({G.img_resolution}px). Its images are noise-like patterns, not faces.", file=sys.stderr)
    if args.translate or args.rotate:
        set_input_transform(G, args.translate[0], args.translate[1], args.rotate)
    images = []
    t0 = time.perf_counter()
    from .progress import progress_iter

    with torch.no_grad():
        for start in progress_iter(range(0, len(seeds), args.batch_size), desc="generate", unit="batch",
                                   enabled=not args.quiet):
            chunk = seeds[start: start + args.batch_size]
            z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(G.z_dim) for s in chunk])).float().to(device)
            c = torch.zeros([len(chunk), G.c_dim], device=device) if G.c_dim else None
            ws = G.mapping(z, c, truncation_psi=args.truncation_psi)
            images.append(to_uint8(G.synthesis(ws), range_check=False))
    images = np.concatenate(images)
    grid = image_grid(images, cols=None if args.cols is None else min(args.cols, len(images)))  # no blank columns
    path = save_image(args.out, grid)
    dt = time.perf_counter() - t0
    print(f"wrote {path} ({len(seeds)} images, {grid.shape[1]}x{grid.shape[0]} px, {dt:.2f} s on {device})")
    return 0


# ------------------------------------------------------------------------------------------ reenact / demo


def _say(args, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr, flush=True)


def _load_G(args, device):
    from pathlib import Path

    from .stylegan3 import load_generator, tiny_generator

    if args.checkpoint:
        G = load_generator(args.checkpoint, device=device)
        src = Path(args.checkpoint).expanduser()  # a file: its absolute path, so the saved Reenactor loads anywhere
        spec = {"kind": "source", "source": str(src.resolve()) if src.is_file() else str(args.checkpoint)}
    else:
        G = tiny_generator("R", resolution=args.tiny_resolution).to(device)
        spec = {"kind": "tiny", "cfg": "R", "resolution": args.tiny_resolution, "seed": 0}
        _say(args, f"note: no --checkpoint given: using a tiny RANDOM-WEIGHT generator ({G.img_resolution}px). It "
                   "draws no faces, so the result shows the pipeline, not a re-enacted face. For real results use "
                   "--checkpoint stylegan3-r-ffhq-1024 (downloaded once, ~380 MB) on a GPU.")
    return G, spec


#: The reenact command's motion settings and their defaults (see ``--motion`` etc.).
_MOTION_DEFAULTS = {"motion": "relative", "strength": 1.0, "anchor": "first", "position": "relative",
                    "regions": "auto", "smooth_method": "robust"}


def prepare_reenactment(args):
    """Stages 1-4 of ``reenact`` (faces, inversion, channel discovery, pose encoding) -> a Reenactor."""
    from pathlib import Path

    from . import prepare as P
    from .method.motion import check_strength, motion_mode, resolve_anchor
    from .method.reenact import check_coefficients, layer_names

    for name, value in _MOTION_DEFAULTS.items():  # namespaces built by hand (not by build_parser) get the defaults
        if not hasattr(args, name):
            setattr(args, name, value)
    check_coefficients(args.alpha, args.beta, args.gamma, args.zeta)  # fail before any work
    motion_mode(args.motion)
    check_strength(args.strength)
    if args.anchor not in ("first", "best") and not args.anchor.lstrip("-").isdigit():
        raise ValueError(f"--anchor must be first, best or a frame index, got {args.anchor!r}")
    check_reenact_inputs(args)
    check_reenact_output(args)
    for flag, src in (("--pose-from", args.pose_from), ("--position-from", args.position_from)):
        if src == "co-driving" and not args.co_driving:
            raise ValueError(f"{flag} co-driving needs --co-driving")
    device = _device(args.device)
    G, spec = _load_G(args, device)
    res = int(G.img_resolution)
    names = layer_names(G, args.layers)
    cache = Path(str(args.out) + ".v2s")
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    progress = not args.quiet

    def say(msg):  # the stages' lines, indented under the stage headers
        _say(args, "      " + msg)

    _say(args, "[1/5] landmarks, alignment, canonical tracks")
    faces = P.faces(args.reference, args.driving, args.co_driving or None, resolution=res, cache=cache,
                    detector=args.detector, upsample=args.upsample, smooth=args.smooth,
                    smooth_method=args.smooth_method, strict=getattr(args, "strict", False),
                    device=device if args.detector == "rfb" else None, progress=progress, say=say)
    _say(args, f"      {time.perf_counter() - t0:.1f} s" + (" (cached)" if faces.driving.cached else ""))
    if args.anchor not in ("first", "best"):  # an index past the frames re-enacted: said before the long stages
        resolve_anchor(args.anchor, min(len(c.aligned) for c in (faces.driving, faces.co_driving) if c is not None))

    _say(args, "[2/5] inversion (W+)")
    inv = P.inversions(G, faces, encoder=getattr(args, "encoder", None),
                       encoder_iters=args.encoder_iters, refine_steps=getattr(args, "refine_steps", 0),
                       invert_steps=args.invert_steps, invert_steps_next=args.invert_steps_next,
                       invert_batch_size=args.invert_batch_size, batch_size=args.batch_size,
                       pti=getattr(args, "pti", None), pti_steps=args.pti_steps, cache=cache, progress=progress,
                       say=say,
                       note=lambda m: print("      " + m, file=sys.stderr, flush=True))  # shown even with --quiet
    _say(args, f"      {time.perf_counter() - t0:.1f} s")

    _say(args, f"[3/5] S channel discovery on layers {names[0]}..{names[-1]} (region masks of the aligned reference)")
    ch = P.channels(inv, layers=args.layers, regions=args.regions, t_fg=args.t_fg, t_bg=args.t_bg, cache=cache,
                    progress=progress, say=say)
    say(repr(ch.sets).replace("\n", "\n      "))

    _say(args, "[4/5] pose encoding (W+ rows 0-7)")
    poses = P.pose_codes(inv, [s for s in (args.pose_from,) if s != "none"], steps=args.pose_steps,
                         steps_next=args.pose_steps_next, batch_size=args.pose_batch_size, cache=cache,
                         progress=progress, say=say)
    r = P.reenactor(inv, ch, poses, pose=args.pose_from, position=args.position_from,
                    regions=[x for x in ("eyes", "nose", "mouth") if x not in (args.no_region or [])],
                    motion=args.motion, strength=args.strength, anchor=args.anchor, position_mode=args.position,
                    alpha=args.alpha, beta=args.beta, gamma=args.gamma, zeta=args.zeta, baseline=args.baseline,
                    info={"generator_spec": spec})
    _say(args, f"      motion {args.motion} (anchor frame {r.anchor_frame()}), position {args.position}")
    r.save(cache / "reenactor")
    return r


def _still_image(path) -> bool:
    """Whether ``path`` is a picture of one frame (PNG, JPEG, ...; read from its header): an animated GIF / PNG /
    WebP or a video file is not."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return getattr(im, "n_frames", 1) == 1
    except Exception:  # not a picture PIL knows (a video), unreadable: for the video reader to judge
        return False


def check_reenact_inputs(args) -> None:
    """Refuse (one line, before any work) a missing input, a folder, and a still picture where a video is wanted
    (ffmpeg would read it as a 1-frame video at a made-up 25 fps)."""
    from pathlib import Path

    for flag, p, want in (("--reference", args.reference, "an image file (PNG / JPG)"),
                          ("--driving", args.driving, "a video file"),
                          ("--co-driving", args.co_driving, "a video file")):
        if p is None:
            continue
        if Path(p).is_dir():
            raise IsADirectoryError(f"{flag} {p} is a folder; give {want}")
        if not Path(p).is_file():
            raise FileNotFoundError(f"{flag} file not found: {p}")
        if flag != "--reference" and _still_image(p):
            raise ValueError(f"{flag} {p} is a still image, but {flag} must be a video (e.g. .mp4) whose motion is "
                             "followed; the photo to re-enact goes to --reference")


def check_reenact_output(args) -> None:
    """Refuse (one line, before any work) an ``--out`` that is an input, a folder, not .mp4, not writable, or
    whose intermediates folder ``<out>.v2s/`` would hold an input; also an input's own intermediates."""
    from .validate import check_output_path

    inputs = [args.reference, args.driving] + ([args.co_driving] if args.co_driving else [])
    if args.checkpoint and os.path.exists(str(args.checkpoint)):
        inputs.append(args.checkpoint)
    check_output_path(args.out, suffixes=(".mp4", ".m4v", ".mov"), inputs=inputs, intermediates=".v2s",
                      what="--out")


def cmd_reenact(args) -> int:
    from .video import write_video

    t0 = time.perf_counter()
    r = prepare_reenactment(args)
    t1 = time.perf_counter()
    _say(args, f"[5/5] mixing + render {len(r)} frames ({r.sources()})")
    # a batch at a time into the encoder: a minute at 1024 px held 5.7 GB of frames before the file was written
    path = write_video(args.out, r.render_chunks(batch_size=args.batch_size, progress=not args.quiet), fps=r.fps)
    t2 = time.perf_counter()
    h, w = r.resolution_hw
    print(f"wrote {path} ({len(r)} frames, {w}x{h} px, {r.fps:g} fps; "
          f"prepare {t1 - t0:.1f} s, render {t2 - t1:.1f} s; intermediates in {args.out}.v2s/)")
    return 0


def make_demo_inputs(folder, frames: int = 10, size: int = 256):
    """The demo's inputs: skimage's astronaut photo (reference, PNG) and two short clips made from it by small
    rotations / translations (driving and co-driving, MP4), all ``size`` px square, the clips ``frames`` long.
    Returns (reference, driving, co_driving) paths: ``astronaut.png``, ``driving.mp4`` and ``co_driving.mp4`` in
    ``folder``. Files already there are kept when their size and frame count are the asked ones (read from the
    headers; a second call is cheap) and made again otherwise."""
    from pathlib import Path

    import cv2
    import numpy as np
    import skimage.data

    from .images import save_image
    from .video import video_info, write_video

    def made_alike(path, n) -> bool:  # n: frames of a clip, None for the picture
        try:
            if n is None:
                from PIL import Image

                with Image.open(path) as im:
                    return im.size == (size, size)
            info = video_info(path)
            return (info.width, info.height, info.approx_frames) == (size, size, n)
        except (OSError, ValueError):  # missing, unreadable (VideoReadError is a ValueError): made again
            return False

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    img = cv2.resize(skimage.data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    ref = folder / "astronaut.png"
    if not made_alike(ref, None):
        save_image(ref, img)

    def clip(sign):
        out = []
        for i in range(frames):
            t = i / max(frames - 1, 1)
            a = sign * 6.0 * np.sin(2 * np.pi * t)
            m = cv2.getRotationMatrix2D((size * 0.45, size * 0.35), a, 1.0)
            m[:, 2] += [sign * 0.03 * size * t, 0.02 * size * np.sin(np.pi * t)]
            out.append(cv2.warpAffine(img, m, (size, size), borderMode=cv2.BORDER_REFLECT_101))
        return np.stack(out)

    drv, co = folder / "driving.mp4", folder / "co_driving.mp4"
    if not made_alike(drv, frames):
        write_video(drv, clip(1), fps=10)
    if not made_alike(co, frames):
        write_video(co, clip(-1), fps=10)
    return ref, drv, co


def check_demo_output(args) -> None:
    """Refuse (one line, before any work) a demo ``--out`` that :func:`check_reenact_output` would refuse, or
    whose companions (side-by-side video, contact sheet, inputs and intermediates folders, named after it) can't
    be written: a file name that is a folder, a folder name that is a file."""
    from .demo import demo_paths
    from .validate import OutputPathError, check_output_path

    inputs = [args.checkpoint] if args.checkpoint and os.path.exists(str(args.checkpoint)) else []
    check_output_path(args.out, suffixes=(".mp4", ".m4v", ".mov"), inputs=inputs, intermediates=".v2s",
                      what="--out")
    paths = demo_paths(args.out)
    for key in ("side_by_side", "contact_sheet"):
        if paths[key].is_dir():
            raise OutputPathError(f"the demo writes {paths[key]} beside --out {args.out}, but that is a folder; "
                                  "move it or choose another --out")
    for key in ("inputs", "intermediates"):
        if paths[key].exists() and not paths[key].is_dir():
            raise OutputPathError(f"the demo keeps its {key} in the folder {paths[key]} beside --out {args.out}, "
                                  "but that is a file; move it or choose another --out")


def cmd_demo(args) -> int:
    """Offline demo: a generator fitted to the astronaut photo follows a clip made from it (v2s_nb.demo); with
    --checkpoint, the whole re-enactment pipeline with that model on the same inputs."""
    from .demo import CAN_SHOW, LABEL, capabilities_text, run_demo

    check_demo_output(args)  # both branches: before the inputs, the fit or the pipeline run
    given = [f for f, v in (("--invert-steps", args.invert_steps), ("--invert-steps-next", args.invert_steps_next))
             if v is not None]
    if given and not args.checkpoint:  # were ignored: the demo without a model fits its own generator
        verb = "apply" if len(given) > 1 else "applies"
        raise ValueError(f"{' and '.join(given)} {verb} with --checkpoint (the inversion of the real-model run); the "
                         "demo without one fits a generator to its photo instead")
    if args.checkpoint:
        return _demo_checkpoint(args)
    t0 = time.perf_counter()
    device = _device(args.device)
    print(f"demo: a small StyleGAN3-R generator {LABEL.upper()} (skimage's astronaut, fitted here by pivotal "
          "tuning; a stand-in, not a face model) follows a clip made from the same photo.\n"
          f"      For real re-enactment: v2s-nb demo --checkpoint stylegan3-r-ffhq-1024 --device cuda, or\n"
          "      v2s-nb reenact --reference IMG --driving VIDEO --checkpoint stylegan3-r-ffhq-1024 --out out.mp4",
          file=sys.stderr)
    res = run_demo(args.out, frames=args.frames, device=device, quiet=args.quiet)
    c = res.check
    print(f"generator: {res.generator.source}")
    print(capabilities_text())
    print(f"measured: dlib finds a face in {int(c['detected'].sum())}/{c['frames']} result frames "
          f"({c['detection_rate']:.0%}); the result's roll follows the driving clip's (relative to frame "
          f"{c['reference_frame']}) within {c['max_roll_error']:.2f} deg max, {c['mean_roll_error']:.2f} deg mean")
    p = res.paths
    print(f"wrote {p['side_by_side']} (driving | result), {p['contact_sheet']}, {p['result']} (result only); "
          f"inputs in {p['inputs']}/, intermediates in {p['intermediates']}/")
    tm = ", ".join(f"{k} {v:.1f}" for k, v in res.timings.items() if k != "total")
    print(f"demo finished in {time.perf_counter() - t0:.1f} s ({tm} s; fit "
          f"{'from the cache' if res.fitted_from_cache else 'computed'}; {', '.join(CAN_SHOW)} shown)")
    return 0


def _demo_checkpoint(args) -> int:
    """``demo --checkpoint``: the reenact pipeline with a real model on the demo's inputs, then the
    side-by-side video and contact sheet; the three are moved into place together at the end."""
    from .atomic import write_together
    from .demo import contact_sheet, demo_paths, side_by_side, write_inputs
    from .video import read_video, write_video

    t0 = time.perf_counter()
    paths = demo_paths(args.out)
    inp = write_inputs(paths["inputs"], frames=args.frames)
    print(f"demo: the whole pipeline with {args.checkpoint} on skimage's astronaut photo and a clip made from it "
          "(rolled and moved: position and rotation change, the expression does not).", file=sys.stderr)
    argv = ["reenact", "--reference", str(inp["reference"]), "--driving", str(inp["driving"]), "--out",
            str(args.out), "--checkpoint", str(args.checkpoint), "--device", args.device]
    if args.invert_steps is not None:
        argv += ["--invert-steps", str(args.invert_steps)]
    if args.invert_steps_next is not None:
        argv += ["--invert-steps-next", str(args.invert_steps_next)]
    if args.quiet:
        argv.append("--quiet")
    rargs = build_parser().parse_args(argv)
    _resolve_sources(rargs)
    # cmd_reenact's stages, but the result is written with its companions (not alone to --out): an interrupted
    # run leaves the previous run's three files, never a new result beside old companions
    r = prepare_reenactment(rargs)
    _say(rargs, f"[5/5] mixing + render {len(r)} frames ({r.sources()})")
    frames = r.render_video(batch_size=rargs.batch_size, progress=not rargs.quiet)
    with write_together({k: paths[k] for k in ("result", "side_by_side", "contact_sheet")}) as tmp:
        write_video(tmp["result"], frames, fps=r.fps)
        driving, result = read_video(inp["driving"]), read_video(tmp["result"])
        write_video(tmp["side_by_side"], side_by_side(driving.frames, result.frames,
                                                      right=f"re-enacted ({args.checkpoint})"), fps=result.fps)
        contact_sheet(tmp["contact_sheet"], driving.frames, result.frames, title=f"v2s-nb demo with {args.checkpoint}",
                      result_label="re-enacted")
    print(f"wrote {paths['result']} ({len(frames)} frames, {frames.shape[2]}x{frames.shape[1]} px, {r.fps:g} fps; "
          f"intermediates in {args.out}.v2s/), {paths['side_by_side']} (driving | result) and "
          f"{paths['contact_sheet']}")
    print(f"demo finished in {time.perf_counter() - t0:.1f} s (generator: {args.checkpoint})")
    return 0


def _add_reenact_parsers(sub) -> None:
    from .validate import finite_arg, int_arg, power_of_two_arg, smoothing_kernel_arg

    def frac(s):  # range and finiteness: reenact.check_coefficients, with the paper's ranges in its message
        return float(s)

    def layers_arg(text):
        from .method.reenact import parse_layers

        try:
            rows = parse_layers(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if 0 in rows:  # refused by channel discovery, after the faces and inversion stages had run
            raise argparse.ArgumentTypeError("row 0 drives the input's rotation / translation, which has no feature "
                                             "maps to find channels in; choose rows from 1 (default 3-7)")
        return text

    r = sub.add_parser("reenact", help="re-enact a driving video in a reference face (Video2StyleGAN)")
    r.add_argument("--reference", required=True, help="reference face image (PNG / JPG)")
    r.add_argument("--driving", required=True, help="driving video (local motion: eyes / nose / mouth)")
    r.add_argument("--co-driving", default=None, help="optional co-driving video (pose and position); paired with "
                                                     "the driving video by frame index, truncated to the shorter")
    r.add_argument("--checkpoint", default=None, help="generator: known name (stylegan3-r-ffhq-1024), path or URL. "
                                                      "Default: tiny random generator (not a face model)")
    _alias(r, "--network", "checkpoint")
    r.add_argument("--out", required=True, help="output .mp4; intermediates go to <out>.v2s/")
    r.add_argument("--motion", default="relative", choices=["relative", "absolute", "paper"],
                   help="expression transfer: relative (default: the reference's own eyes / mouth moved as the "
                        "driver moves from the anchor frame), absolute (the driver's values), paper (eq 7 as "
                        "printed, alpha -1, beta 1, gamma 1, zeta 0.5)")
    r.add_argument("--strength", type=frac, default=1.0, help="expression strength k on the driver's change "
                                                              "(default 1)")
    r.add_argument("--anchor", default="first", help="anchor frame of the driver: first (default), best (the "
                                                     "frame whose expression matches the reference) or an index")
    r.add_argument("--position", default="relative", choices=["relative", "absolute"],
                   help="position track: relative (default: the motion since the anchor, in face units) or "
                        "absolute (the printed canonical track)")
    r.add_argument("--alpha", type=frac, default=None, help="eq 10 weight of s_ref (default: the motion mode's)")
    r.add_argument("--beta", type=frac, default=None, help="eq 10 weight of s_j (default: the motion mode's)")
    r.add_argument("--gamma", type=frac, default=None, help="eq 11 weight of s_base (default: the motion mode's)")
    r.add_argument("--zeta", type=frac, default=None, help="eq 12 blend of s_ref / s_base (default 0.5)")
    r.add_argument("--layers", type=layers_arg, default="3-7", help="W+ rows whose S codes are mixed (default 3-7)")
    r.add_argument("--baseline", default=None, choices=["cumulative", "printed"],
                   help="eq 7 reading (default: the motion mode's)")
    r.add_argument("--regions", default="auto", choices=["auto", "landmarks", "bisenet"],
                   help="region masks of the reference for channel discovery: bisenet, landmarks, or auto "
                        "(default: BiSeNet when its weights are cached, else landmarks)")
    r.add_argument("--no-region", action="append", choices=["eyes", "nose", "mouth"],
                   help="leave a region's channels out of X_s (repeatable)")
    r.add_argument("--pose-from", default=None, choices=["driving", "co-driving", "none"],
                   help="pose source (default: co-driving if given, else driving)")
    r.add_argument("--position-from", default=None, choices=["driving", "co-driving", "none"],
                   help="position (canonical transform) source (default: co-driving if given, else driving)")
    r.add_argument("--t-fg", type=finite_arg("--t-fg", 0.0, 1.0), default=None,
                   help="channel selection IoU+ threshold (default 0.2)")
    r.add_argument("--t-bg", type=finite_arg("--t-bg", 0.0, 1.0), default=None,
                   help="channel selection IoU- upper bound (default 0.1)")
    r.add_argument("--invert-steps", type=int_arg("--invert-steps", 1, 100_000), default=None,
                   help="inversion steps (reference, first batch; default: invert()'s)")
    r.add_argument("--invert-steps-next", type=int_arg("--invert-steps-next", 1, 100_000), default=None,
                   help="inversion steps of warm-started batches (default: invert_sequence()'s)")
    r.add_argument("--invert-batch-size", type=int_arg("--invert-batch-size", 1, 1024), default=None,
                   help="frames per inversion batch; each finished batch is saved, so a killed run resumes "
                        "(default: invert_sequence()'s)")
    _alias(r, "--invert-batch", "invert_batch_size", type=int_arg("--invert-batch", 1, 1024))
    r.add_argument("--pose-steps", type=int_arg("--pose-steps", 1, 100_000), default=None,
                   help="pose encoding steps, first frame (default: encode_pose_sequence()'s)")
    r.add_argument("--pose-steps-next", type=int_arg("--pose-steps-next", 1, 100_000), default=None,
                   help="pose encoding steps, warm-started frames (default: encode_pose_sequence()'s)")
    r.add_argument("--pose-batch-size", type=int_arg("--pose-batch-size", 1, 4096), default=None,
                   help="frames per pose encoding batch; a batch that runs out of GPU memory is halved anyway, this "
                        "skips the tries (default: encode_pose_sequence()'s)")
    r.add_argument("--smooth", type=smoothing_kernel_arg("--smooth"), default=3,
                   help="canonical track smoothing kernel (odd, >= 3; 0 = off)")
    r.add_argument("--encoder", default=None, help="ReStyle encoder: restyle-e4e-ffhq, restyle-psp-ffhq or a .pt path "
                   "(stylegan3-editing's release; used when it was trained with the --checkpoint generator)")
    r.add_argument("--encoder-iters", type=int_arg("--encoder-iters", 1, 100), default=None,
                   help="ReStyle iterations per frame (default: invert_with_encoder()'s)")
    r.add_argument("--refine-steps", type=int_arg("--refine-steps", 0, 100_000), default=0,
                   help="optimisation steps after the encoder (default 0)")
    r.add_argument("--pti", action=argparse.BooleanOptionalAction, default=None,
                   help="pivotal tuning of the reference; default on for trained generators, off for random ones")
    r.add_argument("--pti-steps", type=int_arg("--pti-steps", 1, 100_000), default=None,
                   help="PTI steps (default: pivotal_tuning()'s)")
    r.add_argument("--smooth-method", default="robust", choices=["robust", "mean", "gaussian"],
                   help="track smoothing: robust (default: outlier frames rejected, then a centred Gaussian), "
                        "mean (the paper's box filter) or gaussian")
    r.add_argument("--detector", default="hog", choices=["hog", "cnn", "rfb"],
                   help="face landmarks: hog (default) or cnn, dlib's detectors and its 68 points; rfb, the "
                        "RFB-320 detector and PFLD's 68 points (the paper's; weights downloaded once; on --device)")
    r.add_argument("--upsample", type=int_arg("--upsample", 0, 4), default=1,
                   help="dlib detectors' upsampling (0-4)")
    r.add_argument("--tiny-resolution", type=power_of_two_arg("--tiny-resolution", 16, 1024), default=64,
                   help="resolution of the tiny random generator")
    r.add_argument("--batch-size", type=int_arg("--batch-size", 1, 4096), default=8, help="frames per synthesis call")
    _alias(r, "--batch", "batch_size", type=int_arg("--batch", 1, 4096))
    r.add_argument("--device", type=device_name, default="auto", help="cpu, cuda, cuda:N or auto (default)")
    r.add_argument("--strict", action="store_true", help="stop on decoding errors in a video (default: warn, "
                                                          "naming the frames)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_reenact)

    d = sub.add_parser("demo", help="offline demo: a generator fitted to one photo follows a clip of it (position, "
                                    "rotation); with --checkpoint, the whole pipeline with a real model")
    d.add_argument("--out", default="out/demo.mp4", help="result .mp4 (default out/demo.mp4); the side-by-side "
                                                         "video and contact sheet are written beside it")
    d.add_argument("--frames", type=int_arg("--frames", 2, 10_000), default=32,
                   help="frames of the generated driving clip (default 32)")
    d.add_argument("--checkpoint", default=None, help="a real generator (name, path or URL): run the reenact "
                                                      "pipeline with it instead of fitting one to the photo")
    _alias(d, "--network", "checkpoint")
    d.add_argument("--invert-steps", type=int_arg("--invert-steps", 1, 100_000), default=None,
                   help="with --checkpoint: inversion steps (first batch)")
    d.add_argument("--invert-steps-next", type=int_arg("--invert-steps-next", 1, 100_000), default=None,
                   help="with --checkpoint: inversion steps (warm-started batches)")
    d.add_argument("--device", type=device_name, default="cpu",
                   help="cpu (default), cuda, cuda:N or auto")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)


def _alias(parser, old: str, dest: str, **kwargs) -> None:
    """``old`` as a hidden second spelling of the option stored in ``dest`` (kept so old command lines work)."""
    parser.add_argument(old, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def api_defaults() -> dict:
    """The reenact command's step / batch defaults, read from the API functions' signatures (one set of defaults:
    the command line takes the API's)."""
    import inspect

    from .method.encoder import invert_with_encoder
    from .method.invert import invert, invert_sequence, pivotal_tuning
    from .method.pose_encoding import encode_pose_sequence

    def default(func, name):
        return inspect.signature(inspect.unwrap(func)).parameters[name].default

    return {"invert_steps": default(invert, "steps"), "invert_steps_next": default(invert_sequence, "steps_next"),
            "invert_batch_size": default(invert_sequence, "batch_size"),
            "pose_steps": default(encode_pose_sequence, "steps_first"),
            "pose_steps_next": default(encode_pose_sequence, "steps_next"),
            "pti_steps": default(pivotal_tuning, "steps"), "encoder_iters": default(invert_with_encoder, "n_iters")}


def _resolve_sources(args) -> None:
    if getattr(args, "command", None) != "reenact":
        return
    for name, value in api_defaults().items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    default = "co-driving" if args.co_driving else "driving"
    if args.pose_from is None:
        args.pose_from = default
    if args.position_from is None:
        args.position_from = default


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: argument --x: <what is wrong> (see v2s-nb <cmd> --help)``."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def cmd_weights(args) -> int:
    """``v2s-nb weights verify`` (exit 1 when a cached file is bad) / ``v2s-nb weights clear [NAME ...]``."""
    from . import weights as W

    if args.action == "verify":
        if args.names or args.bad:  # were ignored: verify checks every cached file
            raise ValueError("verify checks every cached file and takes no names or --bad (those are for clear)")
        rows = W.verify_cache()
        for path, status, detail in rows:
            print(f"{status:9s} {path}  {detail}")
        bad = sum(status == "bad" for _, status, _ in rows)
        print(f"{len(rows)} file(s) in {W.cache_dir()}, {bad} bad" + ("; remove them with: v2s-nb weights clear "
                                                                       "--bad" if bad else ""))
        return 1 if bad else 0
    removed = W.clear_cache(args.names or None, bad_only=args.bad)
    for p in removed:
        print(f"removed {p}")
    print(f"{len(removed)} file(s) removed from {W.cache_dir()}")
    return 0


def _add_weights_parser(sub) -> None:
    w = sub.add_parser("weights", help="check or empty the download cache of pretrained weights")
    w.add_argument("action", choices=["verify", "clear"], help="verify: check size / SHA-256 / format of every "
                   "cached file; clear: remove cached files")
    w.add_argument("names", nargs="*", default=[], help="clear only these known names (default: all)")
    w.add_argument("--bad", action="store_true", help="clear only the files verify calls bad")
    w.set_defaults(func=cmd_weights)


def build_parser() -> argparse.ArgumentParser:
    from .validate import finite_arg, int_arg, power_of_two_arg

    p = _Parser(prog="v2s-nb", description="Video2StyleGAN notebook toolkit, batch jobs.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    g = sub.add_parser("generate", help="render an image grid from seeds")
    g.add_argument("--checkpoint", help="generator: snapshot .pkl / .safetensors path, URL, or short name "
                                        "(e.g. stylegan3-r-ffhq-1024). Default: tiny random generator")
    _alias(g, "--network", "checkpoint")
    g.add_argument("--seeds", type=parse_seeds, default="0-7", help="seeds, e.g. '0-7' or '1,5,9' (default 0-7)")
    g.add_argument("--truncation-psi", type=finite_arg("--truncation-psi", -2.0, 2.0), default=1.0,
                   help="truncation psi (default 1)")
    _alias(g, "--trunc", "truncation_psi", type=finite_arg("--trunc", -2.0, 2.0))
    g.add_argument("--translate", type=finite_arg("--translate", -100.0, 100.0), nargs=2, default=(0.0, 0.0),
                   metavar=("TX", "TY"),
                   help="input translation in image widths (positive: right / down)")
    g.add_argument("--rotate", type=finite_arg("--rotate", -3600.0, 3600.0), default=0.0,
                   help="input rotation in degrees (positive: counter-clockwise)")
    g.add_argument("--out", default="out/grid.png", help="output image path (default out/grid.png)")
    g.add_argument("--cols", type=int_arg("--cols", 1, 4096), default=None, help="grid columns (default: square)")
    g.add_argument("--batch-size", type=int_arg("--batch-size", 1, 4096), default=4, help="images per forward pass")
    _alias(g, "--batch", "batch_size", type=int_arg("--batch", 1, 4096))
    g.add_argument("--device", type=device_name, default="auto", help="cpu, cuda, cuda:N or auto (default)")
    g.add_argument("--cfg", default="R", choices=["R", "T"], help="architecture of the tiny random generator")
    g.add_argument("--tiny-resolution", type=power_of_two_arg("--tiny-resolution", 16, 1024), default=64,
                   help="resolution of the tiny random generator")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_generate)
    _add_reenact_parsers(sub)
    _add_weights_parser(sub)
    return p


#: What the command line adds to a caught error's message: the flags that fix it (messages from the Python API
#: name arguments, never flags). Keyed by class name; the first class along the exception's MRO with an entry
#: decides. An entry is a hint or a tuple of them, tried in order: the first whose flags the running subcommand
#: has is said, none if no hint fits (a subcommand is never told to pass a flag it does not have).
_FLAG_HINTS = {
    "NoFaceError": "try --detector cnn, --detector rfb or --upsample 2",
    "InversionDivergedError": ("check the --reference / --driving images; on a GPU, try --device cpu",
                               "on a GPU, try --device cpu"),
    "PoseUnavailableError": ("use a trained generator (--checkpoint stylegan3-r-ffhq-1024) or --pose-from none",
                             "use a trained generator (--checkpoint stylegan3-r-ffhq-1024)"),
    "EncoderCheckpointError": "check --encoder, or leave it out to invert by optimisation",
    "SnapshotError": "check --checkpoint / --network",
    "WeightsUnavailableError": ("or leave --checkpoint / --encoder out to run without downloads",
                                "or leave --checkpoint out to run without downloads"),
    "ImageReadError": "check --reference",
    "VideoReadError": "check --driving / --co-driving",
    "FrameFormatError": "check --driving / --co-driving",
    "VideoWriteError": "check --out",
}

#: WeightsUnavailableError's hint by the missing file's name (its ``name``, else its message): the flag that
#: avoids that file, tried before the hints of :data:`_FLAG_HINTS` (which names not listed get).
_WEIGHTS_HINTS = {
    "bisenet": "or use --regions landmarks, or --regions auto, which takes BiSeNet only when its weights are cached",
    "restyle": "or leave --encoder out to invert by optimisation",
    # not "a tiny random generator": demo without --checkpoint fits a generator to its photo instead
    "stylegan3": "or leave --checkpoint out to run without downloads (and without a face model)",
    # pose encoding falls back to its w-space P_r without PFLD: only the landmarks of --detector rfb need it
    "pfld": "or use --detector hog (dlib's landmarks, no download)",
    "rfb": "or use --detector hog (dlib's landmarks, no download)",
}

#: API argument spellings in a caught error's message (``detector='cnn'``) and the CLI's for them, by class name:
#: the command line names its flags instead, once (not the API's and then its own hint). A class's rules apply
#: together, and only where the running subcommand has every flag they write.
_CLI_SPELLINGS = {
    "NoFaceError": ((r"landmarks\(\.\.\., ([^()]*)\)", r"\1"), (r"\bdetector='(\w+)'", r"--detector \1"),
                    (r"\bupsample=(\d+)", r"--upsample \1"), (r"(--detector \w+), (--upsample)", r"\1 \2")),
    "VideoReadError": ((r"pass strict=False to only warn", "leave out --strict to only warn"),),
}

_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _has_flags(text: str, flags) -> bool:
    """Whether every ``--flag`` named in ``text`` is in ``flags`` (None: any flag is)."""
    return flags is None or set(_FLAG.findall(text)) <= set(flags)


def _subcommand_flags(parser: argparse.ArgumentParser, command: str | None) -> frozenset[str] | None:
    """The option strings (hidden aliases included) of ``parser``'s subcommand ``command``; None if it has none."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return frozenset(action.choices[command]._option_string_actions)
    return None


def _hint(e: BaseException, msg: str, flags=None) -> str | None:
    """The flags that fix ``e`` (see :data:`_FLAG_HINTS`) among ``flags`` (a subcommand's; None: any), or None."""
    names = [c.__name__ for c in type(e).__mro__]
    hints = next(((h,) if isinstance(h, str) else h for h in map(_FLAG_HINTS.get, names) if h), ())
    if "WeightsUnavailableError" in names:
        for text in (getattr(e, "name", None), msg):  # the file's name first; the message names it too
            hint = next((h for key, h in _WEIGHTS_HINTS.items() if text and key in str(text).lower()), None)
            if hint:
                hints = (hint,) + tuple(hints)
                break
    return next((h for h in hints if _has_flags(h, flags)), None)


def _cli_spelling(e: BaseException, msg: str, flags=None) -> str:
    """``msg`` with the API's argument spellings replaced by the CLI's flags (see :data:`_CLI_SPELLINGS`), where
    the subcommand has those flags (``flags``; None: any)."""
    for rules in (_CLI_SPELLINGS.get(c.__name__, ()) for c in type(e).__mro__):
        if not _has_flags(" ".join(repl for _, repl in rules), flags):
            continue  # the API's spelling stays: true, where a flag for it would not be
        for pattern, repl in rules:
            msg = re.sub(pattern, repl, msg)
    return msg


#: Built-in exception families that the package raises for bad input or an unusable environment; their message is
#: printed as is. Anything else reaching :func:`main` is a bug in v2s-nb, printed as one line asking for a report.
_EXPECTED = (ValueError, RuntimeError, OSError, MemoryError, LookupError, TypeError, ArithmeticError, ImportError)


def error_line(e: BaseException, flags=None) -> str:
    """``error: <message> (<flag hint>)`` on one line, for any exception (see :data:`_FLAG_HINTS`); ``flags``:
    the running subcommand's options (:func:`_subcommand_flags`), the only ones the line may name (None: any)."""
    from .errors import V2SError

    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        msg = e.args[0]  # str(KeyError) is the repr of its argument, quotes and escaped newlines included
    else:
        msg = str(e)
    msg = " ".join(part.strip() for part in msg.splitlines() if part.strip()) or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in msg:
        msg += f": {e.filename}"
    if not isinstance(e, (V2SError,) + _EXPECTED):
        return f"error: unexpected {type(e).__name__}: {msg} (a bug in v2s-nb: please report it with the command)"
    msg = _cli_spelling(e, msg, flags)
    hint = _hint(e, msg, flags)
    if hint and not any(flag in msg for flag in _FLAG.findall(hint)):
        msg += f" ({hint})"
    return f"error: {msg}"


_PATH_ARGS = ("out", "reference", "driving", "co_driving", "checkpoint", "encoder")


def _expand_user(args) -> None:
    """``~`` in path arguments, expanded once for every use: the shell leaves ``--out=~/x.mp4`` as it is, and a
    path expanded in one place but not another put the outputs in two folders (one of them named ``~``)."""
    for name in _PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, name, os.path.expanduser(value))


def _interrupted_line(command: str | None) -> str:
    if command in ("reenact", "demo"):
        # true of the demo's several outputs too: they are moved into place together, at the very end
        return ("interrupted: finished stages are kept, with the finished batches of a video's inversion and pose "
                "encoding and PTI's last saved state (saved every minute); a rerun resumes from them; no output was "
                "written (those of a previous run are as they were)")
    return "interrupted: no output was written (one of a previous run is as it was)"


@contextlib.contextmanager
def _warnings_as_lines():
    """Warnings printed as one ``warning: ...`` line each, once per text: Python's form showed the package's file
    and a line of its source, and the same warning raised from several places came several times."""
    from .errors import V2SWarning

    said = set()

    def line(message, category, filename, lineno, line=None):
        text = str(message).strip()
        if (category, text) in said:
            return ""
        said.add((category, text))
        kind = "" if issubclass(category, V2SWarning) else f" ({category.__name__})"
        return f"warning{kind}: {text}\n"

    before = warnings.formatwarning  # only the text changes: warnings recorded by a caller (tests) stay recorded
    warnings.formatwarning = line
    try:
        yield
    finally:
        warnings.formatwarning = before


def main(argv=None) -> int:
    with _warnings_as_lines():
        return _main(argv)


def _main(argv=None) -> int:
    parser = args = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)  # inside: Ctrl-C while torch is imported for a check gave a traceback
        _expand_user(args)
        _resolve_sources(args)
        return args.func(args)
    except KeyboardInterrupt:
        print(_interrupted_line(getattr(args, "command", None)), file=sys.stderr)
        return 130
    except Exception as e:  # one line, never a traceback (the package's errors and the built-ins it raises)
        flags = _subcommand_flags(parser, getattr(args, "command", None)) if parser is not None else None
        print(error_line(e, flags), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
