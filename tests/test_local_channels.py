"""Section 3.4 channel discovery: planted truth on given maps, threshold edges, and end to end on a tiny generator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from v2s_nb.face.regions import masks_from_landmarks, template_landmarks
from v2s_nb.method import local_channels as lc
from v2s_nb.method.local_channels import ChannelSets, discover, score_channels, select


def _blocks(n, size=16, seed=0):
    """Per image: eyes / nose / mouth as disjoint rectangles on a size x size grid (shifted per image)."""
    rng = np.random.default_rng(seed)
    masks = {k: np.zeros((n, size, size), bool) for k in ("eyes", "nose", "mouth")}
    for i in range(n):
        dx, dy = rng.integers(-1, 2, size=2)
        masks["eyes"][i, 5 + dy:7 + dy, 3 + dx:6 + dx] = True
        masks["eyes"][i, 5 + dy:7 + dy, 10 + dx:13 + dx] = True
        masks["nose"][i, 7 + dy:10 + dy, 7 + dx:9 + dx] = True
        masks["mouth"][i, 11 + dy:13 + dy, 5 + dx:11 + dx] = True
    masks["rest"] = ~(masks["eyes"] | masks["nose"] | masks["mouth"])
    return masks


def _nearest_up(m, f):
    return m.repeat(f, axis=-2).repeat(f, axis=-1)


def _planted(n=3, c=24, size=16, seed=0):
    """Maps [n, c, size, size]: channel 3 = mouth, 7 and 11 = eyes, 15 = nose (scaled + offset), rest noise."""
    low = _blocks(n, size, seed)
    rng = np.random.default_rng(seed + 1)
    maps = rng.uniform(-1, 1, size=(n, c, size, size)).astype(np.float32)
    truth = {"mouth": [3], "eyes": [7, 11], "nose": [15]}
    for region, chans in truth.items():
        for ch in chans:
            maps[:, ch] = low[region] * rng.uniform(0.5, 5.0) - rng.uniform(0, 3)
    return maps, low, truth


@pytest.mark.parametrize("factor", [1, 2])
def test_planted_channels_are_found_exactly(factor):
    """Maps equal to the regions (at the mask size, or 2x coarser: bilinear + 0.5 recovers nearest) -> exactly them."""
    maps, low, truth = _planted()
    masks = {k: _nearest_up(v, factor) for k, v in low.items()}
    scores = score_channels(torch.from_numpy(maps), masks)
    assert set(scores) == {"eyes", "nose", "mouth"}  # 'rest' is not a target
    for region, chans in truth.items():
        got = select(scores[region]["iou_pos"], scores[region]["iou_neg"])  # defaults t_fg 0.2, t_bg 0.1
        assert got.tolist() == chans, region
        np.testing.assert_array_equal(scores[region]["iou_pos"][chans], 1.0)
        np.testing.assert_array_equal(scores[region]["iou_neg"][chans], 0.0)
        noise = np.setdiff1d(np.arange(maps.shape[1]), sum(truth.values(), []))
        assert scores[region]["iou_pos"][noise].max() < 0.2 and scores[region]["iou_neg"][noise].min() > 0.2


def test_chunking_does_not_change_scores():
    maps, low, _ = _planted(n=2, c=18)
    masks = {k: _nearest_up(v, 2) for k, v in low.items()}
    a = score_channels(maps, masks)
    b = score_channels(maps, masks, chunk_elements=1)  # one channel at a time
    for r in a:
        for k in a[r]:
            np.testing.assert_array_equal(a[r][k], b[r][k])


def _edge_case():
    """32 x 32, region = 64 px; channel 0 = region + 64 px outside (IoU+ = 0.5, IoU- = 64 / 1024 = 1/16)."""
    region = np.zeros((1, 32, 32), bool)
    region[0, 0:8, 0:8] = True
    ch = np.zeros((1, 1, 32, 32), np.float32)
    ch[0, 0, 0:8, 0:16] = 1.0
    return ch, {"mouth": region}


def test_iou_exactly_at_the_thresholds():
    ch, masks = _edge_case()
    s = score_channels(ch, masks)["mouth"]
    assert s["iou_pos"][0] == 0.5 and s["iou_neg"][0] == 1 / 16
    assert select(s["iou_pos"], s["iou_neg"], t_fg=0.5, t_bg=1 / 16).tolist() == [0]  # >= and <= are inclusive
    assert select(s["iou_pos"], s["iou_neg"], t_fg=np.nextafter(0.5, 1), t_bg=1).tolist() == []
    assert select(s["iou_pos"], s["iou_neg"], t_fg=0, t_bg=np.nextafter(1 / 16, 0)).tolist() == []


def test_binarisation_threshold_is_strict():
    ch, masks = _edge_case()
    ch = ch * 0.5 + 0.25  # 0.25 / 0.75, taken as already normalised
    on_half = score_channels(ch, masks, threshold=0.75, normalized=True)["mouth"]
    assert on_half["iou_pos"][0] == 0.0  # 0.75 > 0.75 is False: nothing is on
    assert score_channels(ch, masks, threshold=0.7499, normalized=True)["mouth"]["iou_pos"][0] == 0.5


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan"), float("inf")])
def test_levels_outside_their_range_are_refused(tiny, bad):
    """threshold outside [0, 1) or t_fg / t_bg outside [0, 1] (or NaN) silently selected nothing."""
    ch, masks = _edge_case()
    thr = r"threshold must be a finite number in \[0, 1\)"
    with pytest.raises(ValueError, match=thr):
        score_channels(ch, masks, threshold=bad, normalized=True)
    with pytest.raises(ValueError, match=thr):
        lc.binarize(torch.as_tensor(ch, dtype=torch.float32), 16, bad)
    s = score_channels(ch, masks, normalized=True)["mouth"]
    ious = () if bad == 1.0 else ("t_fg", "t_bg")  # 1 is a valid IoU level, not a valid threshold
    for name in ious:
        with pytest.raises(ValueError, match=rf"{name} must be a finite number in \[0, 1\]"):
            select(s["iou_pos"], s["iou_neg"], **{name: bad})
    G, ws = tiny
    for name in ("threshold", *ious):
        with pytest.raises(ValueError, match=f"{name} must be"):
            discover(G, ws[:1], masks, layers=["L2_36_64"], progress=False, cache=False, **{name: bad})


def test_constant_channels_are_off():
    masks = _edge_case()[1]
    maps = np.stack([np.zeros((32, 32)), np.full((32, 32), 7.5), np.full((32, 32), 3.0)])[None]
    norm = lc.normalize_maps(torch.as_tensor(maps))
    assert torch.isfinite(norm).all() and (norm == 0).all()
    s = score_channels(maps, masks, threshold=0.0)["mouth"]  # even at threshold 0: map > 0 is False
    assert s["iou_pos"].tolist() == [0, 0, 0] and s["iou_neg"].tolist() == [0, 0, 0]
    assert select(s["iou_pos"], s["iou_neg"]).tolist() == []


def test_empty_region_masks_are_left_out_of_the_mean():
    maps, low, truth = _planted(n=3)
    masks = {k: v.copy() for k, v in low.items()}
    ref = score_channels(maps[:2], {k: v[:2] for k, v in masks.items()})
    masks["eyes"][2] = False  # no eyes in image 2 (e.g. no face found): it must not pull the mean down
    got = score_channels(maps, masks)
    for k in ("iou_pos", "iou_neg"):
        np.testing.assert_allclose(got["eyes"][k], ref["eyes"][k], rtol=0, atol=1e-15)
    masks["nose"][:] = False  # a region never present: undefined scores, never selected
    s = score_channels(maps, masks)["nose"]
    assert np.isnan(s["iou_pos"]).all() and np.isnan(s["iou_neg"]).all()
    assert select(s["iou_pos"], s["iou_neg"], t_fg=0, t_bg=1).tolist() == []


def test_output_channel_sets_are_refused_as_s_channels():
    """Sets discovered with maps='output' index the layers' output channels, not S: the re-enactment's mixing
    refuses them (it once took them as S indices without a word)."""
    from v2s_nb.method.reenact import region_channels_from
    maps, low, truth = _planted()
    scores = score_channels(maps, low)
    by_layer = {r: {"L3_a": d} for r, d in scores.items()}
    settings = {"layers": ["L3_a"], "threshold": 0.5, "n_images": 3}
    s_channels = region_channels_from(ChannelSets(by_layer, dict(settings, maps="modulated")))
    assert s_channels["mouth"]["L3_a"].tolist() == [3]
    with pytest.raises(ValueError, match="maps='output'.*not S channels"):
        region_channels_from(ChannelSets(by_layer, dict(settings, maps="output")))


def test_channel_sets_roundtrip_and_reselect(tmp_path):
    maps, low, truth = _planted()
    scores = score_channels(maps, low)
    by_layer = {r: {"L3_a": d, "L4_b": {k: v[::-1].copy() for k, v in d.items()}} for r, d in scores.items()}
    cs = ChannelSets(by_layer, {"layers": ["L3_a", "L4_b"], "threshold": 0.5, "maps": "modulated", "n_images": 3})
    assert cs.channels("mouth", "L3_a").tolist() == [3] and cs.channels("mouth", "L4_b").tolist() == [20]
    assert cs.union()["L3_a"].tolist() == [3, 7, 11, 15]
    assert cs.channel_mask(["eyes"])["L4_b"].sum() == 2 and cs.channel_mask()["L3_a"].shape == (24,)
    assert cs.rows("eyes")[0][:3] in (("eyes", "L3_a", 7), ("eyes", "L3_a", 11), ("eyes", "L4_b", 12),
                                      ("eyes", "L4_b", 16))
    loose = cs.reselect(t_fg=0.0, t_bg=1.0)
    assert len(loose.channels("nose", "L3_a")) == 24 and cs.t_fg == lc.DEFAULT_T_FG
    path = cs.save(tmp_path / "sets.json")
    json.loads(path.read_text())  # plain JSON
    back = ChannelSets.load(path)
    assert back.counts() == cs.counts() and back.settings == cs.settings
    for r in cs.regions:
        for layer in cs.layers:
            np.testing.assert_array_equal(back.scores[r][layer]["iou_pos"], cs.scores[r][layer]["iou_pos"])
    with pytest.raises(ValueError, match="not a ChannelSets"):
        ChannelSets.from_dict({"format": "other"})


# ----------------------------------------------------------------------------------------------- generator


@pytest.fixture(scope="module")
def tiny():
    from v2s_nb.stylegan3 import tiny_generator

    G = tiny_generator("R", 64)
    ws = G.mapping(torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(0)), None)
    return G, ws


def test_maps_align_with_styles_and_image(tiny):
    G, ws = tiny
    sy = G.synthesis
    assert lc.default_layers(G) == sy.style_names[3:8]
    assert lc.map_layer(G, "L2_36_64") == "L1_36_64" and lc.map_layer(G, "L0_36_64") == "input"
    assert lc.map_layer(G, "L2_36_64", maps="output") == "L2_36_64"
    with pytest.raises(ValueError, match="modulate no feature map"):
        lc.map_layer(G, "input")
    layers = ["L0_36_64", "L5_52_64", "L8_84_40"]  # L8: 51 styles, 40 outputs
    maps = lc.layer_maps(G, ws[:1], layers, normalize=False)
    styles = sy.styles(ws[:1])
    for name in layers:  # one map per S entry of the layer: channel c of the result is styles[name][:, c]
        assert maps[name].shape[1] == styles[name].shape[1]
    assert maps["L0_36_64"].shape[-1] == 16 and maps["L5_52_64"].shape[-1] == 32  # margins cropped
    assert maps["L8_84_40"].shape[1:] == (51, 32, 32)  # L7 output, 52 px with margin -> 32
    x = torch.zeros(1, 16, 64, 64)
    assert lc.crop_to_image(G, "L13_64_16", x).shape == x.shape  # the last two layers have no margin
    assert lc.crop_to_image(G, "L14_64_3", x).shape == x.shape
    full = sy.feature_maps(ws[:1], ["L4_52_64"])["L4_52_64"]
    np.testing.assert_array_equal(lc.layer_maps(G, ws[:1], ["L5_52_64"], normalize=False)["L5_52_64"].numpy(),
                                  full[..., 10:42, 10:42].numpy())


def test_discover_end_to_end_with_cache(tiny, tmp_path, monkeypatch):
    G, ws = tiny
    masks = masks_from_landmarks(np.repeat(template_landmarks(64)[None], len(ws), 0), 64)
    layers = ["L2_36_64", "L5_52_64"]
    cs = discover(G, ws, masks, layers=layers, t_fg=0.05, t_bg=0.3, batch_size=2, progress=False, cache=tmp_path)
    assert not cs.from_cache and cs.layers == layers and cs.regions == ["eyes", "nose", "mouth"]
    assert cs.settings["map_layers"] == {"L2_36_64": "L1_36_64", "L5_52_64": "L4_52_64"}
    for r in cs.regions:
        for layer in layers:
            d = cs.scores[r][layer]
            assert d["iou_pos"].shape == (64,) and np.isfinite(d["iou_pos"]).all()
            assert ((0 <= d["iou_pos"]) & (d["iou_pos"] <= 1)).all()
            sel = cs.get(r, layer)
            assert (sel.iou_pos >= 0.05).all() and (sel.iou_neg <= 0.3).all()
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1

    # the same scores as scoring the maps directly (one batch)
    direct = score_channels(lc.layer_maps(G, ws, ["L2_36_64"])["L2_36_64"], masks, normalized=True)
    np.testing.assert_allclose(cs.scores["mouth"]["L2_36_64"]["iou_pos"], direct["mouth"]["iou_pos"], atol=1e-12)

    def boom(*a, **k):
        raise AssertionError("recomputed instead of reading the cache")

    monkeypatch.setattr(lc, "compute_scores", boom)
    again = discover(G, ws, masks, layers=layers, t_fg=0.1, t_bg=0.3, progress=False, cache=tmp_path)
    assert again.from_cache and again.t_fg == 0.1  # selection thresholds are applied to the cached scores
    np.testing.assert_array_equal(again.scores["eyes"]["L5_52_64"]["iou_pos"], cs.scores["eyes"]["L5_52_64"]["iou_pos"])
    assert again.counts() == cs.reselect(t_fg=0.1).counts()
    with pytest.raises(AssertionError, match="recomputed"):  # other ws -> another key
        discover(G, ws[:2], {k: v[:2] for k, v in masks.items()}, layers=layers, progress=False, cache=tmp_path)
    with pytest.raises(AssertionError, match="recomputed"):  # other binarisation threshold -> another key
        discover(G, ws, masks, layers=layers, threshold=0.6, progress=False, cache=tmp_path)


def test_default_cache_folder_and_fingerprint(tiny, tmp_path, monkeypatch):
    G, ws = tiny
    monkeypatch.setenv("V2S_NB_CACHE", str(tmp_path))
    masks = masks_from_landmarks(template_landmarks(64), 64)
    discover(G, ws[:1], masks, layers=["L2_36_64"], progress=False)
    assert len(list((tmp_path / "channels").glob("*.json"))) == 1
    fp = lc.generator_fingerprint(G)
    assert lc.generator_fingerprint(G) == fp
    with torch.no_grad():
        p = G.synthesis.L1_36_64.weight
        p[0, 0, 0, 0] += 1  # in-place edit (as fine-tuning would) changes the fingerprint
        try:
            assert lc.generator_fingerprint(G) != fp
        finally:
            p[0, 0, 0, 0] -= 1


def test_discover_checks_its_inputs(tiny):
    G, ws = tiny
    masks = masks_from_landmarks(template_landmarks(64), 64)
    with pytest.raises(ValueError, match="masks"):
        discover(G, ws, masks, progress=False, cache=False)  # 1 mask for 3 latents
    with pytest.raises(KeyError, match="unknown layer"):
        discover(G, ws[:1], masks, layers=["L99"], progress=False, cache=False)
    with pytest.raises(ValueError, match="ws must be"):
        discover(G, ws[0], masks, progress=False, cache=False)
    with pytest.raises(ValueError, match="no codes"):
        discover(G, ws[:0], masks, progress=False, cache=False)
    with pytest.raises(ValueError, match=r"NaN or infinite values in code\(s\) \[0\].*Invert"):
        discover(G, ws[:1] * float("nan"), masks, progress=False, cache=False)  # gave 0 channels, and cached them


@pytest.mark.parametrize("bad", [-1, 0, 2.5])
def test_batch_size_must_be_a_positive_integer(tiny, bad):
    """batch_size=-1 scored no image at all (0 channels, silently); 0 failed inside range()."""
    G, ws = tiny
    masks = masks_from_landmarks(np.repeat(template_landmarks(64)[None], 3, 0), 64)
    with pytest.raises(ValueError, match="batch_size"):
        discover(G, ws, masks, batch_size=bad, progress=False, cache=False)
    with pytest.raises(ValueError, match="batch_size"):
        lc.compute_scores(G, ws, masks, ["L3_36_64"], ["eyes"], 0.5, batch_size=bad, progress=False)


def test_one_region_name_is_one_region(tiny):
    """regions='eyes' was read as the regions 'e', 'y', 'e', 's'."""
    G, ws = tiny
    masks = masks_from_landmarks(np.repeat(template_landmarks(64)[None], 3, 0), 64)
    cs = discover(G, ws, masks, layers=["L3_36_64"], regions="eyes", progress=False, cache=False)
    assert cs.regions == ["eyes"] and cs.rows("eyes") == cs.rows()
    with pytest.raises(KeyError, match="no region 'nose' in these channel sets"):
        cs.rows("nose")
    assert list(cs.union("eyes")) == ["L3_36_64"]
