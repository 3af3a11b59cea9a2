"""The fast synthesis path against the plain reference path.

The Triton kernels run on CUDA; where Triton is installed, they are also checked on the CPU through
Triton's interpreter (tests/interpreted/, run by tests/test_triton_interpreter.py; small shapes, slow).
"""

import re
import warnings

import pytest
import torch

from conftest import KernelTooBig, mapped_ws, requires_cuda
from v2s_nb.stylegan3 import (build_generator, fast_config, fast_conv, fast_layer, fast_ops, ops, set_input_transform,
                               tiny_generator)



@pytest.fixture(autouse=True)
def restore_tf32_switches():
    """GPU tests turn cuDNN's TF32 off for float32-vs-float32 checks; later tests must see the default again."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

def test_unfused_modconv_matches_grouped():
    g = torch.Generator().manual_seed(0)
    x, w, s = torch.randn(3, 8, 12, 12, generator=g), torch.randn(5, 8, 3, 3, generator=g), torch.randn(3, 8, generator=g)
    for demod in (True, False):
        a = ops.modulated_conv2d(x, w, s, demodulate=demod, padding=2, input_gain=torch.tensor(0.7))
        b = ops.modulated_conv2d(x, w, s, demodulate=demod, padding=2, input_gain=torch.tensor(0.7), fused=False)
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_fast_on_cpu_falls_back_with_one_warning(monkeypatch):
    # the warning comes once per process: as if no earlier test had asked for the fast path on the CPU
    monkeypatch.setattr(fast_ops, "_warned", False)
    G = tiny_generator("R")
    ws = G.mapping(torch.randn(1, G.z_dim), None)
    with pytest.warns(RuntimeWarning, match="plain PyTorch path"):
        a = G.synthesis(ws, impl="fast")
    assert torch.equal(a, G.synthesis(ws, impl="plain"))
    with pytest.raises(ValueError, match="impl"):
        G.synthesis(ws, impl="turbo")


@pytest.mark.parametrize("version, expected", [("3.4.0", (3, 4)), ("3.6.0+git1a2b3c", (3, 6)), ("3.10.1", (3, 10)),
                                               ("4", (4, 0)), ("3.3.1rc1", (3, 3)), ("nightly", (0, 0))])
def test_triton_release_numbers(version, expected):
    assert fast_ops.release(version) == expected


@pytest.mark.parametrize("version, capability, unfit", [("2.3.1", (8, 0), "older than"), ("3.0.0", (9, 0), None),
                                                       ("3.3.1", (8, 9), None), ("3.3.1", (9, 0), "sm_90"),
                                                       ("3.4.0", (9, 0), None), ("3.9.0", (10, 0), None)])
def test_a_triton_that_cant_build_the_kernels_gets_the_plain_path_with_a_warning(version, capability, unfit,
                                                                                  monkeypatch):
    from types import SimpleNamespace

    from v2s_nb.stylegan3 import precompile
    from v2s_nb.stylegan3.networks import resolve_impl

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(fast_ops, "HAVE_TRITON", True)
    monkeypatch.setattr(fast_ops, "triton", SimpleNamespace(__version__=version), raising=False)
    monkeypatch.setattr(fast_ops, "TRITON_RELEASE", fast_ops.release(version))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(fast_ops, "_warned", False)
    if unfit is None:
        assert fast_ops.device_unfit(cuda) is None and resolve_impl("auto", cuda) == "fast"
        if precompile._knobs() is not None:  # the Triton installed here has the compile hook
            assert precompile.supported(cuda)
        return
    assert unfit in fast_ops.device_unfit(cuda)
    with pytest.warns(RuntimeWarning, match=rf"Triton {re.escape(version)} .*{unfit}.*pip install 'torch>=2\.8'"):
        assert resolve_impl("auto", cuda) == "plain"  # on CUDA the user expects the fast path: say why not
    assert resolve_impl("fast", cuda) == "plain" and not precompile.supported(cuda)
    monkeypatch.setattr(fast_ops, "_warned", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_impl("auto", cpu) == "plain" and resolve_impl("plain", cuda) == "plain"  # nothing to say


def test_cuda_without_triton_gets_the_plain_path(monkeypatch):
    from v2s_nb.stylegan3.networks import resolve_impl

    cuda = torch.device("cuda")
    monkeypatch.setattr(fast_ops, "HAVE_TRITON", False)
    monkeypatch.setattr(fast_ops, "_warned", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_impl("auto", cuda) == "plain" and resolve_impl("plain", cuda) == "plain"  # as asked: quiet
    with pytest.warns(RuntimeWarning, match="Triton is not installed"):
        assert resolve_impl("fast", cuda) == "plain"


@requires_cuda
@pytest.mark.parametrize("cfg, channel_scale", [("R", 1.0), ("T", 1.0), ("T", 0.25)])
def test_fast_matches_plain_on_gpu(cfg, channel_scale):
    """channel_scale 0.25: T's last layers have 32-64 channels, so the Triton convolution (fast_conv) runs too."""
    torch.backends.cudnn.allow_tf32 = False  # compare float32 with float32
    G = build_generator(cfg, resolution=256, device="cuda", seed=0, channel_scale=channel_scale)
    set_input_transform(G, 0.05, -0.1, 7.0)
    ws = G.mapping(torch.randn(2, G.z_dim, device="cuda"), None)
    with torch.no_grad():
        plain32 = G.synthesis(ws, impl="plain", force_fp32=True)
        fast32 = G.synthesis(ws, impl="fast", force_fp32=True)
        plain16 = G.synthesis(ws, impl="plain")
        fast16 = G.synthesis(ws, impl="fast")
    scale = plain32.abs().max().clamp_min(1.0)  # the tolerances are for images in [-1, 1]
    assert float((fast32 - plain32).abs().max() / scale) <= 1e-4
    assert float((fast16 - plain16).abs().max() / scale) <= 1e-2
    # PyTorch's default: TF32 convolutions, and three-pass bf16 products in the float32 layers' activations
    torch.backends.cudnn.allow_tf32 = True
    with torch.no_grad():
        fast16_tf32 = G.synthesis(ws, impl="fast")
        fast32_tf32 = G.synthesis(ws, impl="fast", force_fp32=True)
    assert float((fast16_tf32 - plain16).abs().max() / scale) <= 1e-2
    assert float((fast32_tf32 - plain32).abs().max() / scale) <= 1e-2


@requires_cuda
def test_gradients_through_fast_path():
    torch.backends.cudnn.allow_tf32 = False  # float32 against float32 (with it on, 1x1 products use TF32 as convs do)
    G = build_generator("R", resolution=256, device="cuda", seed=0)
    ws = G.mapping(torch.randn(1, G.z_dim, device="cuda"), None)
    grads = []
    for impl in ("plain", "fast"):
        w = ws.detach().clone().requires_grad_(True)
        G.synthesis(w, impl=impl, force_fp32=True).square().mean().backward()
        grads.append(w.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6)


@requires_cuda
@pytest.mark.parametrize("cfg", ["R", "T"])
def test_weight_gradients_through_fast_path(cfg):
    """Gradients w.r.t. the synthesis weights (what PTI optimises), float32: the fast path's equal autograd through
    the plain path."""
    torch.backends.cudnn.allow_tf32 = False
    G = build_generator(cfg, resolution=256, device="cuda", seed=0)
    ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)).to("cuda"), None)
    params = [p for p in G.synthesis.parameters()]
    grads = {}
    G.synthesis.requires_grad_(True)
    try:
        for impl in ("plain", "fast"):
            G.synthesis.zero_grad(set_to_none=True)
            G.synthesis(ws, impl=impl, force_fp32=True).square().mean().backward()
            grads[impl] = [p.grad.clone() for p in params]
    finally:
        G.synthesis.requires_grad_(False)
    worst = max(float((f - r).norm() / r.norm().clamp_min(1e-30)) for f, r in zip(grads["fast"], grads["plain"])
                if float(r.norm()) > 0)
    # The float32 products are those of the ws test below (rtol 1e-3); an H200 gave 1.4e-4 for R, 1e-5 for T.
    assert worst < 5e-4, worst


