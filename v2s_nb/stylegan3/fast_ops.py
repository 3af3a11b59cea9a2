"""Fast filtered leaky ReLU for CUDA, written in Triton (compiled just in time; nothing to build).

The plain path (:func:`v2s_nb.stylegan3.ops.filtered_lrelu`) upsamples by zero-stuffing and filters the
stuffed signal with depthwise convolutions: most multiply-adds hit zeros, and the upsampled tensor makes
several round trips through memory. Here the same operator runs as one fused kernel per output tile, a chain
of tensor-core products: bias, polyphase upsampling along both axes (banded matrices shared by all tiles),
leaky ReLU / gain / clamp, then the down-filter along x and along y. Radial down-filters enter as 2-4 separable
terms from an SVD of the stored filter. The upsampled tile never leaves the chip. Two forms, chosen per layer
from measurements (``FUSED_DEFAULT`` per dtype, ``FUSED_CHOICE`` the exceptions):

* banded (:func:`_fused_kernel`): only the blocks of the banded matrices that hold taps are multiplied (the
  input window's used rows / columns as a power-of-two block plus a remainder; optionally the down-filter by
  output-column halves); 64-wide tiles;
* dense (:func:`_fused_dense_kernel`): whole power-of-two windows on 128-wide tiles, for 4x-upsampling layers.

Planes too small for a tile and filters that need more than ``MAX_RANK`` separable terms use unfused kernels per
channel chunk — polyphase upsampling along x (bias on load) and along y (activation before the store), then
downsampling evaluated only at the kept samples.

Arithmetic is float32 accumulation; products in fp16 for fp16 layers; for float32 layers in three-pass TF32
(float32 accuracy), or, where cuDNN may use TF32 (PyTorch's default), the forward's in three-pass bf16 (see
:func:`_forward_precision`). Gradients: a fused backward kernel per output tile recomputes the pre-activation and
runs the transposed chain back to the tile's input window (:func:`fused_filtered_lrelu_backward`); where it can't
apply (a down-filter needing more than ``MAX_RANK`` terms) the plain operator is recomputed under autograd a few
channels at a time. Or a training forward stores the activation's derivative as 2-bit codes per tile and the
backward reads them (:func:`forward_with_codes`, :func:`backward_from_codes`; fast_config's ``saved_codes``). Large batches: every kernel offsets planes in 64 bits.
"""

from __future__ import annotations

import itertools
import warnings
import weakref

import torch

from . import fast_config, ops

try:  # Triton ships with CUDA builds of PyTorch; without it the plain path is used.
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    HAVE_TRITON = False


def release(version: str) -> tuple:
    """(major, minor) of a version string such as '3.4.0' or '3.6.0+git1234' ((0, 0) where it has no numbers)."""
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(itertools.takewhile(str.isdigit, piece))
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (2 - len(parts)))


#: The installed Triton's (major, minor); None without Triton.
TRITON_RELEASE = release(triton.__version__) if HAVE_TRITON else None
#: The oldest Triton release whose compiler was checked to build every kernel of the fast path for every GPU
#: generation (docs/performance.md, 'Triton releases'); older ones get the plain path.
MIN_TRITON = (3, 0)
#: Releases whose compiler fails on some kernel from a GPU generation on (compute capability major): Triton 3.3
#: aborts on T's dense inference kernel for sm_90 (3.2 and 3.4 build it).
BROKEN_TRITON = {(3, 3): 9}


def device_unfit(device) -> str | None:
    """Why the installed Triton can't run the fast path on the CUDA ``device`` (a sentence naming the fix), or None
    where it can or is missing. The device's compute capability is read only for a release in :data:`BROKEN_TRITON`."""
    if TRITON_RELEASE is None:
        return None
    version = triton.__version__
    fix = "pip install 'torch>=2.8', which brings Triton 3.4 or later, or 'triton>=3.4'"
    if TRITON_RELEASE < MIN_TRITON:
        return (f"Triton {version} is older than the releases its kernels were checked with "
                f"({'.'.join(map(str, MIN_TRITON))} and later); {fix}")
    broken_from = BROKEN_TRITON.get(TRITON_RELEASE)
    if broken_from is not None:
        major, minor = torch.cuda.get_device_capability(device)
        if major >= broken_from:
            return f"Triton {version} fails to compile some of its kernels for sm_{major}{minor}; {fix}"
    return None


