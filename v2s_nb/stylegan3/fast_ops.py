"""Fast filtered leaky ReLU for CUDA, written in Triton (compiled just in time; nothing to build).

The plain path (:func:`v2s_nb.stylegan3.ops.filtered_lrelu`) upsamples by zero-stuffing and filters the
stuffed signal with depthwise convolutions: most multiply-adds hit zeros, and the upsampled tensor makes
several round trips through memory. Here the same operator runs as three kernels per channel chunk:

1. ``upsample along x`` — polyphase: each output sample takes only the ``taps / up`` filter taps that meet
   real input samples (the bias is added on load);
2. ``upsample along y`` — the same along rows, with leaky ReLU, gain and clamp applied before the store;
3. ``downsample`` — a direct strided FIR (2-D radial or two 1-D separable passes), only at the kept samples.

Channels are processed in chunks so the upsampled intermediate stays under a memory budget. Arithmetic is
float32 inside the kernels whatever the storage dtype. Gradients: the forward runs these kernels, the
backward recomputes the plain path under autograd (exact gradients, plain-path speed).
"""

from __future__ import annotations

import os
import warnings

import torch

from . import ops

try:  # Triton ships with CUDA builds of PyTorch; without it the plain path is used.
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    HAVE_TRITON = False

# Upper bound on the bytes of one chunk's upsampled intermediate (the rest of the layer streams through it).
CHUNK_BYTES = int(os.environ.get("V2S_NB_FAST_CHUNK_MB", "1024")) * 2 ** 20

