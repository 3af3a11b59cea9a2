"""fast_modulation's kernels (modulation factors, ToRGB) against the plain ops, under Triton's interpreter."""

import torch

from kernel_checks import modulation_kernel_error
from triton_interpreter_probe import interpreter_runs_kernels_like_ours  # noqa: F401 (autouse fixture)


def test_modulation_kernels_match_the_plain_ops():
    assert modulation_kernel_error("cpu", torch.float32) < 1e-5
