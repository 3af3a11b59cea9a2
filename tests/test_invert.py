"""W+ inversion, sequence mode, PTI, saving and caching (v2s_nb.method.invert), on a tiny random generator (CPU).

The generator is ``tiny_generator('R', 32, seed=0, channel_max=16)``: NVIDIA's R architecture at 32 px with
16 channels, which renders + back-propagates in ~15 ms per image on an idle CPU core, so the whole file stays
short. Known codes come from the mapping at truncation 0.7 (images within about [-1, 1]).
"""

import json
import os
import time
import warnings

import numpy as np
import pytest
import torch

from v2s_nb.method.invert import (ImageResizeWarning, Inversion, InversionDivergedError, PerceptualFallbackWarning,
                                  generator_hash, invert, invert_sequence, pivotal_tuning, prepare_images)
from conftest import requires_cuda
from v2s_nb.stylegan3 import load_generator, save_generator, tiny_generator

RES = 32
FAST = dict(lr=0.1, w_noise=0.0, progress=False)  # settings that invert the tiny generator well in few steps


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # On a shared 2-core machine, two torch threads per process oversubscribe the CPU and run 3-10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def G():
    return tiny_generator("R", resolution=RES, seed=0, channel_max=16)


def _render(G, ws):
    with torch.no_grad():
        return G.synthesis(ws)


@pytest.fixture(scope="module")
def known(G):
    """Two images rendered from known w (mapping of random z) and their inversion (150 steps, lr 0.1)."""
    gen = torch.Generator().manual_seed(1)
    ws = G.mapping(torch.randn(2, G.z_dim, generator=gen), None, truncation_psi=0.7)
    images = _render(G, ws)
    t0 = time.perf_counter()
    inv = invert(G, images, steps=150, **FAST)
    return images, ws, inv, time.perf_counter() - t0


@pytest.mark.slow
def test_recovers_known_w_with_high_psnr(G, known):
    images, _, inv, seconds = known
    print(f"\nPSNR of 2 images after 150 steps: {np.round(inv.psnr, 2)} dB ({seconds:.1f} s)")
    assert inv.ws.shape == (2, G.num_ws, G.w_dim) and inv.ws.device.type == "cpu"
    assert np.all(inv.psnr >= 30.0), inv.psnr
    # The stored error is that of re-rendering the stored codes.
    re = inv.images(G)
    mse = (re - images).square().mean(dim=(1, 2, 3)).double().numpy()
    np.testing.assert_allclose(mse, inv.mse, rtol=1e-4)
    assert len(inv.loss_history) == 2 and inv.loss_history[0].shape == (150,)
    assert inv.loss_history[0][-1] < inv.loss_history[0][0] / 10
    assert inv.total_steps == 150 and inv.frame_steps == 300
    assert inv.generator["sha256"] == generator_hash(G) and inv.generator["source"] == G.source
    assert list(inv.frame_indices) == [0, 1]
    assert inv.images(G, uint8=True).shape == (2, RES, RES, 3)


