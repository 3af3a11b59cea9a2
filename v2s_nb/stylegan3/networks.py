"""StyleGAN3 generator (configs R and T) in plain PyTorch, parameter-compatible with NVIDIA's snapshots.

Module and parameter names follow NVIDIA's (``mapping.fc0.weight``, ``synthesis.L3_36_1024.affine.bias``,
``synthesis.input.transform``, ...), so ``state_dict()`` keys and users' snippets carry over. The
architecture is rebuilt from the snapshot's constructor arguments, and every stored tensor (including the
designed filters and the Fourier frequencies) is then loaded, never recomputed.

S space: every synthesis layer (and the input) owns an ``affine`` that maps its w to a style vector.
:meth:`SynthesisNetwork.styles` returns those vectors, :meth:`SynthesisNetwork.from_styles` renders from
them, and :meth:`SynthesisNetwork.forward` is exactly ``from_styles(styles(ws))``.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import fast_ops, fast_path
from .ops import design_lowpass_filter, filtered_lrelu, modulated_conv2d

IMPLS = ("auto", "fast", "plain")

_TRANSFORM_FIX = ("pass one [3, 3] matrix or one per sample [N, 3, 3], e.g. "
                  "v2s_nb.stylegan3.input_transform(tx, ty, angle_deg)")
# torch < 2.3 has no torch.compiler.is_compiling: the value check then only costs a graph break there
_is_compiling = getattr(torch.compiler, "is_compiling", None) or (lambda: False)


def check_input_transform(transform, n: int | None = None) -> None:
    """Refuse an input-transform override that is not [3, 3], [1, 3, 3] or [n, 3, 3] (``n``: the batch), and,
    where its values are on the host (a CPU tensor, a numpy array, Python numbers), one holding NaN / inf (an
    all-NaN image). Of a GPU tensor only the shape is read: no synchronisation in optimisation loops or CUDA graphs.
    """
    if torch.is_tensor(transform):
        shape = tuple(transform.shape)
        host = transform if transform.device.type == "cpu" and not _is_compiling() else None
    else:
        try:
            host = np.asarray(transform, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"transform must be a matrix of numbers, got {type(transform).__name__}; "
                             f"{_TRANSFORM_FIX}") from None
        shape = host.shape
    if not (shape == (3, 3) or (len(shape) == 3 and shape[1:] == (3, 3) and (n is None or shape[0] in (1, n)))):
        batch = f" for a batch of {n}" if n is not None and len(shape) == 3 and shape[1:] == (3, 3) else ""
        raise ValueError(f"transform has shape {list(shape)}{batch}; {_TRANSFORM_FIX}")
    if host is not None and not bool(torch.isfinite(host).all() if torch.is_tensor(host) else np.isfinite(host).all()):
        raise ValueError(f"transform holds NaN or inf (the image would be all NaN); {_TRANSFORM_FIX}")


def resolve_impl(impl: str, device: torch.device) -> str:
    """'auto' -> 'fast' on CUDA with Triton, else 'plain'. An unavailable 'fast' warns once and falls back; so does
    'auto' on CUDA where the installed Triton can't build the kernels (:func:`.fast_ops.device_unfit`)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    unfit = None
    if device.type != "cuda":
        why_not = "needs a CUDA device and Triton"
    elif not fast_ops.HAVE_TRITON:
        why_not = "Triton is not installed"
    else:
        why_not = unfit = fast_ops.device_unfit(device) if impl != "plain" else None
    if why_not and (impl == "fast" or impl == "auto" and unfit):  # auto on a CPU: plain, as expected
        fast_ops.warn_fallback(why_not)
        return "plain"
    if impl == "auto":
        return "plain" if why_not else "fast"
    return impl


