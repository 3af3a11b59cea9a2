"""Landmark detection and FFHQ alignment on a real photo (skimage's astronaut)."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
from skimage import data

from v2s_nb.face import (FFHQ_EYE_MIDPOINT, LandmarkTrack, NoFaceError, align_face, align_video,
                         canonical_track, eye_mouth_geometry, ffhq_crop_matrix, ffhq_eye_midpoint, ffhq_quad,
                         landmarks)
from v2s_nb.video import FrameFormatError, Video


@pytest.fixture(scope="module")
def astronaut():
    return data.astronaut()  # 512x512 RGB, one face with its box at about (179, 83)-(266, 170)


@pytest.fixture(scope="module")
def face512(astronaut):
    """The astronaut's face region (256 px around it) upscaled to 512x512: a face of ~180 px."""
    crop = astronaut[130 - 128:130 + 128, 222 - 128:222 + 128]
    return cv2.resize(crop, (512, 512), interpolation=cv2.INTER_CUBIC)


def test_single_image(astronaut):
    track = landmarks(astronaut, upsample=0, progress=False)
    assert isinstance(track, LandmarkTrack) and len(track) == 1
    assert track.found.tolist() == [True] and track.num_faces.tolist() == [1]
    assert track.points.shape == (1, 68, 2) and track.points.dtype == np.float64
    assert track.image_size == (512, 512)
    x0, y0, x1, y1 = track.boxes[0]
    p = track.points[0]
    assert (x0 - 20 < p[:, 0]).all() and (p[:, 0] < x1 + 20).all()
    assert (y0 - 30 < p[:, 1]).all() and (p[:, 1] < y1 + 20).all()
    e, v = eye_mouth_geometry(p)
    assert 200 < e[0] < 250 and 90 < e[1] < 115 and v[1] > 30  # eyes above the mouth, y down


def test_input_forms_agree(astronaut):
    """Float [0, 1], RGBA and Video inputs give the same landmarks as uint8; grayscale is accepted."""
    ref = landmarks(astronaut, upsample=0, progress=False).points
    for form in (astronaut / 255.0, np.dstack([astronaut, np.full(astronaut.shape[:2], 9, np.uint8)]),
                 Video(astronaut[None], 25), [astronaut]):
        np.testing.assert_array_equal(landmarks(form, upsample=0, progress=False).points, ref)
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    g = landmarks(gray, upsample=0, progress=False)
    assert g.found.all() and np.abs(g.points - ref).max() < 6


def test_follows_the_same_person(face512):
    """Two faces: the larger is picked first, then followed even when the other becomes larger."""
    a = cv2.resize(face512, (300, 300))
    canvas0 = np.full((360, 720, 3), 90, np.uint8)
    canvas0[30:330, 20:320] = a
    small = cv2.resize(face512, (240, 240))
    canvas0[60:300, 440:680] = small
    canvas1 = np.full((360, 720, 3), 90, np.uint8)  # left face shrinks, right one grows
    canvas1[50:290, 40:280] = cv2.resize(face512, (240, 240))
    canvas1[20:340, 390:710] = cv2.resize(face512, (320, 320))
    track = landmarks(np.stack([canvas0, canvas1]), upsample=0, progress=False)
    assert track.num_faces.tolist() == [2, 2] and track.found.all()
    centres = track.points.mean(axis=1)
    assert centres[0, 0] < 360 and centres[1, 0] < 360  # still the left person


def _astronaut_256_turned(i):
    """The astronaut photo at 256 px, turned by 5 sin(2 pi i / 8) degrees about its face and moved i px right (frame
    i of the audit's driving clip, before video coding)."""
    img = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    m = cv2.getRotationMatrix2D((115, 90), 5 * np.sin(2 * np.pi * i / 8), 1.0)
    m[:, 2] += [i, 0]
    return cv2.warpAffine(img, m, (256, 256), borderMode=cv2.BORDER_REFLECT_101)


