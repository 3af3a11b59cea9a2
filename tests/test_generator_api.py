"""Random-weight generators, configs and the input transform's meaning."""

import numpy as np
import pytest
import torch

from v2s_nb.stylegan3 import build_generator, forward_matrix, input_transform, tiny_generator


@pytest.mark.parametrize("cfg", ["R", "T"])
def test_tiny_generator_is_labelled_and_deterministic(cfg):
    G1, G2 = tiny_generator(cfg, seed=5), tiny_generator(cfg, seed=5)
    assert G1.is_random and "random" in repr(G1).lower()
    z = torch.randn(2, G1.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = G1(z), G2(z)
    assert a.shape == (2, 3, 64, 64) and torch.equal(a, b)
    assert torch.isfinite(a).all() and 0.01 < a.std() < 5  # calibrated magnitudes: a sensible range


def test_architecture_matches_nvidia_names():
    """The released stylegan3-r-ffhq-1024 / -t- layer names (as in NVIDIA's snapshots)."""
    R = build_generator("R", resolution=1024, calibrate=False)
    assert R.synthesis.layer_names == [
        "L0_36_1024", "L1_36_1024", "L2_52_1024", "L3_52_1024", "L4_84_1024", "L5_148_1024", "L6_148_1024",
        "L7_276_645", "L8_276_406", "L9_532_256", "L10_1044_161", "L11_1044_102", "L12_1044_64", "L13_1024_64",
        "L14_1024_3"]
    T = build_generator("T", resolution=1024, calibrate=False)
    assert T.synthesis.layer_names == [
        "L0_36_512", "L1_36_512", "L2_52_512", "L3_52_512", "L4_84_512", "L5_148_512", "L6_148_512",
        "L7_276_323", "L8_276_203", "L9_532_128", "L10_1044_81", "L11_1044_51", "L12_1044_32", "L13_1024_32",
        "L14_1024_3"]
    assert R.num_ws == T.num_ws == 16
    # fp16 on the last 4 sampling rates (128..1024 => layers 5-14), as in the released config
    assert [getattr(R.synthesis, n).use_fp16 for n in R.synthesis.layer_names].count(True) == 10


def test_transform_translation_moves_content_right():
    """tx > 0 moves the image content to the right (in image widths)."""
    G = tiny_generator("T", resolution=64, seed=1)
    ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(1)), None)
    with torch.no_grad():
        f0 = G.synthesis.feature_maps(ws, "input")["input"]
        f1 = G.synthesis.feature_maps(ws, "input", transform=torch.from_numpy(input_transform(0.25, 0, 0)))["input"]
    # 16 samples per image width at the input: 0.25 width = 4 samples to the right.
    assert torch.allclose(f1[..., 4:], f0[..., :-4], atol=1e-3)


