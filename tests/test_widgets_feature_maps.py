"""Fig. 5 views: the static figure and the interactive browser (driven programmatically, no browser needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from v2s_nb.face.regions import masks_from_landmarks, template_landmarks  # noqa: E402
from v2s_nb.method.local_channels import discover  # noqa: E402
from v2s_nb.widgets.feature_maps import (FeatureMapBrowser, browse_feature_maps, plot_channel_maps,  # noqa: E402
                                         render_image)

LAYERS = ["L2_36_64", "L3_36_64"]


@pytest.fixture(scope="module")
def setup():
    from v2s_nb.stylegan3 import tiny_generator

    G = tiny_generator("R", 64)
    ws = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(3)), None)
    masks = masks_from_landmarks(np.repeat(template_landmarks(64)[None], 2, 0), 64)
    cs = discover(G, ws, masks, layers=LAYERS, t_fg=0.03, t_bg=0.5, progress=False, cache=False)
    assert sum(sum(v.values()) for v in cs.counts().values()) > 0  # something to show
    images = [render_image(G, ws, 0)]  # rendered once (synthesis is the slow part on a CPU)
    assert images[0].shape == (64, 64, 3) and images[0].dtype == np.uint8
    images.append(images[0][::-1].copy())
    return G, ws, masks, cs, images


def test_static_figure(setup):
    G, ws, masks, cs, images = setup
    fig = plot_channel_maps(G, ws, cs, index=1, image=images[1], masks=masks, max_per_region=3)
    axes = np.array(fig.axes).reshape(len(cs.regions), -1)
    assert axes.shape == (3, 4)
    titles = [ax.get_title() for ax in axes[:, 1:].ravel() if ax.get_title()]
    assert titles and all("IoU+" in t and "IoU-" in t and " c" in t for t in titles)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["eyes", "nose", "mouth"]
    row = cs.rows("mouth")[0]
    if row:
        assert axes[2, 1].get_title().startswith(f"{row[1]} c{row[2]}")
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_browser_threshold_changes_the_iou(setup):
    G, ws, masks, cs, images = setup
    b = browse_feature_maps(G, ws, masks, cs, index=0, image=images[0])
    assert isinstance(b, FeatureMapBrowser)
    classes = {w: set(w._dom_classes) for w in (b.region, b.layer, b.channel, b.selected, b.threshold, b.map_view,
                                               b.mask_view, b.iou_label, b.widget)}
    assert {"v2s-fmap-threshold"} <= classes[b.threshold] and {"v2s-fmap-browser"} <= classes[b.widget]
    assert b.threshold.value == cs.threshold and b.channel.max == 63
    assert b.map_view.value[:4] == b"\x89PNG" and b.mask_view.value[:4] == b"\x89PNG"

    b.region.value = "mouth"
    b.channel.value = 5
    b.threshold.value = 0.2
    low_iou, low_text, low_png = b.iou, b.iou_label.value, b.mask_view.value
    b.threshold.value = 0.9
    assert b.iou != low_iou and b.iou_label.value != low_text and b.mask_view.value != low_png
    assert "threshold 0.90" in b.iou_label.value and f"IoU+ {b.iou[0]:.3f}" in b.iou_label.value
    assert b.iou[1] < low_iou[1]  # a higher threshold switches fewer pixels on outside the mouth


def test_browser_layer_and_selected_channels(setup):
    G, ws, masks, cs, images = setup
    b = FeatureMapBrowser(G, ws, masks, cs, image=images[0])
    for region in cs.regions:
        b.region.value = region
        for layer in LAYERS:
            b.layer.value = layer
            chosen = cs.channels(region, layer).tolist()
            assert sorted(v for _, v in b.selected.options if v >= 0) == sorted(chosen)
            if chosen:  # jumping to a selected channel moves the slider and says so
                b.selected.value = chosen[-1]
                assert b.channel.value == chosen[-1] and "(selected" in b.iou_label.value
    # without channel sets: every channel of the default layers can still be browsed
    plain = FeatureMapBrowser(G, ws, masks, layers=LAYERS, image=images[0])
    assert list(plain.region.options) == ["eyes", "nose", "mouth"] and "mean over" not in plain.iou_label.value


def test_browser_selected_follows_the_slider_and_images_are_captioned(setup):
    """Moving the channel slider keeps the "selected" dropdown on the channel shown ('-' when it is not a selected
    channel), and both pictures carry a caption saying what they show."""
    G, ws, masks, cs, images = setup
    b = FeatureMapBrowser(G, ws, masks, cs, image=images[0])
    region, layer = next((r, l) for r in cs.regions for l in LAYERS if len(cs.channels(r, l)))
    b.region.value, b.layer.value = region, layer
    chosen = set(cs.channels(region, layer).tolist())
    other = next(c for c in range(b.channel.max + 1) if c not in chosen)
    b.channel.value = other
    assert b.selected.value == -1 and b.channel.value == other
    pick = sorted(chosen)[0]
    b.channel.value = pick
    assert b.selected.value == pick
    assert "normalised" in b.map_caption.value and "threshold" in b.mask_caption.value


def test_browser_shows_layers_the_channel_sets_lack(setup):
    """A layer in the browser but not in ``channel_sets`` has no selected channels (it raised KeyError)."""
    from v2s_nb.method.local_channels import ChannelSets

    G, ws, masks, cs, images = setup
    only_first = ChannelSets({r: {LAYERS[0]: d[LAYERS[0]]} for r, d in cs.scores.items()}, cs.settings)
    b = FeatureMapBrowser(G, ws, masks, only_first, layers=LAYERS, image=images[0])
    b.layer.value = LAYERS[1]
    assert list(b.selected.options) == [("-", -1)] and b.selected.value == -1
    assert "mean over" not in b.iou_label.value and np.isfinite(b.iou).all()
    assert b.threshold.max < 1  # binarisation needs threshold < 1


def test_masks_at_another_resolution_are_refused(setup):
    """Masks of another size than the image gave an IndexError (browser) or a misaligned outline (figure)."""
    G, ws, masks, cs, images = setup
    small = {k: v[:, ::2, ::2] for k, v in masks.items()}
    with pytest.raises(ValueError, match=r"masks\['eyes'\] are 32x32 .* image is 64x64"):
        FeatureMapBrowser(G, ws, small, cs, image=images[0])
    with pytest.raises(ValueError, match=r"are 32x32 .* image is 64x64"):
        plot_channel_maps(G, ws, cs, image=images[0], masks=small)


def test_bad_views_are_refused_up_front(setup):
    """An index past ws, masks of fewer images, a foreign generator, max_per_region < 1 failed deep inside (or
    drew a 960-axis figure); one region name as a string was split into letters."""
    from v2s_nb.method.local_channels import ChannelSets
    from v2s_nb.stylegan3 import tiny_generator

    G, ws, masks, cs, images = setup
    for index in (2, -3):
        with pytest.raises(IndexError, match=r"index -?\d is outside the 2 codes of ws: use 0..1"):
            FeatureMapBrowser(G, ws, masks, cs, index=index, image=images[0])
        with pytest.raises(IndexError, match="outside the 2 codes"):
            plot_channel_maps(G, ws, cs, index=index, image=images[0])
    one = {k: v[:1] for k, v in masks.items()}
    with pytest.raises(ValueError, match=r"masks\['eyes'\] has shape \[1, 64, 64\] but ws holds 2 codes"):
        browse_feature_maps(G, ws, one, cs, index=1, image=images[0])
    with pytest.raises(ValueError, match="ws holds 2 codes"):
        plot_channel_maps(G, ws, cs, masks=one, image=images[0])
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="max_per_region"):
            plot_channel_maps(G, ws, cs, max_per_region=bad, image=images[0])
    with pytest.raises(KeyError, match=r"no region\(s\) \['ears'\] in the channel sets"):
        plot_channel_maps(G, ws, cs, regions=["eyes", "ears"], image=images[0])
    with pytest.raises(KeyError, match="in masks"):
        browse_feature_maps(G, ws, masks, cs, regions="ears", image=images[0])
    with pytest.raises(ValueError, match="another generator"):
        plot_channel_maps(tiny_generator("R", 128), ws, cs, image=images[0])
    short = ChannelSets({r: {l: {k: v[:10] for k, v in d[l].items()} for l in d} for r, d in cs.scores.items()},
                        cs.settings)  # same layer names, other channel counts
    with pytest.raises(ValueError, match="score 10 channels of L2_36_64 .* has 64.*another generator"):
        browse_feature_maps(G, ws, masks, short, image=images[0])


def test_negative_index_and_one_region_name(setup):
    G, ws, masks, cs, images = setup
    last, one = FeatureMapBrowser(G, ws, masks, cs, index=-1), FeatureMapBrowser(G, ws, masks, cs, index=1)
    assert last.index == 1 and np.array_equal(last.image, one.image) and last.iou == one.iou
    fig = plot_channel_maps(G, ws, cs, regions="eyes", index=-1, image=images[1], masks=masks, max_per_region=2)
    assert np.array(fig.axes).size == 3 and fig.axes[0].get_ylabel() == "eyes"


def _mask_view(b) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(b.mask_view.value)).convert("RGB"))


def test_image_takes_the_players_forms(setup):
    """A float [0, 1] image was drawn almost black (mask view; the figure's grey panels with vmax=255): the views
    now read ``image=`` as the player does (v2s_nb.video.as_rgb_uint8)."""
    G, ws, masks, cs, images = setup
    u8 = images[0]
    want = FeatureMapBrowser(G, ws, masks, cs, image=u8)
    rgba = np.dstack([u8, np.full_like(u8[..., :1], 255)])
    for form in (u8 / 255.0, torch.from_numpy(u8 / 255.0).float(), u8[None], rgba):
        b = FeatureMapBrowser(G, ws, masks, cs, image=form)
        assert b.image.dtype == np.uint8 and np.array_equal(b.image, u8)
        assert np.array_equal(_mask_view(b), _mask_view(want))
    grey = FeatureMapBrowser(G, ws, masks, cs, image=u8[..., 0])  # [H, W]: grey replicated
    assert grey.image.shape == (64, 64, 3)

    import matplotlib.pyplot as plt

    def panels(image):
        fig = plot_channel_maps(G, ws, cs, image=image, max_per_region=1)
        arrays = [np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images]
        plt.close(fig)
        return arrays

    for a, b in zip(panels(u8), panels(u8 / 255.0)):
        assert np.allclose(a, b)  # the image and the grey background under each map


def test_image_that_cannot_be_read_is_refused_with_the_fix(setup):
    """A generator output [3, H, W] in [-1, 1] failed with "masks ... are 64x64 but the image is 3x64"; one
    [H, W, 3] in [-1, 1] was drawn black. Both are refused now, saying what to pass."""
    from v2s_nb.video import FrameFormatError

    G, ws, masks, cs, images = setup
    with torch.no_grad():
        gen = G.synthesis(ws[:1])[0]  # [3, 64, 64] in about [-1, 1]
    for view in (lambda im: FeatureMapBrowser(G, ws, masks, cs, image=im),
                 lambda im: plot_channel_maps(G, ws, cs, image=im, masks=masks)):
        with pytest.raises(FrameFormatError, match=r"image: shape \(3, 64, 64\) .*to_uint8"):
            view(gen)
        with pytest.raises(FrameFormatError, match=r"image: float frames must lie in \[0, 1\].*\(frames \+ 1\) / 2"):
            view(gen.permute(1, 2, 0).numpy())
        with pytest.raises(ValueError, match=r"image must be one picture \[H, W, 3\].*read as 2 frames"):
            view(np.stack(images))


def test_channels_stage_result_is_accepted(setup):
    """``prepare.channels(...)`` returns a Channels holding the ChannelSets (``.sets``) and the masks
    (``.masks``); passing it failed with AttributeError ('Channels' object has no attribute 'regions')."""
    import matplotlib.pyplot as plt

    from v2s_nb.prepare import Channels

    G, ws, masks, cs, images = setup
    ch = Channels(sets=cs, masks=masks, layers=(3, 4), inversions=None)
    fig = plot_channel_maps(G, ws, ch, image=images[0], masks=ch, max_per_region=2)
    want = plot_channel_maps(G, ws, cs, image=images[0], masks=masks, max_per_region=2)
    assert [ax.get_title() for ax in fig.axes] == [ax.get_title() for ax in want.axes]
    plt.close(fig)
    plt.close(want)
    base = FeatureMapBrowser(G, ws, masks, cs, image=images[0])
    for b in (browse_feature_maps(G, ws, masks, ch, image=images[0]), browse_feature_maps(G, ws, ch, image=images[0])):
        assert b.channel_sets is cs and b.masks is masks
        assert b.selected.options == base.selected.options and b.iou == base.iou
    with pytest.raises(TypeError, match="channel_sets must be a local_channels.ChannelSets .* got dict"):
        plot_channel_maps(G, ws, {"eyes": {LAYERS[0]: [1, 2]}}, image=images[0])


def test_close_frees_the_browser_and_its_maps(setup):
    """Closing ``browser.widget`` left the controls registered with ipywidgets, whose callbacks kept the browser
    and every layer's feature maps alive."""
    import gc
    import weakref

    from ipywidgets.widgets.widget import _instances

    G, ws, masks, cs, images = setup
    b = FeatureMapBrowser(G, ws, masks, cs, image=images[0])
    ids = {w.model_id for w in (b.region, b.channel, b.threshold, b.map_view, b.threshold.layout)}
    b.close()
    assert not ids & set(_instances) and not b._maps
    assert b._repr_mimebundle_() == {"text/plain": "FeatureMapBrowser (closed)"}
    ref = weakref.ref(b)
    del b
    gc.collect()
    assert ref() is None
