"""Shared test helpers: where the shared fixtures live, and a CUDA marker."""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("V2S_NB_SHARED", REPO.parent / "shared"))
SG3_FIXTURES = SHARED / "fixtures" / "stylegan3_official_tiny"


@pytest.fixture(scope="session")
def sg3_fixture_dir():
    if not SG3_FIXTURES.is_dir():
        pytest.fail(f"shared fixtures not found at {SG3_FIXTURES}; set V2S_NB_SHARED to the shared/ folder")
    return SG3_FIXTURES


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def mapped_ws(G, n, seed, truncation_psi=0.7):
    """n w+ codes [n, num_ws, w_dim] from G's mapping, reproducible by ``seed`` (CPU generator)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return G.mapping(torch.randn(n, G.z_dim, generator=g), None, truncation_psi=truncation_psi)
