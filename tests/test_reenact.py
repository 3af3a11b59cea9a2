"""Eq 7-12 on small tensors, the Reenactor on the tiny generator (fast: no inversion, ws from the mapping)."""

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
import torch

from conftest import mapped_ws
from v2s_nb.method.baseline import baseline_ws
from v2s_nb.method.reenact import (CoefficientWarning, LengthMismatchWarning, Reenactor, channel_masks,
                                   check_coefficients, layer_names, mix_styles, parse_layers)
from v2s_nb.stylegan3 import tiny_generator


@pytest.fixture(scope="module")
def G():
    return tiny_generator("R", resolution=64)


# ------------------------------------------------------------------ eq 7


def test_baseline_cumulative_and_printed_by_hand():
    ref = torch.tensor([[10.0, 20.0]])                   # [num_ws=1, w_dim=2]
    ws = torch.tensor([[[1.0, 1.0]], [[2.0, 3.0]], [[5.0, 4.0]]])  # T=3
    cum = baseline_ws(ref, ws, "cumulative")
    assert torch.equal(cum[:, 0], torch.tensor([[10.0, 20.0], [11.0, 22.0], [14.0, 23.0]]))
    pr = baseline_ws(ref, ws, "printed")            # w_ref + (w_{j-1} - w_j), w_{-1} := w_0
    assert torch.equal(pr[:, 0], torch.tensor([[10.0, 20.0], [9.0, 18.0], [7.0, 19.0]]))
    per_frame = baseline_ws(ref[None].repeat(3, 1, 1) + torch.arange(3.0)[:, None, None], ws)
    assert torch.equal(per_frame[:, 0, 0], torch.tensor([10.0, 12.0, 16.0]))
    with pytest.raises(ValueError, match="baseline mode"):
        baseline_ws(ref, ws, "other")


# ------------------------------------------------------------------ eq 8-12


def test_mix_styles_by_hand():
    s_ref = {"a": torch.tensor([[1.0, 2.0, 3.0]]), "b": torch.tensor([[7.0, 7.0]])}
    s_j = {"a": torch.tensor([[10.0, 20.0, 30.0]]), "b": torch.tensor([[0.0, 0.0]])}
    s_base = {"a": torch.tensor([[100.0, 200.0, 300.0]]), "b": torch.tensor([[-1.0, -2.0]])}
    masks = {"a": np.array([True, False, True])}
    out = mix_styles(s_ref, s_j, s_base, masks, ["a"], alpha=-1, beta=1, gamma=1, zeta=0.5)
    # X_s channels 0, 2: -s_ref + s_j + s_base; channel 1: 0.5 s_ref + 0.5 s_base
    assert torch.allclose(out["a"], torch.tensor([[109.0, 101.0, 327.0]]))
    assert torch.equal(out["b"], s_ref["b"])  # outside the layer range: from w_ref^p (outside='ref')
    out = mix_styles(s_ref, s_j, s_base, masks, ["a"], alpha=2, beta=0.5, gamma=0.25, zeta=0.25, outside="base")
    assert torch.allclose(out["a"], torch.tensor([[2 + 5 + 25, 0.25 * 2 + 0.75 * 200, 6 + 15 + 75.0]]))
    assert torch.equal(out["b"], s_base["b"])


def test_each_coefficient_changes_only_its_channels():
    g = torch.Generator().manual_seed(0)
    s = [{"a": torch.randn(2, 6, generator=g), "b": torch.randn(2, 4, generator=g)} for _ in range(3)]
    masks = {"a": np.array([1, 1, 0, 0, 1, 0], bool)}
    base = mix_styles(*s, masks, ["a"])
    for name in ("alpha", "beta", "gamma"):
        out = mix_styles(*s, masks, ["a"], **{name: 0.3})
        changed = (out["a"] != base["a"]).any(0).numpy()
        assert np.array_equal(changed, masks["a"]), name
        assert torch.equal(out["b"], base["b"])
    out = mix_styles(*s, masks, ["a"], zeta=0.9)
    assert np.array_equal((out["a"] != base["a"]).any(0).numpy(), ~masks["a"])
    assert torch.equal(out["b"], base["b"])


