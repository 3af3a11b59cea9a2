"""One synthesis layer as one autograd Function: the fast path's training step (forward + backward).

Under ordinary autograd a fast-path layer saves every intermediate its ops keep for backward: the convolution's
input, its channel-padded and its scaled copies, the convolution's output and its demodulated copy, each the size of
a feature map. Here (:func:`layer_forward`, called by :meth:`.fast_path.LayerPlan.forward` where :func:`applies`)
the layer runs as

* outside the Function, under ordinary autograd (so gradients reach the styles, hence w, and the weight): the small
  per-sample tensors. 3x3 layers (T): the shared kernel (float32 [O, I, k, k]), the input scale [N, I] and the
  demodulation coefficients [N, O] (:meth:`.fast_path.LayerPlan.modulation`); 1x1 layers (R): each sample's
  modulated, demodulated weight [N, O, I] (:func:`.ops.modulated_weight`, with the magnitude EMA's input gain);
* inside it, without autograd, the inference pieces: the convolution of x * scale (fast_conv's Triton / cuDNN
  forms, or :func:`.ops.scaled_input_conv2d`; for 1x1 :func:`.ops.batched_1x1`), then the filtered leaky ReLU with
  the demodulation applied in its kernel (:func:`.fast_ops.filtered_lrelu`, ``in_gain``). It saves only the layer's
  input x, the convolution's output y (compute dtype, unpadded channels) and the small tensors;
* its backward: the activation's gradients w.r.t. y, the bias and dcoefs (its input gain) from y, in one pass
  (:func:`.fast_ops.activation_backward`: the fused backward kernel on CUDA), the convolution's two gradients in one
  ``aten.convolution_backward`` call on x * scale recomputed (only for the weight's gradient), or, with
  ``fast_config`` ``triton_conv_grads`` (the default), fast_conv's NCHW kernels (the input gradient without layout
  transposes; the weight's gradient by :func:`.fast_conv.conv2d_weight_grad_nchw`, which takes the scale itself;
  or two batched products for 1x1),
  d scale = sum over pixels of (d (x * scale) * x), d x = d (x * scale) * scale (one pass,
  :func:`.fast_ops.scaled_with_sums`). Sums over pixels in float32. The 1x1 layers' gradients in fp16 on large
  planes: :func:`.fast_conv.batched_1x1_weight_grad` and :func:`.fast_conv.batched_1x1_input_grad` (for these shapes
  cuBLAS's batched products run few programs or old kernels). The 1x1 layers take their backward in chunks of
  samples (those of the activation's backward, :func:`.fast_ops.backward_chunk`), each through to the layer's own
  gradients: the activation's gradient then exists for one chunk at a time, not beside the whole batch's input and
  incoming gradients (R's memory peak).

With ``fast_config`` ``saved_codes`` (the default) the forward runs :func:`.fast_ops.forward_with_codes` where it
applies (planes of 100+ output pixels; 3x3 layers: :func:`_codes_3x3`), which also stores the activation's
derivative (2 bits per upsampled sample), and the backward reads it (:func:`.fast_ops.backward_from_codes`) instead
of recomputing the pre-activation; 1x1 layers then keep no y, 3x3 layers keep it for d dcoefs (or recompute it,
``recompute_conv_output``), except on large planes where the kernel's gradient is taken: there each sample's
kernel gradient gives d dcoefs too (:data:`DCOEFS_FROM_KERNEL_GRAD_PIXELS`). Measured faster for R and T
(docs/performance.md).

With ``fast_config`` ``overlap_weight_grads`` (the default) the 3x3 layers' kernel gradients run on a side stream
while the backward goes on (:func:`kernels_ahead`, :class:`_KernelGradJoin`); wherever the running backward won't
use the kernel's gradient (``autograd.grad`` of ws alone with the weights requiring grad) it is not computed.

ToRGB layers keep ordinary autograd (they are small: 3 output channels). ``fast_config`` ``layer_function=False``
(environment ``V2S_NB_LAYER_FUNCTION=0``) turns the Function off, for side-by-side measurements.

On the CPU the fast path's kernels fall back to the plain ops; :func:`on_any_device` lets the Function run there
too (the tests use it to check its gradients against autograd through the plain path).
"""