@pytest.mark.slow
def test_save_and_load_roundtrip(tmp_path, known):
    inv = known[2]
    js = inv.save(tmp_path / "sub" / "inv.json")
    assert js.name == "inv.json" and (tmp_path / "sub" / "inv.npy").exists()
    assert not [p for p in (tmp_path / "sub").iterdir() if p.suffix == ".part"]
    back = Inversion.load(tmp_path / "sub" / "inv")
    assert torch.equal(back.ws, inv.ws)
    np.testing.assert_array_equal(back.mse, inv.mse)
    np.testing.assert_array_equal(back.psnr, inv.psnr)
    np.testing.assert_array_equal(back.frame_indices, inv.frame_indices)
    for a, b in zip(back.loss_history, inv.loss_history):
        np.testing.assert_array_equal(a, b)
    assert back.settings == inv.settings and back.generator == inv.generator
    assert (back.total_steps, back.frame_steps) == (inv.total_steps, inv.frame_steps)
    # A codes file that does not match its JSON (e.g. a save interrupted between the two files) is refused.
    np.save(tmp_path / "sub" / "inv.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="does not match"):
        Inversion.load(tmp_path / "sub" / "inv.npy")


@pytest.mark.slow
def test_sequence_needs_fewer_steps_than_frame_by_frame(G):
    # A smooth "video": 6 frames along the line between two w's.
    gen = torch.Generator().manual_seed(7)
    w_ab = G.mapping(torch.randn(2, G.z_dim, generator=gen), None, truncation_psi=0.7)
    t = torch.linspace(0, 1, 6).reshape(-1, 1, 1)
    frames = _render(G, w_ab[:1].lerp(w_ab[1:], t))
    t0 = time.perf_counter()
    fbf = invert(G, frames, steps=150, batch_size=6, **FAST)  # every frame from w_avg
    t1 = time.perf_counter()
    seq = invert_sequence(G, frames, batch_size=1, steps_first=150, steps_next=50, lr_next=0.03, **FAST)
    t2 = time.perf_counter()
    print(f"\nframe-by-frame: {fbf.frame_steps} frame-steps, PSNR min {fbf.psnr.min():.2f} mean {fbf.psnr.mean():.2f} "
          f"({t1 - t0:.1f} s); sequence: {seq.frame_steps} frame-steps ({seq.total_steps} steps), PSNR min "
          f"{seq.psnr.min():.2f} mean {seq.psnr.mean():.2f} ({t2 - t1:.1f} s)")
    assert fbf.frame_steps == 6 * 150 == 900
    assert seq.frame_steps == 150 + 5 * 50 == 400 and seq.total_steps == 400
    assert seq.settings["batch_steps"] == [150, 50, 50, 50, 50, 50]
    assert [len(h) for h in seq.loss_history] == [150, 50, 50, 50, 50, 50]
    # The target error (>= 30 dB on every frame) for 400 instead of 900 frame-steps.
    assert fbf.psnr.min() >= 30 and seq.psnr.min() >= 30
    assert seq.frame_steps <= 0.5 * fbf.frame_steps
    # And at the same budget (66 steps a frame, 396 frame-steps) frame-by-frame stays clearly worse: it needs
    # more steps to reach the sequence's error (measured here: 28.5 dB min / 32.2 mean vs 32.4 / 35.0).
    same = invert(G, frames, steps=66, batch_size=6, **FAST)
    print(f"frame-by-frame at the same budget: {same.frame_steps} frame-steps, PSNR min {same.psnr.min():.2f} "
          f"mean {same.psnr.mean():.2f}")
    assert same.frame_steps <= seq.frame_steps
    assert seq.psnr.min() >= same.psnr.min() + 2 and seq.psnr.mean() >= same.psnr.mean() + 1.5


@pytest.mark.slow
def test_sequence_temporal_term_and_checkpoint_resume(G, tmp_path):
    gen = torch.Generator().manual_seed(3)
    frames = _render(G, G.mapping(torch.randn(5, G.z_dim, generator=gen), None))
    kw = dict(batch_size=2, steps_first=4, steps_next=2, temporal_weight=0.5, progress=False)
    ref = invert_sequence(G, frames, **kw)
    ckpt = tmp_path / "ckpt"
    first = invert_sequence(G, frames, checkpoint_dir=ckpt, **kw)
    assert torch.equal(first.ws, ref.ws) and not first.from_cache
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["frames_000000-000001.json", "frames_000000-000001.npy", "frames_000002-000003.json",
                     "frames_000002-000003.npy", "frames_000004-000004.json", "frames_000004-000004.npy"]
    again = invert_sequence(G, frames, checkpoint_dir=ckpt, **kw)
    assert again.from_cache and torch.equal(again.ws, ref.ws) and again.total_steps == ref.total_steps
    # A half-written batch (its JSON cut short) is never used as finished: it is recomputed.
    js = ckpt / "frames_000002-000003.json"
    js.write_text(js.read_text()[:100])
    with pytest.warns(UserWarning, match="unreadable"):
        third = invert_sequence(G, frames, checkpoint_dir=ckpt, **kw)
    assert torch.equal(third.ws, ref.ws) and not third.from_cache
    assert json.loads(js.read_text())["format"] == "v2s_nb.inversion"
    # Other settings make the checkpoints stale: recomputed, not reused.
    with pytest.warns(UserWarning, match="other frames / settings"):
        other = invert_sequence(G, frames, checkpoint_dir=ckpt, **dict(kw, temporal_weight=0.0))
    assert not other.from_cache


@pytest.mark.slow
def test_cache_avoids_inverting_twice(G, tmp_path):
    gen = torch.Generator().manual_seed(5)
    frames = _render(G, G.mapping(torch.randn(2, G.z_dim, generator=gen), None))
    a = invert(G, frames, steps=3, cache_dir=tmp_path, progress=False)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and not a.from_cache
    b = invert(G, frames, steps=3, cache_dir=tmp_path, progress=False, frame_indices=[10, 11])
    assert b.from_cache and torch.equal(a.ws, b.ws) and list(b.frame_indices) == [10, 11]
    c = invert(G, frames, steps=4, cache_dir=tmp_path, progress=False)  # other settings: a new entry
    assert not c.from_cache and len(list(tmp_path.iterdir())) == 4
    s1 = invert_sequence(G, frames, batch_size=1, steps_first=3, steps_next=2, cache_dir=tmp_path, progress=False)
    s2 = invert_sequence(G, frames, batch_size=1, steps_first=3, steps_next=2, cache_dir=tmp_path, progress=False)
    assert not s1.from_cache and s2.from_cache and torch.equal(s1.ws, s2.ws)


def test_a_batch_that_runs_out_of_gpu_memory_is_redone_with_half_the_frames(G, tmp_path, monkeypatch):
    """A batch of 4 frames that runs out of GPU memory: one warning, then batches of 2, the codes batch_size=2
    gives; the result says what ran, its cache entry (keyed by what was asked) is found again. At one frame a batch:
    GPUMemoryError."""
    from v2s_nb.errors import FallbackWarning
    from v2s_nb.method import invert as inv_mod
    from v2s_nb.method.batches import GPUMemoryError

    gen = torch.Generator().manual_seed(4)
    frames = _render(G, G.mapping(torch.randn(5, G.z_dim, generator=gen), None, truncation_psi=0.7)).clamp(-1, 1)
    kw = dict(steps_first=3, steps_next=2, **FAST)
    by_two = invert_sequence(G, frames, batch_size=2, **kw)
    optimise, fits = inv_mod._optimise, [2]

    def small_gpu(G, targets, *args, **kwargs):
        if len(targets) > fits[0]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (a stand-in)")
        return optimise(G, targets, *args, **kwargs)

    monkeypatch.setattr(inv_mod, "_optimise", small_gpu)
    with pytest.warns(FallbackWarning, match="inversion: 4 frames a batch need more GPU memory than is free") as rec:
        halved = invert_sequence(G, frames, batch_size=4, cache_dir=tmp_path, checkpoint_dir=tmp_path / "b", **kw)
    assert rec[0].filename == __file__  # the warning points at the caller's line
    assert torch.equal(halved.ws, by_two.ws)
    assert halved.settings["batch_sizes"] == [4, 2] and halved.settings["batch_steps"] == [3, 2, 2]
    assert [len(h) for h in halved.loss_history] == [3, 3, 2, 2, 2]
    again = invert_sequence(G, frames, batch_size=4, cache_dir=tmp_path, **kw)
    assert again.from_cache and torch.equal(again.ws, halved.ws)
    fits[0] = 0
    with pytest.warns(FallbackWarning), pytest.raises(GPUMemoryError, match="inversion ran out of GPU memory"):
        invert_sequence(G, frames, batch_size=2, **kw)


def test_damaged_cache_entry_warns_and_is_recomputed(G, tmp_path):
    """A 0-byte .npy (disk full, cut copy) or a JSON lacking a key (hand edit, other writer) in an inversion cache
    or sequence checkpoint must give a CacheWarning and a recomputed result, not a bare EOFError / KeyError."""
    from v2s_nb.errors import CacheWarning
    gen = torch.Generator().manual_seed(9)
    frames = _render(G, G.mapping(torch.randn(2, G.z_dim, generator=gen), None, truncation_psi=0.7))
    kw = dict(steps=2, **FAST)
    ref = invert(G, frames[:1], cache_dir=tmp_path / "c", **kw)
    (npy,) = (tmp_path / "c").glob("*.npy")
    js = npy.with_suffix(".json")
    npy.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"{js.name} / {npy.name}: damaged or incomplete .*EOFError"):
        Inversion.load(npy)  # called directly: names the file and the cause
    with pytest.warns(CacheWarning, match="damaged or incomplete"):
        again = invert(G, frames[:1], cache_dir=tmp_path / "c", **kw)
    assert not again.from_cache and torch.equal(again.ws, ref.ws)
    meta = json.loads(js.read_text())
    del meta["ws_sha256"]
    js.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"{js.name} .*KeyError: 'ws_sha256'"):
        Inversion.load(js)
    with pytest.warns(CacheWarning, match="damaged or incomplete"):
        again = invert(G, frames[:1], cache_dir=tmp_path / "c", **kw)
    assert not again.from_cache and torch.equal(again.ws, ref.ws)
    assert invert(G, frames[:1], cache_dir=tmp_path / "c", **kw).from_cache  # rewritten whole
    # a batch checkpoint of invert_sequence, cut to 0 bytes
    skw = dict(batch_size=1, steps_first=2, steps_next=1, **FAST)
    seq = invert_sequence(G, frames, checkpoint_dir=tmp_path / "k", **skw)
    (tmp_path / "k" / "frames_000001-000001.npy").write_bytes(b"")
    with pytest.warns(CacheWarning, match="damaged or incomplete"):
        again = invert_sequence(G, frames, checkpoint_dir=tmp_path / "k", **skw)
    assert not again.from_cache and torch.equal(again.ws, seq.ws)


