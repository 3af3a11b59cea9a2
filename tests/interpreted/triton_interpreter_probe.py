"""For the tests in tests/interpreted/: the fast path's Triton kernels on the CPU, through Triton's interpreter.

Triton picks interpreter or compiler when it is imported (its own library functions are decorated then), so these
tests need a process started with TRITON_INTERPRET=1; ``tests/test_triton_interpreter.py`` starts one per module
(``TRITON_INTERPRET=1 python -m pytest tests/interpreted/<module>`` does the same by hand). A run without the
variable does not collect them (tests/conftest.py). Small shapes; each module takes minutes on a CPU.

Each module imports :func:`interpreter_runs_kernels_like_ours`, an autouse fixture; :class:`CountedLaunches`
counts a kernel's launches. (Not a conftest.py: a second
module named ``conftest`` would shadow tests/conftest.py for the ``from conftest import ...`` of the other tests.)
"""

import pytest
import torch


def _probe_kernel():
    """A kernel with a loop whose bound is a runtime argument, as ours have. Triton 3.6's interpreter can't run it
    under NumPy 2 (it takes int() of a one-element array); 3.9's can."""
    import triton
    import triton.language as tl

    @triton.jit
    def probe(x_ptr, n, B: tl.constexpr):
        acc = tl.zeros([B], dtype=tl.float32)
        for i in tl.range(0, n, B):
            acc += tl.load(x_ptr + i + tl.arange(0, B), mask=(i + tl.arange(0, B)) < n, other=0.0)
        tl.store(x_ptr + tl.arange(0, B), acc)

    return probe


@pytest.fixture(scope="session", autouse=True)
def interpreter_runs_kernels_like_ours():
    """Skips every test here where Triton is missing or its interpreter can't run the probe kernel."""
    pytest.importorskip("triton")
    x = torch.ones(32)
    try:
        _probe_kernel()[(1,)](x, 32, B=16)
        problem = None if float(x[0]) == 2.0 else f"the probe kernel summed to {float(x[0])}, not 2"
    except Exception as e:  # noqa: BLE001 - any failure means: these kernels can't be checked this way here
        problem = f"{type(e).__name__}: {e}".splitlines()[0]
    if problem is not None:
        pytest.skip(f"Triton's interpreter can't run these kernels here ({problem}); Triton 3.9 can")


class CountedLaunches:
    """Wraps a Triton kernel (``kernel[grid](...)``) to count its launches into ``counts``: all of them under
    ``key``, those without bounds tests (MASKED=False) under ``key + '_unmasked'``."""

    def __init__(self, kernel, counts, key):
        self.kernel, self.counts, self.key = kernel, counts, key

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.counts[self.key] = self.counts.get(self.key, 0) + 1
            unmasked = self.key + "_unmasked"
            self.counts[unmasked] = self.counts.get(unmasked, 0) + (not kwargs.get("MASKED", True))
            return launch(*args, **kwargs)
        return run
