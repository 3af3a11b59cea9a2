"""BiSeNet face parser: the port reproduces the public code's outputs (tests/fixtures), loads the checkpoint layout."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from unittest import mock

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from v2s_nb.face import parsing
from v2s_nb.face.parsing import BiSeNet, labels_to_regions, load_bisenet
from v2s_nb.face.regions import RegionSourceWarning, region_masks, template_landmarks

FIXTURE = FIXTURES / "bisenet_face_parsing"


def bisenet_random_state_dict(layout_path, seed):
    """The weight rule the fixture was made with (tests/fixtures/README.md)."""
    sd = {}
    for i, (key, shape, dtype) in enumerate(json.loads(layout_path.read_text())):
        g = torch.Generator(device="cpu").manual_seed(seed * 100003 + i)
        if key.endswith("num_batches_tracked"):
            t = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("running_mean"):
            t = torch.randn(shape, generator=g) * 0.1
        elif key.endswith("running_var"):
            t = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(".weight") and len(shape) == 4:
            t = torch.randn(shape, generator=g) * (1.0 / math.sqrt(shape[1] * shape[2] * shape[3]))
        elif key.endswith(".weight"):
            t = torch.rand(shape, generator=g) + 0.5
        else:  # '.bias'
            t = torch.randn(shape, generator=g) * 0.1
        sd[key] = t
    return sd


@pytest.fixture(scope="module")
def fixture_dir():
    assert FIXTURE.is_dir(), f"test fixture missing at {FIXTURE} (it is part of the repository)"
    return FIXTURE


@pytest.fixture(scope="module")
def random_sd(fixture_dir):
    return bisenet_random_state_dict(fixture_dir / "state_dict_layout.json", 1)


@pytest.fixture(scope="module")
def saved(random_sd, tmp_path_factory):
    path = tmp_path_factory.mktemp("bisenet") / "random_seed1.pth"
    torch.save(random_sd, path)
    return path


def test_rebuilt_weights_match_the_fixture_hash(random_sd, fixture_dir):
    meta = json.loads((fixture_dir / "meta.json").read_text())
    assert len(random_sd) == meta["n_keys"] == 191
    assert sum(v.numel() for k, v in random_sd.items() if v.is_floating_point()) == meta["n_float_values"]
    cap = torch.backends.cpu.get_cpu_capability()
    if cap not in ("AVX2", "AVX512"):
        pytest.skip(f"CPU capability {cap}: torch.randn is not bit-exact with the fixture's AVX2/AVX-512 build "
                    "(README: compare outputs with a tolerance instead)")
    h = hashlib.sha256()
    for t in random_sd.values():
        h.update(t.contiguous().numpy().tobytes())
    assert h.hexdigest() == meta["state_dict_sha256"]


def test_port_reproduces_the_public_outputs(saved, fixture_dir):
    ref = np.load(fixture_dir / "reference.npz")
    net = load_bisenet(saved)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    with torch.no_grad():
        out0, out1, out2 = net.forward_all(torch.from_numpy(ref["x"]))
        main = net(torch.from_numpy(ref["x"][:1]))
    out0 = out0.numpy()
    assert out0.shape == ref["out0"].shape == (2, 19, 128, 128)
    tol = 1e-3 * max(1.0, float(np.abs(ref["out0"]).max()))
    assert np.abs(out0 - ref["out0"]).max() <= tol
    assert (out0.argmax(1) == ref["labels"]).mean() >= 0.999
    np.testing.assert_allclose(main.numpy(), out0[:1], rtol=0, atol=1e-5)  # forward() is the main head
    for got, key in ((out1, "out1"), (out2, "out2")):  # auxiliary heads, first sample only
        assert np.abs(got[:1].numpy() - ref[key]).max() <= tol


def _same_weights(a: BiSeNet, b: BiSeNet):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(sa[k], sb[k]), k


def test_checkpoint_variants_load(random_sd, saved, tmp_path):
    ref = load_bisenet(saved)
    # DDP prefix, aux heads present (as in random_sd), num_batches_tracked = 80000
    sd = {"module." + k: (torch.tensor(80000) if k.endswith("num_batches_tracked") else v)
          for k, v in random_sd.items()}
    torch.save(sd, tmp_path / "ddp.pth")
    _same_weights(load_bisenet(tmp_path / "ddp.pth"), ref)
    # without aux heads and without num_batches_tracked
    lean = {k: v for k, v in random_sd.items()
            if not k.startswith(("conv_out16.", "conv_out32.")) and not k.endswith("num_batches_tracked")}
    torch.save(lean, tmp_path / "lean.pth")
    net = load_bisenet(tmp_path / "lean.pth")
    sref, snet = ref.state_dict(), net.state_dict()
    for k in lean:
        assert torch.equal(sref[k], snet[k])
    # torch's old non-zip format with every storage tagged cuda:0, as the released 79999_iter.pth
    with mock.patch.object(torch.serialization, "location_tag", lambda storage: "cuda:0"):
        torch.save(sd, tmp_path / "legacy_cuda.pth", _use_new_zipfile_serialization=False)
    assert (tmp_path / "legacy_cuda.pth").read_bytes()[:2] != b"PK"  # not a zip archive
    _same_weights(load_bisenet(tmp_path / "legacy_cuda.pth", device="cpu"), ref)


def test_wrong_checkpoints_are_refused(random_sd, tmp_path):
    bad = dict(random_sd)
    bad["sp.conv1.conv.weight"] = torch.zeros(64, 3, 7, 7)  # the BiSeNet paper's spatial path: not this network
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="unknown key"):
        load_bisenet(tmp_path / "bad.pth")
    short = {k: v for k, v in random_sd.items() if not k.startswith("ffm.")}
    torch.save(short, tmp_path / "short.pth")
    with pytest.raises(ValueError, match="missing"):
        load_bisenet(tmp_path / "short.pth")
    wrong = dict(random_sd)
    wrong["conv_out.conv_out.weight"] = torch.zeros(11, 256, 1, 1)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="shapes"):
        load_bisenet(tmp_path / "wrong.pth")


def test_preprocess_and_parse(saved):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(2, 40, 48, 3), dtype=np.uint8)
    x = parsing.preprocess(imgs[:, :32, :32], size=32)  # no resize: exactly ToTensor + Normalize
    mean, std = np.array(parsing.IMAGENET_MEAN), np.array(parsing.IMAGENET_STD)
    want = (imgs[0, :32, :32].astype(np.float32) / 255 - mean) / std
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), want, atol=1e-6)
    net = load_bisenet(saved)
    labels = parsing.parse(imgs, net, size=64)
    assert labels.shape == (2, 40, 48) and labels.dtype == np.uint8 and labels.max() < 19


def test_class_to_region_mapping():
    labels = np.arange(19, dtype=np.uint8).reshape(1, 1, 19)
    regs = labels_to_regions(labels)
    names = parsing.CLASS_NAMES
    picked = {r: [names[i] for i in np.flatnonzero(m[0, 0])] for r, m in regs.items()}
    assert picked["eyes"] == ["l_eye", "r_eye"]
    assert picked["nose"] == ["nose"]
    assert picked["mouth"] == ["mouth", "u_lip", "l_lip"]
    assert {"l_brow", "r_brow", "eye_g", "background", "skin", "hair"} <= set(picked["rest"])
    total = sum(m.astype(int) for m in regs.values())
    assert (total == 1).all()  # disjoint, and 'rest' is the complement


def test_auto_falls_back_to_landmarks_without_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("V2S_NB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.delenv("V2S_NB_WEIGHTS_DIR", raising=False)
    assert not parsing.bisenet_available()
    imgs = np.zeros((1, 64, 64, 3), np.uint8)
    with pytest.warns(RegionSourceWarning, match="BiSeNet checkpoint not found"):
        masks = region_masks(imgs, landmarks=template_landmarks(64)[None], source="auto")
    assert masks.source == "landmarks" and "BiSeNet" in masks.note
    assert set(masks) == {"eyes", "nose", "mouth", "rest"} and masks["eyes"].shape == (1, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asking for landmarks explicitly is silent
        assert region_masks(imgs, landmarks=template_landmarks(64)[None], source="landmarks").note is None

    import v2s_nb.weights as weights

    def offline(name, **kw):  # what fetch does without network (never touch the network in tests)
        raise weights.WeightsUnavailableError(f"Could not download {name}", name=name, url=None,
                                              target=weights.cache_path(name))

    monkeypatch.setattr(weights, "fetch", offline)
    with pytest.raises(weights.WeightsUnavailableError, match="bisenet-face-parsing"):
        region_masks(imgs, source="bisenet")  # asked for explicitly: the error is not swallowed


def test_auto_uses_a_given_parser(saved):
    net = load_bisenet(saved)
    imgs = np.random.default_rng(1).integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegionSourceWarning)
        masks = region_masks(imgs, source="auto", net=net, parse_size=64)
    assert masks.source == "bisenet" and masks.note is None
    total = sum(m.astype(int) for m in masks.values())
    assert masks["rest"].shape == (1, 32, 32) and (total == 1).all()


def test_auto_finds_the_checkpoint_in_weights_dir(saved, tmp_path, monkeypatch):
    """A verified checkpoint in V2S_NB_WEIGHTS_DIR (where fetch looks first) counts as available for 'auto';
    a copy that fails the pinned SHA-256 does not."""
    import dataclasses
    import shutil

    import v2s_nb.weights as weights

    lab = tmp_path / "lab"
    lab.mkdir()
    kf = weights.KNOWN_FILES["bisenet-face-parsing"]
    ckpt = shutil.copy(saved, lab / kf.filename)
    pinned = dataclasses.replace(kf, size=ckpt.stat().st_size, sha256=weights.sha256_file(ckpt))  # stand-in pin
    monkeypatch.setitem(weights.KNOWN_FILES, "bisenet-face-parsing", pinned)
    monkeypatch.setenv("V2S_NB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("V2S_NB_WEIGHTS_DIR", str(lab))
    assert parsing.bisenet_available()
    imgs = np.zeros((1, 32, 32, 3), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegionSourceWarning)
        masks = region_masks(imgs, landmarks=template_landmarks(32)[None], source="auto", parse_size=64)
    assert masks.source == "bisenet" and masks.note is None

    data = bytearray(ckpt.read_bytes())
    data[-100] ^= 0xFF  # same size, other bytes: fails the SHA-256 check, so it is not offered
    ckpt.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="SHA-256 mismatch"):
        assert not parsing.bisenet_available()