def test_coefficient_validation():
    assert check_coefficients(-1, 1, 1, 0.5) == {"alpha": -1.0, "beta": 1.0, "gamma": 1.0, "zeta": 0.5}
    for bad in ({"alpha": math.nan}, {"gamma": math.inf}, {"zeta": -math.inf}):
        with pytest.raises(ValueError, match="finite"):
            check_coefficients(**bad)
    with pytest.raises(ValueError, match="out of range"):
        check_coefficients(beta=11)
    with pytest.raises(ValueError, match="out of range"):
        check_coefficients(zeta=3)
    with pytest.warns(CoefficientWarning):
        check_coefficients(zeta=1.5)
    with pytest.raises(ValueError):
        check_coefficients(alpha="x")


def test_parse_layers(G):
    assert parse_layers("3-7") == (3, 4, 5, 6, 7)
    assert parse_layers("7,3-4") == (3, 4, 7)
    assert layer_names(G, "3-7") == G.synthesis.style_names[3:8]
    with pytest.raises(ValueError):
        parse_layers("7-3")
    with pytest.raises(ValueError, match="out of range"):
        layer_names(G, "3-40")
    assert parse_layers([3.0, 4]) == (3, 4)
    with pytest.raises(ValueError, match=r"a layer \(W\+ row index\) must be an integer, got 3\.7"):
        parse_layers([3.7])  # was row 3


# ------------------------------------------------------------------ Reenactor


def _reenactor(G, T=5, **kw):
    names = G.synthesis.style_names
    rc = {"eyes": {names[3]: [0, 5], names[5]: [1]}, "nose": {names[4]: [2]}, "mouth": {names[7]: [3, 4]}}
    # tx, ty, angle, face size (the relative position track needs the face size)
    tracks = {"driving": np.stack([np.linspace(0, 0.1, T), np.zeros(T), np.linspace(0, 10, T), np.full(T, 0.1)], 1)}
    return Reenactor(G=G, w_ref=mapped_ws(G, 1, 1)[0], ws_drive=mapped_ws(G, T, 2), region_channels=rc,
                     tracks=tracks, **kw)


def test_neutral_coefficients_reproduce_the_reference(G):
    r = _reenactor(G, position="none")
    ref = r.render_reference()
    # alpha=1, beta=gamma=0, zeta=1 -> exactly s_ref everywhere
    for j in range(len(r)):
        assert np.array_equal(r.render_frame(j, alpha=1, beta=0, gamma=0, zeta=1), ref)
    # alpha=beta=gamma=0, zeta=1: eq 10-11 zero the X_s channels; with no region enabled it is the reference
    assert np.array_equal(r.render_frame(2, alpha=0, beta=0, gamma=0, zeta=1, regions=()), ref)
    s = r.styles([2], alpha=0, beta=0, gamma=0, zeta=1)
    sref = G.synthesis.styles(r.w_ref[None])
    m = r.masks()
    for name in G.synthesis.style_names:
        if name in m:
            assert torch.equal(s[name][0][~torch.from_numpy(m[name])], sref[name][0][~torch.from_numpy(m[name])])
            assert (s[name][0][torch.from_numpy(m[name])] == 0).all()
        else:
            assert torch.equal(s[name], sref[name])


def test_only_intended_layers_change(G):
    r = _reenactor(G)
    names = G.synthesis.style_names
    base = r.styles([3])
    mixed = set(names[3:8])
    for c in ("alpha", "beta", "gamma", "zeta"):
        s = r.styles([3], **{c: 0.2})
        changed = {k for k in names if not torch.equal(s[k], base[k])}
        assert changed and changed <= mixed, (c, changed)
    s = r.styles([3], regions=("eyes",), alpha=0.2)
    changed = {k for k in names if not torch.equal(s[k], r.styles([3], regions=("eyes",))[k])}
    assert changed == {names[3], names[5]}


