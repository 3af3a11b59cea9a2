"""The paper's landmark CNNs in PyTorch (PFLD, RFB-320), the differentiable head pose, and P_r(image) in eq 4.

The CNN weights are never downloaded here: they are found the way an offline machine finds them, in a folder
named in ``V2S_NB_WEIGHTS_DIR`` or in the cache (size and SHA-256 checked); without them those tests skip and say
so. The head-pose fit needs no weights.
"""

import warnings

import cv2
import numpy as np
import pytest
import torch
from skimage import data

import v2s_nb.face.landmark_cnn as lc
from v2s_nb.face import LandmarkTrack, head_pose, head_pose_torch, landmarks, project_model
from v2s_nb.weights import WeightsUnavailableError


def _weights(name):
    try:
        return lc.weights_path(name, download=False)
    except WeightsUnavailableError as e:
        pytest.skip(f"{name} weights not found offline (set V2S_NB_WEIGHTS_DIR to a folder holding them, or run "
                    f"v2s_nb.weights.fetch({name!r}) once online): {str(e).splitlines()[0]}")


def landmark_cnn_weights():
    """(the PFLD file, the RFB-320 file); the test is skipped where either isn't found offline."""
    return _weights("pfld-68"), _weights("rfb-320-face-detector")


@pytest.fixture(scope="module")
def pfld_path():
    return _weights("pfld-68")


@pytest.fixture(scope="module")
def rfb_path():
    return _weights("rfb-320-face-detector")


@pytest.fixture(scope="module")
def pfld(pfld_path):
    return lc.load_pfld(path=pfld_path)


@pytest.fixture(scope="module")
def rfb(rfb_path):
    return lc.load_rfb(path=rfb_path)


def _ort(path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (test extra) is needed to compare with")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # one harmless warning per initializer listed as a graph input
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _rotate(img, deg, scale=1.0, shift=(0.0, 0.0), center=(224.0, 118.0)):
    """``img`` turned ``deg`` degrees counter-clockwise as seen about ``center`` (the astronaut's face), scaled."""
    m = cv2.getRotationMatrix2D(center, deg, scale)
    m[:, 2] += shift
    return cv2.warpAffine(img, m, img.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


@pytest.fixture(scope="module")
def astronaut_frames():
    """The astronaut photo (512 px) and warped copies: turned -12 / +9 degrees, shrunk 0.8x and shifted, mirrored."""
    a = data.astronaut()
    return np.stack([a, _rotate(a, -12), _rotate(a, 9), _rotate(a, 0, 0.8, (30, -20)), a[:, ::-1]])


def _float(frames):
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


# ----------------------------------------------------------------------------------------------- = onnxruntime


def test_pfld_equals_onnxruntime_on_real_crops(pfld, rfb, pfld_path, astronaut_frames):
    dets = rfb.detect(astronaut_frames)
    assert all(len(d) >= 1 for d in dets)
    squares = lc.face_square(np.stack([d[0, :4] for d in dets]))
    crops = lc.crop_squares(_float(astronaut_frames), torch.as_tensor(squares, dtype=torch.float32))
    assert crops.shape == (5, 3, 112, 112) and 0 <= float(crops.min()) and float(crops.max()) <= 1
    ref = _ort(pfld_path).run(None, {"input": crops.numpy()})[0]
    with torch.no_grad():
        ours = pfld(crops).reshape(5, 136).numpy()  # the whole batch in one call
    assert np.abs(ours - ref).max() < 1e-4
    assert np.ptp(ref, axis=0).max() > 0.02  # the crops differ, and so do the landmarks


def test_rfb_equals_onnxruntime(rfb, rfb_path, astronaut_frames):
    sess = _ort(rfb_path)
    for img in astronaut_frames[[0, 1, 3]]:
        x = (cv2.resize(img, lc.RFB_INPUT).astype(np.float32) - 127.0) / 128.0
        x = x.transpose(2, 0, 1)[None]
        ref_scores, ref_boxes = sess.run(None, {"input": x})
        with torch.no_grad():
            scores, boxes = rfb(torch.from_numpy(x))
        assert np.abs(scores.numpy() - ref_scores).max() < 1e-4 and np.abs(boxes.numpy() - ref_boxes).max() < 1e-4


def test_rfb_finds_the_astronaut_and_nothing_in_a_blank_frame(rfb, astronaut_frames):
    dets = rfb.detect(np.stack([astronaut_frames[0], np.full_like(astronaut_frames[0], 128)]))
    left, top, right, bottom, score = dets[0][0]
    assert score > 0.99 and 170 < left < 190 and 55 < top < 75 and 260 < right < 280 and 165 < bottom < 185
    assert len(dets[1]) == 0


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], float)
    assert lc.nms(boxes, np.array([0.8, 0.9, 0.7]), 0.3).tolist() == [1, 2]


# ----------------------------------------------------------------------------------------------- gradients