def test_first_face_is_the_confident_one_not_a_larger_false_one():
    """dlib's HOG (upsample 1) finds, besides the face, a weak false "face" on the mission patch whose box is larger
    (frame 7; frame 6 has it too): the track starts on the real face (by score, not by area) and stays on it."""
    from v2s_nb.face.landmark_detection import _detect

    frames = np.stack([_astronaut_256_turned(7), _astronaut_256_turned(6)])
    faces = _detect(frames[0], "hog", 1)
    assert len(faces) == 2, faces  # the real face, and a larger, far weaker false one on the patch (low in the image)
    (real_box, real_score, _), (patch_box, patch_score, _) = sorted(faces, key=lambda f: f[0][1])
    assert real_box[3] < 100 < patch_box[1] and real_score > 0.8 and patch_score < 0.3, faces
    assert (patch_box[2] - patch_box[0]) * (patch_box[3] - patch_box[1]) \
        > (real_box[2] - real_box[0]) * (real_box[3] - real_box[1]), faces
    track = landmarks(frames, upsample=1, progress=False)
    assert track.found.all() and (track.num_faces == 2).all()
    assert (track.scores > 0.8).all() and (track.boxes[:, 3] < 100).all(), (track.boxes, track.scores)
    e, v = eye_mouth_geometry(track.points[0])
    assert 95 < e[0] < 140 and 45 < e[1] < 70 and v[1] > 10  # eyes on the face (x ~115, y ~57), mouth below


def test_first_face_choice_per_score_convention():
    """The first face: the largest box among those whose score margin over the detector's threshold is at least
    half the best one's; dlib's margins (threshold 0) and RFB's probabilities (threshold 0.7) alike."""
    from v2s_nb.face.landmark_detection import _pick

    small, large = (88, 41, 132, 84), (60, 164, 112, 216)
    # a confident small face beats a larger weak detection
    assert _pick([(large, 0.024, None), (small, 1.445, None)], None) == 1  # dlib HOG (the astronaut photo)
    assert _pick([(large, 0.2, None), (small, 1.06, None)], None) == 1  # dlib MMOD CNN
    assert _pick([(large, 0.75, None), (small, 0.999, None)], None, 0.7) == 1  # RFB: 0.05 vs 0.3 over 0.7
    # faces of similar confidence: the largest
    assert _pick([(small, 1.53, None), (large, 1.29, None)], None) == 1  # HOG, two real faces
    assert _pick([(small, 1.07, None), (large, 0.9, None)], None) == 1  # CNN
    assert _pick([(small, 0.999, None), (large, 0.92, None)], None, 0.7) == 1  # RFB
    # without scores (NaN / None) or without a positive margin: the largest
    assert _pick([(small, np.nan, None), (large, np.nan, None)], None) == 1
    assert _pick([(small, None, None), (large, None, None)], None) == 1
    assert _pick([(small, 0.7, None), (large, 0.6, None)], None, 0.7) == 1
    # a single face is always taken; later frames still follow the previous box, whatever the scores
    assert _pick([(large, 0.01, None)], None) == 0
    assert _pick([(small, 1.445, None), (large, 0.024, None)], np.array(large, float)) == 1


def test_blank_frame_reported(face512):
    blank = face512.copy()
    blank[100:450, 100:420] = 128
    track = landmarks(np.stack([face512, blank, face512]), upsample=0, progress=False)
    assert track.found.tolist() == [True, False, True]
    assert np.isnan(track.points[1]).all() and np.isnan(track.boxes[1]).all()
    assert track.missing.tolist() == [1]
    drawn = track.draw(np.stack([face512, blank, face512]))
    assert drawn.shape == (3, 512, 512, 3) and (drawn[1] == blank).all() and (drawn[0] != face512).any()


def test_no_face_at_all():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)
    track = landmarks(frames, upsample=0, progress=False)
    assert not track.found.any() and np.isnan(track.points).all()
    with pytest.raises(NoFaceError, match="no face"):
        canonical_track(track)
    with pytest.raises(NoFaceError, match="no face"):
        align_video(frames, track, 64, progress=False)