from __future__ import annotations

import contextlib

import torch
from torch.autograd.function import once_differentiable

from . import fast_config, fast_conv, fast_ops, ops

__all__ = ["applies", "layer_forward", "on_any_device"]

_ANY_DEVICE = False


@contextlib.contextmanager
def on_any_device():
    """Within the block the Function runs wherever autograd records, the CPU included (its pieces fall back to the
    plain ops there): for tests and CPU checks of the benchmarks. Restored after the block."""
    global _ANY_DEVICE
    saved, _ANY_DEVICE = _ANY_DEVICE, True
    try:
        yield
    finally:
        _ANY_DEVICE = saved


def applies(plan, layer, x, styles) -> bool:
    """Whether :func:`layer_forward` runs this layer: not ToRGB, ``fast_config`` ``layer_function`` on, autograd
    recording something of the layer (x, styles, weight or bias requires grad), and the fast kernels available for
    ``x`` (CUDA and Triton; anywhere inside :func:`on_any_device`)."""
    if plan.is_torgb or not fast_config.current().layer_function or not torch.is_grad_enabled():
        return False
    if not any(t.requires_grad for t in (x, styles, layer.weight, layer.bias)):
        return False
    fu, fd = layer.up_filter, layer.down_filter
    if _ANY_DEVICE:
        return fu is not None and fd is not None and fu.ndim == 1
    return fast_ops.can_use_fast(x, fu, fd)


def layer_forward(plan, layer, x, styles, kernel=None):
    """The (non-ToRGB) layer of ``plan`` on ``x`` [N, I, H, W] (already in the layer's compute dtype) with its raw
    affine output ``styles`` [N, I] -> [N, O, H', W'] in x's dtype, through the Function (see the module's
    docstring). ``kernel``: (shared kernel, tap energy) made ahead (:func:`kernels_ahead`), else made here."""
    spec = (layer.up_filter, layer.down_filter, plan.lrelu)
    kernel, tap_energy = kernel if kernel is not None else plan.shared_kernel()
    if plan.three_by_three:
        scale, dcoefs = plan.modulation(styles, kernel, tap_energy)
        return _Layer3x3.apply(x, kernel, scale, dcoefs, layer.bias, spec)
    n = x.shape[0]
    weight = ops.modulated_weight(kernel, styles, True, layer.magnitude_ema.rsqrt())
    return _Layer1x1.apply(x, weight.reshape(n, plan.out_channels, -1), layer.bias, spec)


def _lrelu_args(spec):
    """(fu, fd, up, down, padding, gain, slope, clamp) of the layer's filtered leaky ReLU (clamp 3e38 for none)."""
    fu, fd, lrelu = spec
    clamp = float(lrelu["clamp"]) if lrelu["clamp"] is not None else 3.0e38
    return fu, fd, lrelu["up"], lrelu["down"], tuple(lrelu["padding"]), lrelu["gain"], lrelu["slope"], clamp