@requires_cuda
@pytest.mark.parametrize("cfg, saved_codes, codes_tile, codes_4x", [
    ("R", False, None, False), ("T", False, None, False), ("R", True, None, False), ("T", True, None, False),
    ("R", True, 64, False), ("T", True, 64, False), ("T", True, None, True)])
def test_gradients_through_fast_path_mixed_precision(cfg, saved_codes, codes_tile, codes_4x, monkeypatch):
    """The snapshot's fp16 layers in fp16: with a loss scale (as the optimisers use, through
    v2s_nb.method.loss_scale) the fast path's gradients are as close to float32's as the plain path's; with the
    backward recomputing the activation's derivative and reading it from the training forward's codes (codes_tile:
    the codes kernels on tiles of that edge on every fp16 layer, fast_ops.CODES_TILES; codes_4x: T's 4x layers
    store codes too, fast_layer.CODES_3X3_LARGE_PIXELS down to 0, as the 1044 px one does at 1024)."""
    torch.backends.cudnn.allow_tf32 = False
    monkeypatch.setattr(fast_config, "_current", fast_config._changed(dict(saved_codes=saved_codes)))
    ups = []
    if codes_4x:
        monkeypatch.setattr(fast_layer, "CODES_3X3_LARGE_PIXELS", 0)
        monkeypatch.setattr(fast_ops, "forward_with_codes", lambda *a, f=fast_ops.forward_with_codes, **k: (
            lambda r: ups.append(a[4] if r is not None else None) or r)(f(*a, **k)))
    tiles = []
    if codes_tile:
        monkeypatch.setattr(fast_ops, "CODES_TILES", {(torch.float16, up): (codes_tile,) for up in (2, 4)})
        monkeypatch.setattr(fast_ops, "forward_with_codes", lambda *a, f=fast_ops.forward_with_codes, **k: (
            lambda r: tiles.append(None if r is None else r[1].shape[-2]) or r)(f(*a, **k)))
    G = build_generator(cfg, resolution=256, device="cuda", seed=0)
    ws = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0)).to("cuda"), None)

    def grad(impl, force_fp32, scale):
        w = ws.detach().clone().requires_grad_(True)
        (G.synthesis(w, impl=impl, force_fp32=force_fp32).square().mean() * scale).backward()
        return w.grad / scale

    ref = grad("plain", True, 1.0)
    for scale in (2.0 ** 16, 2.0 ** 12, 2.0 ** 8):  # what a dynamic loss scaler would settle on
        fast = grad("fast", False, scale)
        if torch.isfinite(fast).all():
            break
    plain = grad("plain", False, scale)
    err_fast = float((fast - ref).norm() / ref.norm())
    err_plain = float((plain - ref).norm() / ref.norm())
    assert err_fast < max(2 * err_plain, 5e-3) and err_fast < 2e-2, (scale, err_fast, err_plain)
    if codes_tile:  # the fp16 layers with codes ran on those tiles
        assert set(tiles) - {None} == {codes_tile}, tiles
    if codes_4x:
        assert 4 in ups, ups


@requires_cuda
@pytest.mark.parametrize("cfg", ["R", "T"])
def test_backward_in_pieces_of_channels_gives_the_whole_samples_gradients(cfg, monkeypatch):
    """At batch 1 the activation's backward takes a large plane's channels in pieces (fast_ops.SAMPLE_PIECE_BYTES of
    float32 sums each): forced down to a few channels a piece on every layer, the gradients w.r.t. ws and the
    weights (fp16 layers in fp16, with the codes and without) are those of the whole sample's launch, to the float32
    atomics' order."""
    G = build_generator(cfg, resolution=256, device="cuda", seed=0)
    ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)).to("cuda"), None)
    params = [p.requires_grad_(True) for p in G.synthesis.parameters()]
    pieces = []
    monkeypatch.setattr(fast_ops, "backward_pieces", lambda shape, f=fast_ops.backward_pieces: (
        lambda r: pieces.append(len(r)) or r)(f(shape)))

    def grads():
        w = ws.detach().clone().requires_grad_(True)
        (G.synthesis(w, impl="fast").square().mean() * 2.0 ** 12).backward()
        out = [w.grad] + [p.grad for p in params]
        for p in params:
            p.grad = None
        return out

    for saved_codes in (True, False):
        with fast_config.override(saved_codes=saved_codes):
            pieces.clear()
            whole = grads()
            assert max(pieces) == 1, pieces
            with monkeypatch.context() as m:
                m.setattr(fast_ops, "SAMPLE_PIECE_BYTES", 1 << 16)
                pieced = grads()
            assert max(pieces) > 3, pieces
        for a, b in zip(pieced, whole):
            assert torch.isfinite(a).all()
            assert float((a - b).abs().max()) <= 1e-3 * float(b.abs().max()) + 1e-12


@requires_cuda
@pytest.mark.parametrize("cfg", ["R", "T"])
def test_fast_path_steps_where_kernels_need_more_shared_memory_than_the_gpu_has(cfg, monkeypatch):
    """On GPUs other than the one the kernels were tuned on, some need more shared memory than a program gets (a
    T4 gives 64 KiB: compiled for it, the fp16 2x layers' codes backward takes 136; Triton 3.6's R 1x1 weight
    gradient takes 72 for Hopper). With those kernels failing as they load, the fast path's steps still run, the
    layers recompute / take cuBLAS's products, and the gradients w.r.t. ws and the weights are the ones it gives
    where they fit (fp16 layers, loss scale 2**12)."""
    from v2s_nb.stylegan3 import fast_layer

    G = build_generator(cfg, resolution=256, device="cuda", seed=0)
    syn = G.synthesis.requires_grad_(True)
    ws = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0)).to("cuda"), None).detach()
    monkeypatch.setattr(fast_ops, "CODES_MIN_OUT", 0)

    def step():
        syn.zero_grad(set_to_none=True)
        w = ws.clone().requires_grad_(True)
        (syn(w, impl="fast").square().mean() * 2.0 ** 12).backward()
        return [w.grad / 2.0 ** 12] + [p.grad / 2.0 ** 12 for p in syn.parameters() if p.grad is not None]

    fits = step()
    monkeypatch.setattr(fast_ops, "_CODES_BACKWARD_UNFIT", set())
    monkeypatch.setattr(fast_layer, "_BMM_GRADS_UNFIT", set())
    monkeypatch.setattr(fast_ops, "_fused_backward_codes_kernel", KernelTooBig())
    monkeypatch.setattr(fast_conv, "_batched_1x1_wgrad_kernel", KernelTooBig())
    for _ in range(2):  # the first with codes stored, the second without
        grads = step()
        assert len(grads) == len(fits)
        worst = max(float((a - b).norm() / b.norm()) for a, b in zip(grads, fits) if float(b.norm()) > 0)
        assert worst < 2e-2, worst
    assert fast_ops._CODES_BACKWARD_UNFIT and bool(fast_layer._BMM_GRADS_UNFIT) == (cfg == "R")