def test_bad_arguments(astronaut):
    with pytest.raises(ValueError, match="detector"):
        landmarks(astronaut, detector="mtcnn", progress=False)
    with pytest.raises(ValueError, match="upsample"):
        landmarks(astronaut, upsample=-1, progress=False)
    with pytest.raises(FrameFormatError, match=r"\[0, 1\]"):
        landmarks(astronaut * 2.0, progress=False)
    with pytest.raises(FrameFormatError, match="channel-first"):
        landmarks(np.zeros((2, 3, 64, 64), np.uint8), progress=False)


@pytest.mark.slow
def test_cnn_detector_agrees(astronaut):
    hog = landmarks(astronaut, detector="hog", upsample=0, progress=False)
    cnn = landmarks(astronaut, detector="cnn", upsample=0, progress=False)  # ~1 s on a CPU
    assert cnn.found.all() and hog.found.all()
    e_h, _ = eye_mouth_geometry(hog.points[0])
    e_c, _ = eye_mouth_geometry(cnn.points[0])
    assert np.hypot(*(e_h - e_c)) < 4


# ------------------------------------------------------------------------------------------ alignment


def test_ffhq_crop_matrix_geometry():
    quad = np.array([[10.0, 20.0], [10.0, 120.0], [110.0, 120.0], [110.0, 20.0]])  # axis-aligned, 100 px
    m = ffhq_crop_matrix(quad, 50)
    # the crop's outer pixel edges (-0.5 and S - 0.5 in pixel-centre coordinates) land on the quad corners:
    # FFHQ hands PIL "quad + 0.5", i.e. the quad in PIL's pixel-edge coordinates
    corners = np.array([[-0.5, -0.5], [-0.5, 49.5], [49.5, 49.5], [49.5, -0.5]])
    np.testing.assert_allclose(corners @ m[:2, :2].T + m[:2, 2], quad, atol=1e-9)
    # and the crop centre on the quad centre
    np.testing.assert_allclose(np.array([24.5, 24.5]) @ m[:2, :2].T + m[:2, 2], quad.mean(0), atol=1e-9)


def test_ffhq_eye_midpoint_derivation():
    assert FFHQ_EYE_MIDPOINT == pytest.approx((0.5, 0.475))
    assert ffhq_eye_midpoint(0.0)[1] == 0.5
    assert ffhq_eye_midpoint(2.0)[1] == pytest.approx(0.5 - 0.05 / 1.8)  # mouth term dominates
    # an ideal upright face with h / d = 1 aligned by the recipe has its eye midpoint at FFHQ_EYE_MIDPOINT
    pts = np.zeros((68, 2))
    pts[36:42] = (-50, 0)
    pts[42:48] = (50, 0)
    pts[48:68] = (0, 100)
    pts[48], pts[54] = (-40, 100), (40, 100)
    m = ffhq_crop_matrix(ffhq_quad(pts), 1000)
    eye_in_crop = np.linalg.inv(m) @ np.array([0, 0, 1.0])
    np.testing.assert_allclose((eye_in_crop[:2] + 0.5) / 1000, FFHQ_EYE_MIDPOINT, atol=1e-12)


