"""fast_conv's convolution gradients (fp16) against torch.nn.grad in float32, under Triton's interpreter: the
weight gradient in both forms (the Triton kernel: default and explicit tile configurations, several pixel splits,
other kernel sizes, row-padded channel slices of x; cuDNN on our channels-last copies, in chunks of samples), each
with a per-sample input scale, and the input gradient through conv2d_nchw (pointers and cudnn forms, a padding
past k - 1)."""

import pytest
import torch

from v2s_nb.stylegan3 import fast_conv
from triton_interpreter_probe import interpreter_runs_kernels_like_ours  # noqa: F401 (autouse fixture)


def _relative(a, b):
    return float((a.float() - b).abs().max() / b.abs().max())


def _case(n, i, o, h, w, k, p, seed):
    """fp16 x [n, i, h, w], a float32 kernel [o, i, k, k] and an fp16 output gradient of conv2d(x, K, padding=p)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, i, h, w, generator=g).half()
    kernel = torch.randn(o, i, k, k, generator=g) / (k * i ** 0.5)
    gy = torch.randn(n, o, h + 2 * p - k + 1, w + 2 * p - k + 1, generator=g).half()
    return x, kernel, gy


# Channels not multiples of the blocks, odd sizes; configs: 64 x 32 blocks, and 7 pixel splits of 16-pixel tiles
# (the last split shorter) with 32 x 32 blocks; kernel sizes 1 and 5 (taps past the kernel masked in 3x3 groups).
@pytest.mark.parametrize("n, i, o, h, w, k, p, config", [
    (2, 13, 7, 19, 23, 3, 2, None),
    (2, 13, 7, 19, 23, 3, 1, (64, 32, 32, 4, 2, 3)),
    (2, 40, 37, 9, 11, 3, 2, (32, 32, 16, 4, 2, 7)),
    (1, 5, 9, 8, 7, 1, 0, None),
    (1, 6, 4, 9, 10, 5, 2, None),
])
@pytest.mark.parametrize("form", ["triton", "cudnn"])
def test_weight_grad_matches_torch(n, i, o, h, w, k, p, config, form):
    x, kernel, gy = _case(n, i, o, h, w, k, p, seed=i * o + p)
    ref = torch.nn.grad.conv2d_weight(x.float(), kernel.shape, gy.float(), padding=p)
    out = fast_conv.conv2d_weight_grad_nchw(x, gy, k, p, config=config if form == "triton" else None, form=form)
    assert out.shape == ref.shape and out.dtype == torch.float32 and out.is_contiguous()
    assert _relative(out, ref) < 2e-3


@pytest.mark.parametrize("form, config", [("triton", None), ("triton", (32, 32, 16, 4, 2, 7)), ("cudnn", None)])
def test_weight_grad_with_a_per_sample_scale(form, config, monkeypatch):
    """grad of conv2d(x * scale, K): the Triton kernel scales each program's sums (7 splits over 3 samples: programs
    within one sample), cuDNN's form the channels-last copy (here in chunks of one sample)."""
    monkeypatch.setattr(fast_conv, "WGRAD_CUDNN_CHUNK_BYTES", 1)
    x, kernel, gy = _case(3, 13, 7, 9, 10, 3, 2, seed=11)
    scale = torch.rand(3, 13, generator=torch.Generator().manual_seed(1)) * 3 - 1
    xs = x.float() * scale.half().float()[:, :, None, None]
    ref = torch.nn.grad.conv2d_weight(xs, kernel.shape, gy.float(), padding=2)
    out = fast_conv.conv2d_weight_grad_nchw(x, gy, 3, 2, config=config, scale=scale, form=form)
    assert _relative(out, ref) < 2e-3
    with pytest.raises(ValueError, match="scale"):
        fast_conv.conv2d_weight_grad_nchw(x, gy, 3, 2, scale=scale[:, :5], form=form)
    with pytest.raises(ValueError, match="form"):
        fast_conv.conv2d_weight_grad_nchw(x, gy, 3, 2, form="winograd")


def test_weight_grad_reads_row_padded_channel_slices():
    """x as the fast path's activations write it (channels and rows padded: read in place), grad_y a strided view
    (copied): same sums."""
    x, kernel, gy = _case(2, 11, 9, 13, 17, 3, 2, seed=3)
    buf = torch.zeros(2, 16, 13, 24, dtype=torch.float16)
    buf[:, :11, :, :17] = x
    buf[:, 11:] = 1.0  # must not leak into the sums
    view = buf[:, :11, :, :17]
    gy_t = gy.transpose(2, 3).contiguous().transpose(2, 3)  # same values, columns-major planes
    ref = torch.nn.grad.conv2d_weight(x.float(), kernel.shape, gy.float(), padding=2)
    for form in ("triton", "cudnn"):
        out = fast_conv.conv2d_weight_grad_nchw(view, gy_t, 3, 2, form=form)
        assert _relative(out, ref) < 2e-3, form


# 13 outputs of x: pointers form; 70: cudnn form (more than MAX_OUT_CHANNELS); padding 3 > k - 1 crops grad_y.
@pytest.mark.parametrize("n, i, o, h, w, k, p", [(2, 13, 7, 19, 23, 3, 2), (2, 13, 7, 19, 23, 3, 1),
                                                 (1, 70, 20, 9, 12, 3, 2), (1, 6, 5, 8, 9, 3, 3),
                                                 (1, 6, 5, 11, 9, 5, 1)])
def test_input_grad_matches_torch(n, i, o, h, w, k, p):
    x, kernel, gy = _case(n, i, o, h, w, k, p, seed=i + o + p)
    ref = torch.nn.grad.conv2d_input(x.shape, kernel.half().float(), gy.float(), padding=p)
    out = fast_conv.conv2d_input_grad_nchw(gy, kernel, p, x.shape)
    assert out.shape == x.shape and out.dtype == torch.float16 and out.is_contiguous()
    assert _relative(out, ref) < 2e-3


