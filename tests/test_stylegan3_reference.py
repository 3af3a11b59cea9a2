"""Our generator against outputs of NVIDIA's own code on the official-layout tiny snapshots."""

import numpy as np
import pytest
import torch

from v2s_nb.stylegan3 import input_transform, load_generator, set_input_transform

CONFIGS = ["r64", "t64"]


@pytest.fixture(scope="module", params=CONFIGS)
def loaded(request, sg3_fixture_dir):
    d = sg3_fixture_dir / request.param
    return load_generator(d / "network.pkl"), dict(np.load(d / "reference.npz"))


def _close(actual, expected, tol, what):
    actual = actual.detach().cpu().numpy() if torch.is_tensor(actual) else actual
    assert actual.shape == expected.shape, what
    err = float(np.abs(actual - expected).max())
    assert err <= tol, f"{what}: max |diff| {err:.3g} > {tol}"


def test_attributes(loaded):
    G, ref = loaded
    assert (G.z_dim, G.w_dim, G.num_ws, G.img_resolution, G.img_channels) == (64, 64, 16, 64, 3)
    assert G.synthesis.style_names == [str(n) for n in ref["layer_names"]]
    assert G.synthesis.layer_names == [str(n) for n in ref["layer_names"][1:]]
    assert not G.is_random


def test_mapping(loaded):
    G, ref = loaded
    z = torch.from_numpy(ref["z"])
    with torch.no_grad():
        _close(G.mapping(z, None), ref["ws"], 1e-4, "ws")
        _close(G.mapping(z, None, truncation_psi=float(ref["truncation_psi"])), ref["ws_trunc"], 1e-4, "ws_trunc")


def test_synthesis(loaded):
    G, ref = loaded
    with torch.no_grad():
        _close(G.synthesis(torch.from_numpy(ref["ws"]), noise_mode="const"), ref["img"], 1e-3, "img")
        _close(G.synthesis(torch.from_numpy(ref["ws_trunc"])), ref["img_trunc"], 1e-3, "img_trunc")


def test_transformed(loaded):
    G, ref = loaded
    ws = torch.from_numpy(ref["ws"])
    old = G.synthesis.input.transform.clone()
    try:
        G.synthesis.input.transform.copy_(torch.from_numpy(ref["transform"]))
        with torch.no_grad():
            _close(G.synthesis(ws), ref["img_transformed"], 1e-3, "img_transformed (buffer)")
    finally:
        G.synthesis.input.transform.copy_(old)
    # The helper reproduces NVIDIA's make_transform convention ...
    tx, ty = ref["transform_translate"]
    np.testing.assert_allclose(input_transform(tx, ty, float(ref["transform_angle_deg"])), ref["transform"], atol=1e-6)
    # ... and the per-call override gives the same image without touching the buffer.
    with torch.no_grad():
        img = G.synthesis(ws, transform=torch.from_numpy(input_transform(tx, ty, float(ref["transform_angle_deg"]))))
    _close(img, ref["img_transformed"], 1e-3, "img_transformed (argument)")
    assert torch.equal(G.synthesis.input.transform, old)
    try:
        set_input_transform(G, tx, ty, float(ref["transform_angle_deg"]))
        with torch.no_grad():
            _close(G.synthesis(ws), ref["img_transformed"], 1e-3, "img_transformed (set_input_transform)")
    finally:
        G.synthesis.input.transform.copy_(old)


def test_styles(loaded):
    G, ref = loaded
    with torch.no_grad():
        styles = G.synthesis.styles(torch.from_numpy(ref["ws"]))
    assert list(styles) == [str(n) for n in ref["layer_names"]]
    assert styles["input"].shape == (3, 4)
    for name, value in styles.items():
        _close(value, ref[f"s.{name}"], 1e-4, f"s.{name}")


def test_from_styles_equals_synthesis(loaded):
    G, ref = loaded
    ws = torch.from_numpy(ref["ws"])
    with torch.no_grad():
        a = G.synthesis(ws)
        b = G.synthesis.from_styles(G.synthesis.styles(ws))
    assert torch.equal(a, b)


def test_from_styles_uses_the_styles(loaded):
    """Editing one S channel changes the image (the S code is really what renders)."""
    G, ref = loaded
    with torch.no_grad():
        styles = G.synthesis.styles(torch.from_numpy(ref["ws"][:1]))
        base = G.synthesis.from_styles(styles)
        name = G.synthesis.layer_names[3]
        styles[name] = styles[name].clone()
        styles[name][:, 0] += 5
        assert (G.synthesis.from_styles(styles) - base).abs().max() > 1e-3


def test_feature_maps(loaded):
    G, ref = loaded
    names = [str(n) for n in ref["feat_layer_names"]]
    with torch.no_grad():
        feats = G.synthesis.feature_maps(torch.from_numpy(ref["ws"][:1]), names)
    assert list(feats) == names
    for name in names:
        _close(feats[name], ref[f"feat.{name}"], 1e-3, f"feat.{name}")
    with pytest.raises(KeyError, match="unknown layer"):
        G.synthesis.feature_maps(torch.from_numpy(ref["ws"][:1]), ["L99_1_1"])


def test_gradients_flow_to_ws(loaded):
    G, ref = loaded
    ws = torch.from_numpy(ref["ws"][:1]).clone().requires_grad_(True)
    G.synthesis(ws).square().mean().backward()
    assert ws.grad is not None and ws.grad[:, :15].abs().sum() > 0


def test_bad_ws_shape(loaded):
    G, _ = loaded
    with pytest.raises(ValueError, match=r"ws must have shape \[N, 16, 64\]"):
        G.synthesis(torch.zeros(1, 14, 64))
