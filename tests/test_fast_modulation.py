"""The one-launch modulation factors and ToRGB (fast_modulation) against the plain ops.

Checked on CUDA where present, and on the CPU through Triton's interpreter (tests/interpreted/, slow).
"""

import pytest
import torch

from conftest import requires_cuda
from kernel_checks import modulation_kernel_error
from v2s_nb.stylegan3 import fast_modulation


def test_kernels_stay_off_on_the_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, s = torch.randn(1, 4, 3, 3), torch.randn(1, 4)
    assert not fast_modulation.modulation_applies(s, torch.ones(4, 2), torch.ones([]))
    assert not fast_modulation.torgb_applies(x, torch.ones(3, 4, 1, 1), s)


def test_kernels_follow_the_config(monkeypatch):
    from v2s_nb.stylegan3 import fast_config

    if not fast_modulation.HAVE_TRITON:
        pytest.skip("Triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # as if the kernels could run on these CPU tensors (none launched)
    x, s = torch.randn(1, 4, 3, 3), torch.randn(1, 4)
    with fast_config.override(modulation_kernels=True):
        assert fast_modulation.modulation_applies(s, torch.ones(4, 2), torch.ones([]))
        assert fast_modulation.torgb_applies(x, torch.ones(3, 4, 1, 1), s)
        # the one pass has no backward: under autograd, a bias that requires grad (alone) keeps it off
        assert fast_modulation.torgb_applies(x, torch.ones(3, 4, 1, 1), s, torch.zeros(3))
        assert not fast_modulation.torgb_applies(x, torch.ones(3, 4, 1, 1), s, torch.zeros(3, requires_grad=True))
    with fast_config.override(modulation_kernels=False):
        assert not fast_modulation.modulation_applies(s, torch.ones(4, 2), torch.ones([]))
        assert not fast_modulation.torgb_applies(x, torch.ones(3, 4, 1, 1), s)


@requires_cuda
def test_modulation_kernels_on_gpu():
    assert modulation_kernel_error("cuda", torch.float32) < 1e-5
    assert modulation_kernel_error("cuda", torch.float16) < 1e-5  # fp16 input, float32 arithmetic


@requires_cuda
def test_synthesis_runs_them_on_gpu(monkeypatch):
    """T synthesis on the fast path goes through both kernels (no silent fall back to the small ops): one
    modulation launch per 3x3 layer and one ToRGB, with the plain path's images (test_fast_path checks the
    tolerances on more configurations)."""
    from v2s_nb.stylegan3 import build_generator

    G = build_generator("T", resolution=256, channel_scale=0.25, device="cuda")  # (its calibration runs the layers)
    calls = {"modulation_factors": 0, "torgb": 0}
    for name in calls:
        original = getattr(fast_modulation, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(fast_modulation, name, counted)
    ws = G.mapping(torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(2)).cuda(), None)
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # float32 against float32
    try:
        with torch.no_grad():
            a = G.synthesis(ws, impl="fast", force_fp32=True)
            b = G.synthesis(ws, impl="plain", force_fp32=True)
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    three_by_three = sum(layer.conv_kernel == 3 for layer in G.synthesis.layers())
    assert calls == {"modulation_factors": three_by_three, "torgb": 1}
    assert a.dtype == torch.float32 and float((a - b).abs().max()) <= 1e-4