def test_gradients_finite_and_match_finite_differences(pfld_path):
    model = lc.load_pfld(dtype=torch.float64, path=pfld_path)
    img = _float(cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)[None]).double()
    square = torch.tensor([[78.0, 22.0, 144.0, 88.0]], dtype=torch.float64)  # about the face, 66 px
    x = img.clone().requires_grad_(True)
    pts = lc.pfld_landmarks(model, x, square)
    w = torch.randn(pts.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (pts * w).sum().backward()
    g = x.grad
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert g[..., :20, :].abs().max() == 0  # rows above the crop do not matter
    # a smooth small change of the image: d/dh w.L(x + h v) at h = 0 against the central difference
    v = torch.nn.functional.interpolate(torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1),
                                                    dtype=torch.float64), size=(256, 256), mode="bilinear")
    h = 1e-6  # float64; small enough that no ReLU changes side
    with torch.no_grad():
        fd = ((lc.pfld_landmarks(model, img + h * v, square) - lc.pfld_landmarks(model, img - h * v, square))
              * w).sum() / (2 * h)
        moved = (lc.pfld_landmarks(model, img + 0.02 * v, square) - lc.pfld_landmarks(model, img, square)).abs().max()
    predicted = (g * v).sum()
    assert moved > 0.01  # pixels: the change does move the landmarks
    assert float(abs(fd - predicted)) < 1e-4 * float(abs(fd)) + 1e-8


# ----------------------------------------------------------------------------------------------- head pose


def test_head_pose_torch_matches_pnp_on_rendered_views():
    rng = np.random.RandomState(0)
    ang = rng.uniform(-1, 1, (24, 3)) * [40, 25, 35]
    centers = rng.uniform(90, 170, (24, 2))
    pts = np.stack([project_model(*a, 256, center=c) for a, c in zip(ang, centers)])
    pnp = head_pose(pts, 256)
    ours = head_pose_torch(torch.tensor(np.nan_to_num(pts)), 256).numpy()
    assert np.abs(pnp - ang).max() < 0.1
    assert np.abs(ours - ang).max() < 0.1 and np.abs(ours - pnp).max() < 2.0
    # differentiable: the gradient w.r.t. the landmarks is finite and matches finite differences
    p0 = torch.tensor(np.nan_to_num(pts[:2]))
    p = p0.clone().requires_grad_(True)
    head_pose_torch(p, 256).sum().backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    v = torch.randn(p0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    h = 1e-6
    fd = (head_pose_torch(p0 + h * v, 256).sum() - head_pose_torch(p0 - h * v, 256).sum()) / (2 * h)
    assert abs(float(fd - (p.grad * v).sum())) < 1e-5 * abs(float(fd)) + 1e-7


def test_head_pose_torch_matches_pnp_on_real_landmarks():
    """On a real face the 6 points do not fit the model exactly; both solve the same least-squares problem."""
    a = data.astronaut()
    frames = np.stack([a, _rotate(a, -15), _rotate(a, 8, 0.7), a[:, ::-1]])
    tr = landmarks(frames, upsample=0, progress=False)
    assert tr.found.all()
    pnp = head_pose(tr)
    ours = head_pose_torch(torch.tensor(tr.points), tr.image_size).numpy()
    assert np.abs(ours - pnp).max() < 0.05, (ours, pnp)


def test_pose_from_pfld_follows_in_plane_rotation():
    pytest.importorskip("onnx")
    _weights("pfld-68"), _weights("rfb-320-face-detector")
    a = data.astronaut()
    angles = np.array([-20.0, -10.0, 0.0, 10.0, 20.0])
    frames = np.stack([_rotate(a, d) for d in angles])
    tr = landmarks(frames, detector="rfb", model="pfld", progress=False)
    assert tr.found.all() and tr.detector == "rfb+pfld"
    pose = head_pose_torch(torch.tensor(tr.points), tr.image_size).numpy()
    roll_change = pose[:, 2] - pose[2, 2]
    assert np.abs(roll_change - angles).max() < 2.0, roll_change


# ----------------------------------------------------------------------------------------------- front end


def test_pfld_and_dlib_agree_on_astronaut_frames(astronaut_frames):
    _weights("pfld-68"), _weights("rfb-320-face-detector")
    frames = astronaut_frames
    dl = landmarks(frames, detector="hog", upsample=0, progress=False)
    cnn = landmarks(frames, detector="rfb", progress=False)
    assert isinstance(cnn, LandmarkTrack) and cnn.found.all() and dl.found.all()
    iod = np.hypot(*(dl.points[:, 45] - dl.points[:, 36]).T)
    nme = np.hypot(*(cnn.points - dl.points).transpose(2, 0, 1)).mean(1) / iod
    assert nme.max() < 0.08, nme
    hog_pfld = landmarks(frames[:2], detector="hog", model="pfld", progress=False)
    assert hog_pfld.detector == "hog+pfld" and (np.hypot(*(hog_pfld.points - dl.points[:2]).transpose(2, 0, 1))
                                                .mean(1) / iod[:2]).max() < 0.08


def test_front_end_arguments():
    img = data.astronaut()
    with pytest.raises(ValueError, match="does not go with"):
        landmarks(img, detector="rfb", model="dlib", progress=False)
    with pytest.raises(ValueError, match="does not go with"):
        landmarks(img, detector="cnn", model="pfld", progress=False)
    with pytest.raises(ValueError, match="model must be one of"):
        landmarks(img, model="mediapipe", progress=False)


def test_keypoint_distance_uses_pfld_when_available(astronaut_frames):
    _weights("pfld-68"), _weights("rfb-320-face-detector")
    from v2s_nb.metrics import keypoint_distance

    dk = keypoint_distance(astronaut_frames[:2], astronaut_frames[:2], progress=False)
    assert dk.detector == "rfb+pfld" and dk.x == 0 and dk.frames == 2
    dk = keypoint_distance(astronaut_frames[:1], astronaut_frames[:1], detector="hog", upsample=0, progress=False)
    assert dk.detector == "hog"


def test_keypoint_distance_falls_back_to_dlib_with_a_warning(monkeypatch, tmp_path):
    from v2s_nb.metrics import keypoint_distance

    monkeypatch.setenv("V2S_NB_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("V2S_NB_CACHE", str(tmp_path / "cache"))

    local_only = lc.weights_path
    monkeypatch.setattr(lc, "weights_path", lambda name, download=True: local_only(name, download=False))
    a = data.astronaut()[None]
    with pytest.warns(RuntimeWarning, match="using dlib"):
        dk = keypoint_distance(a, a, upsample=0, progress=False)
    assert dk.detector == "hog"


# ----------------------------------------------------------------------------------------------- eq 4


@pytest.mark.slow
def test_eq4_with_image_pose_regressor_moves_rows_0_to_7_and_lowers_the_loss(pfld_path):
    from v2s_nb.method.pose_encoding import ImagePoseRegressor, encode_pose
    from v2s_nb.stylegan3 import tiny_generator

    G = tiny_generator("R", resolution=64)
    with torch.no_grad():
        w_ref = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(3)), None)[0]
    P = ImagePoseRegressor(lc.load_pfld(path=pfld_path))
    with torch.no_grad():
        start = P(G.synthesis(w_ref[None]))[0].numpy()
    target = start + np.array([3.0, -3.0, 2.0])
    enc = encode_pose(G, w_ref, target, P, steps=6, lr=0.01)  # a few steps: backward through G on a CPU
    assert enc.settings["pose_fn"] == "ImagePoseRegressor" and enc.settings["pose_input"] == "image"
    assert torch.equal(enc.ws[0, 8:], w_ref[8:])
    moved = (enc.ws[0, :8] - w_ref[:8]).abs().amax(1)
    # row 0 feeds only the input layer's affine, which StyleGAN3 initialises to 0 (so in a random network it
    # has no gradient); rows 1-7 all move
    assert (moved[1:] > 0).all(), moved
    h = enc.loss_history[0]
    assert h[-1] < 0.8 * h[0], h
    assert np.abs(enc.predicted[0] - target).sum() < np.abs(start - target).sum()


