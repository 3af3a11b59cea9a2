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


def test_fit_pose_regressor_refuses_mismatched_inputs(G):
    ws = G.mapping(torch.randn(8, G.z_dim, generator=torch.Generator().manual_seed(0)), None).detach()
    poses = np.zeros((8, 3))
    for w, p in ((ws, poses[:6]), (ws[:5], poses)):  # was an IndexError
        with pytest.raises(ValueError, match=rf"ws has {len(w)} codes but poses has {len(p)} rows"):
            fit_pose_regressor(w, p)
    with pytest.raises(ValueError, match=r"poses must be \[N, 3\]"):
        fit_pose_regressor(ws, poses[:, :2])


def test_bad_arguments(G, w_ref):
    P = LinearOnW(G)
    with pytest.raises(ValueError, match="NaN"):
        encode_pose(G, w_ref, [np.nan, 0, 0], P)
    with pytest.raises(ValueError, match="lambda_pose"):
        encode_pose(G, w_ref, [0, 0, 0], P, lambda_pose=[1, 2])
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        encode_pose(G, w_ref, [0, 0, 0], lambda ws: ws[:, 0, :2], pose_input="w")
    with pytest.raises(TypeError, match="pose_fn returned ndarray without a gradient path"):
        encode_pose(G, w_ref, [0, 0, 0], lambda ws: ws[:, 0, :3].detach().numpy(), pose_input="w", steps=1)
    # NaN codes were reported as a divergence ('lower lr'); steps_next was checked after the first batch's work
    with pytest.raises(ValueError, match="w_ref contains NaN.*Invert the reference again"):
        encode_pose(G, w_ref * float("nan"), [0, 0, 0], P)
    with pytest.raises(ValueError, match="init contains NaN"):
        encode_pose(G, w_ref, [0, 0, 0], P, init=w_ref * float("nan"))
    with pytest.raises(ValueError, match="steps_next must be an integer >= 1, got 0"):
        encode_pose_sequence(G, w_ref, np.zeros((3, 3)), P, steps_first=1, steps_next=0, progress=False)


def test_sequence_takes_one_reference_per_frame_and_refuses_misshapen_targets(G, w_ref):
    """A reference code per frame: each frame keeps its own rows 8+ (the whole clip of codes was once cut to its
    first). Targets that are not [3] or [T, 3] degrees raise instead of being regrouped into other poses."""
    P = LinearOnW(G)
    refs = w_ref + 0.1 * torch.randn(3, *w_ref.shape, generator=torch.Generator().manual_seed(5))
    targets = P(refs).detach().numpy() + 1.0
    enc = encode_pose_sequence(G, refs, targets, P, steps_first=3, steps_next=2, batch_size=2, progress=False)
    assert torch.equal(enc.ws[:, 8:], refs[:, 8:])
    with pytest.raises(ValueError, match="one per frame"):
        encode_pose_sequence(G, refs[:2], targets, P, progress=False)
    with pytest.raises(ValueError, match=r"targets must be \[3\] or \[N, 3\]"):
        encode_pose_sequence(G, w_ref, np.zeros((6, 2)), P, progress=False)
    with pytest.raises(ValueError, match=r"target must be \[3\] or \[N, 3\]"):
        encode_pose(G, w_ref, np.zeros(30), P)


class _PooledLandmarks(torch.nn.Module):
    """A stand-in for PFLD: 68 points from the crop's mean colour (differs with the crop's square)."""
    dtype = torch.float32

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 136)
        g = torch.Generator().manual_seed(0)
        torch.nn.init.normal_(self.lin.weight, std=2.0, generator=g)
        torch.nn.init.normal_(self.lin.bias, std=0.5, generator=g)  # seeded too: a random one made the test flaky

    def forward(self, crops):
        return torch.sigmoid(self.lin(crops.mean((2, 3)))).reshape(-1, 68, 2)


