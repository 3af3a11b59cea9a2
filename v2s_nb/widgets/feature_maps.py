"""Fig. 5 views: the S-space channels found by :func:`v2s_nb.method.local_channels.discover`, over the image.

* :func:`plot_channel_maps` - static matplotlib figure: one row per region, the image then the selected
  channels' normalised maps over it, each titled layer / channel / IoU+ / IoU-.
* :class:`FeatureMapBrowser` (:func:`browse_feature_maps`) - ipywidgets browser: region, layer, channel and
  threshold controls; shows the map, its binary mask over the image (region outlined) and the live IoU+ / IoU-.

Views only: the maps, masks and scores come from :mod:`v2s_nb.method.local_channels`.
:meth:`FeatureMapBrowser.close` closes every widget and drops the cached maps. Stable CSS classes for
browser tests: ``v2s-fmap-browser``, ``v2s-fmap-region``, ``v2s-fmap-layer``, ``v2s-fmap-channel``,
``v2s-fmap-selected``, ``v2s-fmap-threshold``, ``v2s-fmap-map``, ``v2s-fmap-mask``, ``v2s-fmap-iou``.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F

from ..method import local_channels as lc
from ..validate import integer

__all__ = ["plot_channel_maps", "FeatureMapBrowser", "browse_feature_maps", "render_image"]


#: Most channel maps per region in :func:`plot_channel_maps` (a row of panels; more is unreadable).
MAX_PER_REGION = 64


def _codes(ws) -> torch.Tensor:
    w = torch.as_tensor(ws)
    if w.ndim != 3:
        raise ValueError(f"ws must be codes [N, num_ws, w_dim], got shape {list(w.shape)}"
                         + ("; for one code pass ws[None]" if w.ndim == 2 else ""))
    return w


def _is_channel_sets(x) -> bool:
    # by what the views use, not isinstance: a notebook's autoreload makes a second ChannelSets class
    return all(hasattr(x, a) for a in ("scores", "settings", "regions", "layers", "rows"))


def _channel_sets(channel_sets, required: bool = True):
    """The :class:`~v2s_nb.method.local_channels.ChannelSets` itself, or the one a ``v2s_nb.prepare.Channels``
    stage result holds (its ``.sets``): both are what a user has at hand after ``prepare.channels(...)``."""
    if channel_sets is None and not required:
        return None
    if _is_channel_sets(channel_sets):
        return channel_sets
    if _is_channel_sets(getattr(channel_sets, "sets", None)):  # prepare.Channels (not imported: heavy)
        return channel_sets.sets
    raise TypeError(f"channel_sets must be a local_channels.ChannelSets (from discover) or the Channels that "
                    f"v2s_nb.prepare.channels returns, got {type(channel_sets).__name__}")


def _region_masks(masks):
    """``masks`` as given ({region: bool [N, H, W]} or a RegionMasks), or a ``prepare.Channels``' ``.masks``."""
    if _is_channel_sets(getattr(masks, "sets", None)) and hasattr(masks, "masks"):
        return masks.masks
    return masks


def _image(image) -> np.ndarray:
    """uint8 [H, W, 3] from one picture in any form the player takes (:func:`v2s_nb.video.as_rgb_uint8`: uint8,
    float in [0, 1], grey [H, W], RGBA, torch or numpy); what it can't read is refused there with the fix
    (channel-first or [-1, 1] generator output: ``v2s_nb.images.to_uint8(x)``)."""
    from ..video import as_rgb_uint8

    rgb = as_rgb_uint8(image, allow_single_image=True, name="image")
    if len(rgb) != 1:
        shape = tuple(np.shape(image))
        grey = " (for one grey picture [H, W, 1] pass x[..., 0])" if shape[-1:] == (1,) else ""
        raise ValueError(f"image must be one picture [H, W, 3] (the image of ws[index]), got shape {shape}, read "
                         f"as {len(rgb)} frames: pass that one image (e.g. images[index]){grey}")
    return rgb[0]


def _checked_index(index, n: int) -> int:
    """``index`` as 0..n-1; negative ones count from the end, as in Python (and the tuner's ``frame``)."""
    i = integer(index, "index")
    if not -n <= i < n:
        raise IndexError(f"index {i} is outside the {n} codes of ws: use 0..{n - 1} (negative counts from the end)")
    return i % n


