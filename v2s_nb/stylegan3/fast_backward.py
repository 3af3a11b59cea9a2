"""Banded backward of the fast filtered leaky ReLU (CUDA, Triton; the fast path's gradients).

The adjoint of the fused forward (:mod:`v2s_nb.stylegan3.fast_ops`) per output tile: recompute the tile's
pre-activation from its input window (upsampling along y, then x), take the activation's derivative, run the output
gradient back through the down-filter's separable terms (``Dy[r]^T G Dx[r]^T``), multiply by the derivative, and
map the upsampled-domain gradient back to the input window (``Ay (.) Ax^T``), added atomically into a float32 input
gradient (windows of neighbouring tiles overlap). Same chain as :func:`fast_ops.fused_filtered_lrelu_backward`'s
dense kernel, but only the blocks of the banded up-sampling matrices that hold taps are multiplied: the window's
used rows / columns as a power-of-two block plus a remainder (e.g. 64 + 16 of a 128 window), as the banded forward
does. On a 128-wide upsampled tile that halves the multiply-adds of the window products, which dominate.

fp16 layers: fp16 tensor-core products on each tile's gradient divided by its largest magnitude (no underflow at any
gradient scale), float32 accumulation; float32 layers: three-pass TF32 (float32 accuracy). Where the plan does not
apply (a down-filter needing more separable terms than the fused kernels take) it returns None and the caller falls
back.
"""

from __future__ import annotations


import torch

from . import fast_config, fast_ops

HAVE_TRITON = fast_ops.HAVE_TRITON
if HAVE_TRITON:
    import triton
    import triton.language as tl

    from .fast_ops import _up_cols, _up_rows

    @triton.jit
    def _add_block(gx_plane, s, ax_ptr, h, w, jy0, jx0, used_y, used_x, peak, ROW0: tl.constexpr, NR: tl.constexpr,
                   COL0: tl.constexpr, NC: tl.constexpr, BU: tl.constexpr, PRECISION: tl.constexpr,
                   SCALE: tl.constexpr, RELAXED: tl.constexpr):
        """gx[window rows ROW0.., columns COL0..] += s @ Ax[COL0:COL0+NC, :]^T (s: [NR, BU], this row block of
        Ay @ gu), masked to the plane and to the window's rows / columns that meet a tap."""
        axt = tl.load(ax_ptr + tl.arange(0, BU)[:, None] + (COL0 + tl.arange(0, NC))[None, :] * BU)
        gx = tl.dot(s.to(axt.dtype), axt, input_precision=PRECISION)  # [NR, NC]
        if SCALE:
            gx = gx * peak
        ky = ROW0 + tl.arange(0, NR)
        kx = COL0 + tl.arange(0, NC)
        jy = jy0 + ky
        jx = jx0 + kx
        ok = ((jy >= 0) & (jy < h) & (ky < used_y))[:, None] & ((jx >= 0) & (jx < w) & (kx < used_x))[None, :]
        ptrs = gx_plane + jy[:, None] * w + jx[None, :]
        if RELAXED:
            tl.atomic_add(ptrs, gx, mask=ok, sem="relaxed")
        else:
            tl.atomic_add(ptrs, gx, mask=ok)

    @triton.jit
    def _banded_backward_kernel(x_ptr, b_ptr, ax_ptr, ay_ptr, dx_ptr, dy_ptr, gy_ptr, gx_ptr, h, w, h_out, w_out,
                                channels, jshift_y, jshift_x, used_y, used_x, gain, slope, clamp, BO,
                                UP: tl.constexpr, DOWN: tl.constexpr, R: tl.constexpr, KAX: tl.constexpr,
                                KBX: tl.constexpr, KAY: tl.constexpr, KBY: tl.constexpr, BU: tl.constexpr,
                                BOP: tl.constexpr, PRECISION: tl.constexpr, SCALE: tl.constexpr,
                                RELAXED: tl.constexpr):
        """Gradient of the filtered leaky ReLU for one output tile (BO x BO of the padded BOP x BOP block), added
        into the float32 input gradient ``gx_ptr``: see the module docstring. KA* / KB*: the window's used rows
        (Y) and columns (X) as a power-of-two block and a remainder (0: none)."""
        plane = tl.program_id(0).to(tl.int64)  # 64-bit offsets: large batches pass 2**31 elements
        oy0 = tl.program_id(1) * BO
        ox0 = tl.program_id(2) * BO
        jy0 = (oy0 * DOWN) // UP + jshift_y
        jx0 = (ox0 * DOWN) // UP + jshift_x
        x_plane = x_ptr + plane * h * w
        bias = tl.load(b_ptr + plane % channels)
        # Pre-activation of the tile, as the banded forward computes it (along y, then x).
        sa = _up_rows(x_plane, ay_ptr, h, w, jy0, jx0, 1.0, bias, 0, KAX, KAY, KBY, BU, PRECISION, False)
        sb = sa
        if KBX > 0:
            sb = _up_rows(x_plane, ay_ptr, h, w, jy0, jx0, 1.0, bias, KAX, KBX, KAY, KBY, BU, PRECISION, False)
        pre = _up_cols(sa, sb, ax_ptr, 0, BU, KAX, KBX, BU, PRECISION)  # [BU, BU]
        act = tl.where(pre >= 0, pre, pre * slope) * gain
        deriv = tl.where(pre >= 0, gain, gain * slope)
        deriv = tl.where(tl.abs(act) <= clamp, deriv, 0.0)
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
        gu = tl.zeros([BU, BU], dtype=tl.float32)
        for r in tl.static_range(R):
            dyt = tl.load(dy_ptr + r * BOP * BU + tl.arange(0, BU)[:, None] + lo[None, :] * BU)  # Dy[r]^T
            a = tl.dot(dyt, g.to(dyt.dtype), input_precision=PRECISION)  # [BU, BOP]
            dxt = tl.load(dx_ptr + r * BU * BOP + lo[:, None] + tl.arange(0, BU)[None, :] * BOP)  # Dx[r]^T
            gu += tl.dot(a.to(dxt.dtype), dxt, input_precision=PRECISION)  # [BU, BU]
        gu = (gu * deriv).to(ax_ptr.dtype.element_ty)
        gx_plane = gx_ptr + plane * h * w
        ay_a = tl.load(ay_ptr + tl.arange(0, KAY)[:, None] * BU + tl.arange(0, BU)[None, :])
        s_a = tl.dot(ay_a, gu, input_precision=PRECISION)  # [KAY, BU]: window rows 0..KAY
        _add_block(gx_plane, s_a, ax_ptr, h, w, jy0, jx0, used_y, used_x, peak, 0, KAY, 0, KAX, BU, PRECISION,
                   SCALE, RELAXED)
        if KBX > 0:
            _add_block(gx_plane, s_a, ax_ptr, h, w, jy0, jx0, used_y, used_x, peak, 0, KAY, KAX, KBX, BU,
                       PRECISION, SCALE, RELAXED)
        if KBY > 0:
            ay_b = tl.load(ay_ptr + (KAY + tl.arange(0, KBY))[:, None] * BU + tl.arange(0, BU)[None, :])
            s_b = tl.dot(ay_b, gu, input_precision=PRECISION)  # [KBY, BU]
            _add_block(gx_plane, s_b, ax_ptr, h, w, jy0, jx0, used_y, used_x, peak, KAY, KBY, 0, KAX, BU,
                       PRECISION, SCALE, RELAXED)
            if KBX > 0:
                _add_block(gx_plane, s_b, ax_ptr, h, w, jy0, jx0, used_y, used_x, peak, KAY, KBY, KAX, KBX, BU,
                           PRECISION, SCALE, RELAXED)


