"""Head pose from landmarks: exact recovery on the projected 3-D model, signs, and roll on a real photo."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
from skimage import data, transform

from v2s_nb.face import (MODEL_INDICES, LandmarkTrack, NoFaceError, canonical_track, euler_angles, head_pose,
                         landmarks, project_model, rotation_matrix)


@pytest.fixture(scope="module")
def face512():
    crop = data.astronaut()[130 - 128:130 + 128, 222 - 128:222 + 128]
    return cv2.resize(crop, (512, 512), interpolation=cv2.INTER_CUBIC)


POSES = [(yaw, pitch, roll) for yaw, pitch, roll in itertools.product((-40, -15, 0, 25, 45), (-25, 0, 20),
                                                                        (-30, 0, 12))]


def test_recovers_known_pose_exactly():
    yaw, pitch, roll = np.array(POSES, float).T
    pts = project_model(yaw, pitch, roll, (640, 480))
    assert pts.shape == (len(POSES), 68, 2)
    assert np.isfinite(pts[:, MODEL_INDICES]).all() and np.isnan(np.delete(pts, MODEL_INDICES, axis=1)).all()
    est = head_pose(pts, (640, 480))
    assert est.shape == (len(POSES), 3)
    np.testing.assert_allclose(est, np.array(POSES, float), atol=2.0)
    assert np.abs(est - np.array(POSES, float)).max() < 0.01  # noise-free: essentially exact


@pytest.mark.parametrize("roll", [150, 180, -170, -150, 100])
@pytest.mark.parametrize("yaw, pitch", [(0, 0), (10, 5), (-25, -10), (30, 15)])
def test_recovers_large_roll(yaw, pitch, roll):
    # a solver started from rvec 0 fell into a wrong minimum (e.g. roll 180 -> pitch 167) for |roll| >= ~150
    est = head_pose(project_model(yaw, pitch, roll, 256), 256, interpolate=False)[0]
    d = est - [yaw, pitch, roll]
    d[2] = (d[2] + 180) % 360 - 180  # roll 180 and -180 are the same pose
    assert np.abs(d).max() < 0.01, (est, (yaw, pitch, roll))


def test_recovers_pose_off_centre_and_with_noise():
    rng = np.random.default_rng(0)
    for yaw, pitch, roll in [(20, -10, 5), (-30, 15, -20), (5, 5, 35)]:
        pts = project_model(yaw, pitch, roll, 512, distance=1500, center=(300, 220))
        pts[MODEL_INDICES] += rng.normal(0, 0.3, (len(MODEL_INDICES), 2))  # sub-pixel landmark noise
        np.testing.assert_allclose(head_pose(pts, 512)[0], [yaw, pitch, roll], atol=2.0)


def test_sign_conventions():
    size = 512
    nose, eye_l, eye_r = 0, 2, 3  # rows of MODEL_INDICES
    front = project_model(0, 0, 0, size)[MODEL_INDICES]
    yawed = project_model(20, 0, 0, size)[MODEL_INDICES]
    pitched = project_model(0, 20, 0, size)[MODEL_INDICES]
    rolled = project_model(0, 0, 20, size)[MODEL_INDICES]
    eyes = lambda p: 0.5 * (p[eye_l] + p[eye_r])  # noqa: E731
    # yaw > 0: the nose moves to the image right relative to the eyes
    assert (yawed[nose] - eyes(yawed))[0] > (front[nose] - eyes(front))[0] + 10
    # pitch > 0 (looks up): the nose moves up relative to the eyes
    assert (pitched[nose] - eyes(pitched))[1] < (front[nose] - eyes(front))[1] - 10
    # roll > 0: counter-clockwise as seen, i.e. the eye line turns so that the right eye goes up
    d = rolled[eye_r] - rolled[eye_l]
    assert np.degrees(np.arctan2(-d[1], d[0])) == pytest.approx(20, abs=1e-6)


def test_rotation_round_trip():
    for yaw, pitch, roll in POSES:
        r = rotation_matrix(yaw, pitch, roll)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(euler_angles(r), [yaw, pitch, roll], atol=1e-9)


def test_real_photo_roll_follows_in_plane_rotation(face512):
    """The astronaut turned in-plane about the image centre: roll changes by the turn (within 2 degrees)
    and in the same sense as the canonical angle."""
    canvas = np.pad(face512, ((128, 128), (128, 128), (0, 0)), mode="reflect")
    angles = np.array([0, -18, -6, 9, 20])
    clip = np.stack([transform.rotate(canvas, a, mode="reflect", preserve_range=True).astype(np.uint8)
                     for a in angles])
    track = landmarks(clip, upsample=0, progress=False)
    assert track.found.all()
    pose = head_pose(track)
    np.testing.assert_allclose(pose[:, 2] - pose[0, 2], angles, atol=2.0)
    # yaw and pitch do not move with an in-plane turn
    assert np.abs(pose[:, :2] - pose[0, :2]).max() < 3.0
    ct = canonical_track(track)
    np.testing.assert_allclose(ct.angle - ct.angle[0], pose[:, 2] - pose[0, 2], atol=2.0)


def test_missing_frames_interpolated_or_nan():
    yaw = np.array([0.0, 10.0, 20.0, 30.0])
    pts = project_model(yaw, 0 * yaw, 0 * yaw, 512)
    pts[1] = np.nan
    pts[3, MODEL_INDICES[0]] = np.nan  # the nose tip missing counts as no face too
    est = head_pose(pts, 512)
    np.testing.assert_allclose(est[:, 0], [0, 10, 20, 20], atol=1e-3)  # linear inside, nearest at the end
    raw = head_pose(pts, 512, interpolate=False)
    assert np.isnan(raw[[1, 3]]).all() and np.isfinite(raw[[0, 2]]).all()
    # a LandmarkTrack's found mask is honoured too
    track = LandmarkTrack.from_points(project_model(yaw, 0 * yaw, 0 * yaw, 512), 512)
    assert not track.found.any()  # only 6 of 68 points: "no face" for canonical_track ...
    with pytest.raises(NoFaceError):
        head_pose(track)
    assert np.isfinite(head_pose(track.points, 512)).all()  # ... but the raw points have a pose


def test_bad_input():
    with pytest.raises(NoFaceError, match="no face"):
        head_pose(np.full((3, 68, 2), np.nan), 256)
    assert np.isnan(head_pose(np.full((3, 68, 2), np.nan), 256, interpolate=False)).all()
    with pytest.raises(ValueError, match="image_size"):
        head_pose(np.zeros((1, 68, 2)))
    with pytest.raises(ValueError, match=r"\[T, 68, 2\]"):
        head_pose(np.zeros((1, 5, 2)), 256)
    with pytest.raises(ValueError, match="image_size"):
        head_pose(np.zeros((1, 68, 2)), (0, 10))


def test_image_size_must_match_the_track():
    track = LandmarkTrack.from_points(project_model(20.0, 0.0, 0.0, 256), 256)
    np.testing.assert_array_equal(head_pose(track, 256, interpolate=False), head_pose(track, interpolate=False))
    with pytest.raises(ValueError, match=r"1024x1024 pixels but the LandmarkTrack was measured on 256x256"):
        head_pose(track, 1024, interpolate=False)


@pytest.mark.parametrize("focal", [0, -256, float("nan"), float("inf"), "wide", True])
def test_focal_must_be_a_positive_finite_length(focal):
    """A focal length of 0 / NaN / inf made a pose of 0 degrees, a negative one another pose, without a word."""
    import torch

    from v2s_nb.face import head_pose_torch

    pts = project_model(20.0, -10.0, 5.0, 256)
    with pytest.raises(ValueError, match=r"focal.*> 0 in pixels"):
        head_pose(pts, 256, focal=focal)
    with pytest.raises(ValueError, match=r"focal.*> 0 in pixels"):
        head_pose_torch(torch.from_numpy(np.nan_to_num(pts)), 256, focal=focal)
    with pytest.raises(ValueError, match=r"focal.*> 0 in pixels"):
        project_model(20.0, -10.0, 5.0, 256, focal=focal)


def test_other_focal_lengths_still_work():
    pts = project_model(20.0, -10.0, 5.0, 256, focal=400)
    np.testing.assert_allclose(head_pose(pts, 256, focal=400.0)[0], [20.0, -10.0, 5.0], atol=1e-3)
