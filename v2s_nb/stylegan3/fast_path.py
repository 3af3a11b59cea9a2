"""The fast synthesis path (``impl='fast'``): how the synthesis layers run with the Triton kernels.

:mod:`.networks` holds the model, written with the reference ops (:mod:`.ops`); with ``impl='fast'`` its
synthesis loop hands the layers to :func:`run_layers` here (and one layer's ``forward_styles`` to
:meth:`LayerPlan.forward`). Each layer gets a :class:`LayerPlan`, made once per layer and device
(:func:`plan_for`), which owns the fast path's view of that layer: its compute dtype, its activation's arguments,
its weight-derived operands (the shared kernel and its tap energy, kept while the weight is unchanged), its
modulation factors, and whether it hands its output to the next layer already multiplied by that layer's input
scale (chaining, T's 3x3 layers in CUDA inference). Under autograd each layer but ToRGB runs as one autograd
Function (:mod:`.fast_layer`) that saves only the layer's input and its convolution's output. The kernels live in
:mod:`.fast_ops` (filtered leaky ReLU), :mod:`.fast_conv` (T's fp16 3x3 convolutions) and :mod:`.fast_modulation`
(modulation factors, ToRGB); their tuning knobs in :mod:`.fast_config`.
"""

from __future__ import annotations

import math
import weakref

import torch

from . import fast_conv, fast_layer, fast_modulation, fast_ops
from .ops import kernel_tap_energy, modulated_conv2d, modulation_factors, scaled_input_conv2d, shared_kernel

__all__ = ["LayerPlan", "plan_for", "run_layers"]

_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # layer -> {device: LayerPlan}


def plan_for(layer, device) -> "LayerPlan":
    """The :class:`LayerPlan` of synthesis ``layer`` on ``device``, made on first use and kept with the layer."""
    device = torch.device(device)
    plans = _PLANS.setdefault(layer, {})
    plan = plans.get(device)
    if plan is None:
        plan = plans[device] = LayerPlan(layer, device)
    return plan