# 3x3 layers keep their convolution output beside the codes (d dcoefs needs it), so there the codes cost memory: they
# are stored only on the layers with these upsampling factors. Codes on T's 4x layers too were faster, for more
# memory than NVIDIA's step takes (docs/performance.md).
CODES_3X3_UP = (2,)
# Where the step takes the kernel's gradient (the layer's weight requires grad) its per-sample terms give d dcoefs
# too (sum over o's inputs and taps of kernel * each sample's kernel gradient = sum over pixels of y * d y), so on
# planes of at least DCOEFS_FROM_KERNEL_GRAD_PIXELS output pixels with at least DCOEFS_FROM_KERNEL_GRAD_CHANNELS
# outputs (where cuDNN's weight gradient one sample at a time costs about what it costs on the batch) a layer with
# codes keeps no y; the memory that frees pays for codes on these upsampling factors as well.
CODES_3X3_UP_WEIGHTS = (2, 4)
DCOEFS_FROM_KERNEL_GRAD_PIXELS = 512 * 512
DCOEFS_FROM_KERNEL_GRAD_CHANNELS = 48
# In steps w.r.t. ws alone (y kept), CODES_3X3_UP_WEIGHTS' factors store codes on planes of at least this many
# convolution output pixels (T's 4x layer at 1044 px), where they save the most time for their memory.
CODES_3X3_LARGE_PIXELS = 512 * 512


def _activation_forward(y, bias, spec, in_gain, codes=True):
    """(the layer's filtered leaky ReLU of y * in_gain + bias, the activation's derivative codes or None):
    :func:`.fast_ops.forward_with_codes` where it applies (``codes`` and ``fast_config`` ``saved_codes``), else the
    inference kernels (the backward then recomputes from y)."""
    fu, fd, lrelu = spec
    if codes and fast_ops.codes_apply(y, fu, fd):
        res = fast_ops.forward_with_codes(y, fu, fd, bias, *_lrelu_args(spec)[2:], in_gain=in_gain)
        if res is not None:
            return res
    return fast_ops.filtered_lrelu(y, fu, fd, bias, in_gain=in_gain, pad_channels=False, **lrelu), None


def _activation_backward(y, codes, bias, grad, spec, in_gain, size, dtype, remake_y=None):
    """(d y, d bias, d in_gain or None) of the layer's filtered leaky ReLU on y * in_gain (``in_gain`` [N, O] or
    None) + bias: from the forward's derivative codes where it stored them (y then needed only for in_gain's
    gradient: without y that is None), else recomputed from y (:func:`.fast_ops.activation_backward`), as also
    where the codes backward can't run on this GPU (``remake_y()`` gives y where it is None then). ``size`` /
    ``dtype``: y's."""
    if codes is not None:
        # the codes hold the clamp: no clamp argument
        res = fast_ops.backward_from_codes(codes, grad, size, dtype, *_lrelu_args(spec)[:7], x=y, in_gain=in_gain)
        if res is not None:
            return res
        y = y if y is not None else remake_y()
    return fast_ops.activation_backward(y, bias, grad, *_lrelu_args(spec), in_gain=in_gain)


def _tf32(x) -> bool:
    return x.is_cuda and x.dtype == torch.float32


def _conv3x3(x, kernel, scale):
    """conv2d(x * scale, kernel) with 'full' padding (k - 1), in x's dtype: fast_conv's kernels for fp16 on CUDA
    (the Triton convolution, or cuDNN with faster transposes, which make the product), else
    :func:`.ops.scaled_input_conv2d`."""
    pad = kernel.shape[-1] - 1
    if fast_conv.applies(x, kernel):
        return fast_conv.conv2d_nchw(x, kernel, pad, scale=scale)
    return ops.scaled_input_conv2d(x, kernel, scale, padding=pad)


