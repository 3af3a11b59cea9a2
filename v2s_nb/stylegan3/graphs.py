"""Synthesis replayed from CUDA graphs: one launch for the whole network at a fixed batch size.

At batch 1 most of StyleGAN3's early layers are tiny, and eager PyTorch spends more time launching their
kernels than the GPU spends running them. :class:`GraphedSynthesis` records ``G.synthesis.from_styles`` once
per batch size into a CUDA graph and replays it: the same kernels, the same numbers, without the per-kernel
launch cost. Inputs (the S codes and the per-sample input transform) are copied into static buffers first.

A graph reads the generator's parameters where they were when it was recorded, and values made from some of them
then: each layer's convolution kernel, which inference keeps between calls (every parameter in
:class:`GraphedSynthesis`, those that get no gradient in :class:`GraphedTrainingSynthesis`). So each call compares
those parameters with the recording's (storage and version) and records anew (the warm-up calls and the recording
again) after an in-place change (an optimiser step, ``load_state_dict``) or a replaced tensor; moving the generator
to another device raises (make a new instance). Gradients don't flow through :class:`GraphedSynthesis`'s replay
(inference only);
:class:`GraphedTrainingSynthesis` records the forward and the backward for gradient steps (the optimisation loops of
:mod:`v2s_nb.method.invert` use it at small batches).

A recording that CUDA ends with an error (seen once in a dozen new processes, not understood) is undone
(:func:`_undo_failed_capture`) and the step goes on eagerly, with a warning; :class:`CudaGraphError` is raised only
where the GPU can't be used after it.
"""

from __future__ import annotations

import contextlib
import gc
import warnings

import torch
from torch.autograd.function import once_differentiable

from ..errors import FallbackWarning, V2SError
from .networks import check_input_transform


def _cuda_device(G) -> torch.device:
    """G's device, which must be a CUDA one (else a ValueError naming the alternative)."""
    if G.device.type != "cuda":
        raise ValueError(f"CUDA graphs need the generator on a CUDA device; it is on {G.device}. Use "
                         "G.synthesis directly on the CPU.")
    return G.device


def indexed_cuda_device(device) -> torch.device:
    """``device`` as a torch.device with its index: ``cuda`` alone becomes the current device's index, since
    PyTorch's per-device state (streams, memory pools, the per-process memory cap) is looked up by index."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _checked_batch(batch_size) -> int:
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return int(batch_size)


def _parameters_stamp(G, device, params, versioned=None):
    """Where each of ``params`` lives and its version (only where ``versioned``, one flag a parameter, says so; None:
    all), to compare with a recording's. Raises ValueError if G has left ``device``."""
    if G.device != device:
        raise ValueError(f"the generator moved from {device} to {G.device} since this graph was recorded; make a new "
                         "one for the generator where it is now")
    versioned = (True,) * len(params) if versioned is None else versioned
    return tuple((p.data_ptr(), p._version if v else None) for p, v in zip(params, versioned))


class CudaGraphError(V2SError, RuntimeError):
    """A CUDA graph's recording failed and left the GPU unusable in this process (a new process is the way out)."""


def _undo_failed_capture(device: torch.device, pool, stream) -> None:
    """After a recording that CUDA ended with an error: gives the recording's memory pool back, makes ``stream`` the
    current stream again and gets PyTorch's CUDA random number generator out of its capturing state, then checks
    that the device works. Raises :class:`CudaGraphError` where it doesn't."""
    gc.collect()  # the failed graphs, held by the exception's frames until now
    index = indexed_cuda_device(device).index
    torch.cuda.set_stream(stream)  # torch.cuda.graph leaves its capture stream current when the capture's end raises
    try:  # the pool's capture never ended, so the allocator still routes to it and defers its frees (private API)
        torch._C._cuda_endAllocateToPool(index, pool)
    except (AttributeError, RuntimeError):
        pass  # the failure came before the capture began
    else:
        torch._C._cuda_releasePool(index, pool)
    try:
        # PyTorch 2.11 clears the generator's capture flag only when a capture ends well: one that does (a tiny one)
        graph, x = torch.cuda.CUDAGraph(), torch.zeros(1, device=device)
        with torch.cuda.graph(graph):
            x.add_(1)
        del graph
        torch.randn(1, device=device)  # raises "Offset increment outside graph capture" where it is still set
        torch.cuda.synchronize(device)
    except RuntimeError as e:
        raise CudaGraphError(
            f"a CUDA graph's recording failed and the GPU could not be used again after it ({str(e).splitlines()[0]});"
            " run the step again in a new Python process, with cuda_graphs=False in invert, invert_sequence and "
            "pivotal_tuning if it happens again") from e