def test_render_video_matches_frames_and_position(G):
    r = _reenactor(G)
    vid = r.render_video(batch_size=2, progress=False)
    assert vid.shape == (5, 64, 64, 3) and vid.dtype == np.uint8
    # batched vs single synthesis: float rounding may move a pixel by one level
    assert np.abs(vid[3].astype(int) - r.render_frame(3).astype(int)).max() <= 1
    r2 = _reenactor(G, position="none")
    assert np.abs(vid[0].astype(int) - r2.render_frame(0).astype(int)).max() <= 1  # track frame 0 = identity
    assert np.abs(vid[4].astype(int) - r2.render_frame(4).astype(int)).max() > 10
    with pytest.raises(ValueError, match="finite"):
        r.render_video(alpha=float("nan"), progress=False)
    # the same frames a batch at a time (what the CLI writes from), checked when asked for, not at the first chunk
    chunks = list(r.render_chunks(batch_size=2, progress=False))
    assert [len(c) for c in chunks] == [2, 2, 1] and np.array_equal(np.concatenate(chunks), vid)
    with pytest.raises(ValueError, match="finite"):
        r.render_chunks(alpha=float("nan"), progress=False)
    with pytest.raises(ValueError, match="not available"):
        _reenactor(G, pose="co-driving").render_frame(0)
    # frame indices as Python's: -1 is the last frame, 5 of 5 frames is refused (it had wrapped to frame 0)
    assert np.array_equal(r.render_frame(-1), r.render_frame(4))
    assert np.array_equal(r.render_reference(-1), r.render_reference(4))
    for bad in (5, -6):
        with pytest.raises(IndexError, match="out of range for 5 frames"):
            r.render_frame(bad)
        with pytest.raises(IndexError, match="out of range for 5 frames"):
            r.render_reference(bad)


def test_render_regions_are_checked_like_the_constructor(G):
    """A bare name is one region (it was iterated letter by letter); unknown names raise (they were ignored, giving
    the frame of regions=())."""
    r = _reenactor(G, T=2, position="none")
    eyes = r.render_frame(1, regions="eyes")
    assert np.array_equal(eyes, r.render_frame(1, regions=("eyes",)))
    assert not np.array_equal(eyes, r.render_frame(1, regions=()))
    mouth = r.render_video(progress=False, regions=["mouth"])
    assert np.array_equal(r.render_video(progress=False, regions="mouth"), mouth)
    for bad in (["ears"], ["eye"], ("eyes", "ears")):
        with pytest.raises(ValueError, match=r"unknown region\(s\).*choose from"):
            r.render_frame(1, regions=bad)
        with pytest.raises(ValueError, match=r"unknown region\(s\)"):
            r.render_video(progress=False, regions=bad)
        with pytest.raises(ValueError, match=r"unknown region\(s\)"):
            _reenactor(G, regions=bad)
    assert _reenactor(G, regions="nose").regions == ("nose",)


def test_region_channels_must_fit_the_generator(G):
    """Channels of another generator (or an unknown region, or non-integer indices) turned X_s mixing off or moved
    it silently; they are refused, naming the entry."""
    kw = dict(G=G, w_ref=mapped_ws(G, 1, 1)[0], ws_drive=mapped_ws(G, 3, 2))
    with pytest.raises(ValueError, match=r"region_channels\['eyes'\] names layer 'L3_52_1024'.*run the channel "
                                         "discovery with this one"):
        Reenactor(**kw, region_channels={"eyes": {"L3_52_1024": [1, 2, 3]}})
    name = G.synthesis.style_names[3]
    width = G.synthesis.styles(kw["w_ref"][None])[name].shape[-1]
    with pytest.raises(ValueError, match=rf"has channel\(s\) \[{width}\] outside 0..{width - 1}"):
        Reenactor(**kw, region_channels={"mouth": {name: [0, width]}})
    with pytest.raises(ValueError, match="unknown region 'ears'"):
        Reenactor(**kw, region_channels={"ears": {name: [1, 2]}})
    for bad in ([1.7, 2.2], [True, False]):
        with pytest.raises(ValueError, match=rf"region_channels\['eyes'\]\['{name}'\] must be integer channel"):
            Reenactor(**kw, region_channels={"eyes": {name: bad}})
    r = Reenactor(**kw, region_channels={"eyes": {name: [1.0, 2.0]}, "nose": {name: []}})  # whole floats are fine
    assert np.flatnonzero(r.masks()[name]).tolist() == [1, 2]