def test_weights_set_up_for_fine_tuning_get_no_gradient(G):
    """invert / invert_sequence optimise codes only: a generator whose weights require grad keeps its flags and gets
    no .grad from them."""
    frames = _render(G, G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(8)), None))
    G.synthesis.requires_grad_(True)
    try:
        invert(G, frames, steps=2, progress=False)
        invert_sequence(G, frames, batch_size=1, steps_first=2, steps_next=1, progress=False)
        assert all(p.grad is None and p.requires_grad for p in G.synthesis.parameters())
    finally:
        G.synthesis.requires_grad_(False)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        invert(G, frames, steps=2, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="batch_size >= 1"):
        pivotal_tuning(G, frames, G.mapping.w_avg.expand(2, G.num_ws, -1), steps=1, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="3 pivot codes for 2 images"):
        pivotal_tuning(G, frames, G.mapping.w_avg.expand(3, G.num_ws, -1), steps=1, progress=False)


def _l1_per_image(a, b):
    return (a - b).abs().mean(dim=(1, 2, 3))


def test_cache_keys_tell_perceptual_callables_apart(G, tmp_path):
    """A cached result is keyed by the perceptual loss: a lambda or partial can't be told from another of its kind
    by name, so with cache_dir / checkpoint_dir it needs a cache_key (else a clear error); a module-level function
    is keyed by its name."""
    import functools
    frames = _render(G, G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(7)), None))
    run = dict(steps=2, perceptual_weight=1.0, cache_dir=tmp_path, progress=False)
    for unnamed in (lambda a, b: _l1_per_image(a, b), functools.partial(_l1_per_image)):
        with pytest.raises(ValueError, match="cache_key"):
            invert(G, frames, perceptual=unnamed, **run)
        with pytest.raises(ValueError, match="cache_key"):
            invert_sequence(G, frames, steps_first=2, steps_next=1, perceptual=unnamed, checkpoint_dir=tmp_path,
                            progress=False)
    assert not list(tmp_path.iterdir())

    def scaled(k):
        f = functools.partial(lambda k, a, b: k * _l1_per_image(a, b), k)
        f.cache_key = f"l1 x{k}"
        return f

    a, b = (invert(G, frames, perceptual=scaled(k), **run) for k in (1.0, 100.0))
    assert not b.from_cache and not torch.equal(a.ws, b.ws)  # another loss: not the first one's result
    assert invert(G, frames, perceptual=scaled(100.0), **run).from_cache
    c = invert(G, frames, perceptual=_l1_per_image, **run)
    assert not c.from_cache and c.settings["perceptual"].endswith("test_invert._l1_per_image")
    assert invert(G, frames, perceptual=_l1_per_image, **run).from_cache


