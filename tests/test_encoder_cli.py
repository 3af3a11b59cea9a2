"""`v2s-nb reenact --encoder ... --pti` on the tiny generator: the encoder path, PTI's G_render, the fallback."""

import pytest

from v2s_nb.cli import main, make_demo_inputs
from v2s_nb.method.reenact import Reenactor
from v2s_nb.stylegan3 import save_generator, tiny_generator

from test_encoder import make_encoder_sd, save_released_format

pytestmark = pytest.mark.slow  # reenact end to end with the encoder and PTI

FAST = ["--invert-steps", "1", "--invert-steps-next", "1", "--device", "cpu", "--encoder-iters", "1"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    ref, drv, _ = make_demo_inputs(d, frames=3, size=256)
    G = tiny_generator("R", resolution=64, seed=0)
    gen = save_generator(G, d / "tiny.safetensors")
    sd = make_encoder_sd(G.num_ws, G.w_dim, seed=11)
    enc = save_released_format(d / "enc.pt", sd, G, G.mapping.w_avg.clone(), "ProgressiveBackboneEncoder")
    other = save_released_format(d / "other.pt", sd, tiny_generator("R", resolution=64, seed=5),
                                 G.mapping.w_avg.clone(), "ProgressiveBackboneEncoder")
    return ref, drv, gen, enc, other


def test_reenact_with_encoder_and_pti(inputs, tmp_path, capsys):
    ref, drv, gen, enc, _ = inputs
    out = tmp_path / "out.mp4"
    assert main(["reenact", "--reference", str(ref), "--driving", str(drv), "--out", str(out), "--checkpoint",
                 str(gen), "--encoder", str(enc), "--pti", "--pti-steps", "2"] + FAST) == 0
    err = capsys.readouterr().err
    assert "ReStyle-e4e encoder" in err and "pivotal tuning" in err
    cache = tmp_path / "out.mp4.v2s"
    assert any((cache / "inversions").glob("enc-*.json")) and not any((cache / "inversions").glob("seq-*.json"))
    assert any(cache.glob("pti-*.safetensors"))
    r = Reenactor.load(cache / "reenactor")
    assert r.G_render is not r.G
    assert not (r.G_render.synthesis.L2_36_64.weight == r.G.synthesis.L2_36_64.weight).all()


def test_reenact_encoder_of_another_generator_falls_back(inputs, tmp_path, capsys):
    ref, drv, gen, _, other = inputs
    out = tmp_path / "out.mp4"
    assert main(["reenact", "--reference", str(ref), "--driving", str(drv), "--out", str(out), "--checkpoint",
                 str(gen), "--encoder", str(other), "--quiet"] + FAST) == 0
    err = capsys.readouterr().err
    assert "optimisation only" in err
    cache = tmp_path / "out.mp4.v2s"
    assert any((cache / "inversions").glob("seq-*.json")) and not any((cache / "inversions").glob("enc-*.json"))
    assert not any(cache.glob("pti-*.safetensors"))  # random-weight generator: PTI off by default
