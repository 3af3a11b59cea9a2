"""Plain-PyTorch building blocks of StyleGAN3: FIR resampling, filtered leaky ReLU, modulated convolution.

These are the *reference* implementations: no compilation, any device, any float dtype. They follow the
mathematics of NVIDIA's reference ops (zero-stuffing upsampler, true convolution with the stored filters,
decimating downsampler) so that a snapshot's outputs are reproduced to float32 rounding. The only liberty
taken is computing the decimating convolution with a stride instead of convolving every sample and
discarding most of them, which gives the same sums.

Image tensors are NCHW. Filters are 1-D ``[taps]`` (separable: applied along x, then along y) or 2-D
``[taps, taps]`` (radial, non-separable), or ``None`` for "no filtering".
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary


def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float, radial: bool = False):
    """A windowed low-pass FIR filter as StyleGAN3 designs it, float32 tensor or ``None`` for one tap.

    ``cutoff`` and ``width`` (transition band) are in the same units as ``fs`` (samples per image width).
    Separable filters come from ``scipy.signal.firwin`` (Kaiser window); radial ones are a jinc windowed by
    the outer product of a Kaiser window, normalised to unit sum.
    """
    import scipy.signal  # here, not at the top: half a second to import (the kernel-compiling workers' forker too)
    import scipy.special

    if numtaps < 1:
        raise ValueError(f"numtaps must be >= 1, got {numtaps}")
    if numtaps == 1:
        return None
    if not radial:
        taps = scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs)
        return torch.as_tensor(taps, dtype=torch.float32)
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    with np.errstate(invalid="ignore", divide="ignore"):
        jinc = scipy.special.j1(2 * cutoff * (np.pi * r)) / (np.pi * r)
    jinc[r == 0] = cutoff  # the limit of j1(2 pi c r) / (pi r) at r = 0 (only for odd tap counts)
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    window = np.kaiser(numtaps, beta)
    taps = jinc * np.outer(window, window)
    taps /= taps.sum()
    return torch.as_tensor(taps, dtype=torch.float32)


def _depthwise(x: torch.Tensor, kernel: torch.Tensor, stride=1) -> torch.Tensor:
    """Correlate every channel of ``x`` with the same 2-D ``kernel`` [kh, kw] (no padding)."""
    c = x.shape[1]
    weight = kernel.to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=stride, groups=c)


def _upsample_axis(x, g, up, pad0, pad1, dim):
    """Zero-stuff by ``up``, pad by (pad0, pad1) and convolve with the 1-D filter ``g`` along ``dim`` (3 = x, 2 = y).

    ``conv_transpose`` with stride ``up`` and kernel ``g`` gives out[o] = sum_j x[j] g[o - j*up]; the wanted
    output sample i is out[i + taps - 1 - pad0] (zero outside ``out``).
    """
    c, taps = x.shape[1], g.numel()
    shape = (1, taps) if dim == 3 else (taps, 1)
    kernel = g.to(x.dtype).reshape(1, 1, *shape).expand(c, 1, *shape)
    out = F.conv_transpose2d(x, kernel, stride=(1, up) if dim == 3 else (up, 1), groups=c)
    length = x.shape[dim] * up + pad0 + pad1 - taps + 1
    lo = taps - 1 - pad0
    before, after = max(0, -lo), max(0, lo + length - out.shape[dim])
    out = F.pad(out, [before, after] if dim == 3 else [0, 0, before, after])
    return out.narrow(dim, lo + before, length)


def upfirdn2d(x: torch.Tensor, f, up: int = 1, down: int = 1, padding=(0, 0, 0, 0), gain: float = 1.0):
    """Upsample by zero-stuffing, pad, convolve with FIR ``f``, and decimate.

    Args:
        x: [N, C, H, W].
        f: 1-D [taps] separable filter, 2-D [th, tw] filter, or None (identity).
        up, down: integer factors, the same along x and y.
        padding: (x_lo, x_hi, y_lo, y_hi) in samples of the upsampled signal; negative values crop.
        gain: overall gain; a separable filter gets ``sqrt(gain)`` per pass.
    Returns:
        [N, C, H', W'] with H' = (H * up + y_lo + y_hi - th + 1 + down - 1) // down (likewise W').
    """
    if up > 1 and f is not None and f.ndim == 1 and x.device.type == "cpu":
        # A separable upsampling filter: per axis, a strided transposed convolution computes exactly the
        # zero-stuffed convolution without multiplying the stuffed zeros (faster on CPUs: docs/performance.md). CUDA
        # keeps the zero-stuffed form, the 'plain' rows of docs/performance.md; synthesis there takes the fast path.
        px0, px1, py0, py1 = (int(p) for p in padding)
        g = f * (gain ** 0.5)
        x = _upsample_axis(x, g, up, px0, px1, dim=3)
        x = _upsample_axis(x, g, up, py0, py1, dim=2)
        return x[:, :, ::down, ::down] if down > 1 else x
    n, c, h, w = x.shape
    if up > 1:  # each sample followed by up-1 zeros, along both axes
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    px0, px1, py0, py1 = (int(p) for p in padding)
    if max(px0, px1, py0, py1) > 0:  # (F.pad copies even when it adds nothing: ToRGB's full-size passes)
        x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    if f is None:
        x = x * gain if gain != 1 else x
        return x[:, :, ::down, ::down] if down > 1 else x
    # A true convolution: correlate with the flipped filter (the stored filters are symmetric anyway).
    f = f.flip(list(range(f.ndim)))
    if f.ndim == 1:
        f = f * (gain ** 0.5)
        x = _depthwise(x, f[None, :], stride=(1, down))
        x = _depthwise(x, f[:, None], stride=(down, 1))
    else:
        x = _depthwise(x, f * gain, stride=down)
    return x


def filtered_lrelu(x, fu, fd, b, up=1, down=1, padding=(0, 0, 0, 0), gain=math.sqrt(2), slope=0.2, clamp=None):
    """Bias, upsample with ``fu``, leaky ReLU (times ``gain``, clamped to ±``clamp``), downsample with ``fd``.

    This is StyleGAN3's alias-free nonlinearity: the pointwise ReLU runs at ``up`` times the sampling rate
    between two low-pass filters. ``padding`` is (x_lo, x_hi, y_lo, y_hi) applied in the upsampled domain.
    """
    x = x + b.to(x.dtype).reshape(1, -1, 1, 1)
    if x.device.type == "cpu" and gain > 0 and slope >= 0:
        # The CPU form (same values; docs/performance.md has its speed): the gain rides on the upsampling filter
        # (lrelu(x) * gain == lrelu(x * gain) for gain > 0), the leaky ReLU and the clamp take one pass each (in place
        # without autograd; with it, a Function whose backward reads its saved output instead of autograd's where /
        # le / ge chain), and the channels go through in chunks whose upsampled buffers stay small (cache-resident,
        # and reused by the allocator instead of fresh pages for every buffer).
        return _in_channel_chunks(lambda v: _filtered_lrelu_cpu(v, fu, fd, up, down, padding, gain, slope, clamp),
                                  x, up)
    return _filtered_lrelu_steps(x, fu, fd, up, down, padding, gain, slope, clamp)


def filtered_lrelu_stepwise(x, fu, fd, b, up=1, down=1, padding=(0, 0, 0, 0), gain=math.sqrt(2), slope=0.2,
                            clamp=None):
    """:func:`filtered_lrelu` one step at a time on any device (bias; upsample; leaky ReLU; gain; clamp; downsample),
    each step a whole-tensor op under plain autograd: the form CUDA's plain path runs, and the one the CPU form
    of :func:`filtered_lrelu` is tested and timed against (same arguments, same values)."""
    x = x + b.to(x.dtype).reshape(1, -1, 1, 1)
    return _filtered_lrelu_steps(x, fu, fd, up, down, padding, gain, slope, clamp)


def _filtered_lrelu_steps(x, fu, fd, up, down, padding, gain, slope, clamp):
    x = upfirdn2d(x, fu, up=up, padding=padding, gain=up ** 2)
    x = F.leaky_relu(x, slope) if slope != 1 else x
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return upfirdn2d(x, fd, down=down)


#: Bytes of one channel chunk's upsampled buffer in the CPU filtered leaky ReLU (see :func:`_in_channel_chunks`).
CHUNK_BYTES = 6 << 20
#: Fewest channels in a chunk: oneDNN's depthwise convolutions work in blocks of 16 channels (8 are much slower).
MIN_CHUNK = 16


def _in_channel_chunks(fn, x, up):
    """``fn`` (channel-wise: output channel i depends on input channel i only) applied to channel slices of ``x``
    [N, C, H, W] and concatenated: slices of a multiple of :data:`MIN_CHUNK` channels whose buffer after ``up``-fold
    upsampling holds about :data:`CHUNK_BYTES` (a short remainder joins the last slice)."""
    n, c, h, w = x.shape
    per_channel = max(1, n * h * w * up * up * x.element_size())
    per = max(MIN_CHUNK, CHUNK_BYTES // per_channel // MIN_CHUNK * MIN_CHUNK)
    starts = list(range(0, c, per))
    if len(starts) > 1 and c - starts[-1] < MIN_CHUNK:
        starts.pop()
    if len(starts) == 1:
        return fn(x)
    return torch.cat([fn(x[:, s:e]) for s, e in zip(starts, starts[1:] + [c])], 1)


def _filtered_lrelu_cpu(x, fu, fd, up, down, padding, gain, slope, clamp):
    """:func:`filtered_lrelu` after the bias, for ``gain`` > 0 and ``slope`` >= 0 (the CPU form)."""
    x = upfirdn2d(x, fu, up=up, padding=padding, gain=up ** 2 * gain)
    if torch.is_grad_enabled() and x.requires_grad:
        return upfirdn2d(_LeakyReluClamp.apply(x, slope, clamp), fd, down=down)
    if slope != 1:
        x = F.leaky_relu_(x, slope)  # x is ours: the biased input or a buffer made from it
    if clamp is not None:
        x = x.clamp_(-clamp, clamp)
    return upfirdn2d(x, fd, down=down)


class _LeakyReluClamp(torch.autograd.Function):
    """``leaky_relu(x, slope).clamp(-clamp, clamp)`` (``clamp`` None: no clamp), ``slope`` >= 0, whose backward
    reads the saved output: the gradient passes where -clamp < y < clamp, times 1 where y > 0 and ``slope``
    elsewhere (the same as autograd's chain except exactly at ±clamp, a set of measure zero). First-order only."""

    @staticmethod
    def forward(ctx, x, slope, clamp):
        if slope != 1:
            y = F.leaky_relu(x, slope)
            if clamp is not None:
                y.clamp_(-clamp, clamp)
        else:
            y = x.clamp(-clamp, clamp) if clamp is not None else x.clone()
        ctx.save_for_backward(y)
        ctx.slope, ctx.clamp = slope, clamp
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        if ctx.clamp is not None:
            grad = torch.ops.aten.hardtanh_backward(grad, y, -ctx.clamp, ctx.clamp)
        if ctx.slope != 1:
            grad = torch.ops.aten.leaky_relu_backward(grad, y, ctx.slope, True)
        return grad, None, None


def _pad_for_tensor_cores(x: torch.Tensor, dtype=None) -> bool:
    """Whether to pad channel counts to multiples of 8 for cuDNN / cuBLAS: fp16 on CUDA (``dtype``: the dtype the
    data will have, default x's), where their tensor-core kernels want them (StyleGAN3-T's 323, 203, 81, 51 channels
    are not; padded, T's 81 -> 51 channel convolution runs much faster: docs/performance.md)."""
    return x.is_cuda and (dtype or x.dtype) == torch.float16


def _round8(c: int) -> int:
    return c + (-c) % 8


# Views known to be the first channels of a buffer whose extra channels are zero (see mark_zero_padded); an entry
# goes with its tensor.
_ZERO_PADDED = WeakIdKeyDictionary()


def mark_zero_padded(x: torch.Tensor) -> torch.Tensor:
    """Records that ``x`` [N, C, H, W] is the first C channels of a contiguous buffer whose extra channels are zero
    (the fast filtered leaky ReLU's fp16 outputs are), so that :func:`zero_padded_channels` may use the buffer.
    Returns ``x``. Only the caller that wrote the zeros may say so."""
    _ZERO_PADDED[x] = True
    return x


def zero_padded_channels(x: torch.Tensor):
    """The whole buffer [N, C', H*W] behind ``x`` [N, C, H, W] when ``x`` is the first C channels of a contiguous
    buffer with C' > C channels whose extra channels are zero (recorded by :func:`mark_zero_padded`); else None."""
    if x.dim() != 4 or x not in _ZERO_PADDED:
        return None
    n, c, h, w = x.shape
    plane = h * w
    if x.stride()[1:] != (plane, w, 1) or x.stride(0) % plane or x.stride(0) // plane <= c:
        return None
    return x.as_strided((n, x.stride(0) // plane, plane), (x.stride(0), plane, 1))


class _Tf32LikeCudnn:
    """Float32 matrix products on CUDA with TF32 exactly when cuDNN's convolutions use it
    (``torch.backends.cudnn.allow_tf32``, on by default): the fast path's 1x1 modulated convolutions are batched
    matrix products, and NVIDIA's code runs the same layers as convolutions (with TF32 they run several times
    faster: docs/performance.md)."""

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32 = self.saved


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32, or as it is when already wider (float64: the modulation's small tensors keep it)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def modulation_input_scale(styles, demodulate=True, input_gain=None):
    """[N, I] float32: the per-sample input-channel scale of the "scale, shared convolution, scale" form of a
    modulated convolution (styles, pre-normalised when demodulating, times the input gain)."""
    s = at_least_float32(styles)
    if demodulate:
        s = s * s.square().mean().rsqrt()  # pre-normalisation, as in the fused form (scale-free after demodulation)
    return s if input_gain is None else s * torch.as_tensor(input_gain, dtype=s.dtype, device=s.device)


def modulation_factors(kernel, styles, demodulate=True, input_gain=None, tap_energy=None):
    """The per-sample factors of the "scale, shared convolution, scale" form of a modulated convolution:
    (input scale [N, I], demodulation coefficients [N, O] or None), float32. ``kernel``: the shared kernel
    (:func:`shared_kernel`); ``tap_energy``: its :func:`kernel_tap_energy` if already at hand. With them,
    ``modulated_conv2d(x, weight, ...) == scaled_input_conv2d(x, kernel, scale, ...) * dcoefs`` (per sample and
    channel)."""
    s = modulation_input_scale(styles, demodulate)
    scale = s if input_gain is None else s * torch.as_tensor(input_gain, dtype=s.dtype, device=s.device)
    if not demodulate:
        return scale, None
    # |kernel * s|^2 summed over inputs and taps, as one [N, I] x [I, O] product (no [N, O, I, k, k] temporary).
    energy = s.square() @ (kernel_tap_energy(kernel) if tap_energy is None else tap_energy)
    return scale, (energy + 1e-8).rsqrt()


def kernel_tap_energy(kernel):
    """[I, O]: the squares of ``kernel`` [O, I, k, k] summed over the taps (what the demodulation weighs each
    input's squared scale by)."""
    return kernel.square().sum(dim=[2, 3]).T


def shared_kernel(weight, demodulate=True):
    """The float32 kernel of the shared convolution in the "scale, convolve, scale" form (pre-normalised when
    demodulating, as the fused form normalises it)."""
    w = at_least_float32(weight)
    return w * w.square().mean([1, 2, 3], keepdim=True).rsqrt() if demodulate else w


def scaled_input_conv2d(x, kernel, scale, padding=0, prescaled=False):
    """conv2d(x * scale, kernel): the shared convolution of the modulated one, without demodulation.

    x: [N, I, H, W]; kernel: [O, I, k, k] float32 (:func:`shared_kernel`); scale: [N, I] (from
    :func:`modulation_factors`), or ``prescaled=True`` when x already holds x * scale (the fast path's previous
    layer writes it so). On CUDA in fp16, channels are padded to multiples of 8 for cuDNN (a zero-padded buffer
    behind ``x``, see :func:`zero_padded_channels`, is used as it is). Returns [N, O, H', W'], in inference
    possibly a channel slice of a padded buffer."""
    n, in_ch = x.shape[:2]
    out_ch = kernel.shape[0]
    grad = torch.is_grad_enabled() and (x.requires_grad or (not prescaled and scale.requires_grad))
    if not prescaled:
        scale = scale.to(x.dtype).reshape(n, in_ch, 1, 1)
    if _pad_for_tensor_cores(x) and (in_ch % 8 or out_ch % 8):
        # Zero channels in and out (same sums); the padded outputs are dropped by the view below.
        ci, co = _round8(in_ch), _round8(out_ch)
        whole = zero_padded_channels(x) if prescaled and not grad else None
        if whole is not None and whole.shape[1] == ci:  # the previous layer wrote the padded buffer
            xs = whole.reshape(n, ci, *x.shape[2:])
        elif prescaled and ci == in_ch:  # only the outputs need padding
            xs = x
        elif grad:
            xs = F.pad(x if prescaled else x * scale, [0, 0, 0, 0, 0, ci - in_ch])
        else:  # no autograd: write the scaled input straight into the padded buffer
            xs = scaled_into_padded(x, None if prescaled else scale, ci)
        padded = F.pad(kernel, [0, 0, 0, 0, 0, ci - in_ch, 0, co - out_ch]).to(x.dtype)
        return F.conv2d(xs, padded, padding=padding)[:, :out_ch]
    return F.conv2d(x if prescaled else x * scale, kernel.to(x.dtype), padding=padding)


def scaled_into_padded(x, factor, channels):
    """A new [N, ``channels``, H, W] buffer holding ``x * factor`` [N, C, H, W] in its first C channels and zeros in
    the others (``factor``: broadcastable to x, e.g. [N, C, 1, 1], or None for x itself): one pass, no autograd."""
    n, c = x.shape[:2]
    out = x.new_empty((n, channels, *x.shape[2:]))
    out[:, c:].zero_()
    if factor is None:
        out[:, :c] = x
    else:
        torch.mul(x, factor, out=out[:, :c])
    return out


def modulated_weight(kernel, styles, demodulate=True, input_gain=None):
    """[N, O, I, kh, kw] float32: every sample's own kernel, ``kernel`` [O, I, kh, kw] (:func:`shared_kernel`) times
    its ``styles`` [N, I] (pre-normalised when demodulating), each output filter scaled to unit L2 norm when
    ``demodulate``, times ``input_gain`` (scalar or [I]) on the input channels: the per-sample weight of
    :func:`modulated_conv2d`'s fused form."""
    n, in_ch = styles.shape
    s = at_least_float32(styles)
    if demodulate:
        s = s * s.square().mean().rsqrt()
    w = kernel.unsqueeze(0) * s.reshape(n, 1, in_ch, 1, 1)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    if input_gain is not None:
        w = w * torch.as_tensor(input_gain, dtype=w.dtype, device=w.device).expand(in_ch).reshape(1, 1, in_ch, 1, 1)
    return w


def batched_1x1(w, x, tf32=False):
    """The 1x1 convolution of each sample of ``x`` [N, I, H, W] with its own weight ``w`` [N, O, I] (cast to x's
    dtype) as one batched matrix product -> [N, O, H, W]. A zero-padded buffer behind ``x``
    (:func:`zero_padded_channels`) is used whole (inner size a multiple of 8: cuBLAS's fast kernels). ``tf32``:
    float32 products on CUDA with TF32 exactly when cuDNN's convolutions use it (:class:`_Tf32LikeCudnn`)."""
    n, out_ch, in_ch = w.shape
    w = w.to(x.dtype)
    xm = zero_padded_channels(x)
    if xm is not None:  # zero weights on the zero channels
        w = F.pad(w, [0, xm.shape[1] - in_ch])
    else:
        xm = x.reshape(n, in_ch, -1)
    with _Tf32LikeCudnn() if tf32 else contextlib.nullcontext():
        out = torch.bmm(w, xm)
    return out.reshape(n, out_ch, *x.shape[2:])


def modulated_conv2d(x, weight, styles, demodulate=True, padding=0, input_gain=None, fused=True, kernel=None):
    """Convolve each sample with the kernel scaled by its own styles (and demodulated).

    Args:
        x: [N, I, H, W] input, any float dtype (the kernels are cast to it).
        weight: [O, I, kh, kw] base kernel.
        styles: [N, I] per-sample input-channel scales (the S-space values).
        demodulate: normalise every output filter to unit L2 norm (not for ToRGB).
        padding: spatial zero padding.
        input_gain: scalar or [I] factor on the input channels (StyleGAN3's magnitude EMA).
        fused: True builds one kernel per sample (a grouped convolution, NVIDIA's inference form); False
            scales the input channels, runs one shared convolution and scales the outputs by the
            demodulation factors — the same mathematics, faster for large batches on GPUs (the fast path's form;
            there, 1x1 float32 products on CUDA use TF32 exactly when cuDNN's convolutions do).
        kernel: ``shared_kernel(weight, demodulate)`` if at hand (the fast path keeps it between calls).
    Returns:
        [N, O, H', W'].
    """
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    if kernel is None:
        kernel = shared_kernel(weight, demodulate)  # pre-normalised: keeps fp16 in range (scale-free after demod)
    if not fused and not (kh == 1 and kw == 1):
        scale, dcoefs = modulation_factors(kernel, styles, demodulate, input_gain)
        out = scaled_input_conv2d(x, kernel, scale, padding)
        if dcoefs is not None:
            out = out * dcoefs.to(out.dtype).reshape(n, out_ch, 1, 1)
        return out
    w = modulated_weight(kernel, styles, demodulate, input_gain)
    if kh == 1 and kw == 1 and padding == 0:
        # 1x1 kernels: a batched matrix product, avoiding a grouped convolution.
        return batched_1x1(w.reshape(n, out_ch, in_ch), x, tf32=not fused and x.is_cuda and x.dtype == torch.float32)
    x = x.reshape(1, n * in_ch, *x.shape[2:])
    out = F.conv2d(x, w.reshape(n * out_ch, in_ch, kh, kw).to(x.dtype), padding=padding, groups=n)
    return out.reshape(n, out_ch, *out.shape[2:])
