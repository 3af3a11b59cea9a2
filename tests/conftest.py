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