class FullyConnectedLayer(nn.Module):
    """Linear layer with StyleGAN's equalised learning rate: ``y = act(x @ (W * gain).T + b * lr)``."""

    def __init__(self, in_features, out_features, bias=True, activation="linear", lr_multiplier=1.0,
                 weight_init=1.0, bias_init=0.0):
        super().__init__()
        self.in_features, self.out_features, self.activation = int(in_features), int(out_features), activation
        self.weight = nn.Parameter(torch.randn([self.out_features, self.in_features]) * (weight_init / lr_multiplier))
        bias_init = np.broadcast_to(np.asarray(bias_init, dtype=np.float32), [self.out_features])
        self.bias = nn.Parameter(torch.from_numpy(bias_init / lr_multiplier)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(self.in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        if self.bias is not None and x.dim() == 2:
            # One launch, gains and bias applied by the matrix product (synthesis runs 16 affines per call).
            y = torch.addmm(self.bias.to(x.dtype), x, self.weight.to(x.dtype).t(), beta=self.bias_gain,
                            alpha=self.weight_gain)
        else:
            y = x.matmul((self.weight.to(x.dtype) * self.weight_gain).t())
            if self.bias is not None:
                y = y + self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "lrelu":
            y = F.leaky_relu(y, 0.2) * math.sqrt(2)
        elif self.activation != "linear":
            raise ValueError(f"unknown activation {self.activation!r}")
        return y


def normalize_2nd_moment(x, eps=1e-8):
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class MappingNetwork(nn.Module):
    """z [N, z_dim] (+ label c [N, c_dim]) -> ws [N, num_ws, w_dim]; keeps ``w_avg`` for truncation."""

    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=2, lr_multiplier=0.01, w_avg_beta=0.998):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
        self.embed = FullyConnectedLayer(c_dim, w_dim) if c_dim > 0 else None
        features = [z_dim + (w_dim if c_dim > 0 else 0)] + [w_dim] * num_layers
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1], activation="lrelu",
                                                          lr_multiplier=lr_multiplier))
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None, update_emas=False):
        parts = []
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"z must have shape [N, {self.z_dim}], got {None if z is None else tuple(z.shape)}")
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"this generator is conditional: c must have shape [N, {self.c_dim}]")
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_emas:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if not (isinstance(truncation_psi, torch.Tensor) or math.isfinite(float(truncation_psi))):
                raise ValueError(f"truncation_psi must be a finite number (1 = none, 0.5-0.7 typical), "
                                 f"got {truncation_psi!r}")
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x[:, :cutoff] = self.w_avg.lerp(x[:, :cutoff], truncation_psi)
        return x


class SynthesisInput(nn.Module):
    """Fourier features: ``channels`` sinusoids on a ``size`` grid, rotated / translated per sample.

    The rotation and translation come from the affine of w (its 4 S-space values) composed with the
    ``transform`` buffer (NVIDIA's meaning: the inverse of the transform applied to the image; see
    :mod:`v2s_nb.stylegan3.transform`).
    """

    def __init__(self, w_dim, channels, size, sampling_rate, bandwidth):
        super().__init__()
        self.w_dim, self.channels = w_dim, int(channels)
        self.size = np.broadcast_to(np.asarray(size), [2]).astype(np.int64)
        self.sampling_rate, self.bandwidth = float(sampling_rate), float(bandwidth)
        freqs = torch.randn([self.channels, 2])
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25)) * self.bandwidth
        self.weight = nn.Parameter(torch.randn([self.channels, self.channels]))
        self.affine = FullyConnectedLayer(w_dim, 4, weight_init=0, bias_init=[1, 0, 0, 0])
        self.register_buffer("transform", torch.eye(3, 3))
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", torch.rand([self.channels]) - 0.5)

    def _sample_grid(self, device):
        """Sample positions [H, W, 2] (x, y), in units of the input's sampling period, cached per device (a
        constant; building it on every call would also copy from the CPU, which CUDA graph capture forbids)."""
        cache = self.__dict__.setdefault("_grid_cache", {})
        if device not in cache:
            sx, sy = int(self.size[0]), int(self.size[1])
            theta = torch.tensor([[0.5 * sx / self.sampling_rate, 0, 0], [0, 0.5 * sy / self.sampling_rate, 0]])
            cache[device] = F.affine_grid(theta.unsqueeze(0), [1, 1, sy, sx], align_corners=False)[0].to(device)
        return cache[device]

    def forward_styles(self, t, transform=None):
        """Render the features from the 4 style values ``t`` [N, 4]; ``transform`` [3,3] or [N,3,3] overrides
        the buffer. Returns float32 [N, channels, size_y, size_x]."""
        n = t.shape[0]
        if transform is not None:
            check_input_transform(transform, n)
        t = t.to(torch.float32)
        base = self.transform if transform is None else torch.as_tensor(transform, dtype=torch.float32,
                                                                          device=t.device)
        base = base.reshape(-1, 3, 3)
        t = t / t[:, :2].norm(dim=1, keepdim=True)  # (cos, sin) of the learned rotation
        eye = torch.eye(3, device=t.device)
        m_r = eye.repeat([n, 1, 1])
        m_r[:, 0, 0], m_r[:, 0, 1], m_r[:, 1, 0], m_r[:, 1, 1] = t[:, 0], -t[:, 1], t[:, 1], t[:, 0]
        m_t = eye.repeat([n, 1, 1])
        m_t[:, 0, 2], m_t[:, 1, 2] = -t[:, 2], -t[:, 3]
        transforms = m_r @ m_t @ base
        freqs = self.freqs.unsqueeze(0)
        phases = self.phases.unsqueeze(0) + (freqs @ transforms[:, :2, 2:]).squeeze(2)
        freqs = freqs @ transforms[:, :2, :2]
        # Fade out frequencies that the rotation pushed above the band limit.
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth)
                      / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        x = torch.einsum("hwk,nck->nhwc", self._sample_grid(t.device), freqs) + phases[:, None, None, :]
        x = torch.sin(x * (2 * math.pi)) * amplitudes[:, None, None, :]
        # One [N*H*W, C] product (on the einsum's strided layout, matmul would run one per sample and row).
        x = (x.reshape(-1, self.channels) @ (self.weight / math.sqrt(self.channels)).t()).reshape(x.shape)
        return x.permute(0, 3, 1, 2)


