"""A 3x3 convolution on NCHW fp16 feature maps in Triton (implicit GEMM), for StyleGAN3-T's fast path.

cuDNN's tensor-core kernels want NHWC: on NCHW fp16 input it transposes the input in, and the output back, around
each convolution (at T batch 8 on an H200, 9.6 ms of transposes beside about 13 ms of convolutions). This kernel
reads and writes NCHW directly: each program computes a tile of output pixels (TH x TW) for a block of BN output
channels as a sum over the KS*KS taps and the input-channel blocks of [pixels x channels] @ [channels x outputs]
tensor-core products. For a fixed channel the pixels of a tile row are contiguous in NCHW, so loads and stores
coalesce along x. The modulation scalings are not here: the fast path applies them in the activation kernels
around the convolution (the previous layer writes the scaled input, the next one demodulates).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    HAVE_TRITON = False


if HAVE_TRITON:

    @triton.jit
    def _conv_kernel(x_ptr, w_ptr, out_ptr, c_in, h, w, c_out, h_out, w_out, pad, x_sn, tiles_x, n_cblocks,
                     KS: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                     COUT_PAD: tl.constexpr, STAGES: tl.constexpr):
        """out[n, o, y, x] = sum_{c, ky, kx} W[o, c, ky, kx] * x[n, c, y + ky - pad, x + kx - pad] (zero outside).

        w_ptr: the weights rearranged as [KS*KS, n_cblocks*BK, COUT_PAD] (zero rows / columns past c_in / c_out).
        x_sn: the input's batch stride (a channel slice of a larger buffer is fine: its first c_in planes)."""
        pid_t = tl.program_id(0)
        pid_o = tl.program_id(1)
        n = tl.program_id(2).to(tl.int64)  # 64-bit offsets: large batches pass 2**31 elements
        BM: tl.constexpr = TH * TW
        m = tl.arange(0, BM)
        oy = (pid_t // tiles_x) * TH + m // TW
        ox = (pid_t % tiles_x) * TW + m % TW
        o = pid_o * BN + tl.arange(0, BN)
        kc = tl.arange(0, BK)
        x_base = x_ptr + n * x_sn
        plane = h * w
        acc = tl.zeros([BM, BN], dtype=tl.float32)
        for k in tl.range(0, KS * KS * n_cblocks, num_stages=STAGES):
            t = k // n_cblocks
            c = (k % n_cblocks) * BK + kc
            iy = oy + t // KS - pad
            ix = ox + t % KS - pad
            ok = ((iy >= 0) & (iy < h) & (ix >= 0) & (ix < w))[:, None] & (c < c_in)[None, :]
            a = tl.load(x_base + c[None, :] * plane + (iy * w + ix)[:, None], mask=ok, other=0.0)  # [BM, BK]
            b = tl.load(w_ptr + (t * n_cblocks * BK + c)[:, None] * COUT_PAD + o[None, :])  # [BK, BN]
            acc = tl.dot(a, b, acc)
        keep = ((oy < h_out) & (ox < w_out))[:, None] & (o < c_out)[None, :]
        optr = out_ptr + n * c_out * h_out * w_out + o[None, :] * (h_out * w_out) + (oy * w_out + ox)[:, None]
        tl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=keep)


# Where this kernel runs instead of cuDNN: fp16 layers with at most this many output channels. Measured on an H200
# (StyleGAN3-T 1024, batch 8, cuDNN's time including its NCHW <-> NHWC transposes): 81 -> 51 channels at 1044 px
# 6.7 -> 5.5 ms, 51 -> 32 4.7 -> 3.0 ms, 32 -> 32 1.9 -> 1.6 ms; with 81 or more outputs cuDNN was faster (by
# 1.4-2.1x on T's 128-512 channel layers), its tensor-core kernels then outweighing the transposes.
MAX_OUT_CHANNELS = 64


def applies(x, weight) -> bool:
    """Whether :func:`conv2d_nchw` is the faster choice for this fp16 CUDA convolution (inference)."""
    return (HAVE_TRITON and x.is_cuda and x.dtype == torch.float16 and weight.shape[0] <= MAX_OUT_CHANNELS
            and weight.shape[2] == weight.shape[3] and not torch.is_grad_enabled())


def _config(c_in, c_out):
    """(TH, TW, BN, BK, warps, stages): 4 x 32 pixel tiles, all outputs in one block, the channel block (32 or 64)
    that pads the input channels least (the larger on a tie: fewer steps). The best of 8-16 configurations per
    layer on an H200."""
    bn = 32 if c_out <= 32 else 64
    bk = min((64, 32), key=lambda b: -(-c_in // b) * b)
    return 4, 32, bn, bk, 4, 3


def arranged_weight(weight, bk, bn, dtype):
    """[O, I, k, k] -> [k*k, I rounded up to bk, O rounded up to bn], zero padded, in ``dtype`` (the kernel's B)."""
    o, i, kh, kw = weight.shape
    ip, op = -(-i // bk) * bk, -(-o // bn) * bn
    out = weight.new_zeros((kh * kw, ip, op), dtype=dtype)
    out[:, :i, :o] = weight.permute(2, 3, 1, 0).reshape(kh * kw, i, o).to(dtype)
    return out


def conv2d_nchw(x, weight, padding, config=None):
    """3x3 (any odd k) stride-1 convolution of fp16 ``x`` [N, C, H, W] with ``weight`` [O, C, k, k], zero padding
    ``padding`` on every side; returns a new contiguous [N, O, H + 2p - k + 1, W + 2p - k + 1] tensor in x's
    dtype. ``x`` may be a channel slice of a larger buffer (each sample's planes contiguous). Inference only."""
    n, c, h, w = x.shape
    o, c_w, kh, kw = weight.shape
    if c_w != c or kh != kw:
        raise ValueError(f"weight {tuple(weight.shape)} does not fit input {tuple(x.shape)}")
    if not x[0].is_contiguous():
        x = x.contiguous()
    th, tw, bn, bk, warps, stages = config or _config(c, o)
    wt = arranged_weight(weight, bk, bn, x.dtype)
    h_out, w_out = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    out = torch.empty((n, o, h_out, w_out), dtype=x.dtype, device=x.device)
    tiles_x = -(-w_out // tw)
    grid = (-(-h_out // th) * tiles_x, wt.shape[2] // bn, n)
    _conv_kernel[grid](x, wt, out, c, h, w, o, h_out, w_out, padding, x.stride(0) if n > 1 else c * h * w, tiles_x,
                       wt.shape[1] // bk, KS=kh, TH=th, TW=tw, BN=bn, BK=bk, COUT_PAD=wt.shape[2], STAGES=stages,
                       num_warps=warps)
    return out
