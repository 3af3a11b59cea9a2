"""``v2s-nb`` command line: the notebook toolkit's jobs in batch.

    v2s-nb generate --network stylegan3-r-ffhq-1024 --seeds 0-7 --out grid.png
    v2s-nb generate --seeds 0-15 --out grid.png         # tiny random generator (not a face model)
"""

from __future__ import annotations

import argparse
import sys
import time


def parse_seeds(text: str) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11]."""
    seeds = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            lo, hi = part.split("-", 1) if not part.startswith("-") else (None, None)
            if lo is None or int(hi) < int(lo):
                raise argparse.ArgumentTypeError(f"bad seed range {part!r}: use 'a-b' with a <= b")
            seeds.extend(range(int(lo), int(hi) + 1))
        else:
            seeds.append(int(part))
    if not seeds:
        raise argparse.ArgumentTypeError("no seeds given")
    return seeds


def _device(name: str | None):
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return dev


def cmd_generate(args) -> int:
    import numpy as np
    import torch

    from .images import image_grid, save_image, to_uint8
    from .stylegan3 import load_generator, set_input_transform, tiny_generator

    device = _device(args.device)
    if args.network:
        G = load_generator(args.network, device=device)
    else:
        G = tiny_generator(args.cfg, resolution=args.tiny_resolution).to(device)
        print(f"note: no --network given; using a tiny RANDOM-WEIGHT {args.cfg} generator "
              f"({G.img_resolution}px). Its images are noise-like patterns, not faces.", file=sys.stderr)
    if args.translate or args.rotate:
        set_input_transform(G, args.translate[0], args.translate[1], args.rotate)
    seeds = parse_seeds(args.seeds)
    images = []
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    with torch.no_grad():
        for start in tqdm(range(0, len(seeds), args.batch), desc="generate", unit="batch", disable=args.quiet):
            chunk = seeds[start: start + args.batch]
            z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(G.z_dim) for s in chunk])).float().to(device)
            c = torch.zeros([len(chunk), G.c_dim], device=device) if G.c_dim else None
            ws = G.mapping(z, c, truncation_psi=args.trunc)
            images.append(to_uint8(G.synthesis(ws)))
    images = np.concatenate(images)
    grid = image_grid(images, cols=args.cols)
    path = save_image(args.out, grid)
    dt = time.perf_counter() - t0
    print(f"wrote {path} ({len(seeds)} images, {grid.shape[1]}x{grid.shape[0]} px, {dt:.2f} s on {device})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="v2s-nb", description="Video2StyleGAN notebook toolkit, batch jobs.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="render an image grid from seeds")
    g.add_argument("--network", help="snapshot .pkl / .safetensors path, URL, or short name "
                                     "(e.g. stylegan3-r-ffhq-1024). Default: tiny random generator")
    g.add_argument("--seeds", default="0-7", help="seeds, e.g. '0-7' or '1,5,9' (default 0-7)")
    g.add_argument("--trunc", type=float, default=1.0, help="truncation psi (default 1)")
    g.add_argument("--translate", type=float, nargs=2, default=(0.0, 0.0), metavar=("TX", "TY"),
                   help="input translation in image widths (positive: right / down)")
    g.add_argument("--rotate", type=float, default=0.0, help="input rotation in degrees (positive: counter-clockwise)")
    g.add_argument("--out", default="out/grid.png", help="output image path (default out/grid.png)")
    g.add_argument("--cols", type=int, default=None, help="grid columns (default: square)")
    g.add_argument("--batch", type=int, default=4, help="images per forward pass")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    g.add_argument("--cfg", default="R", choices=["R", "T"], help="architecture of the tiny random generator")
    g.add_argument("--tiny-resolution", type=int, default=64, help="resolution of the tiny random generator")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_generate)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
