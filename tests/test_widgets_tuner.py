"""The coefficient tuner and the side-by-side player (v2s_nb.widgets.tuner / player) on the tiny generator.

The Reenactor is built from mapping outputs (no inversion) as in tests/test_reenact.py, with a few X_s channels
per region so that α / β / γ and the region toggles have something to act on.
"""

import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("ipywidgets")

from conftest import mapped_ws  # noqa: E402
from v2s_nb.method.reenact import Reenactor, layer_names  # noqa: E402
from v2s_nb.stylegan3 import tiny_generator  # noqa: E402
from v2s_nb.widgets import ReenactmentTuner, SideBySidePlayer  # noqa: E402
from v2s_nb.widgets.tuner import PAPER_DEFAULTS, V2S_NB_DEFAULTS, motion_frame  # noqa: E402

T = 5


@pytest.fixture(scope="module")
def G():
    return tiny_generator("R", resolution=64)


def _reenactor(G, **kw):
    names = layer_names(G, (3, 4, 5, 6, 7))
    sizes = {n: G.synthesis.styles(mapped_ws(G, 1, 0))[n].shape[-1] for n in names}
    rc = {reg: {n: np.arange(k, sizes[n], 7) for n in names} for k, reg in enumerate(("eyes", "nose", "mouth"))}
    angles = np.linspace(0, 10, T)
    size = np.full(T, 0.1)  # face size (eye-to-mouth distance, widths) for the relative position track
    tracks = {"driving": np.stack([np.zeros(T), np.zeros(T), angles, size], 1),
              "co-driving": np.stack([np.linspace(0, 0.05, T), np.zeros(T), -angles, size], 1)}
    return Reenactor(G=G, w_ref=mapped_ws(G, 1, 1)[0], ws_drive=mapped_ws(G, T, 2), ws_codrive=mapped_ws(G, T, 3),
                     region_channels=rc, tracks=tracks, fps=10, **kw)


@pytest.fixture
def tuner(G):
    return ReenactmentTuner(_reenactor(G), size=64, frame=0)  # frame 0: the tests below start at the anchor


def _changed(tuner, before):
    assert tuner.wait(30), "the preview never caught up"
    assert tuner.error is None, tuner.error
    return not np.array_equal(tuner.preview, before)


def test_initial_preview_is_render_frame(G, tuner):
    assert tuner.preview.shape == (64, 64, 3) and tuner.preview.dtype == np.uint8
    ref = _reenactor(G).render_frame(0)
    assert np.array_equal(tuner.preview, ref)
    assert tuner.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert "v2s-tuner-alpha" in tuner.alpha._dom_classes and "v2s-tuner-preview" in tuner.image._dom_classes
    assert not tuner.alpha.continuous_update and not tuner.frame.continuous_update


def test_alpha_slider_changes_preview_and_reenactor(G, tuner):
    before, png = tuner.preview.copy(), tuner.image.value
    tuner.alpha.value = 1.5
    assert _changed(tuner, before)
    assert tuner.image.value != png
    assert tuner.reenactor.alpha == 1.5
    assert np.array_equal(tuner.preview, _reenactor(G).render_frame(0, alpha=1.5))


@pytest.mark.parametrize("name,value", [("beta", -1.0), ("gamma", 0.0), ("zeta", 1.0)])
def test_each_coefficient_changes_preview(tuner, name, value):
    tuner.frame.value = 2  # at frame 0 the (cumulative) baseline equals the reference, so ζ has no effect there
    assert tuner.wait(30)
    before = tuner.preview.copy()
    tuner.sliders[name].value = value
    assert _changed(tuner, before)


def test_frame_slider_changes_preview(G, tuner):
    before = tuner.preview.copy()
    tuner.frame.value = 3
    assert _changed(tuner, before)
    assert np.array_equal(tuner.preview, _reenactor(G).render_frame(3))