def _checked_regions(regions, known, what: str) -> list[str]:
    """``regions`` as a list (one name may be given as a string), each one of ``known``."""
    regions = [regions] if isinstance(regions, str) else list(regions)
    if not regions:
        raise ValueError(f"no region to show; name some of {list(known)}")
    unknown = [r for r in regions if r not in known]
    if unknown:
        raise KeyError(f"no region(s) {unknown} in {what}; it has {list(known)}")
    return regions


def _check_mask_count(masks, regions, n: int) -> None:
    """One mask [H, W] per code of ws: the mask at ``index`` must be the one of that code's image."""
    for r in regions:
        shape = np.shape(masks[r])
        if len(shape) != 3 or shape[0] != n:
            raise ValueError(f"masks[{r!r}] has shape {list(shape)} but ws holds {n} codes: pass bool masks "
                             f"[{n}, H, W], one per code's image (e.g. the masks given to discover with these ws)")


def _check_layers(G, layers, channel_sets=None) -> None:
    """Every layer must be one of G's S layers with the channel count the channel sets scored: else they were
    discovered on another generator and their channel indices mean nothing here."""
    sy = G.synthesis
    foreign = [l for l in layers if l not in sy.style_names]
    if foreign:
        raise ValueError(f"layer(s) {foreign} are not layers of this generator: the channel sets (or layers) "
                         "come from another generator; pass that generator, or run local_channels.discover on "
                         f"this one (its layers: {sy.layer_names})")
    if channel_sets is None:
        return
    maps = channel_sets.settings.get("maps", "modulated")
    scored = {l for by_layer in channel_sets.scores.values() for l in by_layer}
    for l in layers:
        if l == "input" or l not in scored:
            continue  # 'input' has no map (layer_maps says so); other layers are shown without scores
        layer = getattr(sy, l)
        want = layer.in_channels if maps == "modulated" else layer.out_channels
        have = channel_sets.num_channels(l)
        if have != want:
            raise ValueError(f"the channel sets score {have} channels of {l} but this generator's {l} has {want}: "
                             "they were discovered on another generator; pass that generator, or run "
                             "local_channels.discover on this one")


@torch.no_grad()
def render_image(G, ws, index: int = 0) -> np.ndarray:
    """uint8 [H, W, 3] of latent ``ws[index]`` (negative ``index`` counts from the end)."""
    from ..images import to_uint8

    ws = _codes(ws)
    index = _checked_index(index, ws.shape[0])
    w = ws[index:index + 1].to(G.synthesis.device)
    return to_uint8(G.synthesis(w), range_check=False)[0]


def _upsample(norm_map, size) -> np.ndarray:
    x = torch.as_tensor(norm_map, dtype=torch.float32)[None, None]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x[0, 0].cpu().numpy()


def _outline(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask, bool)
    inner = m.copy()
    inner[1:] &= m[:-1]
    inner[:-1] &= m[1:]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


# ----------------------------------------------------------------------------------------------- static figure


def _check_mask_size(masks, regions, size) -> None:
    """Masks [N, H, W] must match the image [H, W]: else the outline and IoU pixels would not line up."""
    for r in regions:
        hw = tuple(np.shape(masks[r])[-2:])
        if hw != tuple(size):
            raise ValueError(f"masks[{r!r}] are {hw[0]}x{hw[1]} (HxW) but the image is {size[0]}x{size[1]}; "
                             "pass masks made at the image's resolution (or an image of the masks' size).")


