"""Metric fixes from the audit: one landmark front end per ΔK, the CSV round trip of Table 1, the default
detector of evaluate, FID bookkeeping in the notes, [1, 128] reference embeddings, paths given as clips, FID's
message on too few frames, and the hint for slightly overshooting float frames."""

from __future__ import annotations

import csv
import warnings

import cv2
import numpy as np
import pytest
from skimage import data

from v2s_nb.errors import V2SWarning
from v2s_nb.face import LandmarkTrack, landmarks
from v2s_nb.metrics import evaluate, fid, keypoint_distance, run_table1, table1
from v2s_nb.metrics.identity import reference_embedding
from v2s_nb.metrics.keypoints import default_front_end
from v2s_nb.video import FrameFormatError, as_rgb_uint8


@pytest.fixture(scope="module")
def clip():
    """3 frames, 160 px, of the astronaut's face moving a few pixels (a face in each, for HOG and RFB)."""
    crop = cv2.resize(data.astronaut()[50:210, 142:302], (160, 160), interpolation=cv2.INTER_AREA)
    return np.stack([np.roll(crop, (s, -2 * s), (0, 1)) for s in range(3)])


def _paper_front_end() -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return default_front_end() == ("rfb", "pfld")


# ----------------------------------------------------------------------------------------------- 1: one front end


def test_frames_against_a_track_are_measured_with_the_tracks_detector(clip):
    track = landmarks(clip, detector="hog", progress=False)
    assert track.found.all() and track.detector == "hog"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback, no mixed front ends
        dk = keypoint_distance(clip, track, progress=False)
        back = keypoint_distance(track, clip, progress=False)
    assert (dk.x, dk.y, back.x, back.y) == (0.0, 0.0, 0.0, 0.0) and dk.detector == back.detector == "hog"


def test_a_track_without_a_detector_against_frames_warns_and_reports_both(clip):
    given = LandmarkTrack.from_points(landmarks(clip, detector="hog", progress=False).points, (160, 160))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.warns(V2SWarning, match="two front ends"):
            dk = keypoint_distance(clip, given, progress=False)
    assert dk.detector.startswith("driving: given, result: ") and "landmarks: driving: given" in repr(dk)


# ----------------------------------------------------------------------------------------------- 2: CSV round trip


def test_table1_csv_read_back_gives_the_same_table_and_notes(tmp_path):
    rows = {
        "copy": {"delta_k_x_f": 0.0, "delta_k_y_f": 0.0, "delta_k_x_r": 0.0, "delta_k_y_r": 0.0, "id_f": 0.1,
                 "id_r": 0.1, "fid": 0.0, "frames_f": 3, "frames_r": 3, "delta_k_missing_f": [],
                 "delta_k_missing_r": [], "id_missing_f": [], "id_missing_r": [], "fid_frames_f": 3,
                 "fid_frames_r": 3, "fid_missing_f": [], "fid_missing_r": [], "fid_features": "pixels32-rp128",
                 "fid_comparable_to_paper": False, "delta_k_units": "% of frame size, squared",
                 "landmarks": "rfb+pfld"},
        "pooled": {"delta_k_x_f": 1.5, "id_f": float("nan"), "fid": float("nan"), "frames_f": 6, "frames_r": 6,
                   "delta_k_missing_f": ["a:1", "b:0"], "id_missing_r": [4, 5], "fid_frames_f": 1,
                   "fid_frames_r": 6, "fid_missing_f": ["a:0", "a:1", "b:0", "b:1", "b:2"],
                   "fid_features": "pixels32-rp128", "fid_comparable_to_paper": False},
        "inception": {"fid": 6.15, "fid_features": "inception-v3", "fid_comparable_to_paper": True},
    }
    text = table1(rows, tmp_path / "t.csv")
    with open(tmp_path / "t.csv", newline="", encoding="utf-8") as fh:
        back = {r.pop("method"): r for r in csv.DictReader(fh)}
    assert table1(back) == text
    assert "'pixels32-rp128' - NOT Inception, not comparable to the paper (copy, pooled)" in text
    assert "copy forward" not in text  # no frames left out: no note


# ----------------------------------------------------------------------------------------------- 3: default detector