class SynthesisLayer(nn.Module):
    """Modulated convolution followed by the alias-free filtered leaky ReLU (or a ToRGB layer)."""

    def __init__(self, w_dim, is_torgb, is_critically_sampled, use_fp16, in_channels, out_channels, in_size,
                 out_size, in_sampling_rate, out_sampling_rate, in_cutoff, out_cutoff, in_half_width,
                 out_half_width, conv_kernel=3, filter_size=6, lrelu_upsampling=2, use_radial_filters=False,
                 conv_clamp=256, magnitude_ema_beta=0.999):
        super().__init__()
        self.w_dim, self.is_torgb = w_dim, bool(is_torgb)
        self.is_critically_sampled, self.use_fp16 = bool(is_critically_sampled), bool(use_fp16)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.in_size = np.broadcast_to(np.asarray(in_size), [2]).astype(np.int64)
        self.out_size = np.broadcast_to(np.asarray(out_size), [2]).astype(np.int64)
        self.in_sampling_rate, self.out_sampling_rate = in_sampling_rate, out_sampling_rate
        self.tmp_sampling_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
        self.in_cutoff, self.out_cutoff = in_cutoff, out_cutoff
        self.in_half_width, self.out_half_width = in_half_width, out_half_width
        self.conv_kernel = 1 if is_torgb else int(conv_kernel)
        self.conv_clamp, self.magnitude_ema_beta = conv_clamp, magnitude_ema_beta

        self.affine = FullyConnectedLayer(w_dim, self.in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([self.out_channels, self.in_channels, self.conv_kernel,
                                                self.conv_kernel]))
        self.bias = nn.Parameter(torch.zeros([self.out_channels]))
        self.register_buffer("magnitude_ema", torch.ones([]))

        self.up_factor = int(np.rint(self.tmp_sampling_rate / in_sampling_rate))
        self.up_taps = filter_size * self.up_factor if self.up_factor > 1 and not is_torgb else 1
        self.register_buffer("up_filter", design_lowpass_filter(
            numtaps=self.up_taps, cutoff=in_cutoff, width=in_half_width * 2, fs=self.tmp_sampling_rate))
        self.down_factor = int(np.rint(self.tmp_sampling_rate / out_sampling_rate))
        self.down_taps = filter_size * self.down_factor if self.down_factor > 1 and not is_torgb else 1
        self.down_radial = use_radial_filters and not is_critically_sampled
        self.register_buffer("down_filter", design_lowpass_filter(
            numtaps=self.down_taps, cutoff=out_cutoff, width=out_half_width * 2, fs=self.tmp_sampling_rate,
            radial=self.down_radial))

        # Padding (in the upsampled domain) that makes the output exactly out_size.
        pad_total = (self.out_size - 1) * self.down_factor + 1
        pad_total -= (self.in_size + self.conv_kernel - 1) * self.up_factor
        pad_total += self.up_taps + self.down_taps - 2
        pad_lo = (pad_total + self.up_factor) // 2
        pad_hi = pad_total - pad_lo
        self.padding = [int(pad_lo[0]), int(pad_hi[0]), int(pad_lo[1]), int(pad_hi[1])]

    def compute_dtype(self, device, force_fp32=False):
        """float16 for the snapshot's high-resolution layers on CUDA (as NVIDIA runs them), else float32."""
        return torch.float16 if self.use_fp16 and not force_fp32 and device.type == "cuda" else torch.float32

    def forward_styles(self, x, styles, force_fp32=False, impl="plain", out_gain=1.0):
        """Apply the layer with the given raw affine output ``styles`` [N, in_channels] to ``x`` [N, in_channels,
        H, W]; ``out_gain``: a factor on the result (the network's ``output_scale`` for ToRGB).

        ``impl``: 'plain' (the reference ops) or 'fast' (the Triton kernels on CUDA: the layer's
        :class:`~v2s_nb.stylegan3.fast_path.LayerPlan`).
        """
        if impl == "fast":
            return fast_path.plan_for(self, x.device).forward(x, styles, force_fp32=force_fp32, out_gain=out_gain)
        if self.is_torgb:
            styles = styles * (1 / math.sqrt(self.in_channels * self.conv_kernel ** 2))
        x = modulated_conv2d(x.to(self.compute_dtype(x.device, force_fp32)), self.weight, styles,
                             demodulate=not self.is_torgb, padding=self.conv_kernel - 1,
                             input_gain=self.magnitude_ema.rsqrt())
        gain, slope = (1, 1) if self.is_torgb else (math.sqrt(2), 0.2)
        x = filtered_lrelu(x, self.up_filter, self.down_filter, self.bias, up=self.up_factor, down=self.down_factor,
                           padding=self.padding, gain=gain, slope=slope, clamp=self.conv_clamp)
        return x * out_gain if out_gain != 1 else x

    def forward(self, x, w, force_fp32=False, impl="plain"):
        return self.forward_styles(x, self.affine(w.to(torch.float32)), force_fp32=force_fp32, impl=impl)

    def extra_repr(self):
        return (f"in={self.in_channels}@{int(self.in_size[0])} out={self.out_channels}@{int(self.out_size[0])} "
                f"up={self.up_factor} down={self.down_factor} torgb={self.is_torgb} fp16={self.use_fp16}")


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R] float32, about [-1, 1]."""

    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, num_layers=14,
                 num_critical=2, first_cutoff=2, first_stopband=2 ** 2.1, last_stopband_rel=2 ** 0.3,
                 margin_size=10, output_scale=0.25, num_fp16_res=4, **layer_kwargs):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, int(img_resolution), int(img_channels)
        self.num_ws = num_layers + 2
        self.num_layers, self.num_critical = num_layers, num_critical
        self.margin_size, self.output_scale, self.num_fp16_res = margin_size, output_scale, num_fp16_res
        self.impl = "auto"  # default synthesis implementation: 'auto' | 'fast' | 'plain'

        # Frequency schedule of the alias-free design: cutoffs rise geometrically to Nyquist of the output.
        last_cutoff = self.img_resolution / 2
        last_stopband = last_cutoff * last_stopband_rel
        exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
        cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
        stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
        sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, self.img_resolution))))
        half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
        sizes = sampling_rates + margin_size * 2
        sizes[-2:] = self.img_resolution
        channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
        channels[-1] = self.img_channels

        self.input = SynthesisInput(w_dim=w_dim, channels=int(channels[0]), size=int(sizes[0]),
                                    sampling_rate=sampling_rates[0], bandwidth=cutoffs[0])
        self.layer_names = []
        for idx in range(num_layers + 1):
            prev = max(idx - 1, 0)
            layer = SynthesisLayer(
                w_dim=w_dim, is_torgb=idx == num_layers, is_critically_sampled=idx >= num_layers - num_critical,
                use_fp16=bool(sampling_rates[idx] * (2 ** num_fp16_res) > self.img_resolution),
                in_channels=int(channels[prev]), out_channels=int(channels[idx]),
                in_size=int(sizes[prev]), out_size=int(sizes[idx]),
                in_sampling_rate=int(sampling_rates[prev]), out_sampling_rate=int(sampling_rates[idx]),
                in_cutoff=cutoffs[prev], out_cutoff=cutoffs[idx],
                in_half_width=half_widths[prev], out_half_width=half_widths[idx], **layer_kwargs)
            name = f"L{idx}_{int(layer.out_size[0])}_{layer.out_channels}"
            setattr(self, name, layer)
            self.layer_names.append(name)

    @property
    def device(self) -> torch.device:
        """Where the synthesis network's weights are (``G.device`` is the same for a whole generator)."""
        return self.input.transform.device

    @property
    def style_names(self) -> list[str]:
        """``'input'`` followed by :attr:`layer_names`: the keys of :meth:`styles`, one per w+ row."""
        return ["input"] + self.layer_names

    def layers(self):
        return [getattr(self, name) for name in self.layer_names]

    def _check_ws(self, ws):
        """Shape, type and device (no GPU synchronisation): these failed deep inside the layers."""
        if not isinstance(ws, torch.Tensor):
            fix = "torch.from_numpy(ws)" if isinstance(ws, np.ndarray) else "torch.as_tensor(ws)"
            raise TypeError(f"ws must be a torch tensor [N, {self.num_ws}, {self.w_dim}], got {type(ws).__name__}: "
                            f"pass {fix}")
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must have shape [N, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        if ws.shape[0] == 0:
            raise ValueError(f"ws holds no codes ([0, {self.num_ws}, {self.w_dim}]): there is nothing to render")
        if ws.device != self.device:
            raise ValueError(f"ws is on {ws.device} and the generator on {self.device}: pass ws.to(G.device)")

    def styles(self, ws) -> dict[str, torch.Tensor]:
        """The S-space code of ``ws``: ``{'input': [N, 4], layer_name: [N, in_channels], ...}``.

        Each value is the raw output of that layer's affine on its row of w+ (row 0 for the input, row k+1
        for layer k), before any ToRGB weight gain.
        """
        self._check_ws(ws)
        ws = ws.to(torch.float32)
        return {name: getattr(self, name).affine(ws[:, i]) for i, name in enumerate(self.style_names)}

    def _style_widths(self) -> dict[str, int]:
        """{style name: S channels}: 4 for the input, each layer's in_channels (kept: read on every call)."""
        widths = self.__dict__.get("_style_width_cache")
        if widths is None:
            widths = {"input": 4, **{n: getattr(self, n).in_channels for n in self.layer_names}}
            self.__dict__["_style_width_cache"] = widths
        return widths

    def _check_styles(self, styles) -> None:
        """Shapes only (no GPU synchronisation): every entry [N, channels of its layer], one N for all."""
        missing = [n for n in self.style_names if n not in styles]
        if missing:
            raise KeyError(f"styles lacks entries for {missing}; expected keys {self.style_names}")
        first = getattr(styles["input"], "shape", ())
        n = first[0] if len(first) == 2 else None
        for name, width in self._style_widths().items():
            shape = getattr(styles[name], "shape", ())
            if len(shape) != 2 or shape[1] != width or shape[0] != n:
                shape = tuple(shape)
                want = f"[{'N' if n is None else n}, {width}]"
                raise ValueError(f"styles[{name!r}] has shape {list(shape)}, expected {want}: {width} values per "
                                 "sample, the same N samples in every entry; edit the values of "
                                 "G.synthesis.styles(ws) without changing their shapes")

    def _run(self, styles, transform=None, force_fp32=False, stop_after=None, collect=(), impl=None, out_gain=1.0,
             check_styles=True):
        if check_styles:  # styles made by self.styles() are right by construction
            self._check_styles(styles)
        impl = resolve_impl(impl or self.impl, styles["input"].device)
        feats = {}
        x = self.input.forward_styles(styles["input"], transform=transform)
        if "input" in collect:
            feats["input"] = x
        if stop_after == "input":
            return x, feats
        if impl == "fast":
            return fast_path.run_layers(self, x, styles, force_fp32=force_fp32, stop_after=stop_after,
                                        collect=collect, out_gain=out_gain, feats=feats)
        for i, name in enumerate(self.layer_names):
            last = i + 1 == len(self.layer_names)
            x = getattr(self, name).forward_styles(x, styles[name], force_fp32=force_fp32,
                                                   out_gain=out_gain if last else 1.0)
            if name in collect:
                feats[name] = x.to(torch.float32)
            if name == stop_after:
                break
        return x, feats

    def from_styles(self, styles, transform=None, force_fp32=False, impl=None):
        """Render images [N, C, R, R] float32 from an S-space code (a dict as returned by :meth:`styles`).

        ``transform`` ([3, 3] or per-sample [N, 3, 3], NVIDIA's inverse convention) overrides the input's
        ``transform`` buffer for this call only. ``impl`` ('auto', 'fast', 'plain'; default ``self.impl``)
        picks the implementation: 'fast' is the Triton path on CUDA, 'plain' the reference ops. Misshapen
        ``styles`` or ``transform`` raise ValueError (shapes only are read from GPU tensors).
        """
        x, _ = self._run(styles, transform=transform, force_fp32=force_fp32, impl=impl, out_gain=self.output_scale)
        return x.to(torch.float32)

    def forward(self, ws, noise_mode="const", force_fp32=False, transform=None, impl=None, **_ignored):
        """ws [N, num_ws, w_dim] -> image [N, C, R, R]. ``noise_mode`` is accepted for compatibility
        (StyleGAN3 has no noise inputs). Other arguments as in :meth:`from_styles`."""
        x, _ = self._run(self.styles(ws), transform=transform, force_fp32=force_fp32, impl=impl,
                         out_gain=self.output_scale, check_styles=False)  # = from_styles(styles(ws))
        return x.to(torch.float32)

    def feature_maps(self, ws, layers: Iterable[str] | str | None = None, transform=None,
                     force_fp32=False, impl=None) -> dict[str, torch.Tensor]:
        """Outputs of the named layers (``'input'`` allowed) for ``ws``, float32 [N, C_l, H_l, H_l].

        Sizes include the layer's margin (e.g. 36 = 16 + 2 * 10 px at the start); synthesis stops after the
        last requested layer. ``layers=None`` returns every layer.
        """
        if layers is None:
            layers = self.style_names
        elif isinstance(layers, str):
            layers = [layers]
        layers = list(layers)
        unknown = [n for n in layers if n not in self.style_names]
        if unknown:
            raise KeyError(f"unknown layer(s) {unknown}; valid names: {self.style_names}")
        last = max(layers, key=self.style_names.index)
        _, feats = self._run(self.styles(ws), transform=transform, force_fp32=force_fp32, stop_after=last,
                             collect=set(layers), impl=impl, check_styles=False)
        return {name: feats[name] for name in layers}


class Generator(nn.Module):
    """StyleGAN3 generator: ``G(z, c)`` = ``G.synthesis(G.mapping(z, c))``, NVIDIA's calling conventions."""

    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs=None,
                 **synthesis_kwargs):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = int(z_dim), int(c_dim), int(w_dim)
        self.img_resolution, self.img_channels = int(img_resolution), int(img_channels)
        self.init_kwargs = dict(z_dim=self.z_dim, c_dim=self.c_dim, w_dim=self.w_dim,
                                img_resolution=self.img_resolution, img_channels=self.img_channels,
                                mapping_kwargs=dict(mapping_kwargs or {}), **synthesis_kwargs)
        self.synthesis = SynthesisNetwork(w_dim=self.w_dim, img_resolution=self.img_resolution,
                                          img_channels=self.img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=self.z_dim, c_dim=self.c_dim, w_dim=self.w_dim, num_ws=self.num_ws,
                                      **(mapping_kwargs or {}))
        self.is_random = False  # True for tiny_generator / random init: never passed off as a face model
        self.source = None  # where the weights came from (path, URL or description)
        self.weights_verified = None  # False: a file claimed trained weights that no pinned digest confirms

    def forward(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None, **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, **synthesis_kwargs)

    @property
    def device(self) -> torch.device:
        return self.mapping.w_avg.device

    def extra_repr(self):
        kind = "RANDOM WEIGHTS (not a trained model)" if self.is_random else f"weights from {self.source}"
        if not self.is_random and self.weights_verified is False and "UNVERIFIED" not in str(self.source):
            kind += " (UNVERIFIED claim)"
        return f"res={self.img_resolution} z_dim={self.z_dim} w_dim={self.w_dim} num_ws={self.num_ws}; {kind}"