def test_image_regressor_reads_each_frame_in_its_own_square():
    """One face square per frame: read() of a clip longer than its batch gives each frame the pose read in its own
    square (it once handed every batch all the squares and raised); other images (the generator's) are refused."""
    from v2s_nb.method.pose_encoding import ImagePoseRegressor
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (20, 64, 64, 3), dtype=np.uint8)
    frames[:, 16:48, 16:48] = rng.integers(0, 255, (20, 1, 1, 3), dtype=np.uint8)  # a flat patch per frame
    squares = np.array([[0.2, 0.2, 0.6, 0.6] if i % 2 else [0.3, 0.25, 0.8, 0.75] for i in range(20)])
    fake = _PooledLandmarks()
    got = ImagePoseRegressor(fake, square=squares).read(frames, batch_size=16)
    alone = np.concatenate([ImagePoseRegressor(fake, square=squares[i]).read(frames[i]) for i in range(20)])
    assert got.shape == (20, 3)
    assert np.allclose(got, alone, rtol=1e-4, atol=1e-4, equal_nan=True)
    assert not np.allclose(got, ImagePoseRegressor(fake, square=squares[0]).read(frames), equal_nan=True)
    per_frame = ImagePoseRegressor(fake, square=squares)
    with pytest.raises(ValueError, match="20 face squares"):
        per_frame.read(frames[:5])
    with pytest.raises(ValueError, match="one face square per frame"):
        per_frame(torch.zeros(4, 3, 64, 64))


@pytest.mark.parametrize("bad", [-1, 0, 2.5])
def test_measure_pose_batch_size_must_be_a_positive_integer(G, w_ref, bad):
    """batch_size=-1 measured no image (an empty range, then a concatenate error); 0 failed inside range()."""
    from v2s_nb.method.pose_encoding import measure_pose

    with pytest.raises(ValueError, match=r"batch_size .*(out of range \[1, 4096\]|must be an integer)"):
        measure_pose(G, w_ref[None], batch_size=bad)


class StopsAfter(LinearOnW):
    """LinearOnW that counts its calls and stands in for Ctrl-C after ``limit`` of them."""

    def __init__(self, G, limit=None):
        super().__init__(G)
        self.calls, self.limit = 0, limit

    def __call__(self, ws):
        self.calls += 1
        if self.limit is not None and self.calls > self.limit:
            raise KeyboardInterrupt
        return super().__call__(ws)


def test_sequence_resumes_from_its_finished_batches(G, w_ref, tmp_path):
    """With ``checkpoint_dir`` an interrupted sequence keeps its finished batches: the re-run optimises only the
    rest and ends with the codes of an uninterrupted run. A batch saved from other targets or a damaged file is
    redone, with a warning."""
    from v2s_nb.errors import CacheWarning

    start = LinearOnW(G)(w_ref[None])[0].numpy()
    targets = start + np.array([[0, 0, 0], [2, 0, 0], [4, 1, 0], [6, 2, -1], [8, 2, -1]], float)
    kw = dict(steps_first=6, steps_next=4, lr=0.02, batch_size=2, progress=False)
    whole = encode_pose_sequence(G, w_ref, targets, StopsAfter(G), **kw)
    ckpt = tmp_path / "pose"
    P = StopsAfter(G, limit=(6 + 1) + (4 + 1) + 2)  # stopped in the third batch (each: steps + one last reading)
    with pytest.raises(KeyboardInterrupt):
        encode_pose_sequence(G, w_ref, targets, P, checkpoint_dir=ckpt, **kw)
    assert sorted(f.name for f in ckpt.iterdir()) == ["frames_000000-000001.pt", "frames_000002-000003.pt"]
    P = StopsAfter(G)
    again = encode_pose_sequence(G, w_ref, targets, P, checkpoint_dir=ckpt, **kw)
    assert P.calls == 4 + 1  # the third batch only
    assert torch.allclose(again.ws, whole.ws, atol=1e-6) and np.allclose(again.predicted, whole.predicted, atol=1e-4)
    assert [len(h) for h in again.loss_history] == [6, 6, 4, 4, 4]

    (ckpt / "frames_000002-000003.pt").write_bytes(b"damaged")
    P = StopsAfter(G)
    with pytest.warns(CacheWarning, match="unreadable"):
        encode_pose_sequence(G, w_ref, targets, P, checkpoint_dir=ckpt, **kw)
    assert P.calls == 4 + 1  # the damaged batch only: redone to the same codes, the last batch's start is unchanged
    P = StopsAfter(G)
    with pytest.warns(CacheWarning, match="from other"):
        encode_pose_sequence(G, w_ref, targets + 1.0, P, checkpoint_dir=ckpt, **kw)
    assert P.calls == (6 + 1) + 2 * (4 + 1)


