"""Pure-PyTorch StyleGAN3 (R and T) that loads NVIDIA's snapshots without running their code.

Main entry points:

* :func:`load_generator` — an NVIDIA snapshot pickle (path, URL or short name such as
  ``'stylegan3-r-ffhq-1024'``) or a v2s_nb ``.safetensors`` checkpoint -> :class:`Generator`.
* :func:`tiny_generator` — a small random-weight generator for tests and previews (labelled random).
* :func:`set_input_transform` / :func:`input_transform` — translation + rotation of the Fourier input.
* :class:`GraphedSynthesis` — ``G.synthesis`` replayed from a CUDA graph (no launch overhead at small batches).
* :class:`GraphedTrainingSynthesis` — the same for gradient steps: forward and backward replayed, inside autograd.
* :mod:`~v2s_nb.stylegan3.fast_config` — the fast (CUDA) path's tuning knobs: ``fast_config.override(...)``.
* :mod:`~v2s_nb.stylegan3.precompile` — the fast path's Triton kernels compiled in parallel processes before a stage
  needs them (the stages call it; ``V2S_NB_PRECOMPILE_WORKERS=0`` turns it off).
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import fast_config
from .checkpoint import is_v2s_checkpoint, load_checkpoint, save_generator
from .graphs import GraphedSynthesis, GraphedTrainingSynthesis
from .networks import CONFIGS, Generator, SynthesisNetwork, build_generator, tiny_generator
from .snapshot import SnapshotError, UnsafePickleError, generator_from_snapshot, read_snapshot
from .transform import forward_matrix, input_transform, set_input_transform

__all__ = [
    "CONFIGS", "Generator", "GraphedSynthesis", "GraphedTrainingSynthesis", "SnapshotError", "SynthesisNetwork",
    "UnsafePickleError",
    "build_generator", "fast_config", "forward_matrix", "input_transform", "load_generator", "save_generator", "set_input_transform",
    "tiny_generator",
]


def load_generator(source, device=None, dtype=torch.float32) -> Generator:
    """Load a StyleGAN3 generator.

    Args:
        source: a path to an NVIDIA snapshot pickle (``G_ema`` is taken) or to a v2s_nb ``.safetensors``
            checkpoint; an http(s) URL; or a known short name like ``'stylegan3-r-ffhq-1024'`` (downloaded on
            first use into the cache and format-checked, NVIDIA publishes no checksum; see :mod:`v2s_nb.weights`).
        device: where to put the generator (``None``: CPU).
        dtype: parameter dtype (float32; the snapshot's fp16 layers still run in fp16 on CUDA).
    Returns:
        ``Generator`` in eval mode with ``requires_grad`` off (turn it on for fine-tuning).
    Raises:
        FileNotFoundError: the path does not exist.
        SnapshotError / UnsafePickleError: the file is not a readable StyleGAN3 snapshot; the message says what it is.
    """
    from ..weights import KNOWN_FILES, fetch

    src = str(source)
    path = Path(src)
    if not path.exists():
        if "://" in src or src in KNOWN_FILES:
            path = fetch(src)  # downloaded once into the cache (checked against a pinned checksum where one exists)
        else:
            known = ", ".join(k for k in KNOWN_FILES if k.startswith("stylegan3"))
            raise FileNotFoundError(f"generator file not found: {src}. Pass a path, a URL, or one of the known "
                                    f"snapshot names: {known}")
    if path.is_dir():
        raise SnapshotError(f"{path} is a folder; pass the snapshot .pkl or .safetensors file inside it.")
    if is_v2s_checkpoint(path):
        G = load_checkpoint(path)
    else:
        G = generator_from_snapshot(read_snapshot(path), path=path)
    G = G.to(device=device or "cpu", dtype=dtype)
    if G.device.type == "cpu" and G.img_resolution >= CPU_WARN_RESOLUTION:
        import warnings

        from ..errors import SlowDeviceWarning

        warnings.warn(f"a {G.img_resolution} px generator on the CPU: each image takes seconds and preparing a clip "
                      "hours; pass device='cuda' (on Colab: Runtime > Change runtime type > GPU)",
                      SlowDeviceWarning, stacklevel=2)
    return G


#: Generators of this size or larger warn when loaded onto the CPU (a notebook on Colab without a GPU).
CPU_WARN_RESOLUTION = 512