# Constructor arguments of NVIDIA's configs (train.py): R doubles the channels and uses 1x1 convolutions
# with radial down-filters.
CONFIGS = {
    "T": dict(channel_base=32768, channel_max=512, conv_kernel=3, use_radial_filters=False),
    "R": dict(channel_base=65536, channel_max=1024, conv_kernel=1, use_radial_filters=True),
}


def build_generator(cfg: str = "R", resolution: int = 1024, z_dim: int = 512, w_dim: int = 512, c_dim: int = 0,
                    img_channels: int = 3, channel_scale: float = 1.0, seed: int | None = 0, device=None,
                    calibrate: bool = True, **overrides) -> Generator:
    """A generator with NVIDIA's R or T architecture and random weights (``G.is_random`` is True).

    ``channel_scale`` multiplies channel_base and channel_max (1.0 = the released architecture).
    ``calibrate`` sets the magnitude EMAs from one forward pass (on ``device``) so that images have a sensible
    range; skip it when only the architecture matters.
    """
    cfg = cfg.upper()
    if cfg not in CONFIGS:
        raise ValueError(f"cfg must be 'R' or 'T', got {cfg!r}")
    if not isinstance(resolution, (int, np.integer)) or resolution < 16 or resolution > 4096 \
            or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two in 16..4096, got {resolution!r}")
    if not (math.isfinite(float(channel_scale)) and 0 < channel_scale <= 16):
        raise ValueError(f"channel_scale must be a finite number in (0, 16], got {channel_scale!r}")
    kwargs = dict(CONFIGS[cfg])
    kwargs["channel_base"] = int(kwargs["channel_base"] * channel_scale)
    kwargs["channel_max"] = int(kwargs["channel_max"] * channel_scale)
    kwargs.update(overrides)
    kwargs.setdefault("mapping_kwargs", {"num_layers": 2})
    kwargs.setdefault("magnitude_ema_beta", 0.5 ** (32 / (20 * 1e3)))
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        G = Generator(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=resolution,
                      img_channels=img_channels, **kwargs).to(device or "cpu")
        if calibrate:
            # Untrained magnitude EMAs of 1 make activations explode through 14 layers; set them the way
            # training would, so random generators give images in a sensible range.
            _calibrate_magnitudes(G)
    G.is_random = True
    G.source = f"random init (cfg={cfg}, seed={seed})"
    return G.eval().requires_grad_(False)