if HAVE_TRITON:

    @triton.jit
    def _up_axis_kernel(x_ptr, b_ptr, f_ptr, out_ptr, n_in, n_out, n_other, s_in_plane, s_in_axis, s_in_other,
                        s_out_plane, s_out_axis, s_out_other, channels, pad0, gain, slope, clamp,
                        UP: tl.constexpr, PHASE_TAPS: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
                        BLOCK_A: tl.constexpr, BLOCK_O: tl.constexpr):
        """Zero-stuff by UP, pad by pad0, correlate with f (already flipped and scaled) along one axis."""
        plane = tl.program_id(0)
        i = tl.program_id(1) * BLOCK_A + tl.arange(0, BLOCK_A)  # output position along the filtered axis
        r = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)  # position along the other axis
        # Only taps k with (i + k - pad0) divisible by UP meet a stuffed input sample.
        k0 = (pad0 - i + UP * 65536) % UP
        acc = tl.zeros([BLOCK_A, BLOCK_O], dtype=tl.float32)
        r_ok = r < n_other
        if HAS_BIAS:
            bias = tl.load(b_ptr + plane % channels).to(tl.float32)
        for t in tl.static_range(PHASE_TAPS):
            k = k0 + UP * t
            tap = tl.load(f_ptr + k)
            j = (i + k - pad0) // UP
            ok = ((j >= 0) & (j < n_in) & (i < n_out))[:, None] & r_ok[None, :]
            ptrs = x_ptr + plane * s_in_plane + j[:, None] * s_in_axis + r[None, :] * s_in_other
            v = tl.load(ptrs, mask=ok, other=0.0).to(tl.float32)
            if HAS_BIAS:
                v = tl.where(ok, v + bias, 0.0)
            acc += tap[:, None] * v
        if ACT:
            acc = tl.where(acc >= 0, acc, acc * slope) * gain
            acc = tl.minimum(tl.maximum(acc, -clamp), clamp)
        out_ok = (i < n_out)[:, None] & r_ok[None, :]
        optrs = out_ptr + plane * s_out_plane + i[:, None] * s_out_axis + r[None, :] * s_out_other
        tl.store(optrs, acc.to(out_ptr.dtype.element_ty), mask=out_ok)

    @triton.jit
    def _down_kernel(u_ptr, f_ptr, out_ptr, h_in, w_in, h_out, w_out, KH: tl.constexpr, KW: tl.constexpr,
                     DY: tl.constexpr, DX: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
        """Direct FIR (KH x KW taps, already flipped) evaluated only at the kept samples (stride DY, DX)."""
        plane = tl.program_id(0)
        oy = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        ox = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
        ok = (oy < h_out)[:, None] & (ox < w_out)[None, :]
        base = u_ptr + plane * h_in * w_in
        acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
        for ky in tl.static_range(KH):
            row = base + (oy * DY + ky)[:, None] * w_in
            for kx in tl.static_range(KW):
                tap = tl.load(f_ptr + ky * KW + kx)
                v = tl.load(row + (ox * DX + kx)[None, :], mask=ok, other=0.0).to(tl.float32)
                acc += tap * v
        optrs = out_ptr + plane * h_out * w_out + oy[:, None] * w_out + ox[None, :]
        tl.store(optrs, acc.to(out_ptr.dtype.element_ty), mask=ok)


def _cdiv(a, b):
    return (a + b - 1) // b


def _up_axis(x, f, up, pad0, pad1, axis, bias=None, channels=1, act=None):
    """Polyphase upsampling of [P, H, W] along ``axis`` (2 = x, 1 = y). ``f``: flipped, gain-scaled taps."""
    p, h, w = x.shape
    n_in = w if axis == 2 else h
    taps = f.numel()
    n_out = n_in * up + pad0 + pad1 - taps + 1
    out_shape = (p, h, n_out) if axis == 2 else (p, n_out, w)
    out = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    s_in = (x.stride(0), x.stride(axis), x.stride(3 - axis))
    s_out = (out.stride(0), out.stride(axis), out.stride(3 - axis))
    n_other = h if axis == 2 else w
    gain, slope, clamp = act if act is not None else (1.0, 1.0, 0.0)
    block_a, block_o = (64, 16) if axis == 2 else (16, 64)
    grid = (p, _cdiv(n_out, block_a), _cdiv(n_other, block_o))
    _up_axis_kernel[grid](x, bias if bias is not None else x, f, out, n_in, n_out, n_other, *s_in, *s_out, channels,
                          pad0, float(gain), float(slope), float(clamp if clamp is not None else 3.0e38),
                          UP=up, PHASE_TAPS=taps // up, HAS_BIAS=bias is not None, ACT=act is not None,
                          BLOCK_A=block_a, BLOCK_O=block_o)
    return out


def _down(u, f, dy, dx):
    """Strided FIR of [P, H, W] with a 2-D flipped filter ``f`` [KH, KW]."""
    p, h, w = u.shape
    kh, kw = f.shape
    h_out, w_out = (h - kh) // dy + 1, (w - kw) // dx + 1
    out = torch.empty((p, h_out, w_out), dtype=u.dtype, device=u.device)
    grid = (p, _cdiv(h_out, 16), _cdiv(w_out, 64))
    _down_kernel[grid](u, f, out, h, w, h_out, w_out, KH=kh, KW=kw, DY=dy, DX=dx, BLOCK_H=16, BLOCK_W=64)
    return out


def _prepared_filters(fu, fd, up, device):
    """Flipped float32 taps with the upsampling gain folded in (sqrt(up**2) = up per separable pass)."""
    fu_t = (fu.flip(0).float() * up).contiguous().to(device)
    if fd.ndim == 1:
        fd_t = fd.flip(0).float().contiguous().to(device)
    else:
        fd_t = fd.flip([0, 1]).float().contiguous().to(device)
    return fu_t, fd_t


def fast_filtered_lrelu_forward(x, fu, fd, b, up, down, padding, gain, slope, clamp):
    """Same result as :func:`ops.filtered_lrelu` for separable ``fu`` and 1-D or 2-D ``fd`` (no autograd)."""
    n, c, h, w = x.shape
    px0, px1, py0, py1 = (int(v) for v in padding)
    fu_t, fd_t = _prepared_filters(fu, fd, up, x.device)
    x = x.contiguous()
    planes = x.reshape(n * c, h, w)
    bias = b.to(torch.float32).contiguous()
    taps_u = fu.shape[0]
    hu = h * up + py0 + py1 - taps_u + 1
    wu = w * up + px0 + px1 - taps_u + 1
    kd = fd.shape[0]
    h_out, w_out = (hu - kd) // down + 1, (wu - kd) // down + 1
    out = torch.empty((n * c, h_out, w_out), dtype=x.dtype, device=x.device)
    chunk = max(1, min(n * c, CHUNK_BYTES // max(1, hu * wu * x.element_size())))
    act = (gain, slope, clamp)
    for start in range(0, n * c, chunk):
        stop = min(n * c, start + chunk)
        # The bias kernel argument is indexed by plane % c, so chunks must start on a known channel offset:
        # pass a rolled view of the bias instead of re-indexing inside the kernel.
        b_chunk = torch.roll(bias, -(start % c))
        t = _up_axis(planes[start:stop], fu_t, up, px0, px1, axis=2, bias=b_chunk, channels=c)
        u = _up_axis(t, fu_t, up, py0, py1, axis=1, act=act)
        del t
        if fd.ndim == 2:
            out[start:stop] = _down(u, fd_t, down, down)
        else:
            v = _down(u, fd_t[None, :], 1, down)
            del u
            out[start:stop] = _down(v, fd_t[:, None], down, 1)
    return out.reshape(n, c, h_out, w_out)


class _FilteredLReLU(torch.autograd.Function):
    """Fast forward; backward by recomputing the plain (reference) operator under autograd."""

    @staticmethod
    def forward(ctx, x, b, fu, fd, up, down, padding, gain, slope, clamp):
        ctx.save_for_backward(x, b)
        ctx.args = (fu, fd, up, down, padding, gain, slope, clamp)
        return fast_filtered_lrelu_forward(x, fu, fd, b, up, down, padding, gain, slope, clamp)

    @staticmethod
    def backward(ctx, grad):
        x, b = ctx.saved_tensors
        fu, fd, up, down, padding, gain, slope, clamp = ctx.args
        with torch.enable_grad():
            xd = x.detach().requires_grad_(ctx.needs_input_grad[0])
            bd = b.detach().requires_grad_(ctx.needs_input_grad[1])
            y = ops.filtered_lrelu(xd, fu, fd, bd, up=up, down=down, padding=padding, gain=gain, slope=slope,
                                   clamp=clamp)
            inputs = [t for t in (xd, bd) if t.requires_grad]
            grads = torch.autograd.grad(y, inputs, grad) if inputs else []
        grads = iter(grads)
        gx = next(grads) if ctx.needs_input_grad[0] else None
        gb = next(grads) if ctx.needs_input_grad[1] else None
        return gx, gb, None, None, None, None, None, None, None, None


def can_use_fast(x, fu, fd) -> bool:
    """Whether the fast kernels apply: CUDA tensor, Triton present, separable up filter, a down filter."""
    return HAVE_TRITON and x.is_cuda and fu is not None and fd is not None and fu.ndim == 1


_warned = False


def warn_fallback(reason: str):
    global _warned
    if not _warned:
        warnings.warn(f"v2s_nb: fast StyleGAN3 path unavailable ({reason}); using the plain PyTorch path.",
                      RuntimeWarning, stacklevel=3)
        _warned = True


def filtered_lrelu(x, fu, fd, b, up=1, down=1, padding=(0, 0, 0, 0), gain=2 ** 0.5, slope=0.2, clamp=None):
    """Drop-in for :func:`ops.filtered_lrelu` that runs the Triton kernels where they apply."""
    if not can_use_fast(x, fu, fd):
        return ops.filtered_lrelu(x, fu, fd, b, up=up, down=down, padding=padding, gain=gain, slope=slope,
                                  clamp=clamp)
    clamp = float(clamp) if clamp is not None else 3.0e38
    if torch.is_grad_enabled() and (x.requires_grad or b.requires_grad):
        return _FilteredLReLU.apply(x, b, fu, fd, up, down, tuple(padding), gain, slope, clamp)
    return fast_filtered_lrelu_forward(x, fu, fd, b, up, down, padding, gain, slope, clamp)
