"""Motion modes (relative / absolute / paper), the anchor frame and the relative position track, on planted codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import mapped_ws
from v2s_nb.face import FFHQ_FACE_SIZE, CanonicalTrack, template_landmarks
from v2s_nb.method.motion import (MOTION_MODES, anchor_errors, check_strength, motion_mode, resolve_anchor)
from v2s_nb.method.reenact import Reenactor
from v2s_nb.stylegan3 import tiny_generator

T = 6


@pytest.fixture(scope="module")
def G():
    return tiny_generator("R", resolution=64)


def _rc(G):
    names = G.synthesis.style_names
    return {"eyes": {names[3]: [0, 5], names[5]: [1]}, "nose": {names[4]: [2]}, "mouth": {names[7]: [3, 4]}}


def _reenactor(G, **kw):
    return Reenactor(G=G, w_ref=mapped_ws(G, 1, 1)[0], ws_drive=mapped_ws(G, T, 2), region_channels=_rc(G), **kw)


def _planted(G, r):
    """s_ref [1, C] and s_j [T, C] per mixed layer, straight from the affine maps."""
    with torch.no_grad():
        s_ref = G.synthesis.styles(r.w_ref[None])
        s_drv = G.synthesis.styles(r.ws_drive)
    return s_ref, s_drv


def _check(G, r, local, other, frames=range(T)):
    """Every frame's S codes: X_s channels == local(s_ref, s_j, j), other channels of the mixed rows ==
    other(s_ref, s_j, j), rows outside == s_ref; to float precision."""
    s_ref, s_drv = _planted(G, r)
    masks = r.masks()
    mixed = set(r.mixed_layer_names())
    for j in frames:
        s = r.styles([j])
        for name in G.synthesis.style_names:
            got, ref = s[name][0].double(), s_ref[name][0].double()
            if name not in mixed:
                assert torch.equal(s[name][0], s_ref[name][0]), name
                continue
            m = torch.from_numpy(masks[name])
            want_l = local(ref, s_drv[name].double(), j)
            want_o = other(ref, s_drv[name].double(), j)
            scale = 1 + ref.abs().max()
            torch.testing.assert_close(got[m], want_l[m], atol=2e-6 * scale, rtol=0)
            torch.testing.assert_close(got[~m], want_o[~m], atol=2e-6 * scale, rtol=0)
        assert any(masks[n].any() for n in mixed)


def test_modes_defined_in_one_place():
    assert MOTION_MODES == ("relative", "absolute", "paper")
    assert motion_mode("paper").coefficients == {"alpha": -1.0, "beta": 1.0, "gamma": 1.0, "zeta": 0.5}
    assert motion_mode("paper").baseline == "printed"
    with pytest.raises(ValueError, match="motion mode must be one of"):
        motion_mode("cumulative")
    with pytest.raises(ValueError, match="strength"):
        check_strength(float("nan"))


@pytest.mark.parametrize("k", [1.0, 0.5])
def test_relative_mode_algebra(G, k):
    r = _reenactor(G, strength=k)  # defaults: relative, anchor 'first'
    assert r.motion_mode == "relative" and (r.alpha, r.beta, r.gamma, r.zeta) == (0, 0, 1, 0.5)
    _check(G, r, lambda ref, s, j: ref + k * (s[j] - s[0]), lambda ref, s, j: ref + 0.5 * k * (s[j] - s[0]))


def test_relative_mode_with_anchor_index_and_tuned_coefficients(G):
    r = _reenactor(G, anchor=3, alpha=0.25, beta=0.5, gamma=0.75, zeta=0.2)
    # general form: α s_ref + β s_j + γ (s_ref + k (s_j - s_a)); ζ s_ref + (1 - ζ) (s_ref + k (s_j - s_a))
    _check(G, r, lambda ref, s, j: 0.25 * ref + 0.5 * s[j] + 0.75 * (ref + s[j] - s[3]),
           lambda ref, s, j: ref + 0.8 * (s[j] - s[3]))
    assert r.anchor_frame() == 3


def test_absolute_mode_algebra(G):
    r = _reenactor(G, motion_mode="absolute", anchor=2)
    assert (r.alpha, r.beta, r.gamma, r.zeta) == (0, 1, 0, 0.5)
    _check(G, r, lambda ref, s, j: s[j], lambda ref, s, j: ref + 0.5 * (s[j] - s[2]))


def test_paper_mode_algebra(G):
    r = _reenactor(G, motion_mode="paper")
    assert r.baseline_reading() == "printed"
    prev = lambda s, j: s[max(j - 1, 0)]  # noqa: E731  (w_{-1} := w_0)
    # printed eq 7 with α=-1, β=1, γ=1: -s_ref + s_j + (s_ref + s_(j-1) - s_j) = s_(j-1)
    _check(G, r, lambda ref, s, j: prev(s, j), lambda ref, s, j: ref + 0.5 * (prev(s, j) - s[j]))


def test_relative_anchor_frame_reproduces_the_reference(G):
    """At the anchor the relative mode (and the relative position track) give the reference exactly."""
    for a in (0, 4):
        r = _reenactor(G, anchor=a, position="none")
        assert np.array_equal(r.render_frame(a), r.render_reference())
        assert not np.array_equal(r.render_frame((a + 1) % T), r.render_reference())


# ------------------------------------------------------------------------------------------ anchor


def _turn(p, deg, scale=1.0, shift=(0.0, 0.0)):
    a = np.radians(deg)
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    c = p.mean(0)
    return (p - c) @ rot.T * scale + c + np.asarray(shift)


def test_best_anchor_is_the_frame_whose_expression_matches_the_reference():
    ref = template_landmarks(64)
    frames = []
    for j, opening in enumerate([6.0, 3.0, 0.0, 4.0, 8.0]):   # mouth opening in pixels; frame 2 matches
        p = ref.copy()
        p[57:60, 1] += opening                                 # lower lip down
        p[65:68, 1] += opening
        p[[37, 38, 43, 44], 1] += 0.2 * opening                # eyelids
        frames.append(_turn(p, 10 * (j - 2), 1.3, (5, -3)))   # and a different similarity each frame
    drive = np.stack(frames)
    err = anchor_errors(drive, ref)
    assert err[2] < 1e-9 and np.argmin(err) == 2 and (np.delete(err, 2) > 0.01).all()
    assert resolve_anchor("best", 5, drive, ref) == 2
    assert resolve_anchor("first", 5) == 0 and resolve_anchor(-1, 5) == 4 and resolve_anchor("3", 5) == 3
    drive[2] = np.nan                                          # no face in frame 2: the next best
    assert resolve_anchor("best", 5, drive, ref) == 1
    with pytest.raises(ValueError, match="needs the aligned landmarks"):
        resolve_anchor("best", 5)
    with pytest.raises(ValueError, match="outside"):
        resolve_anchor(5, 5)
    with pytest.raises(ValueError, match="'first', 'best' or a frame index"):
        resolve_anchor("middle", 5)


def test_reenactor_best_anchor_from_points(G):
    ref = template_landmarks(64)
    drive = np.stack([ref.copy() for _ in range(T)])
    drive[:, 48:68, 1] += np.abs(np.arange(T) - 4)[:, None] * 1.5  # the mouth matches best at frame 4
    drive = np.stack([_turn(p, 5.0 * j) for j, p in enumerate(drive)])
    r = _reenactor(G, anchor="best", points={"reference": ref, "driving": drive})
    assert r.anchor_frame() == 4
    _check(G, r, lambda ref_, s, j: ref_ + (s[j] - s[4]), lambda ref_, s, j: ref_ + 0.5 * (s[j] - s[4]), frames=[0, 4])
    with pytest.raises(ValueError, match="needs the aligned landmarks"):
        _reenactor(G, anchor="best")


# ------------------------------------------------------------------------------------------ position


def _track(n=T, size=0.1):
    t = np.arange(n, dtype=float)
    return CanonicalTrack(0.3 + 0.01 * t, -0.2 + 0.02 * t, 3.0 * t, np.zeros(n, bool), 640,
                          face_size=np.full(n, size))


def test_relative_position_track_in_face_units(G):
    tr = _track()
    r = _reenactor(G, tracks={"driving": tr}, anchor=2, ref_face_size=0.3)
    got = r.position_track()
    want = tr.relative_to(2, face_size=0.3).as_array()
    np.testing.assert_allclose(got, want)
    assert np.all(got[2] == 0)
    # the same motion filmed with the face twice as large in the frame: the same output track
    big = tr.replace(tx=2 * (tr.tx - tr.tx[0]) + 0.1, ty=2 * (tr.ty - tr.ty[0]), face_size=2 * tr.face_size)
    got_big = _reenactor(G, tracks={"driving": big}, anchor=2, ref_face_size=0.3).position_track()
    np.testing.assert_allclose(got_big, got, atol=1e-12)
    # the reference's face size from its landmarks (pixels of the 64 px crop), else FFHQ's
    p = template_landmarks(64)
    r2 = _reenactor(G, tracks={"driving": tr}, points={"reference": p})
    e = 0.5 * (p[36:42].mean(0) + p[42:48].mean(0))
    assert r2.reference_face_size() == pytest.approx(np.hypot(*(p[48:68].mean(0) - e)) / 64)
    assert _reenactor(G, tracks={"driving": tr}).reference_face_size() == FFHQ_FACE_SIZE
    # the printed track stays available
    ab = _reenactor(G, tracks={"driving": tr}, position_mode="absolute").position_track()
    np.testing.assert_allclose(ab, tr.as_array())
    # the frame at the anchor renders like no position at all; other frames move
    rp = _reenactor(G, tracks={"driving": tr}, anchor=2)
    rn = _reenactor(G, tracks={"driving": tr}, anchor=2, position="none")
    assert np.abs(rp.render_frame(2).astype(int) - rn.render_frame(2).astype(int)).max() <= 1
    assert np.abs(rp.render_frame(5).astype(int) - rn.render_frame(5).astype(int)).max() > 10


def test_relative_position_turns_about_the_reference_face_centre(G):
    """The relative track is the motion of the face centre, so the generator turns about the reference's face
    centre: that point moves by exactly (tx, ty) whatever the angle. The printed track turns about the image centre."""
    p = template_landmarks(64)
    tr = _track()
    r = _reenactor(G, tracks={"driving": tr}, points={"reference": p})
    e = 0.5 * (p[36:42].mean(0) + p[42:48].mean(0))
    centre = (e + 0.5 * (p[48:68].mean(0) - e)) / 64
    assert r.face_centre() == pytest.approx(tuple(centre))
    a = r.position_track()
    for j, m in enumerate(r.position_transforms()):
        moved = np.linalg.inv(m) @ np.r_[centre - 0.5, 1.0]     # the forward matrix moves content points
        np.testing.assert_allclose(moved[:2], centre - 0.5 + a[j, :2], atol=1e-12)
    assert _reenactor(G, tracks={"driving": tr}).face_centre() == pytest.approx((0.5, 0.6))
    ab = _reenactor(G, tracks={"driving": tr}, position_mode="absolute")
    from v2s_nb.stylegan3.transform import input_transform
    np.testing.assert_allclose(ab.position_transforms(), input_transform(tr.tx, tr.ty, tr.angle))


def test_relative_position_needs_the_face_size(G):
    r = _reenactor(G, tracks={"driving": _track().as_array()})   # [T, 3]: no face size
    with pytest.raises(ValueError, match="face size"):
        r.render_frame(1)
    r.position_mode = "absolute"
    r.render_frame(1)


def test_modes_survive_save_load(G, tmp_path):
    p = template_landmarks(64)
    r = _reenactor(G, tracks={"driving": _track()}, motion_mode="absolute", strength=0.7, anchor="best",
                   points={"reference": p, "driving": np.stack([p + j for j in range(T)])},
                   info={"generator_spec": {"kind": "tiny", "cfg": "R", "resolution": 64, "seed": 0}})
    r.save(tmp_path / "r")
    r2 = Reenactor.load(tmp_path / "r")
    assert (r2.motion_mode, r2.strength, r2.anchor, r2.position_mode) == ("absolute", 0.7, "best", "relative")
    assert r2.anchor_frame() == r.anchor_frame()
    assert np.array_equal(r.render_video(progress=False), r2.render_video(progress=False))


def test_baseline_anchor_and_strength_by_hand():
    from v2s_nb.method.baseline import baseline_ws
    ref = torch.randn(2, 3)
    ws = torch.randn(4, 2, 3)
    torch.testing.assert_close(baseline_ws(ref, ws, anchor=2, strength=0.5), ref + 0.5 * (ws - ws[2]))
    torch.testing.assert_close(baseline_ws(ref, ws, anchor=-1), ref + (ws - ws[3]))
    prev = torch.cat([ws[:1], ws[:-1]])
    torch.testing.assert_close(baseline_ws(ref, ws, "printed", strength=2.0), ref + 2.0 * (prev - ws))
    with pytest.raises(IndexError, match="anchor"):
        baseline_ws(ref, ws, anchor=4)
