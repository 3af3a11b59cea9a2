"""The fast path's per-layer autograd Function (v2s_nb/stylegan3/fast_layer.py), run on the CPU where its pieces fall
back to the plain ops: its gradients against autograd through the plain path, and what it saves for backward.
(With the Triton kernels, on CUDA: tests/test_fast_path.py's gradient tests.)"""

import contextlib

import pytest
import torch

from conftest import mapped_ws, requires_cuda
from v2s_nb.stylegan3 import (build_generator, fast_config, fast_conv, fast_layer, fast_ops, fast_path, networks,
                              tiny_generator)


def _fast_layers(syn, x, styles, out_gain, function=True):
    """The synthesis layers through the fast path's layer logic on the CPU: with ``function`` the layers run as the
    Function (asserted), else as ordinary autograd over the fast path's ops."""
    with fast_layer.on_any_device(), fast_config.override(layer_function=function):
        plans = [fast_path.plan_for(getattr(syn, n), x.device) for n in syn.layer_names]
        assert all(fast_layer.applies(p, p.layer, x, styles[n]) == (function and not p.is_torgb)
                   for p, n in zip(plans[:1], syn.layer_names))
        out, _ = fast_path.run_layers(syn, x, styles, out_gain=out_gain)
    return out


def _grads(syn, ws, how):
    """Image and gradients {'ws', parameter name: ...} of the mean squared image for float32 ``ws``."""
    syn.zero_grad(set_to_none=True)
    w = ws.detach().clone().requires_grad_(True)
    styles = syn.styles(w)
    if how == "plain":
        img = syn.from_styles(styles, impl="plain")
    else:
        img = _fast_layers(syn, syn.input.forward_styles(styles["input"]), styles, syn.output_scale,
                           function=how == "function")
    img.square().mean().backward()
    return img.detach(), {"ws": w.grad, **{n: p.grad for n, p in syn.named_parameters()}}


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("cfg", ["R", "T"])
def test_function_gradients_equal_the_plain_path_float32(cfg):
    """Gradients w.r.t. ws and every synthesis parameter. T's demodulated 3x3 layers run as scale, shared
    convolution, scale on the fast path and as one kernel per sample on the plain path: their weight gradients
    differ by float32 rounding (up to 2e-5 here), the same with or without the Function, which gives the ordinary
    autograd fast path's gradients to 1e-6."""
    G = tiny_generator(cfg, seed=0)
    syn = G.synthesis.requires_grad_(True)
    ws = mapped_ws(G, 2, seed=1)
    img_p, plain = _grads(syn, ws, "plain")
    img_f, fn = _grads(syn, ws, "function")
    _, old = _grads(syn, ws, "autograd")
    assert _rel(img_f, img_p) < 1e-6
    assert len(fn) == len(list(syn.parameters())) + 1
    for name, ref in plain.items():
        assert fn[name] is not None, name
        if float(ref.norm()) == 0:
            assert float(fn[name].norm()) == 0, name
            continue
        assert _rel(fn[name], ref) < (1e-5 if name == "ws" or cfg == "R" else 5e-5), (name, _rel(fn[name], ref))
        assert _rel(fn[name], old[name]) < 1e-6, (name, _rel(fn[name], old[name]))


def test_function_gradients_with_channels_padded_for_tensor_cores(monkeypatch):
    """On CUDA in fp16 the 3x3 convolutions run on channels padded to multiples of 8 (forward and the Function's
    backward); forced here on the CPU in float32 (tiny T has 13- and 10-channel layers): the same gradients."""
    from v2s_nb.stylegan3 import ops

    G = tiny_generator("T", seed=0)
    syn = G.synthesis.requires_grad_(True)
    assert any(getattr(syn, n).out_channels % 8 for n in syn.layer_names[:-1])
    ws = mapped_ws(G, 2, seed=4)
    _, ref = _grads(syn, ws, "function")
    monkeypatch.setattr(ops, "_pad_for_tensor_cores", lambda t, dtype=None: True)
    _, padded = _grads(syn, ws, "function")
    for name, r in ref.items():  # float32 sums in another order (the padded matrix products): rounding only
        assert _rel(padded[name], r) < 5e-6 if float(r.norm()) else float(padded[name].norm()) == 0, name


