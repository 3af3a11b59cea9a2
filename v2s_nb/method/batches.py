"""Batches of frames that fit the GPU: halved when a batch runs out of GPU memory.

The sequence optimisations (pose encoding, inversion by optimisation) take 8 frames a batch by default: one backward
pass through a 1024 px generator then serves 8 frames, more than a 16 GB GPU (a T4 on Colab, a V100) holds
(docs/performance.md has the peaks). Rather than stopping a long run, the batch that ran out is redone with half the
frames, with one warning, and every later batch keeps that size; the result is the one ``batch_size=<smaller>`` gives
from that frame on. Only at one frame a batch does running out stop the run, with :class:`GPUMemoryError`.

Usage, in a loop over consecutive batches::

    size = HalvingBatch(batch_size, "pose encoding", device)
    while start < n:
        try:
            part = optimise(start, start + size.frames)
        except Exception as exc:
            if not out_of_memory(exc):
                raise
            part = None  # leaving the except block frees the failed batch's tensors (its traceback held them)
        if part is None:
            size.halve()
            continue
        ...
"""

from __future__ import annotations

import gc
import warnings

import torch

from ..errors import FallbackWarning, V2SError
from ..stylegan3.graphs import indexed_cuda_device


class GPUMemoryError(V2SError, torch.cuda.OutOfMemoryError):
    """One frame a batch still needs more GPU memory than is free (also a ``torch.cuda.OutOfMemoryError``)."""


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the GPU running out of memory (PyTorch's ``OutOfMemoryError``)."""
    return isinstance(exc, torch.cuda.OutOfMemoryError)


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2 ** 30:.1f} GiB"


def _memory_note(device) -> str:
    """' (this GPU: 15.6 GiB, 3.2 free)' for a CUDA device, '' elsewhere; where the process is capped below the
    card (``torch.cuda.set_per_process_memory_fraction``), the cap and what is free under it."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return ""
    device = indexed_cuda_device(device)
    try:
        free, total = torch.cuda.mem_get_info(device)
        fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda d: 1.0)(device)
    except RuntimeError:
        return ""
    if fraction < 1:
        cap = fraction * total
        free = max(0, min(free, cap - torch.cuda.memory_reserved(device)))
        return (f" (this process may use {_gib(cap)} of this GPU's {_gib(total)}, set by "
                f"torch.cuda.set_per_process_memory_fraction; {_gib(free)} free)")
    return f" (this GPU: {_gib(total)}, {_gib(free)} free)"


def batch_steps(start: int, n: int, frames: int, steps_first: int, steps_next: int) -> list[int]:
    """The steps of each batch of ``frames`` frames from frame ``start`` to ``n``: ``steps_first`` for the batch that
    starts at frame 0, ``steps_next`` for the warm-started ones."""
    return [steps_first if s == 0 else steps_next for s in range(start, n, frames)]


class HalvingBatch:
    """Frames per batch for ``what`` (e.g. 'pose encoding'), starting at ``frames`` and halved by :meth:`halve`.

    ``halvings`` counts the halvings so far; ``sizes`` lists every size tried, first to last. ``stacklevel``: the
    warning's, as seen from the function that runs the loop (2: that function's caller; one more per decorator)."""

    def __init__(self, frames: int, what: str, device, stacklevel: int = 2):
        self.frames = int(frames)
        self.what = what
        self.device = device
        self.stacklevel = stacklevel
        self.sizes = [self.frames]

    @property
    def halvings(self) -> int:
        return len(self.sizes) - 1

    def halve(self) -> None:
        """After a batch ran out of GPU memory: free what the failed try left, then halve the frames a batch (one
        :class:`~v2s_nb.errors.FallbackWarning`), or raise :class:`GPUMemoryError` at one frame a batch."""
        gc.collect()  # the failed try's tensors may sit in reference cycles (autograd graphs, optimiser states)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        note = _memory_note(self.device)
        if self.frames <= 1:
            raise GPUMemoryError(
                f"{self.what} ran out of GPU memory with one frame a batch{note}. Free the GPU memory other "
                "objects hold (del them, then torch.cuda.empty_cache(); restart the runtime if that is not enough), "
                "close other processes that use the GPU, or use a GPU with more memory.")
        old, self.frames = self.frames, self.frames // 2
        self.sizes.append(self.frames)
        warnings.warn(f"{self.what}: {old} frames a batch need more GPU memory than is free{note}; going on with "
                      f"{self.frames} (batch_size={self.frames} starts there and skips the failed try)",
                      FallbackWarning, stacklevel=self.stacklevel + 1)