def test_align_face(astronaut):
    track = landmarks(astronaut, upsample=0, progress=False)
    al = align_face(astronaut, track.points[0], 256)
    assert al.image.shape == (256, 256, 3) and al.image.dtype == np.uint8
    np.testing.assert_allclose(al.crop_to_frame @ al.frame_to_crop, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(al.to_frame(al.to_crop(track.points[0])), track.points[0], atol=1e-9)
    # landmarks found again on the aligned crop match the mapped ones, and the eyes sit near e'
    again = landmarks(al.image, upsample=1, progress=False)
    assert again.found.all()
    mapped = al.to_crop(track.points[0])
    assert np.median(np.hypot(*(again.points[0] - mapped).T)) < 3.0
    e, _ = eye_mouth_geometry(again.points[0])
    np.testing.assert_allclose(e / 256, FFHQ_EYE_MIDPOINT, atol=0.01)
    # a large downscale goes through the anti-alias path and agrees with the plain warp on average
    small = align_face(astronaut, track.points[0], 32)
    plain = align_face(astronaut, track.points[0], 32, antialias=False)
    assert np.abs(small.image.astype(float) - plain.image).mean() < 12
    with pytest.raises(NoFaceError):
        align_face(astronaut, np.full((68, 2), np.nan), 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division warning on the way
        with pytest.raises(NoFaceError, match="span no face"):  # gave a white crop and NaN matrices
            align_face(astronaut, np.zeros((68, 2)), 64)
    with pytest.raises(ValueError, match="border"):
        align_face(astronaut, track.points[0], 64, border="wrap")


def test_align_video_interpolates_missing(face512):
    blank = face512.copy()
    blank[100:450, 100:420] = 128
    clip = np.stack([face512, blank, face512])
    track = landmarks(clip, upsample=0, progress=False)
    out = align_video(clip, track, 128, progress=False)
    assert out.frames.shape == (3, 128, 128, 3) and out.interpolated.tolist() == [False, True, False]
    np.testing.assert_allclose(out.quads[1], out.quads[0])


def test_from_a_video_stream(tmp_path, face512):
    """A VideoStream is processed chunk by chunk; results match the in-memory clip (within codec error)."""
    from v2s_nb.video import read_video, stream_video, write_video

    clip = np.stack([face512, np.roll(face512, 12, axis=1), np.roll(face512, -8, axis=0)])
    path = write_video(tmp_path / "faces.mp4", clip, fps=10)
    streamed = landmarks(stream_video(path, chunk=2), upsample=0, progress=False)
    in_memory = landmarks(read_video(path), upsample=0, progress=False)
    assert len(streamed) == 3 and streamed.found.all()
    np.testing.assert_array_equal(streamed.points, in_memory.points)
    np.testing.assert_allclose(streamed.points[1] - streamed.points[0], np.broadcast_to([12, 0], (68, 2)), atol=3)
    # the crops too: the stream read once, a chunk at a time, gives the crops of the clip in memory
    aligned = align_video(stream_video(path, chunk=2), streamed, 64, progress=False)
    whole = align_video(read_video(path).frames, in_memory, 64, progress=False)
    assert np.array_equal(aligned.frames, whole.frames) and np.array_equal(aligned.crop_to_frame, whole.crop_to_frame)
    with pytest.raises(ValueError, match="got 3 frames but landmarks for 4 frames"):
        align_video(stream_video(path, chunk=2), np.concatenate([streamed.points, streamed.points[:1]]), 64,
                    progress=False)
    with pytest.raises(ValueError, match="got more than 2 frames but landmarks for 2 frames"):
        align_video(stream_video(path, chunk=2), streamed.points[:2], 64, progress=False)


def test_frames_must_have_the_track_size():
    """align_video / align_face / draw with frames of another size than the track raise (wrong crops before)."""
    from v2s_nb.face import template_landmarks

    pts = np.repeat(template_landmarks(256)[None], 2, 0)
    track = LandmarkTrack.from_points(pts, 256)
    small = np.full((2, 128, 128, 3), 100, np.uint8)
    with pytest.raises(ValueError, match=r"128x128 pixels, but the LandmarkTrack was measured on 256x256"):
        align_video(small, track, 64, progress=False)
    with pytest.raises(ValueError, match=r"128x128 pixels, but the LandmarkTrack was measured on 256x256"):
        align_face(small[0], track[0], 64)
    with pytest.raises(ValueError, match=r"128x128 pixels, but the LandmarkTrack was measured on 256x256"):
        track.draw(small)
    big = np.full((2, 256, 256, 3), 100, np.uint8)
    assert align_video(big, track, 64, progress=False).frames.shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(align_face(big[0], track[0], 64).image, align_face(big[0], pts[0], 64).image)
    with pytest.raises(ValueError, match="one face"):
        align_face(big[0], track, 64)


def test_a_path_is_refused_whole_with_the_fix(tmp_path):
    """landmarks("me.png") went through the frames letter by letter; a path is refused with read_image / read_video."""
    for given in ("me.png", tmp_path / "me.png"):
        with pytest.raises(ValueError, match=r"^frames: got the path .*read_image"):  # the whole path, not a letter
            landmarks(given, progress=False)
