"""The pipeline's newer parts on CUDA agree with the CPU: the ReStyle encoder and the landmark CNNs.

Skipped without a CUDA GPU (and the CNN test without their weights, found offline only)."""

import gc

import numpy as np
import pytest
import torch
from skimage import data

from conftest import CUDA_MARKS
from test_encoder import make_encoder_sd, save_released_format
from v2s_nb.method.encoder import load_encoder
from v2s_nb.stylegan3 import tiny_generator

pytestmark = CUDA_MARKS


def test_encoder_codes_on_cuda_equal_cpu(tmp_path):
    G = tiny_generator("R", resolution=64, seed=3)
    enc_sd = make_encoder_sd(G.num_ws, G.w_dim, seed=4)
    path = save_released_format(tmp_path / "restyle_e4e.pt", enc_sd, G, G.mapping.w_avg.clone(),
                                "ProgressiveBackboneEncoder")
    x = torch.rand(4, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cpu = load_encoder(path).encode(x, n_iters=2, batch_size=4)
    gpu = load_encoder(path, device="cuda").encode(x.cuda(), n_iters=2, batch_size=4)
    assert gpu.device.type == "cuda"
    # TF32 / cuDNN may differ from the CPU in the last bits; the codes are O(1).
    assert (gpu.cpu() - cpu).abs().max().item() < 2e-2


def test_landmark_cnns_on_cuda_equal_cpu():
    from test_landmark_cnn import landmark_cnn_weights
    import v2s_nb.face.landmark_cnn as lc

    pfld_path, rfb_path = landmark_cnn_weights()
    img = data.astronaut()
    frames = np.stack([img, np.ascontiguousarray(img[:, ::-1])])
    boxes = {}
    for dev in ("cpu", "cuda"):
        rfb = lc.load_rfb(path=rfb_path, device=dev)
        boxes[dev] = [d[0][:4] for d in rfb.detect(frames)]
    assert np.abs(np.array(boxes["cpu"]) - np.array(boxes["cuda"])).max() < 1.0  # pixels
    crops = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    out = {dev: lc.load_pfld(path=pfld_path, device=dev)(crops.to(dev)).cpu() for dev in ("cpu", "cuda")}
    assert (out["cpu"] - out["cuda"]).abs().max().item() < 1e-3  # crop units


def test_faces_stage_with_the_landmark_cnns_on_cuda(tmp_path):
    """The faces stage with detector='rfb' on CUDA (no dlib involved): the same landmarks, crops and track as on the
    CPU, and the track follows the roll the clip was made with."""
    from test_landmark_cnn import landmark_cnn_weights
    from test_prepare import rolling_clip
    from v2s_nb import prepare as P

    landmark_cnn_weights()  # skips where they aren't found offline
    ref, clip, roll = rolling_clip(tmp_path / "in")
    kw = dict(resolution=64, detector="rfb", smooth=0, progress=False, say=None)
    cpu = P.faces(ref, clip, cache=tmp_path / "cpu", **kw)
    gpu = P.faces(ref, clip, cache=tmp_path / "gpu", device="cuda", **kw)
    for a, b in ((cpu.reference, gpu.reference), (cpu.driving, gpu.driving)):
        assert np.abs(a.points - b.points).max() < 0.25  # crop pixels (TF32 convolutions on the GPU)
        assert np.abs(a.track - b.track).max() < 0.05 and np.abs(a.aligned.astype(int) - b.aligned).mean() < 2
    turn = gpu.driving.track[:, 2] - gpu.driving.track[0, 2]
    assert np.abs(turn - roll).max() < 1.5


def _pfld_regressor(device):
    from test_landmark_cnn import _weights
    from v2s_nb.method.pose_encoding import pfld_pose_regressor

    _weights("pfld-68")  # skips the test where the weights aren't found offline
    return pfld_pose_regressor(device, download=False)


def _pose_and_grad(P, img):
    img = img.detach().requires_grad_(True)
    pose = P(img)
    pose.sum().backward()
    return pose.detach().cpu(), img.grad.cpu()


def test_pose_regressor_on_cuda_equals_cpu_eager_and_from_graphs():
    """P_r (PFLD crop + network + differentiable head pose) forward and backward on CUDA, eager and with the pose fit
    replayed from CUDA graphs: the same angles and image gradients as on the CPU, one recording per batch size, and
    a result kept from one call is not overwritten by the next replay."""
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(2)) * 2 - 1
    out = {("cpu", False): _pose_and_grad(_pfld_regressor("cpu"), x)}
    for graphs in (False, True):
        P = _pfld_regressor("cuda")
        P.cuda_graphs = graphs
        out["cuda", graphs] = _pose_and_grad(P, x.cuda())  # with graphs: recorded here
        again = _pose_and_grad(P, x.cuda())  # replayed
        other = P(x.cuda().flip(-1).requires_grad_(True))
        assert (again[0] - other.detach().cpu()).abs().max().item() > 0.1  # the kept result was not overwritten
        assert len(P._graphed) == (1 if graphs else 0)
    ref = out["cpu", False][1]
    assert ref.norm().item() > 0
    for key in (("cuda", False), ("cuda", True)):
        assert (out["cpu", False][0] - out[key][0]).abs().max().item() < 0.05  # degrees; an H200: 6e-3
        # the image gradient of a noise image goes through PFLD's backward and an ill-conditioned pose fit: an H200
        # gave 1.6% of its norm, with cuDNN's TF32 on or off (its largest element off by 6% of the largest)
        assert ((ref - out[key][1]).norm() / ref.norm()).item() < 5e-2
    assert (out["cuda", False][0] - out["cuda", True][0]).abs().max().item() < 1e-3
    assert (out["cuda", False][1] - out["cuda", True][1]).abs().max().item() < 1e-3 * ref.abs().max().item()


