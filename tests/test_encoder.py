"""ReStyle encoders (v2s_nb.method.encoder) and generators rebuilt from bare state dicts.

The reference numbers come from a re-derivation written here, independently of the module, from the published
description of ReStyle on StyleGAN3 (stylegan3-editing: ``BackboneEncoder`` / ``ProgressiveBackboneEncoder`` on an
IR-SE body, ``GradualStyleBlock`` heads, the iterative inference loop):

* layer layout and state-dict names: ``input_layer.{0: conv3x3 in->stem, 1: BN, 2: PReLU}``; ``body.i`` units with
  ``shortcut_layer`` (a 1x1 max pool of stride s when widths agree, else ``{0: conv1x1 stride s, 1: BN}``) and
  ``res_layer.{0: BN, 1: conv3x3, 2: PReLU, 3: conv3x3 stride s, 4: BN, 5: SE(fc1, fc2)}``, s = 2 on the first
  unit of each stage; ``styles.j.convs.{0, 2, ...}`` stride-2 3x3 convolutions with bias, each followed by a
  leaky ReLU of slope 0.01, and ``styles.j.linear`` (weight / sqrt(in), plus bias);
* pSp: row j = head j; e4e (inference stage): row 0 = head 0, row j = head 0 + head j;
* inference: reconstruction_0 = AdaptiveAvgPool2d(256)(decoder(latent_avg) with identity input transform, fp32);
  codes_t = encoder(cat[x, rec_{t-1}]) + (latent_avg if t = 0 else codes_{t-1}); rec_t = pool256(decoder(codes_t)).

Here it is written with functional ops on the raw tensors (F.conv2d, F.batch_norm, F.prelu, F.max_pool2d, ...),
the decoder run through a copy of the generator whose transform buffer is set to the identity.
"""

from __future__ import annotations

import copy
import math
import os
import pathlib
import pickle
import zipfile

import pytest
import torch
import torch.nn.functional as F

from v2s_nb.method.encoder import EncoderCheckpointError, load_encoder
from v2s_nb.stylegan3.networks import build_generator, tiny_generator
from v2s_nb.stylegan3.snapshot import SnapshotError
from v2s_nb.stylegan3.state_dict import generator_from_state_dict

# A reduced IR-SE body: four stages (widths, units) as in IR-SE-50's (64, 3), (128, 4), (256, 14), (512, 3).
STEM = 16
STAGES = [(16, 2), (32, 2), (48, 1), (64, 1)]


def _bn(sd, key, c, g):
    sd[key + ".weight"] = 1 + 0.1 * torch.randn(c, generator=g)
    sd[key + ".bias"] = 0.1 * torch.randn(c, generator=g)
    sd[key + ".running_mean"] = 0.1 * torch.randn(c, generator=g)
    sd[key + ".running_var"] = 0.5 + torch.rand(c, generator=g)
    sd[key + ".num_batches_tracked"] = torch.tensor(1000)


def _conv(sd, key, cout, cin, k, g, bias=False):
    sd[key + ".weight"] = torch.randn(cout, cin, k, k, generator=g) * math.sqrt(1.0 / (cin * k * k))
    if bias:
        sd[key + ".bias"] = 0.05 * torch.randn(cout, generator=g)


def _units():
    units, cin = [], STEM
    for w, n in STAGES:
        for i in range(n):
            units.append((cin, w, 2 if i == 0 else 1))
            cin = w
    return units


