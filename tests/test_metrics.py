"""Table 1 metrics: Fréchet distance against a scipy reference, ΔK on shifted photos, ID with dlib embeddings,
the FID feature extractors (offline ones; Inception's error paths), the table layout / CSV and the harness."""

from __future__ import annotations

import csv
import urllib.error

import cv2
import numpy as np
import pytest
import torch
from scipy import linalg
from skimage import data

from v2s_nb.face import LandmarkTrack, NoFaceError, landmarks
from v2s_nb.metrics import (PAPER_TABLE1, FaceEmbeddingFeatures, PooledPixelFeatures, evaluate, face_embeddings,
                            fid, frechet_distance, frechet_distance_features, get_feature_extractor,
                            identity_distance, inception_weights, keypoint_distance, run_table1, table1)
from v2s_nb.metrics import frechet as fid_module
from v2s_nb.weights import WeightsUnavailableError


# ----------------------------------------------------------------------------------------------- Fréchet distance


def reference_fd(f1, f2):
    """The usual FID code (pytorch-fid's formula): scipy.linalg.sqrtm of Σ1 Σ2, real part."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1.dot(s2))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    d = mu1 - mu2
    return d.dot(d) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


@pytest.mark.parametrize("dim,n1,n2", [(8, 50, 70), (32, 300, 250), (64, 400, 500)])
@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_matches_scipy_reference(dim, n1, n2, method):
    rng = np.random.default_rng(dim)
    a = rng.standard_normal((dim, dim))
    f1 = rng.standard_normal((n1, dim)) @ a + rng.standard_normal(dim)
    f2 = rng.standard_normal((n2, dim)) @ (a + 0.3 * rng.standard_normal((dim, dim))) + rng.standard_normal(dim)
    ref = reference_fd(f1, f2)
    assert ref > 1
    got = frechet_distance_features(f1, f2, method=method)
    assert got == pytest.approx(ref, rel=1e-6)


def test_frechet_identical_and_rank_deficient():
    rng = np.random.default_rng(1)
    f = rng.standard_normal((40, 64))  # fewer samples than dimensions: singular covariance
    assert frechet_distance_features(f, f) == pytest.approx(0.0, abs=1e-8)
    g = rng.standard_normal((40, 64)) + 0.5
    v = frechet_distance_features(f, g)
    assert np.isfinite(v) and v > 64 * 0.25 * 0.5  # mean shift alone contributes 64 * 0.25
    assert frechet_distance(np.zeros(3), np.eye(3), np.ones(3), np.eye(3)) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance_features(np.full((3, 2), np.nan), f[:, :2])


@pytest.fixture(scope="module")
def astronaut():
    return data.astronaut()  # 512 x 512, one face with its box at about (179, 83)-(266, 170)


def test_fid_self_is_zero_and_grows_with_noise(astronaut):
    rng = np.random.default_rng(0)
    frames = np.stack([astronaut[y:y + 128, x:x + 128] for y, x in rng.integers(0, 384, (48, 2))])
    ext = PooledPixelFeatures(size=16, dim=64)
    res = fid(frames, frames, ext, progress=False)
    assert res.value == pytest.approx(0.0, abs=1e-8) and res.n_a == res.n_b == 48
    assert not res.comparable_to_paper and res.features.startswith("pixels")
    values = []
    for sigma in (0.05, 0.15, 0.4):
        noisy = np.clip(frames / 255.0 + rng.normal(0, sigma, frames.shape), 0, 1)
        values.append(fid(frames, noisy, ext, progress=False).value)
    assert 0 < values[0] < values[1] < values[2]


def test_feature_extractor_choices():
    px = get_feature_extractor("pixels")
    assert "NOT Inception" in px.label and px.dim == 128
    assert get_feature_extractor(px) is px
    custom = get_feature_extractor(lambda batch: batch.reshape(len(batch), -1)[:, :5].astype(float))
    assert custom(np.zeros((3, 8, 8, 3), np.uint8)).shape == (3, 5) and not custom.comparable_to_paper
    assert isinstance(get_feature_extractor("dlib-face"), FaceEmbeddingFeatures)
    with pytest.raises(ValueError, match="unknown feature extractor"):
        get_feature_extractor("vgg")


def test_callable_features_must_be_one_row_per_frame():
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 255, (40, 8, 8, 3), dtype=np.uint8) for _ in range(2))
    proj = rng.normal(size=(8 * 8 * 3, 16))

    def transposed(x):  # a feature-major [D, n] slip: once reshaped to [n, -1] it mixed frames up
        return (x.reshape(len(x), -1) / 255.0 @ proj).T

    with pytest.raises(ValueError, match=r"one row per frame, \[n, D\] = \[32, D\]"):
        fid(a, b, transposed, progress=False)
    assert np.isfinite(fid(a, b, lambda x: transposed(x).T, progress=False).value)
    assert get_feature_extractor(lambda x: x[:, 0, 0, 0].astype(float))(a[:5]).shape == (5, 1)  # [n] is [n, 1]


def test_inception_missing_library_is_explicit(monkeypatch):
    monkeypatch.setattr(fid_module, "_BACKEND_MODULES", {"torch-fidelity": "no_such_mod_a", "pytorch-fid": "no_such_mod_b"})
    with pytest.raises(ImportError, match="torch-fidelity.*pytorch-fid.*'pixels'"):
        get_feature_extractor("inception")
    with pytest.warns(UserWarning, match="fallback you chose.*NOT Inception"):
        ext = get_feature_extractor("inception", fallback="pixels")
    assert isinstance(ext, PooledPixelFeatures)


def test_inception_weights_offline_names_file_and_place(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    target = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    with pytest.raises(WeightsUnavailableError) as err:
        inception_weights("torch-fidelity")
    msg = str(err.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in msg and str(target) in msg and "github.com" in msg
    assert err.value.target == target
    with pytest.raises(WeightsUnavailableError, match="pt_inception-2015-12-05-6726825d.pth"):
        inception_weights("pytorch-fid", download=False)


def stand_in_weights(monkeypatch, tmp_path, content=b"stand-in weights"):
    """A tmp hub cache and INCEPTION_WEIGHTS names that carry the SHA-256 prefix of ``content`` (no download)."""
    import hashlib

    prefix = hashlib.sha256(content).hexdigest()[:8]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(fid_module, "INCEPTION_WEIGHTS", {
        "torch-fidelity": (f"weights-stand-in-{prefix}.pth", "https://example.invalid/tf.pth"),
        "pytorch-fid": (f"pt_stand-in-{prefix}.pth", "https://example.invalid/pf.pth")})
    return tmp_path / "hub" / "checkpoints" / f"weights-stand-in-{prefix}.pth", prefix


def test_inception_weights_sha256_prefix_is_checked(monkeypatch, tmp_path):
    from v2s_nb.weights import WeightsChecksumError

    good = b"stand-in weights"
    target, prefix = stand_in_weights(monkeypatch, tmp_path, good)
    calls = []

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append(hash_prefix)
        with open(dst, "wb") as f:
            f.write(good)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    target.parent.mkdir(parents=True)
    target.write_bytes(good)
    assert inception_weights("torch-fidelity", download=False) == target and calls == []
    target.write_bytes(b"")  # an empty file in the cache: removed, and an error offline
    with pytest.raises(WeightsUnavailableError, match="wrong SHA-256.*removed"):
        inception_weights("torch-fidelity", download=False)
    assert not target.exists()
    target.write_bytes(b"")  # ... or fetched again, with torch hub's check of the download
    assert inception_weights("torch-fidelity") == target and target.read_bytes() == good and calls == [prefix]

    def corrupt(url, dst, hash_prefix=None, progress=True):
        raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got "0000")')

    monkeypatch.setattr(torch.hub, "download_url_to_file", corrupt)
    target.write_bytes(b"truncated")
    with pytest.raises(WeightsChecksumError, match="failed the SHA-256 check"):
        inception_weights("torch-fidelity")
    assert not target.exists()
    monkeypatch.undo()  # the real names carry the prefix the check uses
    assert {fid_module._hash_prefix(n) for n, _ in fid_module.INCEPTION_WEIGHTS.values()} == {"6726825d"}


# ----------------------------------------------------------------------------------------------- ΔK (no detection)


def synthetic_track(t=4, seed=0, size=(256, 256)):
    pts = np.random.default_rng(seed).uniform(60, 200, (t, 68, 2))
    return LandmarkTrack.from_points(pts, size)


def test_delta_k_units_on_given_points(monkeypatch):
    d = synthetic_track()
    zero = keypoint_distance(d, d)
    assert zero.x == 0 and zero.y == 0 and zero.frames == 4
    shifted = LandmarkTrack.from_points(d.points + [5.0, -2.0], d.image_size)
    dk = keypoint_distance(shifted, d)  # percent of the 256 px frame
    assert dk.x == pytest.approx((5 / 256 * 100) ** 2) and dk.y == pytest.approx((2 / 256 * 100) ** 2)
    px = keypoint_distance(shifted, d, "pixels")
    assert (px.x, px.y) == pytest.approx((25.0, 4.0))
    iod = keypoint_distance(shifted, d, "iod")
    e = np.hypot(*(d.points[:, 45] - d.points[:, 36]).T)
    assert iod.x == pytest.approx(np.mean(25.0 / e ** 2))
    # a result rendered at twice the resolution of the driving frames maps onto the same grid
    double = LandmarkTrack.from_points((d.points + 0.5) * 2 - 0.5, (512, 512))
    assert keypoint_distance(double, d).x == pytest.approx(0.0, abs=1e-20)
    with pytest.raises(ValueError, match="frame i"):
        keypoint_distance(d[:3], d)
    import v2s_nb.metrics.keypoints as kp

    def detected(*a, **k):
        raise AssertionError("landmarks were detected before the frame counts were compared")

    monkeypatch.setattr(kp, "landmarks", detected)
    with pytest.raises(ValueError, match="got 3 result frames for 4 driving frames"):
        keypoint_distance(np.zeros((3, 64, 64, 3), np.uint8), np.zeros((4, 64, 64, 3), np.uint8), detector="hog")


def test_delta_k_reports_frames_without_face():
    d = synthetic_track(5)
    r_pts = d.points + 1.0
    r_pts[1] = np.nan
    d_pts = d.points.copy()
    d_pts[3] = np.nan
    dk = keypoint_distance(LandmarkTrack.from_points(r_pts, d.image_size), LandmarkTrack.from_points(d_pts, d.image_size),
                           "pixels")
    assert dk.missing.tolist() == [1, 3] and dk.missing_result.tolist() == [1] and dk.missing_driving.tolist() == [3]
    assert dk.frames == 3 and dk.x == pytest.approx(1.0) and np.isnan(dk.per_frame[[1, 3]]).all()
    none = keypoint_distance(LandmarkTrack.from_points(np.full((2, 68, 2), np.nan), 64),
                             LandmarkTrack.from_points(np.full((2, 68, 2), np.nan), 64))
    assert np.isnan(none.x) and none.frames == 0 and none.missing.tolist() == [0, 1]


def test_delta_k_frame_with_a_nan_point_is_missing_and_listed():
    from v2s_nb.metrics.identity import IdentityDistance
    from v2s_nb.metrics.keypoints import KeypointDistance
    from v2s_nb.metrics.table import _Direction

    d = synthetic_track(5)
    r_pts = d.points + 1.0
    r_pts[2, 0] = np.nan  # one jaw point: eyes and mouth are there, so the track says "face found"
    r = LandmarkTrack.from_points(r_pts, d.image_size)
    assert r.found.all()
    dk = keypoint_distance(r, d, "pixels")
    assert dk.missing.tolist() == [2] and dk.missing_result.tolist() == [2] and dk.frames == 4
    assert dk.x == pytest.approx(1.0) and np.isnan(dk.per_frame[2]).all()
    no_id = IdentityDistance(0.0, np.zeros(5), np.ones(5, bool), np.zeros((5, 128)), np.zeros(128))
    for k in (dk, KeypointDistance(1.0, 1.0, dk.per_frame, np.ones(5, bool), np.zeros(0, int), np.zeros(0, int),
                                   "pixels", "px")):  # a row with NaN but marked valid is listed too
        direction = _Direction()
        direction.add("", k, no_id, None)
        row = direction.summary("f")
        assert row["delta_k_frames_f"] == 4 and row["delta_k_missing_f"] == [2] and row["frames_f"] == 5
        assert row["delta_k_x_f"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------- ΔK / ID with dlib


DX, DY = 10, -6


@pytest.fixture(scope="module")
def shifted_track(astronaut):
    """Landmarks of [astronaut, astronaut shifted by (DX, DY) px with reflected borders, astronaut again]."""
    m = np.float32([[1, 0, DX], [0, 1, DY]])
    shifted = cv2.warpAffine(astronaut, m, (512, 512), borderMode=cv2.BORDER_REFLECT)
    track = landmarks(np.stack([astronaut, shifted, astronaut]), upsample=0, progress=False)
    assert track.found.all()
    return track


def test_delta_k_identical_frames_is_zero(shifted_track):
    dk = keypoint_distance(shifted_track[[2]], shifted_track[[0]])
    assert dk.x == 0.0 and dk.y == 0.0 and dk.frames == 1


def test_delta_k_of_a_known_shift(shifted_track):
    dk = keypoint_distance(shifted_track[[1]], shifted_track[[0]])  # percent of the 512 px frame
    expected = ((DX / 512 * 100) ** 2, (DY / 512 * 100) ** 2)  # 3.81, 1.37
    px = keypoint_distance(shifted_track[[1]], shifted_track[[0]], "pixels")
    assert (dk.x, dk.y) == pytest.approx((px.x * (100 / 512) ** 2, px.y * (100 / 512) ** 2))
    # landmark noise: each point moves by the shift within about half a pixel
    assert abs(np.sqrt(px.x) - abs(DX)) < 1.0 and abs(np.sqrt(px.y) - abs(DY)) < 1.0
    assert dk.x == pytest.approx(expected[0], rel=0.2) and dk.y == pytest.approx(expected[1], rel=0.35)
    assert "percent" == dk.normalization and "%" in dk.units


def test_identity_distance(astronaut):
    blur = cv2.GaussianBlur(astronaut, (0, 0), 3)
    noisy = np.clip(astronaut + np.random.default_rng(0).normal(0, 12, astronaut.shape), 0, 255).astype(np.uint8)
    blank = np.full_like(astronaut, 128)
    frames = np.stack([astronaut, blur, noisy, blank])
    emb, found = face_embeddings(frames, upsample=0, progress=False)
    assert emb.shape == (4, 128) and found.tolist() == [True, True, True, False] and np.isnan(emb[3]).all()
    idd = identity_distance(frames, emb[0], upsample=0, progress=False)
    assert idd.per_frame[0] == pytest.approx(0.0, abs=1e-6)
    assert idd.per_frame[1] > 0.1 and idd.per_frame[2] > 0.01 and idd.per_frame[1] < 0.6  # still the same person
    assert idd.missing.tolist() == [3] and idd.frames == 3 and np.isnan(idd.per_frame[3])
    assert idd.mean == pytest.approx(idd.per_frame[:3].mean())
    with pytest.raises(NoFaceError, match="reference"):
        identity_distance(frames[:1], blank, upsample=0, progress=False)
    # a reference embedding as a tensor is an embedding too (it was refused as "frames"); a NaN one is refused,
    # not turned into NaN distances
    from_tensor = identity_distance(frames[:1], torch.from_numpy(emb[0]), upsample=0, progress=False)
    assert from_tensor.per_frame[0] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="NaN / infinite"):
        identity_distance(frames[:1], emb[3], upsample=0, progress=False)


def test_identity_track_of_other_sized_frames_is_rescaled(astronaut, shifted_track):
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    small_track = landmarks(small[None], upsample=1, progress=False)  # made on 256 px frames
    assert small_track.found.all() and small_track.image_size == (256, 256)
    right, _ = face_embeddings(astronaut[None], track=shifted_track[[0]], progress=False)
    scaled, found = face_embeddings(astronaut[None], track=small_track, progress=False)
    assert found.all() and np.linalg.norm(scaled - right) < 0.2  # unscaled points: ~0.8 off
    pts = shifted_track[[0]].points.copy()
    pts[0, 3] = np.nan  # a jaw point missing: the frame has no usable face, as in ΔK
    idd = identity_distance(astronaut[None], right[0], track=LandmarkTrack.from_points(pts, (512, 512)),
                            progress=False)
    assert idd.missing.tolist() == [0] and np.isnan(idd.mean)


# ----------------------------------------------------------------------------------------------- table and harness


def test_table1_layout_and_csv(tmp_path):
    mine = {"forward": {"delta_k_x": 1.234, "delta_k_y": 2.0, "id": 0.3, "frames": 10, "id_missing": [4, 7]},
            "reverse": {"delta_k_x": 1.5, "delta_k_y": 2.5, "id": 0.31}, "fid": 12.0, "fid_features": "pixels32-rp256",
            "fid_comparable_to_paper": False}
    text = table1({**PAPER_TABLE1, "Mine": mine, "Half": {"delta_k_x_f": 0.5}}, tmp_path / "t.csv")
    lines = text.splitlines()
    assert lines[0] == "| Method | ΔKx f | ΔKy f | ΔKx r | ΔKy r | ID f | ID r | FID |"
    assert "| Baseline (paper) | 0.19 | 0.40 | 0.26 | 0.28 | 0.46 | 0.51 | 17.34 |" in lines
    assert "| Mine | 1.23 | 2.00 | 1.50 | 2.50 | 0.30 | 0.31 | 12.00 |" in lines
    assert "| Half | 0.50 | – | – | – | – | – | – |" in lines
    assert any("NOT Inception" in ln for ln in lines)
    assert any("2 of 10 frames without a face left out of ID [4, 7]" in ln for ln in lines)
    with open(tmp_path / "t.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == ["Baseline (paper)", "Video2StyleGAN (paper)", "Mine", "Half"]
    assert float(rows[2]["delta_k_x_f"]) == 1.234 and rows[2]["id_missing_f"] == "[4, 7]" and rows[3]["fid"] == ""


@pytest.fixture(scope="module")
def small_clip(astronaut):
    """A 3-frame 160 px 'driving video' of the astronaut's face moving a few pixels."""
    crop = cv2.resize(astronaut[50:210, 142:302], (160, 160), interpolation=cv2.INTER_AREA)
    return np.stack([np.roll(crop, (s, -2 * s), (0, 1)) for s in range(3)])