class _Layer3x3(torch.autograd.Function):
    """filtered_lrelu(conv(x * scale, kernel) * dcoefs + bias) for a 3x3 (T) layer, saving x and the conv output."""

    @staticmethod
    def forward(ctx, x, kernel, scale, dcoefs, bias, spec):
        y = _conv3x3(x, kernel, scale)
        weights = ctx.needs_input_grad[1]
        out, codes = _activation_forward(y, bias, spec, dcoefs, _codes_3x3(spec[2]["up"], y, weights))
        # y: for d dcoefs (sums of y * d y); with the codes and fast_config's recompute_conv_output, recomputed then;
        # where the kernel's per-sample gradient gives d dcoefs (_dcoefs_from_kernel_grad), not needed
        ctx.dcoefs_from_kernel_grad = weights and codes is not None and _dcoefs_from_kernel_grad(y)
        keep_y = codes is None or not (fast_config.current().recompute_conv_output or ctx.dcoefs_from_kernel_grad)
        ctx.save_for_backward(x, y if keep_y else None, codes, kernel, scale, dcoefs, bias)
        ctx.y_meta = (y.shape, y.dtype)
        ctx.spec = spec
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, y, codes, kernel, scale, dcoefs, bias = ctx.saved_tensors
        need_x, need_k, need_s = ctx.needs_input_grad[:3]
        if y is None and not ctx.dcoefs_from_kernel_grad:
            y = _conv3x3(x, kernel, scale)
        # d y (the demodulation inside), d bias, d dcoefs: the activation's backward with dcoefs as its input gain;
        # without y (dcoefs_from_kernel_grad) d dcoefs is None, taken below, unless the codes backward can't run here
        # and recomputes from y remade
        g_y, g_b, g_d = _activation_backward(y, codes, bias, grad, ctx.spec, dcoefs, *ctx.y_meta,
                                             remake_y=lambda: _conv3x3(x, kernel, scale))
        del y, codes
        g_k = pending = None
        # not wanted by this backward (autograd.grad of ws alone, the weights requiring grad): not computed
        need_k = need_k and _wanted(ctx, 1)
        if g_d is None:  # each sample's kernel gradient: d dcoefs, and the kernel's as their sum
            g_d, g_k = _grads_from_per_sample(x, g_y, kernel, scale, dcoefs)
            g_k = g_k.to(kernel.dtype) if need_k else None
            need_k = False
            if x.is_cuda:  # no side work here: the previous layer's goes now (its x and d y held no longer)
                _settle_previous(x.device, None)
        join = ctx.next_functions[1][0] if need_k else None
        if isinstance(join, _KernelGradJoin._backward_cls):  # on a side stream while the backward goes on
            g_k, pending = _kernel_grad_beside(x, g_y, kernel, scale, join)
            need_k = False
        try:
            g_x, g_k_here, g_s = _conv_grads(x, g_y, kernel, scale, need_x, need_k, need_s)
        except BaseException:
            if pending is not None:  # the side work still reads x and d y and writes g_k: not freed before it ends
                torch.cuda.current_stream(x.device).wait_event(pending[0])
            raise
        del g_y
        if pending is not None:
            _settle_previous(x.device, pending)
        return g_x, g_k if g_k_here is None else g_k_here, g_s, g_d.to(dcoefs.dtype), g_b.to(bias.dtype), None


def _conv_grads(x, g_y, kernel, scale, need_x, need_k, need_s):
    """(d x or None, d kernel in kernel's dtype or None, d scale or None) of conv2d(x * scale, kernel, padding k - 1)
    for the output gradient ``g_y``, each only where needed: fast_conv's kernels (:func:`_triton_conv_grads`), else
    cuDNN's."""
    g_x = g_k = g_s = None
    if not (need_x or need_k or need_s):
        return None, None, None
    if _triton_conv_grads(g_y):
        k = kernel.shape[-1]
        if need_k:
            g_k = _kernel_grad(x, g_y, kernel, scale).to(kernel.dtype)
        # d x = d (x * scale) * scale and d scale = pixel sums of d (x * scale) * x: in the cudnn form inside its
        # last transpose, else one pass after
        if (need_x or need_s) and fast_conv.input_grad_form(x.shape[1]) == "cudnn":
            g_x, g_s = fast_conv.conv2d_input_grad_nchw(g_y, kernel, k - 1, x.shape, scale=scale, x=x)
        elif need_x or need_s:
            g_xs = fast_conv.conv2d_input_grad_nchw(g_y, kernel, k - 1, x.shape)
            g_x, _, g_s = fast_ops.scaled_with_sums(g_xs, x, scale, x.dtype)
    else:
        g_xs, g_k = _cudnn_grads(g_y, x, scale, kernel, need_x or need_s, need_k)
        if g_xs is not None:
            g_x, _, g_s = fast_ops.scaled_with_sums(g_xs, x, scale, x.dtype)
    return g_x if need_x else None, g_k if need_k else None, g_s if need_s else None