def test_layers_regions_and_sources(G, tuner):
    tuner.frame.value = 3  # frame 0: both tracks are at the origin
    assert tuner.wait(30)
    before = tuner.preview.copy()
    tuner.layers.value = (3, 4)
    assert _changed(tuner, before) and tuner.reenactor.layers == (3, 4)
    before = tuner.preview.copy()
    tuner.region_toggles["eyes"].value = False
    assert _changed(tuner, before) and tuner.reenactor.regions == ("nose", "mouth")
    before = tuner.preview.copy()
    tuner.source_widgets["position"].value = "co-driving"
    assert _changed(tuner, before) and tuner.reenactor.sources()["position"] == "co-driving"
    # no pose codes prepared: pose is shown read-only with the reason
    assert tuner.source_widgets["pose"].disabled and "pose" in tuner.source_notes
    assert not tuner.source_widgets["motion"].disabled


def test_motion_mode_strength_anchor_and_position(G, tuner):
    """Choosing a motion mode sets its coefficients (still tunable); k, the anchor and the position form re-render."""
    tuner.frame.value = 3
    assert tuner.wait(30)
    before = tuner.preview.copy()
    tuner.motion_mode.value = "paper"
    assert _changed(tuner, before)
    r = tuner.reenactor
    assert r.motion_mode == "paper" and (r.alpha, r.beta, r.gamma, r.zeta) == (-1, 1, 1, 0.5)
    assert tuner.alpha.value == -1 and np.array_equal(tuner.preview, _reenactor(G, motion_mode="paper").render_frame(3))
    tuner.motion_mode.value = "relative"
    assert tuner.wait(30) and (tuner.alpha.value, tuner.gamma.value) == (0, 1)
    for widget, value in ((tuner.strength, 0.3), (tuner.anchor, 2), (tuner.position_mode, "absolute")):
        before = tuner.preview.copy()
        widget.value = value
        assert _changed(tuner, before), widget.description
    assert (r.strength, r.anchor, r.position_mode) == (0.3, 2, "absolute")
    want = _reenactor(G, strength=0.3, anchor=2, position_mode="absolute").render_frame(3)
    assert np.array_equal(tuner.preview, want)
    assert "v2s-tuner-motion-mode" in tuner.motion_mode._dom_classes
    assert [o[0] for o in tuner.anchor.options[:2]] == ["first", "frame 0"]  # no landmarks held: no 'best'


def test_opens_on_a_frame_with_motion(G):
    """Default frame: the one furthest from the anchor; there ζ and the W+ rows change the preview, while at the
    anchor frame (relative mode) the result is the reference and ζ changes nothing."""
    r = _reenactor(G)
    t = ReenactmentTuner(r, size=64)
    j = motion_frame(r)
    assert t.frame.value == j != r.anchor_frame() == 0
    assert np.array_equal(t.preview, _reenactor(G).render_frame(j))
    before, diff_before = t.preview.copy(), t.difference.copy()
    t.zeta.value = 1.5
    assert _changed(t, before) and not np.array_equal(t.difference, diff_before)
    before = t.preview.copy()
    t.layers.value = (3, 4)
    assert _changed(t, before)
    at_anchor = ReenactmentTuner(_reenactor(G), size=64, frame=0, background=False)
    assert (at_anchor.difference == 128).all()  # result == reference at the anchor frame
    at_anchor.zeta.value = 1.5
    assert (at_anchor.difference == 128).all()


def test_motion_frame_is_the_furthest_from_the_anchor(G):
    ws = mapped_ws(G, 1, 2).repeat(T, 1, 1)
    ws[3, 4] += 1.0  # frame 3 moves in a mixed row
    still = np.zeros((T, 4))
    still[:, 3] = 0.1
    r = Reenactor(G=G, w_ref=mapped_ws(G, 1, 1)[0], ws_drive=ws, tracks={"driving": still})
    assert motion_frame(r) == 3
    r.anchor = 3
    assert motion_frame(r) != 3
    ws2 = mapped_ws(G, 1, 2).repeat(T, 1, 1)
    ws2[1, 12] += 5.0  # a row outside the mixed rows 3-7 does not count; the track's move does
    moving = still.copy()
    moving[:, 2] = [0, 0, 0, 9, 0]
    r2 = Reenactor(G=G, w_ref=mapped_ws(G, 1, 1)[0], ws_drive=ws2, tracks={"driving": moving})
    assert motion_frame(r2) == 3
    r3 = Reenactor(G=G, w_ref=mapped_ws(G, 1, 1)[0], ws_drive=mapped_ws(G, 1, 2).repeat(T, 1, 1))
    assert motion_frame(r3) == T - 1  # no motion at all
    assert ReenactmentTuner(r, size=64, frame=2, background=False).frame.value == 2


