"""The CPU form of the filtered leaky ReLU (ops.filtered_lrelu on CPU: gain on the upsampling filter, channel chunks,
the leaky-ReLU-and-clamp Function) against the plain formulation written out step by step: forward and gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from v2s_nb.stylegan3 import ops


plain_filtered_lrelu = ops.filtered_lrelu_stepwise  # the formulation the CPU form replaces


def _filters(dtype):
    fu = ops.design_lowpass_filter(12, cutoff=5.0, width=6.0, fs=40.0).to(dtype)
    fd2 = ops.design_lowpass_filter(12, cutoff=5.0, width=6.0, fs=40.0, radial=True).to(dtype)
    return fu, fd2


# (input size, padding) pairs as StyleGAN3-R's layers have them: up 2 with a separable 12-tap filter, then a
# 2-D radial (non-critical layers) or separable (critical) 12-tap down filter, or no filters at all (ToRGB).
CASES = {
    "radial down": dict(size=14, padding=[11, 10, 11, 10], up=2, down=2, down_2d=True, slope=0.2, gain=math.sqrt(2)),
    "separable down, cropping pad": dict(size=30, padding=[-9, -10, -9, -10], up=2, down=2, down_2d=False, slope=0.2,
                                         gain=math.sqrt(2)),
    "no filters (ToRGB)": dict(size=10, padding=[0, 0, 0, 0], up=1, down=1, down_2d=None, slope=1, gain=1),
}


def _args(case, dtype):
    fu, fd2 = _filters(dtype)
    c = CASES[case]
    if c["down_2d"] is None:
        fu = fd = None
    else:
        fd = fd2 if c["down_2d"] else fu
    return fu, fd, dict(up=c["up"], down=c["down"], padding=c["padding"], gain=c["gain"], slope=c["slope"])


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("chunk_bytes", [64 << 20, 1])  # one chunk; chunks of 16 channels (40 = 16 + 24)
def test_cpu_filtered_lrelu_matches_plain(case, chunk_bytes, monkeypatch):
    monkeypatch.setattr(ops, "CHUNK_BYTES", chunk_bytes)
    g = torch.Generator().manual_seed(0)
    fu, fd, kw = _args(case, torch.float32)
    size = CASES[case]["size"]
    x = (torch.randn(2, 40, size, size, generator=g) * 3).requires_grad_(True)
    b = (torch.randn(40, generator=g) * 0.5).requires_grad_(True)
    clamp = 2.5  # low enough that a good share of the samples is clamped
    new = ops.filtered_lrelu(x, fu, fd, b, clamp=clamp, **kw)
    old = plain_filtered_lrelu(x, fu, fd, b, clamp=clamp, **kw)
    assert new.shape == old.shape
    torch.testing.assert_close(new, old, atol=2e-6, rtol=1e-5)
    with torch.no_grad():  # the in-place form without autograd
        torch.testing.assert_close(ops.filtered_lrelu(x, fu, fd, b, clamp=clamp, **kw), old, atol=2e-6, rtol=1e-5)
    up = torch.randn(old.shape, generator=g)
    gx_new, gb_new = torch.autograd.grad(new, (x, b), up)
    gx_old, gb_old = torch.autograd.grad(old, (x, b), up)
    torch.testing.assert_close(gx_new, gx_old, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gb_new, gb_old, atol=1e-4, rtol=1e-5)
    assert gx_old.abs().max() > 0 and (gx_old == 0).float().mean() < 0.9  # the case tests something


def test_cpu_filtered_lrelu_gradcheck_float64(monkeypatch):
    """Exact gradients (float64, finite differences) through the chunked chain, clamp included."""
    monkeypatch.setattr(ops, "CHUNK_BYTES", 1)
    g = torch.Generator().manual_seed(1)
    fu, fd, kw = _args("radial down", torch.float64)
    x = (torch.randn(1, 18, 6, 6, generator=g, dtype=torch.float64)).requires_grad_(True)
    b = (torch.randn(18, generator=g, dtype=torch.float64) * 0.1).requires_grad_(True)
    kw["padding"] = [11, 10, 11, 10]
    assert torch.autograd.gradcheck(lambda x, b: ops.filtered_lrelu(x, fu, fd, b, clamp=0.8, **kw), (x, b))


@pytest.mark.parametrize("slope,clamp", [(0.2, 1.5), (0.2, None), (1, 1.5)])
def test_leaky_relu_clamp_function(slope, clamp):
    """The Function's forward and backward equal autograd's leaky_relu -> clamp (float32), and gradcheck (float64)
    away from the kinks."""
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(3, 5, 17, 19, generator=g) * 4).requires_grad_(True)
    y = ops._LeakyReluClamp.apply(x, slope, clamp)
    ref = F.leaky_relu(x, slope) if slope != 1 else x
    ref = ref.clamp(-clamp, clamp) if clamp is not None else ref * 1
    torch.testing.assert_close(y, ref, atol=0, rtol=0)
    up = torch.randn(x.shape, generator=g)
    torch.testing.assert_close(torch.autograd.grad(y, x, up)[0], torch.autograd.grad(ref, x, up)[0], atol=0, rtol=0)
    xd = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    xd = xd + 0.1 * xd.sign()  # keep finite differences off the kink at 0
    if clamp is not None:  # ... and off the clamp's edges
        for e in ([clamp, -clamp] if slope == 1 else [clamp, -clamp / slope]):
            xd = torch.where((xd - e).abs() < 0.05, xd + 0.1, xd)
    xd.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: ops._LeakyReluClamp.apply(v, slope, clamp), (xd,))
