"""Position track for ordinary videos: face units relative to an anchor, robust zero-lag smoothing, face choice."""

from __future__ import annotations

import numpy as np
import pytest

from v2s_nb.face import FFHQ_FACE_SIZE, CanonicalTrack, canonical_track, template_landmarks
from v2s_nb.face.landmark_detection import _pick

T = 120


def _motion(t):
    """Ground-truth head motion per frame: (dx, dy) in face sizes (eye-to-mouth distances), angle in degrees."""
    dx = 0.6 * np.sin(2 * np.pi * t / 47.0) + 0.2 * np.sin(2 * np.pi * t / 13.0)
    dy = 0.3 * np.sin(2 * np.pi * t / 31.0 + 1.0)
    ang = 12.0 * np.sin(2 * np.pi * t / 37.0)
    return dx, dy, ang


_TEMPLATE = template_landmarks(256)
_E = 0.5 * (_TEMPLATE[36:42].mean(0) + _TEMPLATE[42:48].mean(0))
_V = _TEMPLATE[48:68].mean(0) - _E
_CENTRE = _E + 0.5 * _V                       # eye-mouth centre of the template
_SIZE = float(np.hypot(*_V))                  # its eye-to-mouth distance (pixels at 256)


def _face(centre, size, angle_deg):
    """The template face with its eye-mouth centre at ``centre`` (px), eye-to-mouth distance ``size`` (px), turned
    by ``angle_deg`` counter-clockwise as seen (chin to the right)."""
    a = np.radians(angle_deg)
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])  # y down: ccw as seen
    return (_TEMPLATE - _CENTRE) * (size / _SIZE) @ rot.T + centre


def _clip(size_px, start, n=T):
    dx, dy, ang = _motion(np.arange(n))
    return np.stack([_face(np.asarray(start) + size_px * np.array([dx[j], dy[j]]), size_px, ang[j]) for j in range(n)])


# ------------------------------------------------------------------------------------------ face units


def test_relative_track_in_face_units_same_for_tight_and_wide_framing():
    tight = canonical_track(_clip(70.0, (128, 140)), image_size=256)               # face fills the frame
    wide = canonical_track(_clip(21.0, (150, 200)), image_size=(640, 360))          # small and off-centre
    # the printed absolute form differs a lot between the framings ...
    assert abs(tight.tx[0] - wide.tx[0]) > 0.2 and np.ptp(tight.tx) > 2.5 * np.ptp(wide.tx)
    rt, rw = (tr.relative_to(0, face_size=FFHQ_FACE_SIZE) for tr in (tight, wide))
    # ... the face-unit relative track is the same motion (to 1% of its range)
    for k in ("tx", "ty", "angle"):
        a, b = getattr(rt, k), getattr(rw, k)
        assert np.max(np.abs(a - b)) <= 0.01 * np.ptp(a), k
    # and it is the ground truth: the change of the eye-mouth centre in face sizes times the output face size
    dx, dy, ang = _motion(np.arange(T))
    np.testing.assert_allclose(rt.tx, (dx - dx[0]) * FFHQ_FACE_SIZE, atol=1e-9)
    np.testing.assert_allclose(rt.ty, (dy - dy[0]) * FFHQ_FACE_SIZE, atol=1e-9)
    np.testing.assert_allclose(rt.angle, ang - ang[0], atol=1e-9)
    np.testing.assert_allclose(rt.face_size, FFHQ_FACE_SIZE, rtol=1e-9)


def test_relative_track_anchor_and_errors():
    tr = canonical_track(_clip(50.0, (128, 128), n=20), image_size=256)
    rel = tr.relative_to(7, face_size=0.3)
    assert rel.tx[7] == rel.ty[7] == rel.angle[7] == 0 and rel.face_size[7] == pytest.approx(0.3)
    assert rel.tx[6] != 0
    with pytest.raises(ValueError, match="face sizes"):
        CanonicalTrack(tr.tx, tr.ty, tr.angle, tr.interpolated, 256).relative_to(0, face_size=0.25)
    with pytest.raises(ValueError, match="positive"):
        tr.relative_to(0, face_size=-1)
    with pytest.raises(IndexError):
        tr.relative_to(20, face_size=0.25)
    # the old form (image widths, no face_size) is unchanged
    np.testing.assert_allclose(tr.relative_to(3).tx, tr.tx - tr.tx[3])
    assert tr.as_array(face_size=True).shape == (20, 4) and tr.as_array().shape == (20, 3)


