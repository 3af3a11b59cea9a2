"""Test helpers: where the test fixtures live, a CUDA marker, and reproducible w codes."""

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


def mapped_ws(G, n, seed, truncation_psi=0.7):
    """n w+ codes [n, num_ws, w_dim] from G's mapping, reproducible by ``seed`` (CPU generator)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return G.mapping(torch.randn(n, G.z_dim, generator=g), None, truncation_psi=truncation_psi)
