"""Canonical transforms (the paper's section 3.2): accuracy on a real photo, signs, smoothing, missing faces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data, transform

from v2s_nb.face import (FFHQ_EYE_MIDPOINT, CanonicalTrack, LandmarkTrack, NoFaceError, align_face,
                         canonical_track, eye_mouth_geometry, landmarks)
from v2s_nb.stylegan3.transform import forward_matrix, input_transform

W = 512
# (angle in degrees, counter-clockwise as seen; shift dx, dy in pixels) per frame; frame 0 is the original
MOTION = [(0, 0, 0), (-20, 10, -5), (-10, -20, 8), (-5, 0, 0), (5, 15, 15), (12, -10, -12), (20, 0, 20)]


@pytest.fixture(scope="module")
def face512():
    """The astronaut's face region (256 px around it) upscaled to 512x512: a face of ~180 px."""
    crop = data.astronaut()[130 - 128:130 + 128, 222 - 128:222 + 128]
    return cv2.resize(crop, (W, W), interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def moving_clip(face512):
    """Clip of the face turned about its eye midpoint and shifted by MOTION; returns (frames, matrices [T, 2, 3])."""
    e, _ = eye_mouth_geometry(landmarks(face512, upsample=0, progress=False).points[0])
    frames, mats = [], []
    for angle, dx, dy in MOTION:
        m = cv2.getRotationMatrix2D((float(e[0]), float(e[1])), angle, 1.0)  # +angle = counter-clockwise as seen
        m[:, 2] += (dx, dy)
        frames.append(cv2.warpAffine(face512, m, (W, W), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101))
        mats.append(m)
    return np.stack(frames), np.stack(mats)


@pytest.mark.slow
def test_real_photo_rotation_and_translation(moving_clip):
    frames, mats = moving_clip
    track = landmarks(frames, upsample=0, progress=False)
    assert track.found.all()
    ct = canonical_track(track)
    assert len(ct) == len(MOTION) and not ct.interpolated.any()
    e0, _ = eye_mouth_geometry(track.points[0])
    for i, (angle, _, _) in enumerate(MOTION):
        assert ct.angle[i] - ct.angle[0] == pytest.approx(angle, abs=1.5), i
        e_true = mats[i, :, :2] @ e0 + mats[i, :, 2]  # where the known warp moved the eye midpoint
        assert ct.tx[i] - ct.tx[0] == pytest.approx((e_true[0] - e0[0]) / W, abs=0.01), i
        assert ct.ty[i] - ct.ty[0] == pytest.approx((e_true[1] - e0[1]) / W, abs=0.01), i
    rel = ct.relative_to(0)
    assert rel.tx[0] == rel.ty[0] == rel.angle[0] == 0
    np.testing.assert_allclose(rel.angle, ct.angle - ct.angle[0])


def test_image_centre_rotation_with_skimage(face512):
    """skimage.transform.rotate (about the image centre, on a padded canvas): the angle follows, same sign."""
    canvas = np.pad(face512, ((128, 128), (128, 128), (0, 0)), mode="reflect")
    angles = [0, -15, 8, 18]
    clip = np.stack([transform.rotate(canvas, a, mode="reflect", preserve_range=True).astype(np.uint8)
                     for a in angles])
    ct = canonical_track(landmarks(clip, upsample=0, progress=False))
    np.testing.assert_allclose(ct.angle - ct.angle[0], angles, atol=1.5)
    # the eyes turn about the image centre too: check the translation against that
    w = canvas.shape[1]
    centre = np.array([(w - 1) / 2, (w - 1) / 2])
    e_prime = np.array([0.5 * w, FFHQ_EYE_MIDPOINT[1] * w])  # square frame
    e0 = np.array([ct.tx[0], ct.ty[0]]) * w + e_prime  # eye midpoint of frame 0, pixels
    for i, a in enumerate(angles):
        r = forward_matrix(0, 0, a)[:2, :2]  # content rotation, counter-clockwise as seen
        e_i = r @ (e0 - centre) + centre
        np.testing.assert_allclose([ct.tx[i], ct.ty[i]], (e_i - e_prime) / w, atol=0.01)


def test_signs_and_units_exact():
    """Synthetic landmarks: a known rotation / shift gives exactly that angle / translation."""
    rng = np.random.default_rng(1)
    pts = np.zeros((68, 2))
    pts[36:42] = (200, 200) + rng.normal(0, 2, (6, 2))
    pts[42:48] = (300, 200) + rng.normal(0, 2, (6, 2))
    pts[48:68] = (250, 300) + rng.normal(0, 5, (20, 2))
    e, v = eye_mouth_geometry(pts)
    base = np.degrees(np.arctan2(v[0], v[1]))
    out = []
    for angle, shift in [(0, (0, 0)), (30, (0, 0)), (-45, (0, 0)), (0, (51.2, -25.6))]:
        m = cv2.getRotationMatrix2D((float(e[0]), float(e[1])), angle, 1.0)
        m[:, 2] += shift
        out.append(pts @ m[:, :2].T + m[:, 2])
    ct = canonical_track(np.stack(out), 512)
    np.testing.assert_allclose(ct.angle - base, [0, 30, -45, 0], atol=1e-9)
    np.testing.assert_allclose([ct.tx[3] - ct.tx[0], ct.ty[3] - ct.ty[0]], [0.1, -0.05], atol=1e-12)
    # t = (e - e') / W with e' = (0.5, 0.475) of a square frame, in pixel-centre coordinates (- 0.5 px)
    np.testing.assert_allclose([ct.tx[0], ct.ty[0]], (e - np.array([256, 0.475 * 512]) + 0.5) / 512, atol=1e-12)
    # the chin swinging to the right (counter-clockwise as seen) is a positive angle, like skimage.rotate
    swung = pts.copy()
    swung[48:68, 0] += 40
    assert canonical_track(swung, 512).angle[0] > base


def test_ffhq_aligned_face_is_near_identity():
    """e' check: an FFHQ-aligned crop of the astronaut has tx, ty ~ 0 and a small angle."""
    img = data.astronaut()
    al = align_face(img, landmarks(img, upsample=0, progress=False).points[0], 512)
    ct = canonical_track(landmarks(al.image, upsample=0, progress=False))
    assert abs(ct.tx[0]) < 0.01 and abs(ct.ty[0]) < 0.01
    assert abs(ct.angle[0]) < 3


def test_aligned_crop_of_the_template_face_is_exactly_canonical():
    """e' is where align_face puts the eye midpoint, in the landmarks' pixel-centre coordinates: the template face,
    aligned, has t = 0 exactly (it was off by half a pixel)."""
    from v2s_nb.face import template_landmarks
    pts = template_landmarks(200) + [90, 40]
    for size in (64, 512):
        al = align_face(np.zeros((300, 400, 3), np.uint8), pts, size)
        ct = canonical_track(al.to_crop(pts), size)
        np.testing.assert_allclose([ct.tx[0] * size, ct.ty[0] * size], [0, 0], atol=1e-6)


def test_non_square_frames_use_width_units():
    pts = np.zeros((68, 2))
    pts[36:42], pts[42:48], pts[48:68] = (300, 240), (340, 240), (320, 290)
    ct = canonical_track(pts, (640, 480))
    # e' = (W/2, H/2 + (0.475 - 0.5) W) - 0.5 px (landmarks index pixel centres) = (319.5, 223.5); e = (320, 240)
    np.testing.assert_allclose([ct.tx[0], ct.ty[0]], [0.5 / 640, 16.5 / 640], atol=1e-12)
    assert ct.image_size == (640, 480)


def test_missing_frame_interpolated(face512):
    blank = face512.copy()
    blank[100:450, 100:420] = 128
    shifted = np.roll(face512, 30, axis=1)
    clip = np.stack([face512, blank, shifted, blank])
    track = landmarks(clip, upsample=0, progress=False)
    assert track.found.tolist() == [True, False, True, False]
    ct = canonical_track(track)
    assert ct.interpolated.tolist() == [False, True, False, True]
    assert ct.tx[1] == pytest.approx(0.5 * (ct.tx[0] + ct.tx[2]))  # linear between neighbours
    assert ct.angle[1] == pytest.approx(0.5 * (ct.angle[0] + ct.angle[2]))
    assert ct.tx[3] == ct.tx[2] and ct.ty[3] == ct.ty[2]  # end: nearest
    assert ct.tx[2] - ct.tx[0] == pytest.approx(30 / W, abs=0.005)


def test_no_face_and_bad_input():
    empty = LandmarkTrack.from_points(np.full((4, 68, 2), np.nan), 256)
    with pytest.raises(NoFaceError, match="no face"):
        canonical_track(empty)
    with pytest.raises(ValueError, match="image_size"):
        canonical_track(np.zeros((2, 68, 2)))
    with pytest.raises(ValueError, match=r"\[\.\.\., 68, 2\]"):
        canonical_track(np.zeros((2, 5, 2)), 256)


# ------------------------------------------------------------------------------------------ smoothing


def _track(tx, ty=None, angle=None) -> CanonicalTrack:
    tx = np.asarray(tx, float)
    return CanonicalTrack(tx, tx * 0 if ty is None else ty, tx * 0 if angle is None else angle,
                          np.zeros(len(tx), bool), 512)


@pytest.mark.parametrize("method", ["mean", "gaussian"])
def test_smoothing_reduces_jitter(method):
    rng = np.random.default_rng(0)
    t = np.arange(120)
    clean = 0.05 * np.sin(t / 15)
    noisy = _track(clean + rng.normal(0, 0.01, 120), clean + rng.normal(0, 0.01, 120),
                   10 * np.sin(t / 20) + rng.normal(0, 1.0, 120))
    for kernel in (3, 5, 9):
        sm = noisy.smooth(kernel, method=method)
        assert len(sm) == len(noisy) and sm is not noisy
        for name in ("tx", "ty", "angle"):
            before = np.std(np.diff(getattr(noisy, name)))
            after = np.std(np.diff(getattr(sm, name)))
            assert after < 0.7 * before, (name, kernel, before, after)
        # closer to the clean signal, and no lag: the cross-correlation peak is at zero shift
        assert np.abs(sm.tx - clean).mean() < np.abs(noisy.tx - clean).mean()
        lags = range(-3, 4)
        corr = [np.corrcoef(np.roll(sm.angle, k)[5:-5], (10 * np.sin(t / 20))[5:-5])[0, 1] for k in lags]
        assert list(lags)[int(np.argmax(corr))] == 0
    np.testing.assert_array_equal(noisy.tx, noisy.smooth(5).tx * 0 + noisy.tx)  # the input is untouched


@pytest.mark.parametrize("ends", ["reflect", "nearest"])
@pytest.mark.parametrize("method", ["mean", "gaussian"])
def test_smoothing_constant_and_step(ends, method):
    const = _track(np.full(9, 0.3), np.full(9, -0.1), np.full(9, 7.0))
    sm = const.smooth(5, method=method, ends=ends)
    np.testing.assert_allclose(sm.as_array(), const.as_array(), atol=1e-12)
    # even step: 0 0 0 0 0 1 1 1 1 1 -> midpoint between frames 4 and 5 stays there
    step = _track(np.r_[np.zeros(5), np.ones(5)]).smooth(3, method=method, ends=ends)
    assert step.tx[4] + step.tx[5] == pytest.approx(1.0)
    assert step.tx[4] < 0.5 < step.tx[5]
    # odd step with a middle frame: 0 0 0 0.5 1 1 1 -> the middle frame keeps 0.5
    odd = _track(np.r_[np.zeros(3), 0.5, np.ones(3)]).smooth(5, method=method, ends=ends)
    assert odd.tx[3] == pytest.approx(0.5)
    # a ramp is unchanged away from the ends (centred filter, no lag)
    ramp = _track(np.linspace(0, 1, 20)).smooth(5, method=method, ends=ends)
    np.testing.assert_allclose(ramp.tx[2:-2], np.linspace(0, 1, 20)[2:-2], atol=1e-12)


def test_smoothing_arguments():
    tr = _track(np.zeros(6))
    for bad in (1, 2, 4, 3.0, True):
        with pytest.raises(ValueError, match="odd"):
            tr.smooth(bad)
    with pytest.raises(ValueError, match="method"):
        tr.smooth(3, method="median")
    with pytest.raises(ValueError, match="ends"):
        tr.smooth(3, ends="wrap")
    assert len(_track(np.zeros(1)).smooth(7)) == 1  # shorter than the kernel is fine
    # a motion keeps its direction whatever the kernel (mirrored ends wrapped round for kernels of 2 T frames or more)
    for n in (2, 5, 10):
        for kernel in (3, 2 * n - 1, 2 * n + 1, 31):
            for method in ("mean", "gaussian"):
                angle = _track(np.zeros(n), np.zeros(n), np.linspace(0, 10, n)).smooth(kernel, method=method).angle
                assert np.all(np.diff(angle) >= -1e-9), (n, kernel, method, angle)


# ------------------------------------------------------------------------------------------ generator transform


def test_input_transforms_use_the_one_convention():
    rng = np.random.default_rng(3)
    tr = _track(rng.normal(0, 0.05, 5), rng.normal(0, 0.05, 5), rng.normal(0, 10, 5))
    m = tr.input_transforms()
    assert m.shape == (5, 3, 3)
    np.testing.assert_allclose(m, input_transform(tr.tx, tr.ty, tr.angle))
    # pivot='eyes': the canonical eye midpoint e' (relative to the centre, in widths) lands at e' + t
    eyes = tr.input_transforms(pivot="eyes")
    off = np.array([FFHQ_EYE_MIDPOINT[0] - 0.5, FFHQ_EYE_MIDPOINT[1] - 0.5, 1.0])
    for i in range(5):
        moved = np.linalg.inv(eyes[i]) @ off  # the forward matrix moves content points
        np.testing.assert_allclose(moved[:2], off[:2] + [tr.tx[i], tr.ty[i]], atol=1e-12)
    with pytest.raises(ValueError, match="pivot"):
        tr.input_transforms(pivot="nose")
    assert CanonicalTrack.identity(4).input_transforms() == pytest.approx(np.broadcast_to(np.eye(3), (4, 3, 3)))


def test_plot():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    tr = _track(np.linspace(0, 0.1, 10)).replace(interpolated=np.arange(10) == 4)
    fig = tr.plot(title="t")
    assert len(fig.axes) == 2
    matplotlib.pyplot.close(fig)


def test_image_size_must_match_the_track():
    """A LandmarkTrack knows its frame size: another image_size (e.g. G.img_resolution) raises, not wrong tx."""
    pts = np.zeros((1, 68, 2))
    pts[0, 36:42], pts[0, 42:48], pts[0, 48:68] = (100, 120), (150, 120), (125, 170)
    track = LandmarkTrack.from_points(pts, 256)
    same = canonical_track(track, (256, 256))  # the same size, said again: fine
    np.testing.assert_array_equal(same.tx, canonical_track(track).tx)
    with pytest.raises(ValueError, match=r"1024x1024 pixels but the LandmarkTrack was measured on 256x256"):
        canonical_track(track, 1024)