def record_or_none(owner: str, device: torch.device, record):
    """``record(pool)``, which records CUDA graphs into the memory pool ``pool``; or, where CUDA ends that capture
    with an error (seen intermittently: docs/performance.md, 'Kernel compiles on a fresh machine'), None after
    undoing it (:func:`_undo_failed_capture`) and a :class:`~v2s_nb.errors.FallbackWarning`: the caller then runs
    the step eagerly (the same numbers, slower at small batches). Other errors pass unchanged."""
    cuda = device.type == "cuda"  # another device only in the CPU tests, which replace the recording
    pool = torch.cuda.graph_pool_handle() if cuda else None
    stream = torch.cuda.current_stream(device) if cuda else None
    try:
        return record(pool)
    except RuntimeError as e:  # torch.AcceleratorError is one
        if "captur" not in str(e):
            raise
        reason = str(e).splitlines()[0]
    _undo_failed_capture(device, pool, stream)  # out of the except block, so the failed graphs can go
    warnings.warn(f"CUDA ended the recording of {owner}'s graph with an error ({reason}); going on without CUDA "
                  "graphs (the same numbers, slower at small batches)", FallbackWarning, stacklevel=4)
    return None


def graphed_callables(fn, sample_args: tuple, pool, warm_up_iters: int = 2, **kwargs):
    """``torch.cuda.make_graphed_callables(fn, sample_args, **kwargs)`` recording into the memory pool ``pool``
    where this PyTorch takes one (2.3 and later), so that a failed recording's pool can be given back.

    Warmed up first by :func:`_warm_up` (``warm_up_iters`` forward and backward passes on the shared warm-up stream),
    not by make_graphed_callables itself: its warm-up takes a new stream each time, and every stream that runs a
    cuBLAS call keeps a workspace for the life of the process (docs/performance.md, "Memory kept between calls")."""
    import inspect

    _warm_up(fn, sample_args, sample_args[0].device, iters=warm_up_iters)
    if pool is not None and "pool" in inspect.signature(torch.cuda.make_graphed_callables).parameters:
        kwargs["pool"] = pool
    return torch.cuda.make_graphed_callables(fn, sample_args, num_warmup_iters=0, **kwargs)


def _pad_rows(part: torch.Tensor, pad: int) -> torch.Tensor:
    """``part`` with its last row repeated ``pad`` more times (a short batch filled up to the recorded size)."""
    return torch.cat([part, part[-1:].expand(pad, *part.shape[1:])]) if pad else part


