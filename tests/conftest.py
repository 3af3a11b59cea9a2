"""Test helpers: where the test fixtures live, a CUDA marker, reproducible w codes, and benchmark scripts as
modules."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"  # data made for the tests; tests/fixtures/README.md says how
SG3_FIXTURES = FIXTURES / "stylegan3_official_tiny"
# tests/interpreted/ needs a process started with TRITON_INTERPRET=1; test_triton_interpreter.py starts one.
collect_ignore_glob = [] if os.environ.get("TRITON_INTERPRET") == "1" else ["interpreted/*"]


@pytest.fixture(scope="session")
def sg3_fixture_dir():
    assert SG3_FIXTURES.is_dir(), f"test fixtures missing at {SG3_FIXTURES} (they are part of the repository)"
    return SG3_FIXTURES


# GPU tests: marked ``gpu`` (``pytest -m gpu`` runs just them on a CUDA machine) and skipped without a CUDA GPU.
CUDA_MARKS = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def requires_cuda(test):
    """Decorator of a GPU test (:data:`CUDA_MARKS`; a module uses ``pytestmark = CUDA_MARKS``)."""
    for mark in CUDA_MARKS:
        test = mark(test)
    return test


class KernelTooBig:
    """Stands in for a Triton kernel that needs more shared memory than the GPU has: each launch raises
    OutOfResources, as Triton's first launch of such a kernel does (when it loads it, before any work); counted in
    ``launches``."""

    def __init__(self):
        self.launches = 0

    def __getitem__(self, grid):
        from v2s_nb.stylegan3.fast_conv import OutOfResources

        def launch(*args, **kwargs):
            self.launches += 1
            raise OutOfResources(136 * 1024, 64 * 1024, "shared memory")
        return launch


def mapped_ws(G, n, seed, truncation_psi=0.7):
    """n w+ codes [n, num_ws, w_dim] from G's mapping on G's device, reproducible by ``seed`` (CPU generator)."""
    g = torch.Generator().manual_seed(seed)
    device = next(G.parameters()).device
    with torch.no_grad():
        return G.mapping(torch.randn(n, G.z_dim, generator=g).to(device), None, truncation_psi=truncation_psi)


def load_benchmark(name):
    """benchmarks/``name``.py loaded as a module (the scripts are not a package), for tests of their pure parts."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
