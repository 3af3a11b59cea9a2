"""The small per-layer steps around the fast path's modulated convolutions, each as one Triton launch (inference).

In eager PyTorch each synthesis layer also ran about fifteen tiny kernels on [N, C] style vectors: the batch's mean
square, its rsqrt, the magnitude gain, the input scale, the demodulation's [N, I] x [I, O] product and rsqrt, and
the same input scale again for the previous layer's output. And ToRGB ran four full-size passes after its 1x1
product (bias, clamp, the network's output scale, the cast to float32). Here:

* :func:`modulation_factors`: a 3x3 layer's input scale and demodulation coefficients in one launch, the same
  values as :func:`ops.modulation_factors` (float32, up to summation order);
* :func:`torgb`: ToRGB's modulated 1x1 convolution, bias, clamp and output scale in one pass over its input,
  written straight as float32 images.

Both are inference only (no autograd) and need CUDA and Triton, or Triton's interpreter (the CPU tests). What they
take and save in synthesis: docs/performance.md ('Kernel choices, measured').
"""

from __future__ import annotations

import math

import torch

from . import fast_config

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    HAVE_TRITON = False


if HAVE_TRITON:

    @triton.jit
    def _modulation_kernel(s_ptr, e_ptr, g_ptr, scale_ptr, d_ptr, n, c_in, c_out,
                           BN: tl.constexpr, BI: tl.constexpr, BO: tl.constexpr):
        """scale = s * rsqrt(mean(s^2)) * rsqrt(ema) [N, I]; dcoefs = rsqrt((s * rsqrt(mean(s^2)))^2 @ E + 1e-8)
        [N, O]. Program p writes scale's columns [p*BI, p*BI + BI) and dcoefs' [p*BO, p*BO + BO)."""
        pid = tl.program_id(0)
        rn = tl.arange(0, BN)
        ri = tl.arange(0, BI)
        # The whole batch's mean square (NVIDIA's pre-normalisation): every program sums the few KB itself.
        sq = tl.zeros([BN, BI], dtype=tl.float32)
        for n0 in tl.range(0, n, BN):
            for i0 in tl.range(0, c_in, BI):
                ok = ((n0 + rn) < n)[:, None] & ((i0 + ri) < c_in)[None, :]
                v = tl.load(s_ptr + (n0 + rn)[:, None] * c_in + (i0 + ri)[None, :], mask=ok, other=0.0)
                sq += v * v
        norm = 1.0 / tl.sqrt(tl.sum(tl.sum(sq, axis=1), axis=0) / (n * c_in))
        gain = 1.0 / tl.sqrt(tl.load(g_ptr).to(tl.float32))  # g_ptr: the 0-d buffer seen as [1]
        cols = pid * BI + ri
        for n0 in tl.range(0, n, BN):
            ok = ((n0 + rn) < n)[:, None] & (cols < c_in)[None, :]
            offs = (n0 + rn)[:, None] * c_in + cols[None, :]
            v = tl.load(s_ptr + offs, mask=ok, other=0.0)
            tl.store(scale_ptr + offs, v * norm * gain, mask=ok)
        ro = pid * BO + tl.arange(0, BO)  # (programs past c_out only mask: simpler than a branch, as cheap)
        for n0 in tl.range(0, n, BN):
            acc = tl.zeros([BN, BO], dtype=tl.float32)
            for i0 in tl.range(0, c_in, BI):
                ok = ((n0 + rn) < n)[:, None] & ((i0 + ri) < c_in)[None, :]
                v = tl.load(s_ptr + (n0 + rn)[:, None] * c_in + (i0 + ri)[None, :], mask=ok, other=0.0)
                v = v * norm
                e = tl.load(e_ptr + (i0 + ri)[:, None] * c_out + ro[None, :],
                            mask=((i0 + ri) < c_in)[:, None] & (ro < c_out)[None, :], other=0.0)
                acc = tl.dot(v * v, e, acc, input_precision="ieee")
            ok = ((n0 + rn) < n)[:, None] & (ro < c_out)[None, :]
            tl.store(d_ptr + (n0 + rn)[:, None] * c_out + ro[None, :], 1.0 / tl.sqrt(acc + 1e-8), mask=ok)

    @triton.jit
    def _torgb_kernel(x_ptr, k_ptr, s_ptr, g_ptr, b_ptr, out_ptr, c_in, plane, x_sn, weight_gain, clamp, out_gain,
                      C_OUT: tl.constexpr, CO: tl.constexpr, BC: tl.constexpr, BP: tl.constexpr):
        """out[n, o, p] = clamp(sum_c K[o, c] s[n, c] gain x[n, c, p] + b[o], +-clamp) * out_gain, float32.
        Program (pixel block, sample n); x's planes are contiguous, sample n at x_ptr + n * x_sn. CO: C_OUT rounded
        up to a power of two; each input tile is read once for all outputs."""
        pid_p = tl.program_id(0)
        n = tl.program_id(1).to(tl.int64)
        p = pid_p * BP + tl.arange(0, BP)
        rc = tl.arange(0, BC)
        ro = tl.arange(0, CO)
        gain = weight_gain / tl.sqrt(tl.load(g_ptr).to(tl.float32))
        acc = tl.zeros([CO, BP], dtype=tl.float32)
        for c0 in tl.range(0, c_in, BC):
            c = c0 + rc
            s = tl.load(s_ptr + n * c_in + c, mask=c < c_in, other=0.0) * gain
            k = tl.load(k_ptr + ro[:, None] * c_in + c[None, :], mask=(ro < C_OUT)[:, None] & (c < c_in)[None, :],
                        other=0.0)
            x = tl.load(x_ptr + n * x_sn + c[:, None] * plane + p[None, :],
                        mask=(c < c_in)[:, None] & (p < plane)[None, :], other=0.0).to(tl.float32)
            acc += tl.sum((k * s[None, :])[:, :, None] * x[None, :, :], axis=1)
        y = acc + tl.load(b_ptr + ro, mask=ro < C_OUT, other=0.0)[:, None]
        y = tl.minimum(tl.maximum(y, -clamp), clamp) * out_gain
        tl.store(out_ptr + (n * C_OUT + ro[:, None]) * plane + p[None, :], y,
                 mask=(ro < C_OUT)[:, None] & (p < plane)[None, :])


