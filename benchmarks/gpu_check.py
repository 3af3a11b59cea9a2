"""On a CUDA device: the snapshot fixtures reproduced on the GPU (fp32), and fp16-vs-fp32 agreement.

    python benchmarks/gpu_check.py [FIXTURES]

FIXTURES: a folder with r64/ and t64/ (network.pkl and reference.npz each); without it only the 1024 px fp16-vs-fp32
agreement of random R and T generators is checked. Needs a CUDA GPU (exit status 2 without one).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (also puts this checkout on sys.path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("fixtures", nargs="?", type=Path, default=None,
                   help="folder of the snapshot fixtures (r64/, t64/ with network.pkl, reference.npz)")
    args = p.parse_args(argv)
    fx = args.fixtures
    if fx is not None and not fx.is_dir():
        p.error(f"fixtures {fx}: no such folder")
    _common.require_cuda(p, "gpu_check.py")
    from v2s_nb.stylegan3 import build_generator, load_generator

    if fx is not None:
        for cfg in ("r64", "t64"):
            ref = np.load(fx / cfg / "reference.npz")
            G = load_generator(fx / cfg / "network.pkl", device="cuda")
            with torch.no_grad():
                img = G.synthesis(torch.from_numpy(ref["ws"]).cuda(), force_fp32=True).cpu().numpy()
                img16 = G.synthesis(torch.from_numpy(ref["ws"]).cuda()).cpu().numpy()
            print(cfg, "fixture fp32 max|diff|", np.abs(img - ref["img"]).max(),
                  " mixed:", np.abs(img16 - ref["img"]).max())
    for cfg in ("R", "T"):
        G = build_generator(cfg, resolution=1024, device="cuda")
        ws = G.mapping(torch.randn(2, 512, device="cuda"), None)
        with torch.no_grad():
            a = G.synthesis(ws, force_fp32=True)
            b = G.synthesis(ws)
        print(cfg, "1024 fp16-vs-fp32 max|diff|", float((a - b).abs().max()), "range", float(a.min()), float(a.max()))


if __name__ == "__main__":
    main()
