"""The fast synthesis path's tuning knobs, in one place.

The knobs change how the fast path computes (which kernels, how much memory per step), never what: every setting
gives the plain path's images to the tolerances the tests check. Defaults are what measured best on the GPUs we
tried (docs/performance.md, 'Kernel choices, measured'); the benchmarks set them through this module to compare.

Read once, at import, from environment variables (for runs that can't change code), then changed in code::

    from v2s_nb.stylegan3 import fast_config

    fast_config.current()                       # the settings in force
    with fast_config.override(use_fused=False):  # for a block (restored after it, also on errors)
        G.synthesis(ws, impl="fast")
    fast_config.configure(chunk_mb=256)         # from now on

========================  ======================  ==========================================================
field                     environment variable    meaning
========================  ======================  ==========================================================
``use_fused``             ``V2S_NB_FUSED``        1 (default): the fused filtered-leaky-ReLU kernel where it
                                                  applies; 0: always the unfused kernels (per channel chunk)
``use_fused_backward``    ``V2S_NB_FUSED_BACKWARD``  1 (default): the fused backward kernel where it applies; 0:
                                                  the plain operator recomputed under autograd
``chunk_mb``              ``V2S_NB_FAST_CHUNK_MB``   upper bound (MiB) on one chunk's intermediate in the unfused
                                                  kernels, the recomputed backward and the fused backward's
                                                  float32 sums (default 1024; a chunk of one sample takes its
                                                  channels in pieces of ``fast_ops.SAMPLE_PIECE_BYTES``)
``fused_warps``           ``V2S_NB_FUSED_WARPS``  warps per program of the fused forward kernels (default 4)
``fp16_rank_tol``         ``V2S_NB_FP16_RANK_TOL``   relative tolerance below which an fp16 layer's radial
                                                  down-filter drops separable terms (default 2.5e-4)
``bf16x3``                (none)                  True (default): float32 layers' fused forward in three-pass
                                                  bf16 products where Triton has them and cuDNN may use TF32;
                                                  False: three-pass TF32 always
``tf32_backward``         (none)                  True (default): float32 layers' fused backward in one-pass
                                                  TF32 products where cuDNN may use TF32 (the convolutions
                                                  and 1x1 products around it then round to TF32 too); False:
                                                  three-pass TF32 (float32 accuracy) always
``modulation_kernels``    (none)                  True (default): fast_modulation's one-launch modulation
                                                  factors and ToRGB; False: the small ops
``layer_function``        ``V2S_NB_LAYER_FUNCTION``  1 (default): under autograd, each synthesis layer (not ToRGB)
                                                  as one autograd Function that saves only its input and its
                                                  convolution's output (:mod:`.fast_layer`); 0: the layer's ops
                                                  under ordinary autograd (what they save, side by side)
``triton_conv_grads``     ``V2S_NB_TRITON_CONV_GRADS``  1 (default): the 3x3 layers' input gradients by fast_conv's
                                                  NCHW kernels (no transposes; fp16 on CUDA), their weight
                                                  gradients by :func:`.fast_conv.conv2d_weight_grad_nchw`
                                                  (cuDNN on our channels-last copies, the input scale in
                                                  them); R's 1x1 layers' gradients by its per-sample
                                                  products on large planes
                                                  (:data:`.fast_conv.BMM_GRADS_MIN_PIXELS`); 0: cuDNN's
                                                  ``convolution_backward`` for both (T batch 8: 3.2 GiB more;
                                                  docs/performance.md) and cuBLAS's batched products for R
``saved_codes``           ``V2S_NB_SAVED_CODES``  1 (default): the layer Function's forward stores the
                                                  activation's derivative (2 bits per upsampled sample) and its
                                                  backward reads it instead of recomputing the pre-activation
                                                  (:func:`.fast_ops.forward_with_codes`; on planes of 100+
                                                  output pixels: R's layers, T's 2x layers, T's 4x layers
                                                  where the weights train or the convolution's output has
                                                  512²+ pixels: ``fast_layer._codes_3x3``); 0: the backward
                                                  recomputes it from the saved convolution output (slower, a
                                                  little less memory: docs/performance.md)
``recompute_conv_output``  ``V2S_NB_RECOMPUTE_CONV_OUTPUT``  with saved codes, 3x3 (T) layers: 1: the
                                                  convolution's output (for the demodulation's gradient) is
                                                  recomputed in the backward, not kept (less memory, one
                                                  more convolution); 0 (default): kept
``overlap_weight_grads``  ``V2S_NB_OVERLAP_WEIGHT_GRADS``  under autograd on CUDA, 3x3 (T) layers: 1 (default):
                                                  each layer's weight gradient runs on a side stream while
                                                  the backward goes on (joined before the weights' gradients
                                                  are used; :func:`.fast_layer.kernels_ahead`; a little
                                                  faster, one layer's x and d y kept a layer longer:
                                                  docs/performance.md); 0: in the layer's backward, in turn
``precompile_workers``    ``V2S_NB_PRECOMPILE_WORKERS``  processes that compile a stage's Triton kernels before it
                                                  starts (:mod:`.precompile`): -1 (default) one per CPU, 16
                                                  at most; 0 off, each kernel compiles at its first launch,
                                                  in turn; 1 in this process; n: n processes
========================  ======================  ==========================================================
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Iterator, Mapping

__all__ = ["FastConfig", "current", "configure", "override"]


@dataclasses.dataclass(frozen=True)
class FastConfig:
    """The fast path's tuning knobs (see the module's table). Immutable: change them with :func:`configure` or
    :func:`override`."""

    use_fused: bool = True
    use_fused_backward: bool = True
    chunk_mb: int = 1024
    fused_warps: int = 4
    fp16_rank_tol: float = 2.5e-4
    bf16x3: bool = True
    tf32_backward: bool = True
    modulation_kernels: bool = True
    layer_function: bool = True
    triton_conv_grads: bool = True
    saved_codes: bool = True
    recompute_conv_output: bool = False
    overlap_weight_grads: bool = True
    precompile_workers: int = -1

    def __post_init__(self):
        if not isinstance(self.chunk_mb, int) or self.chunk_mb < 1:
            raise ValueError(f"chunk_mb must be a whole number of MiB >= 1, got {self.chunk_mb!r}")
        if self.fused_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"fused_warps must be 1, 2, 4, 8 or 16, got {self.fused_warps!r}")
        if not (isinstance(self.fp16_rank_tol, (int, float)) and 0 <= self.fp16_rank_tol < 1):
            raise ValueError(f"fp16_rank_tol must be a number in [0, 1), got {self.fp16_rank_tol!r}")
        if not isinstance(self.precompile_workers, int) or self.precompile_workers < -1:
            raise ValueError(f"precompile_workers must be -1 (one per CPU, 16 at most), 0 (off) or a number of "
                             f"processes, got {self.precompile_workers!r}")

    @property
    def chunk_bytes(self) -> int:
        """``chunk_mb`` in bytes."""
        return self.chunk_mb * 2 ** 20

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "FastConfig":
        """The defaults, with each knob whose environment variable is set (see the module's table) taken from it."""
        def read(var, parse, field):
            text = environ.get(var)
            if text is None:
                return {}
            try:
                return {field: parse(text.strip())}
            except ValueError:
                raise ValueError(f"{var}={text!r} is not valid: unset it, or give {parse.__doc__}") from None

        def flag(text):
            """0 or 1"""
            if text not in ("0", "1"):
                raise ValueError(text)
            return text == "1"

        def whole(text):
            """a whole number"""
            return int(text)

        def number(text):
            """a number"""
            return float(text)

        kwargs = {}
        for var, parse, field in [("V2S_NB_FUSED", flag, "use_fused"),
                                  ("V2S_NB_FUSED_BACKWARD", flag, "use_fused_backward"),
                                  ("V2S_NB_FAST_CHUNK_MB", whole, "chunk_mb"),
                                  ("V2S_NB_FUSED_WARPS", whole, "fused_warps"),
                                  ("V2S_NB_FP16_RANK_TOL", number, "fp16_rank_tol"),
                                  ("V2S_NB_LAYER_FUNCTION", flag, "layer_function"),
                                  ("V2S_NB_TRITON_CONV_GRADS", flag, "triton_conv_grads"),
                                  ("V2S_NB_SAVED_CODES", flag, "saved_codes"),
                                  ("V2S_NB_RECOMPUTE_CONV_OUTPUT", flag, "recompute_conv_output"),
                                  ("V2S_NB_OVERLAP_WEIGHT_GRADS", flag, "overlap_weight_grads"),
                                  ("V2S_NB_PRECOMPILE_WORKERS", whole, "precompile_workers")]:
            kwargs.update(read(var, parse, field))
        return cls(**kwargs)


_current = FastConfig.from_env()


def current() -> FastConfig:
    """The settings in force."""
    return _current


def triton_interpreting() -> bool:
    """Whether Triton's interpreter runs the kernels (``TRITON_INTERPRET=1``, set before Triton is imported): then
    they run on CPU tensors, as the interpreter tests use them."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _changed(changes: dict) -> FastConfig:
    names = {f.name for f in dataclasses.fields(FastConfig)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise TypeError(f"unknown fast-path setting(s) {unknown}; the settings are {sorted(names)}")
    return dataclasses.replace(_current, **changes)


def configure(**changes) -> FastConfig:
    """Changes the named settings from now on (e.g. ``configure(use_fused=False)``); returns the new settings."""
    global _current
    _current = _changed(changes)
    return _current


@contextlib.contextmanager
def override(**changes) -> Iterator[FastConfig]:
    """The named settings changed for the ``with`` block only (restored after it, also when it raises)."""
    global _current
    saved, _current = _current, _changed(changes)
    try:
        yield _current
    finally:
        _current = saved