# ------------------------------------------------------------------------------------------ robust smoothing


def _noisy_clip(seed, n=T, outlier_rate=0.05, noise_px=1.0):
    """(clean, noisy) landmark clips [n, 68, 2] of 256x256 frames: landmark noise on every frame and false faces
    (another face somewhere else in the frame, another size and angle) on ``outlier_rate`` of the frames."""
    rng = np.random.default_rng(seed)
    clean = _clip(60.0, (128, 140), n)
    noisy = clean + rng.normal(0, noise_px, clean.shape)
    bad = rng.choice(n, size=int(round(outlier_rate * n)), replace=False)
    for j in bad:
        noisy[j] = _face(rng.uniform(40, 216, 2), rng.uniform(25, 90), rng.uniform(-40, 40))
    return clean, noisy, np.sort(bad)


def _rms(track, truth):
    return float(np.sqrt(np.mean([(track.tx - truth.tx) ** 2 / np.ptp(truth.tx) ** 2,
                                  (track.ty - truth.ty) ** 2 / np.ptp(truth.ty) ** 2,
                                  (track.angle - truth.angle) ** 2 / np.ptp(truth.angle) ** 2])))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_robust_smoothing_halves_the_error_of_the_paper_filter(seed):
    clean, noisy, bad = _noisy_clip(seed)
    truth = canonical_track(clean, image_size=256)
    raw = canonical_track(noisy, image_size=256)
    paper = raw.smooth(3, method="mean")
    robust = raw.smooth(5, method="robust")
    assert len(robust) == len(raw) == T
    e_paper, e_robust = _rms(paper, truth), _rms(robust, truth)
    assert e_robust <= 0.5 * e_paper, (e_robust, e_paper)
    # the false faces are found and reported like missing faces
    assert set(bad) <= set(np.flatnonzero(robust.outliers))
    assert robust.outliers.sum() <= len(bad) + 2
    assert (robust.interpolated >= robust.outliers).all() and not raw.outliers.any()


def _lag(ref, got, inner=slice(5, T - 5)):
    """Least-squares shift (frames) between two curves: got(t) ~ ref(t - lag)."""
    t = np.arange(len(ref), dtype=float)
    lags = np.linspace(-3, 3, 601)
    err = [np.mean((np.interp(t[inner] - lag, t, ref) - got[inner]) ** 2) for lag in lags]
    return float(lags[int(np.argmin(err))])


def test_robust_smoothing_adds_no_lag():
    clean, noisy, _ = _noisy_clip(3)
    truth = canonical_track(clean, image_size=256)
    sm_clean = truth.smooth(5, method="robust")
    sm = canonical_track(noisy, image_size=256).smooth(5, method="robust")
    trailing = np.convolve(np.pad(truth.tx, (4, 0), mode="edge"), np.full(5, 0.2), mode="valid")  # a causal filter
    assert _lag(truth.tx, trailing) >= 1.5                   # the measure sees a lag where there is one
    for k in ("tx", "ty", "angle"):
        assert abs(_lag(getattr(truth, k), getattr(sm_clean, k))) <= 0.1, k
        assert abs(_lag(getattr(truth, k), getattr(sm, k))) <= 0.3, k
    t = np.arange(T, dtype=float)
    # a centred filter keeps a straight line exactly (away from the ends)
    line = CanonicalTrack(0.01 * t, -0.002 * t, 0.3 * t, np.zeros(T, bool), 256, face_size=np.full(T, 0.2))
    sm = line.smooth(5, method="robust")
    assert not sm.outliers.any()
    np.testing.assert_allclose(sm.tx[3:-3], line.tx[3:-3], atol=1e-12)
    np.testing.assert_allclose(sm.angle[3:-3], line.angle[3:-3], atol=1e-12)


