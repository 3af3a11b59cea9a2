"""Loss scaling for optimising through a generator's fp16 layers.

On CUDA the snapshot's high-resolution layers run in fp16 (as NVIDIA runs them), and so do their gradients. A
per-image mean loss at 1024² gives per-pixel gradients around 1e-7, below fp16's normal range (6e-5): without
scaling most of them flush to zero or keep a bit or two. :func:`grad_scaler` returns PyTorch's dynamic loss
scaler, on only where fp16 layers are in the path, so optimisers see the same gradients as in float32. Adam is
invariant to the scale, so results don't depend on it.
"""

from __future__ import annotations

import torch


def uses_fp16(G, force_fp32: bool = False) -> bool:
    """Whether ``G.synthesis`` runs any layer in fp16 on its device (CUDA and a snapshot with fp16 layers)."""
    device = G.device
    return (not force_fp32 and device.type == "cuda"
            and any(layer.compute_dtype(device) == torch.float16 for layer in G.synthesis.layers()))


def grad_scaler(G, force_fp32: bool = False) -> torch.amp.GradScaler:
    """``torch.amp.GradScaler`` for optimising through ``G``: enabled where fp16 layers are in the path (starting
    at 2**16, halved and the step skipped whenever a gradient overflows), a pass-through otherwise.

    Use: ``scaler.scale(loss).backward(); scaler.step(opt); scaler.update()``.
    """
    return torch.amp.GradScaler(G.device.type, init_scale=2.0 ** 16, enabled=uses_fp16(G, force_fp32))