@pytest.mark.parametrize("cfg", ["R", "T"])
def test_function_gradients_equal_the_plain_path_float64(cfg, monkeypatch):
    """In float64 (the layers' compute dtype made float64; the styles from float64 ws through the layers' affines; a
    float64 input feature map) the Function's gradients w.r.t. ws, the input and every layer parameter equal the
    plain path's to 1e-10."""
    monkeypatch.setattr(networks.SynthesisLayer, "compute_dtype", lambda self, device, force_fp32=False: torch.float64)
    G = tiny_generator(cfg, seed=0)
    syn = G.synthesis
    ws = mapped_ws(G, 2, seed=2)
    with torch.no_grad():
        x0 = syn.input.forward_styles(syn.styles(ws)["input"]).double()
    ws = ws.double()
    G.double()
    layers = [getattr(syn, n) for n in syn.layer_names]
    for layer in layers:
        layer.requires_grad_(True)
    results = {}
    for how in ("plain", "function"):
        syn.zero_grad(set_to_none=True)
        w, x = ws.clone().requires_grad_(True), x0.clone().requires_grad_(True)
        styles = {n: layer.affine(w[:, i + 1]) for i, (n, layer) in enumerate(zip(syn.layer_names, layers))}
        if how == "plain":
            out = x
            for n, layer in zip(syn.layer_names, layers):
                out = layer.forward_styles(out, styles[n], impl="plain")
        else:
            out = _fast_layers(syn, x, styles, 1.0)
        assert out.dtype == torch.float64
        out.square().mean().backward()
        results[how] = {"ws": w.grad, "x": x.grad,
                        **{f"{n}.{k}": p.grad for n, layer in zip(syn.layer_names, layers)
                           for k, p in layer.named_parameters()}}
    for name, ref in results["plain"].items():
        got = results["function"][name]
        assert got is not None and got.dtype == torch.float64, name
        assert _rel(got, ref) < 1e-10, (name, _rel(got, ref))


def test_1x1_backward_in_chunks_of_samples_gives_the_whole_batch_gradients(monkeypatch):
    """R's layers take their backward a chunk of samples at a time (fast_ops.backward_chunk), each chunk through to
    the layer's own gradients, so the activation's gradient never exists for the whole batch: chunks of 2 + 1
    samples give the one-chunk gradients w.r.t. ws and every parameter, and the activation's backward saw no more
    than 2 samples at a time."""
    G = tiny_generator("R", seed=0)
    syn = G.synthesis.requires_grad_(True)
    ws = mapped_ws(G, 3, seed=5)
    _, whole = _grads(syn, ws, "function")
    seen = []
    monkeypatch.setattr(fast_layer, "_activation_backward",
                        lambda *a, f=fast_layer._activation_backward: seen.append(a[3].shape[0]) or f(*a))
    monkeypatch.setattr(fast_ops, "backward_chunk", lambda shape: 2)
    _, chunked = _grads(syn, ws, "function")
    assert seen and max(seen) == 2 and sum(seen) == 3 * (len(syn.layer_names) - 1)
    for name, ref in whole.items():
        if float(ref.norm()) == 0:
            assert float(chunked[name].norm()) == 0, name
            continue
        assert _rel(chunked[name], ref) < 1e-6, (name, _rel(chunked[name], ref))


