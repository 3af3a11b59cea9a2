"""Motion modes: how the driving video's expression and position reach the reference (one place for all users).

The mixing of eq 10-12 (:func:`v2s_nb.method.reenact.mix_styles`) is always

    X_s channels of the mixed rows:  α s_ref + β s_j + γ s_base
    other channels of those rows:    ζ s_ref + (1 - ζ) s_base

with ``s_ref = A(w_ref^p)``, ``s_j = A(w_j)`` and ``s_base = A(w_base(j))`` (``A`` the generator's affine maps,
linear in w, so differences of w become the same differences of s). A **motion mode** chooses the eq 7 reading
that makes ``w_base`` and the default coefficients; α, β, γ, ζ stay tunable in every mode. With the anchor frame
``a`` (:func:`resolve_anchor`) and the expression strength ``k``:

============  ===========================================  ====================  ==============================
mode          s_base                                       (α, β, γ, ζ)          X_s channels reduce to
============  ===========================================  ====================  ==============================
``relative``  ``s_ref + k (s_j - s_a)``                    (0, 0, 1, 0.5)        ``s_ref + k (s_j - s_a)``
``absolute``  ``s_ref + k (s_j - s_a)``                    (0, 1, 0, 0.5)        ``s_j``
``paper``     ``s_ref + k (s_(j-1) - s_j)`` (eq 7 printed)  (-1, 1, 1, 0.5)       ``s_(j-1)`` (k = 1)
============  ===========================================  ====================  ==============================

and the other channels of the mixed rows to ``s_ref + (1 - ζ) k (s_j - s_a)`` (relative, absolute) or
``s_ref + (1 - ζ) k (s_(j-1) - s_j)`` (paper). ``relative`` (the default) keeps the reference's own eyes and
mouth and moves them as the driver moves from its anchor frame; ``absolute`` copies the driver's expression
values; ``paper`` reproduces the printed equations and coefficients (Table 1's comparison).

**Anchor** (``anchor=``): the driving frame that stands for the reference's state: ``'first'`` (frame 0, the
default), ``'best'`` (the frame whose aligned landmarks best match the reference's, :func:`anchor_errors`), or
a frame index. The same anchor is used by the expression modes and by the relative position track.

**Position** (``position_mode=``): ``'relative'`` (default) moves the output face as the driver's face moves
from the anchor frame, in face units (:meth:`v2s_nb.face.CanonicalTrack.relative_to` with ``face_size``);
``'absolute'`` applies the canonical track as printed (section 3.2: the driver's offset from the FFHQ position,
in widths of the driving frames).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["MOTION_MODES", "POSITION_MODES", "ANCHORS", "MotionMode", "motion_mode", "check_strength",
           "check_position_mode", "anchor_errors", "resolve_anchor", "face_size_of"]


@dataclasses.dataclass(frozen=True)
class MotionMode:
    """One motion mode: its eq 7 reading (``baseline``), default coefficients and the algebra it reduces to."""

    name: str
    baseline: str
    alpha: float
    beta: float
    gamma: float
    zeta: float
    local: str
    other: str
    summary: str

    @property
    def coefficients(self) -> dict[str, float]:
        return {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma, "zeta": self.zeta}


_MODES = {
    "relative": MotionMode("relative", "cumulative", 0.0, 0.0, 1.0, 0.5,
                           "s_ref + k (s_j - s_a)", "s_ref + (1 - ζ) k (s_j - s_a)",
                           "the reference keeps its own eyes and mouth and moves them as the driver moves "
                           "from the anchor frame"),
    "absolute": MotionMode("absolute", "cumulative", 0.0, 1.0, 0.0, 0.5,
                           "s_j", "s_ref + (1 - ζ) k (s_j - s_a)",
                           "the driver's own expression values on the X_s channels"),
    "paper": MotionMode("paper", "printed", -1.0, 1.0, 1.0, 0.5,
                        "s_(j-1)", "s_ref + (1 - ζ) k (s_(j-1) - s_j)",
                        "eq 7 as printed with the paper's coefficients (reproduces Table 1's setting)"),
}
#: Motion mode names; the first is the default.
MOTION_MODES = tuple(_MODES)
#: Position track forms; the first is the default.
POSITION_MODES = ("relative", "absolute")
#: Named anchors (an int frame index is also accepted).
ANCHORS = ("first", "best")
#: dlib 68-point indices compared by the 'best' anchor (eyes 36-47, mouth 48-67), after a similarity fit on
#: the inner face (brows, nose, eyes, mouth: 17-67).
_FIT_POINTS = np.arange(17, 68)
_EXPRESSION_POINTS = np.arange(36, 68)


def motion_mode(name: str) -> MotionMode:
    """The :class:`MotionMode` called ``name`` (``ValueError`` naming the choices otherwise)."""
    if isinstance(name, MotionMode):
        return name
    try:
        return _MODES[name]
    except (KeyError, TypeError):
        raise ValueError(f"motion mode must be one of {MOTION_MODES} ('relative': s_ref + k (s_j - s_anchor), "
                         f"'absolute': s_j, 'paper': the printed eq 7 and coefficients), got {name!r}") from None


def check_strength(k) -> float:
    """The expression strength ``k`` as a float; finite and in [-5, 5] (``ValueError`` otherwise)."""
    try:
        f = float(k)
    except (TypeError, ValueError):
        raise ValueError(f"strength must be a number (1 = the driver's motion as measured), got {k!r}") from None
    if not math.isfinite(f) or not -5.0 <= f <= 5.0:
        raise ValueError(f"strength = {k!r} must be finite and within [-5, 5] (1 = the driver's motion as "
                         "measured, 0 = none)")
    return f


def check_position_mode(name: str) -> str:
    if name not in POSITION_MODES:
        raise ValueError(f"position mode must be one of {POSITION_MODES} ('relative': the change since the anchor "
                         f"frame in face units, 'absolute': the printed canonical track), got {name!r}")
    return name


def face_size_of(points) -> np.ndarray:
    """Eye-to-mouth distance (pixels) of landmarks [..., 68, 2]: |mean(mouth 48-67) - eye midpoint|."""
    from ..face.canonical import eye_mouth_geometry
    _, v = eye_mouth_geometry(points)
    return np.hypot(v[..., 0], v[..., 1])


def _normalise(p: np.ndarray) -> np.ndarray:
    """Points [..., K, 2] centred and scaled to unit RMS radius (over the fit points)."""
    fit = p[..., _FIT_POINTS, :]
    c = fit.mean(-2, keepdims=True)
    scale = np.sqrt(((fit - c) ** 2).sum(-1).mean(-1))[..., None, None]
    return (p - c) / scale


def anchor_errors(drive_points, ref_points) -> np.ndarray:
    """float64 [T]: how far each driving frame's expression is from the reference's, NaN where no face.

    Both point sets ([T, 68, 2] and [68, 2], pixels, ideally of the aligned crops) are centred and scaled on the
    inner face (points 17-67), the driver's rotated onto the reference's (least-squares rotation), and the
    RMS distance of the eye and mouth points (36-67) is returned in units of the face's RMS radius.
    """
    d = np.asarray(drive_points, np.float64)
    r = np.asarray(ref_points, np.float64)
    if d.ndim == 2:
        d = d[None]
    if d.ndim != 3 or d.shape[1:] != (68, 2) or r.shape != (68, 2):
        raise ValueError(f"anchor 'best' needs driving landmarks [T, 68, 2] and reference landmarks [68, 2], got "
                         f"{d.shape} and {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError("the reference landmarks contain NaN: anchor 'best' needs the reference's face")
    rn = _normalise(r)
    out = np.full(len(d), np.nan)
    for i, p in enumerate(d):
        if not np.isfinite(p).all():
            continue
        pn = _normalise(p)
        # least-squares rotation of pn onto rn (2-D Procrustes, no reflection)
        a, b = pn[_FIT_POINTS], rn[_FIT_POINTS]
        ang = math.atan2(float((a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum()), float((a * b).sum()))
        c, s = math.cos(ang), math.sin(ang)
        rot = pn @ np.array([[c, s], [-s, c]])
        diff = rot[_EXPRESSION_POINTS] - rn[_EXPRESSION_POINTS]
        out[i] = math.sqrt(float((diff ** 2).sum(-1).mean()))
    return out


def resolve_anchor(anchor, num_frames: int, drive_points=None, ref_points=None) -> int:
    """The anchor frame index in ``[0, num_frames)``.

    ``anchor``: ``'first'`` (0), ``'best'`` (argmin of :func:`anchor_errors`; needs ``drive_points`` [T, 68, 2]
    and ``ref_points`` [68, 2]; ties go to the earliest frame) or an int (negative counts from the end).
    """
    n = int(num_frames)
    if n < 1:
        raise ValueError("the anchor needs at least one driving frame")
    if isinstance(anchor, (int, np.integer)) and not isinstance(anchor, bool):
        a = int(anchor)
        if not -n <= a < n:
            raise ValueError(f"anchor frame {a} is outside the {n} frames re-enacted (the driving video's, or the "
                             f"shorter of it and the co-driving video; use 0..{n - 1}, 'first' or 'best')")
        return a % n
    if isinstance(anchor, str) and anchor.lstrip("-").isdigit():
        return resolve_anchor(int(anchor), n)
    if anchor == "first":
        return 0
    if anchor == "best":
        if drive_points is None or ref_points is None:
            raise ValueError("anchor 'best' needs the aligned landmarks of the driving frames and of the reference "
                             "(Reenactor(points={'reference': ..., 'driving': ...})); use anchor='first' or an index")
        err = anchor_errors(np.asarray(drive_points)[:n], ref_points)
        if not np.isfinite(err).any():
            raise ValueError("anchor 'best': no driving frame has a face")
        return int(np.nanargmin(err))
    raise ValueError(f"anchor must be 'first', 'best' or a frame index, got {anchor!r}")
