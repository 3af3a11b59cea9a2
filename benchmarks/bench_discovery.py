"""Speed and memory of S-space channel discovery (section 3.4, :func:`v2s_nb.method.local_channels.discover`).

    python benchmarks/bench_discovery.py                      # tiny R generator on the CPU (+ 1024 R if CUDA)
    python benchmarks/bench_discovery.py --setups cuda-1024 --n 16 --batch-size 4 8 --json out.json
    python benchmarks/bench_discovery.py --setups cpu-tiny --n 16

Setups: ``cpu-tiny`` = ``tiny_generator('R', 64)`` on the CPU; ``cuda-1024`` = ``build_generator('R', 1024,
device='cuda')`` (the released architecture, random weights). Masks: template-landmark region masks at the
image size (the work does not depend on what the masks contain). Layers: the default (w+ rows 3-7).

Per row: total time of ``discover(..., cache=False)`` (first call, then the best of ``--repeat`` calls), the
part of it spent in synthesis (one feature-map pass per batch, measured on its own), the time of a cache hit,
and peak memory (CUDA: max allocated by torch during the call; CPU: peak RSS of the process, which includes the
generator and the libraries).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import peak_gib as _peak_gib, sync as _sync  # noqa: E402
from v2s_nb.face.regions import masks_from_landmarks, template_landmarks  # noqa: E402
from v2s_nb.method import local_channels as lc  # noqa: E402
from v2s_nb.stylegan3 import build_generator, tiny_generator  # noqa: E402


def _masks(res, n):
    """Template-face region masks [n, res, res]; numpy ellipses where OpenCV is missing (e.g. a bare GPU box)."""
    try:
        return masks_from_landmarks(np.repeat(template_landmarks(res)[None], n, 0), res)
    except ImportError:
        y, x = (np.mgrid[0:res, 0:res] + 0.5) / res

        def ell(cx, cy, a, b):
            return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1

        m = {"eyes": ell(0.37, 0.46, 0.06, 0.025) | ell(0.63, 0.46, 0.06, 0.025),
             "nose": ell(0.5, 0.56, 0.05, 0.08), "mouth": ell(0.5, 0.72, 0.1, 0.04)}
        m["rest"] = ~(m["eyes"] | m["nose"] | m["mouth"])
        return {k: np.repeat(v[None], n, 0) for k, v in m.items()}


def _generator(setup):
    if setup == "cpu-tiny":
        return tiny_generator("R", 64), torch.device("cpu")
    if setup == "cuda-1024":
        if not torch.cuda.is_available():
            raise SystemExit("cuda-1024 needs a CUDA GPU")
        return build_generator("R", 1024, device="cuda"), torch.device("cuda")
    raise SystemExit(f"unknown setup {setup!r}")


def bench(setup, n, batch_sizes, repeat, chunk_elements):
    t0 = time.perf_counter()
    G, device = _generator(setup)
    build_s = time.perf_counter() - t0
    res = G.img_resolution
    ws = G.mapping(torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(0)).to(device), None)
    masks = _masks(res, n)
    layers = lc.default_layers(G)
    sources = sorted({lc.map_layer(G, layer) for layer in layers}, key=G.synthesis.style_names.index)
    with torch.no_grad():  # warm-up (CUDA context, kernels, allocator) outside the timings
        G.synthesis.feature_maps(ws[:1], sources)
    _sync(device)
    rows = []
    for bs in batch_sizes:
        # synthesis alone (the feature-map passes discover makes)
        _sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            for s in range(0, n, bs):
                G.synthesis.feature_maps(ws[s:s + bs], sources)
        _sync(device)
        synth_s = time.perf_counter() - t

        times = []
        peak = None
        for r in range(1 + repeat):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t = time.perf_counter()
            cs = lc.discover(G, ws, masks, batch_size=bs, progress=False, cache=False, chunk_elements=chunk_elements)
            _sync(device)
            times.append(time.perf_counter() - t)
            peak = _peak_gib(device) if peak is None else max(peak, _peak_gib(device))
        with tempfile.TemporaryDirectory() as tmp:
            lc.discover(G, ws, masks, batch_size=bs, progress=False, cache=tmp, chunk_elements=chunk_elements)
            t = time.perf_counter()
            hit = lc.discover(G, ws, masks, batch_size=bs, progress=False, cache=tmp)
            hit_s = time.perf_counter() - t
            assert hit.from_cache
        row = {"setup": setup, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "threads": torch.get_num_threads(), "resolution": res, "n": n, "batch_size": bs,
               "layers": layers, "channels": [cs.num_channels(layer) for layer in layers],
               "first_s": round(times[0], 3), "best_s": round(min(times[1:] or times), 3),
               "synthesis_s": round(synth_s, 3), "cache_hit_s": round(hit_s, 4), "peak_gib": round(peak, 3),
               "build_s": round(build_s, 1), "selected": {r: sum(v.values()) for r, v in cs.counts().items()}}
        rows.append(row)
        print(f"{setup:9s} {row['device'][:24]:24s} n={n:3d} batch={bs:2d}  first {row['first_s']:8.3f} s  "
              f"best {row['best_s']:8.3f} s  (synthesis {row['synthesis_s']:.3f} s)  cache hit "
              f"{row['cache_hit_s']:.4f} s  peak {row['peak_gib']:.3f} GiB", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setups", nargs="+", default=None, choices=["cpu-tiny", "cuda-1024"],
                    help="default: cpu-tiny, plus cuda-1024 when a GPU is present")
    ap.add_argument("--n", type=_common.positive_int, default=16, help="latents (images)")
    ap.add_argument("--batch-size", type=_common.positive_int, nargs="+", default=[4])
    ap.add_argument("--repeat", type=_common.nonnegative_int, default=1, help="timed calls after the first")
    ap.add_argument("--chunk-elements", type=_common.positive_int, default=lc.DEFAULT_CHUNK_ELEMENTS)
    ap.add_argument("--json", type=Path, help="append the rows to this JSON file")
    args = ap.parse_args(argv)
    if "cuda-1024" in (args.setups or []) and not torch.cuda.is_available():
        ap.error("--setups cuda-1024 needs a CUDA GPU; this PyTorch sees none (CPU-only build or no GPU)")
    setups = args.setups or (["cpu-tiny"] + (["cuda-1024"] if torch.cuda.is_available() else []))
    rows = []
    for setup in setups:
        rows += bench(setup, args.n, args.batch_size, args.repeat, args.chunk_elements)
    if args.json:
        old = json.loads(args.json.read_text()) if args.json.exists() else []
        args.json.write_text(json.dumps(old + rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
