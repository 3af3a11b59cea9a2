"""Helpers shared by the benchmark scripts: import the package from this checkout, sync, CUDA-event timing, peak
memory."""

import resource
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))


def sync(device):
    """Wait for queued GPU work, so host timers measure it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device):
    """CUDA: peak bytes allocated by torch; CPU: peak resident set of the process so far (GiB)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB (Linux)


def cuda_ms(fn, reps=10):
    """Milliseconds per call of ``fn`` on the current CUDA stream (CUDA events; one warm-up call first)."""
    fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / reps