class LayerPlan:
    """One synthesis layer as the fast path runs it on one device (see the module's docstring).

    Holds only what doesn't change while the layer lives (its sizes, filters' roles, dtypes per ``force_fp32``) and
    a weak reference to the layer: the layer's tensors are read at each call, so loads, moves and optimiser steps
    are seen. Call :meth:`forward` for the layer alone; :func:`run_layers` chains consecutive layers."""

    def __init__(self, layer, device: torch.device):
        self._layer = weakref.ref(layer)
        self.device = device
        self.is_torgb = layer.is_torgb
        self.conv_kernel = layer.conv_kernel
        self.out_channels = layer.out_channels
        self.three_by_three = layer.conv_kernel > 1
        gain, slope = (1, 1) if layer.is_torgb else (math.sqrt(2), 0.2)
        self.lrelu = dict(up=layer.up_factor, down=layer.down_factor, padding=layer.padding, gain=gain, slope=slope,
                          clamp=layer.conv_clamp)
        self._dtypes = {f: layer.compute_dtype(device, f) for f in (False, True)}

    @property
    def layer(self):
        layer = self._layer()
        if layer is None:
            raise RuntimeError("this LayerPlan's layer no longer exists; take a new plan with plan_for(layer, device)")
        return layer

    def dtype(self, force_fp32: bool = False) -> torch.dtype:
        """The layer's compute dtype here: float16 for the snapshot's fp16 layers on CUDA, else float32."""
        return self._dtypes[bool(force_fp32)]

    def shared_kernel(self):
        """(the shared convolution's kernel, its :func:`kernel_tap_energy`). In inference both depend on the weight
        only, so they are kept from call to call (rebuilt when the weight changes: another tensor, device or version,
        e.g. after an optimiser step or a load); under autograd they are recomputed, so gradients reach the weight.
        Keeping them (:func:`fast_conv.weight_derived`) saves 4-6 small kernels per layer and call."""
        layer = self.layer

        def build():
            kernel = shared_kernel(layer.weight, not layer.is_torgb)
            return kernel, kernel_tap_energy(kernel)

        if torch.is_grad_enabled() and layer.weight.requires_grad:
            return build()
        return fast_conv.weight_derived(layer.weight, ("shared kernel", layer.is_torgb), build)

    def modulation(self, styles, kernel=None, tap_energy=None):
        """The layer's factors for its raw affine ``styles`` [N, in_channels]: (input scale [N, in_channels],
        demodulation coefficients [N, out_channels] or None), float32, as :func:`ops.modulation_factors` defines
        them. In CUDA inference one Triton launch (:func:`fast_modulation.modulation_factors`) instead of about ten
        small kernels. ``kernel`` / ``tap_energy``: :meth:`shared_kernel`'s, when the caller has them."""
        layer = self.layer
        if kernel is None:
            kernel, tap_energy = self.shared_kernel()
        demodulate = not layer.is_torgb
        if demodulate and fast_modulation.modulation_applies(styles, tap_energy, layer.magnitude_ema):
            return fast_modulation.modulation_factors(styles, tap_energy, layer.magnitude_ema)
        return modulation_factors(kernel, styles, demodulate, layer.magnitude_ema.rsqrt(), tap_energy)

    def chains_into(self, nxt: "LayerPlan") -> bool:
        """Whether, in inference on CUDA, this layer may hand ``nxt`` its output already multiplied by ``nxt``'s
        input scale: both are 3x3 (T) layers, so ``nxt`` runs the scale-convolve-scale form."""
        return (self.three_by_three and nxt.three_by_three and not nxt.is_torgb and self.device.type == "cuda"
                and fast_ops.HAVE_TRITON and not torch.is_grad_enabled())

    def forward(self, x, styles, force_fp32=False, factors=None, into=None, into_factors=None, out_gain=1.0,
                kernel=None):
        """The layer on ``x`` [N, in_channels, H, W] with its raw affine output ``styles`` [N, in_channels].

        Chaining (:func:`run_layers`; see :meth:`chains_into`): ``factors`` is this layer's :meth:`modulation`
        when the previous layer computed it, and then ``x`` came already multiplied by its input scale;
        ``into`` (the next layer's plan) with ``into_factors`` (its :meth:`modulation`) makes this layer return its
        output multiplied by that layer's input scale, in the activation kernel. ``out_gain``: a factor on the
        result (the network's ``output_scale`` for ToRGB; the fast ToRGB applies it in its kernel and returns
        float32). ``kernel``: this layer's entry of :func:`.fast_layer.kernels_ahead`, for its Function."""
        layer = self.layer
        dtype = self.dtype(force_fp32)
        if factors is None and into is None and fast_layer.applies(self, layer, x, styles):
            # Under autograd: the layer as one Function that saves only its input and its convolution's output.
            y = fast_layer.layer_forward(self, layer, x.to(dtype), styles, kernel)
            return y * out_gain if out_gain != 1 else y
        if self.three_by_three:
            return self._forward_3x3(layer, x.to(dtype), styles, force_fp32, factors, into, into_factors, out_gain)
        if factors is not None or into is not None:
            raise ValueError("factors / into are for the fast path's 3x3 layers (see LayerPlan.chains_into)")
        if (layer.is_torgb and layer.up_filter is None and layer.down_filter is None
                and fast_modulation.torgb_applies(x, layer.weight, styles, layer.bias)):
            # One pass: the 1x1 product, bias, clamp and output gain, float32 out (the plain sequence makes five).
            return fast_modulation.torgb(x, layer.weight, styles, layer.magnitude_ema, layer.bias, layer.conv_clamp,
                                         out_gain)
        if layer.is_torgb:
            styles = styles * (1 / math.sqrt(layer.in_channels * layer.conv_kernel ** 2))
        x = modulated_conv2d(x.to(dtype), layer.weight, styles, demodulate=not layer.is_torgb,
                             padding=layer.conv_kernel - 1, input_gain=layer.magnitude_ema.rsqrt(), fused=False,
                             kernel=self.shared_kernel()[0])
        x = fast_ops.filtered_lrelu(x, layer.up_filter, layer.down_filter, layer.bias, **self.lrelu)
        return x * out_gain if out_gain != 1 else x

    def _forward_3x3(self, layer, x, styles, force_fp32, factors, into, into_factors, out_gain):
        # The shared convolution between two per-channel scalings; the demodulation (and, when chained, the next
        # layer's input scale) are applied inside the fast activation kernel.
        kernel, tap_energy = self.shared_kernel()
        scale, dcoefs = factors if factors is not None else self.modulation(styles, kernel, tap_energy)
        x_scaled = factors is not None
        if x_scaled and fast_conv.applies(x, kernel):  # Triton, or cuDNN with faster transposes
            y = fast_conv.conv2d_nchw(x, kernel, layer.conv_kernel - 1)
        else:
            y = scaled_input_conv2d(x, kernel, scale, padding=layer.conv_kernel - 1, prescaled=x_scaled)
        out_scale = out_dtype = None
        row_align = 1
        if into is not None:
            if into_factors is None:
                raise ValueError("into needs into_factors (into.modulation(its styles))")
            out_scale = into_factors[0]
            out_dtype = into.dtype(force_fp32)
            # for fast_conv's rows form
            row_align = fast_conv.row_align_for(x.device, out_dtype, into.out_channels, into.conv_kernel)
        # Chained, the next layer's convolution is fast_conv's (fp16) or needs no padded channels (float32).
        y = fast_ops.filtered_lrelu(y, layer.up_filter, layer.down_filter, layer.bias, in_gain=dcoefs,
                                    out_scale=out_scale, out_dtype=out_dtype, row_align=row_align,
                                    pad_channels=into is None, **self.lrelu)
        return y * out_gain if out_gain != 1 else y


def run_layers(synthesis, x, styles, force_fp32=False, stop_after=None, collect=(), out_gain=1.0, feats=None):
    """The synthesis layers of ``synthesis`` on the fast path, from the input's output ``x``: (last output, the
    feature maps named in ``collect``, float32). Consecutive 3x3 layers are chained (see
    :meth:`LayerPlan.chains_into`), except where a layer's output is collected or synthesis stops after it."""
    feats = {} if feats is None else feats
    plans = [plan_for(getattr(synthesis, name), x.device) for name in synthesis.layer_names]
    names = synthesis.layer_names
    last = names.index(stop_after) + 1 if stop_after in names else len(names)
    kernels = fast_layer.kernels_ahead(plans[:last], x)  # of the layers that run, before any does (see fast_layer)
    factors = None  # this layer's modulation factors when the previous (chained) layer computed them
    for i, (name, plan) in enumerate(zip(synthesis.layer_names, plans)):
        nxt = plans[i + 1] if i + 1 < len(plans) else None
        chain = nxt is not None and name not in collect and name != stop_after and plan.chains_into(nxt)
        into_factors = nxt.modulation(styles[synthesis.layer_names[i + 1]]) if chain else None
        x = plan.forward(x, styles[name], force_fp32=force_fp32, factors=factors, into=nxt if chain else None,
                         into_factors=into_factors, out_gain=out_gain if nxt is None else 1.0, kernel=kernels.get(plan))
        factors = into_factors
        if name in collect:
            feats[name] = x.to(torch.float32)
        if name == stop_after:
            break
    return x, feats