def test_transform_and_styles_shapes_are_checked():
    """A [2, 3] affine, [5, 3, 3] for 2 codes or cut styles failed deep inside; a NaN transform gave a NaN image."""
    G = tiny_generator("R", resolution=64, seed=0)
    ws = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(1)), None)
    fix = r"pass one \[3, 3\] matrix or one per sample \[N, 3, 3\]"
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"transform has shape \[2, 3\]; " + fix):
            G.synthesis(ws, transform=torch.eye(3)[:2])
        with pytest.raises(ValueError, match=r"shape \[5, 3, 3\] for a batch of 2; " + fix):
            G.synthesis(ws, transform=torch.eye(3).repeat(5, 1, 1))
        for nan in (torch.full((3, 3), float("nan")), np.full((2, 3, 3), np.inf), [[1, 0, 0], [0, 1, 0], [0, 0, None]]):
            with pytest.raises(ValueError, match="NaN or inf"):
                G.synthesis(ws, transform=nan)
        styles = G.synthesis.styles(ws)
        cut = dict(styles, L3_36_64=styles["L3_36_64"][:, :10])
        with pytest.raises(ValueError, match=r"styles\['L3_36_64'\] has shape \[2, 10\], expected \[2, 64\]"):
            G.synthesis.from_styles(cut)
        with pytest.raises(ValueError, match=r"styles\['L0_36_64'\] has shape \[2, 64\], expected \[1, 64\]"):
            G.synthesis.from_styles(dict(styles, input=styles["input"][:1]))
        # codes that failed deep inside (a reshape of 0 elements, 'numpy has no attribute to', a meta tensor)
        with pytest.raises(TypeError, match=r"ws must be a torch tensor \[N, 16, 64\], got ndarray: pass "
                                            r"torch\.from_numpy\(ws\)"):
            G.synthesis(ws.numpy())
        with pytest.raises(ValueError, match="ws holds no codes"):
            G.synthesis(ws[:0])
        with pytest.raises(ValueError, match=r"ws is on meta and the generator on cpu: pass ws\.to\(G\.device\)"):
            G.synthesis.feature_maps(ws.to("meta"), "input")
        # one matrix, one per sample, or a batch of one: all as before (the input features show the transform)
        eye = G.synthesis.feature_maps(ws, "input")["input"]
        for ok in (np.eye(3), torch.eye(3)[None], torch.eye(3).repeat(2, 1, 1), [[1, 0, 0], [0, 1, 0], [0, 0, 1]]):
            assert torch.equal(G.synthesis.feature_maps(ws, "input", transform=ok)["input"], eye)


def test_forward_matrix_batches():
    m = forward_matrix(np.array([0.0, 0.1]), np.array([0.0, -0.2]), np.array([0.0, 90.0]))
    assert m.shape == (2, 3, 3)
    np.testing.assert_allclose(m[0], np.eye(3))
    np.testing.assert_allclose(input_transform([0.0, 0.1], [0.0, -0.2], [0.0, 90.0]) @ m, np.stack([np.eye(3)] * 2),
                               atol=1e-12)


def test_bad_config():
    with pytest.raises(ValueError, match="cfg"):
        build_generator("X")
    with pytest.raises(ValueError, match="power of two"):
        build_generator("R", resolution=100)


@pytest.mark.parametrize("up,pads", [(2, (5, 4, 6, 3)), (4, (13, 12, -2, 7)), (4, (0, 0, 0, 0))])
def test_transposed_upsampling_equals_zero_stuffing(up, pads):
    """The CPU upsampler (strided transposed convolutions) computes what NVIDIA's zero-stuffed form computes:
    compare with the non-separable (zero-stuffing) path on the same filter, asymmetric taps and odd pads."""
    from v2s_nb.stylegan3.ops import upfirdn2d

    g = torch.Generator().manual_seed(up)
    x, f = torch.randn(2, 3, 11, 9, generator=g), torch.rand(6 * up, generator=g)
    separable = upfirdn2d(x, f, up=up, padding=pads, gain=up ** 2)
    stuffed = upfirdn2d(x, torch.outer(f, f), up=up, padding=pads, gain=up ** 2)
    assert separable.shape == stuffed.shape
    assert (separable - stuffed).abs().max() <= 1e-6 * stuffed.abs().max()  # float32 rounding only


def test_large_generator_on_the_cpu_warns(tmp_path):
    """A notebook on a machine without a GPU that loads a 1024 px checkpoint is told so (with the fix); small ones
    load silently."""
    import warnings

    from v2s_nb.errors import SlowDeviceWarning
    from v2s_nb.stylegan3 import CPU_WARN_RESOLUTION, load_generator, save_generator

    for res, warns in ((CPU_WARN_RESOLUTION, True), (64, False)):
        path = save_generator(tiny_generator("R", resolution=res, channel_max=4), tmp_path / f"g{res}.safetensors")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            G = load_generator(path, device="cpu")
        slow = [w for w in caught if issubclass(w.category, SlowDeviceWarning)]
        assert G.img_resolution == res and bool(slow) == warns
        if warns:
            assert "device='cuda'" in str(slow[0].message) and f"{res} px" in str(slow[0].message)