def _on_triton(*tensors) -> bool:
    return (HAVE_TRITON and fast_config.current().modulation_kernels
            and all(t.is_cuda or fast_config.triton_interpreting() for t in tensors))


def _no_autograd(*tensors) -> bool:
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def modulation_applies(styles, tap_energy, magnitude_ema) -> bool:
    """Whether :func:`modulation_factors` runs for these tensors: CUDA (or the interpreter), Triton, no autograd."""
    return _on_triton(styles, tap_energy) and _no_autograd(styles, tap_energy, magnitude_ema)


def modulation_factors(styles, tap_energy, magnitude_ema):
    """A demodulated layer's (input scale [N, I], demodulation coefficients [N, O]), float32, in one launch: what
    ``ops.modulation_factors(kernel, styles, True, magnitude_ema.rsqrt(), tap_energy)`` returns.

    styles: the layer's raw affine output [N, I]; tap_energy: :func:`ops.kernel_tap_energy` of its shared kernel
    [I, O] float32; magnitude_ema: the layer's 0-d buffer (read on the device: no host synchronisation)."""
    n, c_in = styles.shape
    c_out = tap_energy.shape[1]
    if tap_energy.shape[0] != c_in:
        raise ValueError(f"tap_energy is {tuple(tap_energy.shape)}, styles {tuple(styles.shape)}: want [{c_in}, O]")
    s = styles.float().contiguous()
    e = tap_energy.float().contiguous()
    scale = torch.empty_like(s)
    dcoefs = s.new_empty((n, c_out))
    bi = bo = 32
    grid = (max(triton.cdiv(c_in, bi), triton.cdiv(c_out, bo)),)
    _modulation_kernel[grid](s, e, magnitude_ema.reshape(1), scale, dcoefs, n, c_in, c_out, BN=16, BI=bi, BO=bo, num_warps=4)
    return scale, dcoefs


def torgb_applies(x, kernel, styles, bias=None) -> bool:
    """Whether :func:`torgb` runs: CUDA (or the interpreter), Triton, no autograd (``bias`` included), x's planes
    contiguous."""
    grads = (x, kernel, styles) if bias is None else (x, kernel, styles, bias)
    if not (_on_triton(x, kernel, styles) and _no_autograd(*grads)) or x.dim() != 4:
        return False
    n, c, h, w = x.shape
    return x.stride()[1:] == (h * w, w, 1) and kernel.shape[0] <= 16


def torgb(x, kernel, styles, magnitude_ema, bias, clamp=None, out_gain=1.0):
    """ToRGB in one pass: ``clamp(conv1x1(x, kernel * styles / sqrt(I) / sqrt(ema)) + bias) * out_gain`` [N, O, H,
    W] float32 (the plain path's ``modulated_conv2d(..., demodulate=False)`` then bias and clamp, and the network's
    ``output_scale`` as ``out_gain``).

    x: [N, I, H, W] (fp16 or float32; a channel slice of a padded buffer is fine); kernel: [O, I, 1, 1] or [O, I]
    (the layer's weight); styles: the raw affine output [N, I]; magnitude_ema: 0-d tensor; bias [O]; clamp: the
    layer's conv_clamp (None: none)."""
    n, c_in, h, w = x.shape
    k = kernel.reshape(kernel.shape[0], -1).float().contiguous()
    if k.shape[1] != c_in or styles.shape != (n, c_in):
        raise ValueError(f"kernel {tuple(kernel.shape)} / styles {tuple(styles.shape)} don't match x "
                         f"{tuple(x.shape)}")
    c_out = k.shape[0]
    out = torch.empty((n, c_out, h, w), dtype=torch.float32, device=x.device)
    plane = h * w
    bp = 256
    grid = (triton.cdiv(plane, bp), n)
    _torgb_kernel[grid](x, k, styles.float().contiguous(), magnitude_ema.reshape(1), bias.float().contiguous(), out, c_in,
                        plane, x.stride(0), 1 / math.sqrt(c_in), 3.0e38 if clamp is None else float(clamp),
                        float(out_gain), C_OUT=c_out, CO=triton.next_power_of_2(c_out), BC=8, BP=bp, num_warps=4)
    return out