def test_robust_smoothing_first_frame_false_face_and_still_face():
    clean, noisy, _ = _noisy_clip(4, outlier_rate=0.0, noise_px=0.3)
    noisy[0] = _face((60, 60), 30.0, 20.0)            # frame 0: a false face (as in the co-driving demo clip)
    tr = canonical_track(noisy, image_size=256)
    sm = tr.smooth(3, method="robust")
    assert sm.outliers[0] and sm.outliers.sum() == 1
    truth = canonical_track(clean, image_size=256)
    assert abs(sm.ty[0] - truth.ty[0]) < 0.01 and abs(tr.smooth(3).ty[0] - truth.ty[0]) > 0.05
    # a still face with landmark jitter: nothing is flagged
    still = canonical_track(_clip(60.0, (128, 140))[:1].repeat(40, 0)
                            + np.random.default_rng(0).normal(0, 0.5, (40, 68, 2)), image_size=256)
    assert not still.smooth(5, method="robust").outliers.any()
    with pytest.raises(ValueError, match="outlier_window"):
        tr.smooth(5, method="robust", outlier_window=4)
    with pytest.raises(ValueError, match="'robust'"):
        tr.smooth(5, method="median")


# ------------------------------------------------------------------------------------------ face choice


def _box(cx, cy, s):
    return (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)


def test_face_choice_follows_the_track_by_box_overlap():
    person = _box(100, 100, 60)
    bigger = _box(300, 120, 120)
    faces = [(bigger, 1.0, None), (_box(104, 98, 62), 1.0, None)]
    # the first frame: the largest face
    assert _pick(faces, None) == 0
    # afterwards: the box that overlaps the previous one, although the other is larger
    assert _pick(faces, np.array(person, float)) == 1
    # overlap beats centre distance: a small box near the centre vs a large box covering the previous one
    faces = [(_box(130, 100, 20), 1.0, None), (_box(100, 104, 66), 1.0, None)]
    assert _pick(faces, np.array(person, float)) == 1
    # no box overlaps: the nearest centre (in units of the previous box size)
    faces = [(_box(400, 100, 60), 1.0, None), (_box(190, 100, 60), 1.0, None)]
    assert _pick(faces, np.array(person, float)) == 1


def test_landmarks_keep_following_the_first_face_when_a_larger_one_appears():
    """dlib on real pixels: frame 0 holds one face; from frame 1 a second, larger face is there as well. The track
    stays on the first person (its box overlaps the previous one), not on the largest face."""
    import cv2
    from skimage import data

    from v2s_nb.face import landmarks

    face = data.astronaut()[20:240, 110:330]                         # the astronaut's head, 220 px
    small = cv2.resize(face, (130, 130), interpolation=cv2.INTER_AREA)
    large = cv2.resize(face, (230, 230), interpolation=cv2.INTER_AREA)
    frames = np.full((3, 300, 480, 3), 128, np.uint8)
    for i in range(3):
        frames[i, 80 + 3 * i:210 + 3 * i, 20 + 4 * i:150 + 4 * i] = small   # the person we follow, moving a little
    frames[1:, 40:270, 230:460] = large                                      # a larger face joins
    tr = landmarks(frames, upsample=1, progress=False)
    assert tr.found.all() and tr.num_faces[0] == 1 and (tr.num_faces[1:] == 2).all()
    centres = 0.5 * (tr.boxes[:, 0] + tr.boxes[:, 2])
    assert (centres < 200).all(), centres                                   # always the small face on the left


def _track(tx, ty, angle):
    n = len(angle)
    return CanonicalTrack(np.asarray(tx, float), np.asarray(ty, float), np.asarray(angle, float), np.zeros(n, bool),
                          256, face_size=np.full(n, 0.2))


def test_outlier_test_follows_fast_motion_at_the_ends_and_finds_false_faces_during_it():
    # the demo's driving motion at 8 frames a period (7 degrees a frame from the start): nothing is an outlier
    u = np.arange(8) / 8
    fast = _track(0.06 * np.sin(np.pi * u), -0.03 * np.sin(2 * np.pi * u), 10 * np.sin(2 * np.pi * u))
    assert not fast.outlier_frames().any()
    i = np.arange(20)
    settling = _track(np.zeros(20), np.zeros(20), np.r_[0, 8, 14, 18, np.full(16, 20.0)])  # a fast turn that stops
    assert not settling.outlier_frames().any()
    # a false face in the middle of a fast turn (7 degrees a frame), and in its first and last frames
    rng = np.random.default_rng(0)
    for frame in (0, 5, 19):
        angle = 7.0 * i + rng.normal(0, 0.5, 20)
        angle[frame] += 25.0
        assert np.flatnonzero(_track(np.zeros(20), np.zeros(20), angle).outlier_frames()).tolist() == [frame]
