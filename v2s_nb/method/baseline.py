"""Section 3.5: the W+ baseline (eq 7) — apply the driving video's w+ motion to the (pose-encoded) reference.

Two readings, both available by name (``mode=``):

* ``'cumulative'`` (default): ``w_base(j) = w_ref^p + k (w_j - w_a)`` — the motion of frame ``j`` relative to
  the anchor frame ``a`` (``anchor=``, default 0: the first driving frame), scaled by the strength ``k``
  (``strength=``, default 1). It tracks the driving video: the anchor frame gives the reference itself, and
  frame ``j`` carries the whole displacement accumulated since the anchor.
* ``'printed'``: ``w_base(j) = w_ref^p + (w_{j-1} - w_j)``, the equation as printed in the paper (the
  comparison method of Table 1). It only holds a one-frame difference (with the sign printed, i.e. the motion
  reversed). For ``j = 0`` there is no ``w_{-1}``; we take ``w_{-1} := w_0``, so ``w_base(0) = w_ref^p``.
  ``strength`` scales the difference here too; ``anchor`` has no meaning for this reading and is ignored.

``w_ref^p`` may be one code ``[num_ws, w_dim]`` (the same for every frame) or one per frame
``[T, num_ws, w_dim]`` (pose encoding per frame, section 3.3).
"""

from __future__ import annotations

import math

import torch

__all__ = ["BASELINE_MODES", "baseline_ws", "check_mode"]

#: The readings of eq 7; the first is the default.
BASELINE_MODES = ("cumulative", "printed")


def check_mode(mode: str) -> str:
    if mode not in BASELINE_MODES:
        raise ValueError(f"baseline mode must be one of {BASELINE_MODES} ('cumulative': w_ref + (w_j - w_0), "
                         f"'printed': w_ref + (w_(j-1) - w_j) as printed in the paper), got {mode!r}")
    return mode


def baseline_ws(w_ref, ws_drive, mode: str = "cumulative", anchor: int = 0, strength: float = 1.0) -> torch.Tensor:
    """Eq 7 for every driving frame: float32 ``[T, num_ws, w_dim]``.

    Args:
        w_ref: ``w_ref^p``: ``[num_ws, w_dim]`` (or ``[1, num_ws, w_dim]``), or per frame ``[T, num_ws, w_dim]``.
        ws_drive: the driving frames' w+ codes ``[T, num_ws, w_dim]``.
        mode: ``'cumulative'`` (default) or ``'printed'`` (see the module docstring).
        anchor: ``'cumulative'`` only: index of the driving frame the motion is measured from (negative counts
            from the end).
        strength: ``k``, the factor on the driving difference (1 = as measured).
    """
    check_mode(mode)
    ws = torch.as_tensor(ws_drive).detach().to(torch.float32)
    if ws.ndim != 3 or ws.shape[0] == 0:
        raise ValueError(f"ws_drive must be [T, num_ws, w_dim] with T >= 1, got {tuple(ws.shape)}")
    ref = torch.as_tensor(w_ref).detach().to(device=ws.device, dtype=torch.float32)
    if ref.ndim == 2:
        ref = ref[None]
    if ref.ndim != 3 or ref.shape[1:] != ws.shape[1:] or ref.shape[0] not in (1, ws.shape[0]):
        raise ValueError(f"w_ref must be [{ws.shape[1]}, {ws.shape[2]}] or [{ws.shape[0]}, {ws.shape[1]}, "
                         f"{ws.shape[2]}] to match ws_drive {tuple(ws.shape)}, got {tuple(ref.shape)}")
    k = float(strength)
    if not math.isfinite(k):
        raise ValueError(f"strength must be a finite number, got {strength!r}")
    if mode == "cumulative":
        a = int(anchor)
        if not -len(ws) <= a < len(ws):
            raise IndexError(f"anchor frame {a} is outside the {len(ws)} driving frames")
        a %= len(ws)
        delta = ws - ws[a:a + 1]
    else:
        prev = torch.cat([ws[:1], ws[:-1]])  # w_{-1} := w_0
        delta = prev - ws
    return ref + k * delta