def test_difference_view_and_gain(G):
    t = ReenactmentTuner(_reenactor(G), size=64, gain=4)
    j = t.frame.value
    ref = _reenactor(G).render_reference(j)
    want = np.clip(128 + 4 * (t.preview.astype(int) - ref.astype(int)), 0, 255).astype(np.uint8)
    assert np.array_equal(t.difference, want) and "× 4" in t.diff_label.value
    assert t.diff_image.value[:8] == b"\x89PNG\r\n\x1a\n" and "v2s-tuner-difference" in t.diff_image._dom_classes
    shown = t.preview.copy()
    t.gain.value = 16
    assert np.array_equal(t.preview, shown)  # no new synthesis, only the difference picture
    want16 = np.clip(128 + 16 * (t.preview.astype(int) - ref.astype(int)), 0, 255).astype(np.uint8)
    assert np.array_equal(t.difference, want16) and "× 16" in t.diff_label.value
    with pytest.raises(ValueError, match="gain"):
        ReenactmentTuner(_reenactor(G), size=64, gain=3)


def test_reset_buttons(G, tuner):
    tuner.frame.value = 3
    tuner.alpha.value, tuner.zeta.value, tuner.strength.value = 2.0, 1.2, 0.4
    tuner.layers.value = (1, 2)
    tuner.region_toggles["nose"].value = False
    tuner.source_widgets["position"].value = "co-driving"
    assert tuner.wait(30)
    tuner.reset_paper.click()
    assert tuner.wait(30) and tuner.error is None, tuner.error
    r = tuner.reenactor
    assert r.motion_mode == "paper" and r.position_mode == "absolute" and r.anchor == "first"
    assert (r.alpha, r.beta, r.gamma, r.zeta, r.strength) == (-1, 1, 1, 0.5, 1)
    assert r.layers == PAPER_DEFAULTS["layers"] and r.regions == ("eyes", "nose", "mouth")
    assert r.sources()["position"] == "driving"
    want = _reenactor(G, motion_mode="paper", position_mode="absolute").render_frame(3)
    assert np.array_equal(tuner.preview, want)
    tuner.reset_v2s.click()
    assert tuner.wait(30)
    assert (r.motion_mode, r.position_mode) == (V2S_NB_DEFAULTS["motion_mode"], V2S_NB_DEFAULTS["position_mode"])
    assert (r.alpha, r.beta, r.gamma, r.zeta) == (0, 0, 1, 0.5)
    assert np.array_equal(tuner.preview, _reenactor(G).render_frame(3))
    with pytest.raises(ValueError, match="paper"):
        tuner.reset("nonsense")


def test_toggle_states_are_visible(tuner):
    eyes = tuner.region_toggles["eyes"]
    assert eyes.value and eyes.button_style == "success" and eyes.icon == "check"
    eyes.value = False
    assert eyes.button_style == "" and eyes.icon == "times"
    eyes.value = True
    assert eyes.button_style == "success"
    import ipywidgets as W
    for w in (tuner.motion_mode, tuner.position_mode, tuner.gain, *tuner.source_widgets.values()):
        assert isinstance(w, W.ToggleButtons)  # every choice visible, the chosen one highlighted


def test_latest_value_wins(tuner):
    """Many changes in a row end with the preview of the last one, not a queue of renders."""
    for v in np.linspace(-2, 2, 15):
        tuner.alpha.value = float(v)
    assert tuner.wait(30)
    assert tuner.reenactor.alpha == 2.0
    assert np.array_equal(tuner.preview, tuner.reenactor.render_frame(0))


def test_synchronous_mode(G):
    t = ReenactmentTuner(_reenactor(G), size=64, background=False)
    before = t.preview.copy()
    t.alpha.value = 2.0
    assert not np.array_equal(t.preview, before)


def test_non_contiguous_rows_are_kept_until_the_slider_moves(G):
    r = _reenactor(G, layers="3,5,7")
    t = ReenactmentTuner(r, size=64, frame=2, background=False)
    assert r.layers == (3, 5, 7) and t.params["layers"] == (3, 5, 7) and "rows 3,5,7" in t.status.value
    assert np.array_equal(t.preview, _reenactor(G, layers="3,5,7").render_frame(2))
    t.alpha.value = 1.0  # another control: the rows stay
    assert r.layers == (3, 5, 7)
    t.layers.value = (2, 4)
    assert r.layers == (2, 3, 4)
    t.reset("paper")  # rows 3-7, also where the slider already showed 3-7
    assert r.layers == (3, 4, 5, 6, 7)


