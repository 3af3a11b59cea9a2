"""fast_conv's 3x3 convolutions against F.conv2d, under Triton's interpreter: the pointers form (the default), the
rows form (rows padded to 16 bytes), the cudnn form's transposes, and the refusal of unaligned rows."""

import pytest
import torch
import torch.nn.functional as F

from v2s_nb.stylegan3 import fast_conv
from triton_interpreter_probe import CountedLaunches, interpreter_runs_kernels_like_ours  # noqa: F401 (autouse)


def _relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("n, c, h, w, o, config", [(2, 13, 9, 11, 11, None), (2, 40, 7, 40, 70, (2, 16, 64, 16, 4, 2))])
def test_pointers_form(n, c, h, w, o, config):
    g = torch.Generator().manual_seed(c)
    x = torch.randn(n, c + 3, h, w, generator=g)[:, :c]  # a channel slice of a padded buffer, as the fast path passes
    wt = torch.randn(o, c, 3, 3, generator=g)
    ref = F.conv2d(x, wt, padding=2)
    out = fast_conv.conv2d_nchw(x, wt, 2, config=config)
    assert out.shape == ref.shape and out.is_contiguous()
    assert _relative(out, ref) < 1e-5


# Both accumulator orders; several tiles per row (the first starts left of the plane), more outputs than one block.
@pytest.mark.parametrize("n, c, h, w, o, config", [(2, 13, 9, 37, 11, (32, 16, 16, 4, 2, True)),
                                                   (2, 40, 7, 37, 20, (16, 16, 32, 4, 2, False)),
                                                   (1, 17, 5, 30, 40, (32, 32, 16, 4, 2, True))])
def test_rows_form_on_row_padded_buffers(n, c, h, w, o, config):
    g = torch.Generator().manual_seed(c)
    buf = torch.zeros(n, c + 3, h, w + (-w) % 8)  # rows padded to 16 bytes of fp16 (row_align), channels padded
    buf[..., :w] = torch.randn(n, c + 3, h, w, generator=g)
    x = buf[:, :c, :, :w]
    wt = torch.randn(o, c, 3, 3, generator=g)
    ref = F.conv2d(x, wt, padding=2)
    out = fast_conv.conv2d_nchw(x, wt, 2, config=config, form="rows")
    assert out.shape == ref.shape and out.is_contiguous()
    assert _relative(out, ref) < 1e-5


# More outputs than MAX_OUT_CHANNELS picks the cudnn form (the transposes around F.conv2d); 300 outputs are padded
# to 320 for cuDNN.
@pytest.mark.parametrize("n, c, h, w, o", [(2, 13, 9, 11, 70), (1, 20, 6, 7, 300)])
def test_cudnn_form_and_its_transposes(n, c, h, w, o):
    g = torch.Generator().manual_seed(o)
    x = torch.randn(n, c + 3, h, w, generator=g)[:, :c]
    xl = fast_conv.to_nhwc(x, c + 3)
    assert xl.is_contiguous(memory_format=torch.channels_last) and torch.equal(xl[:, :c], x)
    assert not xl[:, c:].any()
    assert torch.equal(fast_conv.to_nchw(xl, c - 2), x[:, :c - 2]) and fast_conv.to_nchw(xl).is_contiguous()
    scale = torch.randn(n, c, generator=g)
    xs = fast_conv.to_nhwc(x, c + 3, scale)  # the product in the copy
    assert torch.allclose(xs[:, :c], x * scale[:, :, None, None], rtol=1e-6, atol=0) and not xs[:, c:].any()
    with pytest.raises(ValueError, match="scale"):
        fast_conv.to_nhwc(x, c, scale[:, 1:])
    wt = torch.randn(o, c, 3, 3, generator=g)
    ref = F.conv2d(x, wt, padding=2)
    out = fast_conv.conv2d_nchw(x, wt, 2)
    assert out.shape == ref.shape and out.is_contiguous()
    assert _relative(out, ref) < 1e-5
    ref = F.conv2d(x * scale[:, :, None, None], wt, padding=2)
    assert _relative(fast_conv.conv2d_nchw(x, wt, 2, scale=scale), ref) < 1e-5


def test_rows_form_refuses_unaligned_rows():
    with pytest.raises(ValueError, match="16-byte"):
        fast_conv.conv2d_nchw(torch.zeros(1, 3, 5, 5), torch.zeros(2, 3, 3, 3), 2, form="rows")


@pytest.mark.parametrize("dtype, tile", [(torch.float16, None), (torch.float16, (4, 8)), (torch.float32, (2, 16))])
def test_scaled_rows_kernel_writes_padded_rows(dtype, tile, monkeypatch):
    """The rows form's scaled input copy (x * scale into rows padded to 16 bytes) by its Triton kernel: the values
    of torch.mul's copy exactly, for a channel slice of a larger buffer, with several row and column blocks per
    plane (small tiles) or one wider than the row."""
    if tile is not None:
        monkeypatch.setattr(fast_conv, "SCALED_ROWS_TILE", tile)
    g = torch.Generator().manual_seed(3)
    n, c, h, w = 2, 5, 11, 21
    x = torch.randn(n, c + 2, h, w, generator=g).to(dtype)[:, 1:c + 1]
    scale = torch.rand(n, c, generator=g) * 2 + 0.25
    calls = {}
    monkeypatch.setattr(fast_conv, "_scaled_rows_kernel", CountedLaunches(fast_conv._scaled_rows_kernel, calls, "k"))
    out = fast_conv.scaled_rows(x, scale, align=8)
    assert calls["k"] == 1 and out.shape == x.shape and out.stride() == (c * h * 24, h * 24, 24, 1)
    assert torch.equal(out, torch.mul(x, scale.to(dtype)[:, :, None, None]))
    assert torch.equal(fast_conv.scaled_rows(x, scale), x * scale.to(dtype)[:, :, None, None])  # no padding: mul
    assert calls["k"] == 1