def test_codes_and_fps_are_checked_by_their_own_name(G):
    """Codes of another generator were blamed on w_ref (or pose codes on ws_drive) when rendering; fps NaN / 0
    was accepted and saved."""
    w_ref, ws, other = mapped_ws(G, 1, 1)[0], mapped_ws(G, 4, 2), torch.randn(4, 16, 512)
    cases = [("ws_drive", dict(ws_drive=other)), ("ws_codrive", dict(ws_drive=ws, ws_codrive=other)),
             (r"pose_codes\['driving'\]", dict(ws_drive=ws, pose_codes={"driving": other})),
             ("w_ref", dict(ws_drive=ws, w_ref=other[0]))]
    for name, kw in cases:
        with pytest.raises(ValueError, match=rf"^{name} must be \[(T, )?16, 64\] .*another generator"):
            Reenactor(**{"G": G, "w_ref": w_ref, **kw})
    for k, bad in (("fps", float("nan")), ("fps", 0), ("fps", -2), ("fps_codrive", float("inf"))):
        with pytest.raises(ValueError, match=f"^{k} must be a positive number of frames per second"):
            Reenactor(G=G, w_ref=w_ref, ws_drive=ws, ws_codrive=ws, **{k: bad})
    assert Reenactor(G=G, w_ref=w_ref, ws_drive=ws, fps="25").fps == 25.0
    with pytest.raises(TypeError, match=r"G must be a StyleGAN3 generator.*load_generator\('x.pkl'\)"):
        Reenactor(G="x.pkl", w_ref=w_ref, ws_drive=ws)
    with pytest.raises(TypeError, match=r"ws_drive must be codes .*got the path 'ws.npy': load it first"):
        Reenactor(G=G, w_ref=w_ref, ws_drive="ws.npy")  # "new(): invalid data type 'str'"


def test_load_takes_a_generator_path(G, tmp_path):
    """Reenactor.load(d, G='file') raised AttributeError; a path / name is loaded like the saved spec would be."""
    from v2s_nb.stylegan3 import save_generator
    r = _reenactor(G)
    r.pose_codes = {}
    r.save(tmp_path / "r")
    save_generator(G, tmp_path / "G.safetensors")
    r2 = Reenactor.load(tmp_path / "r", G=str(tmp_path / "G.safetensors"), G_render=tmp_path / "G.safetensors")
    assert np.array_equal(r.render_frame(1), r2.render_frame(1))
    with pytest.raises(FileNotFoundError, match="generator file not found"):
        Reenactor.load(tmp_path / "r", G=str(tmp_path / "missing.pkl"))
    with pytest.raises(TypeError, match="G must be a StyleGAN3 generator"):
        Reenactor.load(tmp_path / "r", G=42)


def test_length_and_fps_policy(G):
    with pytest.warns(LengthMismatchWarning, match="truncated"):
        r = Reenactor(G=G, w_ref=mapped_ws(G, 1, 1)[0], ws_drive=mapped_ws(G, 6, 2), ws_codrive=mapped_ws(G, 4, 3))
    assert len(r) == 4 and r.render_video(progress=False).shape[0] == 4
    with pytest.warns(LengthMismatchWarning, match="paired by index"):
        Reenactor(G=G, w_ref=mapped_ws(G, 1, 1)[0], ws_drive=mapped_ws(G, 4, 2), ws_codrive=mapped_ws(G, 4, 3), fps=25,
                  fps_codrive=30)


