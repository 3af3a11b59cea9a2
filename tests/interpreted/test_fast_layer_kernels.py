"""The fast path's per-layer autograd Function (fast_layer) with the Triton kernels, under Triton's interpreter: the
filtered leaky ReLU's fused forward (demodulation applied in the kernel) and fused backward on CPU tensors, float32.
Gradients w.r.t. ws and every synthesis parameter equal autograd through the plain path, for tiny R and T."""

import pytest
import torch

from v2s_nb.stylegan3 import fast_config, fast_layer, fast_ops, fast_path, tiny_generator
from conftest import KernelTooBig
from triton_interpreter_probe import interpreter_runs_kernels_like_ours  # noqa: F401 (autouse fixture)


@pytest.mark.parametrize("cfg, saved_codes, recompute, codes_up, dcoefs_from_kernel_grad", [
    ("R", True, False, None, False), ("T", True, False, None, False), ("T", True, True, None, False),
    ("T", False, False, None, False), ("T", True, False, (4,), False), ("T", True, False, None, True)])
def test_layer_function_with_the_kernels_gives_the_plain_gradients(cfg, saved_codes, recompute, codes_up,
                                                                    dcoefs_from_kernel_grad, monkeypatch):
    """saved_codes (the default): the forward stores the activation's derivative and the backward reads it; else the
    backward recomputes it from the saved convolution output. recompute: T's convolution output recomputed in the
    backward (for the demodulation's gradient), not kept. codes_up: fast_layer.CODES_3X3_UP_WEIGHTS (the weights
    train here; tiny T's layers are all 2x: (4,) sends them all the recomputing way). dcoefs_from_kernel_grad: every
    3x3 layer with codes keeps no convolution output and takes the demodulation's gradient from its kernel's
    per-sample gradient (fast_layer.DCOEFS_FROM_KERNEL_GRAD_PIXELS / _CHANNELS down to 0; tiny planes are under
    them)."""
    if codes_up is not None:
        monkeypatch.setattr(fast_layer, "CODES_3X3_UP_WEIGHTS", codes_up)
    if dcoefs_from_kernel_grad:
        monkeypatch.setattr(fast_layer, "DCOEFS_FROM_KERNEL_GRAD_PIXELS", 0)
        monkeypatch.setattr(fast_layer, "DCOEFS_FROM_KERNEL_GRAD_CHANNELS", 0)
    per_sample = []
    monkeypatch.setattr(fast_layer, "_kernel_grad_per_sample",
                        lambda *a, f=fast_layer._kernel_grad_per_sample: per_sample.append(1) or f(*a))
    # the kernels on CPU tensors (the interpreter runs them there), as they run on CUDA
    monkeypatch.setattr(fast_ops, "can_use_fast", lambda x, fu, fd: fu is not None and fd is not None and fu.ndim == 1)
    G = tiny_generator(cfg, resolution=16, seed=1, channel_max=4)
    syn = G.synthesis.requires_grad_(True)
    ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)), None)
    used = []
    monkeypatch.setattr(fast_layer, "layer_forward", lambda *a, f=fast_layer.layer_forward: used.append(1) or f(*a))
    coded = []
    monkeypatch.setattr(fast_ops, "forward_with_codes",
                        lambda *a, f=fast_ops.forward_with_codes, **k: (lambda r: coded.append(r is not None) or r)(
                            f(*a, **k)))
    monkeypatch.setattr(fast_config, "_current", fast_config._changed(dict(saved_codes=saved_codes,
                                                                                recompute_conv_output=recompute)))
    monkeypatch.setattr(fast_ops, "CODES_MIN_OUT", 0)  # the tiny planes take codes too
    results = [_step(syn, ws, fast) for fast in (False, True)]
    assert len(used) == len(syn.layer_names) - 1
    # R's layers and T's with fast_layer.CODES_3X3_UP upsampling through the codes (but float32 radial down-filters
    # needing more than MAX_RANK terms: 3 here), or none
    takes_codes = [cfg == "R" or getattr(syn, name).up_factor in fast_layer.CODES_3X3_UP_WEIGHTS
                   for name in syn.layer_names[:-1]]
    assert len(coded) == (sum(takes_codes) if saved_codes else 0) and sum(coded) >= len(coded) - 3, coded
    assert len(per_sample) == (sum(coded) if dcoefs_from_kernel_grad else 0)
    _assert_same(*results)