@requires_cuda
@pytest.mark.parametrize("wgrad_form, dcoefs_from_kernel_grad", [("triton", False), (None, False), ("cudnn", False),
                                                               ("triton", True), (None, True)])
def test_weight_gradients_through_fast_path_mixed_precision(wgrad_form, dcoefs_from_kernel_grad, monkeypatch):
    """T's fp16 layers in fp16, gradients w.r.t. every synthesis weight (PTI's): as close to float32's as the plain
    path's, with the 3x3 layers' weight gradients from the Triton kernel on every layer, by the default choice
    (fast_conv.weight_grad_form) or from cuDNN on our channels-last copies everywhere. dcoefs_from_kernel_grad:
    every fp16 layer with codes takes d dcoefs from its kernel's per-sample gradient and keeps no convolution
    output (fast_layer.DCOEFS_FROM_KERNEL_GRAD_* down to 0; at 256 px no plane reaches the bounds)."""
    from v2s_nb.stylegan3 import fast_conv

    if wgrad_form is not None:
        monkeypatch.setattr(fast_conv, "weight_grad_form", lambda: wgrad_form)
    per_sample = []
    if dcoefs_from_kernel_grad:
        monkeypatch.setattr(fast_layer, "DCOEFS_FROM_KERNEL_GRAD_PIXELS", 0)
        monkeypatch.setattr(fast_layer, "DCOEFS_FROM_KERNEL_GRAD_CHANNELS", 0)
        monkeypatch.setattr(fast_layer, "_kernel_grad_per_sample",
                            lambda *a, f=fast_layer._kernel_grad_per_sample: per_sample.append(1) or f(*a))
    torch.backends.cudnn.allow_tf32 = False
    G = build_generator("T", resolution=256, device="cuda", seed=0)
    ws = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0)).to("cuda"), None)
    params = list(G.synthesis.parameters())

    def grads(impl, force_fp32, scale):
        G.synthesis.zero_grad(set_to_none=True)
        (G.synthesis(ws, impl=impl, force_fp32=force_fp32).square().mean() * scale).backward()
        return torch.cat([p.grad.flatten() / scale for p in params])

    G.synthesis.requires_grad_(True)
    try:
        ref = grads("plain", True, 1.0)
        for scale in (2.0 ** 16, 2.0 ** 12, 2.0 ** 8):
            fast = grads("fast", False, scale)
            if torch.isfinite(fast).all():
                break
        plain = grads("plain", False, scale)
    finally:
        G.synthesis.requires_grad_(False)
    err_fast = float((fast - ref).norm() / ref.norm())
    err_plain = float((plain - ref).norm() / ref.norm())
    assert err_fast < max(2 * err_plain, 5e-3) and err_fast < 2e-2, (scale, err_fast, err_plain)
    assert bool(per_sample) == dcoefs_from_kernel_grad


def test_graphed_synthesis_refuses_cpu():
    from v2s_nb.stylegan3 import GraphedSynthesis
    with pytest.raises(ValueError, match="CUDA"):
        GraphedSynthesis(tiny_generator("R"))


def test_a_bare_cuda_device_gets_the_current_index(monkeypatch):
    """Streams, pools and the per-process cap are kept per device index: ``cuda`` alone must name the current one."""
    from v2s_nb.stylegan3.graphs import indexed_cuda_device
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert indexed_cuda_device("cuda") == torch.device("cuda", 3)
    assert indexed_cuda_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert indexed_cuda_device("cpu") == torch.device("cpu")


@requires_cuda
@pytest.mark.parametrize("cfg", ["R", "T"])
def test_graphed_synthesis_matches_eager(cfg):
    from v2s_nb.stylegan3 import GraphedSynthesis, input_transform
    G = build_generator(cfg, resolution=256, device="cuda", seed=0)
    graphed = GraphedSynthesis(G, batch_size=2)
    for seed in (0, 1):  # a second call with other inputs: the replay reads the new values
        ws = G.mapping(torch.randn(3, G.z_dim, device="cuda", generator=torch.Generator("cuda").manual_seed(seed)),
                       None)
        tf = torch.stack([torch.as_tensor(input_transform(0.02 * i, -0.01 * seed, 5.0 * i), dtype=torch.float32)
                          for i in range(3)])
        with torch.no_grad():
            eager2 = G.synthesis(ws[:2], transform=tf[:2].cuda())
            eager = G.synthesis(ws, transform=tf.cuda())
            eager_buffer = G.synthesis(ws[:2])
        assert torch.equal(graphed(ws[:2], transform=tf[:2]), eager2)  # same kernels, same numbers
        assert torch.equal(graphed(ws[:2]), eager_buffer)  # no transform: the input's buffer, as G.synthesis does
        # 3 = a full batch of 2 + a padded batch of 1 (eager at batch 3 may pick other GEMM kernels: fp16 rounding)
        assert float((graphed(ws, transform=tf) - eager).abs().max()) < 1e-2
    with torch.no_grad():  # an in-place update of every parameter: the next call records anew (kept kernels)
        for prm in G.synthesis.parameters():
            prm.mul_(1.01)
        eager2 = G.synthesis(ws[:2], transform=tf[:2].cuda())
    assert torch.equal(graphed(ws[:2], transform=tf[:2]), eager2)


def test_graphed_training_refuses_cpu():
    from v2s_nb.stylegan3 import GraphedTrainingSynthesis
    with pytest.raises(ValueError, match="CUDA"):
        GraphedTrainingSynthesis(tiny_generator("T"))


def _graphs_on_the_cpu(sample_args_seen):
    """``torch.cuda.make_graphed_callables``'s contract, on the CPU: the callable's backward writes the gradients of
    its inputs into buffers it reuses on every call and hands those out (detached), as a replayed graph does."""
    def make(fn, sample_args, num_warmup_iters=3, allow_unused_input=False, pool=None):
        assert num_warmup_iters == 0  # graphed_callables warmed up before, on the shared warm-up stream
        sample_args_seen.extend(sample_args)
        wants = [a.requires_grad for a in sample_args]
        buffers = {}

        class Replay(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *inputs):
                leaves = [t.detach().requires_grad_(w) for t, w in zip(inputs, wants)]
                with torch.enable_grad():
                    out = fn(*leaves)
                ctx.recorded = leaves, out
                return out.detach()

            @staticmethod
            def backward(ctx, g):
                leaves, out = ctx.recorded
                idx = [i for i, w in enumerate(wants) if w]
                grads = torch.autograd.grad(out, [leaves[i] for i in idx], g, allow_unused=allow_unused_input)
                given = [None] * len(leaves)
                for i, grad in zip(idx, grads):
                    if grad is not None:
                        buffers.setdefault(i, torch.empty_like(grad)).copy_(grad)
                        given[i] = buffers[i].detach()
                return tuple(given)

        return lambda *args: Replay.apply(*args)
    return make


