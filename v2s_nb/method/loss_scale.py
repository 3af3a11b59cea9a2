"""Loss scaling for optimising through a generator's fp16 layers.

On CUDA the snapshot's high-resolution layers run in fp16 (as NVIDIA runs them), and so do their gradients. A
per-image mean loss at 1024² gives per-pixel gradients around 1e-7, below fp16's normal range (6e-5): without
scaling most of them flush to zero or keep a bit or two. :func:`grad_scaler` returns PyTorch's dynamic loss
scaler, on only where fp16 layers are in the path, so optimisers see the same gradients as in float32. Adam is
invariant to the scale, so results don't depend on it.

:func:`codes_only` keeps a generator's weights out of the gradients while codes are optimised through it;
:class:`HostValues` reads a step's losses back without waiting for the GPU, so the optimisation loops queue the next
step while the GPU works on this one.
"""

from __future__ import annotations

import contextlib

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


@contextlib.contextmanager
def codes_only(G):
    """Within the block ``G``'s parameters don't require grad (their flags are restored after): a loop that optimises
    codes through a generator the caller had set up for fine-tuning would otherwise compute the weights' gradients
    at every step too, and leave them summed in the caller's ``.grad``."""
    flags = [(p, p.requires_grad) for p in G.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield G
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class HostValues:
    """A copy of a small GPU tensor to the host that doesn't wait for the GPU: ``result()`` (a list of floats) waits
    only until the GPU has reached the point where the copy was made. On the CPU, the values at once."""

    def __init__(self, values: torch.Tensor):
        if values.is_cuda:
            self._host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self._host.copy_(values, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host, self._event = values.clone(), None

    def result(self) -> list:
        if self._event is not None:
            self._event.synchronize()
        return [float(v) for v in self._host.float().tolist()]