def make_encoder_sd(n_styles, style_dim, seed=0, in_ch=6):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    _conv(sd, "input_layer.0", STEM, in_ch, 3, g)
    _bn(sd, "input_layer.1", STEM, g)
    sd["input_layer.2.weight"] = 0.25 + 0.05 * torch.randn(STEM, generator=g)
    for i, (cin, cout, s) in enumerate(_units()):
        p = f"body.{i}"
        if cin != cout:
            _conv(sd, p + ".shortcut_layer.0", cout, cin, 1, g)
            _bn(sd, p + ".shortcut_layer.1", cout, g)
        _bn(sd, p + ".res_layer.0", cin, g)
        _conv(sd, p + ".res_layer.1", cout, cin, 3, g)
        sd[p + ".res_layer.2.weight"] = 0.25 + 0.05 * torch.randn(cout, generator=g)
        _conv(sd, p + ".res_layer.3", cout, cout, 3, g)
        _bn(sd, p + ".res_layer.4", cout, g)
        _conv(sd, p + ".res_layer.5.fc1", cout // 16, cout, 1, g)
        _conv(sd, p + ".res_layer.5.fc2", cout, cout // 16, 1, g)
    feat = STAGES[-1][0]
    for j in range(n_styles):
        for k in range(4):  # log2(16) stride-2 convolutions: 16 -> 1
            _conv(sd, f"styles.{j}.convs.{2 * k}", style_dim, feat if k == 0 else style_dim, 3, g, bias=True)
        sd[f"styles.{j}.linear.weight"] = torch.randn(style_dim, style_dim, generator=g)
        sd[f"styles.{j}.linear.bias"] = 0.1 * torch.randn(style_dim, generator=g)
    return sd


def ref_net(sd, x, progressive):
    """Functional forward pass of the encoder, from the raw tensors."""
    def bn(x, p):
        return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                            training=False, eps=1e-5)

    x = F.conv2d(x, sd["input_layer.0.weight"], padding=1)
    x = F.prelu(bn(x, "input_layer.1"), sd["input_layer.2.weight"])
    for i, (cin, cout, s) in enumerate(_units()):
        p = f"body.{i}"
        if cin == cout:
            short = F.max_pool2d(x, 1, s)
        else:
            short = bn(F.conv2d(x, sd[p + ".shortcut_layer.0.weight"], stride=s), p + ".shortcut_layer.1")
        r = bn(x, p + ".res_layer.0")
        r = F.prelu(F.conv2d(r, sd[p + ".res_layer.1.weight"], padding=1), sd[p + ".res_layer.2.weight"])
        r = bn(F.conv2d(r, sd[p + ".res_layer.3.weight"], stride=s, padding=1), p + ".res_layer.4")
        se = F.adaptive_avg_pool2d(r, 1)
        se = torch.sigmoid(F.conv2d(F.relu(F.conv2d(se, sd[p + ".res_layer.5.fc1.weight"])),
                                    sd[p + ".res_layer.5.fc2.weight"]))
        x = r * se + short
    n_styles = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("styles."))
    rows = []
    for j in range(n_styles):
        h = x
        for k in range(4):
            h = F.leaky_relu(F.conv2d(h, sd[f"styles.{j}.convs.{2 * k}.weight"], sd[f"styles.{j}.convs.{2 * k}.bias"],
                                      stride=2, padding=1), 0.01)
        w = sd[f"styles.{j}.linear.weight"]
        rows.append(h.flatten(1) @ (w / math.sqrt(w.shape[1])).t() + sd[f"styles.{j}.linear.bias"])
    if progressive:
        rows = [rows[0]] + [rows[0] + r for r in rows[1:]]
    return torch.stack(rows, dim=1)


def ref_iterations(sd, G, latent_avg, x, n_iters, progressive):
    dec = copy.deepcopy(G)
    dec.synthesis.input.transform.copy_(torch.eye(3))
    pool = torch.nn.AdaptiveAvgPool2d((256, 256))
    n = x.shape[0]
    avg = latent_avg if latent_avg.ndim == 2 else latent_avg.unsqueeze(0).repeat(G.num_ws, 1)
    rec = pool(dec.synthesis(avg.unsqueeze(0), force_fp32=True)).repeat(n, 1, 1, 1)
    codes, out = None, []
    for t in range(n_iters):
        delta = ref_net(sd, torch.cat([x, rec], 1), progressive)
        codes = delta + (latent_avg.repeat(n, 1, 1) if codes is None else codes)
        out.append(codes)
        rec = pool(dec.synthesis(codes, force_fp32=True))
    return out


