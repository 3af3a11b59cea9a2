"""The fp16 3x3 convolutions of StyleGAN3-T's fast path, on NCHW feature maps, in Triton (implicit GEMM) or cuDNN
(and the gradients of R's per-sample 1x1 products).

cuDNN's tensor-core kernels want NHWC: on NCHW fp16 input it transposes the input in, and the output back, around
each convolution, and with T's few, odd channel counts at 1044 px that costs more than the products. The modulation
scalings are not here: the fast path applies them in the activation kernels around the convolution (the previous
layer writes the scaled input, the next one demodulates). Three forms, all reading and writing NCHW:

* rows (:func:`_conv_rows_kernel`, GPUs with TMA, compute capability 9+): the input's rows must start on 16-byte
  boundaries (the previous activation kernel writes them so: ``row_align``). Each program takes one output row
  segment. TMA copies the input in whole aligned row boxes, which can't start at the odd column a shifted tap
  needs; so each box feeds all three column taps of its kernel row, into three accumulators over the input's
  columns, and the column shifts are made once per tile, in registers. Three loads per channel block instead of
  nine, asynchronous and pipelined. Sums of [pixels x channels] @ [channels x outputs] tensor-core products.
* pointers (:func:`_conv_kernel`, any GPU and any layout): per tap, the shifted input tile is gathered with
  ordinary loads.
* cudnn (:func:`_conv_cudnn_nhwc`), for layers of more than :data:`MAX_OUT_CHANNELS` outputs, where cuDNN's
  products are the faster: cuDNN on channels-last copies made by our transpose kernels, which run faster than
  cuDNN's own, with output channels padded where that changes cuDNN's choice of kernel for the better.

On T's layers of at most 64 outputs rows beats pointers, and both beat cuDNN with its transposes; from 81 outputs up
cuDNN's products win and run in the cudnn form. ``benchmarks/bench_conv.py`` times every form on every layer;
the figures are in docs/performance.md ('Kernel choices, measured').

Gradients (training, fp16 only): :func:`conv2d_input_grad_nchw` is the convolution of the output gradient with
the flipped, transposed kernel, run by :func:`conv2d_nchw` (through a per-sample input scale, d x and d scale come
out of the same pass); :func:`conv2d_weight_grad_nchw` is cuDNN's on channels-last copies made by our transposes
(the input scale applied in them, channels padded to powers of two), or its own Triton kernel
(:func:`_conv_wgrad_kernel`: per block of output and input channels, [outputs x pixels] @ [pixels x inputs] products
per tap, over a share of one sample's pixels, added atomically into a float32 gradient) where cuDNN is off. Both
read and write NCHW (``benchmarks/bench_conv.py --grads`` times them against cuDNN's backward on NCHW).

R's 1x1 layers have a weight per sample: their gradients on large planes are :func:`batched_1x1_weight_grad`
(each sample's [outputs x pixels] @ [pixels x inputs], the pixels split over programs) and
:func:`batched_1x1_input_grad` (``benchmarks/bench_conv.py --grads-1x1`` times them against cuBLAS's batched
products).
"""

from __future__ import annotations

import torch
from torch.utils.weak import WeakIdKeyDictionary

from . import fast_config
from .ops import _round8

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    HAVE_TRITON = False

try:  # what a kernel's first launch raises where it needs more shared memory than the GPU has
    from triton.runtime.errors import OutOfResources
except Exception:  # pragma: no cover - depends on the install
    class OutOfResources(RuntimeError):
        """Stand-in where Triton is missing (nothing raises it then)."""

try:  # host-side TMA descriptors (Triton 3.4+)
    from triton.tools.tensor_descriptor import TensorDescriptor