def test_input_grad_through_a_per_sample_scale():
    """For conv2d(x * scale, K): (d x, d scale) in one call, fused into the cudnn form's last transpose (to_nchw's
    scale); the other forms refuse them (the caller scales after)."""
    x, kernel, gy = _case(2, 20, 12, 7, 9, 3, 2, seed=7)
    scale = torch.rand(2, 20, generator=torch.Generator().manual_seed(2)) + 0.5
    g_xs = torch.nn.grad.conv2d_input(x.shape, kernel.half().float(), gy.float(), padding=2)
    g_x, g_s = fast_conv.conv2d_input_grad_nchw(gy, kernel, 2, x.shape, form="cudnn", scale=scale, x=x)
    assert g_x.dtype == torch.float16 and g_s.dtype == torch.float32 and g_s.shape == (2, 20)
    assert _relative(g_x, g_xs * scale[:, :, None, None]) < 2e-3
    assert _relative(g_s, (g_xs * x.float()).sum((2, 3))) < 2e-3
    with pytest.raises(ValueError, match="scale"):
        fast_conv.conv2d_input_grad_nchw(gy, kernel, 2, x.shape, form="cudnn", scale=scale)
    with pytest.raises(ValueError, match="cudnn form only"):
        fast_conv.conv2d_input_grad_nchw(gy, kernel, 2, x.shape, scale=scale, x=x)  # 20 channels: pointers


def test_input_grad_forms_agree():
    x, kernel, gy = _case(1, 20, 12, 7, 9, 3, 2, seed=5)
    ref = torch.nn.grad.conv2d_input(x.shape, kernel.half().float(), gy.float(), padding=2)
    for form in ("pointers", "cudnn"):
        assert _relative(fast_conv.conv2d_input_grad_nchw(gy, kernel, 2, x.shape, form=form), ref) < 2e-3, form


# Channels past the blocks and fewer than them, odd planes; several pixel splits (programs_per_sm); small tiles.
@pytest.mark.parametrize("n, i, o, h, w, config, per_sm", [
    (2, 13, 7, 19, 23, None, 4),
    (3, 70, 9, 5, 7, (32, 32, 16, 4, 2), 64),
    (1, 20, 40, 16, 16, (16, 32, 16, 4, 1), 1),
])
def test_batched_1x1_weight_grad_matches_bmm(n, i, o, h, w, config, per_sm):
    g = torch.Generator().manual_seed(n * i + o)
    x = torch.randn(n, i, h, w, generator=g).half()
    gy = torch.randn(n, o, h, w, generator=g).half()
    ref = torch.bmm(gy.float().reshape(n, o, -1), x.float().reshape(n, i, -1).transpose(1, 2))
    out = fast_conv.batched_1x1_weight_grad(x, gy, config=config, programs_per_sm=per_sm)
    assert out.shape == (n, o, i) and out.dtype == torch.float32
    assert _relative(out, ref) < 2e-3


def test_batched_1x1_weight_grad_reads_channel_slices_and_checks_shapes():
    """x as a channel slice of a zero-padded buffer (R's activations write them so; read in place) and grad_y with
    strided planes (copied): same sums; mismatched shapes and dtypes: ValueError naming them."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 11, 9, 10, generator=g).half()
    gy = torch.randn(2, 5, 9, 10, generator=g).half()
    buf = torch.ones(2, 16, 9, 10, dtype=torch.float16)
    buf[:, :11] = x
    gy_t = gy.transpose(2, 3).contiguous().transpose(2, 3)
    ref = torch.bmm(gy.float().reshape(2, 5, -1), x.float().reshape(2, 11, -1).transpose(1, 2))
    assert _relative(fast_conv.batched_1x1_weight_grad(buf[:, :11], gy_t), ref) < 2e-3
    with pytest.raises(ValueError, match="same N, H, W"):
        fast_conv.batched_1x1_weight_grad(x, gy[:, :, :8])
    with pytest.raises(ValueError, match="float16"):
        fast_conv.batched_1x1_weight_grad(x.float(), gy)


@pytest.mark.parametrize("n, i, o, h, w, config", [
    (2, 13, 7, 19, 23, None),
    (3, 70, 41, 5, 7, (32, 16, 32, 4, 2)),
])
def test_batched_1x1_input_grad_matches_bmm(n, i, o, h, w, config):
    g = torch.Generator().manual_seed(n * i + o)
    weight = torch.randn(n, o, i, generator=g) / i ** 0.5
    gy = torch.randn(n, o, h, w, generator=g).half()
    ref = torch.bmm(weight.half().float().transpose(1, 2), gy.float().reshape(n, o, -1)).reshape(n, i, h, w)
    out = fast_conv.batched_1x1_input_grad(weight, gy, config=config)
    assert out.shape == (n, i, h, w) and out.dtype == torch.float16 and out.is_contiguous()
    assert _relative(out, ref) < 2e-3
    with pytest.raises(ValueError, match="same N and O"):
        fast_conv.batched_1x1_input_grad(weight[:, 1:], gy)
    # out=: the same values written into a batch slice of a larger buffer; a wrong buffer named
    whole = torch.zeros(n + 1, i, h, w, dtype=torch.float16)
    got = fast_conv.batched_1x1_input_grad(weight, gy, config=config, out=whole[1:])
    assert got.data_ptr() == whole[1:].data_ptr() and torch.equal(whole[1:], out) and not whole[0].any()
    with pytest.raises(ValueError, match="out must be a contiguous float16"):
        fast_conv.batched_1x1_input_grad(weight, gy, out=whole[1:].float())
