"""The snapshot loader runs no code from the file and names what a wrong file is."""

import collections
import os
import pickle
import re
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
    def __init__(self, fn, args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


def test_hostile_global_is_refused_and_not_run(tmp_path):
    flag = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Reduce(os.system, (f"touch {flag}",))}))
    with pytest.raises(UnsafePickleError, match=r"(posix|os)\.system"):
        load_generator(path)
    assert not flag.exists()


def test_hostile_builtin_eval_is_refused(tmp_path):
    flag = tmp_path / "pwned-eval"
    path = tmp_path / "evil2.pkl"
    path.write_bytes(pickle.dumps(_Reduce(eval, (f"open({str(flag)!r}, 'w').close()",))))
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        load_generator(path)
    assert not flag.exists()


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


# ------------------------------------------------------------------------------------------------------------
# Hostile payloads with a canary each (issue 23): a test passes only if the canary file never appears, so
# switching a loader to weights_only=False or allowing every global makes these tests fail (the mutation test
# at the end shows it for the nested-storage loader).
# ------------------------------------------------------------------------------------------------------------


def _touch(flag):
    return _Reduce(os.system, (f"touch {flag}",))


def _nested_storage_bytes(payload, legacy=False) -> bytes:
    """What torch.storage._load_from_bytes gets in a snapshot: a torch.save'd object (here a hostile one)."""
    import io

    buf = io.BytesIO()
    torch.save(payload, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


@pytest.mark.parametrize("legacy", [False, True])
def test_nested_pickle_in_a_storage_is_refused_and_not_run(tmp_path, legacy):
    flag = tmp_path / "pwned-nested"
    path = tmp_path / "nested.pkl"
    storage = _Reduce(torch.storage._load_from_bytes, (_nested_storage_bytes(_touch(flag), legacy),))
    path.write_bytes(pickle.dumps({"G_ema": _Reduce(torch._utils._rebuild_tensor_v2,
                                                    (storage, 0, (4,), (1,), False, collections.OrderedDict()))}))
    with pytest.raises(SnapshotError):
        load_generator(path)
    assert not flag.exists()


@pytest.mark.parametrize("protocol", [0, 1, 2, 5])
def test_every_pickle_protocol_is_refused_and_not_run(tmp_path, protocol):
    flag = tmp_path / f"pwned-p{protocol}"
    path = tmp_path / f"p{protocol}.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _touch(flag)}, protocol=protocol))
    with pytest.raises(SnapshotError):  # protocols 0/1 have no header: refused as "not a pickle"
        load_generator(path)
    assert not flag.exists()


def test_malformed_records_are_named(tmp_path, monkeypatch):
    """A network record whose state, _modules or _init_kwargs is not a dict: a SnapshotError saying which, not a
    bare AttributeError / TypeError from inside the loader."""
    recon = _fake_module(monkeypatch, "torch_utils.persistence",
                         _reconstruct_persistent_obj=lambda meta: meta)._reconstruct_persistent_obj

    def obj(class_name, state):
        return _Reduce(recon, ({"type": "class", "version": 6, "module_src": "", "class_name": class_name,
                                "state": state},))

    synthesis = obj("SynthesisNetwork", {"_modules": {"input": None}})
    for what, state in [("the state of 'Generator'", [1, 2]), ("Generator._modules", {"_modules": [1]}),
                        ("Generator._init_kwargs", {"_modules": {"synthesis": synthesis}, "_init_kwargs": 5})]:
        path = tmp_path / "malformed.pkl"
        path.write_bytes(pickle.dumps({"G_ema": obj("Generator", state)}, protocol=4))
        with pytest.raises(SnapshotError, match=f"malformed snapshot: {re.escape(what)} is of type"):
            load_generator(path)


def test_persistent_object_source_and_allowed_globals_misused(tmp_path, monkeypatch):
    """Allowed globals called with hostile arguments: module_src with code (never run), an EasyDict / set /
    OrderedDict fed a hostile object (refused at its global), numpy _reconstruct of an object array."""
    flag = tmp_path / "pwned-misuse"
    recon = _fake_module(monkeypatch, "torch_utils.persistence",
                         _reconstruct_persistent_obj=lambda meta: meta)._reconstruct_persistent_obj
    src = f"import os\nos.system('touch {flag}')\n"
    meta = {"type": "class", "version": 6, "module_src": src, "class_name": "Generator",
            "state": {"_parameters": {}, "_buffers": {}, "_modules": {}, "_init_kwargs": {"x": _touch(flag)}}}
    for i, payload in enumerate([
        {"G_ema": _Reduce(recon, (meta,))},
        {"G_ema": _Reduce(collections.OrderedDict, ([("a", _touch(flag))],))},
        {"G_ema": _Reduce(set, ([_touch(flag)],))},
        {"G_ema": np.array([_Reduce(os.system, (f"touch {flag}",))], dtype=object)},
    ]):
        path = tmp_path / f"misuse{i}.pkl"
        path.write_bytes(pickle.dumps(payload, protocol=4))
        with pytest.raises(UnsafePickleError):
            load_generator(path)
        assert not flag.exists()
    # module_src without any other hostile object: the record loads, the source never runs
    meta["state"]["_init_kwargs"] = {}
    path = tmp_path / "src_only.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Reduce(recon, (meta,))}, protocol=4))
    with pytest.raises(SnapshotError, match="synthesis"):
        load_generator(path)
    assert not flag.exists()


def test_mutation_weights_only_false_would_run_the_nested_payload(tmp_path, monkeypatch):
    """The canary tests above can fail: with the nested-storage loader switched to weights_only=False, the
    payload runs (the canary appears)."""
    import io

    from v2s_nb.stylegan3 import snapshot

    flag = tmp_path / "pwned-mutant"
    monkeypatch.setattr(snapshot, "_storage_from_bytes",
                        lambda data: torch.load(io.BytesIO(data), map_location="cpu", weights_only=False))
    monkeypatch.setattr(snapshot, "_allowed_globals", lambda real=snapshot._allowed_globals: {
        **real(), ("torch.storage", "_load_from_bytes"): snapshot._storage_from_bytes})
    path = tmp_path / "nested.pkl"
    storage = _Reduce(torch.storage._load_from_bytes, (_nested_storage_bytes(_touch(flag)),))
    path.write_bytes(pickle.dumps({"G_ema": storage}))
    with pytest.raises(Exception):
        load_generator(path)
    assert flag.exists()


# ------------------------------------------------------------------------------------------------------------
# Loaded tensors are what they claim
# ------------------------------------------------------------------------------------------------------------


def _resave(data, path, monkeypatch, edit=None):
    """Write an unpickled snapshot (PersistentRecords) back in NVIDIA's layout, after ``edit(state_of, name)``."""
    from v2s_nb.stylegan3.snapshot import PersistentRecord

    recon = _fake_module(monkeypatch, "torch_utils.persistence",
                         _reconstruct_persistent_obj=lambda meta: meta)._reconstruct_persistent_obj

    def conv(x):
        if isinstance(x, PersistentRecord):
            return _Reduce(recon, ({"type": "class", "version": x.version, "module_src": "# source omitted",
                                    "class_name": x.class_name, "state": conv(x.state)},))
        if isinstance(x, dict):
            return type(x)((k, conv(v)) for k, v in x.items()) if isinstance(x, collections.OrderedDict) \
                else {k: conv(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(conv(v) for v in x)
        return x

    if edit is not None:
        edit(data)
    path.write_bytes(pickle.dumps(conv(data), protocol=4))
    return path


def _first_weight(data):
    syn = data["G_ema"].modules["synthesis"]
    layer = syn.modules[[k for k in syn.modules if k.startswith("L0")][0]]
    return layer.state["_parameters"]


def test_undersized_tensor_storage_is_refused(tmp_path, monkeypatch, sg3_fixture_dir):
    from v2s_nb.stylegan3 import read_snapshot

    data = read_snapshot(sg3_fixture_dir / "r64" / "network.pkl")

    def shrink(d):
        params = _first_weight(d)
        w = params["weight"]
        small = torch.zeros(16).storage()  # 16 numbers where the shape needs thousands
        params["weight"] = _Reduce(torch._utils._rebuild_tensor_v2,
                                   (small, 0, tuple(w.shape), tuple(w.stride()), False, collections.OrderedDict()))

    path = _resave(data, tmp_path / "short.pkl", monkeypatch, shrink)
    with pytest.raises(SnapshotError, match=r"needs \d+ stored elements but its storage holds 16"):
        load_generator(path)


def test_tensor_grown_by_the_pickles_state_step_is_refused(tmp_path, monkeypatch, sg3_fixture_dir):
    """A tensor rebuilt whole from 16 stored numbers, then re-laid out by a state step (pickle's BUILD ->
    Tensor.__setstate__ -> set_) to the weight's full shape: set_ grows the storage with uninitialised memory,
    past the rebuild's size check. Refused."""
    from v2s_nb.stylegan3 import read_snapshot

    data = read_snapshot(sg3_fixture_dir / "r64" / "network.pkl")

    def regrow(d):
        params = _first_weight(d)
        w = params["weight"]
        small = torch.zeros(16).storage()
        params["weight"] = _Reduce(torch._utils._rebuild_tensor_v2,
                                   (small, 0, (16,), (1,), False, collections.OrderedDict()),
                                   (small, 0, tuple(w.shape), tuple(w.stride())))

    path = _resave(data, tmp_path / "regrown.pkl", monkeypatch, regrow)
    with pytest.raises(SnapshotError, match=r"storage of 64 bytes was resized"):
        load_generator(path)


def test_resaved_snapshot_loads_unchanged(tmp_path, monkeypatch, sg3_fixture_dir):
    """The rewriting helper itself keeps a snapshot loadable (so the failures above are the edits' doing)."""
    from v2s_nb.stylegan3 import read_snapshot

    path = _resave(read_snapshot(sg3_fixture_dir / "r64" / "network.pkl"), tmp_path / "same.pkl", monkeypatch)
    G = load_generator(path)
    ref = np.load(sg3_fixture_dir / "r64" / "reference.npz")
    with torch.no_grad():
        assert np.abs(G.synthesis(torch.from_numpy(ref["ws"])).numpy() - ref["img"]).max() < 1e-3


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, monkeypatch, sg3_fixture_dir, bad):
    from v2s_nb.stylegan3 import read_snapshot

    def poison(d):
        params = _first_weight(d)
        w = params["weight"].clone()
        w.view(-1)[7] = bad
        params["weight"] = w

    path = _resave(read_snapshot(sg3_fixture_dir / "r64" / "network.pkl"), tmp_path / "nan.pkl", monkeypatch, poison)
    with pytest.raises(SnapshotError, match="NaN / infinite"):
        load_generator(path)
    G = tiny_generator("R")
    with torch.no_grad():
        next(G.parameters()).view(-1)[0] = bad
    with pytest.raises(SnapshotError, match="NaN / infinite"):
        load_generator(save_generator(G, tmp_path / "nan.safetensors"))


def _rewrite_safetensors(path, meta_edit=None, tensors_edit=None):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta_edit:
        meta_edit(meta)
    if tensors_edit:
        tensors_edit(tensors)
    save_file(tensors, str(path), metadata=meta)
    return path


def test_safetensors_claiming_trained_official_weights_is_not_believed(tmp_path):
    path = save_generator(tiny_generator("R", seed=1), tmp_path / "fake.safetensors")

    def lie(meta):
        meta["is_random"] = "false"
        meta["source"] = "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/x.pkl"

    _rewrite_safetensors(path, lie)
    G = load_generator(path)
    assert G.weights_verified is False
    assert "UNVERIFIED" in G.source and "UNVERIFIED" in repr(G)
    assert G.is_random is False  # the claim is kept, marked unverified


def test_pinned_digest_is_believed(tmp_path, monkeypatch):
    from v2s_nb.stylegan3 import checkpoint

    G = tiny_generator("T", seed=2)
    G.is_random, G.source = False, "trained here"
    path = save_generator(G, tmp_path / "g.safetensors")
    monkeypatch.setitem(checkpoint.PINNED_WEIGHT_DIGESTS, checkpoint.weights_digest(G), "our checked run 42")
    G2 = load_generator(path)
    assert G2.weights_verified is True and G2.source == "our checked run 42" and "UNVERIFIED" not in repr(G2)


@pytest.mark.parametrize("config", [
    None,                                            # no config entry
    "{not json",
    "[" * 100000 + "]" * 100000,                     # RecursionError in json
    "[1, 2]",                                        # not a dict
    '{"z_dim": 512}',                                # missing arguments
    '{"z_dim": 4096, "c_dim": 0, "w_dim": 4096, "img_resolution": 1073741824, "img_channels": 3}',  # huge
    '{"z_dim": 8, "c_dim": 0, "w_dim": 8, "img_resolution": 64, "img_channels": 3, "margin_size": 1e999}',
    '{"z_dim": "8", "c_dim": 0, "w_dim": 8, "img_resolution": 64, "img_channels": 3}',
])
def test_malformed_safetensors_config_is_one_clear_error(tmp_path, config):
    path = save_generator(tiny_generator("R"), tmp_path / "g.safetensors")

    def edit(meta):
        if config is None:
            del meta["config"]
        else:
            meta["config"] = config

    _rewrite_safetensors(path, edit)
    with pytest.raises(SnapshotError) as e:
        load_generator(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_safetensors_tensor_of_wrong_shape(tmp_path):
    path = save_generator(tiny_generator("R"), tmp_path / "g.safetensors")
    # written by other code (no digest), so the shape check, not the digest, finds it
    _rewrite_safetensors(path, meta_edit=lambda m: m.pop("tensors_sha256"),
                         tensors_edit=lambda t: t.__setitem__("mapping.w_avg", torch.zeros(3)))
    with pytest.raises(SnapshotError, match="do not match the stored config"):
        load_generator(path)


def flip_a_tensor_byte(path, index: int = 100):
    """XOR the low byte of the ``index``-th float32 in the data section: a damaged file whose values stay finite."""
    b = bytearray(path.read_bytes())
    header = int.from_bytes(b[:8], "little")
    b[8 + header + 4 * index] ^= 0x01
    path.write_bytes(bytes(b))
    return path


def test_a_damaged_tensor_byte_is_found_by_the_saved_digest(tmp_path):
    """NaN / inf checks miss a flipped mantissa bit; the digest save_generator stores does not."""
    path = save_generator(tiny_generator("R", seed=3), tmp_path / "g.safetensors")
    load_generator(path)  # sound: loads
    flip_a_tensor_byte(path)
    with pytest.raises(SnapshotError, match="digest stored when it was saved; damaged") as e:
        load_generator(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    # tensors changed consistently but the digest kept: damaged too
    path = save_generator(tiny_generator("R", seed=3), tmp_path / "h.safetensors")
    _rewrite_safetensors(path, tensors_edit=lambda t: t["mapping.w_avg"].add_(1))
    with pytest.raises(SnapshotError, match="damaged"):
        load_generator(path)


def test_safetensors_without_a_digest_loads_unless_one_is_required(tmp_path):
    """Older saves and other code's files have no digest: loaded as they are, except by the caches."""
    from v2s_nb.stylegan3.checkpoint import load_checkpoint

    G = tiny_generator("R", seed=4)
    path = _rewrite_safetensors(save_generator(G, tmp_path / "g.safetensors"), lambda m: m.pop("tensors_sha256"))
    assert torch.equal(load_generator(path).mapping.w_avg, G.mapping.w_avg)
    with pytest.raises(SnapshotError, match="no digest"):
        load_checkpoint(path, require_digest=True)
