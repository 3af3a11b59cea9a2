"""The one-launch modulation factors and ToRGB (fast_modulation) against the plain ops.

Checked on the CPU through Triton's interpreter (a subprocess with TRITON_INTERPRET=1) and on CUDA where present.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import REPO, requires_cuda, skip_unless_triton_interpreter_works

CHECKS = textwrap.dedent("""
    import math
    import torch
    from v2s_nb.stylegan3 import fast_modulation, ops

    def check(device, dtype):
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
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_modulation_kernels_in_interpreter():
    skip_unless_triton_interpreter_works()
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    script = CHECKS + "\nprint('WORST', check('cpu', torch.float32))\n"
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert float(r.stdout.split("WORST")[1].split()[0]) < 1e-5


def test_kernels_stay_off_on_the_cpu_without_the_interpreter():
    from v2s_nb.stylegan3 import fast_modulation

    x, s = torch.randn(1, 4, 3, 3), torch.randn(1, 4)
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        assert not fast_modulation.modulation_applies(s, torch.ones(4, 2), torch.ones([]))
        assert not fast_modulation.torgb_applies(x, torch.ones(3, 4, 1, 1), s)


@requires_cuda
def test_modulation_kernels_on_gpu():
    namespace = {}
    exec(CHECKS, namespace)
    assert namespace["check"]("cuda", torch.float32) < 1e-5
    assert namespace["check"]("cuda", torch.float16) < 1e-5  # fp16 input, float32 arithmetic


@requires_cuda
def test_synthesis_runs_them_on_gpu(monkeypatch):
    """T synthesis on the fast path goes through both kernels (no silent fall back to the small ops): one
    modulation launch per 3x3 layer and one ToRGB, with the plain path's images (test_fast_path checks the
    tolerances on more configurations)."""
    from v2s_nb.stylegan3 import build_generator, fast_modulation

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