@pytest.mark.parametrize("graphs", [False, True])
def test_pose_regressor_on_cuda_never_waits_for_the_gpu(graphs):
    """After a first call (the libraries set themselves up; the graphs are recorded), P_r's forward and backward hold
    no operation that waits for the GPU (there were about a dozen a call: the crop's checks read back, the head-pose
    constants copied in, the solver's error checks), so in pose encoding the host queues it behind the generator's
    work instead of draining the queue."""
    P = _pfld_regressor("cuda")
    P.cuda_graphs = graphs
    img = (torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(2)) * 2 - 1).cuda()
    _pose_and_grad(P, img)
    torch.cuda.synchronize()
    x = img.clone().requires_grad_(True)
    torch.cuda.set_sync_debug_mode("error")
    try:
        P(x).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x.grad).all()


def test_pose_encoding_loop_on_cuda_never_waits_for_the_gpu_and_matches_cpu():
    """The pose-encoding loop (fused Adam on CUDA, losses read one step late) runs its steps without a wait for the
    GPU, and ends where the CPU's loop does."""
    from v2s_nb.method.pose_encoding import _lambda_pose, _optimise

    G = tiny_generator("R", resolution=64, seed=5)
    M = {"cpu": torch.randn(8 * G.w_dim, 3, generator=torch.Generator().manual_seed(7)) * 2.0}
    M["cuda"] = M["cpu"].cuda()  # moved once: a copy in the loop would wait for the GPU

    def on_w(ws):
        return ws[:, :8].reshape(len(ws), -1) @ M[ws.device.type]

    on_w.pose_input = "w"
    w = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(3)), None).detach()
    target = torch.tensor([[10.0, -5.0, 3.0], [-8.0, 4.0, 0.0]])
    out = {}
    for dev in ("cpu", "cuda"):
        Gd, wd, td, lp = G.to(dev), w.to(dev), target.to(dev), _lambda_pose(1.0).to(dev)
        _optimise(Gd, wd, wd, td, on_w, "w", 2, 0.01, lp, 0.1, 8)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error" if dev == "cuda" else "default")
        try:
            ws, hist = _optimise(Gd, wd, wd, td, on_w, "w", 20, 0.01, lp, 0.1, 8)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        out[dev] = (ws.cpu(), hist)
    assert np.isfinite(out["cuda"][1]).all() and out["cuda"][1][:, -1].max() < out["cuda"][1][:, 0].min()
    assert (out["cpu"][0] - out["cuda"][0]).abs().max().item() < 1e-3


