"""A generator from a bare state dict: the architecture is read from the tensors' names and shapes.

Plain ``torch.save``-ed state dicts of NVIDIA's StyleGAN3 generator (for instance the ``decoder.*`` tensors of the
ReStyle encoders released with stylegan3-editing, or its converted ``sg3-*.pt`` generators) carry no constructor
arguments. :func:`generator_kwargs_from_state_dict` recovers them:

* ``z_dim``, ``w_dim``, ``c_dim`` and the mapping depth from ``mapping.fc*`` / ``mapping.embed``;
* the synthesis depth, output resolution and image channels from the layer names ``synthesis.L{i}_{size}_{ch}``;
* R or T from the convolution kernel (1x1 for R, 3x3 for T) and radial down-filters (2-D ``down_filter``);
* ``channel_base`` / ``channel_max`` as values that reproduce every layer's channel count under StyleGAN3's
  schedule ``rint(min(channel_base / 2 / cutoff, channel_max))``.

The remaining arguments take NVIDIA's defaults; the rebuilt network must then have exactly the stored names and
shapes, otherwise :class:`~v2s_nb.stylegan3.snapshot.SnapshotError` says which tensor differs.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch

from .networks import Generator
from .snapshot import SnapshotError, check_finite

_LAYER = re.compile(r"^synthesis\.L(\d+)_(\d+)_(\d+)\.weight$")


def _cutoffs(resolution: int, num_layers: int, num_critical: int = 2, first_cutoff: float = 2) -> np.ndarray:
    """Per-layer cutoff frequencies (cycles per image) of the StyleGAN3 schedule (as SynthesisNetwork builds)."""
    last_cutoff = resolution / 2
    exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
    return first_cutoff * (last_cutoff / first_cutoff) ** exponents


def _channel_base(channels: list[int], cutoffs: np.ndarray, channel_max: int, where: str) -> int:
    """A channel_base for which ``rint(min(base / 2 / cutoff, channel_max))`` gives ``channels`` (ToRGB excluded)."""
    lo, hi = 0.0, math.inf
    for c, f in zip(channels, cutoffs):
        if c < channel_max:  # uncapped: c = rint(base / (2 f)) -> base in [(c - .5) 2f, (c + .5) 2f]
            lo, hi = max(lo, (c - 0.5) * 2 * f), min(hi, (c + 0.5) * 2 * f)
    if not math.isfinite(hi):  # every layer at the cap: any base with base / (2 f) >= cap for all layers
        lo = hi = channel_max * 2 * float(cutoffs[len(channels) - 1])
    candidates = [2 ** k for k in range(4, 24)] + [int(math.ceil(lo)), int(round((lo + hi) / 2))]
    for base in candidates:
        got = [int(np.rint(min(base / 2 / f, channel_max))) for f in cutoffs[:len(channels)]]
        if got == channels:
            return base
    raise SnapshotError(f"{where}: the layers' channel counts {channels} do not follow StyleGAN3's channel "
                        f"schedule for any channel_base; not a StyleGAN3 generator this loader can rebuild.")


def generator_kwargs_from_state_dict(sd: dict, where: str = "state dict") -> dict:
    """Constructor arguments of :class:`Generator` that fit the tensors of ``sd`` (NVIDIA's names, no prefix)."""
    layers = {}
    for key in sd:
        m = _LAYER.match(key)
        if m:
            layers[int(m.group(1))] = (int(m.group(2)), int(m.group(3)), key)
    if not layers or "synthesis.input.weight" not in sd or "mapping.fc0.weight" not in sd:
        sample = sorted(sd)[:4]
        raise SnapshotError(f"{where} is not a StyleGAN3 generator state dict (no synthesis.L*_*_* layers / "
                            f"synthesis.input / mapping.fc0; keys start {sample}). StyleGAN2 keys look like "
                            f"'synthesis.b4.*' and are not supported.")
    n = max(layers) + 1
    if sorted(layers) != list(range(n)) or n < 4:
        raise SnapshotError(f"{where}: synthesis layers {sorted(layers)} are not L0..L{n - 1}.")
    num_layers = n - 1
    resolution, img_channels = layers[num_layers][0], layers[num_layers][1]
    if resolution < 16 or resolution & (resolution - 1):
        raise SnapshotError(f"{where}: output layer {layers[num_layers][2]} implies resolution {resolution}, "
                            f"not a power of two >= 16.")
    kernels = {int(sd[layers[i][2]].shape[-1]) for i in range(num_layers)}
    if len(kernels) != 1:
        raise SnapshotError(f"{where}: mixed convolution kernels {sorted(kernels)} across synthesis layers.")
    conv_kernel = kernels.pop()
    radial = any(torch.as_tensor(v).ndim == 2 for k, v in sd.items() if k.endswith(".down_filter"))
    channels = [int(sd["synthesis.input.weight"].shape[0])] + [layers[i][1] for i in range(num_layers)]
    # channels[k] is the output width of layer k (the input's width for k = 0 equals layer 0's input).
    layer_channels = [layers[i][1] for i in range(num_layers)]
    channel_max = max(layer_channels)
    cutoffs = _cutoffs(resolution, num_layers)
    base = _channel_base(layer_channels, cutoffs, channel_max, where)
    if channels[0] != int(np.rint(min(base / 2 / cutoffs[0], channel_max))):
        raise SnapshotError(f"{where}: synthesis.input has {channels[0]} channels, layer 0 expects "
                            f"{layer_channels[0]}.")

    mapping_layers = 0
    while f"mapping.fc{mapping_layers}.weight" in sd:
        mapping_layers += 1
    w_dim = int(sd[f"mapping.fc{mapping_layers - 1}.weight"].shape[0])
    c_dim = int(sd["mapping.embed.weight"].shape[1]) if "mapping.embed.weight" in sd else 0
    z_dim = int(sd["mapping.fc0.weight"].shape[1]) - (w_dim if c_dim else 0)
    return dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=resolution, img_channels=img_channels,
                mapping_kwargs={"num_layers": mapping_layers}, channel_base=base, channel_max=channel_max,
                num_layers=num_layers, conv_kernel=conv_kernel, use_radial_filters=radial,
                magnitude_ema_beta=0.5 ** (32 / (20 * 1e3)))


