"""fast_ops' filtered leaky ReLU kernels against the plain operator (ops.filtered_lrelu), under Triton's interpreter:
every forward variant on small float32 planes, the fused backward kernel, and the fp16 single-term forms."""

import pytest
import torch

from v2s_nb.stylegan3 import build_generator, fast_config, fast_ops, ops, tiny_generator
from triton_interpreter_probe import CountedLaunches, interpreter_runs_kernels_like_ours  # noqa: F401 (autouse)

# The fused kernel's forms (kind, tile, output-column halves): the default for float32 (banded, halves), banded
# without halves, the whole-window kernel, banded on 128-wide tiles (window split 64 + 16).
FUSED = [("banded", 64, True), ("banded", 64, False), ("dense", 64, False), ("banded", 128, False)]
# Then the unfused kernels (gather upsampler, separable radial down filter), and the tensor-core upsampler and the
# matrix-product radial filter, forced.
UNFUSED = {"gather": dict(use_fused=False),
           "forced_products": dict(use_fused=False, DOT_MIN_WIDTH=0, DOT_UP_DTYPES=(torch.float32,), MAX_RANK=0)}
VARIANTS = ([(cfg, f"{kind}-{tile}{'-halves' if halves else ''}", dict(FUSED_CHOICE={}, FUSED_MIN_OUT={},
                                                                      FUSED_DEFAULT={torch.float32: choice}))
             for kind, tile, halves in FUSED for choice in [(kind, tile, halves)] for cfg in "RT"]
            + [(cfg, name, overrides) for name, overrides in UNFUSED.items() for cfg in ("RT" if name == "gather" else "R")])


@pytest.fixture(autouse=True)
def fresh_caches():
    """The filter plans are cached per module; a test that changes the tuning values must not see another's plans."""
    fast_ops._terms_cache.clear()
    fast_ops._fused_cache.clear()
    yield
    fast_ops._terms_cache.clear()
    fast_ops._fused_cache.clear()


def _layers(cfg):
    """A tiny generator's synthesis layers (not ToRGB) with each one's input, from the plain path: [(layer, x)]."""
    G = tiny_generator(cfg, resolution=32, seed=1, channel_max=4)
    syn = G.synthesis
    ws = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0)), None)
    styles = syn.styles(ws)
    x = syn.input.forward_styles(styles["input"])
    for name in syn.layer_names[:-1]:
        layer = getattr(syn, name)
        y = ops.modulated_conv2d(x, layer.weight, styles[name], padding=layer.conv_kernel - 1,
                                 input_gain=layer.magnitude_ema.rsqrt())
        yield name, layer, y.detach()
        x = ops.filtered_lrelu(y, layer.up_filter, layer.down_filter, layer.bias, up=layer.up_factor,
                               down=layer.down_factor, padding=layer.padding, gain=2 ** 0.5, slope=0.2,
                               clamp=layer.conv_clamp).detach()


def _relative(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-6))


@pytest.mark.parametrize("cfg, variant, overrides", VARIANTS, ids=[f"{c}-{v}" for c, v, _ in VARIANTS])
def test_forward_variant_matches_the_plain_operator(cfg, variant, overrides, monkeypatch):
    settings = {k: v for k, v in overrides.items() if k.islower()}  # fast_config's knobs; the rest: measured choices
    for key, value in overrides.items():
        if not key.islower():
            monkeypatch.setattr(fast_ops, key, value)
    with fast_config.override(**settings):
        _check_forward_variant(cfg, overrides)


def _check_forward_variant(cfg, overrides):
    fused = fast_config.current().use_fused
    worst = 0.0
    for name, L, y in _layers(cfg):
        args = (L.up_filter, L.down_filter, L.bias)
        a = ops.filtered_lrelu(y, *args, up=L.up_factor, down=L.down_factor, padding=L.padding, gain=2 ** 0.5,
                               slope=0.2, clamp=L.conv_clamp)
        fast_args = (*args, L.up_factor, L.down_factor, L.padding, 2 ** 0.5, 0.2, float(L.conv_clamp))
        b = fast_ops.fast_filtered_lrelu_forward(y, *fast_args)
        assert a.shape == b.shape, (name, a.shape, b.shape)
        worst = max(worst, _relative(b, a))
        if fused and L.down_filter.ndim == 1:  # output written into a channel-padded buffer
            p = fast_ops.fast_filtered_lrelu_forward(y, *fast_args, pad_channels_to=8)
            assert torch.equal(p, b) and ops.zero_padded_channels(p) is not None
            assert not ops.zero_padded_channels(p)[:, p.shape[1]:].any()
        if fused:  # input as a channel slice of a larger buffer, with per-plane factors
            gen = torch.Generator().manual_seed(len(name))
            g = torch.rand(y.shape[:2], generator=gen) + 0.5
            s = torch.rand(y.shape[:2], generator=gen) + 0.5
            big = torch.zeros(y.shape[0], y.shape[1] + 3, *y.shape[2:])
            big[:, :y.shape[1]] = y / g[:, :, None, None]
            q = fast_ops.fast_filtered_lrelu_forward(big[:, :y.shape[1]], *fast_args, in_gain=g, out_scale=s)
            worst = max(worst, _relative(q, b * s[:, :, None, None]))
    assert worst < 1e-5
    if fused:  # the fused variant ran (no silent fall back to the unfused kernels)
        tiles = {plan["bu"] for plan, _ in fast_ops._fused_cache.values() if plan is not None}
        assert tiles == {overrides["FUSED_DEFAULT"][torch.float32][1]}