def test_image_regressor_reads_aligned_faces_like_dlib_and_pnp(pfld_path):
    """P_r on FFHQ-aligned crops (the face square is a fixed fraction of the frame) agrees with dlib + PnP within
    the two landmark detectors' difference (2-3 degrees of yaw on this photo); the alignment undoes an in-plane turn
    of the photo, so roll stays near 0."""
    from v2s_nb.face import align_face
    from v2s_nb.method.pose_encoding import ImagePoseRegressor

    P = ImagePoseRegressor(lc.load_pfld(path=pfld_path))
    a = data.astronaut()
    for turned in (a, _rotate(a, 12)):
        pts = landmarks(turned, upsample=0, progress=False).points[0]
        for size in (256, 1024):
            crop = align_face(turned, pts, size).image
            ours = P.read(crop)[0]
            ref = head_pose(landmarks(crop, upsample=int(size < 512), progress=False))[0]
            assert np.abs(ours - ref).max() < 4.0, (size, ours, ref)
            assert abs(ours[2]) < 2.0


def test_default_regressor_choices(pfld_path, monkeypatch, tmp_path):
    from v2s_nb.method import pose_encoding as pe
    from v2s_nb.stylegan3 import tiny_generator

    G = tiny_generator("R", resolution=64)
    assert isinstance(pe.default_pose_regressor(G, pose_regressor="pfld"), pe.ImagePoseRegressor)
    with pytest.raises(ValueError, match="pose_regressor must be one of"):
        pe.default_pose_regressor(G, pose_regressor="cnn")
    with pytest.raises(pe.PoseUnavailableError, match="random weights"):
        pe.default_pose_regressor(G)  # 'auto' on a generator that draws no faces
    # weights missing -> a warning, then the w-space surrogate (which finds no faces on these samples either)
    monkeypatch.setenv("V2S_NB_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("V2S_NB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pe, "pfld_pose_regressor", lambda device=None: lc.load_pfld(device, download=False))
    monkeypatch.setattr(G, "is_random", False, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(RuntimeWarning, match="falling back to pose_regressor='w-linear'"):
            pe.default_pose_regressor(G, n_samples=8, progress=False)
    with pytest.warns(RuntimeWarning, match="falling back"), \
            pytest.raises(pe.PoseUnavailableError, match="detected on"):
        pe.default_pose_regressor(G, n_samples=8, progress=False)