# Where the banded kernel runs, per (storage dtype, up factor): the upsampled tile edges to try in turn (the next one
# where shared memory runs out) and the warps per tile program. Elsewhere (float32 layers: small planes, where the
# dense kernel's 64-wide tiles were faster) the dense kernel runs. Measured per layer by
# benchmarks/bench_lrelu_backward.py (docs/performance.md).
BANDED_FORMS = {(torch.float16, 2): ((128,), 8), (torch.float16, 4): ((64,), 4)}
# Relaxed atomics for the input gradient's sums (the kernel reads nothing another tile writes): fast_config's
# relaxed_atomics; acquire-release ordering, Triton's default, measured slower (docs/performance.md).


def banded_filtered_lrelu_backward(x, fu, fd, b, up, down, padding, gain, slope, clamp, grad, tiles=None,
                                   warps=None, relaxed=None):
    """Gradients (d x [N, C, H, W] in x's dtype, d b [C] float32) of :func:`fast_ops.filtered_lrelu` (no input gain
    / output scale) for the output gradient ``grad`` [N, C, H', W'], or None where the banded kernel can't apply.
    ``tiles`` (upsampled tile edges to try), ``warps``, ``relaxed``: overrides of the module's settings (for
    benchmarks and tests); without ``tiles``, layers that ``BANDED_FORMS`` does not name return None."""
    if not HAVE_TRITON:
        return None
    form = BANDED_FORMS.get((x.dtype, int(up)))
    if tiles is None:
        if form is None:
            return None
        tiles, warps = form[0], warps or form[1]
    n, c, h, w = x.shape
    h_out, w_out = fast_ops._output_size(h, w, fu, fd, up, down, padding)
    if tuple(grad.shape) != (n, c, h_out, w_out):
        raise ValueError(f"grad must have shape {(n, c, h_out, w_out)} (the operator's output), "
                         f"got {tuple(grad.shape)}")
    x = x.contiguous()
    grad = grad.contiguous()
    bias = b.to(torch.float32).contiguous()
    gx = torch.zeros((n, c, h, w), dtype=torch.float32, device=x.device)
    relaxed = fast_config.current().relaxed_atomics if relaxed is None else relaxed
    for bu in tiles:
        plan = fast_ops._fused_plan(fu, fd, up, down, padding, x.dtype, x.device, bu)
        if plan is None:
            return None
        grid = (n * c, fast_ops._cdiv(h_out, plan["bo"]), fast_ops._cdiv(w_out, plan["bo"]))
        try:
            _banded_backward_kernel[grid](
                x, bias, plan["ax"], plan["ay"], plan["dx"], plan["dy"], grad, gx, h, w, h_out, w_out, c,
                plan["jshift_y"], plan["jshift_x"], plan["used_y"], plan["used_x"], float(gain), float(slope),
                float(clamp), plan["bo"], UP=up, DOWN=down, R=plan["r"], KAX=plan["kax"], KBX=plan["kbx"],
                KAY=plan["kay"], KBY=plan["kby"], BU=bu, BOP=plan["bop"], PRECISION=plan["precision"],
                SCALE=x.dtype == torch.float16, RELAXED=bool(relaxed),
                num_warps=warps or 4)
        except triton.runtime.errors.OutOfResources:
            gx.zero_()
            continue
        return gx.to(x.dtype), gx.sum(dim=(0, 2, 3))
    return None