def test_save_load_roundtrip(G, tmp_path):
    r = _reenactor(G, info={"generator_spec": {"kind": "tiny", "cfg": "R", "resolution": 64, "seed": 0}})
    r.pose_codes = {}
    r.save(tmp_path / "r")
    r2 = Reenactor.load(tmp_path / "r")  # generator rebuilt from the spec
    assert np.array_equal(r.render_video(progress=False), r2.render_video(progress=False))
    assert torch.load(tmp_path / "r" / "tensors.pt", weights_only=True)["ws_drive"].shape == (5, 16, 64)
    with pytest.raises(ValueError, match="weights"):
        Reenactor.load(tmp_path / "r", G=tiny_generator("R", resolution=64, seed=1))


def test_renders_follow_codes_and_tracks_set_after_construction(G):
    """A notebook sets r.ws_drive = ... or edits a track in place: the next render shows it (the prepared S codes
    were cached by the settings alone and rendered the old codes), and what is set is checked as at construction."""
    r = _reenactor(G)
    before = r.render_frame(2)
    r.ws_drive = mapped_ws(G, 5, 9)
    fresh = dataclasses.replace(_reenactor(G), ws_drive=mapped_ws(G, 5, 9))
    assert np.array_equal(r.render_frame(2), fresh.render_frame(2))
    assert not np.array_equal(r.render_frame(2), before)
    moved = r.render_frame(2)
    r.tracks["driving"][2, 0] += 0.2  # in place: the same array
    assert not np.array_equal(r.render_frame(2), moved)
    shifted = r.render_frame(3)
    with torch.no_grad():
        r.w_ref += 0.5  # in place: the same tensor
    assert not np.array_equal(r.render_frame(3), shifted)
    with pytest.raises(ValueError, match=r"ws_drive must be \[T, 16, 64\].*got \(5, 16, 32\)"):
        r.ws_drive = torch.zeros(5, 16, 32)
    with pytest.raises(ValueError, match="w_ref contains NaN"):
        r.w_ref = torch.full((16, 64), float("nan"))
    for other in (tiny_generator("T", resolution=64), tiny_generator("R", resolution=32)):
        with pytest.raises(ValueError, match="G_render is another architecture than G"):
            r.G_render = other
        with pytest.raises(ValueError, match="G_render is another architecture than G"):
            _reenactor(G, G_render=other)
    r.ws_drive = np.asarray(mapped_ws(G, 7, 9))  # numpy, converted as the constructor does; the track has 5 frames
    assert isinstance(r.ws_drive, torch.Tensor)
    with pytest.raises(ValueError, match=r"tracks\['driving'\] has 5 frames but the re-enactment has 7.*replace"):
        r.render_frame(0)


def test_frame_indices_and_batch_sizes_are_whole_numbers(G):
    """render_frame(1.7) rendered frame 1; render_video(batch_size=0 or -3) ran with 1."""
    r = _reenactor(G)
    assert np.array_equal(r.render_frame(np.int64(1)), r.render_frame(1.0))
    with pytest.raises(TypeError, match=r"frame indices must be whole numbers, got \[1\.7\]"):
        r.render_frame(1.7)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="batch_size"):
            r.render_video(batch_size=bad, progress=False)


def test_a_failed_save_leaves_the_previous_one_whole(G, tmp_path):
    """The JSON was made after tensors.pt had been replaced: info that isn't JSON-able left new tensors beside the
    old JSON, and the folder could not be loaded. Now nothing is written until all of it can be."""
    spec = {"generator_spec": {"kind": "tiny", "cfg": "R", "resolution": 64, "seed": 0}}
    r = _reenactor(G, info=dict(spec))
    r.save(tmp_path / "r")
    other = _reenactor(G, info=dict(spec, step=torch.tensor(1.0)))
    other.ws_drive = mapped_ws(G, 5, 3)
    with pytest.raises(TypeError, match="JSON"):
        other.save(tmp_path / "r")
    assert np.array_equal(Reenactor.load(tmp_path / "r").render_frame(1), r.render_frame(1))
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["reenactor.json", "tensors.pt"]


