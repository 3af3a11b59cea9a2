"""Test helpers: where the test fixtures live, a CUDA marker, and a check of Triton's interpreter."""

import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"  # data made for the tests; tests/fixtures/README.md says how
SG3_FIXTURES = FIXTURES / "stylegan3_official_tiny"


@pytest.fixture(scope="session")
def sg3_fixture_dir():
    assert SG3_FIXTURES.is_dir(), f"test fixtures missing at {SG3_FIXTURES} (they are part of the repository)"
    return SG3_FIXTURES


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# A kernel with a loop whose bound is a runtime argument, as ours have. Triton 3.6's interpreter can't run it under
# NumPy 2 (it takes int() of a one-element array); 3.9's can.
_INTERPRETER_PROBE = """
import torch
import triton
import triton.language as tl


@triton.jit
def probe(x_ptr, n, B: tl.constexpr):
    acc = tl.zeros([B], dtype=tl.float32)
    for i in tl.range(0, n, B):
        acc += tl.load(x_ptr + i + tl.arange(0, B), mask=(i + tl.arange(0, B)) < n, other=0.0)
    tl.store(x_ptr + tl.arange(0, B), acc)


x = torch.ones(32)
probe[(1,)](x, 32, B=16)
assert float(x[0]) == 2.0
"""


@functools.lru_cache(maxsize=None)
def _interpreter_problem():
    """None if Triton's interpreter runs the probe kernel, else what went wrong (last line of the error)."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "probe.py"  # (triton.jit reads the kernel's source from its file)
        script.write_text(_INTERPRETER_PROBE)
        env = dict(os.environ, TRITON_INTERPRET="1")
        r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["no output"])[-1]


def skip_unless_triton_interpreter_works():
    """Skip the calling test when Triton's interpreter can't run kernels like ours (e.g. Triton 3.6 with NumPy 2)."""
    problem = _interpreter_problem()
    if problem is not None:
        pytest.skip(f"Triton's interpreter can't run these kernels here ({problem}); Triton 3.9 can")


def mapped_ws(G, n, seed, truncation_psi=0.7):
    """n w+ codes [n, num_ws, w_dim] from G's mapping, reproducible by ``seed`` (CPU generator)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return G.mapping(torch.randn(n, G.z_dim, generator=g), None, truncation_psi=truncation_psi)