# The 3x3 layers' weight gradients beside the rest of the backward (``fast_config`` ``overlap_weight_grads``).
# A layer's kernel gradient reads only x and d y, and nothing else in the backward reads it: the layer's backward
# launches it on a side stream and goes on. The kernel reaches the layer through _KernelGradJoin, made before any
# layer runs (:func:`kernels_ahead`): the autograd engine runs nodes made earlier later, so the join's backward, which
# makes the current stream wait for the side stream, runs after every layer's backward, and the gradient's consumers
# (the kernel's normalisation, the weight's accumulation) only then. Memory: each layer's backward waits, at its end,
# for the previous layer's side work and drops the tensors it read, so at most one layer's x and d y outlive their
# layer's backward.

_SIDE_STREAMS: dict = {}  # device -> torch.cuda.Stream for the weight gradients
SIDE_STREAM_PRIORITY = 0  # torch.cuda.Stream's priority for it (-1: above the backward's own; for measurements)
_PENDING: dict = {}  # device -> (event after the last layer's side work, tensors it reads)


def kernels_ahead(plans, x) -> dict:
    """{plan: (shared kernel through :class:`_KernelGradJoin`, tap energy)} for the 3x3 layers of ``plans`` whose
    weight requires grad, when ``fast_config`` ``overlap_weight_grads`` is on and autograd records, on CUDA (or inside
    :func:`on_any_device`, where the same bookkeeping runs on one stream); else empty. :func:`.fast_path.run_layers`
    makes them before the first layer and hands each to :func:`layer_forward`."""
    if x.is_cuda and not torch.cuda.is_current_stream_capturing():  # (a recording can't wait for an outside event)
        _release_left_over(x.device)
    if not (fast_config.current().overlap_weight_grads and torch.is_grad_enabled() and (x.is_cuda or _ANY_DEVICE)):
        return {}
    out = {}
    for plan in plans:
        layer = plan.layer
        if plan.three_by_three and not plan.is_torgb and layer.weight.requires_grad:
            kernel, tap_energy = plan.shared_kernel()
            out[plan] = (_KernelGradJoin.apply(kernel), tap_energy)
    return out


class _KernelGradJoin(torch.autograd.Function):
    """The identity on a 3x3 layer's shared kernel. Its backward makes the current stream wait for the kernel's
    gradient, which the layer's backward computed on a side stream (``event``, set on this node by that backward)."""

    @staticmethod
    def forward(ctx, kernel):
        ctx.event = None
        return kernel.view_as(kernel)

    @staticmethod
    def backward(ctx, grad):
        if ctx.event is not None:
            torch.cuda.current_stream(grad.device).wait_event(ctx.event)
            pending = _PENDING.get(grad.device)
            if pending is not None and pending[0] is ctx.event:
                del _PENDING[grad.device]  # the last layer's side work, now waited for: its tensors may go
        ctx.event = None
        return grad


def _wanted(ctx, index) -> bool:
    """Whether the backward running ``ctx`` (an autograd Function's) will use the gradient of its input ``index``
    (that input requires grad, and the engine runs the node it goes to in this backward)."""
    node = ctx.next_functions[index][0]
    if node is None:
        return False
    try:
        return torch._C._will_engine_execute_node(node)
    except RuntimeError:  # outside an engine's backward (never here): take it as wanted
        return True


def _side_stream(device):
    stream = _SIDE_STREAMS.get(device)
    if stream is None:
        stream = _SIDE_STREAMS[device] = torch.cuda.Stream(device, priority=SIDE_STREAM_PRIORITY)
    return stream


