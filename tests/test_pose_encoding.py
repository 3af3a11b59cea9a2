"""Pose encoding (section 3.3) with differentiable stand-in P_r on the tiny generator."""

import numpy as np
import pytest
import torch

from v2s_nb.method.pose_encoding import (PoseUnavailableError, default_pose_regressor, encode_pose,
                                         encode_pose_sequence, fit_pose_regressor)
from v2s_nb.stylegan3 import tiny_generator

TOL_DEG = 0.5  # target reached within this many degrees (per angle) by the stand-in P_r


@pytest.fixture(scope="module")
def G():
    return tiny_generator("R", resolution=64)


@pytest.fixture(scope="module")
def w_ref(G):
    with torch.no_grad():
        return G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(3)), None)[0]


class LinearOnW:
    """Fixed random linear map of w rows 0-7 -> degrees."""
    pose_input = "w"

    def __init__(self, G):
        g = torch.Generator().manual_seed(7)
        self.M = torch.randn(8 * G.w_dim, 3, generator=g) * 2.0

    def __call__(self, ws):
        return ws[:, :8].reshape(len(ws), -1) @ self.M


def image_pose(img):
    """Fixed linear map of a 4x4 pooled image -> degrees (differentiable through the generator)."""
    g = torch.Generator().manual_seed(11)
    M = torch.randn(3 * 16, 3, generator=g) * 20.0
    return torch.nn.functional.adaptive_avg_pool2d(img, 4).reshape(len(img), -1) @ M


def test_rows_8_up_untouched_loss_falls_target_reached(G, w_ref):
    P = LinearOnW(G)
    start = P(w_ref[None])[0].numpy()
    target = start + np.array([10.0, -5.0, 3.0])
    enc = encode_pose(G, w_ref, target, P, steps=150, lr=0.02)
    assert torch.equal(enc.ws[0, 8:], w_ref[8:])
    assert not torch.equal(enc.ws[0, :8], w_ref[:8])
    h = enc.loss_history[0]
    assert h[-1] < 0.01 * h[0]
    assert np.abs(enc.predicted[0] - target).max() < TOL_DEG
    assert np.isnan(enc.achieved).all()  # random generator: not measured
    assert "target" in enc.report()


def test_start_codes_move_only_the_pose_rows_and_the_weights_get_no_gradient(G, w_ref):
    """``init`` (one start code for all, or one per code) sets where rows 0-7 start; rows 8+ stay w_ref's whatever
    init holds. A generator set up for fine-tuning keeps no gradient from the loop, and its flags."""
    P = LinearOnW(G)
    other = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(4)), None)[0].detach()
    target = P(w_ref[None])[0].numpy() + np.array([5.0, 0.0, 0.0])
    G.synthesis.requires_grad_(True)
    try:
        enc = encode_pose(G, w_ref, np.stack([target] * 2), P, steps=3, init=other)
        assert all(p.grad is None and p.requires_grad for p in G.synthesis.parameters())
    finally:
        G.synthesis.requires_grad_(False)
    assert enc.ws.shape[0] == 2 and torch.equal(enc.ws[:, 8:], w_ref[8:].expand(2, -1, -1))
    with pytest.raises(ValueError, match="2 codes and target 3 poses"):
        encode_pose(G, torch.stack([w_ref] * 2), np.zeros((3, 3)), P, steps=1)
    with pytest.raises(ValueError, match="init must be"):
        encode_pose(G, w_ref, np.zeros((2, 3)), P, steps=1, init=torch.stack([other] * 3))


def test_larger_lambda_id_keeps_w_closer(G, w_ref):
    P = LinearOnW(G)
    target = P(w_ref[None])[0].numpy() + np.array([20.0, 10.0, -10.0])
    d = []
    for lam in (0.04, 200.0):
        enc = encode_pose(G, w_ref, target, P, steps=100, lr=0.02, lambda_id=lam)
        d.append(float((enc.ws[0, :8] - w_ref[:8]).abs().mean()))
    assert d[1] < 0.8 * d[0]