class GraphedSynthesis:
    """``G.synthesis`` for one batch size on CUDA, replayed from a CUDA graph.

    Args:
        G: a :class:`~v2s_nb.stylegan3.Generator` on a CUDA device.
        batch_size: the batch recorded; smaller batches are padded (by repeating the last sample), larger
            ones are split.
        force_fp32, impl: as for ``G.synthesis`` (fixed at recording time).
    Call ``graphed(ws, transform=None)`` (ws [N, num_ws, w_dim]) or ``graphed.from_styles(styles, transform)``;
    both return float32 images [N, C, R, R] on the GPU, as ``G.synthesis`` does. Where CUDA ends the recording with
    an error, a :class:`~v2s_nb.errors.FallbackWarning` says so and calls run eagerly from then on.
    """

    def __init__(self, G, batch_size: int = 1, force_fp32: bool = False, impl: str | None = None):
        self.G, self.device, self.batch_size = G, _cuda_device(G), _checked_batch(batch_size)
        self._kwargs = {"force_fp32": bool(force_fp32), "impl": impl}
        syn = G.synthesis
        with torch.no_grad():
            probe = syn.styles(G.mapping.w_avg.reshape(1, 1, -1).expand(1, G.num_ws, -1))
        self._styles = {k: v.expand(self.batch_size, -1).clone() for k, v in probe.items()}
        self._transform = syn.input.transform.reshape(1, 3, 3).expand(self.batch_size, 3, 3).clone()
        self._params = tuple(syn.parameters())
        self._graph = None
        self._stamp = None  # the parameters' storage and versions at the recording
        self._out = None
        self._eager = False  # set where CUDA refused the recording: G.synthesis from then on

    def _record(self):
        syn = self.G.synthesis
        self._graph = self._out = None  # the last recording's memory goes first
        self._stamp = _parameters_stamp(self.G, self.device, self._params)
        side = warm_up_stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(2):  # compiles the Triton kernels and fills the caches outside the recording
                syn.from_styles(self._styles, transform=self._transform, **self._kwargs)
        torch.cuda.current_stream(self.device).wait_stream(side)

        def record(pool):
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph, pool=pool):
                out = syn.from_styles(self._styles, transform=self._transform, **self._kwargs)
            return graph, out

        recorded = record_or_none("GraphedSynthesis", self.device, record)
        if recorded is None:
            self._eager = True
        else:
            self._graph, self._out = recorded

    @torch.no_grad()
    def from_styles(self, styles: dict, transform=None) -> torch.Tensor:
        """Images [N, C, R, R] float32 (GPU) from S codes (a dict as from ``G.synthesis.styles``)."""
        missing = [k for k in self._styles if k not in styles]
        if missing:
            raise KeyError(f"styles lacks entries for {missing}")
        n = int(styles["input"].shape[0])
        if transform is not None:
            check_input_transform(transform, n)  # before the reshape, which would take any 9k numbers
            transform = torch.as_tensor(transform, dtype=torch.float32, device=self.device).reshape(-1, 3, 3)
            transform = transform.expand(n, 3, 3)
        outs = []
        for start in range(0, n, self.batch_size):
            stop = min(n, start + self.batch_size)
            pad = self.batch_size - (stop - start)
            for k, buf in self._styles.items():
                buf.copy_(_pad_rows(styles[k][start:stop].to(device=self.device, dtype=buf.dtype), pad))
            if transform is None:
                self._transform.copy_(self.G.synthesis.input.transform.reshape(1, 3, 3).expand_as(self._transform))
            else:
                self._transform.copy_(_pad_rows(transform[start:stop], pad))
            if not self._eager and (self._graph is None
                                    or _parameters_stamp(self.G, self.device, self._params) != self._stamp):
                self._record()
            if self._eager:
                outs.append(self.G.synthesis.from_styles({k: v[:stop - start] for k, v in self._styles.items()},
                                                         transform=self._transform[:stop - start], **self._kwargs))
                continue
            self._graph.replay()
            outs.append(self._out[:stop - start].clone())
        return torch.cat(outs)

    def __call__(self, ws: torch.Tensor, transform=None) -> torch.Tensor:
        """Images [N, C, R, R] float32 (GPU) from ws [N, num_ws, w_dim]."""
        with torch.no_grad():
            return self.from_styles(self.G.synthesis.styles(ws.to(self.device)), transform=transform)


_WARM_UP_STREAMS: dict = {}  # device -> the stream recordings warm up on


def warm_up_stream(device) -> "torch.cuda.Stream":
    """The one side stream per device that recordings warm up on. One for all: PyTorch gives each stream that runs a
    cuBLAS call its own workspace and keeps it until the process ends, so a new stream per recording kept tens of MiB
    each time (docs/performance.md, 'memory kept after an inversion from CUDA graphs')."""
    device = indexed_cuda_device(device)
    stream = _WARM_UP_STREAMS.get(device)
    if stream is None:
        stream = _WARM_UP_STREAMS[device] = torch.cuda.Stream(device)
    return stream


def _warm_up(fn, inputs, device, iters: int = 2):
    """Runs ``fn(*inputs)`` forward and backward ``iters`` times on a side stream (CUDA): the Triton kernels compile
    and the caches (kernels kept per weight tensor) fill outside a recording. Its autograd graph, and with it the
    gradient accumulators of ``inputs`` made on that stream, are gone when it returns."""
    cuda = device.type == "cuda"
    if cuda:
        side = warm_up_stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
    wanted = [t for t in inputs if t.requires_grad]
    with torch.cuda.stream(side) if cuda else contextlib.nullcontext():
        for _ in range(iters):
            out = fn(*inputs)
            if out.requires_grad and wanted:
                torch.autograd.grad(out, wanted, torch.ones_like(out), allow_unused=True)
            del out
    if cuda:
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)