def _step(syn, ws, fast):
    """{image, ws' gradient, each parameter's} of one step (loss: mean square of the image), fast or plain path."""
    syn.zero_grad(set_to_none=True)
    w = ws.detach().clone().requires_grad_(True)
    styles = syn.styles(w)
    if fast:
        img, _ = fast_path.run_layers(syn, syn.input.forward_styles(styles["input"]), styles, out_gain=syn.output_scale)
    else:
        img = syn.from_styles(styles, impl="plain")
    img.square().mean().backward()
    return {"image": img.detach(), "ws": w.grad, **{n: p.grad for n, p in syn.named_parameters()}}


def _assert_same(plain, fast):
    for name, ref in plain.items():
        if float(ref.norm()) == 0:
            continue
        err = float((fast[name] - ref).norm() / ref.norm())
        assert err < 5e-5, (name, err)  # measured: 6e-6 at most (the input affine's gradients)


@pytest.mark.parametrize("cfg", ["R", "T"])
def test_a_codes_backward_too_big_for_the_gpu_recomputes_instead(cfg, monkeypatch):
    """Where the codes backward needs more shared memory than the GPU has (Triton raises OutOfResources as it loads
    the kernel: compiled for a T4, the fp16 2x layers' needs 136 KiB of its 64), the layers' backward recomputes the
    activation instead, with the same gradients, and the next training forwards store no codes on those tiles."""
    monkeypatch.setattr(fast_ops, "can_use_fast", lambda x, fu, fd: fu is not None and fd is not None and fu.ndim == 1)
    monkeypatch.setattr(fast_ops, "CODES_MIN_OUT", 0)
    monkeypatch.setattr(fast_ops, "_CODES_BACKWARD_UNFIT", set())
    monkeypatch.setattr(fast_ops, "_fused_backward_codes_kernel", KernelTooBig())
    coded = []
    monkeypatch.setattr(fast_ops, "forward_with_codes",
                        lambda *a, f=fast_ops.forward_with_codes, **k: (lambda r: coded.append(r is not None) or r)(
                            f(*a, **k)))
    G = tiny_generator(cfg, resolution=16, seed=1, channel_max=4)
    syn = G.synthesis.requires_grad_(True)
    ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)), None)
    plain = _step(syn, ws, False)
    _assert_same(plain, _step(syn, ws, True))
    first = list(coded)
    launches = fast_ops._fused_backward_codes_kernel.launches
    # codes stored; the first backward per kind of tile tried them, the layers after it knew
    assert any(first) and 1 <= launches <= sum(first)
    assert len(fast_ops._CODES_BACKWARD_UNFIT) >= 1
    del coded[:]
    _assert_same(plain, _step(syn, ws, True))
    assert len(coded) == len(first) and not any(coded)  # no codes stored: no more tries
    assert fast_ops._fused_backward_codes_kernel.launches == launches


@pytest.mark.parametrize("too_big", [False, True])
def test_1x1_layer_fp16_gradients_through_fast_conv_equal_the_batched_products(too_big, monkeypatch):
    """R's layer Function in fp16 (the snapshot's fp16 layers): its input and per-sample weight gradients through
    fast_conv's 1x1 kernels (triton_conv_grads, a plane above BMM_GRADS_MIN_PIXELS) against torch.bmm's, and the
    kernels ran, once per chunk of samples (one sample each here: the input gradient written into its batch
    slice). too_big: the weight gradient's kernel needs more shared memory than the GPU has (compiled by Triton 3.6
    for Hopper it takes 72 KiB, a T4 has 64): the layer takes cuBLAS's products instead, from then on."""
    from v2s_nb.stylegan3 import fast_conv

    monkeypatch.setattr(fast_layer, "_BMM_GRADS_UNFIT", set())
    if too_big:
        monkeypatch.setattr(fast_conv, "_batched_1x1_wgrad_kernel", KernelTooBig())
    monkeypatch.setattr(fast_ops, "can_use_fast", lambda x, fu, fd: fu is not None and fd is not None and fu.ndim == 1)
    monkeypatch.setattr(fast_conv, "BMM_GRADS_MIN_PIXELS", 0)
    monkeypatch.setattr(fast_ops, "backward_chunk", lambda shape: 1)
    calls = []
    for fn in ("batched_1x1_weight_grad", "batched_1x1_input_grad"):
        monkeypatch.setattr(fast_conv, fn, lambda *a, f=getattr(fast_conv, fn), **k: calls.append(f) or f(*a, **k))
    syn = tiny_generator("R", resolution=16, seed=1, channel_max=16).synthesis
    L = getattr(syn, syn.layer_names[-3])  # 16 -> 16 channels, 2x up and down
    spec = (L.up_filter, L.down_filter, dict(up=L.up_factor, down=L.down_factor, padding=L.padding, gain=2 ** 0.5,
                                              slope=0.2, clamp=L.conv_clamp))
    g = torch.Generator().manual_seed(0)
    size = int(L.in_size[0])
    x = torch.randn(2, L.in_channels, size, size, generator=g).half()
    weight = torch.randn(2, L.out_channels, L.in_channels, generator=g) / L.in_channels ** 0.5
    bias = torch.randn(L.out_channels, generator=g) * 0.1
    grads = {}
    for triton_grads in (True, False):
        with fast_config.override(triton_conv_grads=triton_grads):
            inputs = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
            out = fast_layer._Layer1x1.apply(*inputs, spec)
            out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).half())
            grads[triton_grads] = [t.grad.float() for t in inputs]
    # too big: the first chunk's weight gradient tried the kernel, and nothing after it
    assert len(calls) == (1 if too_big else 4) and grads[True][0].dtype == torch.float32
    assert bool(fast_layer._BMM_GRADS_UNFIT) == too_big
    for name, a, e in zip(("x", "weight", "bias"), grads[True], grads[False]):
        assert float((a - e).abs().max() / e.abs().max()) < 2e-3, name