def _check_saved_per_layer(G, n, force_fp32=False, any_device=False):
    """Per synthesis layer but ToRGB, with gradients w.r.t. its input, styles and parameters: the feature maps
    autograd keeps are the layer's input x and its convolution's output y, once each, the rest is small
    (per-sample / weight-sized); ordinary autograd over the same ops (layer_function off) keeps more."""
    syn = G.synthesis.requires_grad_(True)
    ws = mapped_ws(G, n, seed=3).to(G.device)
    with torch.no_grad():
        styles = syn.styles(ws)
        x = syn.input.forward_styles(styles["input"])
    checked = 0
    for name in syn.layer_names[:-1]:  # ToRGB keeps ordinary autograd
        layer = getattr(syn, name)
        plan = fast_path.plan_for(layer, x.device)
        xin = x.detach().to(plan.dtype(force_fp32)).requires_grad_(True)
        st = styles[name].detach().requires_grad_(True)

        def saved_tensors(function):
            saved = {}

            def pack(t):
                saved[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                    fast_layer.on_any_device() if any_device else contextlib.nullcontext(), \
                    fast_config.override(layer_function=function):
                out = plan.forward(xin, st, force_fp32=force_fp32)
            return saved, out

        saved, out = saved_tensors(True)
        k = layer.conv_kernel
        y_shape = (n, layer.out_channels, x.shape[2] + k - 1, x.shape[3] + k - 1)  # the convolution's output
        maps = {key: v for key, v in saved.items() if len(key[2]) == 4 and key[2][2] * key[2][3] > 9}  # not kernels
        # The activation's derivative codes (fast_config saved_codes, where the kernels run): 2 bits per sample
        # of each output tile's upsampled block; then the 1x1 layers (no input gain) keep no y.
        codes = {key: v for key, v in saved.items() if key[1] == torch.uint8 and len(key[2]) == 6}
        expected = [tuple(x.shape), y_shape] if k == 3 or not codes else [tuple(x.shape)]
        assert sorted(key[2] for key in maps) == sorted(expected), (name, list(maps))
        assert all(key[1] == xin.dtype for key in maps), (name, list(maps))
        if codes:  # at most 2x the upsampled y's 2 bits per sample (the tiles' overlap), plus up to four of the
            # tiles' [BU, BU // 4]-byte blocks per plane (small planes: 2 x 2 tiles of 64 over 76 upsampled samples)
            y_numel = y_shape[0] * y_shape[1] * y_shape[2] * y_shape[3]
            bu = next(iter(codes))[2][-2]
            bound = 2 * y_numel * layer.up_factor ** 2 / 4 + 4 * y_shape[0] * y_shape[1] * bu * bu // 4
            assert sum(codes.values()) <= bound, (name, sum(codes.values()), bound)
        small = sum(saved.values()) - sum(maps.values()) - sum(codes.values())
        # the modulation's weight-sized tensors: R's per-sample weight [N, O, I] and its steps, the shared kernel
        weight_sized = 8 * (n + 1) * layer.weight.numel() * 4
        vectors = 16 * n * (layer.in_channels + layer.out_channels) * 4
        assert small <= weight_sized + vectors, (name, small)
        old, _ = saved_tensors(False)
        if any_device:  # the CPU's plain operator saves more than x's size beyond what the Function keeps (on
            # CUDA the ops' own autograd Functions keep x and y as well: there the Function's gain is speed)
            assert sum(old.values()) > sum(saved.values()) + xin.numel() * xin.element_size(), name
        x = out.detach()
        checked += 1
    assert checked == len(syn.layer_names) - 1


@pytest.mark.parametrize("cfg", ["R", "T"])
def test_function_saves_only_the_input_and_the_convolution_output(cfg):
    _check_saved_per_layer(tiny_generator(cfg, seed=0), 2, any_device=True)


@requires_cuda
@pytest.mark.parametrize("cfg", ["R", "T"])
def test_function_saves_only_the_input_and_the_convolution_output_on_gpu(cfg):
    """The same with the kernels, mixed precision (fp16 layers' x and y in fp16, unpadded channels)."""
    G = build_generator(cfg, resolution=256, device="cuda", seed=0, channel_scale=0.25)
    _check_saved_per_layer(G, 2)


def test_function_is_used_only_where_it_applies():
    """Only under autograd, with something of the layer requiring grad, not for ToRGB, and with the knob on; on the
    CPU only inside on_any_device."""
    G = tiny_generator("T", seed=0)
    syn = G.synthesis
    first, torgb = (getattr(syn, n) for n in (syn.layer_names[0], syn.layer_names[-1]))
    x = torch.randn(1, first.in_channels, 8, 8, requires_grad=True)
    st = torch.randn(1, first.in_channels)
    plan = fast_path.plan_for(first, x.device)
    assert not fast_layer.applies(plan, first, x, st)  # the CPU, outside on_any_device
    with fast_layer.on_any_device():
        assert fast_layer.applies(plan, first, x, st)
        assert not fast_layer.applies(plan, first, x.detach(), st)  # nothing requires grad
        with torch.no_grad():
            assert not fast_layer.applies(plan, first, x, st)
        with fast_config.override(layer_function=False):
            assert not fast_layer.applies(plan, first, x, st)
        tplan = fast_path.plan_for(torgb, x.device)
        assert not fast_layer.applies(tplan, torgb, torch.randn(1, torgb.in_channels, 8, 8, requires_grad=True),
                                      torch.randn(1, torgb.in_channels))
    assert not fast_layer.applies(plan, first, x, st)  # restored after the block


def test_scaled_input_rows_padded_for_the_rows_convolution():
    """fast_conv's scaled copy of the convolution's input: x * scale, rows padded to the alignment (a view, the
    values unchanged), contiguous with alignment 1."""
    g = torch.Generator().manual_seed(5)
    x, s = torch.randn(2, 3, 5, 7, generator=g), torch.randn(2, 3, generator=g)
    plain = fast_conv.scaled_rows(x, s, 1)
    rows = fast_conv.scaled_rows(x, s, 8)
    assert plain.is_contiguous() and torch.equal(plain, x * s[:, :, None, None])
    assert rows.stride() == (3 * 5 * 8, 5 * 8, 8, 1) and torch.equal(rows, plain)


@pytest.mark.parametrize("cfg", ["R", "T"])
def test_only_a_convolution_weight_trained(cfg):
    """Only one layer's weight requires grad (no input, style or scale gradient is wanted): the Function computes
    that weight's gradient alone, equal to the plain path's."""
    G = tiny_generator(cfg, resolution=16, seed=1, channel_max=4)
    syn = G.synthesis
    syn.requires_grad_(False)
    layer = getattr(syn, syn.layer_names[3])
    layer.weight.requires_grad_(True)
    ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)), None)
    grads = []
    for how in ("function", "plain"):
        layer.weight.grad = None
        styles = syn.styles(ws)
        if how == "function":
            x = syn.input.forward_styles(styles["input"])
            with fast_layer.on_any_device():
                plan = fast_path.plan_for(layer, x.device)
                assert fast_layer.applies(plan, layer, x, styles[syn.layer_names[3]])
                img, _ = fast_path.run_layers(syn, x, styles, out_gain=syn.output_scale)
        else:
            img = syn.from_styles(styles, impl="plain")
        img.square().mean().backward()
        grads.append(layer.weight.grad.clone())
    assert _rel(*grads) < 5e-5