@torch.no_grad()
def _calibrate_magnitudes(G: Generator, n: int = 2):
    z = torch.randn([n, G.z_dim], device=G.device)
    ws = G.mapping(z, torch.zeros([n, G.c_dim], device=G.device) if G.c_dim else None)
    G.mapping.w_avg.copy_(ws[:, 0].mean(0))
    styles = G.synthesis.styles(ws)
    x = G.synthesis.input.forward_styles(styles["input"])
    for name in G.synthesis.layer_names:
        layer = getattr(G.synthesis, name)
        layer.magnitude_ema.fill_(float(x.float().square().mean()))
        x = layer.forward_styles(x, styles[name], force_fp32=True, impl=resolve_impl("auto", x.device))


def tiny_generator(cfg: str = "R", resolution: int = 64, seed: int = 0, channel_max: int | None = None) -> Generator:
    """A small random-weight generator for tests, demos and CPU previews. It is *not* a face model.

    64 px with z_dim = w_dim = 64 and at most 64 (R) / 32 (T) channels: renders in milliseconds on a CPU.
    """
    cfg = cfg.upper()
    cmax = channel_max or (64 if cfg == "R" else 32)
    base = {"R": 1024, "T": 512}.get(cfg, 1024)
    G = build_generator(cfg, resolution=resolution, z_dim=64, w_dim=64, seed=seed,
                        channel_base=base, channel_max=cmax)
    G.source = f"tiny random generator (cfg={cfg}, {resolution}px, seed={seed}) — random weights, not a face model"
    return G