@pytest.mark.slow
def test_deterministic_and_batch_independent(G, known):
    images = known[0]
    kw = dict(steps=6, lr=0.1, progress=False)
    a = invert(G, images, w_noise=0.05, seed=11, **kw)
    b = invert(G, images, w_noise=0.05, seed=11, **kw)
    assert torch.equal(a.ws, b.ws)
    together = invert(G, images, w_noise=0.0, **kw)
    alone = torch.cat([invert(G, images[i:i + 1], w_noise=0.0, **kw).ws for i in range(2)])
    torch.testing.assert_close(together.ws, alone, rtol=0, atol=5e-3)  # Adam steps are ~0.1; rounding differs
    # A given init is used as the starting point.
    warm = invert(G, images, steps=1, init=known[2].ws, lr=1e-5, w_noise=0.0, progress=False)
    np.testing.assert_allclose(warm.psnr, known[2].psnr, atol=0.1)


@pytest.mark.slow
def test_pti_fits_an_out_of_range_image_and_leaves_G_untouched(G, tmp_path):
    import cv2
    from skimage import data

    photo = cv2.resize(data.astronaut(), (RES, RES), interpolation=cv2.INTER_AREA)  # far outside this G's range
    inv = invert(G, photo, steps=60, **FAST)
    before = generator_hash(G)
    params_before = {k: v.clone() for k, v in G.state_dict().items()}
    G_t = pivotal_tuning(G, photo, inv, steps=40, lr=1e-3, locality_weight=0.1, progress=False)
    assert generator_hash(G) == before
    assert all(torch.equal(v, params_before[k]) for k, v in G.state_dict().items())
    assert not any(p.requires_grad for p in G.parameters()) and not any(p.requires_grad for p in G_t.parameters())
    # The mapping network is frozen; the synthesis network moved.
    assert all(torch.equal(a, b) for a, b in zip(G.mapping.state_dict().values(), G_t.mapping.state_dict().values()))
    G_free = pivotal_tuning(G, photo, inv, steps=40, lr=1e-3, locality_weight=0.0, progress=False)
    target = prepare_images(photo, RES)
    err = {name: float((inv.images(g) - target).square().mean()) for name, g in
           [("before", G), ("pti", G_t), ("pti_no_locality", G_free)]}
    # Away from the pivot: how far the tuned generators moved (printed; on this tiny random generator the
    # locality term's effect is not reliably visible, so it is not asserted).
    w_far = G.mapping(torch.randn(8, G.z_dim, generator=torch.Generator().manual_seed(9)), None)
    ref = _render(G, w_far)
    drift = {name: float((_render(g, w_far) - ref).square().mean()) for name, g in
             [("pti", G_t), ("pti_no_locality", G_free)]}
    print(f"\nastronaut {RES} px, MSE: {err}; drift on 8 random w: {drift}")
    assert err["pti"] < err["before"] and err["pti_no_locality"] < 0.97 * err["before"]
    assert "PTI" in G_t.source
    # The tuned generator saves and loads like any other.
    path = save_generator(G_t, tmp_path / "pti.safetensors")
    G_back = load_generator(path)
    assert generator_hash(G_back) == generator_hash(G_t)
    torch.testing.assert_close(inv.images(G_back), inv.images(G_t))


