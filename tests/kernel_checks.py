"""Checks of the fast path's kernels shared by the CUDA tests and the Triton-interpreter tests (tests/interpreted/).

Not a conftest: the interpreter's tests run in their own process, where ``conftest`` names tests/interpreted's."""

import math

import torch

from v2s_nb.stylegan3 import fast_modulation, ops


def modulation_kernel_error(device, dtype):
    """The largest relative error of the modulation and ToRGB kernels against the plain ops on ``device`` (CUDA, or
    the CPU under Triton's interpreter: tests/interpreted/test_fast_modulation_kernels.py), inputs in ``dtype``."""
    worst = 0.0
    g = torch.Generator().manual_seed(0)
    # Modulation factors: odd sizes, more samples than one 16-row block, more channels than one 32-wide block.
    for n, c_in, c_out in [(1, 5, 3), (3, 37, 21), (17, 64, 70)]:
        w = torch.randn(c_out, c_in, 3, 3, generator=g).to(device)
        styles = (torch.randn(n, c_in, generator=g) * 0.3 + 1).to(device)
        ema = torch.tensor(2.5, device=device)
        kernel = ops.shared_kernel(w)
        energy = ops.kernel_tap_energy(kernel)
        ref_scale, ref_d = ops.modulation_factors(kernel, styles, True, ema.rsqrt(), energy)
        with torch.no_grad():
            assert fast_modulation.modulation_applies(styles, energy, ema)
            scale, d = fast_modulation.modulation_factors(styles, energy, ema)
        for a, b in [(scale, ref_scale), (d, ref_d)]:
            assert a.shape == b.shape and a.dtype == torch.float32, (a.shape, b.shape)
            worst = max(worst, float(((a - b).abs() / b.abs().clamp_min(1e-6)).max()))
    # ToRGB: a channel slice of a padded buffer, as the previous layer writes it; clamp reached by some pixels.
    for n, c_in, c_out, h in [(2, 12, 3, 9), (1, 40, 1, 17)]:
        buf = torch.randn(n, c_in + 4, h, h, generator=g).to(device, dtype)
        x = buf[:, :c_in]
        w = torch.randn(c_out, c_in, 1, 1, generator=g).to(device)
        styles = torch.randn(n, c_in, generator=g).to(device)
        ema = torch.tensor(0.8, device=device)
        bias = torch.randn(c_out, generator=g).to(device)
        y = ops.modulated_conv2d(x.float(), w, styles * (1 / math.sqrt(c_in)), demodulate=False,
                                 input_gain=ema.rsqrt())
        ref = (y + bias.reshape(1, -1, 1, 1)).clamp(-1.5, 1.5) * 0.25
        assert float((y.abs() > 1.5).float().mean()) > 0.05  # the clamp matters
        with torch.no_grad():
            assert fast_modulation.torgb_applies(x, w, styles)
            out = fast_modulation.torgb(x, w, styles, ema, bias, clamp=1.5, out_gain=0.25)
        assert out.dtype == torch.float32 and out.shape == ref.shape
        worst = max(worst, float((out - ref).abs().max() / ref.abs().max()))
    # Under autograd neither applies (the plain ops carry the gradient).
    s = styles.clone().requires_grad_(True)
    assert not fast_modulation.modulation_applies(s, energy, ema)
    assert not fast_modulation.torgb_applies(x, w, s)
    return worst