class _OwnGradients(torch.autograd.Function):
    """Identity on (ws, *the parameters that get gradients) in front of the replayed graphs, so that the gradients a
    call leaves behind are the caller's own.

    The backward graph writes its gradients into the same buffers on every replay, and autograd hands a leaf a
    gradient without copying it where the leaf had none. So ``ws.grad`` (or that of whatever ws was made from) is
    copied here (it is small), and a parameter's ``.grad`` that is still one of those buffers when the next call
    comes is copied then (:meth:`GraphedTrainingSynthesis._detach_parameter_grads`): gradients summed over calls
    (a batch split into parts) add up, and an optimiser loop that sets them to None between steps copies nothing."""

    @staticmethod
    def forward(ctx, owner, ws, *params):
        ctx.owner = owner
        return (ws.view_as(ws),) + tuple(p.view_as(p) for p in params)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_ws, *g_params):
        ctx.owner._replay_grads = {g.data_ptr() for g in g_params if g is not None}
        return (None, None if g_ws is None else g_ws.clone()) + g_params


class GraphedTrainingSynthesis:
    """``G.synthesis`` for gradient steps at one batch size on CUDA: its forward and its backward each replayed from
    a CUDA graph (``torch.cuda.make_graphed_callables``), inside ordinary autograd.

    For optimisation loops at small batches (pivotal tuning, the projection of one frame), where eager PyTorch spends
    more time launching the synthesis network's kernels, forward and backward, than the GPU spends running them.
    The loss and the optimiser stay eager: ``loss(graphed(ws)).backward()`` puts the gradients in ``ws.grad`` and
    the parameters' ``.grad`` as ``G.synthesis(ws)`` would; they are the caller's own tensors, so gradients summed
    over several calls (a batch split into parts) add up as they do eagerly.

    Which tensors get gradients is fixed when the graphs are recorded (the first call): ``ws`` when ``ws_grad``, and
    the synthesis parameters whose ``requires_grad`` is on then. Calls with other ``requires_grad`` flags raise (make a
    new instance). Each call's backward must run before the next call (the graphs keep one set of saved
    activations); a backward after a later call raises. Parameters may be updated in place (optimiser steps): the
    graphs recompute what they make from the parameters that get gradients, and a call after an in-place change of
    one that doesn't (or a replaced tensor) records them anew (see the module's docstring). Where CUDA ends a
    recording with an error, a :class:`~v2s_nb.errors.FallbackWarning` says so and calls run ``G.synthesis``
    eagerly from then on (the same numbers).

    Args:
        G: a :class:`~v2s_nb.stylegan3.Generator` on a CUDA device.
        batch_size: the batch recorded; smaller batches are padded (by repeating the last code; the padding gets no
            gradient), larger ones raise.
        ws_grad: whether gradients flow to ``ws``.
        force_fp32: as for ``G.synthesis``.
    Call ``graphed(ws)`` with ws [N, num_ws, w_dim] (N <= batch_size) -> float32 images [N, C, R, R] on the GPU.
    """

    def __init__(self, G, batch_size: int = 1, ws_grad: bool = True, force_fp32: bool = False):
        self.G, self.device, self.batch_size = G, _cuda_device(G), _checked_batch(batch_size)
        self.ws_grad = bool(ws_grad)
        self._kwargs = {"force_fp32": bool(force_fp32)}
        self._names, self._params = zip(*G.synthesis.named_parameters())
        self._graphed = None
        self._flags = None  # the parameters' requires_grad at recording
        self._stamp = None  # the parameters' storage, and the versions of those without gradients, at recording
        self._replay_grads = set()  # data pointers of the parameters' gradients the backward graph writes
        self._calls = 0
        self._eager = False  # set where CUDA refused the recording: G.synthesis from then on

    def _param_flags(self):
        return tuple(p.requires_grad for p in self._params)

    def _synthesis_of(self, ws, *params):
        """``G.synthesis(ws)`` with ``params`` in place of its parameters (same order as ``named_parameters``)."""
        return torch.func.functional_call(self.G.synthesis, dict(zip(self._names, params)), (ws,), self._kwargs)

    def _stamp_now(self, flags):
        # the parameters that get no gradient: their kernels are kept between calls (inference's), so their versions
        return _parameters_stamp(self.G, self.device, self._params, versioned=tuple(not f for f in flags))

    def _record(self, ws_dtype):
        flags = self._param_flags()
        if not (self.ws_grad or any(flags)):
            raise ValueError("nothing to differentiate: ws_grad is off and no synthesis parameter requires grad; "
                             "use GraphedSynthesis for inference")
        self._graphed = None  # the last recording's memory goes first
        self._stamp = self._stamp_now(flags)
        # a code from the middle of W (the mapping of z = 0) for the recording's warm-up steps
        with torch.no_grad():
            z = torch.zeros([1, self.G.z_dim], device=self.device)
            c = torch.zeros([1, self.G.c_dim], device=self.device) if self.G.c_dim else None
            w = self.G.mapping(z, c).to(ws_dtype)
        sample = w.expand(self.batch_size, -1, -1).clone().requires_grad_(self.ws_grad)
        # Recorded on stand-ins of the parameters (same storage, so in-place updates are seen): the recording's
        # autograd graph, which the graphs keep, then holds the stand-ins' gradient accumulators, not the
        # parameters', which later backwards feed from the caller's stream. The warm-up (graphed_callables') lets its
        # autograd graph go before the recording: make_graphed_callables' own keeps it alive through the recording,
        # whose backward then feeds accumulators made on the warm-up's stream from the recording's (PyTorch warns).
        stand_ins = tuple(p.detach().requires_grad_(p.requires_grad) for p in self._params)
        self._graphed = record_or_none("GraphedTrainingSynthesis", self.device, lambda pool: graphed_callables(
            self._synthesis_of, (sample,) + stand_ins, pool, allow_unused_input=True))
        self._eager = self._graphed is None
        self._flags = flags

    def _detach_parameter_grads(self):
        """Copies of the parameters' gradients that are still the backward graph's buffers (left by the last call's
        backward where a parameter had none), before the next replay writes over them."""
        if not self._replay_grads:
            return
        with torch.no_grad():
            for p in self._params:
                if p.grad is not None and p.grad.data_ptr() in self._replay_grads:
                    p.grad = p.grad.clone()

    def _check_current(self, token: int):
        if token != self._calls:
            raise RuntimeError("GraphedTrainingSynthesis: this backward belongs to an earlier call, whose saved "
                               "activations the later call replaced; run each call's backward before the next call")

    def __call__(self, ws: torch.Tensor) -> torch.Tensor:
        """Images [N, C, R, R] float32 (GPU) from ws [N, num_ws, w_dim], N <= batch_size, differentiable."""
        if ws.ndim != 3 or ws.shape[1:] != (self.G.num_ws, self.G.w_dim):
            raise ValueError(f"ws must be [N, {self.G.num_ws}, {self.G.w_dim}], got {tuple(ws.shape)}")
        n = int(ws.shape[0])
        if not 1 <= n <= self.batch_size:
            raise ValueError(f"this graph was recorded for batches of up to {self.batch_size}; got {n}. Make a "
                             "GraphedTrainingSynthesis with a larger batch_size, or split the batch and run each "
                             "part's backward before the next")
        if ws.requires_grad and not self.ws_grad:
            raise ValueError("ws requires grad but this graph was recorded with ws_grad=False (no gradient would "
                             "reach ws); make one with ws_grad=True")
        ws = ws.to(self.device)
        if self._eager:
            pass
        elif self._graphed is None:
            self._record(ws.dtype)
        elif self._param_flags() != self._flags:
            raise RuntimeError("the synthesis parameters' requires_grad flags changed since the graphs were "
                               "recorded; make a new GraphedTrainingSynthesis for the new set")
        elif self._stamp_now(self._flags) != self._stamp:
            self._record(ws.dtype)
        if self._eager:  # CUDA refused a recording
            return self.G.synthesis(ws, **self._kwargs)
        pad = self.batch_size - n
        if self.ws_grad and not ws.requires_grad:
            ws = ws.detach().requires_grad_(True)  # the recorded graph takes a ws that requires grad
        self._detach_parameter_grads()
        self._calls += 1
        trained = [p for p, flag in zip(self._params, self._flags) if flag]
        ws, *trained = _OwnGradients.apply(self, _pad_rows(ws, pad), *trained)
        trained = iter(trained)
        out = self._graphed(ws, *(next(trained) if flag else p for p, flag in zip(self._params, self._flags)))
        if out.requires_grad:
            token = self._calls
            out.register_hook(lambda grad: self._check_current(token))
        # a copy: the graph's output buffer is rewritten by the next call
        return out[:n].clone() if pad else out.clone()