def test_a_loss_that_turns_nan_stops_the_encoding_naming_its_step(G, w_ref):
    """The losses are read one step late (the loop doesn't wait for the GPU); a NaN one still stops the run, and the
    message names the step where it appeared."""
    calls = []

    def turns_nan(ws):
        calls.append(1)
        out = ws[:, :8].reshape(len(ws), -1)[:, :3] * 0 + 5.0
        return out * float("nan") if len(calls) == 4 else out

    turns_nan.pose_input = "w"
    with pytest.raises(FloatingPointError, match="diverged at step 3 "):
        encode_pose(G, w_ref, [1.0, 2.0, 3.0], pose_fn=turns_nan, steps=10, measure=False)


class RunsOutOfMemory(LinearOnW):
    """LinearOnW that raises PyTorch's out-of-memory error on batches of more than ``fits`` codes (from call
    ``after`` on; None: never), as a GPU too small for the batch does."""

    def __init__(self, G, fits, after=0):
        super().__init__(G)
        self.fits, self.after, self.calls = fits, after, 0

    def __call__(self, ws):
        self.calls += 1
        if self.fits is not None and self.calls > self.after and len(ws) > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (a stand-in)")
        return super().__call__(ws)


def test_a_batch_that_runs_out_of_gpu_memory_is_redone_with_half_the_frames(G, w_ref, tmp_path):
    """Out of memory at 4 frames a batch: one warning, the run goes on with 2 and gives what batch_size=2 gives;
    checkpoints hold the batches as run. Running out later halves from that batch on. At one frame a batch it stops
    with GPUMemoryError (also PyTorch's OutOfMemoryError), naming the fix; other errors pass through unchanged."""
    from v2s_nb.errors import FallbackWarning
    from v2s_nb.method.batches import GPUMemoryError

    start = LinearOnW(G)(w_ref[None])[0].numpy()
    targets = start + np.arange(7)[:, None] * np.array([1.0, 0.5, -0.3])
    kw = dict(steps_first=5, steps_next=3, lr=0.02, progress=False)
    by_two = encode_pose_sequence(G, w_ref, targets, LinearOnW(G), batch_size=2, **kw)
    ckpt = tmp_path / "pose"
    said = "4 frames a batch need more GPU memory than is free; going on with 2"
    with pytest.warns(FallbackWarning, match=said) as rec:
        halved = encode_pose_sequence(G, w_ref, targets, RunsOutOfMemory(G, fits=2), batch_size=4,
                                      checkpoint_dir=ckpt, **kw)
    assert rec[0].filename == __file__  # the warning points at the caller's line
    assert torch.allclose(halved.ws, by_two.ws, atol=1e-6)
    assert halved.settings["batch_sizes"] == [4, 2] and halved.settings["batch_size"] == 4
    assert [len(h) for h in halved.loss_history] == [5, 5, 3, 3, 3, 3, 3]
    assert sorted(f.name for f in ckpt.iterdir()) == [f"frames_{s:06d}-{min(s + 1, 6):06d}.pt" for s in (0, 2, 4, 6)]

    # the first batch of 4 fits; the second runs out (memory taken meanwhile): 4, then 2 a batch
    with pytest.warns(FallbackWarning, match="going on with 2"):
        later = encode_pose_sequence(G, w_ref, targets, RunsOutOfMemory(G, fits=2, after=5 + 1), batch_size=4, **kw)
    assert [len(h) for h in later.loss_history] == [5, 5, 5, 5, 3, 3, 3]
    assert later.settings["batch_sizes"] == [4, 2]

    with pytest.warns(FallbackWarning) as record, pytest.raises(GPUMemoryError, match="one frame a batch") as err:
        encode_pose_sequence(G, w_ref, targets, RunsOutOfMemory(G, fits=0), batch_size=4, **kw)
    assert [str(r.message).split(";")[0] for r in record] == [
        "pose encoding: 4 frames a batch need more GPU memory than is free",
        "pose encoding: 2 frames a batch need more GPU memory than is free"]
    assert isinstance(err.value, torch.cuda.OutOfMemoryError) and "torch.cuda.empty_cache()" in str(err.value)

    def broken(ws):
        raise RuntimeError("not a memory error")

    with pytest.raises(RuntimeError, match="not a memory error"):
        encode_pose_sequence(G, w_ref, targets, broken, pose_input="w", batch_size=4, **kw)