def test_graphed_training_gradients_add_up_over_calls(monkeypatch):
    """The replayed backward writes its gradients into the same buffers on every call: what one call leaves in
    ws.grad and the parameters' .grad stays the caller's, so gradients summed over calls (a batch split into parts)
    are those of G.synthesis. Recorded on stand-ins of the parameters, not the parameters (PyTorch's stream warning).
    The CUDA graphs are replaced by their contract on the CPU."""
    from v2s_nb.stylegan3 import GraphedTrainingSynthesis, graphs
    G = tiny_generator("T")
    params = list(G.synthesis.parameters())
    seen = []
    monkeypatch.setattr(graphs, "_cuda_device", lambda G: G.device)
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", _graphs_on_the_cpu(seen))
    parts = [mapped_ws(G, 2, 0), mapped_ws(G, 1, 1)]  # the second part padded to the recorded batch of 2
    G.synthesis.requires_grad_(True)
    try:
        for ws_grad in (True, False):
            def summed(call):
                for prm in params:
                    prm.grad = None
                leaves = [w.clone().requires_grad_(ws_grad) for w in parts]
                first = None
                for w in leaves:
                    call(w).square().mean().backward()
                    if ws_grad and first is None:
                        first = w.grad.clone()
                if ws_grad:
                    assert torch.equal(leaves[0].grad, first)  # the second call left the first part's ws.grad alone
                return [w.grad for w in leaves] + [prm.grad.clone() for prm in params]

            ref = summed(G.synthesis)
            got = summed(GraphedTrainingSynthesis(G, batch_size=2, ws_grad=ws_grad))
            for g, r in zip(got, ref):
                assert (g is None) == (r is None)
                if r is not None:  # float32 sums in another order (16 CPU threads: 4.8e-6 off on values up to 3)
                    assert torch.allclose(g, r, rtol=1e-4, atol=1e-5 * float(r.abs().max()))
        stand_ins = seen[1:len(params) + 1]
        assert all(s is not p and s.data_ptr() == p.data_ptr() for s, p in zip(stand_ins, params))
    finally:
        G.synthesis.requires_grad_(False)


def test_graphed_training_records_anew_where_its_kept_values_went_stale(monkeypatch):
    """A graph keeps values made from the parameters that get no gradient (their kernels), so an in-place change of
    one of those makes the next call record anew; optimiser steps on the parameters that get gradients don't; a
    replaced tensor does. The CUDA graphs are replaced by their contract on the CPU."""
    from v2s_nb.stylegan3 import GraphedTrainingSynthesis, graphs
    G = tiny_generator("T")
    first, last = G.synthesis.parameters().__next__(), list(G.synthesis.parameters())[-1]
    seen = []
    monkeypatch.setattr(graphs, "_cuda_device", lambda G: G.device)
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", _graphs_on_the_cpu(seen))
    recordings = lambda: len(seen) // (1 + len(list(G.synthesis.parameters())))  # noqa: E731
    ws = mapped_ws(G, 1, 0)

    by_ws = GraphedTrainingSynthesis(G, batch_size=1)  # every parameter frozen
    by_ws(ws).square().mean().backward()
    by_ws(ws).square().mean().backward()
    assert recordings() == 1
    with torch.no_grad():
        first.mul_(1.01)
    img = by_ws(ws)
    assert recordings() == 2
    assert torch.allclose(img, G.synthesis(ws))

    last.requires_grad_(True)
    try:
        by_weights = GraphedTrainingSynthesis(G, batch_size=1, ws_grad=False)
        opt = torch.optim.SGD([last], lr=0.1)
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            by_weights(ws).square().mean().backward()
            opt.step()  # in place on a parameter that gets gradients: recomputed in the graphs, no new recording
        assert recordings() == 3
        last.data = last.data.clone()  # a replaced tensor: the stand-in would read the old one
        by_weights(ws)
        assert recordings() == 4
    finally:
        last.requires_grad_(False)