def test_load_of_a_damaged_save_names_the_file(G, tmp_path):
    """A cut reenactor.json or one lacking a key must not give a bare JSONDecodeError / KeyError naming no file:
    a ValueError (as for a damaged tensors.pt) that names reenactor.json and says to save again."""
    r = _reenactor(G, info={"generator_spec": {"kind": "tiny", "cfg": "R", "resolution": 64, "seed": 0}})
    r.pose_codes = {}
    js = r.save(tmp_path / "r") / "reenactor.json"
    text = js.read_text()
    js.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"reenactor\.json is damaged or incomplete .*save the Reenactor again"):
        Reenactor.load(tmp_path / "r")
    for key in ("tensors_sha256", "settings"):
        js.write_text(json.dumps({k: v for k, v in json.loads(text).items() if k != key}))
        with pytest.raises(ValueError, match=rf"reenactor\.json is damaged or incomplete \(missing {key}"):
            Reenactor.load(tmp_path / "r")
    js.write_text(text)
    assert len(Reenactor.load(tmp_path / "r")) == len(r)


@pytest.mark.slow
def test_pti_generator_renders_and_survives_save_load(G, tmp_path):
    """The paper's split: a PTI-tuned copy renders, the original stays as it was (and is what pose encoding uses)."""
    from v2s_nb.images import to_uint8
    from v2s_nb.method.invert import pivotal_tuning
    w_ref = mapped_ws(G, 1, 1)[0]
    before = {k: v.clone() for k, v in G.state_dict().items()}
    with torch.no_grad():
        target = G.synthesis(w_ref[None]).flip(3)  # outside what the pivot renders
    G_pti = pivotal_tuning(G, target, w_ref[None], steps=5, progress=False, locality_weight=0.0)
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())  # the original is untouched
    r = _reenactor(G, position="none", G_render=G_pti)
    assert r.G_render is G_pti and r.G is G
    ref = r.render_frame(0, alpha=1, beta=0, gamma=0, zeta=1)
    with torch.no_grad():
        tuned = to_uint8(G_pti.synthesis(w_ref[None]))[0]
        original = to_uint8(G.synthesis(w_ref[None]))[0]
    assert np.array_equal(ref, tuned) and not np.array_equal(ref, original)
    r.pose_codes = {}
    r.info = {"generator_spec": {"kind": "tiny", "cfg": "R", "resolution": 64, "seed": 0}}
    r.save(tmp_path / "r")
    assert (tmp_path / "r" / "G_render.safetensors").exists()
    r2 = Reenactor.load(tmp_path / "r")
    assert np.array_equal(r2.render_frame(0, alpha=1, beta=0, gamma=0, zeta=1), ref)
    # the tuned generator's file is checked like the rest of the save: another one is refused, not rendered
    from v2s_nb.stylegan3 import save_generator
    save_generator(G, tmp_path / "r" / "G_render.safetensors")
    with pytest.raises(ValueError, match="rendering generator"):
        Reenactor.load(tmp_path / "r")


def test_renders_of_bright_frames_give_no_range_warning(G, monkeypatch):
    """The ImageRangeWarning (all values >= 0: pictures in [0, 1]?) is for users' own tensors; a render that happens
    to be all bright is generator output, and a CLI user could not act on the warning."""
    import warnings

    r = _reenactor(G, position="none")
    bright = lambda frames, **kw: torch.rand(len(frames), 3, *r.resolution_hw)  # noqa: E731
    monkeypatch.setattr(r, "render_frames", bright)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert r.render_video(progress=False).shape == (len(r), *r.resolution_hw, 3)
        assert r.render_frame(0).shape == (*r.resolution_hw, 3)