def test_refresh_renders_codes_changed_from_code(G):
    r = _reenactor(G)
    t = ReenactmentTuner(r, size=64, frame=2, background=False)
    r.w_ref = mapped_ws(G, 1, 7)[0]
    t.refresh()
    want = _reenactor(G)
    want.w_ref = mapped_ws(G, 1, 7)[0]
    assert np.array_equal(t.preview, want.render_frame(2))
    assert np.array_equal(t._ref_cache[1], want.render_reference(2))


def test_best_anchor_needs_the_motion_sources_landmarks(G):
    from v2s_nb.face.regions import template_landmarks

    lm = template_landmarks(64)
    t = ReenactmentTuner(_reenactor(G, points={"reference": lm}), size=64, frame=2, background=False)
    assert "best" not in [o[1] for o in t.anchor.options]  # no driving landmarks: 'best' cannot work
    r = _reenactor(G, points={"reference": lm, "driving": np.repeat(lm[None], T, 0)})
    t = ReenactmentTuner(r, size=64, frame=2, background=False)
    t.anchor.value = "best"
    assert t.error is None and r.anchor == "best"
    t.source_widgets["motion"].value = "co-driving"  # no co-driving landmarks
    assert isinstance(t.error, ValueError) and "not applied" in t.status.value
    assert r.motion == "driving" and r.anchor == "best"  # previous settings kept
    assert r.render_video(progress=False).shape == (T, 64, 64, 3)


def test_frame_must_be_in_range(G):
    with pytest.raises(ValueError, match="outside the 5 frames"):
        ReenactmentTuner(_reenactor(G), size=64, frame=T, background=False)
    assert ReenactmentTuner(_reenactor(G), size=64, frame=-1, background=False).frame.value == T - 1
    with pytest.raises(TypeError, match="the tuner takes a Reenactor .*got str"):
        ReenactmentTuner("r")  # an AttributeError deep inside
    for bad in ({"size": 0}, {"batch": 0}, {"size": 64.5}):  # batch 0 ran as 1; size 0 failed in PIL
        with pytest.raises(ValueError, match="size|batch"):
            ReenactmentTuner(_reenactor(G), frame=0, background=False, **{"size": 64, **bad})
    with pytest.raises(ValueError, match=r"size \(displayed height in pixels\) = 0 is out of range"):
        SideBySidePlayer({"a": np.zeros((2, 8, 8, 3), np.uint8)}, size=0)


def test_render_button_produces_video(G, tuner):
    tuner.alpha.value = 0.5
    tuner.wait()
    tuner.render_button.click()
    assert tuner.error is None, tuner.error
    assert tuner.video.shape == (T, 64, 64, 3)
    assert tuner.progress.value == T
    assert "<video" in tuner.video_html.value
    assert np.array_equal(tuner.video, _reenactor(G, alpha=0.5).render_video(progress=False))


def test_player_side_by_side(G):
    r = _reenactor(G)
    res = r.render_video(progress=False)
    drv = np.zeros((T + 2, 32, 48, 3), np.uint8)
    drv[:, :, :, 0] = np.arange(T + 2)[:, None, None] * 20
    p = SideBySidePlayer({"driving": drv, "co-driving": None, "result": res}, fps=10, size=64)
    assert p.titles == ["driving", "result"] and p.num_frames == T + 2
    assert p.frame.max == T + 1 and p.play.max == T + 1
    p.frame.value = 2
    assert np.array_equal(p.current[0], drv[2]) and np.array_equal(p.current[1], res[2])
    # One picture holds every clip (they change together): driving scaled to 64 px high, a gap, the result.
    pic = p.composite(2)
    assert pic.shape == (64, 96 + 6 + 64, 3) and (pic[:, 96:102] == 255).all()
    assert abs(int(pic[:, :96, 0].mean()) - 40) <= 1
    assert np.abs(pic[:, 102:].astype(int) - res[2].astype(int)).max() == 0
    shown = p.image.value
    p.frame.value = T + 1  # the shorter clip holds its last frame
    assert np.array_equal(p.current[1], res[-1]) and p.image.value != shown
    p.frame.value = 2
    assert p.image.value == shown  # replayed from the cache
    with pytest.raises(ValueError):
        SideBySidePlayer({"a": None})