def _t_layer_fp16():
    """(a 16 -> 16 channel 2x layer of a tiny T, its activation spec, the layer Function's inputs for 2 samples: x
    fp16, kernel, input scale, dcoefs, bias)."""
    syn = tiny_generator("T", resolution=16, seed=1, channel_max=16).synthesis
    L = getattr(syn, syn.layer_names[-3])
    spec = (L.up_filter, L.down_filter, dict(up=L.up_factor, down=L.down_factor, padding=L.padding, gain=2 ** 0.5,
                                              slope=0.2, clamp=L.conv_clamp))
    g = torch.Generator().manual_seed(0)
    size = int(L.in_size[0])
    x = torch.randn(2, L.in_channels, size, size, generator=g).half()
    kernel = torch.randn(L.out_channels, L.in_channels, 3, 3, generator=g) / (3 * L.in_channels ** 0.5)
    scale = torch.rand(2, L.in_channels, generator=g) + 0.5
    dcoefs = torch.rand(2, L.out_channels, generator=g) + 0.5
    bias = torch.randn(L.out_channels, generator=g) * 0.1
    return L, spec, (x, kernel, scale, dcoefs, bias)


@pytest.mark.parametrize("input_form, weight_form", [("cudnn", "cudnn"), ("pointers", "triton")])
def test_3x3_layer_fp16_gradients_through_fast_conv_equal_cudnns(input_form, weight_form, monkeypatch):
    """T's layer Function in fp16: its gradients w.r.t. x, the kernel, the input scale, dcoefs and the bias through
    fast_conv's kernels (triton_conv_grads; the input gradient with d x and d scale fused into the cudnn form's last
    transpose or after the pointers form; the weight gradient from cuDNN on our copies or the Triton kernel, the
    scale inside both) against convolution_backward's on the scaled input, and fast_conv ran."""
    from v2s_nb.stylegan3 import fast_conv

    monkeypatch.setattr(fast_ops, "can_use_fast", lambda x, fu, fd: fu is not None and fd is not None and fu.ndim == 1)
    monkeypatch.setattr(fast_conv, "MAX_OUT_CHANNELS", 4 if input_form == "cudnn" else 64)
    monkeypatch.setattr(fast_conv, "weight_grad_form", lambda: weight_form)
    calls = []
    for fn in ("conv2d_weight_grad_nchw", "conv2d_input_grad_nchw"):
        monkeypatch.setattr(fast_conv, fn, lambda *a, f=getattr(fast_conv, fn), **k: calls.append(f) or f(*a, **k))
    _, spec, (x, kernel, scale, dcoefs, bias) = _t_layer_fp16()
    grads = {}
    for triton_grads in (True, False):
        with fast_config.override(triton_conv_grads=triton_grads):
            inputs = [t.clone().requires_grad_(True) for t in (x, kernel, scale, dcoefs, bias)]
            out = fast_layer._Layer3x3.apply(*inputs, spec)
            out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).half())
            grads[triton_grads] = [t.grad.float() for t in inputs]
    assert len(calls) == 2
    for name, a, e in zip(("x", "kernel", "scale", "dcoefs", "bias"), grads[True], grads[False]):
        assert float((a - e).abs().max() / e.abs().max()) < 3e-3, name


