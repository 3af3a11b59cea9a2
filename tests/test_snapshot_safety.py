"""The snapshot loader runs no code from the file and names what a wrong file is."""

import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from v2s_nb.stylegan3 import SnapshotError, UnsafePickleError, load_generator, save_generator, tiny_generator


def _fake_module(monkeypatch, dotted, **attrs):
    """Put a throw-away module in sys.modules so pickle can write references to it."""
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    mod = sys.modules[dotted]
    for key, value in attrs.items():
        value.__module__, value.__qualname__ = dotted, key
        setattr(mod, key, value)
    return mod


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_hostile_global_is_refused_and_not_run(tmp_path):
    flag = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Reduce(os.system, (f"touch {flag}",))}))
    with pytest.raises(UnsafePickleError, match=r"(posix|os)\.system"):
        load_generator(path)
    assert not flag.exists()


def test_hostile_builtin_eval_is_refused(tmp_path):
    path = tmp_path / "evil2.pkl"
    path.write_bytes(pickle.dumps(_Reduce(eval, ("1+1",))))
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        load_generator(path)


def test_module_src_is_never_executed(tmp_path, monkeypatch, sg3_fixture_dir):
    """Swap the fixture's placeholder source for code with a side effect: loading must still work and the
    code must not run."""
    data = (sg3_fixture_dir / "r64" / "network.pkl").read_bytes()
    placeholder = b"# source omitted"
    payload = b"open('X','w')   "
    assert len(payload) == len(placeholder) and data.count(placeholder) > 0
    path = tmp_path / "network.pkl"
    path.write_bytes(data.replace(placeholder, payload))
    monkeypatch.chdir(tmp_path)
    G = load_generator(path)
    assert not (tmp_path / "X").exists()
    ref = np.load(sg3_fixture_dir / "r64" / "reference.npz")
    with torch.no_grad():
        img = G.synthesis(torch.from_numpy(ref["ws"]))
    assert np.abs(img.numpy() - ref["img"]).max() < 1e-3


def test_stylegan2_ada_snapshot_is_named(tmp_path, monkeypatch):
    recon = _fake_module(monkeypatch, "torch_utils.persistence",
                         _reconstruct_persistent_obj=lambda meta: meta)._reconstruct_persistent_obj

    def obj(class_name, modules):
        return _Reduce(recon, ({"type": "class", "version": 6, "module_src": "", "class_name": class_name,
                                "state": {"_parameters": {}, "_buffers": {}, "_modules": modules,
                                          "_init_kwargs": {"z_dim": 512, "w_dim": 512, "c_dim": 0,
                                                           "img_resolution": 1024, "img_channels": 3}}},))

    synthesis = obj("SynthesisNetwork", {"b4": obj("SynthesisBlock", {}), "b8": obj("SynthesisBlock", {})})
    path = tmp_path / "stylegan2-ffhq.pkl"
    path.write_bytes(pickle.dumps({"G_ema": obj("Generator", {"synthesis": synthesis}), "D": None}))
    with pytest.raises(SnapshotError, match="StyleGAN2"):
        load_generator(path)


def test_tensorflow_pickle_is_named(tmp_path, monkeypatch):
    class Network:
        pass

    _fake_module(monkeypatch, "dnnlib.tflib.network", Network=Network)
    path = tmp_path / "karras2019stylegan-ffhq-1024x1024.pkl"
    path.write_bytes(pickle.dumps((_Reduce(Network, ()),)))
    with pytest.raises(UnsafePickleError, match="TensorFlow"):
        load_generator(path)


def test_html_page(tmp_path):
    path = tmp_path / "stylegan3-r-ffhq-1024x1024.pkl"
    path.write_text("<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>...</body></html>")
    with pytest.raises(SnapshotError, match="HTML"):
        load_generator(path)


def test_truncated_snapshot(tmp_path, sg3_fixture_dir):
    data = (sg3_fixture_dir / "t64" / "network.pkl").read_bytes()
    path = tmp_path / "network.pkl"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SnapshotError, match="truncated"):
        load_generator(path)


@pytest.mark.parametrize("header", [b"", b"\x80\x04"])
def test_random_bytes(tmp_path, header):
    rng = np.random.default_rng(0)
    path = tmp_path / "random.pkl"
    body = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    if not header:
        body = b"\x13" + body  # make sure it does not start like a pickle by chance
    path.write_bytes(header + body)
    with pytest.raises(SnapshotError):
        load_generator(path)


def test_empty_and_missing(tmp_path):
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(SnapshotError, match="empty"):
        load_generator(empty)
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        load_generator(tmp_path / "nope.pkl")


def test_pickle_without_generator(tmp_path):
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(SnapshotError, match="G_ema"):
        load_generator(path)


def test_safetensors_roundtrip(tmp_path):
    G = tiny_generator("T", seed=3)
    path = save_generator(G, tmp_path / "tiny.safetensors")
    assert not list(tmp_path.glob("*.part"))
    G2 = load_generator(path)
    assert G2.is_random and "random" in G2.source
    ws = G.mapping(torch.randn(2, G.z_dim), None)
    with torch.no_grad():
        assert torch.equal(G.synthesis(ws), G2.synthesis(ws))


def test_snapshot_to_safetensors_roundtrip(tmp_path, sg3_fixture_dir):
    G = load_generator(sg3_fixture_dir / "r64" / "network.pkl")
    G2 = load_generator(save_generator(G, tmp_path / "r64.safetensors"))
    assert not G2.is_random
    ref = np.load(sg3_fixture_dir / "r64" / "reference.npz")
    with torch.no_grad():
        assert np.abs(G2.synthesis(torch.from_numpy(ref["ws"])).numpy() - ref["img"]).max() < 1e-3


def test_truncated_safetensors(tmp_path):
    path = save_generator(tiny_generator("R"), tmp_path / "g.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(SnapshotError, match="safetensors"):
        load_generator(path)


def test_load_from_file_url_and_unknown_name(sg3_fixture_dir):
    G = load_generator((sg3_fixture_dir / "t64" / "network.pkl").resolve().as_uri())
    assert G.img_resolution == 64
    with pytest.raises(FileNotFoundError, match="stylegan3-r-ffhq-1024"):
        load_generator("stylegan3-r-ffhq-2048")