@pytest.mark.parametrize("fps", [0, -3, float("nan"), "fast"])
def test_player_rejects_bad_fps(fps):
    with pytest.raises(ValueError, match="fps must be a positive number"):  # was ZeroDivisionError, or ran
        SideBySidePlayer({"a": np.zeros((2, 8, 8, 3), np.uint8)}, fps=fps)


def test_player_narrow_clip_is_at_least_one_pixel_wide():
    p = SideBySidePlayer({"line": np.zeros((2, 400, 1, 3), np.uint8), "b": np.zeros((2, 32, 48, 3), np.uint8)},
                         size=100)  # 100 * 1 / 400 rounded to a 0 px wide thumbnail
    assert p.composite(1).shape == (100, 1 + 6 + 150, 3)


def test_rows_without_channels_are_said_in_the_status(G):
    """Rows 9-13 hold none of the X_s channels (found on rows 3-7): α / β / γ and the region toggles did nothing
    there while the status still listed the regions as if they acted. The slider stays free; the status says so."""
    r = _reenactor(G)
    t = ReenactmentTuner(r, size=64, frame=2, background=False)
    assert "v2s-tuner-rows-note" not in t.status.value and "X_s channels)" in t.status.value
    t.layers.value = (9, 13)  # a legitimate choice (the paper's layer experiments): allowed
    assert r.layers == (9, 10, 11, 12, 13) and t.error is None
    status = t.status.value
    assert "v2s-tuner-rows-note" in status and "(0 X_s channels)" in status, status
    assert "rows 9-13 hold none of the X_s channels (eyes, nose, mouth on rows 3-7)" in status, status
    assert "α, β, γ and the region toggles change nothing" in status and "ζ still" in status
    before = t.preview.copy()
    t.alpha.value = 2.0  # what the note says: no effect ...
    assert np.array_equal(t.preview, before)
    t.zeta.value = 1.0  # ... but ζ acts
    assert not np.array_equal(t.preview, before)
    t.layers.value = (6, 10)  # rows 6-7 hold channels again: no note
    assert "v2s-tuner-rows-note" not in t.status.value
    for tg in t.region_toggles.values():  # no region chosen: nothing to warn about
        tg.value = False
    assert "regions none" in t.status.value and "X_s channels" not in t.status.value


def test_rows_note_names_a_region_without_channels_there(G):
    from v2s_nb.widgets.tuner import channel_rows

    r = _reenactor(G)
    r.region_channels["eyes"] = {k: v for k, v in r.region_channels["eyes"].items() if k == layer_names(G, 3)[0]}
    r.region_channels["nose"] = {}
    assert channel_rows(r) == {"eyes": (3,), "nose": (), "mouth": (3, 4, 5, 6, 7)}
    t = ReenactmentTuner(r, size=64, frame=2, background=False)
    assert "rows 3-7 hold no channel of nose (nose: none found): its toggle changes nothing" in t.status.value
    t.layers.value = (5, 7)
    status = t.status.value
    assert "rows 5-7 hold no channel of eyes, nose (eyes on row 3; nose: none found)" in status, status
    assert "their toggles change nothing" in status
    t.layers.value = (9, 9)
    assert "row 9 holds none of the X_s channels" in t.status.value, t.status.value
    t.layers.value = (3, 7)
    t.region_toggles["mouth"].value = False  # eyes (row 3) and nose (none) on; mouth, off, has rows 4-7
    t.layers.value = (4, 7)
    status = t.status.value
    assert "rows 4-7 hold none of the X_s channels (eyes on row 3; nose: none found)" in status, status
    assert "α, β, γ change nothing here unless mouth is switched on" in status, status