def plot_channel_maps(G, ws, channel_sets, index: int = 0, *, image=None, masks=None,
                      regions=None, max_per_region: int = 6, alpha: float = 0.65, cmap: str = "magma",
                      panel_size: float = 1.8):
    """Fig. 5: for image ``index`` of ``ws`` (negative counts from the end), the selected channels' normalised maps
    over the image.

    ``ws``: codes [N, num_ws, w_dim]. ``channel_sets``: a ChannelSets, or the ``Channels`` of
    ``v2s_nb.prepare.channels`` (its ``.sets`` is used). One row per region (default: all of ``channel_sets``; one
    name may be a string), best mean IoU+ first, at most ``max_per_region`` (1..64) maps; the first column is the
    image with the region outlined when ``masks`` ({region: bool [N, H, W]}, one per code of ``ws``, or a
    ``Channels``) is given. ``image``: the picture of ``ws[index]``, [H, W, 3] in any form
    :func:`v2s_nb.video.as_rgb_uint8` takes (uint8, float in [0, 1], grey, RGBA; default: rendered from ``ws``).
    Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    # before any synthesis: each of these failed deep inside, or drew a wrong or huge figure
    ws = _codes(ws)
    index = _checked_index(index, ws.shape[0])
    max_per_region = integer(max_per_region, "max_per_region", 1, MAX_PER_REGION)
    channel_sets = _channel_sets(channel_sets)
    masks = _region_masks(masks)
    regions = channel_sets.regions if regions is None else _checked_regions(regions, channel_sets.regions,
                                                                            "the channel sets")
    _check_layers(G, channel_sets.layers, channel_sets)
    if masks is not None:
        _check_mask_count(masks, [r for r in regions if r in masks], ws.shape[0])
    img = render_image(G, ws, index) if image is None else _image(image)  # uint8: the gray panels use vmax=255
    size = img.shape[:2]
    if masks is not None:
        _check_mask_size(masks, [r for r in regions if r in masks], size)
    rows = {r: channel_sets.rows(r)[:max_per_region] for r in regions}
    layers = sorted({row[1] for rr in rows.values() for row in rr}, key=G.synthesis.style_names.index)
    maps = lc.layer_maps(G, ws[index:index + 1], layers,
                         maps=channel_sets.settings.get("maps", "modulated")) if layers else {}
    ncols = 1 + max(1, max((len(v) for v in rows.values()), default=1))
    fig, axes = plt.subplots(len(regions), ncols, figsize=(panel_size * ncols, panel_size * len(regions) + 0.3),
                             squeeze=False)
    gray = img.mean(axis=2)
    for i, r in enumerate(regions):
        ax = axes[i, 0]
        ax.imshow(img)
        if masks is not None and r in masks:
            edge = _outline(np.asarray(masks[r])[index])
            ax.imshow(np.dstack([np.zeros_like(edge, float)] * 3 + [edge.astype(float)]), interpolation="nearest")
        ax.set_ylabel(r, fontsize=11)
        ax.set_title("image", fontsize=8)
        for j in range(1, ncols):
            ax = axes[i, j]
            if j - 1 < len(rows[r]):
                _, layer, ch, p, n = rows[r][j - 1]
                m = _upsample(maps[layer][0, ch], size)
                ax.imshow(gray, cmap="gray", vmin=0, vmax=255)
                ax.imshow(m, cmap=cmap, vmin=0, vmax=1, alpha=alpha)
                ax.set_title(f"{layer} c{ch}\nIoU+ {p:.2f}  IoU- {n:.2f}", fontsize=7)
            elif j == 1:
                ax.text(0.5, 0.5, f"no channel with\nIoU+ >= {channel_sets.t_fg:g}\nIoU- <= {channel_sets.t_bg:g}",
                        ha="center", va="center", fontsize=7, transform=ax.transAxes)
            else:
                ax.set_axis_off()
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"normalised feature maps (threshold {channel_sets.threshold:g}, t_fg {channel_sets.t_fg:g}, "
                 f"t_bg {channel_sets.t_bg:g})", fontsize=9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- browser


def _png(rgb: np.ndarray, size: int) -> bytes:
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(rgb))
    if max(im.size) != size:
        scale = size / max(im.size)
        im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))), Image.NEAREST
                       if scale >= 2 else Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


class FeatureMapBrowser:
    """Interactive view of one image's feature maps against its region masks.

    Controls: ``region`` and ``layer`` dropdowns, ``channel`` slider (every channel of the layer), ``selected``
    dropdown (jump to a channel that ``channel_sets`` selected), ``threshold`` slider (binarisation level).
    Shows the normalised map, its binary mask over the image with the region outlined, and the live IoU+ / IoU-
    for this image (plus the mean over the discovery images from ``channel_sets``). ``iou`` holds the live
    (IoU+, IoU-) pair; ``widget`` is the ipywidgets box (the browser also displays itself in a notebook).

    ``ws``: codes [N, num_ws, w_dim]; ``masks``: {region: bool [N, H, W]} (or a RegionMasks), one per code;
    ``channel_sets``: a ChannelSets or the ``Channels`` of ``v2s_nb.prepare.channels`` (its ``.sets``; a
    ``Channels`` given as ``masks`` gives its ``.masks``, and its ``.sets`` when ``channel_sets`` is None).
    ``image``: the picture of ``ws[index]``, [H, W, 3] in any form :func:`v2s_nb.video.as_rgb_uint8` takes
    (uint8, float in [0, 1], grey, RGBA; default: rendered from ``ws``), kept as ``self.image`` (uint8 [H, W, 3]).
    """

    def __init__(self, G, ws, masks, channel_sets=None, index: int = 0, *,
                 layers=None, regions=None, threshold: float | None = None, image=None, size: int = 256,
                 cmap: str = "magma"):
        import ipywidgets as W
        import matplotlib

        # before any synthesis: each of these failed deep inside (or on a later control change)
        ws = _codes(ws)
        index = _checked_index(index, ws.shape[0])
        size = integer(size, "size (pixels of each view)", 16, 4096)
        if channel_sets is None and _region_masks(masks) is not masks:
            channel_sets = masks  # browse_feature_maps(G, ws, ch): the Channels' masks and its channel sets
        channel_sets, masks = _channel_sets(channel_sets, required=False), _region_masks(masks)
        self.G, self.masks, self.channel_sets, self.index, self.size = G, masks, channel_sets, index, size
        self.ws = ws[index:index + 1]
        self._maps_kind = channel_sets.settings.get("maps", "modulated") if channel_sets is not None else "modulated"
        if layers is None:
            layers = channel_sets.layers if channel_sets is not None else lc.default_layers(G)
        layers = [layers] if isinstance(layers, str) else list(layers)
        _check_layers(G, layers if channel_sets is None else layers + [l for l in channel_sets.layers
                                                                         if l not in layers], channel_sets)
        for l in layers:
            lc.map_layer(G, l, self._maps_kind)  # 'input' modulates no map: refused now, not when picked
        if regions is None:
            regions = channel_sets.regions if channel_sets is not None else [r for r in masks if r != "rest"]
        regions = _checked_regions(regions, masks, "masks")
        _check_mask_count(masks, regions, ws.shape[0])
        if threshold is None:
            threshold = channel_sets.threshold if channel_sets is not None else lc.DEFAULT_THRESHOLD
        threshold = lc._check_level("threshold", threshold, upper_open=True)
        self.image = render_image(G, ws, self.index) if image is None else _image(image)  # uint8 for the overlay
        _check_mask_size(masks, regions, self.image.shape[:2])
        self._cmap = matplotlib.colormaps[cmap]
        self._maps: dict[str, torch.Tensor] = {}
        self._closed = False
        self.iou = (float("nan"), float("nan"))

        self.region = W.Dropdown(options=list(regions), description="region")
        self.layer = W.Dropdown(options=list(layers), description="layer")
        self.channel = W.IntSlider(min=0, max=0, value=0, description="channel", continuous_update=False)
        self.selected = W.Dropdown(options=[("-", -1)], value=-1, description="selected")
        # max below 1: binarisation needs threshold < 1 (map > 1 is never true)
        self.threshold = W.FloatSlider(min=0.0, max=max(0.99, threshold), step=0.01, value=threshold,
                                       description="threshold", continuous_update=False, readout_format=".2f")
        self.map_view = W.Image(format="png", width=self.size, height=self.size)
        self.mask_view = W.Image(format="png", width=self.size, height=self.size)
        self.iou_label = W.HTML()
        self.map_caption = W.HTML(f"feature map, min-max normalised ({cmap}: dark = low, bright = high)")
        self.mask_caption = W.HTML("<span style='color:#d23c28'>red</span>: map above the threshold; "
                                   "<span style='color:#2a9d3a'>green</span>: region outline")
        for w, cls in ((self.region, "region"), (self.layer, "layer"), (self.channel, "channel"),
                       (self.selected, "selected"), (self.threshold, "threshold"), (self.map_view, "map"),
                       (self.mask_view, "mask"), (self.iou_label, "iou"), (self.map_caption, "map-caption"),
                       (self.mask_caption, "mask-caption")):
            w.add_class(f"v2s-fmap-{cls}")
        figure = W.HBox([W.VBox([self.map_view, self.map_caption], layout=W.Layout(width=f"{self.size + 8}px")),
                         W.VBox([self.mask_view, self.mask_caption], layout=W.Layout(width=f"{self.size + 8}px"))])
        self.widget = W.VBox([W.HBox([self.region, self.layer]), W.HBox([self.channel, self.selected]),
                              self.threshold, figure, self.iou_label])
        self.widget.add_class("v2s-fmap-browser")

        self._busy = False
        self.region.observe(self._on_layer, names="value")
        self.layer.observe(self._on_layer, names="value")
        self.channel.observe(self._on_view, names="value")
        self.threshold.observe(self._on_view, names="value")
        self.selected.observe(self._on_selected, names="value")
        self._on_layer()

    # -- data (computed by the method module)
    def maps(self, layer: str) -> torch.Tensor:
        """Normalised maps [C, h, w] of ``layer`` for this image (computed once per layer)."""
        if layer not in self._maps:
            self._maps[layer] = lc.layer_maps(self.G, self.ws, [layer], maps=self._maps_kind)[layer][0].cpu()
        return self._maps[layer]

    # -- events
    def _on_layer(self, *_):
        x = self.maps(self.layer.value)
        self._busy = True
        try:
            self.channel.max = x.shape[0] - 1
            opts = [("-", -1)]
            cs, region, layer = self.channel_sets, self.region.value, self.layer.value
            if cs is not None and region in cs.scores and layer in cs.scores[region]:  # the browser may show more
                sel = cs.get(region, layer)
                order = np.argsort(-sel.iou_pos)
                opts += [(f"c{int(sel.channels[k])}  IoU+ {sel.iou_pos[k]:.2f}", int(sel.channels[k])) for k in order]
            self.selected.options = opts
            self.selected.value = opts[1][1] if len(opts) > 1 else -1
            if self.selected.value >= 0:
                self.channel.value = self.selected.value
        finally:
            self._busy = False
        self._on_view()

    def _on_selected(self, change):
        if not self._busy and change["new"] is not None and change["new"] >= 0:
            self.channel.value = change["new"]

    def _sync_selected(self, ch: int) -> None:
        """Keep the "selected" dropdown on the channel shown: that channel's entry if it is a selected one, else '-'."""
        value = ch if ch in {v for _, v in self.selected.options} else -1
        if self.selected.value != value:
            self._busy = True
            try:
                self.selected.value = value
            finally:
                self._busy = False

    def _on_view(self, *_):
        if self._busy:
            return
        region, layer = self.region.value, self.layer.value
        ch, thr = int(self.channel.value), float(self.threshold.value)
        self._sync_selected(ch)
        norm = self.maps(layer)[ch]
        h, w = self.image.shape[:2]
        m = _upsample(norm, (h, w))
        region_mask = np.asarray(self.masks[region])[self.index]
        self.iou = lc.channel_iou(norm, self.masks, region, thr, index=self.index)
        on = lc.binarize(torch.as_tensor(norm)[None, None], region_mask.shape, thr)[0, 0].numpy()

        heat = (self._cmap(m)[..., :3] * 255).astype(np.uint8)
        self.map_view.value = _png(heat, self.size)
        over = self.image.astype(np.float32).copy()
        over[on] = 0.45 * over[on] + 0.55 * np.array([255, 60, 40], np.float32)
        over[_outline(region_mask)] = (60, 255, 90)
        self.mask_view.value = _png(np.clip(over, 0, 255).astype(np.uint8), self.size)

        p, n = self.iou
        text = (f"<b>{region}</b> &middot; {layer} &middot; channel {ch} &middot; threshold {thr:.2f}: "
                f"<span class='v2s-iou-pos'>IoU+ {p:.3f}</span>, <span class='v2s-iou-neg'>IoU- {n:.3f}</span>")
        cs = self.channel_sets
        if cs is not None and region in cs.scores and layer in cs.scores[region]:
            d = cs.scores[region][layer]
            chosen = ch in set(cs.channels(region, layer).tolist())
            text += (f"<br>mean over {cs.settings.get('n_images')} images at threshold {cs.threshold:g}: "
                     f"IoU+ {d['iou_pos'][ch]:.3f}, IoU- {d['iou_neg'][ch]:.3f} "
                     f"({'selected' if chosen else 'not selected'} with t_fg {cs.t_fg:g}, t_bg {cs.t_bg:g})")
        self.iou_label.value = text

    def close(self) -> None:
        """Close the browser's controls and pictures and drop its cached feature maps (closing ``browser.widget``
        alone leaves the controls registered, and through them the browser and every layer's maps)."""
        from .track_viewer import _close_widgets

        _close_widgets(self.widget)
        self._maps.clear()
        self._closed = True

    def _repr_mimebundle_(self, **kwargs):
        if self._closed:
            return {"text/plain": "FeatureMapBrowser (closed)"}
        return self.widget._repr_mimebundle_(**kwargs)


def browse_feature_maps(G, ws, masks, channel_sets=None, index: int = 0, **kwargs) -> FeatureMapBrowser:
    """Build a :class:`FeatureMapBrowser` (display it by leaving it as a cell's last expression)."""
    return FeatureMapBrowser(G, ws, masks, channel_sets, index, **kwargs)