@pytest.mark.slow
def test_image_pose_fn_through_generator(G, w_ref):
    with torch.no_grad():
        start = image_pose(G.synthesis(w_ref[None]))[0].numpy()
    target = start + np.array([2.0, -2.0, 1.0])
    enc = encode_pose(G, w_ref, target, image_pose, steps=8, lr=0.003)  # few steps: backward through G on a CPU
    assert torch.equal(enc.ws[0, 8:], w_ref[8:])
    assert enc.loss_history[0][-1] < 0.5 * enc.loss_history[0][0]
    assert np.abs(enc.predicted[0] - target).sum() < np.abs(start - target).sum()


def test_sequence_warm_start(G, w_ref):
    P = LinearOnW(G)
    start = P(w_ref[None])[0].numpy()
    targets = start + np.array([[0, 0, 0], [2, 0, 0], [4, 1, 0], [6, 2, -1]], float)
    enc = encode_pose_sequence(G, w_ref, targets, P, steps_first=150, steps_next=100, lr=0.02, progress=False)
    assert enc.ws.shape == (4, G.num_ws, G.w_dim)
    assert torch.equal(enc.ws[:, 8:], w_ref[8:].expand(4, -1, -1))
    assert np.abs(enc.predicted - targets).max() < TOL_DEG
    assert len(enc.loss_history[1]) == 100  # warm-started frames run steps_next


def test_sequence_in_batches(G, w_ref):
    P = LinearOnW(G)
    start = P(w_ref[None])[0].numpy()
    targets = start + np.array([[0, 0, 0], [2, 0, 0], [4, 1, 0], [6, 2, -1], [8, 2, -1]], float)
    enc = encode_pose_sequence(G, w_ref, targets, P, steps_first=150, steps_next=100, lr=0.02, progress=False,
                               batch_size=2)
    assert enc.ws.shape == (5, G.num_ws, G.w_dim) and enc.settings["batch_size"] == 2
    assert torch.equal(enc.ws[:, 8:], w_ref[8:].expand(5, -1, -1))
    assert np.abs(enc.predicted - targets).max() < TOL_DEG
    assert [len(h) for h in enc.loss_history] == [150, 150, 100, 100, 100]  # frames 0-1 together, then warm starts
    # warm start: frames 2-3 began from frame 1's result, so their first loss is that of frame 1's code
    lp = 2.0 * ((P(enc.ws[1:2]) - torch.as_tensor(targets[2:4], dtype=torch.float32)) ** 2).mean(1)
    id_term = 0.04 * (enc.ws[1, :8] - w_ref[:8]).abs().mean().item()
    assert np.allclose(np.array(enc.loss_history[2:4])[:, 0] - lp.numpy(), id_term, atol=1e-3)
    with pytest.raises(ValueError, match="batch_size"):
        encode_pose_sequence(G, w_ref, targets, P, batch_size=0, progress=False)


def test_default_regressor_refuses_random_generator(G, w_ref):
    with pytest.raises(PoseUnavailableError, match="random weights"):
        default_pose_regressor(G)
    with pytest.raises(PoseUnavailableError, match="random weights"):
        encode_pose(G, w_ref, [0, 0, 0])
    # a measuring function that finds no faces on most samples -> refused, not fitted
    with pytest.raises(PoseUnavailableError, match="detected on only"):
        default_pose_regressor(G, n_samples=8, measure=lambda im: np.full((len(im), 3), np.nan), progress=False)


def test_fit_pose_regressor_recovers_linear_map(G):
    g = torch.Generator().manual_seed(0)
    ws = G.mapping(torch.randn(64, G.z_dim, generator=g), None).detach()
    A = np.random.RandomState(0).randn(G.w_dim, 3)
    poses = ws[:, 0].double().numpy() @ A + [1.0, 2.0, 3.0]
    poses[:5] = np.nan
    reg = fit_pose_regressor(ws, poses, ridge=1e-6)
    assert np.allclose(reg(ws).detach().numpy()[5:], poses[5:], atol=0.05)
    assert reg.info["n_fit"] == 59


def test_bad_arguments(G, w_ref):
    P = LinearOnW(G)
    with pytest.raises(ValueError, match="NaN"):
        encode_pose(G, w_ref, [np.nan, 0, 0], P)
    with pytest.raises(ValueError, match="lambda_pose"):
        encode_pose(G, w_ref, [0, 0, 0], P, lambda_pose=[1, 2])
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        encode_pose(G, w_ref, [0, 0, 0], lambda ws: ws[:, 0, :2], pose_input="w")