def test_refresh_follows_a_shortened_clip_and_settings_set_from_code(G):
    """refresh() after changing the Reenactor from code: the frame slider stayed on frame 5 of a clip cut to 3 frames
    (IndexError in the status, the old preview kept) and the settings set from code were put back to the controls'."""
    r = _reenactor(G)
    t = ReenactmentTuner(r, size=64, frame=T - 1, background=False)
    r.ws_drive, r.ws_codrive = mapped_ws(G, 3, 2), None  # the tracks may stay longer
    r.alpha, r.layers, r.regions = 2.5, (3, 4), ("mouth",)
    t.refresh()
    assert t.error is None, t.error
    assert (t.frame.max, t.frame.value, t.progress.max) == (2, 2, 3)
    assert [v for _, v in t.anchor.options] == ["first", 0, 1, 2]
    assert (r.alpha, r.layers, r.regions) == (2.5, (3, 4), ("mouth",)) and t.alpha.value == 2.5
    assert t.params["layers"] == (3, 4) and t.params["regions"] == ("mouth",)
    assert t.source_widgets["motion"].disabled and "no co-driving video" in t._notes.value
    want = dataclasses.replace(_reenactor(G), ws_drive=mapped_ws(G, 3, 2), ws_codrive=None, alpha=2.5, layers=(3, 4),
                               regions=("mouth",))
    assert np.array_equal(t.preview, want.render_frame(2))
    t.reenactor = other = _reenactor(G, zeta=0.25)  # another Reenactor: its settings and frames
    t.refresh()
    assert t.frame.max == T - 1 and t.zeta.value == 0.25 and other.alpha == 0
    assert np.array_equal(t.preview, _reenactor(G, zeta=0.25).render_frame(2))


def test_a_nan_coefficient_is_refused_and_not_left_on_the_reenactor(G):
    """A NaN set on a slider from code stayed on the Reenactor (prepare() does not check coefficients), so a later
    render_video() failed although the tuner says that settings it cannot use are not applied."""
    r = _reenactor(G)
    t = ReenactmentTuner(r, size=64, frame=2, background=False)
    t.alpha.value = float("nan")
    assert r.alpha == 0 and r.render_video(progress=False).shape == (T, 64, 64, 3)
    assert isinstance(t.error, ValueError) and "not applied" in t.status.value and "alpha" in t.status.value


def test_close_frees_the_tuner_and_the_player(G):
    """Closing ``tuner.widget`` closed only the outer box: the controls stayed registered with ipywidgets and their
    callbacks kept the tuner, its video and its Reenactor (generators, S codes) alive for the whole session."""
    import gc
    import weakref

    from ipywidgets.widgets.widget import _instances

    r = _reenactor(G)
    t = ReenactmentTuner(r, size=64, frame=2)
    t.render()
    before = set(_instances)
    widgets = {w.model_id for w in (t.alpha, t.frame, t.image, t.layers, t.alpha.layout)}
    assert widgets <= before
    t.close()
    assert not widgets & set(_instances) and t.video is None and t.preview is None
    assert t._repr_mimebundle_() == {"text/plain": "ReenactmentTuner (closed)"}
    t.alpha.value = 1.0  # no render after close
    assert t._thread is None and r.alpha == 0
    refs = weakref.ref(t), weakref.ref(r)
    del t, r
    gc.collect()
    assert all(ref() is None for ref in refs)
    p = SideBySidePlayer({"a": np.zeros((3, 8, 8, 3), np.uint8), "b": np.zeros((2, 8, 4, 3), np.uint8)})
    link, ref = p._link.model_id, weakref.ref(p)
    p.close()
    assert link not in _instances and p.clips == []
    del p
    gc.collect()
    assert ref() is None


def test_player_says_when_clips_have_different_frame_rates():
    """A 30 fps driving clip and a 10 fps result were paired frame by frame and played at 30 fps without a word:
    at 0.5 s of the driving clip the player showed the result's last frame (0.9 s)."""
    from v2s_nb.method.reenact import LengthMismatchWarning
    from v2s_nb.video import Video

    drv, res = Video(np.zeros((30, 8, 8, 3), np.uint8), fps=30), Video(np.zeros((10, 8, 8, 3), np.uint8), fps=10)
    with pytest.warns(LengthMismatchWarning, match=r"'driving' 30 fps, 'result' 10 fps.*frame by frame"):
        p = SideBySidePlayer({"driving": drv, "result": res})
    assert p.fps == 30 and "10 fps" in p.widget.children[1].children[1].value
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SideBySidePlayer({"driving": drv, "result": Video(res.frames, fps=30)})  # same rate: nothing to say