def save_released_format(path, enc_sd, G, latent_avg, encoder_type):
    """A file laid out as stylegan3-editing's coaches save theirs."""
    state = {"encoder." + k: v for k, v in enc_sd.items()}
    state.update({"decoder." + k: v for k, v in G.state_dict().items()})
    opts = {"exp_dir": pathlib.Path("experiments/x"), "encoder_type": encoder_type, "input_nc": 6,
            "output_size": G.img_resolution, "n_iters_per_batch": 3, "learning_rate": 1e-4,
            "stylegan_weights": pathlib.PurePosixPath("pretrained_models/sg3-r-ffhq-1024.pt"),
            "checkpoint_path": None, "progressive_steps": [0, 2000], "save_interval": None}
    torch.save({"state_dict": state, "opts": opts, "latent_avg": latent_avg, "global_step": 10,
                "best_val_loss": 0.5}, path)
    return path


@pytest.fixture(scope="module")
def tiny_g():
    return tiny_generator("R", resolution=64, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("kind,etype,avg_rows", [("psp", "BackboneEncoder", True),
                                                  ("e4e", "ProgressiveBackboneEncoder", False)])
def test_encode_matches_reference(tmp_path, tiny_g, kind, etype, avg_rows):
    G = tiny_g
    enc_sd = make_encoder_sd(G.num_ws, G.w_dim, seed=1 if kind == "psp" else 2)
    g = torch.Generator().manual_seed(5)
    latent_avg = G.mapping.w_avg.clone() + 0.1 * torch.randn(G.w_dim, generator=g)
    if avg_rows:
        latent_avg = latent_avg.unsqueeze(0).repeat(G.num_ws, 1) + 0.05 * torch.randn(G.num_ws, G.w_dim, generator=g)
    path = save_released_format(tmp_path / f"restyle_{kind}.pt", enc_sd, G, latent_avg, etype)

    E = load_encoder(path)
    assert E.kind == kind and tuple(E.latent_avg.shape) == tuple(latent_avg.shape)
    assert E.generator.img_resolution == 64 and E.generator.num_ws == G.num_ws
    assert E.matches(G)

    x = torch.rand(3, 3, 256, 256, generator=g) * 2 - 1
    ws, steps = E.encode(x, n_iters=3, batch_size=2, return_steps=True)
    ref = ref_iterations(enc_sd, G, latent_avg, x, 3, progressive=kind == "e4e")
    assert ws.shape == (3, G.num_ws, G.w_dim)
    for t in range(3):
        err = (steps[t] - ref[t]).abs().max().item()
        assert err < 1e-4, (t, err)
    # The iterations refine: codes after each step differ, and the input matters.
    assert (steps[1] - steps[0]).abs().max() > 1e-3
    assert (ws[0] - ws[1]).abs().max() > 1e-3
    if kind == "e4e":  # every row is head 0's plus a delta, so rows differ from each other
        assert (ws[:, 1] - ws[:, 2]).abs().max() > 1e-4


@pytest.mark.slow
def test_encode_resizes_other_sizes(tmp_path, tiny_g):
    G = tiny_g
    enc_sd = make_encoder_sd(G.num_ws, G.w_dim, seed=4)
    E = load_encoder(save_released_format(tmp_path / "e.pt", enc_sd, G, G.mapping.w_avg.clone(), "BackboneEncoder"))
    x = torch.rand(2, 3, 512, 512, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x256 = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False, antialias=True)
    a, b = E.encode(x, n_iters=2), E.encode(x256, n_iters=2)
    assert (a - b).abs().max() < 1e-4
    u8 = ((x256.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    c = E.encode(u8, n_iters=1)
    assert c.shape == (2, G.num_ws, G.w_dim)
    # Arrays are converted batch by batch on the device; other forms (a list) through prepare_images: same codes.
    assert (E.encode(list(u8), n_iters=1) - c).abs().max() < 1e-5
    u8_big = ((x.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    assert (E.encode(u8_big, n_iters=1) - E.encode(list(u8_big), n_iters=1)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="NaN"):
        E.encode(torch.full((1, 3, 256, 256), float("nan")))
    with pytest.raises(ValueError, match="square"):
        E.encode(torch.zeros(1, 3, 256, 200))
    with pytest.raises(ValueError, match="n_iters"):
        E.encode(x256, n_iters=0)


class _Canary:
    """Pickles as a call to os.makedirs(path): loading it unsafely would create the folder."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.makedirs, (self.path,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_hostile_pickle_is_refused_and_not_run(tmp_path, tiny_g):
    canary = tmp_path / "canary_dir"
    enc_sd = make_encoder_sd(tiny_g.num_ws, tiny_g.w_dim, seed=6)
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"encoder." + k: v for k, v in enc_sd.items()},
                "opts": {"encoder_type": "BackboneEncoder", "hook": _Canary(canary)},
                "latent_avg": tiny_g.mapping.w_avg.clone()}, path)
    with pytest.raises(EncoderCheckpointError, match="refusing"):
        load_encoder(path)
    assert not canary.exists()
    legacy = tmp_path / "evil_legacy.pt"  # a bare pickle, not torch's zip layout
    with open(legacy, "wb") as f:
        pickle.dump({"state_dict": {}, "x": _Canary(canary)}, f)
    with pytest.raises(EncoderCheckpointError):
        load_encoder(legacy)
    assert not canary.exists()
    # Sanity: an unsafe load of the same file would run it (so the canary can fail).
    torch.load(path, weights_only=False)
    assert canary.exists()


def test_bad_checkpoints_have_clear_errors(tmp_path, tiny_g):
    with pytest.raises(FileNotFoundError, match="restyle-e4e-ffhq"):
        load_encoder(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"<html>not a checkpoint</html>")
    with pytest.raises(EncoderCheckpointError):
        load_encoder(junk)
    enc_sd = make_encoder_sd(tiny_g.num_ws, tiny_g.w_dim, seed=7)
    no_dec = tmp_path / "nodec.pt"
    torch.save({"state_dict": {"encoder." + k: v for k, v in enc_sd.items()},
                "opts": {"encoder_type": "BackboneEncoder"}, "latent_avg": tiny_g.mapping.w_avg}, no_dec)
    with pytest.raises(EncoderCheckpointError, match="decoder"):
        load_encoder(no_dec)
    resnet = save_released_format(tmp_path / "resnet.pt", enc_sd, tiny_g, tiny_g.mapping.w_avg, "ResNetBackboneEncoder")
    with pytest.raises(EncoderCheckpointError, match="not supported"):
        load_encoder(resnet)


def test_files_that_are_no_torch_checkpoint_are_named(tmp_path):
    """A text file gave 'KeyError: 101' (torch's reader on a non-pickle); an image claimed to hold unsafe objects."""
    files = {"notes.pt": b"hello, not a checkpoint\n", "empty.pt": b"", "png.pt": b"\x89PNG\r\n\x1a\n" + bytes(64),
             "page.pt": b"<!DOCTYPE html><html>404</html>"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(EncoderCheckpointError, match=rf"{name} is not a torch checkpoint: it is .*restyle_"):
            load_encoder(tmp_path / name)
    snapshot = tmp_path / "network.pt"  # an NVIDIA pickle's opening bytes: a generator, not an encoder
    snapshot.write_bytes(b"\x80\x04\x95" + bytes(8) + b"}\x94(\x8c\x01G\x94\x8c\x17torch_utils.persistence")
    with pytest.raises(EncoderCheckpointError, match="NVIDIA StyleGAN snapshot.*load_generator"):
        load_encoder(snapshot)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"\x80\x02garbage")  # a pickle header, then an opcode torch's restricted reader refuses
    with pytest.raises(EncoderCheckpointError, match="broken.pt: refusing to load it: the file is corrupt"):
        load_encoder(broken)
    with zipfile.ZipFile(tmp_path / "other.pt", "w") as z:  # a zip archive, not torch.save's layout
        z.writestr("a.txt", "x")
    with pytest.raises(EncoderCheckpointError, match="other.pt is not a torch checkpoint .*restyle_"):
        load_encoder(tmp_path / "other.pt")
    with pytest.raises(EncoderCheckpointError, match="is a folder"):
        load_encoder(tmp_path)


def test_encode_counts_must_be_integers(tiny_g):
    enc_sd = make_encoder_sd(tiny_g.num_ws, tiny_g.w_dim, seed=8)
    from v2s_nb.method.encoder import ReStyleEncoder, ReStyleNet

    E = ReStyleEncoder(ReStyleNet.from_state_dict(enc_sd, progressive=False), copy.deepcopy(tiny_g),
                       tiny_g.mapping.w_avg, "psp")
    x = torch.zeros(1, 3, 256, 256)
    for name, bad in (("batch_size", 0), ("batch_size", 2.5), ("n_iters", 1.5), ("n_iters", -1)):
        with pytest.raises(ValueError, match=name):
            E.encode(x, **{name: bad})


@pytest.mark.parametrize("cfg", ["R", "T"])
@pytest.mark.parametrize("res", [16, pytest.param(64, marks=pytest.mark.slow), 256, 1024])
def test_generator_from_state_dict_rebuilds_architecture(cfg, res):
    scale = 1 / 32 if res == 1024 else 1 / 16
    G = build_generator(cfg, resolution=res, channel_scale=scale, z_dim=32, w_dim=32, seed=1, calibrate=res <= 64)
    H = generator_from_state_dict(G.state_dict())
    assert H.img_resolution == res and H.synthesis.layer_names == G.synthesis.layer_names
    assert H.init_kwargs["conv_kernel"] == (1 if cfg == "R" else 3)
    assert H.init_kwargs["use_radial_filters"] == (cfg == "R")
    for name in G.synthesis.layer_names:
        a, b = getattr(G.synthesis, name), getattr(H.synthesis, name)
        assert (a.in_channels, a.out_channels, a.up_factor, a.down_factor, a.padding) == \
            (b.in_channels, b.out_channels, b.up_factor, b.down_factor, b.padding)
    if res <= 64:
        ws = G.mapping(torch.randn(2, 32, generator=torch.Generator().manual_seed(0)))
        assert torch.equal(G.synthesis(ws), H.synthesis(ws))


def test_generator_from_state_dict_refuses_other_tensors():
    G = tiny_generator("T", resolution=64)
    sd = G.state_dict()
    with pytest.raises(SnapshotError, match="not a StyleGAN3"):
        generator_from_state_dict({"conv.weight": torch.zeros(3)})
    bad = dict(sd)
    bad["synthesis.L3_36_32.affine.weight"] = torch.zeros(7, 64)
    with pytest.raises(SnapshotError, match="shapes"):
        generator_from_state_dict(bad)
    nan = dict(sd)
    nan["synthesis.L3_36_32.weight"] = sd["synthesis.L3_36_32.weight"].clone()
    nan["synthesis.L3_36_32.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(SnapshotError, match="NaN"):  # as the snapshot and checkpoint loaders refuse them
        generator_from_state_dict(nan)


@pytest.mark.slow
def test_invert_with_encoder_refines_and_caches(tmp_path, tiny_g):
    from v2s_nb.method.encoder import invert_with_encoder

    G = tiny_g
    E = load_encoder(save_released_format(tmp_path / "e.pt", make_encoder_sd(G.num_ws, G.w_dim, seed=8), G,
                                          G.mapping.w_avg.clone(), "ProgressiveBackboneEncoder"))
    with torch.no_grad():  # frames the generator can make: images of random codes
        frames = G.synthesis(G.mapping(torch.randn(5, G.z_dim, generator=torch.Generator().manual_seed(1))))
    frames = frames.clamp(-1, 1)
    enc = invert_with_encoder(E, G, frames, n_iters=2, batch_size=2, progress=False)
    direct = E.encode(frames, n_iters=2)
    assert torch.allclose(enc.ws, direct.cpu(), atol=1e-5) and enc.total_steps == 0
    assert enc.settings["mode"] == "encoder" and len(enc.psnr) == 5
    ref = invert_with_encoder(E, G, frames, n_iters=2, batch_size=2, refine_steps=15, refine_lr=0.02,
                              cache_dir=tmp_path / "inv", progress=False)
    assert ref.total_steps > 0 and float(ref.mse.mean()) < float(enc.mse.mean())
    again = invert_with_encoder(E, G, frames, n_iters=2, batch_size=2, refine_steps=15, refine_lr=0.02,
                                cache_dir=tmp_path / "inv", progress=False)
    assert again.from_cache and torch.equal(again.ws, ref.ws)
    # the refinement interrupted in its third batch resumes from the two it finished (and the saved codes)
    for entry in (tmp_path / "inv").glob("enc-*"):
        entry.unlink()
    run, = (tmp_path / "inv" / "batches" / "refine").iterdir()
    (run / "images_000004-000004.json").unlink()
    E.encode = None  # the codes come from the saved ones, not from the encoder
    resumed = invert_with_encoder(E, G, frames, n_iters=2, batch_size=2, refine_steps=15, refine_lr=0.02,
                                  cache_dir=tmp_path / "inv", progress=False)
    del E.encode
    assert torch.allclose(resumed.ws, ref.ws, atol=1e-6) and not resumed.from_cache
    # a perceptual callable in refine_kwargs is keyed by its name, as invert's own cache keys it: a lambda (its
    # memory address, reused by another lambda) is refused with a folder, a named one is recorded by name
    with pytest.raises(ValueError, match="cache_key"):
        invert_with_encoder(E, G, frames[:1], n_iters=1, refine_steps=1, cache_dir=tmp_path / "inv",
                            refine_kwargs={"perceptual": lambda a, b: (a - b).abs().mean((1, 2, 3))}, progress=False)
    named = lambda a, b: (a - b).abs().mean((1, 2, 3))  # noqa: E731
    named.cache_key = "l1"
    keyed = invert_with_encoder(E, G, frames[:1], n_iters=1, refine_steps=1, cache_dir=tmp_path / "inv",
                                refine_kwargs={"perceptual": named}, progress=False)
    assert keyed.settings["refine_kwargs"]["perceptual"] == "callable:l1"


@pytest.mark.slow
def test_invert_reference_pti_and_fallback(tmp_path, tiny_g):
    from v2s_nb.method.encoder import invert_reference

    G = tiny_g
    E = load_encoder(save_released_format(tmp_path / "e.pt", make_encoder_sd(G.num_ws, G.w_dim, seed=9), G,
                                          G.mapping.w_avg.clone(), "BackboneEncoder"))
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    said = []
    inv, G_r = invert_reference(G, img, encoder=E, pti=True, pti_steps=3, progress=False, say=said.append,
                                locality_weight=0)
    assert not said and inv.settings["mode"] == "encoder" and G_r is not G
    assert not torch.equal(G_r.synthesis.L2_36_64.weight, G.synthesis.L2_36_64.weight)
    inv2, G_r2 = invert_reference(G, img, encoder=E, progress=False, say=said.append)
    assert G_r2 is G  # random-weight generator: PTI off by default
    other = tiny_generator("R", resolution=64, seed=4)
    inv3, _ = invert_reference(other, img, encoder=E, pti=False, invert_steps=2, progress=False, say=said.append)
    assert said and "optimisation" in said[0] and inv3.settings["mode"] == "invert"