def test_image_formats_and_bad_input(G):
    rgb = (np.random.default_rng(0).random((2, 64, 64, 3)) * 255).astype(np.uint8)
    x = prepare_images(rgb, 64)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32 and -1 <= float(x.min()) and float(x.max()) <= 1
    torch.testing.assert_close(prepare_images(x, 64), x)  # float [N, 3, H, W] in [-1, 1] as is
    assert prepare_images(rgb[0], 64).shape == (1, 3, 64, 64)  # a single image
    torch.testing.assert_close(prepare_images(rgb.transpose(0, 3, 1, 2), 64), x)  # channel-first uint8
    with pytest.raises(ValueError, match="ambiguous"):  # one channel-first picture, or 3 grey frames?
        prepare_images(rgb[0].transpose(2, 0, 1), 64)
    with pytest.warns(ImageResizeWarning, match="resized"):
        assert prepare_images(np.repeat(np.repeat(rgb, 2, 1), 2, 2), 64).shape == (2, 3, 64, 64)
    with pytest.warns(ImageResizeWarning, match="grayscale"):
        assert prepare_images(rgb[..., 0], 64).shape == (2, 3, 64, 64)
    rgba = np.concatenate([rgb, np.full((2, 64, 64, 1), 255, np.uint8)], axis=3)
    with pytest.warns(ImageResizeWarning, match="alpha"):
        torch.testing.assert_close(prepare_images(rgba, 64), x)
    rgba[1, 5, 5, 3] = 0
    with pytest.raises(ValueError, match=r"transparent.*\[11\]"):
        prepare_images(rgba, 64, frame_indices=[10, 11])
    with pytest.raises(ValueError, match="square"):
        prepare_images(rgb[:, :, :48], 64)
    with pytest.raises(ValueError, match="3 channels"):
        prepare_images(rgba[..., :2], 64)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        prepare_images(x * 127.5 + 127.5, 64)
    from v2s_nb.images import ImageRangeWarning
    with pytest.warns(ImageRangeWarning, match=r"all values here are >= 0.*ToTensor.*x \* 2 - 1"):
        prepare_images((x + 1) / 2, 64)  # torchvision's [0, 1] tensors, read as [-1, 1]: a washed-out target
    bad = x.clone()
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN.*frame\(s\) \[21\]"):
        invert(G, bad, steps=1, frame_indices=[20, 21], progress=False)
    with pytest.raises(ValueError, match="init must be"):
        invert(G, x, steps=1, init=torch.zeros(3, 4), progress=False)
    # settings checked before a step: a NaN weight was reported as a divergence, with advice to lower lr
    for bad, msg in (({"mse_weight": float("nan")}, "mse_weight must be a finite number"),
                     ({"w_avg_weight": -1}, r"w_avg_weight = -1 is out of range"),
                     ({"lr": 0}, r"lr must be > 0"), ({"lr_rampup": 2}, r"lr_rampup \(a fraction")):
        with pytest.raises(ValueError, match=msg):
            invert(G, x, steps=1, progress=False, **bad)
    with pytest.raises(ValueError, match="lr_next must be > 0"):
        invert_sequence(G, x, steps_first=1, steps_next=1, lr_next=0, progress=False)
    with pytest.raises(ValueError, match=r"^ws must be \["):  # its own name, not init's
        pivotal_tuning(G, x[:1], torch.zeros(1, 3, 4), steps=1, progress=False)
    with pytest.raises(ValueError, match="locality_weight must be a finite number"):
        pivotal_tuning(G, x[:1], torch.zeros(1, G.num_ws, G.w_dim), steps=1, locality_weight=float("inf"),
                       progress=False)