def test_a_refused_recording_goes_on_eagerly(monkeypatch):
    """A recording that CUDA ends with a capture error (seen once on an H100, PTI's first recording in a new
    process) is undone and the calls run G.synthesis eagerly, with one FallbackWarning: the same image and
    gradients, no second attempt. Where the GPU is unusable after it, CudaGraphError names the way out; other errors
    pass unchanged. The CUDA parts are replaced on the CPU (the GPU test below fails a real recording)."""
    import warnings

    from v2s_nb.errors import FallbackWarning, V2SError
    from v2s_nb.stylegan3 import GraphedTrainingSynthesis, graphs
    G = tiny_generator("T")
    ws = mapped_ws(G, 2, 0)
    monkeypatch.setattr(graphs, "_cuda_device", lambda G: G.device)
    undone, attempts = [], []

    def refused(message):
        def record(*args, **kwargs):
            attempts.append(kwargs.get("pool"))
            raise RuntimeError(message)
        return record

    monkeypatch.setattr(graphs, "_undo_failed_capture", lambda *args: undone.append(args))
    monkeypatch.setattr(torch.cuda, "make_graphed_callables",
                        refused("CUDA error: operation failed due to a previous error during capture"))
    graphed = GraphedTrainingSynthesis(G, batch_size=2)
    w = ws.clone().requires_grad_(True)
    with pytest.warns(FallbackWarning, match="GraphedTrainingSynthesis.*previous error during capture"):
        img = graphed(w)
    assert undone == [(G.device, None, None)] and attempts == [None]  # no pool or stream on the CPU
    img.square().mean().backward()
    w_eager = ws.clone().requires_grad_(True)
    expected = G.synthesis(w_eager)
    expected.square().mean().backward()
    assert torch.equal(img, expected) and torch.allclose(w.grad, w_eager.grad, rtol=0, atol=1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.allclose(graphed(ws[:1]), expected[:1], rtol=0, atol=1e-5)  # eager now: no new attempt, no warning
    assert len(attempts) == 1

    def unusable(*args):
        raise graphs.CudaGraphError("the GPU could not be used again; run the step again in a new Python process")

    monkeypatch.setattr(graphs, "_undo_failed_capture", unusable)
    with pytest.raises(V2SError, match="new Python process") as caught:
        GraphedTrainingSynthesis(G, batch_size=1)(ws[:1])
    assert isinstance(caught.value, RuntimeError)  # for callers that catch what PyTorch raises
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", refused("CUDA out of memory"))
    with pytest.raises(RuntimeError) as caught:
        GraphedTrainingSynthesis(G, batch_size=1)(ws[:1])
    assert not isinstance(caught.value, V2SError) and str(caught.value) == "CUDA out of memory"


_SABOTAGED_RECORDINGS = """
import sys, warnings
import torch
sys.path[:0] = [{tests!r}]
from conftest import mapped_ws
from v2s_nb.errors import FallbackWarning
from v2s_nb.stylegan3 import GraphedSynthesis, GraphedTrainingSynthesis, build_generator

def sabotaged(fn):  # a wait for the GPU inside the capture: CUDA ends that recording with an error
    def run(*args, **kwargs):
        if torch.cuda.is_current_stream_capturing():
            torch.cuda.synchronize()
        return fn(*args, **kwargs)
    return run

G = build_generator("T", resolution=256, device="cuda", seed=0)
ws = mapped_ws(G, 2, 0)
stream = torch.cuda.current_stream()
training = GraphedTrainingSynthesis(G, batch_size=2)
training._synthesis_of = sabotaged(training._synthesis_of)
w = ws.clone().requires_grad_(True)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    img = training(w)
assert [type(c.message) for c in caught] == [FallbackWarning], [str(c.message) for c in caught]
assert torch.cuda.current_stream() == stream
(img.square().mean() * 2.0 ** 16).backward()
torch.randn(3, device="cuda")  # the random number generator works again
w_eager = ws.clone().requires_grad_(True)
expected = G.synthesis(w_eager)
(expected.square().mean() * 2.0 ** 16).backward()
def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())  # of tensors that need no gradient

# the same eager step twice: the backward's float32 sums by atomics come in any order
img, expected = img.detach(), expected.detach()
assert rel(img, expected) < 1e-5 and rel(w.grad, w_eager.grad) < 1e-3, (rel(img, expected), rel(w.grad, w_eager.grad))

syn = G.synthesis.from_styles
G.synthesis.from_styles = sabotaged(syn)
inference = GraphedSynthesis(G, batch_size=2)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = inference(ws[:1])
assert [type(c.message) for c in caught] == [FallbackWarning], [str(c.message) for c in caught]
G.synthesis.from_styles = syn
with torch.no_grad():
    assert rel(out, G.synthesis(ws[:1])) < 1e-5
    again = GraphedSynthesis(G, batch_size=2)(ws)  # recordings work again in this process
    assert (again - G.synthesis(ws)).abs().max() < 1e-5
w = ws.clone().requires_grad_(True)
GraphedTrainingSynthesis(G, batch_size=2)(w).square().mean().backward()
assert w.grad is not None

import importlib
head_pose = importlib.import_module("v2s_nb.face.head_pose")  # the package's head_pose is a function of it
from test_pose_encoding import _PooledLandmarks
from v2s_nb.method.pose_encoding import ImagePoseRegressor
fit = head_pose.head_pose_torch
head_pose.head_pose_torch = sabotaged(fit)
x = torch.rand(2, 3, 64, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(0)) * 2 - 1
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    pose = ImagePoseRegressor(_PooledLandmarks().cuda())(x.clone().requires_grad_(True))
assert [type(c.message) for c in caught] == [FallbackWarning], [str(c.message) for c in caught]
head_pose.head_pose_torch = fit
eager = ImagePoseRegressor(_PooledLandmarks().cuda(), cuda_graphs=False)(x.clone().requires_grad_(True))
assert torch.allclose(pose, eager, rtol=0, atol=1e-4), (pose, eager)
torch.cuda.synchronize()
print("ok")
"""


@requires_cuda
def test_a_sabotaged_recording_is_undone_on_the_gpu():
    """A real recording that CUDA ends with an error (a wait for the GPU inside the capture), training, inference and
    P_r's pose fit: one FallbackWarning each, eager's numbers, the caller's stream current again, the random number generator usable
    again and later recordings in the same process working. In a process of its own: a failure that is not undone
    spoils the process for every test after it."""
    import subprocess
    import sys
    from pathlib import Path

    tests = str(Path(__file__).resolve().parent)
    done = subprocess.run([sys.executable, "-c", _SABOTAGED_RECORDINGS.format(tests=tests)], capture_output=True,
                          text=True, timeout=600, cwd=str(Path(tests).parent))
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout[-3000:] + done.stderr[-3000:]


def _rel(a, b):
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@requires_cuda
@pytest.mark.parametrize("cfg", ["R", "T"])
def test_graphed_training_matches_eager(cfg, recwarn):
    """Forward and backward replayed from CUDA graphs give eager autograd's image and gradients (w.r.t. ws, padded
    batch; w.r.t. the weights, after an in-place update), and misuse raises. No warning of the parameters' gradient
    accumulators on another stream (PyTorch warns once a process: the first graphed weights step of the GPU run)."""
    from v2s_nb.stylegan3 import GraphedTrainingSynthesis
    scale = 2.0 ** 16  # fp16 gradients of a mean over 256² pixels underflow unscaled (GradScaler's job in training)
    G = build_generator(cfg, resolution=256, device="cuda", seed=0)
    graphed = GraphedTrainingSynthesis(G, batch_size=3)
    for seed in (0, 1):  # the second call replays with other codes
        ws = mapped_ws(G, 2, seed)
        w = ws.clone().requires_grad_(True)
        img = graphed(w)
        (img.square().mean() * scale).backward()
        # eager on the same padded batch of 3 (the same kernels), the loss on the first two
        w_e = torch.cat([ws, ws[-1:]]).requires_grad_(True)
        img_e = G.synthesis(w_e)
        (img_e[:2].square().mean() * scale).backward()
        assert img.shape == (2, 3, 256, 256)
        assert _rel(img, img_e[:2]) < 1e-5
        assert _rel(w.grad, w_e.grad[:2]) < 1e-3, _rel(w.grad, w_e.grad[:2])
        assert float(w.grad.abs().max()) > 0
    with torch.no_grad():  # frozen parameters updated in place: the next call records anew (kept kernels)
        for prm in G.synthesis.parameters():
            prm.mul_(1.01)
    eager = G.synthesis(torch.cat([ws, ws[-1:]]).requires_grad_(True))[:2]  # as above: padded, under autograd
    assert _rel(graphed(ws), eager) < 1e-5
    a = graphed(ws.clone().requires_grad_(True))
    graphed(ws.clone().requires_grad_(True))
    with pytest.raises(RuntimeError, match="earlier call"):
        a.square().mean().backward()
    with pytest.raises(ValueError, match="up to 3"):
        graphed(mapped_ws(G, 4, 0))

    params = list(G.synthesis.parameters())
    G.synthesis.requires_grad_(True)
    try:
        by_weights = GraphedTrainingSynthesis(G, batch_size=2, ws_grad=False)
        ws = mapped_ws(G, 2, 2)
        with pytest.raises(ValueError, match="ws_grad=False"):
            by_weights(ws.clone().requires_grad_(True))
        for _ in range(2):  # the second round after an in-place update of every parameter
            for prm in params:
                prm.grad = None
            (by_weights(ws).square().mean() * scale).backward()
            graphed_grads = [prm.grad.clone() for prm in params]
            for prm in params:
                prm.grad = None
            (G.synthesis(ws).square().mean() * scale).backward()
            pairs = [(g, prm.grad) for g, prm in zip(graphed_grads, params) if float(prm.grad.abs().max()) > 0]
            assert len(pairs) > len(params) // 2
            assert max(_rel(g, e) for g, e in pairs) < 1e-3
            with torch.no_grad():
                for prm in params:
                    prm.mul_(1.01)
        G.synthesis.input.weight.requires_grad_(False)
        with pytest.raises(RuntimeError, match="requires_grad flags changed"):
            by_weights(ws)
    finally:
        G.synthesis.requires_grad_(False)
    assert not [w for w in recwarn if "AccumulateGrad" in str(w.message)]


@requires_cuda
def test_weight_gradients_beside_the_backward_on_gpu(monkeypatch):
    """fast_config overlap_weight_grads: T's kernel gradients on a side stream give the gradients of the backward
    that computes them in turn (eager, and replayed from CUDA graphs), and nothing is left pending after a
    backward."""
    from v2s_nb.stylegan3 import GraphedTrainingSynthesis, fast_layer
    scale = 2.0 ** 16
    G = build_generator("T", resolution=256, device="cuda", seed=0)
    params = list(G.synthesis.parameters())
    ws = mapped_ws(G, 2, 0)

    def grads(call):
        for prm in params:
            prm.grad = None
        w = ws.clone().requires_grad_(True)
        (call(w).square().mean() * scale).backward()
        return [w.grad] + [prm.grad for prm in params]

    G.synthesis.requires_grad_(True)
    try:
        ref = grads(G.synthesis)
        with fast_config.override(overlap_weight_grads=True):
            got = grads(G.synthesis)
            assert not fast_layer._PENDING
            graphed = GraphedTrainingSynthesis(G, batch_size=2)
            replay = [grads(graphed) for _ in range(2)]
        pairs = [(g, r) for g, r in zip(got, ref) if float(r.abs().max()) > 0]
        assert len(pairs) > len(params) // 2
        assert max(_rel(g, r) for g, r in pairs) < 1e-3
        assert max(_rel(g, r) for g, r in zip(replay[1], ref) if float(r.abs().max()) > 0) < 1e-3

        # a backward stopped part way (here the third layer's input gradient raises, its kernel gradient already
        # launched beside: waited for) leaves one layer's side work pending; the next forward lets it go
        conv_grads, calls = fast_layer._conv_grads, []

        def third_raises(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("stopped part way")
            return conv_grads(*args, **kwargs)

        monkeypatch.setattr(fast_layer, "_conv_grads", third_raises)
        with fast_config.override(overlap_weight_grads=True), pytest.raises(RuntimeError, match="part way"):
            grads(G.synthesis)
        monkeypatch.undo()
        assert fast_layer._PENDING
        with fast_config.override(overlap_weight_grads=True):
            G.synthesis(ws)
        assert not fast_layer._PENDING
    finally:
        G.synthesis.requires_grad_(False)


def test_channel_padding_for_tensor_cores_gives_the_same_sums(monkeypatch):
    """The zero-padded channels of the 3x3 path run on CUDA fp16; here forced on the CPU in float32 to check they
    compute the same thing, with and without autograd (1x1 kernels are left as they are)."""
    g = torch.Generator().manual_seed(0)
    cases = [(torch.randn(2, 13, 9, 9, generator=g), torch.randn(11, 13, 3, 3, generator=g), 2),
             (torch.randn(2, 13, 9, 9, generator=g), torch.randn(11, 13, 1, 1, generator=g), 0)]
    for x, w, pad in cases:
        s = torch.randn(2, 13, generator=g)
        ref = ops.modulated_conv2d(x, w, s, padding=pad, input_gain=torch.tensor(0.7), fused=False)
        monkeypatch.setattr(ops, "_pad_for_tensor_cores", lambda t: True)
        with torch.no_grad():
            padded = ops.modulated_conv2d(x, w, s, padding=pad, input_gain=torch.tensor(0.7), fused=False)
        xg = x.clone().requires_grad_(True)
        padded_grad = ops.modulated_conv2d(xg, w, s, padding=pad, input_gain=torch.tensor(0.7), fused=False)
        monkeypatch.undo()
        assert padded.shape == ref.shape and padded.is_contiguous()
        assert torch.allclose(padded, ref, atol=1e-5) and torch.allclose(padded_grad, ref, atol=1e-5)
        padded_grad.sum().backward()
        assert xg.grad.shape == x.shape


def test_zero_padded_channels_feed_the_matrix_product_unchanged():
    """The fast path's fp16 outputs are views of channel-padded buffers (zeros in the extra channels); the next 1x1
    modulated convolution multiplies the whole buffer with zero-padded weights: same result as the plain view.
    Only views recorded by ops.mark_zero_padded count as padded."""
    g = torch.Generator().manual_seed(0)
    buf = torch.randn(2, 16, 5, 5, generator=g)
    buf[:, 13:] = 0
    x = buf[:, :13]
    w, s = torch.randn(11, 13, 1, 1, generator=g), torch.randn(2, 13, generator=g)
    ref = ops.modulated_conv2d(x.contiguous(), w, s, input_gain=torch.tensor(0.7))
    assert ops.zero_padded_channels(x) is None  # not marked: treated as an ordinary view
    assert ops.mark_zero_padded(x) is x
    assert ops.zero_padded_channels(x).shape == (2, 16, 25)
    out = ops.modulated_conv2d(x, w, s, input_gain=torch.tensor(0.7))
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5)


def test_prescaled_chain_gives_the_modulated_convolution(monkeypatch):
    """The fast path's T layers split the modulated convolution into input scale, shared convolution and
    demodulation, and chain the scale into the previous layer's activation kernel (which writes a zero-padded
    buffer on CUDA fp16). Forced here on the CPU in float32: the pieces, with the input already scaled and read
    from a marked padded buffer, give the modulated convolution."""
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(2, 13, 9, 9, generator=g), torch.randn(11, 13, 3, 3, generator=g)
    s = torch.randn(2, 13, generator=g)
    ref = ops.modulated_conv2d(x, w, s, padding=2, input_gain=torch.tensor(0.7))
    kernel = ops.shared_kernel(w)
    scale, dcoefs = ops.modulation_factors(kernel, s, True, torch.tensor(0.7))
    assert scale.shape == (2, 13) and dcoefs.shape == (2, 11)
    buf = torch.zeros(2, 16, 9, 9)
    buf[:, :13] = x * scale[:, :, None, None]
    xs = buf[:, :13]
    ops.mark_zero_padded(xs)
    monkeypatch.setattr(ops, "_pad_for_tensor_cores", lambda t: True)
    with torch.no_grad():
        raw = ops.scaled_input_conv2d(xs, kernel, None, padding=2, prescaled=True)
    monkeypatch.undo()
    assert raw.shape == ref.shape
    assert torch.allclose(raw * dcoefs[:, :, None, None], ref, atol=1e-5)
    unscaled = ops.scaled_input_conv2d(x, kernel, scale, padding=2)
    assert torch.allclose(unscaled * dcoefs[:, :, None, None], ref, atol=1e-5)


def test_weight_derived_operands_are_kept_in_inference_and_follow_the_weight():
    """The shared kernel (and its tap energy) and the convolution forms' weight operands depend on the weight only:
    in inference they are built once and kept; a changed weight (an optimiser step, a load: its version moves) gets
    new ones, and under autograd the kernel is recomputed so gradients reach the weight."""
    from v2s_nb.stylegan3 import fast_conv

    from v2s_nb.stylegan3.fast_path import plan_for

    G = tiny_generator("T", seed=0)
    layer = getattr(G.synthesis, G.synthesis.layer_names[1])
    plan = plan_for(layer, "cpu")
    assert plan_for(layer, "cpu") is plan  # one plan per layer and device
    with torch.no_grad():
        k1, e1 = plan.shared_kernel()
        k2, e2 = plan.shared_kernel()
        assert k1 is k2 and e1 is e2
        assert torch.equal(k1, ops.shared_kernel(layer.weight)) and torch.equal(e1, ops.kernel_tap_energy(k1))
        layer.weight.mul_(2)  # the weight changes in place: its version moves
        k3, _ = plan.shared_kernel()
        assert k3 is not k1 and torch.equal(k3, ops.shared_kernel(layer.weight))
        built = []
        build = lambda: built.append(1) or layer.weight.sum()  # noqa: E731
        a = fast_conv.weight_derived(layer.weight, ("t",), build)
        assert fast_conv.weight_derived(layer.weight, ("t",), build) is a and len(built) == 1
        fast_conv.weight_derived(layer.weight, ("u",), build)  # another form / layout: its own entry
        layer.weight.add_(1)
        fast_conv.weight_derived(layer.weight, ("t",), build)
        assert len(built) == 3
    with torch.inference_mode():
        layer.weight.mul_(0.5)  # (a change, so that the entry is rebuilt inside inference mode)
        k5, _ = plan.shared_kernel()
    assert not k5.is_inference()  # so a later autograd pass may save it (a frozen weight, an input with grad)
    x = torch.ones(3, requires_grad=True)
    (x[:, None] * k5.reshape(1, -1)[:, :3].T).sum().backward()
    layer.weight.requires_grad_(True)
    k4, _ = plan.shared_kernel()  # autograd on, a trainable weight: recomputed, connected to it
    k4.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_transposes_refuse_samples_past_32_bit_offsets():
    from v2s_nb.stylegan3 import fast_conv

    big = torch.empty(1, 2 ** 15, 2 ** 8, 2 ** 8, device="meta")  # 2**31 elements in one sample
    with pytest.raises(ValueError, match="too large"):
        fast_conv.to_nhwc(big)
    with pytest.raises(ValueError, match="too large"):
        fast_conv.to_nchw(big)
    with pytest.raises(ValueError, match="fewer than"):
        fast_conv.to_nhwc(torch.empty(1, 8, 2, 2, device="meta"), 4)


def test_filter_plans_are_not_reused_for_another_tensor_at_the_same_address():
    """The fast path caches per-filter matrices under the buffer's address and version; a freed generator's
    address can be reused by a new one's filters with other values. The cache must rebuild then (it once served
    a stale plan to a second generator in the same process: fp16 gradient errors 4x the plain path's)."""
    from v2s_nb.stylegan3 import fast_ops

    cache, built = {}, []
    a, b = torch.ones(3), torch.zeros(3)
    build = lambda t: (lambda: built.append(t) or float(t.sum()))  # noqa: E731
    assert fast_ops._cached(cache, "k", (a,), build(a)) == 3.0
    assert fast_ops._cached(cache, "k", (a,), build(a)) == 3.0 and len(built) == 1  # a hit for the same tensor
    assert fast_ops._cached(cache, "k", (b,), build(b)) == 0.0 and len(built) == 2  # same key, another tensor


@requires_cuda
def test_triton_convolution_matches_cudnn_on_gpu():
    from v2s_nb.stylegan3 import fast_conv

    g = torch.Generator().manual_seed(0)
    forms = ["cudnn", "pointers", "rows"] if torch.cuda.get_device_capability()[0] >= 9 else ["cudnn", "pointers"]
    for c, o, size in [(81, 51, 70), (51, 32, 33), (32, 32, 64), (51, 32, 301), (128, 81, 40), (512, 323, 20)]:
        buf = torch.randn(3, c + (-c) % 8, size, size + (-size) % 8, generator=g).to("cuda", torch.float16)
        x = buf[:, :c, :, :size]  # channels and rows padded, as the previous layer writes it
        w = (torch.randn(o, c, 3, 3, generator=g) / (3 * c ** 0.5)).cuda()
        ref = torch.nn.functional.conv2d(x.float(), w, padding=2)
        with torch.no_grad():
            assert fast_conv.applies(x, w)
            for form in forms + [None]:
                out = fast_conv.conv2d_nchw(x, w, 2, form=form)
                assert float((out.float() - ref).abs().max() / ref.abs().max()) < 2e-3, form


def test_convolution_gradients_refuse_other_dtypes_and_shapes():
    """fast_conv's gradient functions take fp16 only and check the shapes fit (checked before any kernel runs; the
    values are tested under Triton's interpreter in tests/interpreted/test_fast_conv_grads.py)."""
    from v2s_nb.stylegan3 import fast_conv

    x, gy, w = torch.zeros(2, 5, 9, 9), torch.zeros(2, 4, 11, 11), torch.zeros(4, 5, 3, 3)
    with pytest.raises(ValueError, match="float16"):
        fast_conv.conv2d_weight_grad_nchw(x, gy.half(), 3, 2)
    with pytest.raises(ValueError, match="float16"):
        fast_conv.conv2d_input_grad_nchw(gy, w, 2, x.shape)
    with pytest.raises(ValueError, match=r"expected \(2, 4, 9, 9\)"):  # padding 1 gives 9 x 9 outputs
        fast_conv.conv2d_weight_grad_nchw(x.half(), gy.half(), 3, 1)
    with pytest.raises(ValueError, match=r"expected x_shape \(2, 5, 7, 7\)"):
        fast_conv.conv2d_input_grad_nchw(gy.half(), w, 3, x.shape)
    with pytest.raises(ValueError, match="don't fit"):
        fast_conv.conv2d_input_grad_nchw(gy.half(), w[:3], 2, x.shape)


@requires_cuda
def test_convolution_gradients_match_cudnn_on_gpu():
    """On T-like layers (odd channel counts, padding 2, a channel slice of a row-padded x as the fast path writes
    it): both gradients against cuDNN's backward in float32."""
    from v2s_nb.stylegan3 import fast_conv

    g = torch.Generator().manual_seed(0)
    for c, o, size in [(81, 51, 70), (51, 32, 301), (32, 32, 64), (128, 81, 40), (512, 323, 20)]:
        buf = torch.randn(3, c + (-c) % 8, size, size + (-size) % 8, generator=g).to("cuda", torch.float16)
        x = buf[:, :c, :, :size]
        w = (torch.randn(o, c, 3, 3, generator=g) / (3 * c ** 0.5)).cuda()
        gy = torch.randn(3, o, size + 2, size + 2, generator=g).to("cuda", torch.float16)
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # a float32 reference
            ref_x, ref_w, _ = torch.ops.aten.convolution_backward(
                gy.float(), x.float(), w.half().float(), None, [1, 1], [2, 2], [1, 1], False, [0, 0], 1,
                [True, True, False])
            scale = torch.rand(3, c, generator=g).cuda() + 0.5
            ref_ws = torch.ops.aten.convolution_backward(
                gy.float(), x.float() * scale.half().float()[:, :, None, None], w, None, [1, 1], [2, 2], [1, 1],
                False, [0, 0], 1, [False, True, False])[1]
        gx = fast_conv.conv2d_input_grad_nchw(gy, w, 2, x.shape)
        assert gx.dtype == torch.float16
        assert float((gx.float() - ref_x).abs().max() / ref_x.abs().max()) < 2e-3, (c, o, size)
        for form in ("triton", "cudnn"):
            gw = fast_conv.conv2d_weight_grad_nchw(x, gy, 3, 2, form=form)
            gws = fast_conv.conv2d_weight_grad_nchw(x, gy, 3, 2, scale=scale, form=form)
            assert gw.dtype == torch.float32
            assert float((gw - ref_w).abs().max() / ref_w.abs().max()) < 2e-3, (c, o, size, form)
            assert float((gws - ref_ws).abs().max() / ref_ws.abs().max()) < 2e-3, (c, o, size, form)



@requires_cuda
def test_batched_1x1_grads_match_float32_on_gpu():
    """R-like layers (channels past and under the tiles, a channel slice of a zero-padded x, a large plane that
    splits the pixels over many programs): the per-sample weight and input gradients against float32 products."""
    from v2s_nb.stylegan3 import fast_conv

    g = torch.Generator().manual_seed(0)
    for c, o, size in [(102, 102, 300), (162, 102, 60), (13, 70, 17)]:
        buf = torch.randn(3, c + (-c) % 8, size, size, generator=g).to("cuda", torch.float16)
        x = buf[:, :c]
        gy = torch.randn(3, o, size, size, generator=g).to("cuda", torch.float16)
        ref = torch.bmm(gy.float().reshape(3, o, -1), x.float().reshape(3, c, -1).transpose(1, 2))
        out = fast_conv.batched_1x1_weight_grad(x, gy)
        assert out.shape == (3, o, c) and out.dtype == torch.float32
        assert float((out - ref).abs().max() / ref.abs().max()) < 2e-3, (c, o, size)
        weight = torch.randn(3, o, c, generator=g).cuda() / c ** 0.5
        ref_x = torch.bmm(weight.half().float().transpose(1, 2), gy.float().reshape(3, o, -1))
        gx = fast_conv.batched_1x1_input_grad(weight, gy)
        assert gx.shape == (3, c, size, size) and gx.dtype == torch.float16
        assert float((gx.float().reshape(3, c, -1) - ref_x).abs().max() / ref_x.abs().max()) < 2e-3, (c, o, size)

def test_fast_config_reads_the_environment_and_restores_overrides():
    from v2s_nb.stylegan3 import fast_config
    from v2s_nb.stylegan3.fast_config import FastConfig

    env = {"V2S_NB_FUSED": "0", "V2S_NB_FAST_CHUNK_MB": "64", "V2S_NB_FP16_RANK_TOL": "1e-3"}
    assert FastConfig.from_env(env) == FastConfig(use_fused=False, chunk_mb=64, fp16_rank_tol=1e-3)
    assert FastConfig.from_env({}) == FastConfig()
    assert FastConfig.from_env({"V2S_NB_LAYER_FUNCTION": "0"}) == FastConfig(layer_function=False)
    assert FastConfig.from_env({"V2S_NB_TRITON_CONV_GRADS": "0"}) == FastConfig(triton_conv_grads=False)
    assert FastConfig().layer_function
    with pytest.raises(ValueError, match="V2S_NB_LAYER_FUNCTION='yes' is not valid"):
        FastConfig.from_env({"V2S_NB_LAYER_FUNCTION": "yes"})
    with pytest.raises(ValueError, match="V2S_NB_FUSED_WARPS='many' is not valid"):
        FastConfig.from_env({"V2S_NB_FUSED_WARPS": "many"})
    with pytest.raises(ValueError, match="fused_warps must be"):
        FastConfig(fused_warps=3)
    before = fast_config.current()
    with fast_config.override(use_fused=not before.use_fused, chunk_mb=8) as inside:
        assert fast_config.current() is inside and inside.chunk_bytes == 8 * 2 ** 20
        assert inside.use_fused != before.use_fused and inside.fused_warps == before.fused_warps
    assert fast_config.current() == before
    with pytest.raises(TypeError, match="unknown fast-path setting"):
        with fast_config.override(use_fusd=False):
            pass
    try:
        assert fast_config.configure(fused_warps=8).fused_warps == 8 and fast_config.current().fused_warps == 8
    finally:
        fast_config.configure(fused_warps=before.fused_warps)


def test_fast_ops_follow_the_config(monkeypatch):
    """use_fused picks the fused kernel or the unfused ones (each stubbed here: no GPU); bf16x3 may turn the float32
    layers' three-pass bf16 products off."""
    from v2s_nb.stylegan3 import fast_config, fast_ops

    class Unfused(Exception):
        pass

    def unfused(*args, **kwargs):
        raise Unfused

    monkeypatch.setattr(fast_ops, "fused_filtered_lrelu_forward", lambda *a, **k: "fused")
    monkeypatch.setattr(fast_ops, "_prepared_filters", unfused)
    args = (torch.zeros(1, 2, 8, 8), torch.ones(4), torch.ones(4), torch.zeros(2), 2, 2, [1, 1, 1, 1], 1.0, 0.2, 256.0)
    with fast_config.override(use_fused=True):
        assert fast_ops.fast_filtered_lrelu_forward(*args) == "fused"
    with fast_config.override(use_fused=False), pytest.raises(Unfused):
        fast_ops.fast_filtered_lrelu_forward(*args)
    for allowed, expected in ((True, "bf16x3" if fast_ops.BF16X3 else "tf32x3"), (False, "tf32x3")):
        with fast_config.override(bf16x3=allowed):
            assert fast_ops._forward_precision(torch.float32) == expected


def test_codes_tiles_and_windows_follow_the_settings(monkeypatch):
    """The codes kernels' tiles (fast_ops.CODES_TILES per dtype and upsampling, else the backward's for fp16, 64 for
    float32) and their window blocks: T's 2x layer on 128-wide tiles as 64 + 16 of its window in either dtype; on
    64-wide ones 32 + 16 in fp16 (CODES_BLOCK_WINDOWS), whole in float32."""
    from v2s_nb.stylegan3 import fast_ops

    L = build_generator("T", resolution=1024, channel_scale=1 / 16, seed=0).synthesis.L11_1044_3
    args = (L.up_filter, L.down_filter, L.up_factor, L.down_factor, L.padding)
    f16, f32 = torch.float16, torch.float32
    assert fast_ops._codes_tiles(f16, 2, 1044, 1044) == fast_ops.BACKWARD_TILES
    assert fast_ops._codes_tiles(f32, 2, 1044, 1044) == fast_ops.CODES_FLOAT32_TILES
    monkeypatch.setattr(fast_ops, "CODES_TILES", {(f16, 2): (64,)})
    assert fast_ops._codes_tiles(f16, 2, 1044, 1044) == (64,) and fast_ops._codes_tiles(f16, 4, 1044, 1044) != (64,)
    windows = {}
    for dtype in (f16, f32):
        for bu in (64, 128):
            plan = fast_ops._fused_plan(*args, dtype, torch.device("cpu"), bu)
            w = fast_ops.codes_window(plan, dtype, 2)
            windows[dtype, bu] = (w["KAX"], w["KBX"], w["KAY"], w["KBY"])
    assert windows[f16, 128] == windows[f32, 128] == (64, 16, 64, 16)
    assert windows[f16, 64] == (32, 16, 32, 16) and windows[f32, 64] == (64, 0, 64, 0)


@pytest.mark.parametrize("cfg", ["R", "T"])
def test_layer_plans_on_the_cpu_give_the_plain_images(cfg, monkeypatch):
    """The fast path's layer logic (plans; T's 3x3 layers chained, each handing the next its input scale and
    factors) run on the CPU, where the kernels fall back to the reference ops: the plain path's images and feature
    maps. (With the kernels, on CUDA: test_fast_matches_plain_on_gpu.)"""
    from v2s_nb.stylegan3 import fast_path

    chained = []

    def chains_into(self, nxt):  # as on CUDA in inference
        chained.append(self.three_by_three and nxt.three_by_three and not nxt.is_torgb)
        return chained[-1]

    monkeypatch.setattr(fast_path.LayerPlan, "chains_into", chains_into)
    G = tiny_generator(cfg, seed=0)
    syn = G.synthesis
    ws = mapped_ws(G, 2, seed=3)
    with torch.no_grad():
        styles = syn.styles(ws)
        x0 = syn.input.forward_styles(styles["input"])
        fast, _ = fast_path.run_layers(syn, x0, styles, out_gain=syn.output_scale)
        plain = syn.from_styles(styles, impl="plain")
        middle = syn.layer_names[len(syn.layer_names) // 2]
        _, feats = fast_path.run_layers(syn, x0, styles, stop_after=middle, collect={middle})
        plain_feats = syn.feature_maps(ws, middle, impl="plain")
    assert any(chained) == (cfg == "T")  # T's 3x3 layers chain; R's 1x1 layers don't
    assert fast.shape == plain.shape and float((fast - plain).abs().max()) <= 1e-4 * float(plain.abs().max())
    assert torch.allclose(feats[middle], plain_feats[middle], rtol=1e-4, atol=1e-5)


def test_backward_precision_follows_cudnn_tf32_and_the_config():
    """The recomputing backward's float32 products: one-pass TF32 only where cuDNN's convolutions may use TF32 and
    fast_config's tf32_backward is on; three-pass TF32 (float32 accuracy) otherwise; fp16 layers: fp16 products."""
    from v2s_nb.stylegan3 import fast_config, fast_ops

    torch.backends.cudnn.allow_tf32 = True  # restored by the autouse fixture
    assert fast_ops._backward_precision(torch.float32) == "tf32"
    assert fast_ops._backward_precision(torch.float16) == "ieee"
    with fast_config.override(tf32_backward=False):
        assert fast_ops._backward_precision(torch.float32) == "tf32x3"
    torch.backends.cudnn.allow_tf32 = False
    assert fast_ops._backward_precision(torch.float32) == "tf32x3"