@pytest.mark.parametrize("cfg, chunks, via_codes, tile, forward_split, cols_first",
                         [("R", None, False, 64, None, False), ("T", None, False, 64, None, False),
                          ("T", "samples", False, 64, None, False), ("R", None, True, 64, None, False),
                          ("T", "samples", True, 64, None, False), ("T", None, True, 128, None, False),
                          ("T", None, True, 128, 2, False), ("R", None, True, 64, None, True),
                          ("T", None, True, 128, None, True), ("R", None, True, 128, None, True),
                          ("T", "pieces", False, 64, None, False), ("R", "pieces", True, 64, None, True)])
def test_fused_backward_matches_autograd(cfg, chunks, via_codes, tile, forward_split, cols_first, monkeypatch):
    """The fused backward kernel against autograd through the plain operator, a small clamp on every other layer so
    that clamped samples (zero gradient) occur, an input gain (the demodulation the fast path folds in) on every
    other layer, one of them with a zero gain; down-filters needing more than MAX_RANK terms return None. Also with
    the batch taken one sample at a time (chunks 'samples': what a chunk_mb smaller than one sample's float32 sums
    makes it do), and each sample in pieces of three channels ('pieces': what batch 1 does with planes over
    SAMPLE_PIECE_BYTES of float32 sums; the gain, the bias and the sums taken per piece).
    via_codes: the training forward (its output against the plain operator's too) and the backward from the
    derivative codes it stored; on 128-wide tiles their window is taken in blocks (64 + 16 of 128 for 2x layers).
    forward_split: the training forward in that many row blocks, the backward in one (their launches differ).
    cols_first: the codes backward in its COLS_FIRST order (fast_ops.CODES_COLS_FIRST), in two row blocks (its sums
    run over them)."""
    monkeypatch.setattr(fast_ops, "BACKWARD_TILES", (tile,))  # float32 here: the 64-wide tile is allowed
    monkeypatch.setattr(fast_ops, "CODES_FLOAT32_TILES", (tile,))  # (on CUDA 64 only: shared memory)
    monkeypatch.setattr(fast_ops, "CODES_MIN_OUT", 0)  # the small test planes keep codes too
    if forward_split:
        monkeypatch.setattr(fast_ops, "CODES_FORWARD_LAUNCH", {(torch.float32, up): (forward_split, 4) for up in (2, 4)})
        monkeypatch.setattr(fast_ops, "CODES_LAUNCH", {})
    if chunks:
        monkeypatch.setattr(fast_config.FastConfig, "chunk_bytes", property(lambda self: 1))
    monkeypatch.setattr(fast_ops, "CODES_COLS_FIRST", cols_first)
    if cols_first:
        monkeypatch.setattr(fast_ops, "CODES_LAUNCH", {(torch.float32, up): (2, 4) for up in (2, 4)})
    worst, checked, layers, gained, pieced = 0.0, 0, 0, 0, 0
    for i, (name, L, y) in enumerate(_layers(cfg)):
        layers += 1
        if chunks == "pieces":
            monkeypatch.setattr(fast_ops, "SAMPLE_PIECE_BYTES", 3 * y.shape[2] * y.shape[3] * 4)
            pieces = fast_ops.backward_pieces(y.shape)
            assert all(n1 - n0 == 1 and c1 - c0 in (2, 3) for n0, n1, c0, c1 in pieces)
            pieced += len(pieces) > y.shape[0]
        clamp = 0.5 if i % 2 else float(L.conv_clamp)
        g = None
        if i % 2 == 0:
            g = torch.rand(y.shape[:2], generator=torch.Generator().manual_seed(100 + i)) + 0.5
            if i % 4 == 0:
                g[0, 0] = 0.0
        # A random bias: with a zero gain and a zero bias the pre-activation is 0 exactly, where the plain operator
        # and the kernel take different sides of the derivative's jump.
        b = torch.randn(L.bias.shape, generator=torch.Generator().manual_seed(200 + i))
        yd, bd = y.clone().requires_grad_(True), b.clone().requires_grad_(True)
        inputs = [yd, bd]
        a = yd
        if g is not None:
            gd = g.clone().requires_grad_(True)
            inputs.append(gd)
            a = yd * gd[:, :, None, None]
        out = ops.filtered_lrelu(a, L.up_filter, L.down_filter, bd, up=L.up_factor, down=L.down_factor,
                                 padding=L.padding, gain=2 ** 0.5, slope=0.2, clamp=clamp)
        gy = torch.randn(out.shape, generator=torch.Generator().manual_seed(i))
        expected = torch.autograd.grad(out, inputs, gy)
        spec = (L.up_filter, L.down_filter, b, L.up_factor, L.down_factor, L.padding, 2 ** 0.5, 0.2, clamp)
        if via_codes:
            res = fast_ops.forward_with_codes(y, *spec, in_gain=g)
            if res is not None:
                worst = max(worst, _relative(res[0], out.detach()))
                assert res[1].dtype == torch.uint8 and res[1].shape[:2] == y.shape[:2]
                res = fast_ops.backward_from_codes(res[1], gy, y.shape, y.dtype, *spec[:2], *spec[3:8], x=y,
                                                   in_gain=g)
        else:
            res = fast_ops.fused_filtered_lrelu_backward(y, *spec, gy, in_gain=g)
        if res is not None:
            checked += 1
            assert (res[2] is None) == (g is None)
            got = res[:3] if g is not None else res[:2]
            worst = max(worst, *(_relative(r, e) for r, e in zip(got, expected)))
            gained += g is not None
    assert checked >= layers - 4, (checked, layers)  # most layers went through the fused backward
    assert gained >= 2
    assert pieced >= (layers - 4 if chunks == "pieces" else 0)
    assert worst < 1e-5