def _kernel_grad_beside(x, g_y, kernel, scale, join):
    """(d kernel (kernel's shape and dtype), its pending entry) of conv2d(x * scale, kernel, padding k - 1) for the
    output gradient ``g_y``, launched on the device's side stream after the work queued so far on the current one
    (on the CPU: computed here). The gradient is ready once the current stream waits for the event set on ``join``.
    The entry (event, tensors the side work reads; None on the CPU) goes to :func:`_settle_previous` at the end of
    the backward."""
    out = torch.empty_like(kernel)  # made on the current stream, which reads it after the join
    if not x.is_cuda:
        out.copy_(_kernel_grad(x, g_y, kernel, scale))
        join.event = None
        return out, None
    main, side = torch.cuda.current_stream(x.device), _side_stream(x.device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        out.copy_(_kernel_grad(x, g_y, kernel, scale))
        event = side.record_event()
    join.event = event
    # x, d y, scale, kernel and out were made on the current stream: kept until it has waited for the side work
    return out, (event, (x, g_y, scale, kernel, out))


def _release_left_over(device):
    """Drops the pending side work that a backward stopped part way (an exception, e.g. out of memory) left behind,
    once the current stream has waited for it: else that layer's x and d y stay held into the next forward."""
    left = _PENDING.pop(device, None)
    if left is not None:
        torch.cuda.current_stream(device).wait_event(left[0])


def _settle_previous(device, entry):
    """At the end of a layer's backward whose kernel gradient went beside (``entry``; None: a layer that took it
    here): makes the current stream wait for the side work of the layer whose backward ran before, and drops the
    tensors it read."""
    previous = _PENDING.get(device)
    if previous is not None:
        torch.cuda.current_stream(device).wait_event(previous[0])
    _PENDING[device] = entry


def _kernel_grad(x, g_y, kernel, scale):
    """d kernel (float32 [O, I, k, k]) of conv2d(x * scale, kernel, padding k - 1): fast_conv's weight gradient
    for fp16 (:func:`_triton_conv_grads`), else cuDNN's (channels padded as the forward pads them)."""
    k = kernel.shape[-1]
    if _triton_conv_grads(g_y):
        return fast_conv.conv2d_weight_grad_nchw(x, g_y, k, k - 1, scale=scale)
    return _cudnn_grads(g_y, x, scale, kernel, False, True)[1]


def _codes_3x3(up, y, weights) -> bool:
    """Whether a 3x3 layer upsampling by ``up`` whose convolution output is ``y`` [N, O, H', W'] stores the
    activation's derivative codes: :data:`CODES_3X3_UP_WEIGHTS` where its kernel requires grad (``weights``) or on
    planes of :data:`CODES_3X3_LARGE_PIXELS`, else :data:`CODES_3X3_UP`."""
    if weights or y.shape[2] * y.shape[3] >= CODES_3X3_LARGE_PIXELS:
        return up in CODES_3X3_UP_WEIGHTS
    return up in CODES_3X3_UP


def _dcoefs_from_kernel_grad(y) -> bool:
    """Whether a 3x3 layer with codes whose weight requires grad takes d dcoefs from its kernel's per-sample gradient
    instead of keeping its convolution output ``y`` [N, O, H', W'] (see :data:`DCOEFS_FROM_KERNEL_GRAD_PIXELS`)."""
    return (y.shape[2] * y.shape[3] >= DCOEFS_FROM_KERNEL_GRAD_PIXELS
            and y.shape[1] >= DCOEFS_FROM_KERNEL_GRAD_CHANNELS)


def _kernel_grad_per_sample(x, g_y, kernel, scale):
    """Each sample's d kernel, float32 [N, O, I, k, k], of conv2d(x * scale, kernel, padding k - 1) for the output
    gradient ``g_y``: :func:`_kernel_grad` one sample at a time."""
    return torch.stack([_kernel_grad(x[i:i + 1], g_y[i:i + 1], kernel, scale[i:i + 1]).float()
                        for i in range(x.shape[0])])


def _grads_from_per_sample(x, g_y, kernel, scale, dcoefs):
    """(d dcoefs [N, O], d kernel [O, I, k, k]), float32, of a 3x3 layer whose convolution output y =
    conv2d(x * scale, kernel, padding k - 1) is scaled by ``dcoefs`` [N, O], for y's gradient ``g_y``, from each
    sample's kernel gradient G_n: the sum over pixels of y * g_y equals the sum over inputs and taps of kernel * G_n,
    divided by dcoefs for the gradient of y * dcoefs; the kernel's is the sum of the G_n."""
    per_sample = _kernel_grad_per_sample(x, g_y, kernel, scale)
    return (per_sample * kernel).sum((2, 3, 4)) / dcoefs.float(), per_sample.sum(0)


def _triton_conv_grads(g_y) -> bool:
    """Whether the convolution's gradients run in fast_conv's NCHW kernels (``fast_config`` ``triton_conv_grads``;
    fp16, CUDA or Triton's interpreter)."""
    return (fast_config.current().triton_conv_grads and g_y.dtype == torch.float16 and fast_conv.HAVE_TRITON
            and (g_y.is_cuda or fast_config.triton_interpreting()))


def _cudnn_grads(g_y, x, scale, kernel, need_input, need_weight):
    """(d (x * scale) or None, d kernel in kernel's dtype or None) of conv2d(x * scale, kernel, padding k - 1) for
    the output gradient ``g_y``, by cuDNN (channels padded as the forward pads them)."""
    g_y, weight = _conv_operands(g_y, kernel)
    g_xs, g_k = _conv_backward(g_y, x, scale, weight, need_input, need_weight)
    if g_k is not None:
        g_k = g_k[:kernel.shape[0], :kernel.shape[1]].to(kernel.dtype)
    return g_xs, g_k


def _conv_operands(g_y, kernel):
    """(the convolution's output gradient [N, O', H, W], its weight [O', I', k, k] in g_y's dtype): with the channels
    padded to multiples of 8 (zeros) where the forward pads them (fp16 on CUDA, for the tensor cores)."""
    co, ci = kernel.shape[:2]
    if ops._pad_for_tensor_cores(g_y) and (ci % 8 or co % 8):
        cip, cop = ops._round8(ci), ops._round8(co)
        weight = torch.nn.functional.pad(kernel, [0, 0, 0, 0, 0, cip - ci, 0, cop - co]).to(g_y.dtype)
        return ops.scaled_into_padded(g_y, None, cop), weight
    return g_y, kernel.to(g_y.dtype)


def _conv_backward(g_y, x, scale, weight, need_input, need_weight):
    """(d (x * scale) [N, I, H, W] in x's dtype or None, d weight [O', I', k, k] or None) of
    conv2d(x * scale, weight, padding k - 1) (channels of x padded with zeros to the weight's I') for the output
    gradient ``g_y`` (:func:`_conv_operands`): one ``convolution_backward`` call."""
    n, ci, h, w = x.shape
    cip, k = weight.shape[1], weight.shape[-1]
    if need_weight:
        s = scale.to(x.dtype)[:, :, None, None]
        xs = ops.scaled_into_padded(x, s, cip) if cip != ci else x * s
    else:  # the input's values aren't read for the input gradient, only its shape
        xs = g_y.new_empty(1).expand(n, cip, h, w)
    g_xs, g_k, _ = torch.ops.aten.convolution_backward(g_y, xs, weight, None, [1, 1], [k - 1, k - 1], [1, 1], False,
                                                       [0, 0], 1, [need_input, need_weight, False])
    if g_xs is not None and cip != ci:
        g_xs = g_xs[:, :ci]
    return g_xs, g_k


class _Layer1x1(torch.autograd.Function):
    """filtered_lrelu(bmm(weight, x) + bias) for a 1x1 (R) layer with per-sample weight [N, O, I], saving x and the
    product."""

    @staticmethod
    def forward(ctx, x, weight, bias, spec):
        y = ops.batched_1x1(weight, x, tf32=_tf32(x))
        out, codes = _activation_forward(y, bias, spec, None)
        # With the codes the backward needs only y's shape (no input gain here): y is not kept.
        ctx.save_for_backward(x, y if codes is None else None, codes, weight, bias)
        ctx.y_meta = (y.shape, y.dtype)
        ctx.spec = spec
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, y, codes, weight, bias = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        y_shape, y_dtype = ctx.y_meta
        n = y_shape[0]
        g_x = g_w = g_b = None
        # Chunks of samples (the activation backward's own), each taken through to the layer's gradients: d y exists
        # for one chunk at a time. A whole batch of it beside the input gradient and the incoming gradient set R's
        # memory peak on the 1044 px layers.
        per = fast_ops.backward_chunk(y_shape)
        for n0 in range(0, n, per):
            part = slice(n0, min(n, n0 + per))
            g_y, g_bc, _ = _activation_backward(None if y is None else y[part], None if codes is None else codes[part],
                                                bias, grad[part], ctx.spec, None, (part.stop - n0, *y_shape[1:]),
                                                y_dtype, lambda: ops.batched_1x1(weight[part], x[part], tf32=_tf32(x)))
            g_b = g_bc if g_b is None else g_b + g_bc
            # The layer's gradients are made once the first chunk's activation backward has let its float32 sums go:
            # with one chunk (batch 1 at 1024) d x and those sums were otherwise alive together, R's peak there.
            if need_x and g_x is None:
                g_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            if need_w and g_w is None:
                g_w = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
            if need_x or need_w:
                _1x1_grads(x[part], weight[part], g_y, None if g_x is None else g_x[part],
                           None if g_w is None else g_w[part])
            del g_y
        return g_x, g_w, g_b.to(bias.dtype), None


# (device, dtype) where the Triton 1x1 gradients needed more shared memory than the GPU has (their tiles were tuned on
# one GPU generation, and Triton releases compile them to different sizes; docs/performance.md): cuBLAS's there.
_BMM_GRADS_UNFIT: set = set()


def _1x1_grads(x, weight, g_y, g_x, g_w):
    """Writes the gradients of y = bmm(weight, x) (per-sample 1x1 products) for the output gradient ``g_y`` into
    ``g_x`` (d x: x's shape and dtype, contiguous) and ``g_w`` (d weight [N, O, I]); either may be None."""
    key = (g_y.device, g_y.dtype)
    if (_triton_conv_grads(g_y) and fast_conv.bmm_grads_in_triton(g_y.shape[2] * g_y.shape[3])
            and key not in _BMM_GRADS_UNFIT):
        try:  # each kernel loads (and may fail) before it writes anything
            if g_w is not None:
                g_w.copy_(fast_conv.batched_1x1_weight_grad(x, g_y))
            if g_x is not None:
                fast_conv.batched_1x1_input_grad(weight, g_y, out=g_x)
            return
        except fast_conv.OutOfResources:  # more shared memory than this GPU has: cuBLAS's products from now on
            _BMM_GRADS_UNFIT.add(key)
    n, ci = x.shape[:2]
    g_a = g_y.reshape(n, g_y.shape[1], -1)
    with ops._Tf32LikeCudnn() if _tf32(x) else contextlib.nullcontext():
        if g_w is not None:
            g_w.copy_(torch.bmm(g_a, x.reshape(n, ci, -1).transpose(1, 2)))
        if g_x is not None:
            torch.bmm(weight.to(x.dtype).transpose(1, 2), g_a, out=g_x.view(n, ci, -1))