@pytest.mark.slow
def test_nan_loss_stops_naming_the_frame(G, known):
    def perceptual(img, target):  # a perceptual term that breaks on the second image only
        out = torch.zeros(img.shape[0])
        out[1] = float("nan")
        return out

    with pytest.raises(InversionDivergedError, match=r"frame\(s\) \[8\]") as err:
        invert(G, known[0], steps=3, perceptual=perceptual, frame_indices=[7, 8], progress=False)
    assert err.value.frames == [8]


def test_pti_nan_loss_stops_naming_the_frame(G, known):
    calls = []

    def perceptual(img, target):  # breaks from the second step on
        calls.append(1)
        return torch.full((img.shape[0],), float("nan") if len(calls) > 1 else 0.0)

    with pytest.raises(InversionDivergedError, match=r"step 1/5 .*frame\(s\) \[4\]") as err:
        pivotal_tuning(G, known[0][:1], known[2].ws[:1], steps=5, perceptual=perceptual, frame_indices=[4],
                       locality_weight=0.0, progress=False)
    assert err.value.frames == [4]
    assert pivotal_tuning(G, known[0][:1], known[2].ws[:1], steps=0, progress=False) is not G  # zero steps: a copy


class _StopsAfter:
    """A perceptual term of zero that stands in for Ctrl-C after ``limit`` calls (None: never)."""
    cache_key = "zero-perceptual"

    def __init__(self, limit=None):
        self.calls, self.limit = 0, limit

    def __call__(self, img, target):
        self.calls += 1
        if self.limit is not None and self.calls > self.limit:
            raise KeyboardInterrupt
        return img.sum((1, 2, 3)) * 0.0


def _pti_resume_case(G, image, w, tmp_path, **kw):
    """(uninterrupted, resumed) generators of a 6-step PTI cut after step 3 (state saved every step)."""
    from v2s_nb.errors import CacheWarning

    whole = pivotal_tuning(G, image, w, steps=6, perceptual=_StopsAfter(), progress=False, **kw)
    ckpt = tmp_path / "pti.resume.pt"
    with pytest.raises(KeyboardInterrupt):  # two perceptual calls a step: pivots and the locality code
        pivotal_tuning(G, image, w, steps=6, perceptual=_StopsAfter(limit=2 * 3 + 1), checkpoint=ckpt,
                       checkpoint_seconds=0, progress=False, **kw)
    assert ckpt.is_file() and torch.load(ckpt, weights_only=True)["step"] == 3
    other = _StopsAfter(limit=0)
    with pytest.warns(CacheWarning, match="another tuning"), pytest.raises(KeyboardInterrupt):
        pivotal_tuning(G, image, w, steps=7, perceptual=other, checkpoint=ckpt, progress=False, **kw)
    assert ckpt.is_file()  # set aside, not removed: it is overwritten only by a save of the other tuning
    rest = _StopsAfter()
    resumed = pivotal_tuning(G, image, w, steps=6, perceptual=rest, checkpoint=ckpt, progress=False, **kw)
    assert rest.calls == 2 * 3 and not ckpt.exists()  # steps 3-5 only; the file goes once the tuning is done
    return whole, resumed


def test_invert_resumes_from_its_finished_batches(G, known, tmp_path):
    """``checkpoint_dir``: an interrupted inversion keeps its finished batches, and the rerun optimises only the
    others, to the codes of an uninterrupted run (each batch's noise from its own seed, so skipping one changes
    none after it)."""
    images = known[0]
    kw = dict(steps=4, batch_size=1, lr=0.1, w_noise=0.05, progress=False)
    counting = _StopsAfter()
    whole = invert(G, images, perceptual=counting, **kw)
    per_batch = counting.calls // 2
    ckpt = tmp_path / "batches"
    with pytest.raises(KeyboardInterrupt):
        invert(G, images, perceptual=_StopsAfter(limit=per_batch + 1), checkpoint_dir=ckpt, **kw)
    assert sorted(f.name for f in ckpt.iterdir()) == ["images_000000-000000.json", "images_000000-000000.npy"]
    rest = _StopsAfter()
    again = invert(G, images, perceptual=rest, checkpoint_dir=ckpt, **kw)
    assert rest.calls == per_batch and torch.allclose(again.ws, whole.ws, atol=1e-6)
    assert np.allclose(again.mse, whole.mse) and len(again.loss_history) == 2