def test_single_term_forms_match_the_general_ones(monkeypatch):
    """fp16 layers with a one-term down-filter (T): the single-term banded kernel (2x; its interior tiles without
    bounds tests) and the dense kernel with its matrices loaded first (4x) give what the general forms give, and the
    plain operator's values; each form writes the same values into row-padded buffers (``row_align``)."""
    G = build_generator("T", resolution=256, channel_scale=0.0625, seed=0)
    syn = G.synthesis
    g = torch.Generator().manual_seed(0)
    counts = {"single": 0, "single_unmasked": 0, "dense": 0, "dense_unmasked": 0}
    monkeypatch.setattr(fast_ops, "_fused_single_term_kernel",
                        CountedLaunches(fast_ops._fused_single_term_kernel, counts, "single"))
    monkeypatch.setattr(fast_ops, "_fused_dense_kernel", CountedLaunches(fast_ops._fused_dense_kernel, counts, "dense"))
    ups = set()
    for name in (syn.layer_names[10], syn.layer_names[11]):
        L = getattr(syn, name)
        h = int(L.in_size[0]) + 2
        y = torch.randn(1, 2, h, h, generator=g).half()
        gi, so = torch.rand(1, 2, generator=g) + 0.5, torch.rand(1, 2, generator=g) + 0.5
        args = (L.up_filter, L.down_filter, L.bias[:2], L.up_factor, L.down_factor, L.padding, 2 ** 0.5, 0.2, 256.0)

        def forward(**kw):
            return fast_ops.fused_filtered_lrelu_forward(y, *args, in_gain=gi, out_scale=so, **kw)

        def assert_row_padded_same(ref):
            rows = forward(row_align=8)
            assert rows.stride(2) % 8 == 0 and rows.stride(2) > rows.shape[3]  # rows padded in memory
            assert torch.equal(rows.float(), ref)

        new = forward().float()
        assert_row_padded_same(new)
        with monkeypatch.context() as m:  # the general forms
            m.setattr(fast_ops, "SINGLE_TERM_DTYPES", ())
            m.setattr(fast_ops, "DENSE_MATS_FIRST", False)
            old = forward().float()
            assert_row_padded_same(old)
        with monkeypatch.context() as m:  # bounds tests on every tile
            m.setattr(fast_ops, "ALWAYS_MASKED", True)
            masked = forward().float()
        plain = ops.filtered_lrelu(y.float() * gi[:, :, None, None], L.up_filter, L.down_filter, L.bias[:2],
                                   up=L.up_factor, down=L.down_factor, padding=L.padding, clamp=256.0)
        plain = plain * so[:, :, None, None]
        ups.add(L.up_factor)
        assert _relative(new, masked) < 1e-3 and _relative(new, old) < 1e-3
        assert _relative(new, plain) < 1e-2  # fp16 storage and products
    assert ups == {2, 4}
    assert counts["single"] >= 2 and counts["single_unmasked"] >= 1  # interior tiles ran without bounds tests
    assert counts["dense_unmasked"] >= 1


