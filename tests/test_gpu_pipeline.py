"""The pipeline's newer parts on CUDA agree with the CPU: the ReStyle encoder and the landmark CNNs.

Skipped without a CUDA GPU (and the CNN test without their weights, found offline only)."""

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
    from test_landmark_cnn import _weights
    import v2s_nb.face.landmark_cnn as lc

    pfld_path, rfb_path = _weights("pfld-68"), _weights("rfb-320-face-detector")
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
