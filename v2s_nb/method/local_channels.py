"""Section 3.4: find the S-space channels that act locally on the eyes, the nose and the mouth (eq 5-6).

For N latents and their region masks (see :func:`v2s_nb.face.region_masks`), per layer and per channel:

1. take the feature map, crop the layer's margin so the map covers exactly the image (the central
   ``sampling_rate`` samples of a ``size`` map; the last two layers have no margin),
2. min-max normalise it per image (a constant map becomes all zeros),
3. upsample it bilinearly (``align_corners=False``) to the mask size and binarise it: ``map > threshold``,
4. score it against each region: ``IoU+ = IoU(region, channel mask)``, ``IoU- = IoU(not region, channel mask)``
   ("not region" = the other regions and the background),
5. average each score over the images (an image in which the region is empty, e.g. no face found, is left
   out of that region's mean; an IoU whose union is empty is left out too),
6. keep the channel for the region when ``IoU+ >= t_fg`` and ``IoU- <= t_bg``.

The paper prints ``IoU- >= t_bg``; a channel local to a region must overlap the rest of the image *little*, so
``t_bg`` is used as an upper bound here (``docs/method.md``, section 3.4).

Which feature map belongs to an S channel? The style vector ``s_l = A_l(w_l)`` of layer ``l`` (one value per
*input* channel of ``l``) scales the feature maps that enter layer ``l``, i.e. the output of the layer before it
(the Fourier features for ``L0``). With ``maps='modulated'`` (the default) the maps scored for layer ``l`` are
those, so channel ``c`` of layer ``l`` in the result *is* entry ``c`` of ``G.synthesis.styles(ws)[l]``, which is
what the S-space mixing of section 3.6 (eq 10-12) needs. ``maps='output'`` scores the layer's own output
channels instead (indices then refer to output channels, not to S).

Defaults (heuristics; the paper gives no values; everything is kept so thresholds can be changed afterwards
without recomputing, see :meth:`ChannelSets.reselect`):

* ``layers``: ``G.synthesis.style_names[3:8]``, the layers of w+ rows 3-7 (the paper's best range).
* ``threshold = 0.5``: half-way between a channel's minimum and maximum.
* ``t_fg = 0.2``: the eyes cover ~1-2% of an FFHQ image, so even a channel sharply on both eyes rarely exceeds
  IoU+ 0.5 at the 16-32 px resolution of those layers; 0.2 keeps clearly localised channels.
* ``t_bg = 0.1``: IoU- is about the fraction of the image the channel covers outside the region; 0.1 rejects
  channels that also fire on more than ~10% of the rest of the image.

Results are cached as JSON under ``v2s_nb.weights.cache_dir() / 'channels'``, keyed by a hash of the
generator's weights, the latents, the masks and the settings that change the scores (``t_fg`` / ``t_bg`` only
select, so they are not part of the key).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import write_atomic
from ..caching import default_dir, entry_path, generator_hash, warn_unusable
from ..progress import progress_bar
from ..validate import integer

__all__ = [
    "DEFAULT_THRESHOLD", "DEFAULT_T_FG", "DEFAULT_T_BG", "ChannelSets", "Selection", "discover", "score_channels",
    "select", "default_layers", "map_layer", "crop_to_image", "normalize_maps", "binarize", "layer_maps",
    "channel_iou", "compute_scores", "generator_fingerprint", "cache_key",
]

DEFAULT_THRESHOLD = 0.5
DEFAULT_T_FG = 0.2
DEFAULT_T_BG = 0.1
#: Upper bound on elements of one upsampled chunk [batch, channels, H, W] (2**26 floats = 256 MiB).
DEFAULT_CHUNK_ELEMENTS = 2 ** 26
_FORMAT = "v2s_nb.channel_sets/1"


def _check_level(name: str, v, upper_open: bool = False) -> float:
    """``v`` as a float in [0, 1] ([0, 1) with ``upper_open``), else ValueError: outside it nothing is selected."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = float("nan")
    if not ((0.0 <= f < 1.0) if upper_open else (0.0 <= f <= 1.0)):  # also rejects NaN
        rng = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"{name} must be a finite number in {rng}, got {v!r}; pass a value in that range.")
    return f


# ----------------------------------------------------------------------------------------------- maps