@pytest.fixture(scope="module")
def tiny_generator_method(small_clip):
    """A stand-in re-enactment that shows v2s_nb.stylegan3.tiny_generator images (16 px, 8 channels), one per
    driving frame - numbers meaningless, plumbing real. Rendered once (the generator is slow on a busy CPU)."""
    from v2s_nb.stylegan3 import tiny_generator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine two intra-op threads make this ~50x slower
    try:
        G = tiny_generator(resolution=16, channel_max=8)
        z = torch.from_numpy(np.random.default_rng(0).standard_normal((len(small_clip), G.z_dim))).float()
        with torch.no_grad():
            img = G.synthesis(G.mapping(z, None))
    finally:
        torch.set_num_threads(threads)
    rendered = ((img.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()

    def reenact(reference, driving):
        assert len(driving) == len(rendered)
        return rendered if driving[0].tobytes() == small_clip[0].tobytes() else rendered[::-1]

    return reenact


def test_evaluate_forward_and_reverse(small_clip):
    row = evaluate(small_clip, small_clip, small_clip[0], reverse_result_frames=small_clip[::-1],
                   feature_extractor=PooledPixelFeatures(dim=32), upsample=0, progress=False)
    assert row["delta_k_x_f"] == 0 and row["delta_k_y_r"] == 0 and row["frames_f"] == 3
    assert row["id_f"] < 0.2 and row["id_r"] == pytest.approx(row["id_f"])
    assert row["fid"] == pytest.approx(0.0, abs=1e-8) and "pixels" in row["fid_features"]
    one_way = evaluate(small_clip, small_clip, small_clip[0], upsample=0, progress=False)
    assert one_way["fid"] is None and one_way["delta_k_x_r"] is None


def test_run_table1_end_to_end(small_clip, tiny_generator_method, tmp_path):
    methods = {"identity": lambda ref, driving: driving, "tiny generator": tiny_generator_method}
    out = run_table1(methods, {"astronaut": small_clip[0]}, small_clip, csv_path=tmp_path / "table1.csv",
                     feature_extractor=PooledPixelFeatures(dim=32), upsample=0, progress=False)
    ident, tiny = out.rows["identity"], out.rows["tiny generator"]
    assert ident["delta_k_x_f"] == 0 and ident["delta_k_y_r"] == 0 and ident["fid"] == pytest.approx(0, abs=1e-8)
    assert np.isnan(tiny["delta_k_x_f"]) and tiny["delta_k_missing_f"] == [0, 1, 2] and np.isnan(tiny["id_r"])
    assert np.isfinite(tiny["fid"]) and tiny["fid_frames_f"] == 3
    text = str(out)
    assert text.splitlines()[0].startswith("| Method | ΔKx f") and "| identity | 0.00 | 0.00 | 0.00 | 0.00 |" in text
    assert "tiny generator forward: 3 of 3 frames without a face left out of ΔK" in text
    with open(tmp_path / "table1.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == ["identity", "tiny generator"] and rows[1]["delta_k_missing_r"] == "[0, 1, 2]"
    with pytest.raises(ValueError, match="one frame per driving frame"):
        run_table1({"short": lambda ref, d: d[:2]}, small_clip[0], small_clip, csv_path=None,
                   feature_extractor="pixels", upsample=0, progress=False)


def test_inception_adapter_with_a_stand_in_library(monkeypatch, tmp_path):
    """The torch-fidelity code path (uint8 NCHW in, 2048-d out, weights from the hub cache) with a fake module in
    place of the library, which cannot be installed beside this torch (it needs torchvision)."""
    import importlib.machinery
    import sys
    import types

    seen = {}

    class FakeInception(torch.nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None):
            super().__init__()
            seen["args"] = (name, features_list, feature_extractor_weights_path)

        def forward(self, x):
            seen["input"] = (x.dtype, tuple(x.shape))
            return (x.float().mean(dim=(1, 2, 3))[:, None].repeat(1, 2048),)

    pkg = types.ModuleType("torch_fidelity")
    pkg.__spec__ = importlib.machinery.ModuleSpec("torch_fidelity", None, is_package=True)
    sub = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    sub.FeatureExtractorInceptionV3 = FakeInception
    pkg.feature_extractor_inceptionv3 = sub
    monkeypatch.setitem(sys.modules, "torch_fidelity", pkg)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", sub)
    weights, _ = stand_in_weights(monkeypatch, tmp_path)
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"stand-in weights")

    ext = get_feature_extractor("inception", device="cpu")
    assert ext.comparable_to_paper and "torch-fidelity" in ext.name and ext.label == ext.name
    assert seen["args"] == ("inception-v3-compat", ["2048"], str(weights))
    feats = ext(np.full((5, 20, 30, 3), 7, np.uint8))
    assert feats.shape == (5, 2048) and seen["input"] == (torch.uint8, (5, 3, 20, 30)) and np.all(feats == 7)


def test_run_table1_refuses_a_channel_first_reference(small_clip):
    chw = torch.from_numpy(small_clip[0]).permute(2, 0, 1)  # torchvision's read_image layout
    with pytest.raises(ValueError, match=r"ambiguous.*channel-first.*3 grayscale.*\[H, W, C\]"):
        run_table1({"identity": lambda ref, d: d}, chw, small_clip, csv_path=None,
                   feature_extractor=PooledPixelFeatures(dim=16), upsample=0, progress=False)


@pytest.mark.slow
def test_run_table1_paired_clips_and_face_features(small_clip):
    """Two references with a driving clip each (one given as a list of frames is one clip); FID on dlib
    embeddings reuses the ID embeddings."""
    refs = [small_clip[0], np.ascontiguousarray(small_clip[0, :, ::-1])]
    drives = [small_clip[:2], np.ascontiguousarray(small_clip[:2, :, ::-1])]
    out = run_table1({"identity": lambda ref, d: d}, refs, drives, csv_path=None, feature_extractor="dlib-face",
                     upsample=0, progress=False)
    row = out.rows["identity"]
    assert out.csv_path is None and row["frames_f"] == 4 and row["delta_k_x_f"] == 0
    assert row["fid"] == pytest.approx(0.0, abs=1e-8) and row["fid_features"] == "dlib-face"
    assert "NOT Inception" in str(out)
    as_list = run_table1({"identity": lambda ref, d: d}, small_clip[0], list(small_clip[:2]), csv_path=None,
                         feature_extractor=PooledPixelFeatures(dim=16), upsample=0, progress=False)
    assert as_list.rows["identity"]["frames_r"] == 2