def generator_from_state_dict(sd: dict, where: str = "state dict", skip: tuple[str, ...] = ()) -> Generator:
    """Build a :class:`Generator` whose architecture is read from ``sd`` and load every tensor of it.

    Args:
        sd: NVIDIA-named tensors (``mapping.fc0.weight``, ``synthesis.L0_36_1024.weight``, ...), CPU or not.
        where: how to name the source in error messages (a path).
        skip: keys left at the rebuilt network's own value (e.g. ``'synthesis.input.transform'``: identity).
    Returns:
        The generator (float32, CPU, eval mode, ``requires_grad`` off, ``is_random`` False).
    Raises:
        SnapshotError: the tensors are not a StyleGAN3 generator, do not match the rebuilt architecture
            (the message names the first differing tensors), or hold NaN / infinite values.
    """
    kwargs = generator_kwargs_from_state_dict(sd, where)
    with torch.random.fork_rng(devices=[]):  # the constructor's random init is overwritten below
        G = Generator(**kwargs)
    ours = G.state_dict()
    unexpected = sorted(k for k in sd if k not in ours)
    missing = sorted(k for k in ours if k not in sd and k not in skip)
    wrong = sorted(k for k in sd if k in ours and tuple(sd[k].shape) != tuple(ours[k].shape))
    if unexpected or missing or wrong:
        detail = "; ".join(p for p in (
            f"unexpected {unexpected[:3]}" if unexpected else "", f"missing {missing[:3]}" if missing else "",
            "shapes " + ", ".join(f"{k} {tuple(sd[k].shape)} vs {tuple(ours[k].shape)}" for k in wrong[:3])
            if wrong else "") if p)
        raise SnapshotError(f"{where}: the tensors do not fit the StyleGAN3 architecture read from them "
                            f"({'R' if kwargs['conv_kernel'] == 1 else 'T'}, {kwargs['img_resolution']} px): {detail}.")
    load = {k: torch.as_tensor(v).detach().to("cpu", torch.float32) for k, v in sd.items() if k not in skip}
    check_finite(load, where)  # as the snapshot and checkpoint loaders: one NaN weight makes every image NaN
    G.load_state_dict(load, strict=False)
    G.is_random = False
    G.source = str(where)
    return G.eval().requires_grad_(False)