def test_evaluate_defaults_to_keypoint_distances_front_end_and_records_it(clip):
    if not _paper_front_end():
        pytest.skip("the RFB-320 + PFLD weights are not available here (set V2S_NB_WEIGHTS_DIR)")
    shifted = np.roll(clip, 8, axis=2)
    row = evaluate(shifted, clip, clip[0], progress=False)
    dk = keypoint_distance(shifted, clip, progress=False)
    assert row["landmarks"] == dk.detector == "rfb+pfld"
    assert row["delta_k_x_f"] == pytest.approx(dk.x) and row["delta_k_y_f"] == pytest.approx(dk.y)
    assert "Landmarks (ΔK, ID): rfb+pfld" in table1({"m": row})
    assert evaluate(shifted, clip, clip[0], detector="hog", upsample=0, progress=False)["landmarks"] == "hog"


# ----------------------------------------------------------------------------------------------- 4: FID notes


def test_frames_left_out_of_fid_and_a_nan_fid_are_noted(clip):
    def feats(batch):  # a user extractor that can use only bright-ish frames: NaN rows for the rest
        f = batch.reshape(len(batch), -1)[:, :8].astype(float)
        f[1:] = np.nan
        return f

    six = np.concatenate([clip, clip[::-1]])
    row = evaluate(six, six, clip[0], reverse_result_frames=six[::-1], feature_extractor=feats, detector="hog",
                   upsample=0, progress=False)
    assert row["fid_missing_f"] == [1, 2, 3, 4, 5] and np.isnan(row["fid"])
    text = table1({"m": row})
    assert "m forward: 5 of 6 frames left out of FID (no usable features) [1, 2, 3, 4, 5]." in text
    assert "m: FID is nan: it needs at least 2 usable frames in each direction, got 1 forward and 1 reverse." in text


# ----------------------------------------------------------------------------------------------- 5: [1, 128]


def test_reference_embedding_of_shape_1_128_is_an_embedding():
    emb = np.linspace(-0.2, 0.3, 128)[None]  # what face_embeddings returns for one image
    got = reference_embedding(emb)
    assert got.shape == (128,) and np.array_equal(got, emb[0])
    with pytest.raises(ValueError, match="NaN / infinite"):
        reference_embedding(np.full((1, 128), np.nan))


# ----------------------------------------------------------------------------------------------- 6: paths


@pytest.mark.parametrize("as_path", [str, lambda p: p])
def test_run_table1_refuses_a_path_as_the_driving_clip_or_the_references(clip, tmp_path, as_path):
    path = as_path(tmp_path / "driving.mp4")
    with pytest.raises(FrameFormatError, match="driving frames: got the path .*read the file first"):
        run_table1({"copy": lambda r, d: d}, clip[0], path, csv_path=None, feature_extractor="pixels",
                   progress=False)
    with pytest.raises(FrameFormatError, match="references: got the path .*read the file first"):
        run_table1({"copy": lambda r, d: d}, path, clip, csv_path=None, feature_extractor="pixels", progress=False)


# ----------------------------------------------------------------------------------------------- 7: FID frames


def test_fid_with_too_few_frames_speaks_of_frames(clip):
    with pytest.raises(ValueError, match=r"at least 2 usable frames .*frames_a: 1 frame\(s\) given, 0 left out"):
        fid(clip[:1], clip, "pixels", progress=False)


# ----------------------------------------------------------------------------------------------- 8: overshoot


def test_slightly_overshooting_float_frames_are_told_to_clip_not_rescale():
    frames = np.linspace(-0.025, 1.025, 2 * 4 * 4 * 3).reshape(2, 4, 4, 3)
    with pytest.raises(FrameFormatError, match=r"np\.clip\(frames, 0, 1\)") as e:
        as_rgb_uint8(frames)
    assert "rescale" not in str(e.value)
    with pytest.raises(FrameFormatError, match=r"np\.clip\(frames, 0, 1\)"):  # over 1 only: not "0..255 values"
        as_rgb_uint8(np.clip(frames, 0, None))
    with pytest.raises(FrameFormatError, match=r"np\.clip\(\(frames \+ 1\) / 2, 0, 1\).*to_uint8"):
        as_rgb_uint8(frames * 2.1 - 1.05)  # [-1, 1] generator output, overshooting
    with pytest.raises(FrameFormatError, match=r"rescale them to \[0, 1\]"):
        as_rgb_uint8(frames * 3 - 1.5)  # far outside: no guess