def test_pti_resumes_from_its_checkpoint_to_the_uninterrupted_result(G, known, tmp_path):
    """An interrupted PTI goes on from its last saved state (weights, Adam's moments, step, the same random draws)
    and ends where an uninterrupted run does; a state saved by another tuning is not used, nor a damaged file."""
    from v2s_nb.errors import CacheWarning

    image, w = known[0][:1], known[2].ws[:1]
    whole, resumed = _pti_resume_case(G, image, w, tmp_path, lr=1e-2)
    for a, b, c in zip(whole.synthesis.parameters(), resumed.synthesis.parameters(), G.synthesis.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert any(not torch.equal(a, c) for a, c in zip(whole.synthesis.parameters(), G.synthesis.parameters()))
    ckpt = tmp_path / "damaged.pt"
    ckpt.write_bytes(b"damaged")
    with pytest.warns(CacheWarning, match="unreadable"):
        again = pivotal_tuning(G, image, w, steps=6, lr=1e-2, perceptual=_StopsAfter(), checkpoint=ckpt,
                               progress=False)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(whole.synthesis.parameters(),
                                                               again.synthesis.parameters()))
    with pytest.raises(ValueError, match="checkpoint_seconds"):
        pivotal_tuning(G, image, w, steps=1, checkpoint=ckpt, checkpoint_seconds=-1, progress=False)


def test_pti_locality_codes_lie_the_radius_from_the_pivot_over_the_whole_code(G, known, monkeypatch):
    """PTI's locality codes: w_p + r (w_z - w_p) / ||w_z - w_p||, the norm over the whole code (all w+ rows), as
    PTI's torch.norm of the direction; a norm per row put them sqrt(num_ws) times farther."""
    import v2s_nb.method.invert as mod
    rendered = []
    made = mod._renderer

    def spy(G_t, batch_size, cuda_graphs, ws_grad=True):
        render = made(G_t, batch_size, cuda_graphs, ws_grad)
        return lambda codes: rendered.append(codes.detach().clone()) or render(codes)

    monkeypatch.setattr(mod, "_renderer", spy)
    import v2s_nb.stylegan3 as sg  # (the spy is no G.synthesis: the reference renders would go to a graph)
    monkeypatch.setattr(sg, "GraphedSynthesis", lambda G, batch_size: G.synthesis)
    pivot = known[2].ws[:1]
    pivotal_tuning(G, known[0][:1], pivot, steps=1, locality_radius=5.0, locality_samples=2, progress=False)
    local = rendered[0][1:]  # the pivot, then the locality codes
    assert local.shape == (2, G.num_ws, G.w_dim)
    d = (local - pivot).flatten(1).norm(dim=1)
    assert torch.allclose(d, torch.full_like(d, 5.0), rtol=1e-4), d
    assert float((local - pivot)[:, 0].norm(dim=1).max()) < 5.0 / G.num_ws ** 0.5 + 1e-3


@pytest.mark.slow
def test_lpips_falls_back_to_mse_with_one_warning(G, known, monkeypatch):
    import builtins
    import v2s_nb.method.invert as mod

    real_import = builtins.__import__

    def no_lpips(name, *a, **k):
        if name == "lpips":
            raise ImportError("No module named 'lpips'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_lpips)
    monkeypatch.setattr(mod, "_LPIPS_MODELS", {})
    monkeypatch.setattr(mod, "_LPIPS_WARNED", False)
    with pytest.warns(PerceptualFallbackWarning, match="pixel MSE"):
        a = invert(G, known[0][:1], steps=2, perceptual="lpips", progress=False)
    assert a.settings["perceptual"] == "none (lpips unavailable)"
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerceptualFallbackWarning)  # said once, not again
        invert(G, known[0][:1], steps=1, perceptual="lpips", progress=False)
    # A callable works as the perceptual term.
    c = invert(G, known[0][:1], steps=2, perceptual=lambda a, b: (a - b).abs().mean(dim=(1, 2, 3)), progress=False)
    assert c.settings["perceptual"].startswith("unidentified callable:")  # fine uncached (cache_dir needs a key)
    assert c.settings["perceptual"].endswith("<lambda>")


@pytest.mark.slow
def test_progress_bar_shows_loss(G, known, capsys):
    invert(G, known[0][:1], steps=3, progress=True)
    err = capsys.readouterr().err
    assert "loss=" in err and "3/3" in err