except Exception:  # pragma: no cover - depends on the install
    TensorDescriptor = None


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

    @triton.jit
    def _conv_rows_kernel(x_desc, w_desc, out_ptr, h_out, w_out, c_out, tiles_x, n_cblocks, TW: tl.constexpr,
                          BN: tl.constexpr, BK: tl.constexpr, STAGES: tl.constexpr, OUT_MAJOR: tl.constexpr):
        """3x3 convolution, zero padding 2: out[n, o, y, x] = sum_{c, ky, kx} W[o, c, ky, kx] x[n, c, y+ky-2, x+kx-2].

        x_desc: TMA descriptor of x [N, C, H, W], box [1, BK, 1, TW]. Program (t, ob, n) reads the input columns
        [x0, x0 + TW), x0 = (t % tiles_x) * (TW - 8) - 8 (16-byte aligned: TMA needs it), of the three rows around
        output row t // tiles_x, and owns the output columns x0 + [8, TW): output column x0 + j + 1 is
        P0[j - 1] + P1[j] + P2[j + 1], where P_kx sums W[., ., ky, kx] @ input over ky and the channel blocks.
        w_desc: the weights as [9, O', C'] (OUT_MAJOR: products [BN, BK] @ [BK, TW], accumulators [outputs,
        pixels]) or [9, C', O'] (products [TW, BK] @ [BK, BN], accumulators [pixels, outputs]), zero padded."""
        pid_t = tl.program_id(0)
        pid_o = tl.program_id(1)
        n = tl.program_id(2)
        oy = pid_t // tiles_x
        x0 = (pid_t % tiles_x) * (TW - 8) - 8
        if OUT_MAJOR:
            p0 = tl.zeros([BN, TW], dtype=tl.float32)
        else:
            p0 = tl.zeros([TW, BN], dtype=tl.float32)
        p1 = tl.zeros_like(p0)
        p2 = tl.zeros_like(p0)
        for k in tl.range(0, 3 * n_cblocks, num_stages=STAGES):
            ky = k // n_cblocks
            cb = (k % n_cblocks) * BK
            a = x_desc.load([n, cb, oy + ky - 2, x0]).reshape(BK, TW)
            if OUT_MAJOR:
                p0 = tl.dot(w_desc.load([ky * 3, pid_o * BN, cb]).reshape(BN, BK), a, p0)
                p1 = tl.dot(w_desc.load([ky * 3 + 1, pid_o * BN, cb]).reshape(BN, BK), a, p1)
                p2 = tl.dot(w_desc.load([ky * 3 + 2, pid_o * BN, cb]).reshape(BN, BK), a, p2)
            else:
                at = a.T
                p0 = tl.dot(at, w_desc.load([ky * 3, cb, pid_o * BN]).reshape(BK, BN), p0)
                p1 = tl.dot(at, w_desc.load([ky * 3 + 1, cb, pid_o * BN]).reshape(BK, BN), p1)
                p2 = tl.dot(at, w_desc.load([ky * 3 + 2, cb, pid_o * BN]).reshape(BK, BN), p2)
        # output column x0 + j + 1 is P0[j - 1] + P1[j] + P2[j + 1]; j + 1 < TW: the shifted columns are in this tile
        j = tl.arange(0, TW)
        o = pid_o * BN + tl.arange(0, BN)
        ox = x0 + j + 1
        if OUT_MAJOR:
            acc = p1 + _shift_cols(p0, -1, BN, TW) + _shift_cols(p2, 1, BN, TW)
        else:
            acc = tl.trans(p1) + _shift_cols(tl.trans(p0), -1, BN, TW) + _shift_cols(tl.trans(p2), 1, BN, TW)
        own = (j >= 7) & (j < TW - 1) & (ox < w_out)
        ptr = (out_ptr + n.to(tl.int64) * c_out * h_out * w_out + o[:, None].to(tl.int64) * (h_out * w_out)
               + (oy * w_out + ox)[None, :])  # 64-bit: large batches
        tl.store(ptr, acc.to(out_ptr.dtype.element_ty), mask=(o < c_out)[:, None] & own[None, :])

    @triton.jit
    def _shift_cols(p, s: tl.constexpr, BN: tl.constexpr, TW: tl.constexpr):
        """[BN, TW] -> q with q[:, j] = p[:, j + s] (s = +-1; the edge column repeats). Split into even and odd
        columns (neighbours in a thread's registers), only one half needs moving: one gather over half the columns.
        Faster than gathering the whole tile on T's 1044 px convolutions (docs/performance.md)."""
        even, odd = tl.split(p.reshape(BN, TW // 2, 2))
        i = tl.arange(0, TW // 2)
        if s > 0:  # q[2i] = p[2i + 1] = odd[i], q[2i + 1] = p[2i + 2] = even[i + 1]
            nxt = tl.gather(even, tl.broadcast_to(tl.minimum(i + 1, TW // 2 - 1)[None, :], (BN, TW // 2)), 1)
            return tl.join(odd, nxt).reshape(BN, TW)
        else:  # q[2i] = p[2i - 1] = odd[i - 1], q[2i + 1] = p[2i] = even[i]
            prv = tl.gather(odd, tl.broadcast_to(tl.maximum(i - 1, 0)[None, :], (BN, TW // 2)), 1)
            return tl.join(prv, even).reshape(BN, TW)

    @triton.jit
    def _wgrad_tap(acc, g, x_base, x_sc, x_sy, i, i_ok, p_ok, oy, ox, h, w, pad, ky, kx, ks):
        """acc + g @ x_tap: g [BO, P] the output gradient's pixels, x_tap [P, BI] the input at the pixels' tap
        (ky, kx) (zero outside the input and for taps past the kernel, ky or kx >= ks)."""
        iy = oy + ky - pad
        ix = ox + kx - pad
        h_tap = tl.where((ky < ks) & (kx < ks), h, 0)  # no rows for taps past the kernel
        ok = (p_ok & (iy >= 0) & (iy < h_tap) & (ix >= 0) & (ix < w))[:, None] & i_ok[None, :]
        a = tl.load(x_base + (iy * x_sy + ix)[:, None] + (i * x_sc)[None, :], mask=ok, other=0.0)
        return tl.dot(g, a, acc)

    @triton.jit
    def _wgrad_add(out_ptr, base, acc, o_ok, i, c_in, ky, kx, ks):
        """out[o, i, ky, kx] += acc[o, i] (float32 atomics, relaxed; taps past the kernel are not written)."""
        i_tap = tl.where((ky < ks) & (kx < ks), c_in, 0)
        tl.atomic_add(out_ptr + base + ky * ks + kx, acc, mask=o_ok[:, None] & (i < i_tap)[None, :], sem="relaxed")

    @triton.jit
    def _conv_wgrad_kernel(x_ptr, g_ptr, s_ptr, out_ptr, c_in, h, w, c_out, h_out, w_out, pad, ks, x_sn, x_sc, x_sy,
                           g_sn, g_sc, tiles_per_sample, tiles_per_split, splits_per_sample, n_iblocks, groups_x,
                           BO: tl.constexpr, BI: tl.constexpr, P: tl.constexpr, STAGES: tl.constexpr,
                           SCALE: tl.constexpr):
        """out[o, i, ky, kx] += sum_{n, y, x} g[n, o, y, x] * x[n, i, y + ky - pad, x + kx - pad] (zero outside x;
        SCALE: x[n, i] times s[n, i], float32 [N, c_in]).

        Program (c, s, t): output channels block c // n_iblocks (BO), input channels block c % n_iblocks (BI), the
        three taps ky = t // groups_x, kx in 3 (t % groups_x) + [0, 3) (one group for 3x3 kernels), sample
        s // splits_per_sample and its pixel tiles [r, r + 1) * tiles_per_split, r = s % splits_per_sample, of
        tiles_per_sample tiles of P output pixels (row-major order, y * w_out + x). Three float32 accumulators
        [BO, BI], one per tap, sums of [BO, P] @ [P, BI] products; one sample per program, so its scale applies
        once, to the sums; added atomically into out (float32 [c_out, c_in, ks, ks], zeroed).
        g: [N, c_out, h_out, w_out], each plane dense; x: [N, c_in, h, w] with strides x_sn, x_sc, x_sy, 1."""
        pid_c = tl.program_id(0)
        split = tl.program_id(1)
        tg = tl.program_id(2)
        ky = tg // groups_x
        kx0 = (tg % groups_x) * 3
        n = (split // splits_per_sample).to(tl.int64)  # 64-bit sample offsets: large batches pass 2**31 elements
        o = (pid_c // n_iblocks) * BO + tl.arange(0, BO)
        i = (pid_c % n_iblocks) * BI + tl.arange(0, BI)
        o_ok = o < c_out
        i_ok = i < c_in
        q = tl.arange(0, P)
        hw_out = h_out * w_out
        a0 = tl.zeros([BO, BI], dtype=tl.float32)
        a1 = tl.zeros_like(a0)
        a2 = tl.zeros_like(a0)
        g_base = g_ptr + n * g_sn + (o * g_sc)[:, None]
        xb = x_ptr + n * x_sn
        first = (split % splits_per_sample) * tiles_per_split
        for t in tl.range(first, tl.minimum(first + tiles_per_split, tiles_per_sample), num_stages=STAGES):
            p = t * P + q
            p_ok = p < hw_out
            oy = p // w_out
            ox = p % w_out
            g = tl.load(g_base + p[None, :], mask=o_ok[:, None] & p_ok[None, :], other=0.0)  # [BO, P]
            a0 = _wgrad_tap(a0, g, xb, x_sc, x_sy, i, i_ok, p_ok, oy, ox, h, w, pad, ky, kx0, ks)
            a1 = _wgrad_tap(a1, g, xb, x_sc, x_sy, i, i_ok, p_ok, oy, ox, h, w, pad, ky, kx0 + 1, ks)
            a2 = _wgrad_tap(a2, g, xb, x_sc, x_sy, i, i_ok, p_ok, oy, ox, h, w, pad, ky, kx0 + 2, ks)
        if SCALE:
            s = tl.load(s_ptr + n * c_in + i, mask=i_ok, other=0.0)[None, :]
            a0 = a0 * s
            a1 = a1 * s
            a2 = a2 * s
        base = (o[:, None] * c_in + i[None, :]) * (ks * ks)
        _wgrad_add(out_ptr, base, a0, o_ok, i, c_in, ky, kx0, ks)
        _wgrad_add(out_ptr, base, a1, o_ok, i, c_in, ky, kx0 + 1, ks)
        _wgrad_add(out_ptr, base, a2, o_ok, i, c_in, ky, kx0 + 2, ks)

    @triton.jit
    def _batched_1x1_wgrad_kernel(g_ptr, x_ptr, out_ptr, c_out, c_in, pixels, g_sn, g_so, x_sn, x_si, per_split,
                                  n_iblocks, BO: tl.constexpr, BI: tl.constexpr, P: tl.constexpr,
                                  STAGES: tl.constexpr):
        """out[n, o, i] += sum_p g[n, o, p] * x[n, i, p] over the pixels [s, s + 1) * per_split of program
        (c, s, n): output channels block c // n_iblocks (BO), input channels block c % n_iblocks (BI); sums of
        [BO, P] @ [P, BI] products in float32, added atomically into out (float32 [N, c_out, c_in], zeroed).
        g: [N, c_out, pixels], x: [N, c_in, pixels], pixels adjacent (strides g_sn, g_so / x_sn, x_si, 1)."""
        pid_c = tl.program_id(0)
        split = tl.program_id(1)
        n = tl.program_id(2).to(tl.int64)  # 64-bit sample offsets: large batches pass 2**31 elements
        o = (pid_c // n_iblocks) * BO + tl.arange(0, BO)
        i = (pid_c % n_iblocks) * BI + tl.arange(0, BI)
        o_ok = o < c_out
        i_ok = i < c_in
        q = tl.arange(0, P)
        g_rows = g_ptr + n * g_sn + (o * g_so)[:, None]
        x_cols = x_ptr + n * x_sn + (i * x_si)[None, :]
        acc = tl.zeros([BO, BI], dtype=tl.float32)
        first = split * per_split
        for p0 in tl.range(first, tl.minimum(first + per_split, pixels), P, num_stages=STAGES):
            p = p0 + q
            p_ok = p < pixels
            a = tl.load(g_rows + p[None, :], mask=o_ok[:, None] & p_ok[None, :], other=0.0)  # [BO, P]
            b = tl.load(x_cols + p[:, None], mask=p_ok[:, None] & i_ok[None, :], other=0.0)  # [P, BI]
            acc = tl.dot(a, b, acc)
        tl.atomic_add(out_ptr + n * c_out * c_in + o[:, None] * c_in + i[None, :], acc,
                      mask=o_ok[:, None] & i_ok[None, :], sem="relaxed")

    @triton.jit
    def _batched_1x1_dgrad_kernel(w_ptr, g_ptr, out_ptr, c_out, c_in, pixels, g_sn, g_so, BI: tl.constexpr,
                                  BK: tl.constexpr, P: tl.constexpr, STAGES: tl.constexpr):
        """out[n, i, p] = sum_o w[n, o, i] * g[n, o, p] for program (pixel block, input block, n): [BI, BK] @
        [BK, P] products over the output channels in blocks of BK, float32 sums. w: [N, c_out, c_in] contiguous;
        g: [N, c_out, pixels] (strides g_sn, g_so, 1); out: contiguous [N, c_in, pixels]."""
        p = tl.program_id(0) * P + tl.arange(0, P)
        i = tl.program_id(1) * BI + tl.arange(0, BI)
        n = tl.program_id(2).to(tl.int64)  # 64-bit sample offsets: large batches pass 2**31 elements
        p_ok = p < pixels
        i_ok = i < c_in
        kk = tl.arange(0, BK)
        acc = tl.zeros([BI, P], dtype=tl.float32)
        for k0 in tl.range(0, c_out, BK, num_stages=STAGES):
            o = k0 + kk
            o_ok = o < c_out
            a = tl.load(w_ptr + n * c_out * c_in + o[None, :] * c_in + i[:, None], mask=i_ok[:, None] & o_ok[None, :],
                        other=0.0)  # [BI, BK]
            b = tl.load(g_ptr + n * g_sn + (o * g_so)[:, None] + p[None, :], mask=o_ok[:, None] & p_ok[None, :],
                        other=0.0)  # [BK, P]
            acc = tl.dot(a, b, acc)
        tl.store(out_ptr + n * c_in * pixels + i[:, None] * pixels + p[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=i_ok[:, None] & p_ok[None, :])

    @triton.jit
    def _to_nhwc_kernel(x_ptr, s_ptr, out_ptr, c, c_pad, hw, x_sn, x_sc, x_sp, BC: tl.constexpr, BP: tl.constexpr,
                        SCALE: tl.constexpr):
        """out[n, p, ch] = x[n, ch, p] (SCALE: times s[n, ch], float32 [N, c], rounded once) for ch < c, 0 for
        c <= ch < c_pad (p: pixel index y * W + x; out contiguous [N, H*W, c_pad]). The tile is loaded along pixels
        and stored along channels; Triton moves it between the two orders through shared memory, so both sides are
        coalesced."""
        p = tl.program_id(0) * BP + tl.arange(0, BP)
        ch = tl.program_id(1) * BC + tl.arange(0, BC)
        n = tl.program_id(2).to(tl.int64)  # the sample's offset in 64 bits (large batches), within it 32
        inside = (p < hw)[None, :]
        v = tl.load(x_ptr + n * x_sn + (ch[:, None] * x_sc + p[None, :] * x_sp), mask=(ch < c)[:, None] & inside,
                    other=0.0)
        if SCALE:
            s = tl.load(s_ptr + n * c + ch, mask=ch < c, other=0.0)
            v = (v.to(tl.float32) * s[:, None]).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + n * hw * c_pad + (p[None, :] * c_pad + ch[:, None]), v, mask=(ch < c_pad)[:, None] & inside)

    @triton.jit
    def _scaled_rows_kernel(x_ptr, s_ptr, out_ptr, c, h, w, x_sn, x_sc, x_sy, o_sy, R: tl.constexpr,
                            BW: tl.constexpr):
        """out[n, ch, y, :w] = x[n, ch, y, :w] * s[n, ch] for R rows y of plane n * c + ch (program (plane, row
        block)), in BW-wide column blocks; the product in float32, rounded to out's dtype. out: [N, c, h, o_sy]
        rows (the row padding is left as it is); x: pixels adjacent in a row, strides x_sn, x_sc, x_sy."""
        plane = tl.program_id(0)
        n = (plane // c).to(tl.int64)
        ch = plane % c
        y = tl.program_id(1) * R + tl.arange(0, R)
        y_ok = (y < h)[:, None]
        s = tl.load(s_ptr + plane).to(tl.float32)
        src = x_ptr + n * x_sn + ch * x_sc + (y * x_sy)[:, None]
        dst = out_ptr + plane.to(tl.int64) * h * o_sy + (y * o_sy)[:, None]
        for c0 in range(0, w, BW):
            cols = (c0 + tl.arange(0, BW))[None, :]
            ok = y_ok & (cols < w)
            v = tl.load(src + cols, mask=ok)
            tl.store(dst + cols, (v.to(tl.float32) * s).to(out_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _to_nchw_kernel(y_ptr, out_ptr, s_ptr, x_ptr, sums_ptr, c, hw, y_sn, y_sc, y_sp, BC: tl.constexpr,
                        BP: tl.constexpr, SCALE: tl.constexpr):
        """out[n, ch, p] = y[n, ch, p] for ch < c (out contiguous [N, c, H*W]; y in any layout whose pixels
        y * W + x sit at one stride, e.g. channels-last with more channels). SCALE: out = y * s[n, ch] instead (s
        float32 [N, c]), and sums[n, ch] += sum_p y[n, ch, p] * x[n, ch, p] (x contiguous [N, c, H*W]; float32,
        atomically)."""
        p = tl.program_id(0) * BP + tl.arange(0, BP)
        ch = tl.program_id(1) * BC + tl.arange(0, BC)
        n = tl.program_id(2).to(tl.int64)
        ok = (ch < c)[:, None] & (p < hw)[None, :]
        v = tl.load(y_ptr + n * y_sn + (ch[:, None] * y_sc + p[None, :] * y_sp), mask=ok)
        at = n * c * hw + (ch[:, None] * hw + p[None, :])
        if SCALE:
            v = v.to(tl.float32)
            xv = tl.load(x_ptr + at, mask=ok, other=0.0).to(tl.float32)
            tl.atomic_add(sums_ptr + n * c + ch, tl.sum(v * xv, axis=1), mask=ch < c, sem="relaxed")
            v = v * tl.load(s_ptr + n * c + ch, mask=ch < c, other=0.0)[:, None]
        tl.store(out_ptr + at, v.to(out_ptr.dtype.element_ty), mask=ok)


# Where the Triton kernels run: layers with at most this many output channels. There cuDNN's NCHW <-> NHWC transposes
# cost more than its tensor-core kernels save; from 81 outputs up (T's next size) cuDNN's kernels are the faster and
# run in the cudnn form (docs/performance.md, 'Kernel choices, measured').
MAX_OUT_CHANNELS = 64
# The rows form's row alignment, in elements of fp16: TMA copies start on 16-byte boundaries.
ROW_ALIGN = 8


def applies(x, weight) -> bool:
    """Whether :func:`conv2d_nchw` is the faster choice for this fp16 CUDA convolution (inference): always, with
    its form picked by the output channels."""
    return (HAVE_TRITON and x.is_cuda and x.dtype == torch.float16 and weight.shape[2] == weight.shape[3]
            and not torch.is_grad_enabled())


def _has_tma(device) -> bool:
    """Whether the rows form can run on ``device``: a CUDA GPU with TMA (compute capability 9+) and a Triton with
    host-side tensor descriptors."""
    return (HAVE_TRITON and TensorDescriptor is not None and torch.device(device).type == "cuda"
            and torch.cuda.get_device_capability(device)[0] >= 9)


def row_align_for(device, dtype, out_channels, kernel_size) -> int:
    """The row alignment (elements) to give a layer's output when the next layer's convolution (``out_channels``
    outputs, ``kernel_size`` square) will read it with the rows form, else 1. A layout hint: values don't change."""
    ok = dtype == torch.float16 and out_channels <= MAX_OUT_CHANNELS and kernel_size == 3 and _has_tma(device)
    return ROW_ALIGN if ok else 1


def _rows_form_fits(x, kernel_size, padding) -> bool:
    """Whether the rows form can read ``x`` (a TMA descriptor needs a 16-byte aligned start and strides)."""
    size = x.element_size()
    return (TensorDescriptor is not None and kernel_size == 3 and padding == 2 and x.stride(3) == 1
            and x.data_ptr() % 16 == 0 and all(st * size % 16 == 0 for st in x.stride()[:3]))


def _rows_config(c_in, c_out):
    """(TW, BN, BK, warps, stages, out_major) of the rows form: the best of 12-20 configurations timed per layer of
    T (81 -> 51, 51 -> 32, 32 -> 32 channels at 1044 px): 128-pixel segments, all outputs in one block, accumulators
    [outputs, pixels] above 32 outputs (faster there than [pixels, outputs], slower at 32 outputs; figures in
    docs/performance.md)."""
    bn = 32 if c_out <= 32 else 64
    bk = min((64, 32), key=lambda b: -(-c_in // b) * b)
    return 128, bn, bk, 4, 3, c_out > 32


def _config(c_in, c_out):
    """(TH, TW, BN, BK, warps, stages): 4 x 32 pixel tiles, all outputs in one block, the channel block (32 or 64)
    that pads the input channels least (the larger on a tie: fewer steps). The best of 8-16 configurations timed per
    layer of T."""
    bn = 32 if c_out <= 32 else 64
    bk = min((64, 32), key=lambda b: -(-c_in // b) * b)
    return 4, 32, bn, bk, 4, 3


# Values built from a weight tensor, per tensor (an entry goes with its tensor): see weight_derived.
_WEIGHT_DERIVED = WeakIdKeyDictionary()


def weight_derived(weight, key, build):
    """``build()`` for this ``weight`` tensor and ``key``, kept while the weight's storage and version stay the same
    (an optimiser step or a load moves the version; one entry per key, replaced then; edits through ``.data`` don't
    move it and aren't seen: docs/api.md). For inference: the fast path
    keeps each layer's shared kernel (``fast_path.LayerPlan.shared_kernel``) and, per convolution form, the weight
    operands built from it. Built as normal tensors without autograd, even under ``torch.inference_mode``: a later
    autograd pass may save them for backward."""
    entries = _WEIGHT_DERIVED.get(weight)
    if entries is None:
        entries = _WEIGHT_DERIVED[weight] = {}
    stamp = (weight.data_ptr(), weight._version)
    hit = entries.get(key)
    if hit is None or hit[0] != stamp:
        with torch.inference_mode(False), torch.no_grad():
            hit = entries[key] = (stamp, build())
    return hit[1]


def arranged_weight(weight, bk, bn, dtype, out_major=False):
    """[O, I, k, k] -> [k*k, I rounded up to bk, O rounded up to bn] (``out_major``: [k*k, O', I']), zero padded,
    in ``dtype`` (the kernels' weight operand)."""
    o, i, kh, kw = weight.shape
    ip, op = -(-i // bk) * bk, -(-o // bn) * bn
    if out_major:
        out = weight.new_zeros((kh * kw, op, ip), dtype=dtype)
        out[:, :o, :i] = weight.permute(2, 3, 0, 1).reshape(kh * kw, o, i)
    else:
        out = weight.new_zeros((kh * kw, ip, op), dtype=dtype)
        out[:, :i, :o] = weight.permute(2, 3, 1, 0).reshape(kh * kw, i, o)
    return out


# Rows x columns per program of :func:`scaled_rows`'s kernel.
SCALED_ROWS_TILE = (8, 256)


def scaled_rows(x, scale, align=1):
    """x * scale [N, C, H, W] (scale [N, C], any float dtype, rounded to x's dtype; the product in x's dtype) in a
    new buffer whose rows are padded to a multiple of ``align`` elements (a view of it; ``align`` 1: contiguous): for
    the rows form, ``align`` :data:`ROW_ALIGN` (TMA copies start on 16-byte boundaries). Padded rows are written by
    a Triton kernel on CUDA (or Triton's interpreter) where x's pixels are adjacent in a row: PyTorch's elementwise
    kernels take a slow general path for an output with padded rows."""
    n, c, h, w = x.shape
    wp = w + (-w) % align
    buf = x.new_empty((n, c, h, wp))
    s = scale.to(x.dtype)
    if wp == w or not (HAVE_TRITON and x.stride(3) == 1 and (x.is_cuda or fast_config.triton_interpreting())):
        return torch.mul(x, s[:, :, None, None], out=buf[..., :w])
    rows, cols = SCALED_ROWS_TILE
    _scaled_rows_kernel[(n * c, -(-h // rows))](x, s.contiguous(), buf, c, h, w, x.stride(0), x.stride(1),
                                                x.stride(2), wp, R=rows, BW=cols)
    return buf[..., :w]


def conv2d_nchw(x, weight, padding, config=None, form=None, scale=None):
    """3x3 (any odd k) stride-1 convolution of fp16 ``x`` [N, C, H, W] with ``weight`` [O, C, k, k], zero padding
    ``padding`` on every side; returns a new contiguous [N, O, H + 2p - k + 1, W + 2p - k + 1] tensor in x's
    dtype. ``x`` may be a channel slice of a larger buffer (each sample's planes contiguous), and its rows may be
    padded. ``scale`` (optional, [N, C]): convolves x * scale instead, the product rounded to x's dtype (the cudnn
    form scales in its transpose; the others convolve a scaled copy, :func:`scaled_rows`).

    ``form``: 'rows', 'pointers' or 'cudnn' (see the module's docstring). By default: above
    :data:`MAX_OUT_CHANNELS` outputs cudnn; else rows where it can run (a GPU with TMA, k = 3, padding 2, 16-byte
    aligned rows), else pointers. ``config``: the rows / pointers form's tile configuration (:func:`_rows_config` /
    :func:`_config`)."""
    n, c, h, w = x.shape
    o, c_w, kh, kw = weight.shape
    if c_w != c or kh != kw:
        raise ValueError(f"weight {tuple(weight.shape)} does not fit input {tuple(x.shape)}")
    if form is None:
        if o > MAX_OUT_CHANNELS:
            form = "cudnn"
        elif _has_tma(x.device) and (scale is not None and kh == 3 and padding == 2
                                     or _rows_form_fits(x, kh, padding)):
            form = "rows"
        else:
            form = "pointers"
    if form == "cudnn":
        return _conv_cudnn_nhwc(x, weight, padding, scale)
    if scale is not None:
        x = scaled_rows(x, scale, ROW_ALIGN if form == "rows" else 1)
    if form == "rows":
        if not _rows_form_fits(x, kh, padding):
            raise ValueError("the rows form needs k = 3, padding 2 and a 16-byte aligned input with 16-byte "
                             f"aligned strides (got k {kh}, padding {padding}, strides {x.stride()}); use "
                             "form='pointers'")
        return _conv_rows(x, weight, config or _rows_config(c, o))
    if not x[0].is_contiguous():
        x = x.contiguous()
    th, tw, bn, bk, warps, stages = config or _config(c, o)
    wt = weight_derived(weight, ("pointers", bk, bn, x.dtype), lambda: arranged_weight(weight, bk, bn, x.dtype))
    h_out, w_out = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    out = torch.empty((n, o, h_out, w_out), dtype=x.dtype, device=x.device)
    tiles_x = -(-w_out // tw)
    grid = (-(-h_out // th) * tiles_x, wt.shape[2] // bn, n)
    _conv_kernel[grid](x, wt, out, c, h, w, o, h_out, w_out, padding, x.stride(0) if n > 1 else c * h * w, tiles_x,
                       wt.shape[1] // bk, KS=kh, TH=th, TW=tw, BN=bn, BK=bk, COUT_PAD=wt.shape[2], STAGES=stages,
                       num_warps=warps)
    return out


def _conv_rows(x, weight, config):
    """The rows form of :func:`conv2d_nchw` (k = 3, padding 2)."""
    n, c, h, w = x.shape
    o = weight.shape[0]
    tw, bn, bk, warps, stages, out_major = config
    wt = weight_derived(weight, ("rows", bk, bn, x.dtype, out_major),
                       lambda: arranged_weight(weight, bk, bn, x.dtype, out_major))  # [9, O', C'] or [9, C', O']
    w_desc = TensorDescriptor(wt, list(wt.shape), list(wt.stride()), [1, bn, bk] if out_major else [1, bk, bn])
    x_desc = TensorDescriptor(x, list(x.shape), list(x.stride()), [1, bk, 1, tw])
    h_out, w_out = h + 2, w + 2
    out = torch.empty((n, o, h_out, w_out), dtype=x.dtype, device=x.device)
    tiles_x = -(-w_out // (tw - 8))  # tile t owns the output columns [t (tw - 8), (t + 1)(tw - 8))
    grid = (h_out * tiles_x, -(-o // bn), n)
    _conv_rows_kernel[grid](x_desc, w_desc, out, h_out, w_out, o, tiles_x, -(-c // bk), TW=tw, BN=bn, BK=bk,
                            STAGES=stages, OUT_MAJOR=out_major, num_warps=warps)
    return out


def _cudnn_out_channels(o):
    """Output channels to ask cuDNN for (zero filters past ``o``): a multiple of 8 for its tensor-core kernels, of 32
    from 256 up: there it makes cuDNN's heuristics pick a faster kernel for T's 512 -> 323 layer (512 outputs need
    none; on T's 81-203 output layers multiples of 32 were slightly slower; figures in docs/performance.md)."""
    return o + (-o) % (32 if o >= 256 else 8)


def _transpose_tile(c, element_size=2):
    """(BC, BP, warps) of :func:`_to_nhwc_kernel` for ``c`` channels: all channels in one tile up to 512 (each
    program writes one contiguous run of pixels x channels, faster than 64-channel blocks: docs/performance.md),
    32 KiB a tile (the reordering goes through shared memory)."""
    bc = min(triton.next_power_of_2(c), 512)
    return bc, max(32768 // element_size // bc, 1), 8


# :func:`_to_nchw_kernel`'s tile (BC, BP, warps) for fp16 (BP halves for 4-byte elements): the best overall of 9
# timed on T's six cudnn-form layers (docs/performance.md).
NCHW_TILE = (64, 256, 8)


def _per_sample(scale, n, c, device):
    """A per-sample, per-channel factor ``scale`` as contiguous float32 [N, C] on ``device``; ValueError for another
    shape."""
    if tuple(scale.shape) != (n, c):
        raise ValueError(f"scale {tuple(scale.shape)} must be [N, C] = {(n, c)}")
    return scale.to(device=device, dtype=torch.float32).contiguous()


def _check_sample_size(elements):
    """The transposes and the weight gradient's kernel index within a sample in 32 bits."""
    if elements >= 2 ** 31:
        raise ValueError(f"a sample of {elements} elements is too large for fast_conv's kernels (at most "
                         "2**31 - 1); use the plain path (impl='plain')")


def to_nhwc(x, channels=None, scale=None):
    """[N, C, H, W] (pixels at one stride within a channel: any dense NCHW, or a channel slice of one) -> a new
    channels-last [N, channels, H, W] tensor (``channels`` >= C, default C; the extra channels zero). ``scale``
    (optional, [N, C]): the copy holds x * scale instead (products in float32, rounded once to x's dtype), with no
    pass of its own."""
    n, c, h, w = x.shape
    cp = c if channels is None else channels
    if cp < c:
        raise ValueError(f"channels={cp} is fewer than the input's {c}")
    _check_sample_size(max(cp, c) * h * w)
    if x.stride(2) != w * x.stride(3):
        x = x.contiguous()
    if scale is not None:
        scale = _per_sample(scale, n, c, x.device)
    out = torch.empty((n, h, w, cp), dtype=x.dtype, device=x.device).permute(0, 3, 1, 2)
    bc, bp, warps = _transpose_tile(cp, x.element_size())
    grid = (triton.cdiv(h * w, bp), triton.cdiv(cp, bc), n)
    _to_nhwc_kernel[grid](x, x if scale is None else scale, out, c, cp, h * w, x.stride(0), x.stride(1),
                          x.stride(3), BC=bc, BP=bp, SCALE=scale is not None, num_warps=warps)
    return out


def to_nchw(y, channels=None, scale=None, x=None):
    """[N, C, H, W] in any layout whose pixels sit at one stride (channels-last, NCHW) -> a new contiguous NCHW
    tensor of its first ``channels`` (default all).

    With ``scale`` [N, c] and ``x`` [N, c, H, W] (contiguous; else copied) in the same pass: (y * scale, the
    per-plane sums of y * x [N, c] float32), the backward's last step through an input scale (y the gradient
    w.r.t. x * scale: the first value is x's, the second scale's)."""
    n, c, h, w = y.shape
    c = c if channels is None else channels
    _check_sample_size(y.shape[1] * h * w)
    if y.stride(2) != w * y.stride(3):
        y = y.contiguous(memory_format=torch.channels_last)
    out = torch.empty((n, c, h, w), dtype=y.dtype, device=y.device)
    fused = scale is not None
    if fused:
        if x is None or tuple(x.shape) != (n, c, h, w):
            raise ValueError(f"x {None if x is None else tuple(x.shape)} must be [N, C, H, W] = {(n, c, h, w)} "
                             "with scale")
        x = x.contiguous()
        scale = _per_sample(scale, n, c, y.device)
        sums = torch.zeros((n, c), dtype=torch.float32, device=y.device)
    bc, bp, warps = NCHW_TILE
    bp = max(bp * 2 // y.element_size(), 1)
    grid = (triton.cdiv(h * w, bp), triton.cdiv(c, bc), n)
    _to_nchw_kernel[grid](y, out, scale if fused else out, x if fused else out, sums if fused else out, c, h * w,
                          y.stride(0), y.stride(1), y.stride(3), BC=bc, BP=bp, SCALE=fused, num_warps=warps)
    return (out, sums) if fused else out


def _conv_cudnn_nhwc(x, weight, padding, scale=None, epilogue=None):
    """The cudnn form of :func:`conv2d_nchw`: cuDNN on channels-last copies, made here (``scale``: x * scale, in
    the copy). On NCHW fp16 cuDNN makes the same copies itself; ours are as fast or faster. Input channels padded to
    multiples of 8 (zeros), outputs per :func:`_cudnn_out_channels`. Faster in all than cuDNN on NCHW over T's six
    81-512 output layers, most of all on 512 -> 323 (from the output padding; docs/performance.md)."""
    c, o = x.shape[1], weight.shape[0]
    ci, co = _round8(c), _cudnn_out_channels(o)

    def build():  # [co, k, k, ci] zero padded, seen as channels-last [co, ci, k, k]
        kernel = weight.new_zeros((co, weight.shape[2], weight.shape[3], ci), dtype=x.dtype)
        kernel[:o, :, :, :c] = weight.permute(0, 2, 3, 1)
        return kernel.permute(0, 3, 1, 2)

    kernel = weight_derived(weight, ("cudnn", ci, co, x.dtype), build)
    y = torch.nn.functional.conv2d(to_nhwc(x, ci, scale), kernel, padding=padding)
    return to_nchw(y, o) if epilogue is None else to_nchw(y, o, epilogue[1], epilogue[0])


# The gradients of a stride-1 convolution y = conv2d(x, K, padding=p), for training: fp16 NCHW tensors in, no
# transposes (cuDNN's backward on NCHW fp16 transposes around its kernels, as its forward does).


def _dense_planes(t):
    """``t`` [N, C, H, W] as it is where each plane is dense (pixels adjacent, rows back to back: samples and
    channels at any stride), else a contiguous copy."""
    return t if t.stride(3) == 1 and t.stride(2) == t.shape[3] else t.contiguous()


def _require_fp16(**tensors):
    """ValueError unless every tensor is fp16 (the gradient kernels have no float32 path)."""
    for name, t in tensors.items():
        if t.dtype != torch.float16:
            raise ValueError(f"{name} is {t.dtype}; fast_conv's convolution gradients take float16 tensors (use "
                             "torch.nn.grad.conv2d_input / conv2d_weight for other dtypes)")


def conv2d_input_grad_nchw(grad_y, weight, padding, x_shape, form=None, config=None, scale=None, x=None):
    """The input gradient of y = conv2d(x, weight, padding=padding) (stride 1, square odd kernel k), for fp16.

    grad_y: [N, O, H', W'] float16, H' = H + 2 padding - k + 1 (each sample's planes contiguous, or it is copied);
    weight: [O, I, k, k] (any float dtype; used in fp16); x_shape: x's [N, I, H, W]. Returns a new contiguous
    grad_x [N, I, H, W] float16: the convolution of grad_y with the flipped, transposed kernel
    K'[i, o, ky, kx] = weight[o, i, k-1-ky, k-1-kx], zero padding k - 1 - padding (a negative one crops grad_y),
    run by :func:`conv2d_nchw`. ``form`` / ``config`` go to it; by default it picks by grad_x's channels I
    (:func:`input_grad_form`): above :data:`MAX_OUT_CHANNELS` the cudnn form (our transposes around cuDNN's NHWC
    kernels), else pointers (T's layers, padding 2 with k = 3, have padding 0 here, which the rows form doesn't
    take). The flipped kernel is kept per weight tensor (:func:`weight_derived`). Raises ValueError for other dtypes
    or shapes that don't fit.

    With ``scale`` [N, I] and ``x`` [N, I, H, W], for a convolution of x * scale, in the cudnn form only (see
    :func:`input_grad_form`): returns (grad_x * scale, the per-plane sums of grad_x * x [N, I] float32), the
    gradients w.r.t. x (in x's dtype) and scale, made inside its last transpose (other forms: one pass after,
    :func:`.fast_ops.scaled_with_sums`)."""
    _require_fp16(grad_y=grad_y)
    if grad_y.dim() != 4 or weight.dim() != 4 or len(x_shape) != 4:
        raise ValueError(f"grad_y {tuple(grad_y.shape)}, weight {tuple(weight.shape)} and x_shape {tuple(x_shape)} "
                         "must all be 4-D ([N, C, H, W], [O, I, k, k])")
    n, o, hy, wy = grad_y.shape
    o_w, i, k, kw = weight.shape
    want = (n, i, hy + k - 1 - 2 * padding, wy + k - 1 - 2 * padding)
    if k != kw or k % 2 == 0 or o_w != o or tuple(x_shape) != want:
        raise ValueError(f"grad_y {tuple(grad_y.shape)} and weight {tuple(weight.shape)} (square odd kernel, padding "
                         f"{padding}) don't fit x_shape {tuple(x_shape)}: expected x_shape {want}")
    q = k - 1 - padding
    if q < 0:  # padding > k - 1: the outer rows / columns of grad_y saw only zero padding
        grad_y = grad_y[:, :, -q:hy + q, -q:wy + q]
        q = 0
    flipped = weight_derived(weight, ("input grad",), lambda: weight.flip(2, 3).transpose(0, 1).contiguous())
    if scale is None:
        return conv2d_nchw(grad_y, flipped, q, config=config, form=form)
    if x is None or tuple(x.shape) != tuple(x_shape) or tuple(scale.shape) != tuple(x_shape[:2]):
        raise ValueError(f"scale {tuple(scale.shape)} and x {None if x is None else tuple(x.shape)} must be [N, I] "
                         f"and x_shape {tuple(x_shape)}")
    if (form or input_grad_form(i)) != "cudnn":
        raise ValueError(f"scale and x fuse into the cudnn form only; this is the {form or input_grad_form(i)} "
                         "form: take the gradient without them and scale it after (fast_ops.scaled_with_sums)")
    return _conv_cudnn_nhwc(grad_y, flipped, q, epilogue=(x, scale))


def input_grad_form(c_in: int) -> str:
    """The form :func:`conv2d_input_grad_nchw` takes by default for a layer of ``c_in`` input channels (the input
    gradient's outputs): 'cudnn' above :data:`MAX_OUT_CHANNELS`, else 'pointers'."""
    return "cudnn" if c_in > MAX_OUT_CHANNELS else "pointers"


# Weight-gradient tiles per block shape (BO, BI): (P, warps), the fastest per block in a sweep of T's layers at batch
# 8 (bench_conv.py --grads --sweep; all on 4 warps; docs/performance.md).
WGRAD_STEPS = {(32, 32): (16, 4), (64, 32): (64, 4), (32, 64): (16, 4), (64, 64): (32, 4)}

# cuDNN's weight gradient runs over chunks of samples whose channels-last copies take at most this many bytes (the
# whole batch, else chunks of the largest power of two of samples that fits): the copies raise the step's peak memory,
# and chunks of fewer samples made cuDNN slower on the small-channel 1044 px layers (docs/performance.md).
WGRAD_CUDNN_CHUNK_BYTES = 3 << 29


def weight_grad_form() -> str:
    """'cudnn' or 'triton': the weight gradient :func:`conv2d_weight_grad_nchw` runs by default: cuDNN's (with
    channels padded to powers of two it was faster than the Triton kernel on every layer of T, copies included;
    docs/performance.md) unless cuDNN is off or missing."""
    return "cudnn" if torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled else "triton"


def _wgrad_config(c_in, c_out, n, pixels, kernel_size, sms, blocks=None, pixels_per_step=None, warps=None,
                  stages=2, programs_per_sm=8):
    """(BO, BI, P, warps, stages, splits) of :func:`_conv_wgrad_kernel` for ``n`` samples of ``pixels`` output
    pixels each (H' W'), ``c_in`` -> ``c_out`` channels, on a GPU of ``sms`` multiprocessors.

    Blocks (BO, BI) from 32 x 32, 64 x 32, 32 x 64, 64 x 64: by default the one that pads the channels least (on a
    tie the larger: x and grad_y are read once per channel block of the other). P output pixels a step and the
    warps from :data:`WGRAD_STEPS` unless given. Splits of the N * ceil(H' W' / P) pixel tiles: enough for
    ``programs_per_sm`` programs per multiprocessor, each program at least 16 tiles (its 3 BO BI atomic adds few
    beside its products); :func:`conv2d_weight_grad_nchw` spreads them over the samples (each program within one).
    ``benchmarks/bench_conv.py --grads --sweep`` times others."""
    bo, bi = blocks or _least_padding_block(WGRAD_STEPS, c_out, c_in)
    p, wp = WGRAD_STEPS.get((bo, bi), (32, 8))
    p, wp = pixels_per_step or p, warps or wp
    programs = -(-c_out // bo) * -(-c_in // bi) * kernel_size * -(-kernel_size // 3)
    tiles = n * -(-pixels // p)
    splits = max(1, min(-(-programs_per_sm * sms // programs), tiles // 16))
    return bo, bi, p, wp, stages, splits


def _least_padding_block(blocks, c_out, c_in):
    """The (BO, BI) of ``blocks`` whose multiples pad c_out x c_in the least (on a tie the larger block: each
    operand is read once per block of the other's channels)."""
    padded = lambda c, b: -(-c // b) * b  # noqa: E731
    return min(blocks, key=lambda b: (padded(c_out, b[0]) * padded(c_in, b[1]), -b[0] * b[1]))


def _multiprocessors(device) -> int:
    """The GPU's multiprocessor count; 1 where there is none (Triton's interpreter on CPU)."""
    device = torch.device(device)
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def conv2d_weight_grad_nchw(x, grad_y, kernel_size, padding, config=None, scale=None, form=None):
    """The weight gradient of y = conv2d(x * scale, K, padding=padding) (stride 1, square kernel ``kernel_size`` =
    k), for fp16 NCHW tensors: grad_K[o, i, ky, kx] = sum_{n, y, x} grad_y[n, o, y, x] * scale[n, i] *
    x[n, i, y + ky - padding, x + kx - padding] (zero outside x), fp16 products summed in float32.

    x: [N, I, H, W] float16, rows at any stride (a channel slice or row-padded buffer, as the fast path's activations
    write it, is read in place; pixels must be adjacent in a row, or it is copied); grad_y: [N, O, H', W'] float16,
    H' = H + 2 padding - k + 1; ``scale``: optional [N, I] per-sample input scale (none: 1). Returns a new grad_K
    [O, I, k, k] float32. ``form`` (default 'triton' where ``config`` is given, else :func:`weight_grad_form`):

    * 'triton': one Triton kernel reading NCHW as it is (grad_y's planes dense, or it is copied), the scale applied
      to each program's sums (one sample per program); sums split over programs and added with float32 atomics (the
      last bits vary from run to run). ``config``: (BO, BI, P, warps, stages, splits), default
      :func:`_wgrad_config`.
    * 'cudnn': cuDNN's on channels-last copies of x * scale and grad_y (our transposes, channels padded to powers
      of two), over chunks of samples (:data:`WGRAD_CUDNN_CHUNK_BYTES`); cuDNN rounds each chunk's gradient to
      fp16.

    Raises ValueError for other dtypes or shapes that don't fit."""
    _require_fp16(x=x, grad_y=grad_y)
    if x.dim() != 4 or grad_y.dim() != 4:
        raise ValueError(f"x {tuple(x.shape)} and grad_y {tuple(grad_y.shape)} must be 4-D [N, C, H, W]")
    n, c_in, h, w = x.shape
    k = kernel_size
    want = (n, grad_y.shape[1], h + 2 * padding - k + 1, w + 2 * padding - k + 1)
    if tuple(grad_y.shape) != want or k < 1 or min(want[2:]) < 1:
        raise ValueError(f"grad_y {tuple(grad_y.shape)} doesn't fit x {tuple(x.shape)} with kernel_size {k} and "
                         f"padding {padding}: expected {want}")
    if x.device != grad_y.device:
        raise ValueError(f"x is on {x.device} and grad_y on {grad_y.device}; move both to one device")
    if scale is not None:
        scale = _per_sample(scale, n, c_in, x.device)
    c_out, h_out, w_out = want[1:]
    form = form or ("triton" if config is not None else weight_grad_form())
    if form == "cudnn":
        return _weight_grad_cudnn(x, grad_y, k, padding, scale)
    if form != "triton":
        raise ValueError(f"form must be 'triton' or 'cudnn', got {form!r}")
    if x.stride(3) != 1:
        x = x.contiguous()
    grad_y = _dense_planes(grad_y)
    _check_sample_size(max(c_in * x.stride(1), h * x.stride(2), c_out * grad_y.stride(1)))
    bo, bi, p, warps, stages, splits = config or _wgrad_config(c_in, c_out, n, h_out * w_out, k,
                                                               _multiprocessors(x.device))
    out = torch.zeros((c_out, c_in, k, k), dtype=torch.float32, device=x.device)
    tiles_per_sample = -(-(h_out * w_out) // p)
    per_split = -(-tiles_per_sample // -(-splits // n))  # each program within one sample
    splits_per_sample = -(-tiles_per_sample // per_split)
    n_iblocks = -(-c_in // bi)
    groups_x = -(-k // 3)
    grid = (-(-c_out // bo) * n_iblocks, n * splits_per_sample, k * groups_x)
    _conv_wgrad_kernel[grid](x, grad_y, out if scale is None else scale, out, c_in, h, w, c_out, h_out, w_out,
                             padding, k, x.stride(0), x.stride(1), x.stride(2), grad_y.stride(0), grad_y.stride(1),
                             tiles_per_sample, per_split, splits_per_sample, n_iblocks, groups_x, BO=bo, BI=bi, P=p,
                             STAGES=stages, SCALE=scale is not None, num_warps=warps)
    return out


def _pow2(c: int) -> int:
    return 1 << (c - 1).bit_length()


def _weight_grad_cudnn(x, grad_y, k, padding, scale):
    """The 'cudnn' form of :func:`conv2d_weight_grad_nchw`. Channels padded to powers of two: cuDNN's choice of
    kernel for the weight gradient changed its time by an order of magnitude with the padding on T's 81 -> 51 layer
    at 1044 px (multiples of 8 the slowest); powers of two were the fastest or close to it on every layer of T
    (docs/performance.md)."""
    n, c_in = x.shape[:2]
    c_out = grad_y.shape[1]
    ci, co = _pow2(c_in), _pow2(c_out)
    # cuDNN reads only the weight's shape and layout for this gradient
    weight = x.new_empty((co, k, k, ci)).permute(0, 3, 1, 2)
    per_sample = (ci * x.shape[2] * x.shape[3] + co * grad_y.shape[2] * grad_y.shape[3]) * x.element_size()
    fit = max(1, WGRAD_CUDNN_CHUNK_BYTES // per_sample)
    size = n if fit >= n else 1 << (fit.bit_length() - 1)  # a power of two: cuDNN was slower on 3-sample chunks
    out = None
    for n0 in range(0, n, size):
        part = slice(n0, n0 + size)
        xs = to_nhwc(x[part], ci, None if scale is None else scale[part])
        g = torch.ops.aten.convolution_backward(to_nhwc(grad_y[part], co), xs, weight, None, [1, 1], [padding] * 2,
                                                [1, 1], False, [0, 0], 1, [False, True, False])[1]
        del xs
        out = g.float() if out is None else out.add_(g)
    return out[:c_out, :c_in].contiguous()


# Pixels per sample (H W) from which R's 1x1 layers take their gradients from :func:`batched_1x1_weight_grad` and
# :func:`batched_1x1_input_grad` (fp16, with ``fast_config`` ``triton_conv_grads``) instead of cuBLAS's batched
# products. On R's 276-1044 px layers these kernels were several times faster than cuBLAS's; on its 84-148 px ones
# (1024 channels) cuBLAS's were the faster (benchmarks/bench_conv.py --grads-1x1; figures in docs/performance.md).
BMM_GRADS_MIN_PIXELS = 192 * 192


def bmm_grads_in_triton(pixels: int) -> bool:
    """Whether a 1x1 layer with ``pixels`` pixels per sample takes its per-sample gradients from this module's
    kernels (else cuBLAS's batched products): see :data:`BMM_GRADS_MIN_PIXELS`."""
    return pixels >= BMM_GRADS_MIN_PIXELS


# The per-sample 1x1 weight gradient's tiles (BO, BI) -> (warps, programs per multiprocessor), 64 output pixels a
# step: the block that pads the channels least is taken (on a tie the larger). The fastest on R's layers at batch 8
# were 128 x 64 or 64 x 128 blocks, on 8 warps for the latter (bench_conv.py --grads-1x1 --sweep).
BMM_WGRAD_TILES = {(64, 64): (4, 8), (128, 64): (4, 8), (64, 128): (8, 8)}


def _bmm_wgrad_config(c_in, c_out):
    """(BO, BI, P, warps, stages), programs per multiprocessor of :func:`batched_1x1_weight_grad`."""
    bo, bi = _least_padding_block(BMM_WGRAD_TILES, c_out, c_in)
    warps, per_sm = BMM_WGRAD_TILES[(bo, bi)]
    return (bo, bi, 64, warps, 3), per_sm


def batched_1x1_weight_grad(x, grad_y, config=None, programs_per_sm=None):
    """The gradient of each sample's own 1x1 weight in y[n] = W[n] @ x[n] (R's layers, :func:`.ops.batched_1x1`),
    for fp16: grad_W[n, o, i] = sum_{y, x} grad_y[n, o, y, x] * x[n, i, y, x], fp16 products summed in float32.

    cuBLAS's batched product for this shape (two small sides, a product dimension of H W, up to a million) runs a
    few programs per sample; here the pixels are split over enough programs to fill the GPU (``programs_per_sm``
    per multiprocessor, each at least 8 steps of P pixels), and the parts are added with float32 atomics (the last
    bits vary from run to run).

    x: [N, I, H, W] float16 with each plane dense (a channel slice of a larger buffer is fine); grad_y: [N, O, H, W]
    float16 (each plane dense, or it is copied). Returns a new [N, O, I] float32. ``config``: (BO, BI, P, warps,
    stages); it and ``programs_per_sm`` default to :func:`_bmm_wgrad_config`'s. Raises ValueError for other dtypes
    or shapes that don't fit."""
    _require_fp16(x=x, grad_y=grad_y)
    if x.dim() != 4 or grad_y.dim() != 4 or x.shape[0] != grad_y.shape[0] or x.shape[2:] != grad_y.shape[2:]:
        raise ValueError(f"x {tuple(x.shape)} and grad_y {tuple(grad_y.shape)} must be [N, I, H, W] and "
                         "[N, O, H, W] with the same N, H, W")
    if x.device != grad_y.device:
        raise ValueError(f"x is on {x.device} and grad_y on {grad_y.device}; move both to one device")
    n, c_in, h, w = x.shape
    c_out = grad_y.shape[1]
    x, grad_y = _dense_planes(x), _dense_planes(grad_y)
    _check_sample_size(max(c_in * x.stride(1), c_out * grad_y.stride(1)))
    default, per_sm = _bmm_wgrad_config(c_in, c_out)
    bo, bi, p, warps, stages = config or default
    programs_per_sm = programs_per_sm or per_sm
    pixels = h * w
    n_iblocks = -(-c_in // bi)
    programs = n * -(-c_out // bo) * n_iblocks
    steps = -(-pixels // p)
    splits = max(1, min(-(-programs_per_sm * _multiprocessors(x.device) // programs), steps // 8))
    per_split = -(-steps // splits) * p
    out = torch.zeros((n, c_out, c_in), dtype=torch.float32, device=x.device)
    grid = (-(-c_out // bo) * n_iblocks, -(-pixels // per_split), n)
    _batched_1x1_wgrad_kernel[grid](grad_y, x, out, c_out, c_in, pixels, grad_y.stride(0), grad_y.stride(1),
                                    x.stride(0), x.stride(1), per_split, n_iblocks, BO=bo, BI=bi, P=p,
                                    STAGES=stages, num_warps=warps)
    return out


# :func:`batched_1x1_input_grad`'s tiles: (BI, BK, P, warps, stages); within 5% of the fastest of 24 on R's
# 276-1044 px layers at batch 8 (bench_conv.py --grads-1x1 --sweep).
BMM_DGRAD_CONFIG = (64, 32, 128, 4, 3)


def batched_1x1_input_grad(weight, grad_y, config=None, out=None):
    """The input gradient of y[n] = W[n] @ x[n] per sample (R's 1x1 layers), for fp16: grad_x[n, i, y, x] =
    sum_o W[n, o, i] grad_y[n, o, y, x], fp16 products summed in float32. cuBLAS's batched product picks slow
    kernels where the output channels (its inner size here) are not a multiple of 8, as on most of R's layers.

    weight: [N, O, I] (any float dtype; used in fp16); grad_y: [N, O, H, W] float16 (each plane dense, or it is
    copied). Returns a new contiguous [N, I, H, W] float16, or writes it into ``out`` (contiguous, that shape and
    dtype; e.g. a batch slice of a larger gradient) and returns that. ``config``: (BI, BK, P, warps, stages), default
    :data:`BMM_DGRAD_CONFIG`. Raises ValueError for other dtypes or shapes that don't fit."""
    _require_fp16(grad_y=grad_y)
    if weight.dim() != 3 or grad_y.dim() != 4 or weight.shape[:2] != grad_y.shape[:2]:
        raise ValueError(f"weight {tuple(weight.shape)} and grad_y {tuple(grad_y.shape)} must be [N, O, I] and "
                         "[N, O, H, W] with the same N and O")
    if weight.device != grad_y.device:
        raise ValueError(f"weight is on {weight.device} and grad_y on {grad_y.device}; move both to one device")
    n, c_out, c_in = weight.shape
    h, w = grad_y.shape[2:]
    weight = weight.to(torch.float16).contiguous()
    grad_y = _dense_planes(grad_y)
    _check_sample_size(max(c_in * h * w, c_out * grad_y.stride(1)))
    bi, bk, p, warps, stages = config or BMM_DGRAD_CONFIG
    if out is None:
        out = torch.empty((n, c_in, h, w), dtype=torch.float16, device=grad_y.device)
    elif (tuple(out.shape) != (n, c_in, h, w) or out.dtype != torch.float16 or not out.is_contiguous()
          or out.device != grad_y.device):
        raise ValueError(f"out must be a contiguous float16 [{n}, {c_in}, {h}, {w}] tensor on {grad_y.device}, got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device} (contiguous: {out.is_contiguous()})")
    grid = (-(-(h * w) // p), -(-c_in // bi), n)
    _batched_1x1_dgrad_kernel[grid](weight, grad_y, out, c_out, c_in, h * w, grad_y.stride(0), grad_y.stride(1),
                                    BI=bi, BK=bk, P=p, STAGES=stages, num_warps=warps)
    return out
