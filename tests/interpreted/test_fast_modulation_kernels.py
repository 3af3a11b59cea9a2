"""fast_modulation's kernels (modulation factors, ToRGB) against the plain ops, under Triton's interpreter."""

import torch

from kernel_checks import modulation_kernel_error


def test_modulation_kernels_match_the_plain_ops():
    assert modulation_kernel_error("cpu", torch.float32) < 1e-5