def test_loss_scaler_only_where_fp16_layers_run():
    from v2s_nb.method.loss_scale import grad_scaler, uses_fp16
    G = tiny_generator("R")
    assert not uses_fp16(G) and not grad_scaler(G).is_enabled()  # CPU: everything float32


@requires_cuda
def test_inversion_through_fp16_layers_on_gpu():
    """At 256 px with the snapshot's fp16 layers, unscaled per-image mean losses give gradients that flush to zero
    in fp16; with the loss scaler the inversion makes real progress."""
    from v2s_nb.method.loss_scale import uses_fp16
    from v2s_nb.stylegan3 import build_generator
    G = build_generator("R", resolution=256, device="cuda", seed=0)
    assert uses_fp16(G)
    with torch.no_grad():
        w = G.mapping(torch.randn(2, G.z_dim, device="cuda", generator=torch.Generator("cuda").manual_seed(3)), None,
                      truncation_psi=0.7)
        target = G.synthesis(w).clamp(-1, 1)
    inv = invert(G, target, steps=60, progress=False)
    first = np.array([h[0] for h in inv.loss_history])
    last = np.array([h[-1] for h in inv.loss_history])
    assert np.isfinite(last).all() and (last < 0.5 * first).all(), (first, last)


@requires_cuda
def test_pti_with_cuda_graphs_matches_eager():
    """PTI's steps replayed from CUDA graphs tune the generator as the eager steps do (mixed precision, locality on)."""
    from v2s_nb.stylegan3 import build_generator
    G = build_generator("T", resolution=256, device="cuda", seed=0)
    w = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(1)).cuda(), None)
    with torch.no_grad():
        image = G.synthesis(G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(2)).cuda(),
                                      None)).float().clamp(-1, 1).cpu()
    tuned = {flag: pivotal_tuning(G, image, w, steps=4, lr=1e-3, locality_weight=0.1, cuda_graphs=flag,
                                  progress=False) for flag in (False, True)}
    # The change of the weights, compared as a whole: Adam turns gradients near zero into steps of about lr in
    # either direction, so single weights may differ by a step between two runs of the same gradients.
    def change(G_t):
        return torch.cat([(a - b).flatten() for a, b in zip(G_t.synthesis.parameters(), G.synthesis.parameters())])

    graphs, eager = change(tuned[True]), change(tuned[False])
    assert float(eager.norm()) > 1e-3  # the steps changed the weights
    assert float((graphs - eager).norm() / eager.norm()) < 2e-2, float((graphs - eager).norm() / eager.norm())


@requires_cuda
def test_pti_resumes_on_the_gpu_from_graphs_and_a_loss_scale(tmp_path):
    """On CUDA (mixed precision: the loss scaler's state saved too; the steps from CUDA graphs, recorded after the
    state is restored) a resumed PTI ends where an uninterrupted one does, as far as the GPU repeats itself."""
    from v2s_nb.stylegan3 import build_generator
    G = build_generator("T", resolution=256, device="cuda", seed=0)
    w = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(1)).cuda(), None)
    with torch.no_grad():
        image = G.synthesis(G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(2)).cuda(),
                                      None)).float().clamp(-1, 1).cpu()
    whole, resumed = _pti_resume_case(G, image, w, tmp_path, lr=1e-3, cuda_graphs=True)

    def change(G_t):
        return torch.cat([(a - b).flatten() for a, b in zip(G_t.synthesis.parameters(), G.synthesis.parameters())])

    a, b = change(whole), change(resumed)
    assert float(a.norm()) > 1e-3
    assert float((a - b).norm() / a.norm()) < 2e-2, float((a - b).norm() / a.norm())


@requires_cuda
def test_invert_with_cuda_graphs_matches_eager():
    """Projection steps replayed from CUDA graphs (a padded last batch, noise on w) give the eager steps' codes."""
    from v2s_nb.stylegan3 import build_generator
    G = build_generator("T", resolution=256, device="cuda", seed=0)
    with torch.no_grad():
        ws = G.mapping(torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(4)).cuda(), None,
                       truncation_psi=0.7)
        images = G.synthesis(ws).float().clamp(-1, 1).cpu()
    runs = {flag: invert(G, images, steps=6, lr=0.05, w_noise=0.05, batch_size=2, cuda_graphs=flag, progress=False)
            for flag in (False, True)}
    w_avg = G.mapping.w_avg.float().cpu()
    graphs, eager = runs[True].ws - w_avg, runs[False].ws - w_avg
    assert float(eager.norm()) > 1e-2
    assert float((graphs - eager).norm() / eager.norm()) < 2e-2, float((graphs - eager).norm() / eager.norm())
    np.testing.assert_allclose(np.asarray(runs[True].loss_history), np.asarray(runs[False].loss_history), rtol=2e-2)