@pytest.mark.parametrize("weight_form", ["cudnn", "triton"])
def test_3x3_layer_fp16_dcoefs_from_the_kernels_per_sample_gradient(weight_form, monkeypatch):
    """T's layer Function in fp16 with codes, its kernel requiring grad and fast_layer's DCOEFS_FROM_KERNEL_GRAD_*
    bounds down to 0: it keeps no convolution output and takes d dcoefs from each sample's kernel gradient (fast_conv
    one sample at a time, both weight-gradient forms). Its gradients equal those of the same layer keeping y (bounds
    out of reach); so does d dcoefs alone (autograd.grad, the kernel's gradient not wanted). With the kernel not
    requiring grad (ws-only steps) y is kept, and fast_layer.CODES_3X3_UP's layers store codes, and on planes of
    CODES_3X3_LARGE_PIXELS CODES_3X3_UP_WEIGHTS' too."""
    from v2s_nb.stylegan3 import fast_conv

    monkeypatch.setattr(fast_ops, "can_use_fast", lambda x, fu, fd: fu is not None and fd is not None and fu.ndim == 1)
    monkeypatch.setattr(fast_ops, "CODES_MIN_OUT", 0)
    monkeypatch.setattr(fast_conv, "weight_grad_form", lambda: weight_form)
    per_sample, one_sample_wgrads = [], []
    monkeypatch.setattr(fast_layer, "_kernel_grad_per_sample",
                        lambda *a, f=fast_layer._kernel_grad_per_sample: per_sample.append(True) or f(*a))
    monkeypatch.setattr(fast_conv, "conv2d_weight_grad_nchw",
                        lambda *a, f=fast_conv.conv2d_weight_grad_nchw, **k: one_sample_wgrads.append(
                            a[0].shape[0] == 1) or f(*a, **k))
    L, spec, (x, kernel, scale, dcoefs, bias) = _t_layer_fp16()
    upstream = None

    def run(bound, train_kernel=True, only_dcoefs=False):
        nonlocal upstream
        monkeypatch.setattr(fast_layer, "DCOEFS_FROM_KERNEL_GRAD_PIXELS", bound)
        monkeypatch.setattr(fast_layer, "DCOEFS_FROM_KERNEL_GRAD_CHANNELS", bound)
        inputs = [t.clone().requires_grad_(train_kernel or i != 1) for i, t in
                  enumerate((x, kernel, scale, dcoefs, bias))]
        out = fast_layer._Layer3x3.apply(*inputs, spec)
        saved_y = out.grad_fn.saved_tensors[1]
        if upstream is None:
            upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).half()
        if only_dcoefs:
            return saved_y, [torch.autograd.grad(out, inputs[3], upstream)[0].float()]
        out.backward(upstream)
        return saved_y, [None if t.grad is None else t.grad.float() for t in inputs]

    y_kept, expected = run(1 << 40)
    assert y_kept is not None and not any(per_sample)
    y_kept, got = run(0)
    assert y_kept is None and per_sample.count(True) == 1
    assert one_sample_wgrads.count(True) == x.shape[0]  # through fast_conv, a sample at a time
    for name, a, e in zip(("x", "kernel", "scale", "dcoefs", "bias"), got, expected):
        assert float((a - e).abs().max() / e.abs().max()) < 3e-3, name
    _, only = run(0, only_dcoefs=True)
    assert per_sample.count(True) == 2
    assert float((only[0] - expected[3]).abs().max() / expected[3].abs().max()) < 3e-3
    # ws-only steps: y kept; codes on CODES_3X3_UP's layers, and on CODES_3X3_UP_WEIGHTS' on large planes
    coded = []
    monkeypatch.setattr(fast_ops, "forward_with_codes",
                        lambda *a, f=fast_ops.forward_with_codes, **k: coded.append(1) or f(*a, **k))
    assert L.up_factor in fast_layer.CODES_3X3_UP_WEIGHTS
    for up, large, stored in ((L.up_factor, 1 << 40, 1), (L.up_factor * 2, 1 << 40, 0), (L.up_factor * 2, 0, 1)):
        monkeypatch.setattr(fast_layer, "CODES_3X3_UP", (up,))
        monkeypatch.setattr(fast_layer, "CODES_3X3_LARGE_PIXELS", large)
        y_kept, frozen = run(0, train_kernel=False)
        assert y_kept is not None and len(coded) == stored and frozen[1] is None and per_sample.count(True) == 2
        for name, a, e in zip(("x", "scale", "dcoefs", "bias"), frozen[:1] + frozen[2:], expected[:1] + expected[2:]):
            assert float((a - e).abs().max() / e.abs().max()) < 3e-3, name
        del coded[:]