@pytest.mark.parametrize("cfg, tile, cols_first", [("T", 64, True), ("T", 128, False), ("T", 128, True),
                                                   ("R", 64, True), ("R", 128, True)])
def test_fp16_codes_give_the_float32_gradients(cfg, tile, cols_first, monkeypatch):
    """fp16 layers of T and R (radial down-filters: 2-3 separable terms), a 2x and a 4x one, through the training forward and the backward from its codes on
    ``tile``-wide tiles (fast_ops.CODES_TILES; on 64-wide 2x tiles the window in blocks, 32 + 16 of 64:
    CODES_BLOCK_WINDOWS): output and gradients (input, bias, input gain) as close to float32 autograd through the
    plain operator as the recomputing backward's (fp16 storage and products: up to 1.2e-2 relative, the bias'
    gradient), and the codes' tiles are the ones asked for. The training forward's interior tiles ran without
    bounds tests, with the output and codes of one all-masked launch (fast_ops.TRAIN_INTERIOR_UNMASKED off) bit
    for bit. The backward from codes in either order of its window products (fast_ops.CODES_COLS_FIRST): rows
    first on 128-wide tiles is the recomputing backward's order, its values bit for bit."""
    monkeypatch.setattr(fast_ops, "CODES_TILES", {(torch.float16, up): (tile,) for up in (2, 4)})
    monkeypatch.setattr(fast_ops, "CODES_COLS_FIRST", cols_first)
    counts = {}
    monkeypatch.setattr(fast_ops, "_fused_train_kernel", CountedLaunches(fast_ops._fused_train_kernel, counts, "train"))
    monkeypatch.setattr(fast_ops, "CODES_MIN_OUT", 0)
    G = build_generator(cfg, resolution=256, channel_scale=0.0625, seed=0)
    syn = G.synthesis
    gen = torch.Generator().manual_seed(3)
    ups = set()
    for name in (syn.layer_names[10], syn.layer_names[11]):
        L = getattr(syn, name)
        h = int(L.in_size[0]) + 2
        y = torch.randn(1, 2, h, h, generator=gen).half()
        g = torch.rand(1, 2, generator=gen) + 0.5
        b = torch.randn(2, generator=gen) * 0.5
        spec = (L.up_filter, L.down_filter, b, L.up_factor, L.down_factor, L.padding, 2 ** 0.5, 0.2, 256.0)
        out, codes = fast_ops.forward_with_codes(y, *spec, in_gain=g)
        assert codes.shape[-2:] == (tile, tile // 4)
        with monkeypatch.context() as m:
            m.setattr(fast_ops, "TRAIN_INTERIOR_UNMASKED", False)
            masked = fast_ops.forward_with_codes(y, *spec, in_gain=g)
        assert torch.equal(out, masked[0]) and torch.equal(codes, masked[1]), name
        yd, bd, gd = y.float().requires_grad_(True), b.clone().requires_grad_(True), g.clone().requires_grad_(True)
        ref = ops.filtered_lrelu(yd * gd[:, :, None, None], L.up_filter, L.down_filter, bd, up=L.up_factor,
                                 down=L.down_factor, padding=L.padding, gain=2 ** 0.5, slope=0.2, clamp=256.0)
        gy = torch.randn(ref.shape, generator=gen)
        expected = torch.autograd.grad(ref, (yd, bd, gd), gy)
        got = fast_ops.backward_from_codes(codes, gy.half(), y.shape, y.dtype, *spec[:2], *spec[3:8], x=y, in_gain=g)
        assert _relative(out.float(), ref.detach()) < 1e-2
        recomputed = fast_ops.fused_filtered_lrelu_backward(y, *spec, gy.half(), in_gain=g)  # 128-wide tiles
        for r, e, f in zip(got, expected, recomputed):
            r, f = r.float(), f.float()
            if tile == 128 and not cols_first:  # the recomputing backward's tiles and products: bit for bit
                assert torch.equal(r, f), name
            else:  # other tiles or order: other rounding (measured up to 1.2e-3), as close to float32
                assert float((r - f).norm() / f.norm()) < 3e-3, name
            assert float((r - e).norm() / e.norm()) <= 1.2 * float((f - e).norm() / e.norm()) + 1e-4, name
        ups.add(L.up_factor)
    assert ups == {2, 4}
    assert counts["train_unmasked"] >= 2  # interior tiles on both layers