def _synthesis(G):
    return getattr(G, "synthesis", G)


def default_layers(G) -> list[str]:
    """The S layers of w+ rows 3..7: ``G.synthesis.style_names[3:8]``."""
    return list(_synthesis(G).style_names[3:8])


def map_layer(G, layer: str, maps: str = "modulated") -> str:
    """Name of the feature map scored for S layer ``layer``: the map it modulates (the previous layer's output,
    ``'input'`` for the first layer) for ``maps='modulated'``, or ``layer`` itself for ``maps='output'``."""
    sy = _synthesis(G)
    names = sy.style_names
    if layer not in names:
        raise KeyError(f"unknown layer {layer!r}; valid names: {names}")
    if maps == "output":
        return layer
    if maps != "modulated":
        raise ValueError(f"maps must be 'modulated' or 'output', got {maps!r}")
    i = names.index(layer)
    if i == 0:
        raise ValueError("the 'input' styles (rotation / translation of the Fourier features) modulate no feature "
                         "map; choose synthesis layers")
    return names[i - 1]


def _crop(sy, name: str) -> int:
    """Samples to drop on each side of map ``name`` so that it covers the image exactly."""
    if name == "input":
        size, rate = int(sy.input.size[0]), float(sy.input.sampling_rate)
    else:
        if name in sy.layer_names[-2:]:
            return 0  # the last two layers are rendered at image size, without margin
        layer = getattr(sy, name)
        size, rate = int(layer.out_size[0]), float(layer.out_sampling_rate)
    extra = size - rate
    if extra < 0 or extra % 2:
        raise ValueError(f"layer {name}: size {size} and sampling rate {rate} give no centred crop")
    return int(extra // 2)


def crop_to_image(G, name: str, x: torch.Tensor) -> torch.Tensor:
    """Crop map(s) ``x`` [..., H, W] of layer ``name`` to the part that covers the image (margin removed)."""
    m = _crop(_synthesis(G), name)
    return x[..., m:x.shape[-2] - m, m:x.shape[-1] - m] if m else x


def normalize_maps(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map over its last two axes to [0, 1]; a constant map becomes all zeros."""
    x = x.to(torch.float32)
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    rng = hi - lo
    return torch.where(rng > 0, (x - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.zeros_like(x))


def binarize(norm: torch.Tensor, size, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """Normalised maps [N, C, h, w] -> bool [N, C, H, W]: bilinear upsampling to ``size`` = (H, W), then
    ``> threshold`` (strict, so a constant map - all zeros - is never 'on')."""
    threshold = _check_level("threshold", threshold, upper_open=True)  # maps are in [0, 1]: 1 selects nothing
    h, w = (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))
    if tuple(norm.shape[-2:]) != (h, w):
        norm = F.interpolate(norm, size=(h, w), mode="bilinear", align_corners=False)
    return norm > threshold


@torch.no_grad()
def layer_maps(G, ws, layers: Sequence[str] | str, maps: str = "modulated", normalize: bool = True
               ) -> dict[str, torch.Tensor]:
    """Feature maps scored for each S layer of ``layers``: {layer: float32 [N, C, h, w]}, margin cropped and
    (``normalize=True``) min-max normalised per image and channel. One synthesis pass."""
    if isinstance(layers, str):
        layers = [layers]
    sources = {layer: map_layer(G, layer, maps) for layer in layers}
    sy = _synthesis(G)
    dev = sy.device
    feats = sy.feature_maps(torch.as_tensor(ws).to(dev), sorted(set(sources.values()), key=sy.style_names.index))
    out = {}
    for layer, src in sources.items():
        x = crop_to_image(G, src, feats[src])
        out[layer] = normalize_maps(x) if normalize else x
    return out


# ----------------------------------------------------------------------------------------------- scoring


class _BatchMasks:
    """Region masks of one image batch on the device: sizes, areas, and the flat pixel indices of each region."""

    def __init__(self, masks: Mapping[str, np.ndarray], regions: Sequence[str], index=slice(None), device="cpu"):
        m = np.stack([np.asarray(masks[r], bool)[index] for r in regions], axis=1)  # [B, R, H, W]
        if m.ndim != 4:
            raise ValueError(f"masks must be bool [N, H, W] per region, got {m.shape[0:1] + m.shape[2:]}")
        self.n, self.num_regions = m.shape[:2]
        self.size = tuple(m.shape[-2:])
        self.hw = self.size[0] * self.size[1]
        flat = torch.from_numpy(m.reshape(self.n, self.num_regions, -1))
        self.area = flat.sum(-1).to(device, torch.float64)  # [B, R]
        self.has_region = (self.area > 0)[:, None, :]  # [B, 1, R]
        self.index = [[torch.nonzero(flat[i, r]).squeeze(1).to(device) for r in range(self.num_regions)]
                      for i in range(self.n)]


class _Accumulator:
    """Running sums (on the maps' device) of per-image IoU+ / IoU- per region and channel, for the mean."""

    def __init__(self, num_regions: int, num_channels: int, device="cpu"):
        z = lambda: torch.zeros((num_regions, num_channels), dtype=torch.float64, device=device)  # noqa: E731
        self.pos_sum, self.pos_n, self.neg_sum, self.neg_n = z(), z(), z(), z()

    @torch.no_grad()
    def update(self, norm: torch.Tensor, bm: _BatchMasks, threshold: float,
               chunk_elements: int = DEFAULT_CHUNK_ELEMENTS):
        """``norm`` [B, C, h, w] normalised maps of the batch whose masks are ``bm``."""
        b, c = norm.shape[:2]
        if b != bm.n:
            raise ValueError(f"{b} images of maps but {bm.n} of masks")
        step = max(1, int(chunk_elements) // max(1, b * bm.hw))
        ar = bm.area[:, None, :]  # [B, 1, R]
        for s in range(0, c, step):
            on = binarize(norm[:, s:s + step], bm.size, threshold).flatten(2)  # bool [B, c, HW]
            area_c = on.sum(-1, dtype=torch.float64)[..., None]  # [B, c, 1]
            # pixels of a channel mask inside each region: gather the (small) regions instead of a K = HW product
            inter = torch.stack([torch.stack([on[i][:, idx].sum(-1, dtype=torch.float64) for idx in bm.index[i]], -1)
                                 for i in range(b)])  # [B, c, R]
            union_pos = area_c + ar - inter
            inter_neg = area_c - inter
            union_neg = area_c + (bm.hw - ar) - inter_neg
            ok_pos = (union_pos > 0) & bm.has_region
            ok_neg = (union_neg > 0) & bm.has_region
            pos = torch.where(ok_pos, inter / union_pos.clamp_min(1), torch.zeros_like(inter))
            neg = torch.where(ok_neg, inter_neg / union_neg.clamp_min(1), torch.zeros_like(inter))
            cols = slice(s, s + on.shape[1])
            self.pos_sum[:, cols] += pos.sum(0).T
            self.pos_n[:, cols] += ok_pos.sum(0).T
            self.neg_sum[:, cols] += neg.sum(0).T
            self.neg_n[:, cols] += ok_neg.sum(0).T

    def result(self):
        with np.errstate(invalid="ignore", divide="ignore"):
            pos = self.pos_sum.cpu().numpy() / self.pos_n.cpu().numpy()
            neg = self.neg_sum.cpu().numpy() / self.neg_n.cpu().numpy()
        return pos, neg


def _regions_of(masks: Mapping[str, np.ndarray], regions) -> list[str]:
    if regions is None:
        regions = [r for r in masks if r != "rest"]
    regions = [regions] if isinstance(regions, str) else list(regions)  # 'eyes' is one region, not 4 letters
    missing = [r for r in regions if r not in masks]
    if missing:
        raise KeyError(f"masks has no region(s) {missing}; it has {list(masks)}")
    if not regions:
        raise ValueError("no region to score (masks holds only 'rest')")
    return regions


def score_channels(maps, masks: Mapping[str, np.ndarray], threshold: float = DEFAULT_THRESHOLD, regions=None,
                   normalized: bool = False, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> dict[str, dict]:
    """Mean IoU+ / IoU- of every channel of given feature maps (the lower-level step of :func:`discover`).

    Args:
        maps: float [N, C, h, w] feature maps already aligned with the images (margins cropped).
        masks: {region: bool [N, H, W]} in image pixels; ``'rest'`` is skipped unless named in ``regions``.
        threshold: binarisation level of the min-max normalised, upsampled maps (``map > threshold``).
        normalized: the maps are already min-max normalised.
    Returns:
        ``{region: {'iou_pos': float64 [C], 'iou_neg': float64 [C]}}``; NaN where no image counted.
    """
    threshold = _check_level("threshold", threshold, upper_open=True)
    regions = _regions_of(masks, regions)
    x = torch.as_tensor(maps)
    if x.ndim != 4:
        raise ValueError(f"maps must be [N, C, h, w], got {tuple(x.shape)}")
    bm = _BatchMasks(masks, regions, device=x.device)
    acc = _Accumulator(len(regions), x.shape[1], device=x.device)
    acc.update(x.float() if normalized else normalize_maps(x), bm, threshold, chunk_elements)
    pos, neg = acc.result()
    return {r: {"iou_pos": pos[i], "iou_neg": neg[i]} for i, r in enumerate(regions)}


def select(iou_pos, iou_neg, t_fg: float = DEFAULT_T_FG, t_bg: float = DEFAULT_T_BG) -> np.ndarray:
    """Indices (int64 [K]) of channels with ``IoU+ >= t_fg`` and ``IoU- <= t_bg``; ``iou_pos`` / ``iou_neg``: one
    layer's scores, float [C] in [0, 1] (NaN scores never pass)."""
    t_fg, t_bg = _check_level("t_fg", t_fg), _check_level("t_bg", t_bg)  # IoUs are in [0, 1]
    p, n = np.asarray(iou_pos, np.float64), np.asarray(iou_neg, np.float64)
    with np.errstate(invalid="ignore"):
        return np.flatnonzero((p >= t_fg) & (n <= t_bg))


@torch.no_grad()
def channel_iou(norm_map, masks: Mapping[str, np.ndarray], region: str, threshold: float = DEFAULT_THRESHOLD,
                index: int = 0) -> tuple[float, float]:
    """(IoU+, IoU-) of one normalised map [h, w] against ``masks[region][index]`` (for the live view)."""
    x = torch.as_tensor(norm_map, dtype=torch.float32).reshape(1, 1, *np.shape(norm_map)[-2:])
    one = {region: np.asarray(masks[region])[index:index + 1]}
    s = score_channels(x, one, threshold, regions=[region], normalized=True)[region]
    return float(s["iou_pos"][0]), float(s["iou_neg"][0])


# ----------------------------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class Selection:
    """The selected channels of one layer for one region, with their mean scores (sorted by channel)."""

    channels: np.ndarray
    iou_pos: np.ndarray
    iou_neg: np.ndarray

    def __len__(self) -> int:
        return len(self.channels)


class ChannelSets:
    """Per region and layer: every channel's mean IoU+ / IoU-, and the channels that pass the thresholds.

    * ``cs[region][layer]`` / :meth:`get` -> :class:`Selection` (channels, iou_pos, iou_neg);
      :meth:`channels` -> the indices only.
    * :meth:`union` -> {layer: sorted indices} over regions (the set ``X_s`` of eq 10); :meth:`channel_mask`
      -> {layer: bool [C]}.
    * ``scores[region][layer]`` -> {'iou_pos': [C], 'iou_neg': [C]} for *all* channels;
      :meth:`reselect` applies other thresholds without recomputing.
    * ``settings``: layers, map_layers, maps, threshold, t_fg, t_bg, regions, n_images, mask_size, generator,
      key (cache key), seconds (compute time).
    """

    def __init__(self, scores: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]], settings: Mapping):
        self.scores = {r: {l: {k: np.asarray(v, np.float64) for k, v in d.items()} for l, d in by_l.items()}
                       for r, by_l in scores.items()}
        self.settings = dict(settings)
        self.settings.setdefault("t_fg", DEFAULT_T_FG)
        self.settings.setdefault("t_bg", DEFAULT_T_BG)
        self.from_cache = False
        self._sel = {}
        for r, by_l in self.scores.items():
            self._sel[r] = {}
            for l, d in by_l.items():
                idx = select(d["iou_pos"], d["iou_neg"], self.t_fg, self.t_bg)
                self._sel[r][l] = Selection(idx, d["iou_pos"][idx], d["iou_neg"][idx])

    t_fg = property(lambda self: float(self.settings["t_fg"]))
    t_bg = property(lambda self: float(self.settings["t_bg"]))
    threshold = property(lambda self: float(self.settings["threshold"]))

    @property
    def regions(self) -> list[str]:
        return list(self.scores)

    @property
    def layers(self) -> list[str]:
        return list(self.settings.get("layers") or next(iter(self.scores.values()), {}).keys())

    def _of(self, region: str) -> dict[str, Selection]:
        if region not in self._sel:
            raise KeyError(f"no region {region!r} in these channel sets; they have {self.regions} (discover() "
                           "scores the regions of its masks)")
        return self._sel[region]

    def __getitem__(self, region: str) -> dict[str, Selection]:
        return self._of(region)

    def get(self, region: str, layer: str) -> Selection:
        by_layer = self._of(region)
        if layer not in by_layer:
            raise KeyError(f"no layer {layer!r} in these channel sets; they have {self.layers}")
        return by_layer[layer]

    def channels(self, region: str, layer: str) -> np.ndarray:
        return self.get(region, layer).channels

    def num_channels(self, layer: str) -> int:
        return len(next(iter(self.scores.values()))[layer]["iou_pos"])

    def union(self, regions: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """{layer: sorted channel indices selected for any of ``regions`` (default: all)}."""
        regions = self.regions if regions is None else [regions] if isinstance(regions, str) else list(regions)
        return {l: np.unique(np.concatenate([self.channels(r, l) for r in regions]).astype(np.int64))
                for l in self.layers}

    def channel_mask(self, regions: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """{layer: bool [C]}, True for the channels of :meth:`union`."""
        out = {}
        for l, idx in self.union(regions).items():
            m = np.zeros(self.num_channels(l), bool)
            m[idx] = True
            out[l] = m
        return out

    def rows(self, region: str | None = None) -> list[tuple[str, str, int, float, float]]:
        """(region, layer, channel, IoU+, IoU-) of every selected channel, best IoU+ first per region."""
        out = []
        for r in ([region] if region else self.regions):
            rr = [(r, l, int(c), float(p), float(n)) for l in self.layers
                  for c, p, n in zip(*dataclasses.astuple(self.get(r, l)))]
            out += sorted(rr, key=lambda t: -t[3])
        return out

    def reselect(self, t_fg: float | None = None, t_bg: float | None = None) -> "ChannelSets":
        """The same scores with other thresholds (no recomputation)."""
        s = dict(self.settings)
        s["t_fg"] = self.t_fg if t_fg is None else float(t_fg)
        s["t_bg"] = self.t_bg if t_bg is None else float(t_bg)
        out = ChannelSets(self.scores, s)
        out.from_cache = self.from_cache  # the scores' origin, which the new thresholds don't change
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        return {r: {l: len(s) for l, s in by_l.items()} for r, by_l in self._sel.items()}

    def __repr__(self) -> str:
        lines = [f"ChannelSets(t_fg={self.t_fg:g}, t_bg={self.t_bg:g}, threshold={self.threshold:g}, "
                 f"maps={self.settings.get('maps')!r}, {self.settings.get('n_images')} images)"]
        for r, by_l in self.counts().items():
            per_layer = ", ".join(f"{l} {n}" for l, n in by_l.items())
            lines.append(f"  {r}: {per_layer}  (total {sum(by_l.values())})")
        return "\n".join(lines)

    # -- persistence
    def to_dict(self) -> dict:
        def lst(a):
            return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, np.float64)]
        return {"format": _FORMAT, "settings": self.settings,
                "scores": {r: {l: {k: lst(v) for k, v in d.items()} for l, d in by_l.items()}
                           for r, by_l in self.scores.items()},
                "selected": {r: {l: s.channels.tolist() for l, s in by_l.items()} for r, by_l in self._sel.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ChannelSets":
        if d.get("format") != _FORMAT:
            raise ValueError(f"not a ChannelSets file (format {d.get('format')!r}, expected {_FORMAT!r})")
        scores = {r: {l: {k: np.array([np.nan if v is None else v for v in vals], np.float64)
                          for k, vals in dd.items()} for l, dd in by_l.items()} for r, by_l in d["scores"].items()}
        return cls(scores, d["settings"])

    def save(self, path) -> Path:
        """Write JSON (atomically); returns the path."""
        text = json.dumps(self.to_dict(), default=_json_default)
        return write_atomic(path, lambda f: f.write(text.encode()))

    @classmethod
    def load(cls, path) -> "ChannelSets":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ----------------------------------------------------------------------------------------------- cache


#: The generator's weight hash (the package's one: :func:`v2s_nb.caching.generator_hash`), under its old name here.
generator_fingerprint = generator_hash


def cache_key(G, ws, masks: Mapping[str, np.ndarray], settings: Mapping) -> str:
    """Hash (hex str) of what determines the scores: generator weights, ws [N, num_ws, w_dim], masks {region: bool
    [N, H, W]} and the scoring settings."""
    h = hashlib.sha256(_FORMAT.encode())
    h.update(generator_fingerprint(G).encode())
    w = torch.as_tensor(ws).detach().to("cpu", torch.float32).contiguous()
    h.update(str(tuple(w.shape)).encode())
    h.update(w.numpy().tobytes())
    for r in sorted(masks):
        m = np.asarray(masks[r], bool)
        h.update(f"{r}{m.shape}".encode())
        h.update(np.packbits(m).tobytes())
    h.update(json.dumps({k: settings[k] for k in sorted(settings)}, sort_keys=True).encode())
    return h.hexdigest()


def _cache_file(cache, key: str) -> Path:
    return entry_path(default_dir("channels") if cache is True else cache, "channels", key, ".json")


# ----------------------------------------------------------------------------------------------- discovery


@torch.no_grad()
def compute_scores(G, ws, masks, layers, regions, threshold, maps="modulated", batch_size=4,
                   progress=True, chunk_elements=DEFAULT_CHUNK_ELEMENTS) -> dict:
    """{region: {layer: {'iou_pos', 'iou_neg'}}}, each float [C] in [0, 1], for ``ws`` [N, num_ws, w_dim] and
    ``masks`` {region: bool [N, H, W]} as in :func:`discover`: one synthesis pass per image batch, then layer by
    layer, channel chunk by channel chunk (memory bounded by ``batch_size`` and ``chunk_elements``)."""
    batch_size = integer(batch_size, "batch_size (images per synthesis pass)", 1, 4096)
    sy = _synthesis(G)
    dev = sy.device
    ws = torch.as_tensor(ws)
    n = ws.shape[0]
    sources = {layer: map_layer(G, layer, maps) for layer in layers}
    needed = sorted(set(sources.values()), key=sy.style_names.index)
    accs: dict[str, _Accumulator] = {}
    bar = progress_bar(total=n * len(layers), desc="channel discovery", unit="map", enabled=progress)
    try:
        for s in range(0, n, batch_size):
            wb = ws[s:s + batch_size].to(dev, torch.float32)
            bm = _BatchMasks(masks, regions, slice(s, s + len(wb)), device=dev)
            feats = sy.feature_maps(wb, needed)
            for layer in layers:
                src = sources[layer]
                x = normalize_maps(crop_to_image(G, src, feats[src]))
                if layer not in accs:
                    accs[layer] = _Accumulator(len(regions), x.shape[1], device=dev)
                accs[layer].update(x, bm, threshold, chunk_elements)
                del x
                if bar is not None:
                    bar.update(len(wb))
            del feats
    finally:
        if bar is not None:
            bar.close()
    out = {r: {} for r in regions}
    for layer, acc in accs.items():
        pos, neg = acc.result()
        for i, r in enumerate(regions):
            out[r][layer] = {"iou_pos": pos[i], "iou_neg": neg[i]}
    return out


def discover(G, ws, masks: Mapping[str, np.ndarray], layers: Sequence[str] | None = None,
             t_fg: float = DEFAULT_T_FG, t_bg: float = DEFAULT_T_BG, threshold: float = DEFAULT_THRESHOLD,
             batch_size: int = 4, progress: bool = True, cache: bool | str | os.PathLike = True,
             regions: Sequence[str] | None = None, maps: str = "modulated",
             chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> ChannelSets:
    """Channels of each layer whose maps cover one face region (eq 5-6 of the paper), as :class:`ChannelSets`.

    Args:
        G: a :class:`~v2s_nb.stylegan3.Generator` (or its ``synthesis``).
        ws: [N, num_ws, w_dim] latents of the images the masks describe (rendered by ``G``).
        masks: {region: bool [N, H, W]} in image pixels, e.g. :func:`v2s_nb.face.region_masks` of the rendered
            images; every key except ``'rest'`` is a region to score (or name them with ``regions``).
        layers: S layer names (default :func:`default_layers`: w+ rows 3-7); any list of synthesis layers.
        t_fg: keep channels with mean IoU+ >= t_fg.       t_bg: ... and mean IoU- <= t_bg (an upper bound);
            both in [0, 1].
        threshold: binarisation level of the normalised, upsampled maps (``> threshold``), in [0, 1).
        batch_size: images per synthesis pass.     chunk_elements: bound on one upsampled chunk's size.
        cache: True = ``cache_dir()/channels``, a folder path, or False. A hit returns the stored scores with
            ``t_fg`` / ``t_bg`` applied and ``.from_cache = True``.
        maps: ``'modulated'`` (the maps each S channel scales; indices are S indices) or ``'output'``.
    """
    # before any synthesis or cache lookup
    t_fg, t_bg = _check_level("t_fg", t_fg), _check_level("t_bg", t_bg)
    threshold = _check_level("threshold", threshold, upper_open=True)
    # a negative batch scored nothing (an empty range), silently; 0 failed deep inside; 4096 as the CLI allows
    batch_size = integer(batch_size, "batch_size (images per synthesis pass)", 1, 4096)
    sy = _synthesis(G)
    layers = default_layers(G) if layers is None else ([layers] if isinstance(layers, str) else list(layers))
    for layer in layers:
        map_layer(G, layer, maps)  # validates names early
    regions = _regions_of(masks, regions)
    ws = torch.as_tensor(ws)
    if ws.ndim != 3 or ws.shape[1] != sy.num_ws:
        raise ValueError(f"ws must be [N, {sy.num_ws}, w_dim], got {tuple(ws.shape)}")
    n = ws.shape[0]
    if n == 0:
        raise ValueError("ws has no codes (N = 0): give the codes of the images the masks describe")
    if not torch.isfinite(ws).all():  # NaN maps score no channel, and that empty result was cached
        bad = (~torch.isfinite(ws.reshape(n, -1)).all(1)).nonzero().flatten().tolist()
        raise ValueError(f"ws has NaN or infinite values in code(s) {bad[:10]}: a diverged inversion? Invert "
                         "those images again")
    for r in regions:
        if np.shape(masks[r])[0] != n or np.ndim(masks[r]) != 3:
            raise ValueError(f"masks[{r!r}] must be bool [{n}, H, W], got shape {np.shape(masks[r])}")
    mask_size = list(np.shape(masks[regions[0]])[1:])
    settings = {"layers": layers, "map_layers": {l: map_layer(G, l, maps) for l in layers}, "maps": maps,
                "threshold": float(threshold), "regions": regions, "n_images": int(n), "mask_size": mask_size}
    key = cache_key(G, ws, {r: masks[r] for r in regions}, settings) if cache else None
    path = _cache_file(cache, key) if cache else None
    if path is not None and path.is_file():
        try:
            cs = ChannelSets.load(path).reselect(t_fg, t_bg)
            if cs.settings.get("key") == key:
                cs.from_cache = True
                return cs
            warn_unusable(path, "made with other settings (its stored key differs)")
        except (ValueError, KeyError, OSError, json.JSONDecodeError) as e:
            warn_unusable(path, f"unreadable ({type(e).__name__}: {str(e)[:100]})")
    t0 = time.perf_counter()
    scores = compute_scores(G, ws, masks, layers, regions, float(threshold), maps, int(batch_size), progress,
                            int(chunk_elements))
    settings.update({"t_fg": float(t_fg), "t_bg": float(t_bg), "key": key,
                     "generator": str(getattr(G, "source", None)), "seconds": time.perf_counter() - t0})
    cs = ChannelSets(scores, settings)
    if path is not None:
        try:
            cs.save(path)
        except OSError:
            pass  # read-only cache: the result is still returned
    return cs
