"""On a CUDA device: the snapshot fixtures reproduced on the GPU (fp32), and fp16-vs-fp32 agreement."""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from v2s_nb.stylegan3 import build_generator, load_generator  # noqa: E402

fx = Path(sys.argv[1]) if len(sys.argv) > 1 else None
if fx and fx.exists():
    for cfg in ("r64", "t64"):
        ref = np.load(fx / cfg / "reference.npz")
        G = load_generator(fx / cfg / "network.pkl", device="cuda")
        with torch.no_grad():
            img = G.synthesis(torch.from_numpy(ref["ws"]).cuda(), force_fp32=True).cpu().numpy()
            img16 = G.synthesis(torch.from_numpy(ref["ws"]).cuda()).cpu().numpy()
        print(cfg, "fixture fp32 max|diff|", np.abs(img - ref["img"]).max(), " mixed:", np.abs(img16 - ref["img"]).max())
for cfg in ("R", "T"):
    G = build_generator(cfg, resolution=1024, device="cuda")
    ws = G.mapping(torch.randn(2, 512, device="cuda"), None)
    with torch.no_grad():
        a = G.synthesis(ws, force_fp32=True)
        b = G.synthesis(ws)
    print(cfg, "1024 fp16-vs-fp32 max|diff|", float((a - b).abs().max()), "range", float(a.min()), float(a.max()))
