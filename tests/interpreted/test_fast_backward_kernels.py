"""The banded backward kernel of fast_backward (used for fp16 layers on the GPU) under Triton's interpreter: run in
float32 on 64-wide tiles it equals autograd through the plain operator, for every layer of tiny R and T generators
(radial and separable down filters, 2x and 4x upsampling, clamped samples)."""

import torch

from v2s_nb.stylegan3 import fast_backward, ops, tiny_generator
from triton_interpreter_probe import interpreter_runs_kernels_like_ours  # noqa: F401 (autouse fixture)


def test_banded_backward_equals_autograd():
    worst, checked = 0.0, 0
    for cfg in "RT":
        G = tiny_generator(cfg, resolution=32, seed=1, channel_max=4)
        syn = G.synthesis
        ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)), None)
        styles = syn.styles(ws)
        x = syn.input.forward_styles(styles["input"])
        for i, name in enumerate(syn.layer_names[:-1]):
            L = getattr(syn, name)
            y = ops.modulated_conv2d(x, L.weight, styles[name], padding=L.conv_kernel - 1,
                                     input_gain=L.magnitude_ema.rsqrt()).detach()
            clamp = 0.5 if i % 2 else float(L.conv_clamp)  # a small clamp: clamped samples get no gradient
            kw = dict(up=L.up_factor, down=L.down_factor, padding=L.padding, gain=2 ** 0.5, slope=0.2, clamp=clamp)
            yd, bd = y.clone().requires_grad_(True), L.bias.detach().clone().requires_grad_(True)
            out = ops.filtered_lrelu(yd, L.up_filter, L.down_filter, bd, **kw)
            gy = torch.randn(out.shape, generator=torch.Generator().manual_seed(i))
            ga, gba = torch.autograd.grad(out, [yd, bd], gy)
            args = (y, L.up_filter, L.down_filter, L.bias, L.up_factor, L.down_factor, L.padding, 2 ** 0.5, 0.2,
                    clamp, gy)
            assert fast_backward.banded_filtered_lrelu_backward(*args) is None  # float32: not in BANDED_FORMS
            res = fast_backward.banded_filtered_lrelu_backward(*args, tiles=(64,))
            if res is not None:
                checked += 1
                worst = max(worst, float((ga - res[0]).abs().max() / ga.abs().max()),
                            float((gba - res[1]).abs().max() / gba.abs().max()))
            x = out.detach()
    assert checked >= 20
    assert worst < 1e-5