def test_weight_gradients_beside_the_backward_give_the_same_gradients(monkeypatch):
    """fast_config overlap_weight_grads: the 3x3 layers' kernel gradients computed apart (on the CPU in turn, with the
    same bookkeeping as the side stream: the kernels made ahead through a join node each) give the same gradients;
    every join's backward runs after every layer's backward (so on CUDA the weights' gradients are read only after
    the side work is waited for); and a backward that wants only ws' gradient computes no kernel gradient."""
    G = tiny_generator("T", seed=0)
    syn = G.synthesis.requires_grad_(True)
    ws = mapped_ws(G, 2, seed=1)
    _, ref = _grads(syn, ws, "function")
    order = []
    beside = fast_layer._kernel_grad_beside
    monkeypatch.setattr(fast_layer, "_kernel_grad_beside", lambda *a: order.append("layer") or beside(*a))
    join = fast_layer._KernelGradJoin.backward
    monkeypatch.setattr(fast_layer._KernelGradJoin, "backward", lambda ctx, g: order.append("join") or join(ctx, g))
    with fast_config.override(overlap_weight_grads=True):
        _, got = _grads(syn, ws, "function")
        n3x3 = sum(getattr(syn, n).conv_kernel > 1 for n in syn.layer_names[:-1])
        assert order == ["layer"] * n3x3 + ["join"] * n3x3
        for name, g in ref.items():  # (the engine adds some gradients in another order: float32 rounding)
            assert got[name] is not None and _rel(got[name], g) < 1e-6, name
        # gradients of ws only, the weights still requiring grad: no kernel gradient is computed
        order.clear()
        w = ws.detach().clone().requires_grad_(True)
        styles = syn.styles(w)
        img = _fast_layers(syn, syn.input.forward_styles(styles["input"]), styles, syn.output_scale)
        (g_w,) = torch.autograd.grad(img.square().mean(), [w])
        assert order == [] and _rel(g_w, ref["ws"]) < 1e-6
        # synthesis stopping early: kernels made ahead for the layers that run only
        made = []
        ahead = fast_layer.kernels_ahead
        monkeypatch.setattr(fast_layer, "kernels_ahead", lambda p, x: made.append(ahead(p, x)) or made[-1])
        with fast_layer.on_any_device():
            fast_path.run_layers(syn, syn.input.forward_styles(styles["input"]), styles, stop_after=syn.layer_names[2])
        assert [p.layer for p in made[0]] == [getattr(syn, n) for n in syn.layer_names[:3]]
    # the same without the side stream's bookkeeping
    computed = []  # (the CPU's in-turn path: _cudnn_grads, whose last argument asks for the kernel's gradient)
    cudnn_grads = fast_layer._cudnn_grads
    monkeypatch.setattr(fast_layer, "_cudnn_grads", lambda *a: computed.append(a[-1]) or cudnn_grads(*a))
    w = ws.detach().clone().requires_grad_(True)
    styles = syn.styles(w)
    img = _fast_layers(syn, syn.input.forward_styles(styles["input"]), styles, syn.output_scale)
    (g_w,) = torch.autograd.grad(img.square().mean(), [w])
    assert computed and not any(computed) and _rel(g_w, ref["ws"]) < 1e-6