def test_sequences_that_run_out_of_gpu_memory_go_on_with_smaller_batches():
    """A real CUDA out-of-memory error (an allocation of twice the GPU's memory, in P_r or in the perceptual loss,
    on batches of more than 2 frames): pose encoding on images and inversion, eager and with CUDA graphs (the
    renderer recorded at 4 frames, then again at 2), go on with 2 frames a batch and end with the codes
    batch_size=2 gives; the eager runs hold no more GPU memory afterwards than runs that fit. (Each inversion from
    graphs holds on to some memory after it returns, out of memory or not: docs/performance.md.)"""
    from v2s_nb.errors import FallbackWarning
    from v2s_nb.method.invert import invert_sequence
    from v2s_nb.method.pose_encoding import encode_pose_sequence

    G = tiny_generator("R", resolution=64, seed=5).to("cuda")
    too_much = 2 * torch.cuda.get_device_properties(0).total_memory

    def hungry(n):
        if n > 2:
            torch.empty(too_much, dtype=torch.uint8, device="cuda")

    M = torch.randn(3 * 16, 3, generator=torch.Generator().manual_seed(11)).cuda() * 20.0

    def image_pose(img):
        hungry(len(img))
        return torch.nn.functional.adaptive_avg_pool2d(img, 4).reshape(len(img), -1) @ M

    image_pose.pose_input = "image"

    def perceptual(img, target):
        hungry(len(img))
        return (img - target).abs().mean((1, 2, 3))

    with torch.no_grad():
        w_ref = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(3)).cuda(), None)[0]
        frames = G.synthesis(G.mapping(torch.randn(5, G.z_dim, generator=torch.Generator().manual_seed(4)).cuda(),
                                       None, truncation_psi=0.7)).clamp(-1, 1)
    targets = np.arange(5)[:, None] * np.array([1.0, 0.5, -0.3])
    pose = dict(steps_first=4, steps_next=3, lr=0.02, progress=False)
    inv = dict(steps_first=3, steps_next=2, perceptual=perceptual, w_noise=0.0, progress=False)
    p2 = encode_pose_sequence(G, w_ref, targets, image_pose, batch_size=2, **pose)
    i2 = invert_sequence(G, frames, batch_size=2, cuda_graphs=False, **inv)
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()  # after runs that fit: what the package keeps between calls is counted
    with pytest.warns(FallbackWarning, match="pose encoding: 4 frames a batch .* going on with 2"):
        p4 = encode_pose_sequence(G, w_ref, targets, image_pose, batch_size=4, **pose)
    with pytest.warns(FallbackWarning, match="inversion: 4 frames a batch .* going on with 2"):
        i4 = invert_sequence(G, frames, batch_size=4, cuda_graphs=False, **inv)
    assert p4.settings["batch_sizes"] == i4.settings["batch_sizes"] == [4, 2]
    assert (p4.ws - p2.ws).abs().max().item() < 1e-4 and (i4.ws - i2.ws).abs().max().item() < 1e-4
    del p4, i4
    gc.collect()
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - before
    assert held <= 2 ** 20, f"{held} bytes more held after the runs that ran out of memory"

    g2 = invert_sequence(G, frames, batch_size=2, cuda_graphs=True, **inv)
    with pytest.warns(FallbackWarning, match="inversion: 4 frames a batch .* going on with 2"):
        g4 = invert_sequence(G, frames, batch_size=4, cuda_graphs=True, **inv)
    assert g4.settings["batch_sizes"] == [4, 2] and (g4.ws - g2.ws).abs().max().item() < 1e-4


def test_inversions_from_cuda_graphs_keep_no_memory_between_calls():
    """Each inversion from CUDA graphs records its renderer anew. Recordings once warmed up on a new CUDA stream each,
    and PyTorch keeps a cuBLAS workspace per stream for the life of the process: every call kept about 65 MiB more
    (tiny generator, H100). After the first call (which sets up the streams it uses), calls keep nothing."""
    from v2s_nb.method.invert import invert_sequence

    G = tiny_generator("R", resolution=64, seed=5).to("cuda")
    with torch.no_grad():
        frames = G.synthesis(G.mapping(torch.randn(5, G.z_dim, generator=torch.Generator().manual_seed(4)).cuda(),
                                       None, truncation_psi=0.7)).clamp(-1, 1)
    kw = dict(batch_size=2, steps_first=3, steps_next=2, w_noise=0.0, cuda_graphs=True, progress=False)
    held = []
    for seed in range(3):
        invert_sequence(G, frames, seed=seed, **kw)
        gc.collect()
        torch.cuda.synchronize()
        held.append(torch.cuda.memory_allocated())
    assert held[2] - held[0] <= 2 ** 20, f"bytes held after each call: {held}"


def test_pose_fit_recordings_keep_no_memory_between_regressors():
    """Each P_r records its pose fit's CUDA graphs on first use. ``make_graphed_callables`` warms up on a new stream
    of its own, which would keep a cuBLAS workspace for the life of the process; the recording warms up on the one
    shared stream instead, so after the first regressor, later ones keep nothing once they are gone."""
    img = (torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(2)) * 2 - 1).cuda()
    held = []
    for _ in range(3):
        P = _pfld_regressor("cuda")
        P.cuda_graphs = True
        _pose_and_grad(P, img)
        assert len(P._graphed) == 1 and next(iter(P._graphed.values())) is not None
        del P
        gc.collect()
        torch.cuda.synchronize()
        held.append(torch.cuda.memory_allocated())
    assert held[2] - held[0] <= 2 ** 20, f"bytes held after each regressor: {held}"


def test_running_out_under_a_per_process_cap_names_the_cap():
    """Where the process may use only part of the card (``torch.cuda.set_per_process_memory_fraction``, a shared
    GPU), the halving's warning gives that cap and what is free under it, not the whole card's free memory."""
    from v2s_nb.errors import FallbackWarning
    from v2s_nb.method.batches import HalvingBatch

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(0.25, 0)
    try:
        with pytest.warns(FallbackWarning, match=r"this process may use (\d+\.\d) GiB of this GPU's .* free\)") as rec:
            HalvingBatch(4, "test", "cuda").halve()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
    cap = float(str(rec[0].message).split("may use ")[1].split(" GiB")[0])
    assert abs(cap - 0.25 * total / 2 ** 30) < 0.1