if HAVE_TRITON:

    @triton.jit
    def _up_axis_kernel(x_ptr, b_ptr, f_ptr, out_ptr, n_in, n_out, n_other, s_in_plane, s_in_axis, s_in_other,
                        s_out_plane, s_out_axis, s_out_other, channels, pad0, gain, slope, clamp,
                        UP: tl.constexpr, PHASE_TAPS: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
                        BLOCK_A: tl.constexpr, BLOCK_O: tl.constexpr):
        """Zero-stuff by UP, pad by pad0, correlate with f (already flipped and scaled) along one axis."""
        plane = tl.program_id(0).to(tl.int64)  # 64-bit offsets: large batches pass 2**31 elements
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
    def _window_raw(x_plane, h, w, jy0, jx0, ROW0: tl.constexpr, NR: tl.constexpr, COL0: tl.constexpr,
                    NC: tl.constexpr, MASKED: tl.constexpr):
        """Input rows jy0+ROW0.. (NR) x columns jx0+COL0.. (NC) of the plane at ``x_plane`` as stored (zero
        outside; MASKED = False: the caller knows the block lies inside the plane); :func:`_window_finish` applies
        gain and bias."""
        jy = jy0 + ROW0 + tl.arange(0, NR)
        jx = jx0 + COL0 + tl.arange(0, NC)
        if MASKED:
            ok = ((jy >= 0) & (jy < h))[:, None] & ((jx >= 0) & (jx < w))[None, :]
            return tl.load(x_plane + jy[:, None] * w + jx[None, :], mask=ok, other=0.0)
        else:
            return tl.load(x_plane + jy[:, None] * w + jx[None, :])

    @triton.jit
    def _window_finish(v, h, w, jy0, jx0, g, bias, ROW0: tl.constexpr, NR: tl.constexpr, COL0: tl.constexpr,
                       NC: tl.constexpr, HAS_GAIN: tl.constexpr, MASKED: tl.constexpr):
        """A window block from :func:`_window_raw` in float32, times g (if HAS_GAIN), plus the bias inside the plane
        (zero outside)."""
        v = v.to(tl.float32)
        if HAS_GAIN:
            v = v * g
        if MASKED:
            jy = jy0 + ROW0 + tl.arange(0, NR)
            jx = jx0 + COL0 + tl.arange(0, NC)
            ok = ((jy >= 0) & (jy < h))[:, None] & ((jx >= 0) & (jx < w))[None, :]
            return tl.where(ok, v + bias, 0.0)
        else:
            return v + bias

    @triton.jit
    def _window(x_plane, h, w, jy0, jx0, g, bias, ROW0: tl.constexpr, NR: tl.constexpr, COL0: tl.constexpr,
                NC: tl.constexpr, HAS_GAIN: tl.constexpr, MASKED: tl.constexpr = True):
        """Input rows jy0+ROW0.. (NR of them) x columns jx0+COL0.. (NC) of the plane at ``x_plane``, times the
        plane's gain g (if HAS_GAIN), plus the bias; zero outside the plane (MASKED = False: the caller knows the
        block lies inside it)."""
        v = _window_raw(x_plane, h, w, jy0, jx0, ROW0, NR, COL0, NC, MASKED)
        return _window_finish(v, h, w, jy0, jx0, g, bias, ROW0, NR, COL0, NC, HAS_GAIN, MASKED)

    @triton.jit
    def _up_rows(x_plane, ay_ptr, h, w, jy0, jx0, g, bias, COL0: tl.constexpr, NC: tl.constexpr,
                 KAY: tl.constexpr, KBY: tl.constexpr, BU: tl.constexpr, PRECISION: tl.constexpr,
                 HAS_GAIN: tl.constexpr):
        """Ay^T @ (window columns COL0..COL0+NC) -> [BU, NC]: upsampling along y of a column block.

        The window's KJ rows are read as a power-of-two block of KAY plus a remainder block of KBY (0: none), so
        the product's inner size follows the rows that meet a tap (e.g. 64 + 16 instead of 128)."""
        xa = _window(x_plane, h, w, jy0, jx0, g, bias, 0, KAY, COL0, NC, HAS_GAIN)
        ayt = tl.load(ay_ptr + tl.arange(0, BU)[:, None] + tl.arange(0, KAY)[None, :] * BU)
        s = tl.dot(ayt, xa.to(ayt.dtype), input_precision=PRECISION)
        if KBY > 0:
            xb = _window(x_plane, h, w, jy0, jx0, g, bias, KAY, KBY, COL0, NC, HAS_GAIN)
            aytb = tl.load(ay_ptr + tl.arange(0, BU)[:, None] + (KAY + tl.arange(0, KBY))[None, :] * BU)
            s += tl.dot(aytb, xb.to(aytb.dtype), input_precision=PRECISION)
        return s

    @triton.jit
    def _up_cols(sa, sb, ax_ptr, C0: tl.constexpr, NU: tl.constexpr, KAX: tl.constexpr, KBX: tl.constexpr,
                 BU: tl.constexpr, PRECISION: tl.constexpr):
        """Upsampled columns C0..C0+NU: [sa | sb] @ Ax[:, C0:C0+NU] -> [BU, NU] (sb: the remainder block; KBX = 0
        where it has no taps in these columns)."""
        axa = tl.load(ax_ptr + tl.arange(0, KAX)[:, None] * BU + (C0 + tl.arange(0, NU))[None, :])
        u = tl.dot(sa.to(axa.dtype), axa, input_precision=PRECISION)
        if KBX > 0:
            axb = tl.load(ax_ptr + (KAX + tl.arange(0, KBX))[:, None] * BU + (C0 + tl.arange(0, NU))[None, :])
            u += tl.dot(sb.to(axb.dtype), axb, input_precision=PRECISION)
        return u

    @triton.jit
    def _act(u, gain, slope, clamp):
        u = tl.where(u >= 0, u, u * slope) * gain
        return tl.minimum(tl.maximum(u, -clamp), clamp)

    @triton.jit
    def _tile_keep(oy, ox, lo, BO, h_out, w_out, MASKED: tl.constexpr):
        """The output tile's store mask: its BO x BO samples of the padded BOP x BOP block (``lo``), and (MASKED)
        only those inside the plane."""
        if MASKED:
            return ((lo < BO) & (oy < h_out))[:, None] & ((lo < BO) & (ox < w_out))[None, :]
        return (lo < BO)[:, None] & (lo < BO)[None, :]

    @triton.jit
    def _fused_dense_kernel(x_ptr, b_ptr, ax_ptr, ay_ptr, dx_ptr, dy_ptr, out_ptr, g_ptr, s_ptr, h, w, h_out, w_out,
                            w_store, channels, c_offset, jshift_y, jshift_x, gain, slope, clamp, BO, UP: tl.constexpr,
                            DOWN: tl.constexpr, R: tl.constexpr, KJX: tl.constexpr, KJY: tl.constexpr,
                            BU: tl.constexpr, BOP: tl.constexpr, PRECISION: tl.constexpr, HAS_GAIN: tl.constexpr,
                            HAS_SCALE: tl.constexpr, MATS_FIRST: tl.constexpr, ty_off=0, ty_split=0, ty_jump=0,
                            tx_off=0, tx_split=0, tx_jump=0, MASKED: tl.constexpr = True):
        """The filtered leaky ReLU of one output tile with whole-window products (see :func:`_fused_kernel`):
        upsample along x then y over the power-of-two window, activation, then per separable term r of the
        down-filter Dy[r] @ (u @ Dx[r]). More multiply-adds than the banded kernel, but on 128-wide tiles,
        which measured faster for 4x-upsampling layers (less halo per output).

        c_offset: channel of plane 0 (the callers pass 0). It stays a runtime argument on purpose: with Triton 3.6
        the same kernel indexing the bias by ``plane % channels`` alone (or with c_offset 1, which Triton
        specialises to a constant) ran markedly slower, with the same registers and shared memory. The plane
        offsets are kept as they are for the same reason: computing the channel and sample first (for batch
        strides) made the 4x layers slower; channel slices and padded outputs are launched per sample instead
        (figures for both in docs/performance.md). HAS_GAIN / HAS_SCALE: as in :func:`_fused_kernel`.

        MATS_FIRST (single-term down-filters, R = 1): all four matrices are loaded before the input window, and
        the kernel runs with 8 warps (``DENSE_FIRST_WARPS``): faster on every 4x layer of T than the other order,
        with 4 warps or 8, the same output bit for bit. With MATS_FIRST the tiles are mapped and the interior ones
        run without bounds tests (MASKED = False) as in :func:`_fused_single_term_kernel`, faster again than the
        same launches all masked (docs/performance.md).
        """
        plane = tl.program_id(0).to(tl.int64)  # 64-bit offsets: large batches pass 2**31 elements
        if MATS_FIRST:
            pid1 = tl.program_id(1)
            pid2 = tl.program_id(2)
            oy0 = (pid1 + ty_off + tl.where(pid1 >= ty_split, ty_jump, 0)) * BO
            ox0 = (pid2 + tx_off + tl.where(pid2 >= tx_split, tx_jump, 0)) * BO
            lo = tl.arange(0, BOP)
            ax = tl.load(ax_ptr + tl.arange(0, KJX)[:, None] * BU + tl.arange(0, BU)[None, :])
            ayt = tl.load(ay_ptr + tl.arange(0, BU)[:, None] + tl.arange(0, KJY)[None, :] * BU)
            dx1 = tl.load(dx_ptr + tl.arange(0, BU)[:, None] * BOP + lo[None, :])
            dy1 = tl.load(dy_ptr + lo[:, None] * BU + tl.arange(0, BU)[None, :])
        else:
            oy0 = tl.program_id(1) * BO
            ox0 = tl.program_id(2) * BO
        # The window as _window_raw / _window_finish would give it, written out: through those helpers (same
        # values) R's synthesis measured slightly slower (docs/performance.md).
        jy = (oy0 * DOWN) // UP + jshift_y + tl.arange(0, KJY)
        jx = (ox0 * DOWN) // UP + jshift_x + tl.arange(0, KJX)
        if MASKED:
            ok = ((jy >= 0) & (jy < h))[:, None] & ((jx >= 0) & (jx < w))[None, :]
            xv = tl.load(x_ptr + plane * h * w + jy[:, None] * w + jx[None, :], mask=ok, other=0.0).to(tl.float32)
        else:
            xv = tl.load(x_ptr + plane * h * w + jy[:, None] * w + jx[None, :]).to(tl.float32)
        if HAS_GAIN:
            xv = xv * tl.load(g_ptr + plane)
        bias = tl.load(b_ptr + (plane + c_offset) % channels)
        if MASKED:
            xv = tl.where(ok, xv + bias, 0.0)
        else:
            xv = xv + bias
        if not MATS_FIRST:
            ax = tl.load(ax_ptr + tl.arange(0, KJX)[:, None] * BU + tl.arange(0, BU)[None, :])
        t = tl.dot(xv.to(ax.dtype), ax, input_precision=PRECISION)  # [KJY, BU]
        if not MATS_FIRST:
            ayt = tl.load(ay_ptr + tl.arange(0, BU)[:, None] + tl.arange(0, KJY)[None, :] * BU)
        u = tl.dot(ayt, t.to(ayt.dtype), input_precision=PRECISION)  # [BU, BU]
        u = _act(u, gain, slope, clamp).to(ax.dtype)
        lo = tl.arange(0, BOP)
        if MATS_FIRST:
            acc = tl.dot(dy1, tl.dot(u, dx1, input_precision=PRECISION).to(dy1.dtype), input_precision=PRECISION)
        else:
            acc = tl.zeros([BOP, BOP], dtype=tl.float32)
            for r in tl.static_range(R):
                dx = tl.load(dx_ptr + r * BU * BOP + tl.arange(0, BU)[:, None] * BOP + lo[None, :])
                v = tl.dot(u, dx, input_precision=PRECISION)  # [BU, BOP]
                dy = tl.load(dy_ptr + r * BOP * BU + lo[:, None] * BU + tl.arange(0, BU)[None, :])
                acc += tl.dot(dy, v.to(dy.dtype), input_precision=PRECISION)
        if HAS_SCALE:
            acc = acc * tl.load(s_ptr + plane)
        oy = oy0 + lo
        ox = ox0 + lo
        keep = _tile_keep(oy, ox, lo, BO, h_out, w_out, MASKED)
        tl.store(out_ptr + plane * h_out * w_store + oy[:, None] * w_store + ox[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=keep)

    @triton.jit
    def _fused_kernel(x_ptr, b_ptr, ax_ptr, ay_ptr, dx_ptr, dy_ptr, out_ptr, g_ptr, s_ptr, h, w, h_out, w_out,
                      w_store, channels, c_offset, jshift_y, jshift_x, gain, slope, clamp, BO, UP: tl.constexpr,
                      DOWN: tl.constexpr, R: tl.constexpr, KAX: tl.constexpr, KBX: tl.constexpr,
                      KAY: tl.constexpr, KBY: tl.constexpr, BU: tl.constexpr, BOP: tl.constexpr,
                      B0: tl.constexpr, D01: tl.constexpr, HALVES: tl.constexpr, PRECISION: tl.constexpr,
                      HAS_GAIN: tl.constexpr, HAS_SCALE: tl.constexpr):
        """The whole filtered leaky ReLU for one output tile as a chain of small matrix products.

        x window (+bias) -> upsample along y (Ay^T @) -> along x (@ Ax), in two column halves -> leaky ReLU, gain,
        clamp -> for each separable term r of the down-filter: along x (@ Dx[r]) then along y (Dy[r] @), summed.
        The upsampled tile (BU x BU) lives only on chip; tiles overlap by the filter's halo. Only the blocks of
        the banded matrices that hold taps are multiplied: the window's used rows / columns (KA + KB), and for
        the down-filter along x, the two output-column halves against the upsampled halves they reach (the
        first half reaches both; the second only the second unless D01), and the window's remainder columns
        against the first upsampled half only if B0.

        HAS_GAIN: the input plane is first multiplied by g_ptr[p] (demodulation of a convolution's output);
        HAS_SCALE: the result is multiplied by s_ptr[p] (the next layer's input modulation). w_store: the output's
        row stride in elements (w_out, or more where the rows are padded: ``row_align``), in every fused kernel.
        """
        plane = tl.program_id(0).to(tl.int64)  # 64-bit offsets: large batches pass 2**31 elements
        oy0 = tl.program_id(1) * BO
        ox0 = tl.program_id(2) * BO
        jy0 = (oy0 * DOWN) // UP + jshift_y
        jx0 = (ox0 * DOWN) // UP + jshift_x
        x_plane = x_ptr + plane * h * w
        bias = tl.load(b_ptr + (plane + c_offset) % channels)  # c_offset: see _fused_dense_kernel
        g = 1.0
        if HAS_GAIN:
            g = tl.load(g_ptr + plane)
        sa = _up_rows(x_plane, ay_ptr, h, w, jy0, jx0, g, bias, 0, KAX, KAY, KBY, BU, PRECISION, HAS_GAIN)
        sb = sa
        if KBX > 0:
            sb = _up_rows(x_plane, ay_ptr, h, w, jy0, jx0, g, bias, KAX, KBX, KAY, KBY, BU, PRECISION, HAS_GAIN)
        HB: tl.constexpr = BU // 2
        OB: tl.constexpr = BOP // 2
        mat = ax_ptr.dtype.element_ty
        u0 = _act(_up_cols(sa, sb, ax_ptr, 0, HB, KAX, KBX * B0, BU, PRECISION), gain, slope, clamp).to(mat)
        u1 = _act(_up_cols(sa, sb, ax_ptr, HB, HB, KAX, KBX, BU, PRECISION), gain, slope, clamp).to(mat)
        lo = tl.arange(0, BOP)
        oy = oy0 + lo
        ok_y = (lo < BO) & (oy < h_out)
        optr = out_ptr + plane * h_out * w_store + oy[:, None] * w_store
        s = 1.0
        if HAS_SCALE:
            s = tl.load(s_ptr + plane)
        rh = tl.arange(0, HB)
        if HALVES:
            acc0 = tl.zeros([BOP, OB], dtype=tl.float32)
            acc1 = tl.zeros([BOP, OB], dtype=tl.float32)
            co = tl.arange(0, OB)
            for r in tl.static_range(R):
                base = dx_ptr + r * BU * BOP
                d00 = tl.load(base + rh[:, None] * BOP + co[None, :])
                d10 = tl.load(base + (HB + rh)[:, None] * BOP + co[None, :])
                d11 = tl.load(base + (HB + rh)[:, None] * BOP + (OB + co)[None, :])
                v0 = tl.dot(u0, d00, input_precision=PRECISION)
                v0 += tl.dot(u1, d10, input_precision=PRECISION)  # [BU, OB]
                v1 = tl.dot(u1, d11, input_precision=PRECISION)
                if D01:
                    d01 = tl.load(base + rh[:, None] * BOP + (OB + co)[None, :])
                    v1 += tl.dot(u0, d01, input_precision=PRECISION)
                dy = tl.load(dy_ptr + r * BOP * BU + lo[:, None] * BU + tl.arange(0, BU)[None, :])
                acc0 += tl.dot(dy, v0.to(dy.dtype), input_precision=PRECISION)
                acc1 += tl.dot(dy, v1.to(dy.dtype), input_precision=PRECISION)
            if HAS_SCALE:
                acc0 = acc0 * s
                acc1 = acc1 * s
            ox = ox0 + co
            tl.store(optr + ox[None, :], acc0.to(out_ptr.dtype.element_ty),
                     mask=ok_y[:, None] & ((co < BO) & (ox < w_out))[None, :])
            tl.store(optr + (OB + ox)[None, :], acc1.to(out_ptr.dtype.element_ty),
                     mask=ok_y[:, None] & ((OB + co < BO) & (OB + ox < w_out))[None, :])
        else:
            acc = tl.zeros([BOP, BOP], dtype=tl.float32)
            for r in tl.static_range(R):
                base = dx_ptr + r * BU * BOP
                v = tl.dot(u0, tl.load(base + rh[:, None] * BOP + lo[None, :]), input_precision=PRECISION)
                v += tl.dot(u1, tl.load(base + (HB + rh)[:, None] * BOP + lo[None, :]), input_precision=PRECISION)
                dy = tl.load(dy_ptr + r * BOP * BU + lo[:, None] * BU + tl.arange(0, BU)[None, :])
                acc += tl.dot(dy, v.to(dy.dtype), input_precision=PRECISION)
            if HAS_SCALE:
                acc = acc * s
            ox = ox0 + lo
            tl.store(optr + ox[None, :], acc.to(out_ptr.dtype.element_ty),
                     mask=ok_y[:, None] & ((lo < BO) & (ox < w_out))[None, :])

    @triton.jit
    def _fused_single_term_kernel(x_ptr, b_ptr, ax_ptr, ay_ptr, dx_ptr, dy_ptr, out_ptr, g_ptr, s_ptr, n_planes, h,
                                  w, h_out, w_out, w_store, channels, jshift_y, jshift_x, gain, slope, clamp, BO,
                                  ty_off, ty_split, ty_jump, tx_off, tx_split, tx_jump, UP: tl.constexpr,
                                  DOWN: tl.constexpr, KAX: tl.constexpr, KBX: tl.constexpr, KAY: tl.constexpr,
                                  KBY: tl.constexpr, BU: tl.constexpr, BOP: tl.constexpr, B0: tl.constexpr,
                                  PRECISION: tl.constexpr, HAS_GAIN: tl.constexpr, HAS_SCALE: tl.constexpr,
                                  PLANES: tl.constexpr, MASKED: tl.constexpr):
        """:func:`_fused_kernel` (banded, no output halves) for a one-term (separable) down-filter, with remainder
        blocks on both axes (KBX, KBY > 0), written otherwise: every matrix block is loaded once before a loop over
        the program's PLANES planes at the same tile.

        With PLANES = 1 this form runs T's 2x fp16 layers faster than :func:`_fused_kernel`, the same output bit
        for bit; more planes per program (also with the next plane's window prefetched) and the straight-line
        version of this code without the loop were slower (docs/performance.md). 8 warps gave wrong values
        (Triton 3.6).

        Tiles: program (p, i, j) runs tile row i + ty_off (+ ty_jump from i = ty_split on), column likewise (see
        :func:`_tile_launches`). MASKED = False for the tiles whose whole input window and output tile lie inside
        the planes: no bounds tests on their loads and stores (faster, the same output)."""
        p0 = tl.program_id(0) * PLANES
        pid1 = tl.program_id(1)
        pid2 = tl.program_id(2)
        oy0 = (pid1 + ty_off + tl.where(pid1 >= ty_split, ty_jump, 0)) * BO
        ox0 = (pid2 + tx_off + tl.where(pid2 >= tx_split, tx_jump, 0)) * BO
        jy0 = (oy0 * DOWN) // UP + jshift_y
        jx0 = (ox0 * DOWN) // UP + jshift_x
        HB: tl.constexpr = BU // 2
        bu = tl.arange(0, BU)
        hb = tl.arange(0, HB)
        lo = tl.arange(0, BOP)
        ayt_a = tl.load(ay_ptr + bu[:, None] + tl.arange(0, KAY)[None, :] * BU)
        ayt_b = tl.load(ay_ptr + bu[:, None] + (KAY + tl.arange(0, KBY))[None, :] * BU)
        axa0 = tl.load(ax_ptr + tl.arange(0, KAX)[:, None] * BU + hb[None, :])
        axa1 = tl.load(ax_ptr + tl.arange(0, KAX)[:, None] * BU + (HB + hb)[None, :])
        axb0 = tl.load(ax_ptr + (KAX + tl.arange(0, KBX))[:, None] * BU + hb[None, :])
        axb1 = tl.load(ax_ptr + (KAX + tl.arange(0, KBX))[:, None] * BU + (HB + hb)[None, :])
        dxa = tl.load(dx_ptr + hb[:, None] * BOP + lo[None, :])
        dxb = tl.load(dx_ptr + (HB + hb)[:, None] * BOP + lo[None, :])
        dy = tl.load(dy_ptr + lo[:, None] * BU + bu[None, :])
        mat = ax_ptr.dtype.element_ty
        oy = oy0 + lo
        ox = ox0 + lo
        keep = _tile_keep(oy, ox, lo, BO, h_out, w_out, MASKED)
        for i in range(PLANES):
            plane = tl.minimum(p0 + i, n_planes - 1).to(tl.int64)  # 64-bit offsets: large batches
            xp = x_ptr + plane * h * w
            c_aa = _window_raw(xp, h, w, jy0, jx0, 0, KAY, 0, KAX, MASKED)
            c_ba = _window_raw(xp, h, w, jy0, jx0, KAY, KBY, 0, KAX, MASKED)
            c_ab = _window_raw(xp, h, w, jy0, jx0, 0, KAY, KAX, KBX, MASKED)
            c_bb = _window_raw(xp, h, w, jy0, jx0, KAY, KBY, KAX, KBX, MASKED)
            bias = tl.load(b_ptr + plane % channels)
            g = 1.0
            if HAS_GAIN:
                g = tl.load(g_ptr + plane)
            fin = _window_finish(c_aa, h, w, jy0, jx0, g, bias, 0, KAY, 0, KAX, HAS_GAIN, MASKED).to(mat)
            sa = tl.dot(ayt_a, fin, input_precision=PRECISION)
            fin = _window_finish(c_ba, h, w, jy0, jx0, g, bias, KAY, KBY, 0, KAX, HAS_GAIN, MASKED).to(mat)
            sa += tl.dot(ayt_b, fin, input_precision=PRECISION)
            fin = _window_finish(c_ab, h, w, jy0, jx0, g, bias, 0, KAY, KAX, KBX, HAS_GAIN, MASKED).to(mat)
            sb = tl.dot(ayt_a, fin, input_precision=PRECISION)
            fin = _window_finish(c_bb, h, w, jy0, jx0, g, bias, KAY, KBY, KAX, KBX, HAS_GAIN, MASKED).to(mat)
            sb += tl.dot(ayt_b, fin, input_precision=PRECISION)
            sa = sa.to(mat)
            sb = sb.to(mat)
            u0 = tl.dot(sa, axa0, input_precision=PRECISION)
            if B0:
                u0 += tl.dot(sb, axb0, input_precision=PRECISION)
            u1 = tl.dot(sa, axa1, input_precision=PRECISION) + tl.dot(sb, axb1, input_precision=PRECISION)
            u0 = _act(u0, gain, slope, clamp).to(mat)
            u1 = _act(u1, gain, slope, clamp).to(mat)
            v = tl.dot(u0, dxa, input_precision=PRECISION) + tl.dot(u1, dxb, input_precision=PRECISION)
            acc = tl.dot(dy, v.to(mat), input_precision=PRECISION)
            if HAS_SCALE:
                acc = acc * tl.load(s_ptr + plane)
            tl.store(out_ptr + plane * h_out * w_store + oy[:, None] * w_store + ox[None, :],
                     acc.to(out_ptr.dtype.element_ty), mask=keep)

    @triton.jit
    def _tile_gradient(gy_ptr, plane, oy0, ox0, h_out, w_out, BO, BOP: tl.constexpr, SCALE: tl.constexpr):
        """The output tile's gradient [BOP, BOP] float32 (zero outside the tile and the plane) and its scale: with
        SCALE divided by its largest magnitude, returned as the scale (fp16 products keep their precision at any
        gradient scale), else 1."""
        lo = tl.arange(0, BOP)
        oy = oy0 + lo
        ox = ox0 + lo
        keep = ((lo < BO) & (oy < h_out))[:, None] & ((lo < BO) & (ox < w_out))[None, :]
        g = tl.load(gy_ptr + plane * h_out * w_out + oy[:, None] * w_out + ox[None, :], mask=keep,
                    other=0.0).to(tl.float32)
        peak = 1.0
        if SCALE:
            peak = tl.max(tl.max(tl.abs(g), axis=1), axis=0)
            g = g * tl.where(peak > 0, 1.0 / peak, 0.0)
        return g, peak

    @triton.jit
    def _down_transposed(g, dy_ptr, dx_ptr, rows, R: tl.constexpr, HB: tl.constexpr, BU: tl.constexpr,
                         BOP: tl.constexpr, PRECISION: tl.constexpr):
        """sum_r Dy[r]^T G Dx[r]^T for the upsampled tile's rows ``rows`` (HB of them): the down-filter's adjoint
        applied to the output tile's gradient g [BOP, BOP] -> [HB, BU] float32."""
        lo = tl.arange(0, BOP)
        gu = tl.zeros([HB, BU], dtype=tl.float32)
        for r in tl.static_range(R):
            dyt = tl.load(dy_ptr + r * BOP * BU + rows[:, None] + lo[None, :] * BU)  # Dy[r]^T, these rows
            a = tl.dot(dyt, g, input_precision=PRECISION)  # [HB, BOP]
            dxt = tl.load(dx_ptr + r * BU * BOP + lo[:, None] + tl.arange(0, BU)[None, :] * BOP)  # Dx[r]^T
            gu += tl.dot(a.to(dxt.dtype), dxt, input_precision=PRECISION)  # [HB, BU]
        return gu

    @triton.jit
    def _fused_backward_kernel(x_ptr, b_ptr, g_ptr, ax_ptr, ay_ptr, dx_ptr, dy_ptr, gy_ptr, gx_ptr,
                               h, w, h_out, w_out, channels, jshift_y, jshift_x, used_y, used_x, gain, slope, clamp,
                               BO, UP: tl.constexpr, DOWN: tl.constexpr, R: tl.constexpr, KJX: tl.constexpr,
                               KJY: tl.constexpr, BU: tl.constexpr, BOP: tl.constexpr, PRECISION: tl.constexpr,
                               SCALE: tl.constexpr, HAS_GAIN: tl.constexpr, SPLIT: tl.constexpr):
        """Gradient of the fused filtered leaky ReLU for one output tile, added into the float32 input gradient.
        HAS_GAIN: the operator's input was x * g (g per plane, as the forward's ``in_gain``); the pre-activation is
        recomputed with it. The sums are the gradient w.r.t. the operator's input, x * g (the epilogue applies g).

        Each output sample belongs to exactly one tile, so the operator is a sum over tiles of (gather the input
        window, tile function, scatter the outputs); its adjoint is the sum over tiles of the transposed chain:
        gu = sum_r Dy[r]^T G Dx[r]^T, times the activation's derivative (the pre-activation is recomputed with
        the dense kernel's products: where the forward ran the banded kernel, the same sums grouped differently,
        equal to rounding), then Ay (.) Ax^T back to the input window, added atomically (windows overlap).
        SCALE (fp16 products): the tile's gradient is divided by its largest magnitude before the products and
        multiplied back after, so fp16 operands keep their precision whatever the gradient's scale.
        """
        plane = tl.program_id(0).to(tl.int64)  # 64-bit offsets: large batches pass 2**31 elements
        oy0 = tl.program_id(1) * BO
        ox0 = tl.program_id(2) * BO
        ky = tl.arange(0, KJY)
        kx = tl.arange(0, KJX)
        jy = (oy0 * DOWN) // UP + jshift_y + ky
        jx = (ox0 * DOWN) // UP + jshift_x + kx
        ok = ((jy >= 0) & (jy < h) & (ky < used_y))[:, None] & ((jx >= 0) & (jx < w) & (kx < used_x))[None, :]
        xv = tl.load(x_ptr + plane * h * w + jy[:, None] * w + jx[None, :], mask=ok, other=0.0).to(tl.float32)
        bias = tl.load(b_ptr + plane % channels)
        if HAS_GAIN:
            pg = tl.load(g_ptr + plane)
            xv = xv * pg
        xv = tl.where(ok, xv + bias, 0.0)
        ax = tl.load(ax_ptr + kx[:, None] * BU + tl.arange(0, BU)[None, :])
        t = tl.dot(xv.to(ax.dtype), ax, input_precision=PRECISION)
        t = t.to(ax.dtype)
        lo = tl.arange(0, BOP)
        g, peak = _tile_gradient(gy_ptr, plane, oy0, ox0, h_out, w_out, BO, BOP, SCALE)
        g = g.to(ax.dtype)
        # The upsampled window in SPLIT row blocks of HB rows: fewer live [BU, BU] values per program.
        HB: tl.constexpr = BU // SPLIT
        s = tl.zeros([KJY, BU], dtype=tl.float32)
        for half in tl.static_range(SPLIT):
            rows = half * HB + tl.arange(0, HB)
            ayt = tl.load(ay_ptr + rows[:, None] + ky[None, :] * BU)  # Ay^T, these rows
            pre = tl.dot(ayt, t, input_precision=PRECISION)  # [HB, BU], as the dense forward computes it
            act = tl.where(pre >= 0, pre, pre * slope) * gain
            deriv = tl.where(pre >= 0, gain, gain * slope)
            deriv = tl.where(tl.abs(act) <= clamp, deriv, 0.0)
            gu = _down_transposed(g, dy_ptr, dx_ptr, rows, R, HB, BU, BOP, PRECISION)
            gu = gu * deriv
            ay = tl.load(ay_ptr + ky[:, None] * BU + rows[None, :])
            s += tl.dot(ay, gu.to(ay.dtype), input_precision=PRECISION)  # [KJY, BU]
        axt = tl.load(ax_ptr + tl.arange(0, BU)[:, None] + kx[None, :] * BU)
        gx = tl.dot(s.to(axt.dtype), axt, input_precision=PRECISION)  # [KJY, KJX]
        if SCALE:
            gx = gx * peak
        # Relaxed atomics: the kernel reads nothing another tile writes (measured faster: docs/performance.md).
        tl.atomic_add(gx_ptr + plane * h * w + jy[:, None] * w + jx[None, :], gx, mask=ok, sem="relaxed")

    @triton.jit
    def _derivative_codes(u, gain, slope, clamp):
        """The activation's derivative at each pre-activation sample u as a 2-bit code (int32): 1 where the leaky
        ReLU passes u with slope 1, 0 where with ``slope``, 2 where the clamp cuts it (zero derivative); the
        backward's rule (the clamp applies to the activation times its gain)."""
        a = tl.where(u >= 0, u, u * slope) * gain
        return tl.where(tl.abs(a) <= clamp, (u >= 0).to(tl.int32), 2)

    @triton.jit
    def _code_shifts(BU: tl.constexpr):
        """Where column c's 2-bit code sits in its byte (:func:`_pack_codes`): bit 2 (c % 2) + 4 ((c // 8) % 2)."""
        c = tl.arange(0, BU)
        return 2 * (c % 2) + 4 * ((c // 8) % 2)

    @triton.jit
    def _pack_codes(codes, ROWS: tl.constexpr, BU: tl.constexpr):
        """[ROWS, BU] 2-bit codes -> [ROWS, BU // 4] bytes. Byte 4 g + k of a row holds columns 16 g + 2 k + {0, 1}
        and 16 g + 8 + 2 k + {0, 1}: the four values one thread holds of a tensor-core product's result (pairs of
        adjacent columns, every 8th column in the same thread), so packing and unpacking need no exchange between
        threads."""
        shifted = codes << _code_shifts(BU)[None, :]
        parts = tl.reshape(shifted, [ROWS, BU // 16, 2, 4, 2])  # column 16 g + 8 h + 2 k + p -> (g, h, k, p)
        return tl.reshape(tl.sum(tl.sum(parts, axis=4), axis=2), [ROWS, BU // 4]).to(tl.uint8)

    @triton.jit
    def _unpacked_derivative(packed, gain, slope, ROWS: tl.constexpr, BU: tl.constexpr):
        """[ROWS, BU // 4] bytes from :func:`_pack_codes` -> the derivative [ROWS, BU] float32 (gain, gain * slope
        or 0)."""
        bytes5 = tl.reshape(packed.to(tl.int32), [ROWS, BU // 16, 1, 4, 1])
        wide = tl.reshape(tl.broadcast_to(bytes5, [ROWS, BU // 16, 2, 4, 2]), [ROWS, BU])
        code = (wide >> _code_shifts(BU)[None, :]) & 3
        return tl.where(code == 1, gain, tl.where(code == 0, gain * slope, 0.0))

    @triton.jit
    def _fused_train_kernel(x_ptr, b_ptr, g_ptr, ax_ptr, ay_ptr, dx_ptr, dy_ptr, out_ptr, codes_ptr, h, w, h_out,
                            w_out, channels, jshift_y, jshift_x, gain, slope, clamp, BO, UP: tl.constexpr,
                            DOWN: tl.constexpr, R: tl.constexpr, KAX: tl.constexpr, KBX: tl.constexpr,
                            KAY: tl.constexpr, KBY: tl.constexpr, BU: tl.constexpr, BOP: tl.constexpr,
                            PRECISION: tl.constexpr, HAS_GAIN: tl.constexpr, SPLIT: tl.constexpr, n_ty, n_tx,
                            ty_off, ty_split, ty_jump, tx_off, tx_split, tx_jump, MASKED: tl.constexpr):
        """The filtered leaky ReLU of one output tile on the backward's tiles, which also stores the activation's
        derivative over the tile's upsampled [BU, BU] block as 2-bit codes (:func:`_derivative_codes`), four per
        byte, at codes[plane, tile y, tile x] ([BU, BU // 4] bytes per tile; n_ty x n_tx tiles per plane): what
        :func:`_fused_backward_codes_kernel` reads instead of recomputing the pre-activation. The input window is
        taken in blocks as there (KAY + KBY rows, KAX + KBX columns: :func:`codes_window`), the upsampled block in
        SPLIT row blocks. Tiles: program (p, i, j) runs tile row i + ty_off (+ ty_jump from i = ty_split on),
        column likewise (:func:`_tile_launches`); MASKED = False for tiles whose window and output lie inside the
        plane (no bounds tests, as the inference kernels' interior tiles)."""
        plane = tl.program_id(0).to(tl.int64)  # 64-bit offsets: large batches pass 2**31 elements
        pid1 = tl.program_id(1)
        pid2 = tl.program_id(2)
        ty = pid1 + ty_off + tl.where(pid1 >= ty_split, ty_jump, 0)
        tx = pid2 + tx_off + tl.where(pid2 >= tx_split, tx_jump, 0)
        oy0 = ty * BO
        ox0 = tx * BO
        jy0 = (oy0 * DOWN) // UP + jshift_y
        jx0 = (ox0 * DOWN) // UP + jshift_x
        x_plane = x_ptr + plane * h * w
        pg = tl.load(g_ptr + plane) if HAS_GAIN else 1.0
        bias = tl.load(b_ptr + plane % channels)
        # Upsampling along x of the window's row blocks: t_a [KAY, BU], t_b [KBY, BU].
        ax_a = tl.load(ax_ptr + tl.arange(0, KAX)[:, None] * BU + tl.arange(0, BU)[None, :])
        xw = _window(x_plane, h, w, jy0, jx0, pg, bias, 0, KAY, 0, KAX, HAS_GAIN, MASKED)
        t_a = tl.dot(xw.to(ax_a.dtype), ax_a, input_precision=PRECISION)
        if KBX > 0:
            ax_b = tl.load(ax_ptr + (KAX + tl.arange(0, KBX))[:, None] * BU + tl.arange(0, BU)[None, :])
            xw = _window(x_plane, h, w, jy0, jx0, pg, bias, 0, KAY, KAX, KBX, HAS_GAIN, MASKED)
            t_a += tl.dot(xw.to(ax_b.dtype), ax_b, input_precision=PRECISION)
        t_a = t_a.to(ax_a.dtype)
        if KBY > 0:
            xw = _window(x_plane, h, w, jy0, jx0, pg, bias, KAY, KBY, 0, KAX, HAS_GAIN, MASKED)
            t_b = tl.dot(xw.to(ax_a.dtype), ax_a, input_precision=PRECISION)
            if KBX > 0:
                xw = _window(x_plane, h, w, jy0, jx0, pg, bias, KAY, KBY, KAX, KBX, HAS_GAIN, MASKED)
                t_b += tl.dot(xw.to(ax_b.dtype), ax_b, input_precision=PRECISION)
            t_b = t_b.to(ax_a.dtype)
        lo = tl.arange(0, BOP)
        tile = ((plane * n_ty + ty) * n_tx + tx) * (BU * (BU // 4))
        HB: tl.constexpr = BU // SPLIT
        acc = tl.zeros([BOP, BOP], dtype=tl.float32)
        for part in tl.static_range(SPLIT):
            rows = part * HB + tl.arange(0, HB)
            ayt = tl.load(ay_ptr + rows[:, None] + tl.arange(0, KAY)[None, :] * BU)  # Ay^T: these rows, block a
            u = tl.dot(ayt, t_a, input_precision=PRECISION)  # [HB, BU] pre-activation
            if KBY > 0:
                ayt = tl.load(ay_ptr + rows[:, None] + (KAY + tl.arange(0, KBY))[None, :] * BU)
                u += tl.dot(ayt, t_b, input_precision=PRECISION)
            tl.store(codes_ptr + tile + rows[:, None] * (BU // 4) + tl.arange(0, BU // 4)[None, :],
                     _pack_codes(_derivative_codes(u, gain, slope, clamp), HB, BU))
            a = _act(u, gain, slope, clamp).to(ax_a.dtype)
            for r in tl.static_range(R):
                dx = tl.load(dx_ptr + r * BU * BOP + tl.arange(0, BU)[:, None] * BOP + lo[None, :])
                v = tl.dot(a, dx, input_precision=PRECISION)  # [HB, BOP]
                dy = tl.load(dy_ptr + r * BOP * BU + lo[:, None] * BU + rows[None, :])  # Dy[r], these columns
                acc += tl.dot(dy, v.to(dy.dtype), input_precision=PRECISION)
        oy = oy0 + lo
        ox = ox0 + lo
        keep = _tile_keep(oy, ox, lo, BO, h_out, w_out, MASKED)
        tl.store(out_ptr + plane * h_out * w_out + oy[:, None] * w_out + ox[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=keep)

    @triton.jit
    def _add_window_block(gx_plane, v, h, w, jy0, jx0, used_y, used_x, ROW0: tl.constexpr, NR: tl.constexpr,
                          COL0: tl.constexpr, NC: tl.constexpr):
        """Adds v [NR, NC] into the float32 plane at input rows jy0+ROW0.., columns jx0+COL0.. (atomically: windows of
        neighbouring tiles overlap), inside the plane and the window's used rows / columns only."""
        ky = ROW0 + tl.arange(0, NR)
        kx = COL0 + tl.arange(0, NC)
        jy = jy0 + ky
        jx = jx0 + kx
        ok = ((jy >= 0) & (jy < h) & (ky < used_y))[:, None] & ((jx >= 0) & (jx < w) & (kx < used_x))[None, :]
        # Relaxed atomics: the kernel reads nothing another tile writes (measured faster: docs/performance.md).
        tl.atomic_add(gx_plane + jy[:, None] * w + jx[None, :], v, mask=ok, sem="relaxed")

    @triton.jit
    def _coded_gradient(g, codes_tile, rows, dx_ptr, dy_ptr, gain, slope, R: tl.constexpr, HB: tl.constexpr,
                        BU: tl.constexpr, BOP: tl.constexpr, PRECISION: tl.constexpr):
        """The upsampled block's gradient on rows ``rows`` (HB of them) from the output tile's gradient ``g``, times
        the activation's derivative stored at ``codes_tile`` ([BU, BU // 4] bytes): [HB, BU] in the matrices'
        dtype."""
        gu = _down_transposed(g, dy_ptr, dx_ptr, rows, R, HB, BU, BOP, PRECISION)
        packed = tl.load(codes_tile + rows[:, None] * (BU // 4) + tl.arange(0, BU // 4)[None, :])
        return (gu * _unpacked_derivative(packed, gain, slope, HB, BU)).to(dx_ptr.dtype.element_ty)

    @triton.jit
    def _codes_backward_cols_first(g, peak, codes_tile, gx_plane, ax_ptr, ay_ptr, dx_ptr, dy_ptr, h, w, jy0, jx0,
                                   used_y, used_x, gain, slope, R: tl.constexpr, KAX: tl.constexpr,
                                   KBX: tl.constexpr, KAY: tl.constexpr, KBY: tl.constexpr, BU: tl.constexpr,
                                   BOP: tl.constexpr, HB: tl.constexpr, PRECISION: tl.constexpr,
                                   SPLIT: tl.constexpr):
        """The COLS_FIRST order of :func:`_fused_backward_codes_kernel` from the tile's scaled gradient ``g`` on:
        per row block, t = (upsampled gradient times the derivative) Ax^T over the window's column blocks, then
        Ay t summed into one accumulator per (row block, column block) of the window; added into the plane."""
        mat = dx_ptr.dtype.element_ty
        v_aa = tl.zeros([KAY, KAX], dtype=tl.float32)
        if KBX > 0:
            v_ab = tl.zeros([KAY, KBX], dtype=tl.float32)
        if KBY > 0:
            v_ba = tl.zeros([KBY, KAX], dtype=tl.float32)
        if KBX > 0 and KBY > 0:
            v_bb = tl.zeros([KBY, KBX], dtype=tl.float32)
        cols = tl.arange(0, BU)
        for part in tl.static_range(SPLIT):
            rows = part * HB + tl.arange(0, HB)
            gu = _coded_gradient(g, codes_tile, rows, dx_ptr, dy_ptr, gain, slope, R, HB, BU, BOP, PRECISION)
            ay_a = tl.load(ay_ptr + tl.arange(0, KAY)[:, None] * BU + rows[None, :])  # [KAY, HB]
            if KBY > 0:
                ay_b = tl.load(ay_ptr + (KAY + tl.arange(0, KBY))[:, None] * BU + rows[None, :])  # [KBY, HB]
            axt_a = tl.load(ax_ptr + cols[:, None] + tl.arange(0, KAX)[None, :] * BU)  # Ax^T, [BU, KAX]
            t = tl.dot(gu, axt_a, input_precision=PRECISION).to(mat)  # [HB, KAX]
            v_aa += tl.dot(ay_a, t, input_precision=PRECISION)
            if KBY > 0:
                v_ba += tl.dot(ay_b, t, input_precision=PRECISION)
            if KBX > 0:
                axt_b = tl.load(ax_ptr + cols[:, None] + (KAX + tl.arange(0, KBX))[None, :] * BU)  # [BU, KBX]
                t = tl.dot(gu, axt_b, input_precision=PRECISION).to(mat)  # [HB, KBX]
                v_ab += tl.dot(ay_a, t, input_precision=PRECISION)
                if KBY > 0:
                    v_bb += tl.dot(ay_b, t, input_precision=PRECISION)
        _add_window_block(gx_plane, v_aa * peak, h, w, jy0, jx0, used_y, used_x, 0, KAY, 0, KAX)
        if KBX > 0:
            _add_window_block(gx_plane, v_ab * peak, h, w, jy0, jx0, used_y, used_x, 0, KAY, KAX, KBX)
        if KBY > 0:
            _add_window_block(gx_plane, v_ba * peak, h, w, jy0, jx0, used_y, used_x, KAY, KBY, 0, KAX)
            if KBX > 0:
                _add_window_block(gx_plane, v_bb * peak, h, w, jy0, jx0, used_y, used_x, KAY, KBY, KAX, KBX)

    @triton.jit
    def _fused_backward_codes_kernel(codes_ptr, gy_ptr, gx_ptr, ax_ptr, ay_ptr, dx_ptr, dy_ptr, h, w, h_out, w_out,
                                     jshift_y, jshift_x, used_y, used_x, gain, slope, BO, UP: tl.constexpr,
                                     DOWN: tl.constexpr, R: tl.constexpr, KAX: tl.constexpr, KBX: tl.constexpr,
                                     KAY: tl.constexpr, KBY: tl.constexpr, BU: tl.constexpr, BOP: tl.constexpr,
                                     PRECISION: tl.constexpr, SCALE: tl.constexpr, SPLIT: tl.constexpr,
                                     COLS_FIRST: tl.constexpr = False):
        """:func:`_fused_backward_kernel` with the activation's derivative read from the codes the training
        forward stored (:func:`_fused_train_kernel`) instead of recomputed: no input window to load, no upsampling
        products before the transposed chain. The window's used rows / columns are taken as a power-of-two block
        plus a remainder (KAY + KBY, KAX + KBX; e.g. 64 + 16 of a 128 window for 2x layers), which keeps the
        [window, BU] sums within the registers. Same sums into the float32 input gradient.

        COLS_FIRST: each row block's upsampled gradient goes through Ax^T first ([HB, BU] -> [HB, window columns])
        and then Ay, summed over the row blocks in [window rows, window columns] accumulators, instead of summing
        [window rows, BU] over the row blocks and applying Ax^T once after: the same products, smaller sums to keep
        live (:data:`CODES_COLS_FIRST`)."""
        plane = tl.program_id(0).to(tl.int64)  # 64-bit offsets: large batches pass 2**31 elements
        ty = tl.program_id(1)
        tx = tl.program_id(2)
        oy0 = ty * BO
        ox0 = tx * BO
        lo = tl.arange(0, BOP)
        g, peak = _tile_gradient(gy_ptr, plane, oy0, ox0, h_out, w_out, BO, BOP, SCALE)
        g = g.to(dx_ptr.dtype.element_ty)
        tile = ((plane * tl.num_programs(1) + ty) * tl.num_programs(2) + tx) * (BU * (BU // 4))
        HB: tl.constexpr = BU // SPLIT
        jy0 = (oy0 * DOWN) // UP + jshift_y
        jx0 = (ox0 * DOWN) // UP + jshift_x
        gx_plane = gx_ptr + plane * h * w
        if COLS_FIRST:
            _codes_backward_cols_first(g, peak, codes_ptr + tile, gx_plane, ax_ptr, ay_ptr, dx_ptr, dy_ptr, h, w, jy0,
                                       jx0, used_y, used_x, gain, slope, R, KAX, KBX, KAY, KBY, BU, BOP, HB,
                                       PRECISION, SPLIT)
            return
        s_a = tl.zeros([KAY, BU], dtype=tl.float32)
        if KBY > 0:
            s_b = tl.zeros([KBY, BU], dtype=tl.float32)
        for part in tl.static_range(SPLIT):
            rows = part * HB + tl.arange(0, HB)
            gu = _coded_gradient(g, codes_ptr + tile, rows, dx_ptr, dy_ptr, gain, slope, R, HB, BU, BOP, PRECISION)
            ay_a = tl.load(ay_ptr + tl.arange(0, KAY)[:, None] * BU + rows[None, :])
            s_a += tl.dot(ay_a, gu, input_precision=PRECISION)  # [KAY, BU]
            if KBY > 0:
                ay_b = tl.load(ay_ptr + (KAY + tl.arange(0, KBY))[:, None] * BU + rows[None, :])
                s_b += tl.dot(ay_b, gu, input_precision=PRECISION)  # [KBY, BU]
        axt_a = tl.load(ax_ptr + tl.arange(0, BU)[:, None] + tl.arange(0, KAX)[None, :] * BU)  # Ax^T, used columns
        v = tl.dot(s_a.to(axt_a.dtype), axt_a, input_precision=PRECISION) * peak
        _add_window_block(gx_plane, v, h, w, jy0, jx0, used_y, used_x, 0, KAY, 0, KAX)
        if KBX > 0:
            axt_b = tl.load(ax_ptr + tl.arange(0, BU)[:, None] + (KAX + tl.arange(0, KBX))[None, :] * BU)
            v = tl.dot(s_a.to(axt_b.dtype), axt_b, input_precision=PRECISION) * peak
            _add_window_block(gx_plane, v, h, w, jy0, jx0, used_y, used_x, 0, KAY, KAX, KBX)
        if KBY > 0:
            v = tl.dot(s_b.to(axt_a.dtype), axt_a, input_precision=PRECISION) * peak
            _add_window_block(gx_plane, v, h, w, jy0, jx0, used_y, used_x, KAY, KBY, 0, KAX)
            if KBX > 0:
                v = tl.dot(s_b.to(axt_b.dtype), axt_b, input_precision=PRECISION) * peak
                _add_window_block(gx_plane, v, h, w, jy0, jx0, used_y, used_x, KAY, KBY, KAX, KBX)

    @triton.jit
    def _backward_epilogue_kernel(acc_ptr, x_ptr, g_ptr, gx_ptr, sums_ptr, hw, HAS_GAIN: tl.constexpr,
                                  PRODS: tl.constexpr, BLOCK: tl.constexpr):
        """One pass over the backward's float32 sums ``acc`` (the gradient w.r.t. the operator's input a = x * g):
        d x = acc * g in x's storage dtype, and per plane the sums of acc and (``PRODS``) of acc * x (the bias' and
        the gain's gradients), added into sums [2, planes]."""
        plane = tl.program_id(0).to(tl.int64)
        i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = i < hw
        a = tl.load(acc_ptr + plane * hw + i, mask=ok, other=0.0).to(tl.float32)
        gx = a * tl.load(g_ptr + plane) if HAS_GAIN else a
        tl.store(gx_ptr + plane * hw + i, gx.to(gx_ptr.dtype.element_ty), mask=ok)
        n_planes = tl.num_programs(0)
        tl.atomic_add(sums_ptr + plane, tl.sum(a, axis=0), sem="relaxed")
        if PRODS:
            xv = tl.load(x_ptr + plane * hw + i, mask=ok, other=0.0).to(tl.float32)
            tl.atomic_add(sums_ptr + n_planes + plane, tl.sum(a * xv, axis=0), sem="relaxed")

    @triton.jit
    def _up_x_kernel(x_ptr, b_ptr, a_ptr, out_ptr, h, w_in, w_out, channels, j_shift,
                     HAS_BIAS: tl.constexpr, UP: tl.constexpr, KJ: tl.constexpr, BR: tl.constexpr,
                     BI: tl.constexpr, PRECISION: tl.constexpr):
        """Polyphase upsampling along x as a small matrix product: out[r, i0+ii] = sum_jj x[r, j0+jj] A[jj, ii].

        A (KJ x BI, built on the host) is the same for every tile because tiles start at multiples of UP.
        """
        plane = tl.program_id(0).to(tl.int64)  # 64-bit offsets: large batches pass 2**31 elements
        r = tl.program_id(1) * BR + tl.arange(0, BR)
        i0 = tl.program_id(2) * BI
        j = i0 // UP + j_shift + tl.arange(0, KJ)
        ok = (r < h)[:, None] & ((j >= 0) & (j < w_in))[None, :]
        v = tl.load(x_ptr + plane * h * w_in + r[:, None] * w_in + j[None, :], mask=ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            v = tl.where(ok, v + tl.load(b_ptr + plane % channels), 0.0)
        a = tl.load(a_ptr + tl.arange(0, KJ)[:, None] * BI + tl.arange(0, BI)[None, :])
        acc = tl.dot(v.to(a.dtype), a, input_precision=PRECISION)
        i = i0 + tl.arange(0, BI)
        tl.store(out_ptr + plane * h * w_out + r[:, None] * w_out + i[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=(r < h)[:, None] & (i < w_out)[None, :])

    @triton.jit
    def _up_y_act_kernel(t_ptr, a_ptr, out_ptr, h_in, h_out, w, j_shift, gain, slope, clamp,
                         UP: tl.constexpr, KJ: tl.constexpr, BI: tl.constexpr, BC: tl.constexpr,
                         PRECISION: tl.constexpr):
        """Polyphase upsampling along y (A^T @ rows), then leaky ReLU, gain and clamp."""
        plane = tl.program_id(0).to(tl.int64)  # 64-bit offsets: large batches pass 2**31 elements
        i0 = tl.program_id(1) * BI
        c = tl.program_id(2) * BC + tl.arange(0, BC)
        j = i0 // UP + j_shift + tl.arange(0, KJ)
        ok = ((j >= 0) & (j < h_in))[:, None] & (c < w)[None, :]
        v = tl.load(t_ptr + plane * h_in * w + j[:, None] * w + c[None, :], mask=ok, other=0.0)
        at = tl.load(a_ptr + tl.arange(0, BI)[:, None] + tl.arange(0, KJ)[None, :] * BI)  # A transposed
        acc = tl.dot(at, v.to(at.dtype), input_precision=PRECISION)
        acc = tl.where(acc >= 0, acc, acc * slope) * gain
        acc = tl.minimum(tl.maximum(acc, -clamp), clamp)
        i = i0 + tl.arange(0, BI)
        tl.store(out_ptr + plane * h_out * w + i[:, None] * w + c[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=(i < h_out)[:, None] & (c < w)[None, :])

    @triton.jit
    def _down2d_kernel(u_ptr, m_ptr, out_ptr, h_in, w_in, h_out, w_out, KH: tl.constexpr, D: tl.constexpr,
                       NKC: tl.constexpr, KC: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
                       PRECISION: tl.constexpr):
        """Non-separable strided FIR as matrix products: for each filter row ky, the input rows D*oy+ky times a
        banded matrix M[ky] (NKC*KC x BW) that holds that filter row at stride D (built on the host)."""
        plane = tl.program_id(0).to(tl.int64)  # 64-bit offsets: large batches pass 2**31 elements
        oy = tl.program_id(1) * BH + tl.arange(0, BH)
        x0 = tl.program_id(2) * BW * D
        acc = tl.zeros([BH, BW], dtype=tl.float32)
        base = u_ptr + plane * h_in * w_in
        for ky in tl.static_range(KH):
            rows = oy * D + ky
            for kc in tl.static_range(NKC):
                cols = x0 + kc * KC + tl.arange(0, KC)
                ok = (rows < h_in)[:, None] & (cols < w_in)[None, :]
                v = tl.load(base + rows[:, None] * w_in + cols[None, :], mask=ok, other=0.0)
                m = tl.load(m_ptr + ((ky * NKC + kc) * KC + tl.arange(0, KC))[:, None] * BW
                            + tl.arange(0, BW)[None, :])
                acc += tl.dot(v.to(m.dtype), m, input_precision=PRECISION)
        ox = tl.program_id(2) * BW + tl.arange(0, BW)
        tl.store(out_ptr + plane * h_out * w_out + oy[:, None] * w_out + ox[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=(oy < h_out)[:, None] & (ox < w_out)[None, :])

    @triton.jit
    def _down_x_multi_kernel(u_ptr, f_ptr, out_ptr, n_planes, h, w_in, w_out, R: tl.constexpr, K: tl.constexpr,
                             D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
        """R strided row filters at once (one read of the input): out[r, p, y, x] = sum_k f[r, k] u[p, y, D*x + k]."""
        plane = tl.program_id(0).to(tl.int64)  # 64-bit offsets: large batches pass 2**31 elements
        y = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        x = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
        ok = (y < h)[:, None] & (x < w_out)[None, :]
        row = u_ptr + plane * h * w_in + y[:, None] * w_in
        acc0 = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
        acc1 = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
        acc3 = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
        for k in tl.static_range(K):
            v = tl.load(row + (x * D + k)[None, :], mask=ok, other=0.0).to(tl.float32)
            acc0 += tl.load(f_ptr + k) * v
            if R > 1:
                acc1 += tl.load(f_ptr + K + k) * v
            if R > 2:
                acc2 += tl.load(f_ptr + 2 * K + k) * v
            if R > 3:
                acc3 += tl.load(f_ptr + 3 * K + k) * v
        optrs = out_ptr + plane * h * w_out + y[:, None] * w_out + x[None, :]
        step = n_planes.to(tl.int64) * h * w_out
        tl.store(optrs, acc0.to(out_ptr.dtype.element_ty), mask=ok)
        if R > 1:
            tl.store(optrs + step, acc1.to(out_ptr.dtype.element_ty), mask=ok)
        if R > 2:
            tl.store(optrs + 2 * step, acc2.to(out_ptr.dtype.element_ty), mask=ok)
        if R > 3:
            tl.store(optrs + 3 * step, acc3.to(out_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _down_y_sum_kernel(v_ptr, f_ptr, out_ptr, n_planes, h_in, h_out, w, R: tl.constexpr, K: tl.constexpr,
                           D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
        """out[p, y, x] = sum_r sum_k f[r, k] v[r, p, D*y + k, x]: column filters of the R terms, summed."""
        plane = tl.program_id(0).to(tl.int64)  # 64-bit offsets: large batches pass 2**31 elements
        y = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        x = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
        ok = (y < h_out)[:, None] & (x < w)[None, :]
        acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
        for r in tl.static_range(R):
            base = v_ptr + (r * n_planes + plane) * h_in * w
            for k in tl.static_range(K):
                v = tl.load(base + (y * D + k)[:, None] * w + x[None, :], mask=ok, other=0.0).to(tl.float32)
                acc += tl.load(f_ptr + r * K + k) * v
        tl.store(out_ptr + plane * h_out * w + y[:, None] * w + x[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=ok)

    @triton.jit
    def _down_kernel(u_ptr, f_ptr, out_ptr, h_in, w_in, h_out, w_out, KH: tl.constexpr, KW: tl.constexpr,
                     DY: tl.constexpr, DX: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
        """Direct FIR (KH x KW taps, already flipped) evaluated only at the kept samples (stride DY, DX)."""
        plane = tl.program_id(0).to(tl.int64)  # 64-bit offsets: large batches pass 2**31 elements
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


def _pow2(n, least=16):
    return max(least, 1 << (int(n) - 1).bit_length())


BLOCK = 64  # output tile edge of the matrix-product kernels


def _up_matrix(g, up, pad0, block, dtype, device):
    """The banded matrix A[jj, ii] = g[(j0 + jj) * up - (i0 + ii) + pad0] shared by all tiles.

    ``g``: flipped, gain-scaled taps (length T). Tiles start at i0 = multiples of ``block`` (a multiple of
    ``up``); j0 = i0 // up + j_shift. Returns (A [KJ, block], j_shift, KJ).
    """
    taps = g.numel()
    j_shift = -((pad0 + up - 1) // up)  # first input that can reach output i0: j >= (i0 - pad0) / up
    kj = _pow2((block + taps) // up + 2)

    def tap_index(dev):
        k = (torch.arange(kj, device=dev)[:, None] + j_shift) * up - torch.arange(block, device=dev)[None, :] + pad0
        return k, (k >= 0) & (k < taps)

    # each output meets exactly taps / up real input samples; all of them must lie inside the window
    assert int(tap_index("cpu")[1].sum()) == block * taps // up, "upsampling window too small"
    # gathered where g is (no copy to or from the host: the unfused kernels build it inside CUDA graph recordings)
    k, ok = tap_index(g.device)
    a = torch.where(ok, g[k.clamp(0, taps - 1)], torch.zeros((), dtype=g.dtype, device=g.device))
    return a.to(device=device, dtype=dtype).contiguous(), j_shift, kj


def _dot_dtype_and_precision(dtype):
    # fp16 storage: fp16 tensor-core products; fp32 storage: three-pass TF32 (float32 accuracy).
    return (torch.float16, "ieee") if dtype == torch.float16 else (torch.float32, "tf32x3")


def _bf16x3_available():
    try:
        from triton.backends.nvidia.compiler import CUDAOptions

        return "bf16x3" in CUDAOptions.allowed_dot_input_precisions
    except Exception:  # pragma: no cover - depends on the Triton version
        return False


# Whether bf16x3 products are available (fast_config's bf16x3 says whether to use them). Triton's interpreter
# (the CPU tests) has none: there the float32 layers keep three-pass TF32.
BF16X3 = HAVE_TRITON and not fast_config.triton_interpreting() and _bf16x3_available()


def _forward_precision(dtype):
    """The fused forward's product precision. float32 layers: three-pass bf16 (about 16 bits; fp16-rate tensor
    cores) when TF32 is allowed for cuDNN's convolutions (``torch.backends.cudnn.allow_tf32``, PyTorch's default)
    -- those convolutions, and the 1x1 products that follow the same flag, then round their operands to 10 bits,
    so the activation's error stays far below the layer's; else three-pass TF32 (float32 accuracy). bf16x3 is the
    faster, and leaves the images' error against strict float32 unchanged (docs/performance.md)."""
    if dtype == torch.float16:
        return "ieee"
    use = BF16X3 and fast_config.current().bf16x3 and torch.backends.cudnn.allow_tf32
    return "bf16x3" if use else "tf32x3"


def _backward_precision(dtype):
    """The recomputing backward's product precision. float32 layers: one-pass TF32 when TF32 is allowed for cuDNN's
    convolutions (``torch.backends.cudnn.allow_tf32``, PyTorch's default) and ``fast_config`` ``tf32_backward`` is
    on: the layer's convolution and its 1x1 products then round their operands to TF32 as well; else three-pass
    TF32 (float32 accuracy, what the tests compare against autograd with TF32 off)."""
    if dtype == torch.float16:
        return "ieee"
    use = fast_config.current().tf32_backward and torch.backends.cudnn.allow_tf32
    return "tf32" if use else "tf32x3"


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


def _up_x(planes, g, up, pad0, pad1, bias, channels, out_dtype):
    p, h, w = planes.shape
    w_out = w * up + pad0 + pad1 - g.numel() + 1
    mat_dtype, prec = _dot_dtype_and_precision(planes.dtype)
    a, j_shift, kj = _up_matrix(g, up, pad0, BLOCK, mat_dtype, planes.device)
    out = torch.empty((p, h, w_out), dtype=out_dtype, device=planes.device)
    grid = (p, _cdiv(h, BLOCK), _cdiv(w_out, BLOCK))
    _up_x_kernel[grid](planes, bias, a, out, h, w, w_out, channels, j_shift, HAS_BIAS=True, UP=up, KJ=kj,
                       BR=BLOCK, BI=BLOCK, PRECISION=prec)
    return out


def _up_y_act(t, g, up, pad0, pad1, gain, slope, clamp):
    p, h, w = t.shape
    h_out = h * up + pad0 + pad1 - g.numel() + 1
    mat_dtype, prec = _dot_dtype_and_precision(t.dtype)
    a, j_shift, kj = _up_matrix(g, up, pad0, BLOCK, mat_dtype, t.device)
    out = torch.empty((p, h_out, w), dtype=t.dtype, device=t.device)
    grid = (p, _cdiv(h_out, BLOCK), _cdiv(w, BLOCK))
    _up_y_act_kernel[grid](t, a, out, h, h_out, w, j_shift, float(gain), float(slope), float(clamp), UP=up, KJ=kj,
                           BI=BLOCK, BC=BLOCK, PRECISION=prec)
    return out


def _down2d(u, f, down):
    """Strided 2-D FIR of [P, H, W] with the flipped filter ``f`` [K, K], via banded matrix products."""
    p, h, w = u.shape
    k = f.shape[0]
    h_out, w_out = (h - k) // down + 1, (w - k) // down + 1
    kc = 64
    span = down * (BLOCK - 1) + k  # input columns one tile of BLOCK outputs reads
    nkc = _cdiv(span, kc)
    # built where f is (no host copy, so it runs inside CUDA graph recordings): m[ky, i, ox] = f[ky, i - down ox]
    kx = torch.arange(nkc * kc, device=f.device)[:, None] - down * torch.arange(BLOCK, device=f.device)[None, :]
    ok = (kx >= 0) & (kx < k)
    m = torch.where(ok, f[:, kx.clamp(0, k - 1)], torch.zeros((), dtype=f.dtype, device=f.device))
    mat_dtype, prec = _dot_dtype_and_precision(u.dtype)
    m = m.to(device=u.device, dtype=mat_dtype).contiguous()  # [K, nkc*kc, BLOCK]
    out = torch.empty((p, h_out, w_out), dtype=u.dtype, device=u.device)
    grid = (p, _cdiv(h_out, BLOCK), _cdiv(w_out, BLOCK))
    _down2d_kernel[grid](u, m, out, h, w, h_out, w_out, KH=k, D=down, NKC=nkc, KC=kc, BH=BLOCK, BW=BLOCK,
                         PRECISION=prec)
    return out


def _down(u, f, dy, dx):
    """Strided FIR of [P, H, W] with a 2-D flipped filter ``f`` [KH, KW], direct evaluation."""
    p, h, w = u.shape
    kh, kw = f.shape
    h_out, w_out = (h - kh) // dy + 1, (w - kw) // dx + 1
    out = torch.empty((p, h_out, w_out), dtype=u.dtype, device=u.device)
    grid = (p, _cdiv(h_out, 16), _cdiv(w_out, 64))
    _down_kernel[grid](u, f, out, h, w, h_out, w_out, KH=kh, KW=kw, DY=dy, DX=dx, BLOCK_H=16, BLOCK_W=64)
    return out


MAX_RANK = 4


def separable_terms(f2d, tol=1e-7):
    """Split a 2-D filter into at most MAX_RANK separable terms by SVD: f ~= sum_r col[r] (x) row[r].

    StyleGAN3's radial filters are numerically low-rank (singular values fall below 1e-7 of the largest
    within 2-4 terms), so the truncation error stays at float32 rounding level. Returns (cols [R, K],
    rows [R, K]) float32, or None where more than MAX_RANK terms would be needed.
    """
    u, s, vh = torch.linalg.svd(f2d.double())
    keep = int((s > s[0] * tol).sum())
    if keep > MAX_RANK:
        return None
    cols = (u[:, :keep] * s[:keep].sqrt()).T
    rows = vh[:keep] * s[:keep].sqrt()[:, None]
    return cols.float().contiguous(), rows.float().contiguous()


def _down_separable_sum(u, cols, rows, down):
    """sum_r (column filter r) o (row filter r), each strided by ``down``: the radial filter, separably."""
    p, h, w = u.shape
    r, k = rows.shape
    w_mid = (w - k) // down + 1
    h_out = (h - k) // down + 1
    mid = torch.empty((r, p, h, w_mid), dtype=u.dtype, device=u.device)
    _down_x_multi_kernel[(p, _cdiv(h, 16), _cdiv(w_mid, 64))](u, rows.to(u.device), mid, p, h, w, w_mid, R=r, K=k,
                                                             D=down, BLOCK_H=16, BLOCK_W=64)
    out = torch.empty((p, h_out, w_mid), dtype=u.dtype, device=u.device)
    _down_y_sum_kernel[(p, _cdiv(h_out, 16), _cdiv(w_mid, 64))](mid, cols.to(u.device), out, p, h, h_out, w_mid,
                                                               R=r, K=k, D=down, BLOCK_H=16, BLOCK_W=64)
    return out


# Planes at least this wide use the tensor-core upsampler (for these dtypes); smaller ones the gather kernel,
# whose tiles waste less on small planes. float32 stays on the gather kernel: three-pass TF32 products cost more.
DOT_MIN_WIDTH = 256
DOT_UP_DTYPES = (torch.float16,)

_terms_cache: dict = {}


def _cached(cache, key, sources, build):
    """``cache[key]`` if it was built from these very tensors, else ``build()``, stored with weak references to
    them. Keys hold addresses and versions of filter buffers; the references guard against an address reused by
    a later tensor with other values (a freed generator's filters, then a new generator's), which would otherwise
    hit a stale entry."""
    hit = cache.get(key)
    if hit is not None and all(ref() is t for ref, t in zip(hit[1], sources)):
        return hit[0]
    if len(cache) > 512:  # drop the entries of freed tensors
        for k in [k for k, (_, refs) in cache.items() if any(ref() is None for ref in refs)]:
            del cache[k]
    value = build()
    cache[key] = (value, tuple(weakref.ref(t) for t in sources))
    return value


def _flipped_terms(fd):
    """Separable terms of the flipped filter (what the kernels correlate with), cached per stored buffer."""
    def build():
        terms = separable_terms(fd.detach().cpu())
        return None if terms is None else tuple(t.flip(1).contiguous().to(fd.device) for t in terms)

    return _cached(_terms_cache, (fd.data_ptr(), fd.device, tuple(fd.shape), fd._version), (fd,), build)


def _prepared_filters(fu, fd, up, device):
    """Flipped float32 taps with the upsampling gain folded in (sqrt(up**2) = up per separable pass)."""
    fu_t = (fu.flip(0).float() * up).contiguous().to(device)
    if fd.ndim == 1:
        fd_t = fd.flip(0).float().contiguous().to(device)
    else:
        fd_t = fd.flip([0, 1]).float().contiguous().to(device)
    return fu_t, fd_t


# Which fused forward runs a layer, by (storage dtype, upsampling factor): (kernel, edge of the upsampled tile
# held on chip, output-column halves for the banded kernel), chosen per layer of R and T with
# benchmarks/bench_lrelu_forms.py (figures in docs/performance.md): 4x-upsampling fp16 layers run fastest as
# whole-window products on 128-wide tiles; 2x fp16 layers as banded products on 64-wide tiles; float32 layers
# (three-pass products) banded with halves on 64-wide tiles, faster than the unfused kernels. Banded fp16 on
# 128-wide tiles with halves is never used: Triton 3.6 miscompiled it on Hopper (wrong values).
# FUSED_CHOICE holds the exceptions to FUSED_DEFAULT, the form per dtype (also the fallback of any exception).
FUSED_CHOICE = {(torch.float16, 4): ("dense", 128, False)}
FUSED_DEFAULT = {torch.float16: ("banded", 64, False), torch.float32: ("banded", 64, True)}
# (Separable terms kept for fp16 layers' radial down-filters: fast_config's fp16_rank_tol.)
# Planes whose output is smaller than this use the unfused kernels. float16: the fused kernel rounds the filter
# taps and one more intermediate to fp16; on the small planes of 256-512 px models that measurably added to the
# gradient error (R 256: 1.0e-2 against float32 fused, 7.9e-3 unfused), so they stay unfused. float32: from 32
# up, the fused kernel is exact to float32 rounding and faster.
FUSED_MIN_OUT = {torch.float16: 128, torch.float32: 32}
# (Warps per forward tile program: fast_config's fused_warps. The backward prefers 8 for fp16 layers and 4 for
# float32 ones.)
# The dense forward's form for single-term down-filters (see _fused_dense_kernel's MATS_FIRST) and its warps.
DENSE_MATS_FIRST = True
DENSE_FIRST_WARPS = 8
# Storage dtypes whose banded single-term layers run _fused_single_term_kernel (measured for fp16 only).
SINGLE_TERM_DTYPES = (torch.float16,)
# Bounds tests on every tile, in the inference kernels and the training forward (for the tests: the interior tiles'
# unmasked form must give the same values).
ALWAYS_MASKED = False
_fused_cache: dict = {}


def _fused_plan(fu, fd, up, down, padding, dtype, device, bu):
    """Host-side matrices of the fused kernel for one layer (cached per stored filter buffers)."""
    rank_tol = fast_config.current().fp16_rank_tol if dtype == torch.float16 else 1e-7
    key = (fu.data_ptr(), fu._version, fd.data_ptr(), fd._version, up, down, tuple(padding), dtype, device, bu,
           rank_tol)
    return _cached(_fused_cache, key, (fu, fd), lambda: _build_fused_plan(fu, fd, up, down, padding, dtype, device,
                                                                          bu, rank_tol))


def _build_fused_plan(fu, fd, up, down, padding, dtype, device, bu, rank_tol):
    px0, _, py0, _ = (int(v) for v in padding)
    g = fu.detach().cpu().flip(0).float() * up
    k = fd.shape[0]
    bo = (bu - k) // down + 1
    while (bo * down) % up:  # tiles must start on an input sample of the zero-stuffed signal
        bo -= 1
    bop = _pow2(bo)
    mat_dtype, prec = _dot_dtype_and_precision(dtype)
    ax, jshift_x, kjx = _up_matrix(g, up, px0, bu, mat_dtype, device)
    ay, jshift_y, kjy = _up_matrix(g, up, py0, bu, mat_dtype, device)
    if fd.ndim == 2:
        terms = separable_terms(fd.detach().cpu(), tol=rank_tol)
        if terms is None:
            return None
        cols, rows = (t.flip(1) for t in terms)
    else:
        cols = rows = fd.detach().cpu().float().flip(0)[None]
    i = torch.arange(bu).reshape(-1, 1)
    o = torch.arange(bop).reshape(1, -1)
    tap = i - down * o
    ok = (tap >= 0) & (tap < k) & (o < bo)
    dx = torch.stack([torch.where(ok, rr[tap.clamp(0, k - 1)], torch.zeros(())) for rr in rows])  # [R, BU, BOP]
    dy = torch.stack([torch.where(ok, cc[tap.clamp(0, k - 1)], torch.zeros(())).T for cc in cols])  # [R, BOP, BU]
    # Window rows / columns that meet a nonzero tap (the rest of the power-of-two window is padding).
    used_x = int((ax != 0).any(1).nonzero().max()) + 1
    used_y = int((ay != 0).any(1).nonzero().max()) + 1
    # The forward multiplies only the blocks that hold taps: the used window as a power-of-two block plus a
    # remainder, and Dx by halves (rows of the upsampled tile x output columns); the block of the first rows
    # and the last output columns is empty whenever the down-filter is shorter than its stride times BOP / 2.
    kax, kbx = _split_window(used_x)
    kay, kby = _split_window(used_y)
    d01 = bool((dx[:, : bu // 2, bop // 2:] != 0).any())
    b0 = bool((ax[kax:kax + kbx, : bu // 2] != 0).any())  # remainder input columns reaching the first half
    plan = dict(bu=bu, ax=ax, ay=ay, dx=dx.to(device=device, dtype=mat_dtype).contiguous(),
                dy=dy.to(device=device, dtype=mat_dtype).contiguous(), jshift_x=jshift_x, jshift_y=jshift_y,
                kjx=kjx, kjy=kjy, used_x=used_x, used_y=used_y, kax=kax, kbx=kbx, kay=kay, kby=kby, b0=b0, d01=d01,
                bo=bo, bop=bop, r=int(dx.shape[0]), precision=prec)
    return plan


def _split_window(used):
    """(KA, KB): the ``used`` window rows as a power-of-two block KA plus a power-of-two remainder KB (0 if none),
    both at least 16 (the smallest matrix-product operand); e.g. 72 -> (64, 16) instead of one block of 128."""
    ka = max(16, 1 << (int(used).bit_length() - 1))
    return (ka, 0) if used <= ka else (ka, _pow2(used - ka))


def _output_size(h, w, fu, fd, up, down, padding):
    """(H', W') of the filtered leaky ReLU: upsample by ``up``, pad, filter with ``fu``, then ``fd`` at stride
    ``down``."""
    px0, px1, py0, py1 = (int(v) for v in padding)
    taps_u, k = fu.shape[0], fd.shape[0]
    return ((h * up + py0 + py1 - taps_u + 1 - k) // down + 1, (w * up + px0 + px1 - taps_u + 1 - k) // down + 1)


def _tile_plans(fu, fd, up, down, padding, x, tiles, h_out, w_out, small_fp16=False):
    """(tile edge, plan, grid) for each tile edge the backward tries in turn (the next one after a compile that ran
    out of shared memory); nothing where the down-filter has no plan. fp16 skips tiles under 128 (unless
    ``small_fp16``: the codes kernels where :data:`CODES_TILES` asks for them): on 64-wide tiles the recomputing
    backward's whole-window products gave NaNs and wrong values (Triton 3.6 on Hopper)."""
    for bu in tiles:
        if x.dtype == torch.float16 and bu < 128 and not small_fp16:
            continue
        plan = _fused_plan(fu, fd, up, down, padding, x.dtype, x.device, bu)
        if plan is None:
            return
        yield bu, plan, (x.shape[0] * x.shape[1], _cdiv(h_out, plan["bo"]), _cdiv(w_out, plan["bo"]))


def _interior_tiles(n_tiles, bo, down, up, jshift, window, n_in, n_out):
    """[first, last) tiles along one axis whose input window (``window`` samples from (t bo down) // up + jshift)
    and output tile (bo samples from t bo) lie inside the plane; (0, 0) if none."""
    inside = [t for t in range(n_tiles) if (t * bo * down) // up + jshift >= 0
              and (t * bo * down) // up + jshift + window <= n_in and (t + 1) * bo <= n_out]
    return (inside[0], inside[-1] + 1) if inside else (0, 0)


def _tile_launches(planes, h, w, h_out, w_out, up, down, plan, window_y, window_x, interior=True):
    """Launches covering every output tile once: (grid, tile-index arguments, masked). The interior tiles (see
    :func:`_interior_tiles`) go in one launch without bounds tests; the rows of tiles above and below it in one
    masked launch, the tiles left and right of it in another (``interior`` False: all tiles in one masked launch).
    The index arguments (off, split, jump) per axis map program index i to tile i + off, plus jump from i = split
    on."""
    bo = plan["bo"]
    n_ty, n_tx = _cdiv(h_out, bo), _cdiv(w_out, bo)
    ty0, ty1 = _interior_tiles(n_ty, bo, down, up, plan["jshift_y"], window_y, h, h_out)
    tx0, tx1 = _interior_tiles(n_tx, bo, down, up, plan["jshift_x"], window_x, w, w_out)
    if ty0 == ty1 or tx0 == tx1 or not interior:
        ty0 = ty1 = tx0 = tx1 = 0
    never = 1 << 30
    launches = []
    if ty1 > ty0:
        launches.append(((planes, ty1 - ty0, tx1 - tx0), (ty0, never, 0, tx0, never, 0), False))
        if tx1 - tx0 < n_tx:
            launches.append(((planes, ty1 - ty0, n_tx - (tx1 - tx0)), (ty0, never, 0, 0, tx0, tx1 - tx0), True))
    if n_ty - (ty1 - ty0) > 0:
        launches.append(((planes, n_ty - (ty1 - ty0), n_tx), (0, ty0, ty1 - ty0, 0, never, 0), True))
    return launches


def _forward_choices(dtype, up):
    """The fused forward variants to try in turn: the measured choice, then the dtype's default form (should the
    first not fit the GPU's shared memory)."""
    fallback = FUSED_DEFAULT.get(dtype)
    first = FUSED_CHOICE.get((dtype, up), fallback)
    if first is None:
        return []
    return [first] if first == fallback else [first, fallback]


def _planes_contiguous_per_sample(x):
    """Whether each sample of ``x`` [N, C, H, W] is a contiguous block of C planes (a contiguous tensor, or a
    channel slice of a larger one such as a channel-padded convolution output)."""
    n, c, h, w = x.shape
    return x[0].is_contiguous() and (n == 1 or x.stride(0) >= c * h * w)


def _per_plane(v, n, c, device):
    """A per-(sample, channel) factor [N, C] as contiguous float32 (or None)."""
    if v is None:
        return None
    return v.to(device=device, dtype=torch.float32).expand(n, c).contiguous()


def fused_filtered_lrelu_forward(x, fu, fd, b, up, down, padding, gain, slope, clamp, forms=None,
                                 pad_channels_to=1, in_gain=None, out_scale=None, out_dtype=None, row_align=1):
    """The filtered leaky ReLU in one kernel (no upsampled intermediate in memory). None if it can't apply.

    ``forms``: the (kernel, tile edge, halves) to try in turn, e.g. ``[("banded", 64, False)]``; by default the
    measured choice for the layer's dtype and upsampling factor, and none for planes under ``FUSED_MIN_OUT``.
    ``pad_channels_to``: the result is written into a buffer whose channel count is rounded up to a multiple of
    this, with zeros in the extra channels, and returned as a view of its first channels recorded by
    :func:`ops.mark_zero_padded`: the next layer's matrix product reads the padded
    buffer directly, and cuBLAS's fast kernels want inner sizes that are multiples of 8.
    ``in_gain`` / ``out_scale``: optional [N, C] factors applied to the input before the bias (a convolution's
    demodulation) and to the result (the next layer's input modulation), in float32 inside the kernel.
    ``out_dtype``: the result's dtype (default ``x``'s). ``x`` may be a channel slice of a larger buffer.
    ``row_align``: the buffer's rows are padded to a multiple of this many elements and the result is a view of
    its first columns (the rows form of :func:`fast_conv.conv2d_nchw` reads it in 16-byte aligned boxes).
    """
    n, c, h, w = x.shape
    h_out, w_out = _output_size(h, w, fu, fd, up, down, padding)
    warps = fast_config.current().fused_warps
    if forms is None:
        if min(h_out, w_out) < FUSED_MIN_OUT.get(x.dtype, 0):
            return None
        forms = _forward_choices(x.dtype, up)
    if not _planes_contiguous_per_sample(x):
        x = x.contiguous()
    c_pad = c + (-c) % pad_channels_to
    w_buf = w_out + (-w_out) % row_align
    buf = torch.empty((n, c_pad, h_out, w_buf), dtype=out_dtype or x.dtype, device=x.device)
    if c_pad > c:
        buf[:, c:].zero_()
    bias = b.to(torch.float32).contiguous()
    g = _per_plane(in_gain, n, c, x.device)
    sc = _per_plane(out_scale, n, c, x.device)
    if x.is_contiguous() and c_pad == c:
        parts = [(x, buf, g, sc)]
    else:
        # One launch per sample, each over a contiguous block of c planes in and out: faster than one launch
        # indexing the planes with batch strides (docs/performance.md).
        parts = [(x[i], buf[i, :c], None if g is None else g[i], None if sc is None else sc[i]) for i in range(n)]
    for kernel, bu, halves in forms:
        plan = _fused_plan(fu, fd, up, down, padding, x.dtype, x.device, bu)
        if plan is None:
            return None
        bo = plan["bo"]
        flags = dict(PRECISION=_forward_precision(x.dtype), HAS_GAIN=g is not None, HAS_SCALE=sc is not None)
        single = plan["r"] == 1
        mats_first = single and DENSE_MATS_FIRST
        try:
            for xs, out, gs, ss in parts:
                planes = xs.numel() // (h * w)
                grid = (planes, _cdiv(h_out, bo), _cdiv(w_out, bo))
                gs = gs if gs is not None else bias
                ss = ss if ss is not None else bias
                common = (xs, bias, plan["ax"], plan["ay"], plan["dx"], plan["dy"], out, gs, ss, h, w, h_out, w_out,
                          w_buf, c, 0, plan["jshift_y"], plan["jshift_x"], float(gain), float(slope), float(clamp), bo)
                if kernel == "dense" and mats_first:
                    for tgrid, tiles, masked in _tile_launches(planes, h, w, h_out, w_out, up, down, plan,
                                                               plan["kjy"], plan["kjx"]):
                        _fused_dense_kernel[tgrid](*common, UP=up, DOWN=down, R=1, KJX=plan["kjx"], KJY=plan["kjy"],
                                                   BU=bu, BOP=plan["bop"], MATS_FIRST=True, ty_off=tiles[0],
                                                   ty_split=tiles[1], ty_jump=tiles[2], tx_off=tiles[3],
                                                   tx_split=tiles[4], tx_jump=tiles[5],
                                                   MASKED=masked or ALWAYS_MASKED,
                                                   num_warps=DENSE_FIRST_WARPS, **flags)
                elif kernel == "dense":
                    _fused_dense_kernel[grid](*common, UP=up, DOWN=down, R=plan["r"], KJX=plan["kjx"],
                                              KJY=plan["kjy"], BU=bu, BOP=plan["bop"], MATS_FIRST=False,
                                              num_warps=warps, **flags)
                elif single and not halves and plan["kbx"] and plan["kby"] and x.dtype in SINGLE_TERM_DTYPES:
                    for tgrid, tiles, masked in _tile_launches(planes, h, w, h_out, w_out, up, down, plan,
                                                               plan["kay"] + plan["kby"], plan["kax"] + plan["kbx"]):
                        _fused_single_term_kernel[tgrid](
                            xs, bias, plan["ax"], plan["ay"], plan["dx"], plan["dy"], out, gs, ss, planes, h, w,
                            h_out, w_out, w_buf, c, plan["jshift_y"], plan["jshift_x"], float(gain), float(slope),
                            float(clamp), bo, *tiles, UP=up, DOWN=down, KAX=plan["kax"], KBX=plan["kbx"],
                            KAY=plan["kay"], KBY=plan["kby"], BU=bu, BOP=plan["bop"], B0=plan["b0"], PLANES=1,
                            MASKED=masked or ALWAYS_MASKED, num_warps=warps, **flags)
                else:
                    _fused_kernel[grid](*common, UP=up, DOWN=down, R=plan["r"], KAX=plan["kax"], KBX=plan["kbx"],
                                        KAY=plan["kay"], KBY=plan["kby"], BU=bu, BOP=plan["bop"], B0=plan["b0"],
                                        D01=plan["d01"], HALVES=halves, num_warps=warps, **flags)
        except triton.runtime.errors.OutOfResources:
            continue  # too much shared memory for this GPU: the next choice, then the unfused kernels
        if w_buf > w_out:
            buf = buf[..., :w_out]
        if c_pad == c:
            return buf
        return ops.mark_zero_padded(buf[:, :c])
    return None


# Tile edges the backward kernel tries, largest first (the smaller one where shared memory runs out), and the
# output size under which it starts with the smaller tile (a large tile over a small plane is mostly halo).
BACKWARD_TILES = (128, 64)
BACKWARD_SMALL_OUT = 100
# The backward kernel's launch per storage dtype: warps per program, and the row blocks its upsampled window is
# processed in (1: whole); BACKWARD_LAUNCH: the exceptions per (dtype, up), (row blocks, warps). Measured per layer
# of R and T (benchmarks/bench_lrelu_backward.py, docs/performance.md): two row blocks on 4 warps are 18-25% faster
# on fp16 4x-upsampling layers, slower everywhere else.
BACKWARD_WARPS = {torch.float16: 8, torch.float32: 4}
BACKWARD_SPLIT = {torch.float16: 1, torch.float32: 1}
BACKWARD_LAUNCH = {(torch.float16, 4): (2, 4)}


def fused_filtered_lrelu_backward(x, fu, fd, b, up, down, padding, gain, slope, clamp, grad, in_gain=None):
    """Gradients of the filtered leaky ReLU of ``x * in_gain`` (``in_gain`` [N, C] or None for 1) for the output
    gradient ``grad``: (d x [x's shape and dtype], d b [C] float32, d in_gain [N, C] float32 or None), or None if
    the fused kernel can't apply (a down-filter needing more than ``MAX_RANK`` separable terms).

    The pre-activation is recomputed tile by tile as the dense fused forward computes it. Gradient products run
    in fp16 for float16 layers, on each tile's gradient divided by its largest magnitude (fp16 precision at any
    gradient scale: no underflow), and for float32 layers in one- or three-pass TF32 (:func:`_backward_precision`:
    one where cuDNN's convolutions may use TF32, else float32 accuracy). TF32 was tried
    for the float16 layers: its operands are truncated, not rounded, and the error was 5-10x the plain path's.
    The gradient w.r.t. the operator's input is accumulated in float32; one more pass multiplies it by the gain,
    casts it, and sums what the bias' and the gain's gradients need. Where the training forward stored the
    activation's derivative (:func:`forward_with_codes`), :func:`backward_from_codes` skips the recomputation.
    """
    n, c, h, w = x.shape
    h_out, w_out = _output_size(h, w, fu, fd, up, down, padding)
    x = x.contiguous()
    grad = grad.contiguous()
    bias = b.to(torch.float32).contiguous()
    g = _per_plane(in_gain, n, c, x.device)
    split, warps = _backward_launch(x.dtype, up)
    precision = _backward_precision(x.dtype)
    chosen = []  # the tile plan that compiled, kept for the later chunks

    def launch(n0, n1, c0, c1, acc):
        gs = g[n0:n1, c0:c1] if g is not None else None
        candidates = chosen or _tile_plans(fu, fd, up, down, padding, x, _backward_tiles(h_out, w_out), h_out,
                                           w_out)
        for bu, plan, grid in candidates:
            acc.zero_()
            try:
                _fused_backward_kernel[((n1 - n0) * (c1 - c0), grid[1], grid[2])](
                    x[n0:n1, c0:c1], bias[c0:c1], gs if gs is not None else bias, plan["ax"], plan["ay"], plan["dx"],
                    plan["dy"], grad[n0:n1, c0:c1], acc, h, w, h_out, w_out, c1 - c0, plan["jshift_y"],
                    plan["jshift_x"], plan["used_y"], plan["used_x"], float(gain), float(slope), float(clamp),
                    plan["bo"], UP=up, DOWN=down, R=plan["r"], KJX=plan["kjx"], KJY=plan["kjy"], BU=bu,
                    BOP=plan["bop"], PRECISION=precision, SCALE=x.dtype == torch.float16, HAS_GAIN=gs is not None,
                    SPLIT=split, num_warps=warps)
                chosen[:] = [(bu, plan, grid)]
                return True
            except triton.runtime.errors.OutOfResources:
                continue
        return False

    return _chunked_backward(x.shape, x.dtype, x.device, x, g, launch)


def _backward_tiles(h_out, w_out):
    """The tile edges the backward (and the training forward) try in turn for an output of this size."""
    return BACKWARD_TILES if min(h_out, w_out) >= BACKWARD_SMALL_OUT else BACKWARD_TILES[::-1]


def _backward_launch(dtype, up):
    """(row blocks, warps) of the recomputing backward's programs for this layer."""
    return BACKWARD_LAUNCH.get((dtype, up), (BACKWARD_SPLIT.get(dtype, 1), BACKWARD_WARPS.get(dtype, 4)))


# The training forward's and the codes backward's launch: (row blocks, warps) per (dtype, up), else CODES_DEFAULT.
# 4 warps everywhere: on the fp16 2x layers both kernels are faster than on the recomputing backward's 8, the same
# elsewhere (docs/performance.md).
CODES_LAUNCH = {(torch.float16, 4): (2, 4)}
CODES_DEFAULT = (1, 4)
# The training forward's own exceptions (the codes' layout does not depend on the row blocks): on the fp16 2x layers
# two row blocks made it about 6% faster and the backward 5% slower (docs/performance.md).
CODES_FORWARD_LAUNCH = {(torch.float16, 2): (2, 4)}
# The codes backward's order of the window's two products (:func:`_fused_backward_codes_kernel`'s COLS_FIRST):
# columns first keeps [window, window] sums live instead of [window rows, BU]: fewer spilled registers and less shared
# memory per program (benchmarks/kernel_resources.py --kernel codes --cols-first), and faster steps for R and T on the
# GPU (docs/performance.md). False: rows first, the order of the recomputing backward (whose values it then equals
# bit for bit on the same tiles).
CODES_COLS_FIRST = True
# Planes with fewer output rows or columns keep no codes (:func:`forward_with_codes` declines): their few whole tiles'
# codes outweigh the saved input there, and the backward gained little (docs/performance.md).
CODES_MIN_OUT = 100
# The training forward's interior tiles in a launch without bounds tests, as the inference kernels' (measured faster
# for both on the GPU; docs/performance.md). False launches every tile masked, the form before, to time both.
TRAIN_INTERIOR_UNMASKED = True


def _codes_launch(dtype, up, forward=False):
    """(row blocks, warps) of :func:`_fused_backward_codes_kernel` (``forward``: of :func:`_fused_train_kernel`,
    :data:`CODES_FORWARD_LAUNCH` first) for this layer."""
    if forward and (dtype, up) in CODES_FORWARD_LAUNCH:
        return CODES_FORWARD_LAUNCH[(dtype, up)]
    return CODES_LAUNCH.get((dtype, up), CODES_DEFAULT)


def backward_chunk(shape) -> int:
    """Samples per chunk of the activation's backward for an operator input of ``shape`` [N, C, H, W]: as many as
    keep the chunk's float32 sums within ``fast_config`` ``chunk_mb`` (a batch-8 layer at 1044 px with 102 channels
    would otherwise hold 3.6 GB of them at once, on top of what autograd keeps), at least 1, at most N."""
    n, c, h, w = shape
    return max(1, min(n, fast_config.current().chunk_bytes // max(1, c * h * w * 4)))


# A chunk of one sample (batch 1, or planes too large for two in ``chunk_mb``) takes its channels in pieces whose
# float32 sums stay within this many bytes: at batch 1 they are otherwise a whole layer's input gradient in float32
# (0.26-0.41 GiB on R's 1044 px layers), which set R's memory peak there beside the saved activations.
SAMPLE_PIECE_BYTES = 128 * 2 ** 20


def backward_pieces(shape):
    """[(n0, n1, c0, c1)]: the samples and channels of an operator input of ``shape`` [N, C, H, W] that the
    activation's backward takes at a time, in order, covering it once. Chunks of :func:`backward_chunk` samples, all
    channels; a chunk of one sample in about equal pieces of channels within :data:`SAMPLE_PIECE_BYTES` of float32
    sums (at least one channel each). Each piece is contiguous in memory."""
    n, c, h, w = shape
    per = backward_chunk(shape)
    if per > 1:
        return [(n0, min(n, n0 + per), 0, c) for n0 in range(0, n, per)]
    count = _cdiv(c, max(1, SAMPLE_PIECE_BYTES // max(1, h * w * 4)))  # pieces of one sample
    bounds = [c * k // count for k in range(count + 1)]
    return [(n0, n0 + 1, c0, c1) for n0 in range(n) for c0, c1 in zip(bounds, bounds[1:])]


def _chunked_backward(shape, dtype, device, x, g, launch):
    """The backward's chunk loop and epilogue: ``launch(n0, n1, c0, c1, acc)`` adds the gradient w.r.t. the
    operator's input of samples n0..n1, channels c0..c1 (:func:`backward_pieces`) into ``acc`` (float32 of that
    shape, zeroed by it; False: no kernel could run); then one pass per piece scales it by the gain ``g`` [N, C] (or
    None), casts it to ``dtype`` and takes the sums (:func:`scaled_with_sums`; the gain's needs ``x``, the operator's
    input before the gain; None: not taken). Returns (d x, d b, d g or None) or None."""
    n, c, h, w = shape
    pieces = backward_pieces(shape)
    gx = torch.empty((n, c, h, w), dtype=dtype, device=device)
    g_bias = torch.zeros((c,), dtype=torch.float32, device=device)
    g_gain = torch.empty((n, c), dtype=torch.float32, device=device) if g is not None and x is not None else None
    # one buffer for every piece's sums, the largest piece's size
    buf = torch.empty(max((n1 - n0) * (c1 - c0) for n0, n1, c0, c1 in pieces) * h * w, dtype=torch.float32,
                      device=device)
    for n0, n1, c0, c1 in pieces:
        acc = buf[:(n1 - n0) * (c1 - c0) * h * w].view(n1 - n0, c1 - c0, h, w)
        if not launch(n0, n1, c0, c1, acc):
            return None
        gs = g[n0:n1, c0:c1] if g is not None else None
        _, sums, prods = scaled_with_sums(acc, x[n0:n1, c0:c1] if g_gain is not None else None, gs, dtype,
                                          out=gx[n0:n1, c0:c1])
        g_bias[c0:c1] += sums.sum(0)
        if g_gain is not None:
            g_gain[n0:n1, c0:c1] = prods
    return gx, g_bias, g_gain


def codes_apply(x, fu, fd) -> bool:
    """Whether :func:`forward_with_codes` can run for ``x``: the fused backward on (``fast_config``), ``saved_codes``
    on, Triton on CUDA (or its interpreter), a separable up-filter and a down-filter."""
    cfg = fast_config.current()
    where = x.is_cuda or fast_config.triton_interpreting()
    return (HAVE_TRITON and cfg.saved_codes and cfg.use_fused_backward and where and fu is not None
            and fd is not None and fu.ndim == 1)


def forward_with_codes(x, fu, fd, b, up, down, padding, gain, slope, clamp, in_gain=None):
    """The filtered leaky ReLU of ``x * in_gain`` + ``b`` for a training step: (out [N, C, H', W'] in x's dtype,
    codes), or None where the fused kernels can't apply or the planes have under :data:`CODES_MIN_OUT` output rows or
    columns (then use the forward and backward that recompute).

    ``codes`` (uint8 [N, C, tiles y, tiles x, BU, BU // 4]) holds the activation's derivative at every sample of
    each output tile's upsampled block, 2 bits each: what :func:`backward_from_codes` needs instead of ``x``. It
    is about 0.6 bytes per input sample for 2x layers (``x`` in fp16: 2), so a layer that keeps only the codes
    saves memory as well as the backward's recomputation. The output is computed on the backward's tiles, or
    :data:`CODES_TILES`' (window products as :func:`fused_filtered_lrelu_backward` recomputes it, in its precision:
    float32 layers in three-pass TF32, not the inference forward's bf16x3), equal to the inference kernels' to
    rounding."""
    n, c, h, w = x.shape
    h_out, w_out = _output_size(h, w, fu, fd, up, down, padding)
    if min(h_out, w_out) < CODES_MIN_OUT:
        return None
    x = x.contiguous()
    bias = b.to(torch.float32).contiguous()
    g = _per_plane(in_gain, n, c, x.device)
    split, warps = _codes_launch(x.dtype, up, forward=True)
    out = torch.empty((n, c, h_out, w_out), dtype=x.dtype, device=x.device)
    tiles = _codes_tiles(x.dtype, up, h_out, w_out)
    for bu, plan, grid in _tile_plans(fu, fd, up, down, padding, x, tiles, h_out, w_out,
                                      small_fp16=(x.dtype, up) in CODES_TILES):
        window = codes_window(plan, x.dtype, up)
        if _codes_key(x.device, x.dtype, up, down, bu, plan, window) in _CODES_BACKWARD_UNFIT:
            continue  # its backward could not run on this GPU: the next tile, else no codes (recomputing backward)
        codes = torch.empty((n, c, grid[1], grid[2], bu, bu // 4), dtype=torch.uint8, device=x.device)
        launches = _tile_launches(n * c, h, w, h_out, w_out, up, down, plan, window["KAY"] + window["KBY"],
                                  window["KAX"] + window["KBX"], interior=TRAIN_INTERIOR_UNMASKED)
        try:
            for tgrid, tile_args, masked in launches:
                _fused_train_kernel[tgrid](x, bias, g if g is not None else bias, plan["ax"], plan["ay"], plan["dx"],
                                           plan["dy"], out, codes, h, w, h_out, w_out, c, plan["jshift_y"],
                                           plan["jshift_x"], float(gain), float(slope), float(clamp), plan["bo"],
                                           UP=up, DOWN=down, R=plan["r"], **window, BU=bu, BOP=plan["bop"],
                                           PRECISION=plan["precision"], HAS_GAIN=g is not None, SPLIT=split,
                                           n_ty=grid[1], n_tx=grid[2], ty_off=tile_args[0], ty_split=tile_args[1],
                                           ty_jump=tile_args[2], tx_off=tile_args[3], tx_split=tile_args[4],
                                           tx_jump=tile_args[5], MASKED=masked or ALWAYS_MASKED, num_warps=warps)
        except triton.runtime.errors.OutOfResources:
            continue
        return out, codes
    return None


# The training forward's tiles for float32 planes: 64 wide only. On 128-wide ones the codes backward wants more shared
# memory than Hopper GPUs have where the forward fits, and it must use the forward's tiles.
CODES_FLOAT32_TILES = (64,)
# The codes kernels' tile edges per (dtype, up) where they differ from :func:`_codes_tiles`' rule, tried in turn. A
# 64-wide tile on the fp16 2x layers (window 32 + 16 of 64, 27 outputs a side) multiplies about 0.7x the zeros per
# output of the 128-wide one (window 64 + 16, 59 a side), as the inference forward's 64-wide form does; compiled for
# sm_90 with no spill (benchmarks/kernel_resources.py), yet slower on the GPU, per layer and per step (empty: off;
# bench_lrelu_backward.py --codes-tiles 64, bench_generator.py --codes-tiles; docs/performance.md).
CODES_TILES = {}
# (dtype, up) whose codes kernels take a window of 64 or less in blocks too (32 + 16 of 64 on 64-wide 2x tiles); the
# float32 kernels spill that way (kernel_resources.py), and the 4x layers' backward did.
CODES_BLOCK_WINDOWS = {(torch.float16, 2)}


def _codes_tiles(dtype, up, h_out, w_out):
    """The tile edges the training forward tries in turn: :data:`CODES_TILES` where it names the layer, else the
    backward's for fp16, :data:`CODES_FLOAT32_TILES` for float32."""
    if (dtype, up) in CODES_TILES:
        return CODES_TILES[(dtype, up)]
    return _backward_tiles(h_out, w_out) if dtype == torch.float16 else CODES_FLOAT32_TILES


def codes_window(plan, dtype, up):
    """The window blocks of :func:`_fused_backward_codes_kernel` and :func:`_fused_train_kernel` (KAX, KBX, KAY,
    KBY): windows over 64 (2x layers' 128 for 72 used), and those of :data:`CODES_BLOCK_WINDOWS` layers, as their
    used part's power-of-two block plus a remainder (fewer multiply-adds, and the backward's sums stay within the
    registers); others whole (split, the 4x layers' backward spilled: benchmarks/kernel_resources.py)."""
    if plan["kjx"] <= 64 and plan["kjy"] <= 64 and (dtype, up) not in CODES_BLOCK_WINDOWS:
        return dict(KAX=plan["kjx"], KBX=0, KAY=plan["kjy"], KBY=0)
    return dict(KAX=plan["kax"], KBX=plan["kbx"], KAY=plan["kay"], KBY=plan["kby"])


# The codes backward's launches that did not fit the GPU's shared memory (:func:`_codes_key`): the training forward
# stores no codes on those tiles any more. The two kernels' needs differ by GPU generation: on the oldest GPUs Triton
# runs on, the fp16 2x layers' codes backward needs twice the shared memory a program gets while its forward needs
# half (benchmarks/kernel_fit.py; figures in docs/performance.md).
_CODES_BACKWARD_UNFIT: set = set()


def _codes_key(device, dtype, up, down, bu, plan, window):
    """What decides the codes backward's compiled kernel, hence its shared memory, for one layer's tiles."""
    return (torch.device(device), dtype, up, down, bu, plan["r"], plan["bop"], tuple(sorted(window.items())))


def backward_from_codes(codes, grad, size, dtype, fu, fd, up, down, padding, gain, slope, x=None, in_gain=None):
    """:func:`fused_filtered_lrelu_backward` from the codes of :func:`forward_with_codes`: (d x [``size``, ``dtype``],
    d b [C] float32, d in_gain [N, C] float32 or None). ``size``: the operator input's [N, C, H, W]; ``x`` (that
    input) is needed only for ``in_gain``'s gradient (which sums x times the incoming gradient): with ``in_gain``
    and no ``x`` the gain is applied and its gradient not taken (None).

    None where the kernel needs more shared memory than the GPU has (GPUs other than those it was tuned on can need
    more for it than for the forward that wrote the codes): then use the backward that recomputes
    (:func:`activation_backward`); later training forwards store no codes on these tiles."""
    n, c, h, w = size
    h_out, w_out = _output_size(h, w, fu, fd, up, down, padding)
    bu = codes.shape[-2]
    plan = _fused_plan(fu, fd, up, down, padding, dtype, codes.device, bu)
    key = _codes_key(codes.device, dtype, up, down, bu, plan, codes_window(plan, dtype, up))
    if key in _CODES_BACKWARD_UNFIT:  # another layer's codes, stored before that was known
        return None
    grad = grad.contiguous()
    g = _per_plane(in_gain, n, c, codes.device)
    split, warps = _codes_launch(dtype, up)

    def launch(n0, n1, c0, c1, acc):
        acc.zero_()
        _fused_backward_codes_kernel[((n1 - n0) * (c1 - c0), codes.shape[2], codes.shape[3])](
            codes[n0:n1, c0:c1], grad[n0:n1, c0:c1], acc, plan["ax"], plan["ay"], plan["dx"], plan["dy"], h, w,
            h_out, w_out, plan["jshift_y"], plan["jshift_x"], plan["used_y"], plan["used_x"], float(gain),
            float(slope), plan["bo"], UP=up, DOWN=down, R=plan["r"], **codes_window(plan, dtype, up), BU=bu,
            BOP=plan["bop"], PRECISION=plan["precision"], SCALE=dtype == torch.float16, SPLIT=split,
            COLS_FIRST=CODES_COLS_FIRST, num_warps=warps)
        return True

    try:  # the first launch loads the kernel, where a shortage of shared memory shows, before any work
        return _chunked_backward((n, c, h, w), dtype, codes.device, x.contiguous() if x is not None else None, g,
                                 launch)
    except triton.runtime.errors.OutOfResources:
        _CODES_BACKWARD_UNFIT.add(key)
        return None


def scaled_with_sums(a, x, g=None, out_dtype=None, out=None):
    """For ``a`` and ``x`` [N, C, H, W] and a per-plane factor ``g`` [N, C] (None: 1), in one pass where Triton
    runs: (a * g in ``out_dtype`` (default a's), the per-plane sums of a [N, C] float32, of a * x [N, C] float32 or
    None without ``g`` or ``x``; float64 sums for float64 tensors). The backward's last step: ``a`` the gradient
    w.r.t. x * g, so a * g is x's, the sums are the gradients of a bias added after and of g (``x`` None: g's
    gradient is not wanted). ``out``: a contiguous tensor of a's shape to write a * g into (returned as the first
    value)."""
    n, c, h, w = a.shape
    out_dtype = out_dtype or a.dtype
    prods_wanted = g is not None and x is not None
    kernels = HAVE_TRITON and (a.is_cuda or fast_config.triton_interpreting())
    if not (kernels and a.is_contiguous() and (x is None or x.is_contiguous()) and a.dtype != torch.float64):
        acc = torch.promote_types(a.dtype, torch.float32)  # float32 sums (float64 stays float64)
        sums = a.sum((2, 3), dtype=acc)
        prods = (a.to(acc) * x.to(acc)).sum((2, 3)) if prods_wanted else None
        scaled = (a if g is None else a * g.to(a.dtype)[:, :, None, None]).to(out_dtype)
        return (scaled if out is None else out.copy_(scaled)), sums, prods
    g = _per_plane(g, n, c, a.device)
    if out is None:
        out = torch.empty((n, c, h, w), dtype=out_dtype, device=a.device)
    sums = torch.zeros((2, n, c), dtype=torch.float32, device=a.device)
    _backward_epilogue_kernel[(n * c, _cdiv(h * w, EPILOGUE_BLOCK))](a, x if prods_wanted else a,
                                                                    g if g is not None else a, out, sums, h * w,
                                                                    HAS_GAIN=g is not None, PRODS=prods_wanted,
                                                                    BLOCK=EPILOGUE_BLOCK)
    return out, sums[0], sums[1] if prods_wanted else None


EPILOGUE_BLOCK = 4096


def fast_filtered_lrelu_forward(x, fu, fd, b, up, down, padding, gain, slope, clamp, pad_channels_to=1,
                                in_gain=None, out_scale=None, out_dtype=None, row_align=1):
    """Same result as :func:`ops.filtered_lrelu` for separable ``fu`` and 1-D or 2-D ``fd`` (no autograd).
    ``pad_channels_to`` and ``row_align`` (layouts, where the fused kernel runs), ``in_gain``, ``out_scale``,
    ``out_dtype``: see :func:`fused_filtered_lrelu_forward`."""
    if fast_config.current().use_fused:
        out = fused_filtered_lrelu_forward(x, fu, fd, b, up, down, padding, gain, slope, clamp,
                                           pad_channels_to=pad_channels_to, in_gain=in_gain, out_scale=out_scale,
                                           out_dtype=out_dtype, row_align=row_align)
        if out is not None:
            return out
    if in_gain is not None or out_scale is not None or (out_dtype is not None and out_dtype != x.dtype):
        # The unfused kernels take no factors: apply them around the operator.
        return _with_factors(lambda v: fast_filtered_lrelu_forward(v, fu, fd, b, up, down, padding, gain, slope,
                                                                   clamp), x, in_gain, out_scale, out_dtype)
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
    chunk = max(1, min(n * c, fast_config.current().chunk_bytes // max(1, hu * wu * x.element_size())))
    for start in range(0, n * c, chunk):
        stop = min(n * c, start + chunk)
        # The kernel indexes the bias by plane % c; a chunk starting mid-batch gets a rolled bias.
        b_chunk = torch.roll(bias, -(start % c)).contiguous()
        if x.dtype in DOT_UP_DTYPES and wu >= DOT_MIN_WIDTH:
            t = _up_x(planes[start:stop], fu_t, up, px0, px1, b_chunk, c, x.dtype)
            u = _up_y_act(t, fu_t, up, py0, py1, gain, slope, clamp)
        else:
            t = _up_axis(planes[start:stop], fu_t, up, px0, px1, axis=2, bias=b_chunk, channels=c)
            u = _up_axis(t, fu_t, up, py0, py1, axis=1, act=(gain, slope, clamp))
        del t
        if fd.ndim == 2:
            terms = _flipped_terms(fd)
            out[start:stop] = _down2d(u, fd_t, down) if terms is None else _down_separable_sum(u, *terms, down)
        else:
            v = _down(u, fd_t[None, :], 1, down)
            del u
            out[start:stop] = _down(v, fd_t[:, None], down, 1)
    return out.reshape(n, c, h_out, w_out)




class _FilteredLReLU(torch.autograd.Function):
    """Fast forward of the operator on ``x * in_gain`` (``in_gain`` [N, C] or None), saving only its inputs;
    backward by the fused backward kernel, else by recomputing the plain (reference) operator under autograd, a
    few channels at a time."""

    @staticmethod
    def forward(ctx, x, b, in_gain, fu, fd, up, down, padding, gain, slope, clamp):
        ctx.save_for_backward(x, b, in_gain)
        ctx.args = (fu, fd, up, down, padding, gain, slope, clamp)
        return fast_filtered_lrelu_forward(x, fu, fd, b, up, down, padding, gain, slope, clamp, in_gain=in_gain)

    @staticmethod
    def backward(ctx, grad):
        x, b, in_gain = ctx.saved_tensors
        gx, gb, g_gain = activation_backward(x, b, grad, *ctx.args, in_gain=in_gain)
        need = ctx.needs_input_grad
        return (gx if need[0] else None, gb.to(b.dtype) if need[1] else None,
                g_gain.to(in_gain.dtype) if need[2] else None, None, None, None, None, None, None, None, None)


def activation_backward(x, b, grad, fu, fd, up, down, padding, gain, slope, clamp, in_gain=None):
    """Gradients of the filtered leaky ReLU of ``x * in_gain`` + ``b`` (``in_gain`` [N, C] or None for 1;
    ``clamp`` a number, 3e38 for none) for its output gradient ``grad``: (d x [x's shape and dtype], d b [C],
    d in_gain [N, C] or None), the sums float32 (float64 for float64 tensors). The fused backward kernel
    (:func:`fused_filtered_lrelu_backward`) where it applies (CUDA and Triton, ``fast_config`` ``use_fused_backward``),
    else the plain operator recomputed under autograd a few channels at a time (the CPU included)."""
    grads = None
    if fast_config.current().use_fused_backward and can_use_fast(x, fu, fd):
        grads = fused_filtered_lrelu_backward(x, fu, fd, b, up, down, padding, gain, slope, clamp, grad,
                                              in_gain=in_gain)
    if grads is None:
        grads = _plain_backward(x, fu, fd, b, up, down, padding, gain, slope, clamp, grad, in_gain)
    return grads


def _plain_backward(x, fu, fd, b, up, down, padding, gain, slope, clamp, grad, in_gain=None):
    """fused_filtered_lrelu_backward's result by autograd through the plain operator, recomputed a few channels at
    a time (the operator acts on each (sample, channel) plane alone, so memory stays bounded at any batch)."""
    n, c, h, w = x.shape
    gx = torch.empty_like(x)
    gb = torch.zeros(b.shape, dtype=ops.at_least_float32(b).dtype, device=b.device)
    g_gain = torch.zeros((n, c), dtype=ops.at_least_float32(x).dtype, device=x.device) if in_gain is not None else None
    plane_bytes = (h * up + fu.shape[0]) * (w * up + fu.shape[0]) * 4 * 6  # zero-stuffed tensors autograd keeps
    per_chunk = max(1, min(c, fast_config.current().chunk_bytes // plane_bytes))
    for i in range(n):
        for c0 in range(0, c, per_chunk):
            c1 = min(c, c0 + per_chunk)
            with torch.enable_grad():
                xd = x[i:i + 1, c0:c1].detach().requires_grad_(True)
                bd = b[c0:c1].detach().requires_grad_(True)
                inputs = [xd, bd]
                a = xd
                if in_gain is not None:
                    gd = in_gain[i:i + 1, c0:c1].detach().requires_grad_(True)
                    inputs.append(gd)
                    a = xd * gd.to(xd.dtype)[:, :, None, None]
                y = ops.filtered_lrelu(a, fu, fd, bd, up=up, down=down, padding=padding, gain=gain, slope=slope,
                                       clamp=clamp)
                grads = torch.autograd.grad(y, inputs, grad[i:i + 1, c0:c1])
            gx[i:i + 1, c0:c1] = grads[0]
            gb[c0:c1] += grads[1].to(gb.dtype)
            if g_gain is not None:
                g_gain[i:i + 1, c0:c1] = grads[2].to(g_gain.dtype)
    return gx, gb, g_gain


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


def _with_factors(op, x, in_gain, out_scale, out_dtype):
    """``op`` with the per-(sample, channel) factors as separate operations: x * in_gain in, the result times
    out_scale, cast to out_dtype (where the fused kernel, which applies them itself, does not run)."""
    if in_gain is not None:
        x = x * in_gain.to(x.dtype)[:, :, None, None]
    y = op(x)
    if out_scale is not None:
        y = y * out_scale.to(y.dtype)[:, :, None, None]
    return y if out_dtype is None else y.to(out_dtype)


def filtered_lrelu(x, fu, fd, b, up=1, down=1, padding=(0, 0, 0, 0), gain=2 ** 0.5, slope=0.2, clamp=None,
                   in_gain=None, out_scale=None, out_dtype=None, row_align=1, pad_channels=True):
    """Drop-in for :func:`ops.filtered_lrelu` that runs the Triton kernels where they apply.

    ``in_gain`` / ``out_scale`` ([N, C] or None) multiply the input before the bias and the result; ``out_dtype``
    casts the result. In inference on the fast path they happen inside the kernel (no extra pass over memory);
    elsewhere as separate operations, with the same result. ``row_align``: a layout hint for the next
    convolution (see :func:`fused_filtered_lrelu_forward`); the values are the same either way.
    ``pad_channels=False``: the next layer does not want fp16 outputs in a channel-padded buffer (the fast path's
    3x3 convolutions pad, or mask, for themselves)."""
    fast = can_use_fast(x, fu, fd)
    inference = not (torch.is_grad_enabled() and (x.requires_grad or b.requires_grad
                                                  or any(t is not None and t.requires_grad
                                                         for t in (in_gain, out_scale))))
    if not fast:
        return _with_factors(lambda v: ops.filtered_lrelu(v, fu, fd, b, up=up, down=down, padding=padding, gain=gain,
                                                          slope=slope, clamp=clamp), x, in_gain, out_scale, out_dtype)
    clamp = float(clamp) if clamp is not None else 3.0e38
    if not inference:
        g = None if in_gain is None else in_gain.float().expand(x.shape[0], x.shape[1])
        return _with_factors(lambda v: _FilteredLReLU.apply(v, b, g, fu, fd, up, down, tuple(padding), gain, slope,
                                                            clamp), x, None, out_scale, out_dtype)
    # Inference: fp16 outputs padded to multiples of 8 channels for the next layer's matrix product (StyleGAN3-R's
    # 645, 406, 161, 102 channels), an inner size cuBLAS's fast kernels take (docs/performance.md).
    pad = 8 if pad_channels and ops._pad_for_tensor_cores(x, out_dtype) else 1
    return fast_filtered_lrelu_forward(x, fu, fd, b, up, down, padding, gain, slope, clamp, pad_channels_to=pad,
                                       in_gain=in_gain, out_scale=out_scale, out_dtype=out_dtype, row_align=row_align)
