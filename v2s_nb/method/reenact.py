"""Section 3.6: Video2StyleGAN re-enactment — S-space mixing (eq 8-12) and the :class:`Reenactor`.

Equations (pure functions on S codes, :func:`mix_styles`). For frame ``j`` with ``s_ref = A_l(w_ref^p)``,
``s_j = A_l(w_j)`` (driving frame) and ``s_base = A_l(w_base(j))`` (eq 7, :mod:`v2s_nb.method.baseline`):

* W+ rows in ``layers`` (default 3..7, i.e. ``G.synthesis.style_names[3:8]``), channels in ``X_s`` (the
  :class:`~v2s_nb.method.local_channels.ChannelSets` of the enabled regions eyes / nose / mouth):
  ``s_local = α s_ref + β s_j`` (eq 10), ``s_final = s_local + γ s_base`` (eq 11);
* the other channels of those rows: ``s_final = ζ s_ref + (1 - ζ) s_base`` (eq 12);
* rows outside ``layers`` (decision, the paper leaves it implicit): ``outside='ref'`` (default) takes them from
  ``w_ref^p`` — the pose-encoded reference carries the global pose (rows 0-7) and the reference's own fine
  rows (8+, colour / texture), so the local motion enters only through the mixed rows; ``outside='base'``
  takes them from ``w_base`` instead.

Motion modes (:mod:`v2s_nb.method.motion`, the one place that defines them): ``motion_mode='relative'``
(default: ``X_s = s_ref + k (s_j - s_anchor)``), ``'absolute'`` (``X_s = s_j``) or ``'paper'`` (eq 7 as printed
and the paper's coefficients); each sets the eq 7 reading and the default α, β, γ, ζ, which stay tunable. The
anchor frame (``anchor='first' | 'best' | index``) is shared by the expression modes and the relative position
track (``position_mode='relative'``: the driver's motion since the anchor in face units; ``'absolute'``: the
canonical track as printed).

The paper's coefficients (4.1, ``motion_mode='paper'``): ``α = -1, β = 1, γ = 1, ζ = 0.5``. Consequences worth knowing: ``α = 1, β = γ = 0,
ζ = 1`` reproduces the reference exactly; ``α = β = γ = 0, ζ = 1`` reproduces it everywhere *except* the
``X_s`` channels, which eq 10-11 then set to 0 (identical to the reference only when ``X_s`` is empty).

Coefficients (:func:`check_coefficients`): NaN / inf raise ``ValueError``; α, β, γ must lie in [-10, 10] and ζ
in [-1, 2] (``ValueError`` otherwise: far outside, the S codes leave the range the generator was trained on and
the images are garbage); ζ outside [0, 1] (extrapolation past the reference or the baseline) is allowed with a
:class:`CoefficientWarning`.

Sources (:class:`Reenactor`): local motion from the driving video (or the co-driving one); pose (the
pose-encoded reference per frame, section 3.3) from driving / co-driving / none; position (the per-frame input
transform of the canonical track, section 3.2) from driving / co-driving / none.

Driving and co-driving of different lengths: everything per frame is truncated to the shorter, with a
:class:`LengthMismatchWarning`. Different frame rates: frames are paired by index (no resampling), the output
uses the driving video's fps, and a :class:`LengthMismatchWarning` says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .baseline import baseline_ws, check_mode
from .motion import (check_position_mode, check_strength, face_size_of, motion_mode as _motion_mode,
                     resolve_anchor)
from ..errors import V2SWarning
from ..validate import renamed_kwargs
from ..progress import progress_bar
from ..stylegan3.precompile import Workload, batch_sizes, ensure_compiled

__all__ = [
    "DEFAULT_COEFFICIENTS", "DEFAULT_LAYERS", "COEFFICIENT_RANGES", "CoefficientWarning", "LengthMismatchWarning",
    "REGIONS", "SOURCES", "Reenactor", "check_coefficients", "parse_layers", "layer_names", "mix_styles",
    "channel_masks", "region_channels_from", "generator_from_spec",
]

#: The paper's coefficients (section 4.1), the ``'paper'`` motion mode's; each mode has its own defaults
#: (:func:`v2s_nb.method.motion.motion_mode`).
DEFAULT_COEFFICIENTS = {"alpha": -1.0, "beta": 1.0, "gamma": 1.0, "zeta": 0.5}
#: W+ rows whose S codes are mixed (paper's best: 3-7).
DEFAULT_LAYERS = (3, 4, 5, 6, 7)
#: Allowed ranges (inclusive); outside -> ValueError.
COEFFICIENT_RANGES = {"alpha": (-10.0, 10.0), "beta": (-10.0, 10.0), "gamma": (-10.0, 10.0), "zeta": (-1.0, 2.0)}
REGIONS = ("eyes", "nose", "mouth")
SOURCES = ("driving", "co-driving", "none")
_FORMAT = "v2s_nb.reenactor/1"
#: settings every save holds (newer ones, e.g. motion_mode, have defaults for older saves)
_SAVED_SETTINGS = ("motion", "pose", "position", "regions", "layers", "alpha", "beta", "gamma", "zeta", "baseline",
                   "outside", "fps", "fps_codrive")


class CoefficientWarning(V2SWarning):
    """A mixing coefficient is allowed but unusual (ζ outside [0, 1])."""


class LengthMismatchWarning(V2SWarning):
    """Driving and co-driving differ in length (truncated to the shorter) or frame rate (paired by index)."""


# ----------------------------------------------------------------------------------------------- equations


def check_coefficients(alpha=None, beta=None, gamma=None, zeta=None, **extra) -> dict[str, float]:
    """Validate mixing coefficients (those given); returns them as floats. See the module docstring."""
    if extra:
        raise TypeError(f"unknown coefficient(s) {sorted(extra)}; use alpha, beta, gamma, zeta")
    out = {}
    for name, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma), ("zeta", zeta)):
        if v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {v!r}") from None
        if not math.isfinite(f):
            raise ValueError(f"{name} must be a finite number, got {f} (NaN / inf would turn every frame into NaN)")
        lo, hi = COEFFICIENT_RANGES[name]
        if not lo <= f <= hi:
            raise ValueError(f"{name} = {f:g} is out of range [{lo:g}, {hi:g}]: S codes that far from the "
                             f"reference give unusable images (paper defaults: {DEFAULT_COEFFICIENTS})")
        if name == "zeta" and not 0.0 <= f <= 1.0:
            warnings.warn(f"zeta = {f:g} is outside [0, 1]: eq 12 then extrapolates past the reference / the "
                          "baseline instead of blending them", CoefficientWarning, stacklevel=3)
        out[name] = f
    return out


#: Largest W+ row index accepted anywhere (StyleGAN3 generators have at most 16 rows at 1024 px).
MAX_LAYER_ROW = 63


def parse_layers(spec) -> tuple[int, ...]:
    """W+ rows to mix: '3-7', '3,5,7', '3-5,7', an int or a sequence of ints -> sorted unique tuple."""
    if isinstance(spec, (int, np.integer)):
        rows = [int(spec)]
    elif isinstance(spec, str):  # the package's one range parser; bounds checked before a range is built
        from ..validate import parse_int_ranges

        rows = parse_int_ranges(spec.replace(" ", ""), "layer", lo=0, hi=MAX_LAYER_ROW)
    else:  # 3.7 was read as row 3
        from ..validate import integer

        rows = [integer(r, "a layer (W+ row index)") for r in spec]
    if not rows:
        raise ValueError(f"no layers in {spec!r}")
    if min(rows) < 0 or max(rows) > MAX_LAYER_ROW:
        raise ValueError(f"layers must be w+ row indices in 0..{MAX_LAYER_ROW}, got {str(spec)[:80]!r}")
    return tuple(sorted(set(rows)))


def layer_names(G, layers=DEFAULT_LAYERS) -> list[str]:
    """S layer names of W+ rows ``layers`` (row i drives ``G.synthesis.style_names[i]``)."""
    names = getattr(G, "synthesis", G).style_names
    rows = parse_layers(layers)
    if max(rows) >= len(names):
        raise ValueError(f"layers {rows} out of range: the generator has {len(names)} w+ rows (0..{len(names) - 1})")
    return [names[i] for i in rows]


def mix_styles(s_ref: Mapping[str, torch.Tensor], s_drive: Mapping[str, torch.Tensor],
               s_base: Mapping[str, torch.Tensor], masks: Mapping[str, Any], layers: Sequence[str],
               alpha: float = -1.0, beta: float = 1.0, gamma: float = 1.0, zeta: float = 0.5,
               outside: str = "ref", check: bool = True) -> dict[str, torch.Tensor]:
    """Eq 10-12 on S codes (dicts name -> [N, C] or [1, C], broadcast over N).

    ``layers``: S layer names that are mixed; ``masks``: {layer: bool [C]} the ``X_s`` channels of that layer
    (a missing layer = no local channel). Every key of ``s_ref`` is returned; layers outside ``layers`` come from
    ``s_ref`` (``outside='ref'``) or ``s_base`` (``outside='base'``). ``s_drive`` is only needed for ``layers``.
    """
    if check:
        check_coefficients(alpha, beta, gamma, zeta)
    if outside not in ("ref", "base"):
        raise ValueError(f"outside must be 'ref' or 'base', got {outside!r}")
    layers = set(layers)
    unknown = layers - set(s_ref)
    if unknown:
        raise KeyError(f"layers {sorted(unknown)} are not in the S code (keys {list(s_ref)})")
    out = {}
    for name, ref in s_ref.items():
        base = s_base[name]
        if name not in layers:
            out[name] = ref if outside == "ref" else base
            continue
        # eq 12, zeta ref + (1 - zeta) base, written so that ref comes out exactly where base == ref (relative motion
        # at the anchor frame: 1.5 ref - 0.5 ref is ref only to rounding) and where zeta = 1
        other = ref + (1.0 - zeta) * (base - ref)
        m = masks.get(name) if masks is not None else None
        if m is None:
            out[name] = other.expand(torch.broadcast_shapes(ref.shape, base.shape, s_drive[name].shape)).clone()
            continue
        m = torch.as_tensor(np.asarray(m, bool) if not torch.is_tensor(m) else m, device=ref.device)
        if m.dtype != torch.bool or m.shape != ref.shape[-1:]:
            raise ValueError(f"mask of {name} must be bool [{ref.shape[-1]}], got {m.dtype} {tuple(m.shape)}")
        local = alpha * ref + beta * s_drive[name] + gamma * base  # eq 10 + eq 11
        out[name] = torch.where(m, local, other)
    return out


def region_channels_from(channel_sets) -> dict[str, dict[str, np.ndarray]]:
    """{region: {layer: int64 channel indices}} from a :class:`ChannelSets` or an equivalent mapping. A
    :class:`ChannelSets` must index S channels (discovered with ``maps='modulated'``, the default)."""
    if hasattr(channel_sets, "channels") and hasattr(channel_sets, "regions"):
        maps = getattr(channel_sets, "settings", {}).get("maps", "modulated")
        if maps != "modulated":
            raise ValueError(f"these channel sets were discovered with maps={maps!r}: they index the layers' output "
                             "channels, not S channels, which the mixing of eq 10-12 needs; discover them with "
                             "maps='modulated' (the default)")
        return {r: {l: np.asarray(channel_sets.channels(r, l), np.int64) for l in channel_sets.layers}
                for r in channel_sets.regions}
    if not isinstance(channel_sets, Mapping) or not all(isinstance(v, Mapping) for v in channel_sets.values()):
        raise TypeError("region_channels must be a ChannelSets or {region: {layer: channel indices}}, got "
                        f"{type(channel_sets).__name__}")
    return {r: {l: _channel_indices(v, f"region_channels[{r!r}][{l!r}]") for l, v in by_l.items()}
            for r, by_l in channel_sets.items()}


def _channel_indices(v, where: str) -> np.ndarray:
    """int64 [K] channel indices; refuses bool masks and non-whole numbers (an int cast would silently truncate)."""
    a = np.asarray(v)
    whole = a.dtype.kind in "iu" or (a.dtype.kind == "f" and bool(np.isfinite(a).all())
                                      and bool((a == np.round(a)).all()))
    if a.size and (a.dtype == bool or not whole):
        hint = " (a bool mask: give np.flatnonzero(mask))" if a.dtype == bool else ""
        raise ValueError(f"{where} must be integer channel indices, got {a.reshape(-1)[:6].tolist()}"
                         f"{hint or ' (give whole numbers, as ChannelSets.channels does)'}")
    return a.astype(np.int64).reshape(-1)


def _check_region_channels(region_channels, G) -> None:
    """Every layer of ``region_channels`` is an S layer of ``G`` and every index is one of its channels; regions
    are known. Channels discovered with another generator would otherwise turn the X_s mixing off silently."""
    sy = G.synthesis
    widths = {n: int(getattr(sy, n).affine.out_features) for n in sy.style_names}
    redo = "channels discovered with another generator? run the channel discovery with this one"
    for r, by_l in region_channels.items():
        if r not in REGIONS and r != "rest":  # 'rest' is a discovery region (never mixed: regions refuses it)
            raise ValueError(f"region_channels has an unknown region {r!r}; the regions are {REGIONS}")
        for l, idx in by_l.items():
            if l not in widths:
                raise ValueError(f"region_channels[{r!r}] names layer {l!r}, which this {G.img_resolution} px "
                                 f"generator lacks (its S layers: {', '.join(sy.style_names)}): {redo}")
            out = idx[(idx < 0) | (idx >= widths[l])]
            if out.size:
                raise ValueError(f"region_channels[{r!r}][{l!r}] has channel(s) {out[:6].tolist()} outside "
                                 f"0..{widths[l] - 1} (that layer has {widths[l]} S channels): {redo}")


def channel_masks(region_channels: Mapping[str, Mapping[str, Any]], regions: Sequence[str],
                  sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """{layer: bool [C]}: the union over ``regions`` of the region channel indices, for layers in ``sizes``."""
    out = {l: np.zeros(int(c), bool) for l, c in sizes.items()}
    for r in regions:
        if r not in region_channels:
            continue
        for l, idx in region_channels[r].items():
            if l in out:
                idx = np.asarray(idx, np.int64)
                if idx.size and (idx.min() < 0 or idx.max() >= len(out[l])):
                    raise ValueError(f"channel index out of range for layer {l} ({len(out[l])} channels)")
                out[l][idx] = True
    return out


# ----------------------------------------------------------------------------------------------- Reenactor


def _as_w(x, name, ndim=3) -> torch.Tensor | None:
    if x is None:
        return None
    if isinstance(x, (str, os.PathLike)):
        raise TypeError(f"{name} must be codes (a tensor, an array or an Inversion), got the path {str(x)!r}: load "
                        "it first (Inversion.load, or np.load for a .npy)")
    t = torch.as_tensor(getattr(x, "ws", x)).detach().to("cpu", torch.float32)
    if ndim == 2 and t.ndim == 3 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    return t


def _check_regions(regions) -> tuple[str, ...]:
    """Regions to mix as a tuple: a single name is one region ('eyes', not its letters); unknown names refused."""
    if isinstance(regions, str):
        regions = (regions,)
    try:
        regions = tuple(regions)
    except TypeError:
        raise TypeError(f"regions must be a region name or a sequence of them from {REGIONS}, "
                        f"got {regions!r}") from None
    bad = [r for r in regions if r not in REGIONS]
    if bad:
        raise ValueError(f"unknown region(s) {bad}; choose from {REGIONS} (e.g. regions=('eyes', 'mouth'))")
    return regions


def _check_generator(G, name: str) -> None:
    if not hasattr(getattr(G, "synthesis", None), "style_names"):
        hint = (f"; load it first: {name}=load_generator({str(G)!r}) (v2s_nb.stylegan3)"
                if isinstance(G, (str, os.PathLike)) else " (v2s_nb.stylegan3.load_generator / tiny_generator)")
        raise TypeError(f"{name} must be a StyleGAN3 generator, got {type(G).__name__} {str(G)[:80]!r}{hint}")


def _layout(G) -> tuple:
    """(resolution, ((layer, S channels), ...)): what a generator shares with its fine-tuned copies."""
    sy = G.synthesis
    return G.img_resolution, tuple((n, getattr(sy, n).affine.weight.shape[0]) for n in sy.style_names)


def _layout_text(G) -> str:
    return ", ".join(f"{n} ({c})" for n, c in _layout(G)[1][:3]) + ", ..."


def _check_render_generator(r, G_render):
    """``G_render``, checked to be ``r.G``'s architecture: the S codes and channel sets are G's, layer by layer."""
    _check_generator(G_render, "G_render")
    g, gr = r.G.synthesis, G_render.synthesis
    if (g.num_ws, g.w_dim) != (gr.num_ws, gr.w_dim):
        raise ValueError(f"G_render takes [{gr.num_ws}, {gr.w_dim}] codes but G [{g.num_ws}, {g.w_dim}]: give the "
                         "generator G was fine-tuned from (PTI) as G, or no G_render")
    if _layout(r.G) != _layout(G_render):
        raise ValueError(f"G_render is another architecture than G ({G_render.img_resolution} px, layers "
                         f"{_layout_text(G_render)}; G: {r.G.img_resolution} px, {_layout_text(r.G)}): "
                         "G_render must be G's fine-tuned copy (PTI), or left out")
    return G_render


def _check_codes(t: torch.Tensor, name: str, G, fix: str) -> None:
    """``t`` [.., num_ws, w_dim] of ``G``; the error names ``t`` itself (not another code it meets later)."""
    sy = G.synthesis
    if tuple(t.shape[-2:]) != (sy.num_ws, sy.w_dim):
        lead = "T, " if t.ndim == 3 else ""
        raise ValueError(f"{name} must be [{lead}{sy.num_ws}, {sy.w_dim}] for this {G.img_resolution} px generator, "
                         f"got {tuple(t.shape)}: codes of another generator? {fix}")


def _fps(x, name: str) -> float:
    from ..video import _check_fps
    try:
        return _check_fps(x)
    except ValueError:  # re-raised with the argument's own name (fps_codrive too)
        raise ValueError(f"{name} must be a positive number of frames per second, got {x!r}") from None


def _track_array(track) -> np.ndarray:
    """[T, 4] (tx, ty, angle, face size) or [T, 3] (no face size) from a CanonicalTrack or an array."""
    if hasattr(track, "as_array"):
        a = track.as_array(face_size=getattr(track, "face_size", None) is not None)
    else:
        a = np.asarray(track, np.float64)
    if a.ndim != 2 or a.shape[1] not in (3, 4):
        raise ValueError(f"a track must be a CanonicalTrack or [T, 3] (tx, ty, angle) / [T, 4] (tx, ty, angle, "
                         f"face size), got shape {a.shape}")
    return np.asarray(a, np.float64)


def _points_array(x, name) -> np.ndarray:
    a = np.asarray(x, np.float64)
    if name == "reference" and a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    want = (68, 2) if name == "reference" else None
    if (want and a.shape != want) or (not want and (a.ndim != 3 or a.shape[1:] != (68, 2))):
        raise ValueError(f"points[{name!r}] must be {'[68, 2]' if want else '[T, 68, 2]'} landmarks (pixels of the "
                         f"aligned crops), got shape {a.shape}")
    return a


def _contents_stamp(x):
    """A cheap token that changes where ``x``'s contents may have changed: a tensor's identity and in-place version,
    an array's bytes (tracks are small), a dict's entries. Identities are only unique while the objects live: the
    caller keeps them alive as long as it keeps the token."""
    if isinstance(x, torch.Tensor):
        return ("tensor", id(x), x._version)
    if isinstance(x, np.ndarray):
        return ("array", x.shape, hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=16).digest())
    if isinstance(x, Mapping):
        return ("dict",) + tuple((k, _contents_stamp(v)) for k, v in sorted(x.items()))
    return ("value", id(x))


def _frame_indices(frames, n: int) -> np.ndarray:
    """Frame indices (one or a sequence; negative ones count from the end, as in Python) as int64 in 0..n-1;
    IndexError naming them where any is outside -n..n-1 or none is given."""
    given = np.atleast_1d(np.asarray(frames))
    if given.dtype.kind not in "iu" and not (given.dtype.kind == "f" and np.all(given == np.round(given))):
        raise TypeError(f"frame indices must be whole numbers, got {np.asarray(frames).tolist()!r}")  # 1.7 was 1
    idx = given.astype(np.int64)
    if idx.size == 0 or int(idx.min()) < -n or int(idx.max()) >= n:
        raise IndexError(f"frame index out of range for {n} frames: {idx.tolist()}")
    return idx % n


def _set_codes(name, ndim=3):
    def check(r, value):
        t = _as_w(value, name, ndim=ndim)
        if t is not None:
            _check_codes(t, name, r.G, f"give {name} from this generator")
        elif name != "ws_codrive":
            raise ValueError(f"{name} can't be None")
        return t
    return check


def _per_video(what: str, value, convert) -> dict:
    """{'driving' | 'co-driving': ``convert(v, name)``} of a dict (None entries dropped), keys and type checked."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict {{'driving' | 'co-driving': ...}}, got {type(value).__name__}")
    bad = set(value) - {"driving", "co-driving"}
    if bad:
        raise ValueError(f"{what} keys must be 'driving' / 'co-driving', got {sorted(bad)}")
    return {k: convert(v, f"{what}[{k!r}]") for k, v in value.items() if v is not None}


def _track(v, name) -> np.ndarray:
    return _track_array(v)


def _set_pose_codes(r, value) -> dict:
    codes = _per_video("pose_codes", value, _as_w)
    for k, v in codes.items():
        _check_codes(v, f"pose_codes[{k!r}]", r.G, "pose-encode the reference with this generator")
    return codes


_CHECKED_ON_SET = {"w_ref": _set_codes("w_ref", ndim=2), "ws_drive": _set_codes("ws_drive"),
                   "ws_codrive": _set_codes("ws_codrive"), "pose_codes": _set_pose_codes,
                   "tracks": lambda r, v: _per_video("tracks", v, _track),
                   "G_render": lambda r, v: r.G if v is None else _check_render_generator(r, v)}


@dataclasses.dataclass(eq=False)
class Reenactor:
    """Everything prepared for re-enactment; renders frames fast from cached S codes.

    Attributes may be set after construction (codes, tracks and ``G_render`` are converted and checked as here); the
    next render follows them, as it follows in-place edits of the codes and tracks. To change several that must
    agree in length (codes and tracks of another clip), or after tuning ``G_render``'s weights in place (edits
    through ``.data`` and fused optimiser steps leave no trace to notice), make a new one:
    ``dataclasses.replace(r, ws_drive=..., tracks=...)``.

    Attributes:
        G: the generator the codes were found with (pose encoding, channel discovery).
        w_ref: the reference's inversion, [num_ws, w_dim].
        ws_drive: the driving frames' inversions, [T, num_ws, w_dim].
        ws_codrive: optional co-driving inversions, [T', num_ws, w_dim].
        region_channels: {region: {layer: channel indices}} (``X_s`` per region, e.g. from a ChannelSets).
        pose_codes: {'driving' | 'co-driving': [T, num_ws, w_dim]} the pose-encoded reference per frame.
        tracks: {'driving' | 'co-driving': CanonicalTrack or [T, 3] (tx, ty, angle)} (smoothed) position tracks.
        motion / pose / position: the source of each component: ``motion`` in ('driving', 'co-driving');
            ``pose`` / ``position`` in ('driving', 'co-driving', 'none'); ``None`` = 'driving' when available
            else 'none'.
        motion_mode: 'relative' (default), 'absolute' or 'paper' (:mod:`v2s_nb.method.motion`).
        strength: ``k``, the factor on the driver's expression change (default 1).
        anchor: 'first' (default), 'best' (needs ``points``) or a frame index (:func:`~.motion.resolve_anchor`).
        position_mode: 'relative' (default: the motion since the anchor, in face units; needs tracks with a face
            size, e.g. CanonicalTracks from landmarks) or 'absolute' (the printed canonical track).
        ref_face_size: the reference's eye-to-mouth distance in the output, as a fraction of its width (default:
            measured on ``points['reference']``, else :data:`v2s_nb.face.FFHQ_FACE_SIZE`).
        points: {'reference': [68, 2], 'driving' / 'co-driving': [T, 68, 2]} landmarks of the aligned crops, in
            pixels of crops at the generator's resolution (for anchor 'best' and the reference's face size).
        regions: enabled regions for ``X_s`` (one name or several).  layers: W+ rows to mix (default 3-7).
        alpha, beta, gamma, zeta: eq 10-12; ``None`` = the motion mode's default.
        baseline: eq 7 reading ('cumulative' | 'printed'); ``None`` = the motion mode's.
        outside: rows outside ``layers`` from 'ref' (w_ref^p) or 'base' (w_base).
        G_render: generator used to render (e.g. the PTI-tuned copy); default ``G``.
        fps / fps_codrive: frame rates (the output uses ``fps``).  info: free JSON-able metadata.
    """

    G: Any
    w_ref: Any
    ws_drive: Any
    ws_codrive: Any = None
    region_channels: Any = None
    pose_codes: dict = dataclasses.field(default_factory=dict)
    tracks: dict = dataclasses.field(default_factory=dict)
    motion: str = "driving"
    pose: str | None = None
    position: str | None = None
    regions: tuple = REGIONS
    layers: Any = DEFAULT_LAYERS
    alpha: float | None = None
    beta: float | None = None
    gamma: float | None = None
    zeta: float | None = None
    baseline: str | None = None
    motion_mode: str = "relative"
    strength: float = 1.0
    anchor: Any = "first"
    position_mode: str = "relative"
    ref_face_size: float | None = None
    points: dict = dataclasses.field(default_factory=dict)
    outside: str = "ref"
    G_render: Any = None
    fps: float = 30.0
    fps_codrive: float | None = None
    info: dict = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:  # the dataclass's would print both generators' modules (tens of KB)
        chans = {r: int(sum(len(c) for c in by_l.values())) for r, by_l in self.region_channels.items()}
        rows = f"{self.layers[0]}-{self.layers[-1]}" if len(self.layers) > 1 else f"{self.layers[0]}"
        return (f"Reenactor({self.num_frames} frames at {self.fps:g} fps; {self.motion_mode} motion from "
                f"{self.motion} (strength {self.strength:g}), pose from {self.pose or 'none'}, position from "
                f"{self.position or 'none'} ({self.position_mode}); W+ rows {rows}, channels "
                + ", ".join(f"{r} {chans.get(r, 0)}" for r in self.regions)
                + f"; rendering with {'a fine-tuned copy of G' if self.G_render is not self.G else 'G'})")

    def __setattr__(self, name, value):
        # after construction, codes and tracks set one at a time get the constructor's conversion and checks (the
        # renders follow them: _prepared's key stamps their contents); several at once: dataclasses.replace(r, ...)
        if "_cache" in self.__dict__ and name in _CHECKED_ON_SET:
            value = _CHECKED_ON_SET[name](self, value)
        object.__setattr__(self, name, value)

    def __post_init__(self):
        self.w_ref = _as_w(self.w_ref, "w_ref", ndim=2)
        self.ws_drive = _as_w(self.ws_drive, "ws_drive")
        self.ws_codrive = _as_w(self.ws_codrive, "ws_codrive")
        if self.region_channels is None:
            self.region_channels = {}
        self.region_channels = region_channels_from(self.region_channels)
        self.pose_codes = _per_video("pose_codes", self.pose_codes or {}, _as_w)
        self.tracks = _per_video("tracks", self.tracks or {}, _track)
        self.points = {k: _points_array(v, k) for k, v in (self.points or {}).items() if v is not None}
        bad = set(self.points) - {"reference", "driving", "co-driving"}
        if bad:
            raise ValueError(f"points keys must be 'reference' / 'driving' / 'co-driving', got {sorted(bad)}")
        mode = _motion_mode(self.motion_mode)
        for k, v in mode.coefficients.items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        self.strength = check_strength(self.strength)
        check_position_mode(self.position_mode)
        if self.ref_face_size is not None:
            f = float(self.ref_face_size)
            if not math.isfinite(f) or not 0 < f < 1:
                raise ValueError(f"ref_face_size must be a fraction of the output width in (0, 1), got "
                                 f"{self.ref_face_size!r}")
            self.ref_face_size = f
        self.layers = parse_layers(self.layers)
        self.regions = _check_regions(self.regions)
        self.fps = _fps(self.fps, "fps")
        if self.fps_codrive is not None:
            self.fps_codrive = _fps(self.fps_codrive, "fps_codrive")
        if self.baseline is not None:
            check_mode(self.baseline)
        check_coefficients(self.alpha, self.beta, self.gamma, self.zeta)
        _check_generator(self.G, "G")
        if self.G_render is None:
            self.G_render = self.G
        _check_render_generator(self, self.G_render)
        _check_codes(self.w_ref, "w_ref", self.G, "invert the reference with this generator")
        _check_codes(self.ws_drive, "ws_drive", self.G, "invert the driving frames with this generator")
        if self.ws_codrive is not None:
            _check_codes(self.ws_codrive, "ws_codrive", self.G, "invert the co-driving frames with this generator")
        for k, v in self.pose_codes.items():
            _check_codes(v, f"pose_codes[{k!r}]", self.G, "pose-encode the reference with this generator")
        _check_region_channels(self.region_channels, self.G_render)
        layer_names(self.G_render, self.layers)  # validates the rows
        # -- lengths and frame rates
        if self.ws_codrive is not None:
            nd, nc = len(self.ws_drive), len(self.ws_codrive)
            if nd != nc:
                warnings.warn(f"driving has {nd} frames and co-driving {nc}: both are truncated to the shorter "
                              f"({min(nd, nc)} frames)", LengthMismatchWarning, stacklevel=3)
            if self.fps_codrive is not None and abs(float(self.fps_codrive) - float(self.fps)) > 1e-3:
                warnings.warn(f"driving is {self.fps:g} fps and co-driving {self.fps_codrive:g} fps: frames are "
                              f"paired by index (no resampling); the output is written at {self.fps:g} fps",
                              LengthMismatchWarning, stacklevel=3)
        n = self.num_frames
        self.ws_drive = self.ws_drive[:n]
        if self.ws_codrive is not None:
            self.ws_codrive = self.ws_codrive[:n]
        for d in (self.pose_codes, self.tracks, {k: v for k, v in self.points.items() if k != "reference"}):
            for k in list(d):
                if len(d[k]) < n:
                    raise ValueError(f"{k} has {len(d[k])} frames but the re-enactment has {n}")
                d[k] = d[k][:n]
        for k in ("driving", "co-driving"):
            if k in self.points:
                self.points[k] = self.points[k][:n]
        self.anchor_frame()  # validates the anchor
        self._cache = {}

    # ------------------------------------------------------------------ basics

    @property
    def num_frames(self) -> int:
        n = len(self.ws_drive)
        if self.ws_codrive is not None:
            n = min(n, len(self.ws_codrive))
        return n

    def __len__(self) -> int:
        return self.num_frames

    @property
    def coefficients(self) -> dict[str, float]:
        return {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma, "zeta": self.zeta}

    def _source(self, what: str, available) -> str:
        s = getattr(self, what)
        if s is None:
            return "driving" if "driving" in available else "none"
        if s not in SOURCES:
            raise ValueError(f"{what} source must be one of {SOURCES}, got {s!r}")
        if s != "none" and s not in available:
            raise ValueError(f"{what} source {s!r} is not available (have {sorted(available) or 'none'})")
        return s

    def sources(self) -> dict[str, str]:
        """The resolved source of each component."""
        motion = self.motion
        if motion not in ("driving", "co-driving"):
            raise ValueError(f"motion source must be 'driving' or 'co-driving', got {motion!r}")
        if motion == "co-driving" and self.ws_codrive is None:
            raise ValueError("motion source 'co-driving' needs ws_codrive")
        return {"motion": motion, "pose": self._source("pose", self.pose_codes),
                "position": self._source("position", self.tracks)}

    def anchor_frame(self) -> int:
        """The anchor frame index (``anchor`` resolved; 'best' compares the motion source's aligned landmarks
        with the reference's, :func:`v2s_nb.method.motion.anchor_errors`)."""
        src = self.motion if self.motion in ("driving", "co-driving") else "driving"
        pts, ref = self.points.get(src), self.points.get("reference")
        key = (str(self.anchor), src, self.num_frames, id(pts), id(ref))
        cache = getattr(self, "_anchor_cache", None)
        if cache is None or cache[0] != key:
            self._anchor_cache = cache = (key, resolve_anchor(self.anchor, self.num_frames, pts, ref))
        return cache[1]

    def baseline_reading(self) -> str:
        """The eq 7 reading in use: ``baseline`` when set, else the motion mode's."""
        return self.baseline if self.baseline is not None else _motion_mode(self.motion_mode).baseline

    def reference_face_size(self) -> float:
        """The reference's eye-to-mouth distance in the output, fraction of its width (see ``ref_face_size``)."""
        if self.ref_face_size is not None:
            return float(self.ref_face_size)
        if "reference" in self.points:
            return float(face_size_of(self.points["reference"])) / float(self.G_render.img_resolution)
        from ..face.canonical import FFHQ_FACE_SIZE
        return FFHQ_FACE_SIZE

    def face_centre(self) -> tuple[float, float]:
        """The reference's eye-mouth centre in the output, (x, y) fractions of its width / height: measured on
        ``points['reference']``, else the FFHQ layout's (0.5, 0.475 + 0.25 / 2)."""
        if "reference" in self.points:
            from ..face.canonical import eye_mouth_geometry
            e, v = eye_mouth_geometry(self.points["reference"])
            c = (e + 0.5 * v) / float(self.G_render.img_resolution)
            return float(c[0]), float(c[1])
        from ..face.align import FFHQ_EYE_MIDPOINT
        from ..face.canonical import FFHQ_FACE_SIZE
        return FFHQ_EYE_MIDPOINT[0], FFHQ_EYE_MIDPOINT[1] + 0.5 * FFHQ_FACE_SIZE

    def position_transforms(self, source: str | None = None) -> np.ndarray | None:
        """float64 [T, 3, 3] for ``G.synthesis.input.transform`` from :meth:`position_track`, or None. Relative
        tracks turn about the reference's face centre (:meth:`face_centre`), so that centre moves by exactly the
        track's (tx, ty); absolute ones about the image centre, as printed."""
        a = self.position_track(source)
        if a is None:
            return None
        from ..face.canonical import CanonicalTrack
        ct = CanonicalTrack(a[:, 0], a[:, 1], a[:, 2], np.zeros(len(a), bool), 1)
        return ct.input_transforms(pivot=self.face_centre() if self.position_mode == "relative" else "centre")

    def position_track(self, source: str | None = None) -> np.ndarray | None:
        """float64 [T, 3] (tx, ty in output widths, angle in degrees) applied to the output, or None (no position).

        ``position_mode='relative'``: :meth:`v2s_nb.face.CanonicalTrack.relative_to` of the source's track at
        the anchor frame with the reference's face size; ``'absolute'``: the track as given."""
        src = self.sources()["position"] if source is None else source
        if src == "none":
            return None
        a = self.tracks[src]
        if check_position_mode(self.position_mode) == "absolute":
            return a[:, :3].copy()
        if a.shape[1] < 4:
            raise ValueError(f"position_mode 'relative' needs the face size of the {src} track: give a CanonicalTrack "
                             "made by canonical_track() (or [T, 4] with the face size), or position_mode='absolute'")
        from ..face.canonical import CanonicalTrack
        ct = CanonicalTrack(a[:, 0], a[:, 1], a[:, 2], np.zeros(len(a), bool), 1, face_size=a[:, 3])
        return ct.relative_to(self.anchor_frame(), face_size=self.reference_face_size()).as_array()

    def mixed_layer_names(self) -> list[str]:
        return layer_names(self.G_render, self.layers)

    # ------------------------------------------------------------------ prepared S codes

    def _prepared(self):
        src = self.sources()
        mode = self.baseline_reading()
        anchor = self.anchor_frame()
        # the codes, tracks and G_render's weights by their contents: a notebook may set or edit them in place
        data = (self.w_ref, self.ws_drive, self.ws_codrive, self.pose_codes, self.tracks, self.G_render)
        key = (src["motion"], src["pose"], src["position"], mode, anchor, check_strength(self.strength),
               check_position_mode(self.position_mode), self.reference_face_size(), self.layers, self.outside,
               tuple(_contents_stamp(x) for x in data[:-1]),
               (id(self.G_render), tuple(p._version for p in self.G_render.parameters())))
        hit = self._cache.get("prep")
        if hit is not None and hit[0] == key:
            return hit[1]
        self._check_frame_counts()
        G = self.G_render
        sy = G.synthesis
        dev = G.device
        n = self.num_frames
        ws_m = self.ws_drive if src["motion"] == "driving" else self.ws_codrive
        w_ref_p = self.pose_codes[src["pose"]][:n] if src["pose"] != "none" else self.w_ref[None]
        w_base = baseline_ws(w_ref_p, ws_m, mode, anchor=anchor, strength=self.strength)
        names = self.mixed_layer_names()
        with torch.no_grad():
            s_ref = {k: v.cpu() for k, v in sy.styles(w_ref_p.to(dev)).items()}
            s_drv_all = sy.styles(ws_m.to(dev))
            s_drive = {k: s_drv_all[k].cpu() for k in names}
            # s_base = A(w_base) taken as s_ref + A(w_base - w_ref) - A(0) (A is affine): where the motion is zero
            # (relative modes at the anchor frame) s_base is s_ref itself, not s_ref to the rounding of another
            # batch's product, so the anchor frame renders the reference exactly for any coefficients
            step = sy.styles((w_base - w_ref_p).to(dev))
            zero = sy.styles(torch.zeros_like(w_ref_p[:1]).to(dev))
            s_base = {k: s_ref[k] + (step[k] - zero[k]).cpu() for k in step}
        transforms = self.position_transforms(src["position"])
        if transforms is not None:
            transforms = torch.as_tensor(transforms, dtype=torch.float32)
        prep = {"s_ref": s_ref, "s_drive": s_drive, "s_base": s_base, "transforms": transforms, "names": names,
                "sizes": {k: s_ref[k].shape[-1] for k in names}, "n": n, "w_base": w_base, "w_ref_p": w_ref_p}
        self._cache["prep"] = (key, prep, data)  # data: keeps the stamped objects, and so their identities, alive
        return prep

    def _check_frame_counts(self) -> None:
        """Each per-frame value covers the frames re-enacted (one set alone after construction may not)."""
        n = self.num_frames
        for what, d in (("pose_codes", self.pose_codes), ("tracks", self.tracks)):
            for k, v in d.items():
                if len(v) < n:
                    raise ValueError(f"{what}[{k!r}] has {len(v)} frames but the re-enactment has {n}: to change "
                                     "codes and tracks together, make a new Reenactor with dataclasses.replace(r, "
                                     "ws_drive=..., tracks=...)")

    def prepare(self) -> "Reenactor":
        """Compute and cache the S codes (s_ref, s_j, s_base) of every frame; later renders only mix + synthesise."""
        self._prepared()
        return self

    def _coeffs(self, overrides) -> dict[str, float]:
        c = self.coefficients
        c.update({k: v for k, v in overrides.items() if v is not None})
        return check_coefficients(**c)

    def masks(self, regions=None) -> dict[str, np.ndarray]:
        """{layer: bool [C]} of the ``X_s`` channels of the enabled (or given) regions, for the mixed layers."""
        prep = self._prepared()
        regions = _check_regions(self.regions if regions is None else regions)  # the attribute may be set later
        return channel_masks(self.region_channels, regions, prep["sizes"])

    def styles(self, frames, regions=None, **coeffs) -> dict[str, torch.Tensor]:
        """The final S codes of ``frames`` (indices) with the given coefficient overrides (CPU tensors)."""
        prep = self._prepared()
        c = self._coeffs(coeffs)
        idx = torch.as_tensor(_frame_indices(frames, prep["n"]))

        def pick(d):
            return {k: (v[idx] if v.shape[0] > 1 else v.expand(len(idx), -1)) for k, v in d.items()}

        return mix_styles(pick(prep["s_ref"]), pick(prep["s_drive"]), pick(prep["s_base"]), self.masks(regions),
                          prep["names"], check=False, outside=self.outside, **c)

    @torch.no_grad()
    def render_frames(self, frames, regions=None, impl=None, **coeffs) -> torch.Tensor:
        """Float images [N, 3, R, R] in about [-1, 1] (CPU) for frame indices ``frames``."""
        prep = self._prepared()
        frames = _frame_indices(frames, prep["n"])
        s = self.styles(frames, regions=regions, **coeffs)
        dev = self.G_render.device
        s = {k: v.to(dev) for k, v in s.items()}
        tr = prep["transforms"]
        tr = None if tr is None else tr[torch.as_tensor(frames)].to(dev)
        return self.G_render.synthesis.from_styles(s, transform=tr, impl=impl).float().cpu()

    def render_frame(self, j: int, regions=None, **coeffs) -> np.ndarray:
        """uint8 [R, R, 3]: frame ``j`` with optional coefficient overrides (alpha=, beta=, gamma=, zeta=)
        and region toggles (``regions=('eyes', 'mouth')``). One synthesis from cached S codes."""
        from ..images import to_uint8
        return to_uint8(self.render_frames([j], regions=regions, **coeffs), range_check=False)[0]

    @renamed_kwargs(batch="batch_size")
    def render_video(self, batch_size: int = 8, progress: bool = True, regions=None, **coeffs) -> np.ndarray:
        """uint8 [T, R, R, 3]: every frame, ``batch_size`` per synthesis call (:meth:`render_chunks` gives them a
        batch at a time, e.g. straight into :func:`v2s_nb.video.write_video`, without holding the whole clip)."""
        out = list(self.render_chunks(batch_size, progress, regions, **coeffs))
        return np.concatenate(out) if out else np.zeros((0, *self.resolution_hw, 3), np.uint8)

    def render_chunks(self, batch_size: int = 8, progress: bool = True, regions=None, **coeffs):
        """The frames of :meth:`render_video` as uint8 chunks [<= batch_size, R, R, 3], rendered as they are asked
        for. The arguments are checked when this is called, before the first chunk."""
        from ..validate import integer

        batch_size = integer(batch_size, "batch_size (frames per synthesis call)", 1, 4096)  # 0 and -3 ran as 1
        self._coeffs(coeffs)  # validate before the loop
        if regions is not None:
            regions = _check_regions(regions)
        return self._chunks(batch_size, progress, regions, coeffs)

    def _chunks(self, batch_size, progress, regions, coeffs):
        from ..images import to_uint8

        n = self.num_frames
        ensure_compiled(self.G_render, [Workload(b) for b in batch_sizes(n, batch_size)], progress)
        bar = progress_bar(total=n, desc="render", unit="frame", enabled=progress)
        try:
            for s in range(0, n, batch_size):
                idx = np.arange(s, min(n, s + batch_size))
                yield to_uint8(self.render_frames(idx, regions=regions, **coeffs), range_check=False)
                if bar is not None:
                    bar.update(len(idx))
        finally:
            if bar is not None:
                bar.close()

    @property
    def resolution_hw(self):
        r = int(self.G_render.img_resolution)
        return (r, r)

    @torch.no_grad()
    def render_reference(self, frame: int | None = None) -> np.ndarray:
        """uint8 [R, R, 3]: the (pose-encoded, if ``frame`` given and pose is on) reference with the frame's
        input transform (identity when ``frame`` is None)."""
        from ..images import to_uint8
        prep = self._prepared()
        dev = self.G_render.device
        if frame is None:
            w, tr = self.w_ref[None], None
        else:
            j = int(_frame_indices(frame, prep["n"])[0])
            w = prep["w_ref_p"][j if prep["w_ref_p"].shape[0] > 1 else 0][None]
            tr = None if prep["transforms"] is None else prep["transforms"][j:j + 1].to(dev)
        return to_uint8(self.G_render.synthesis(w.to(dev), transform=tr), range_check=False)[0]

    # ------------------------------------------------------------------ persistence

    def _tensors(self) -> dict[str, torch.Tensor]:
        t = {"w_ref": self.w_ref, "ws_drive": self.ws_drive}
        if self.ws_codrive is not None:
            t["ws_codrive"] = self.ws_codrive
        for k, v in self.pose_codes.items():
            t[f"pose_codes/{k}"] = v
        for k, v in self.tracks.items():
            t[f"tracks/{k}"] = torch.as_tensor(v, dtype=torch.float64)
        for k, v in self.points.items():
            t[f"points/{k}"] = torch.as_tensor(v, dtype=torch.float64)
        return {k: v.detach().cpu().contiguous() for k, v in t.items()}

    def save(self, directory) -> Path:
        """Write ``tensors.pt`` (a plain dict of tensors, loadable with ``torch.load(weights_only=True)``) and
        ``reenactor.json`` (settings, channel sets, generator identity, SHA-256 of the tensors file), each
        together: all are written to temporary files first, then moved into place, so an error (``info`` that
        isn't JSON-able) or Ctrl-C leaves the previous save whole. A PTI ``G_render`` different from ``G`` is saved
        as ``G_render.safetensors``. Returns the folder."""
        from ..atomic import write_together
        from ..caching import generator_hash
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(self._tensors(), buf)
        data = buf.getvalue()
        g_sha = generator_hash(self.G)
        render_file = render_sha = None
        if self.G_render is not self.G:
            render_file, render_sha = "G_render.safetensors", generator_hash(self.G_render)
        meta = {
            "format": _FORMAT, "tensors_sha256": hashlib.sha256(data).hexdigest(),
            "settings": {"motion": self.motion, "pose": self.pose, "position": self.position,
                         "regions": list(self.regions), "layers": list(self.layers), **self.coefficients,
                         "baseline": self.baseline, "outside": self.outside, "fps": self.fps,
                         "fps_codrive": self.fps_codrive, "motion_mode": self.motion_mode,
                         "strength": self.strength, "anchor": self.anchor, "position_mode": self.position_mode,
                         "ref_face_size": self.ref_face_size},
            "region_channels": {r: {l: [int(i) for i in idx] for l, idx in by_l.items()}
                                for r, by_l in self.region_channels.items()},
            "generator": {"source": None if getattr(self.G, "source", None) is None else str(self.G.source),
                          "sha256": g_sha, "is_random": bool(getattr(self.G, "is_random", False)),
                          "spec": self.info.get("generator_spec")},
            "G_render_file": render_file, "G_render_sha256": render_sha,
            "info": self.info, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        text = json.dumps(meta, indent=1, default=_json_default).encode()  # before any file: info may not be JSON-able
        files = {"tensors": d / "tensors.pt", "json": d / "reenactor.json"}
        if render_file:
            files["G_render"] = d / render_file
        with write_together(files) as tmp:
            tmp["tensors"].write_bytes(data)
            if render_file:
                from ..stylegan3 import save_generator
                save_generator(self.G_render, tmp["G_render"])
            tmp["json"].write_bytes(text)
        if not render_file:  # one left by an earlier save of a Reenactor with PTI: not this save's
            (d / "G_render.safetensors").unlink(missing_ok=True)
        return d

    @classmethod
    def load(cls, directory, G=None, G_render=None, device=None) -> "Reenactor":
        """Read what :meth:`save` wrote. ``G``: the generator (default: rebuilt from the saved generator spec —
        the tiny random generator or a checkpoint name / path — when there is one) or a checkpoint name / path
        (loaded with :func:`v2s_nb.stylegan3.load_generator`, as is a ``G_render`` path); its weights are checked
        against the saved hash (``ValueError`` on mismatch)."""
        from ..caching import generator_hash
        d = Path(directory)
        js = d / "reenactor.json"
        if not js.is_file():
            raise FileNotFoundError(f"no saved Reenactor in {d} (missing reenactor.json)")
        redo = "save the Reenactor again (or prepare it again from the video)"
        try:
            meta = json.loads(js.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{js} is damaged or incomplete (not readable JSON: {e}); {redo}") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            fmt = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(f"{js} is not a saved Reenactor (format {fmt!r})")
        # checked up front: a bare KeyError further down would name neither the file nor the remedy
        missing = [k for k in ("tensors_sha256", "settings", "region_channels", "generator") if k not in meta]
        st, gen = meta.get("settings"), meta.get("generator")
        missing += [f"settings.{k}" for k in _SAVED_SETTINGS if not isinstance(st, dict) or k not in st]
        if not isinstance(gen, dict) or "sha256" not in gen:
            missing.append("generator.sha256")
        if not isinstance(meta.get("region_channels", {}), dict):
            missing.append("region_channels (not an object)")
        if missing:
            raise ValueError(f"{js} is damaged or incomplete (missing {', '.join(missing)}); {redo}")
        data = (d / "tensors.pt").read_bytes()
        if hashlib.sha256(data).hexdigest() != meta["tensors_sha256"]:
            raise ValueError(f"{d / 'tensors.pt'} does not match {js} (incomplete or mixed-up save)")
        t = torch.load(io.BytesIO(data), weights_only=True)
        from ..stylegan3 import load_generator
        # a path / checkpoint name is loaded (as the saved spec would be); the hash check below still applies
        if isinstance(G, (str, os.PathLike)):
            G = load_generator(G, device=device)
        if G is None:
            G = generator_from_spec(meta["generator"].get("spec"), device=device)
            if G is None:
                raise ValueError(f"pass G=: the generator of {d} ({meta['generator'].get('source')}) cannot be rebuilt "
                                 "from the saved information")
        _check_generator(G, "G")
        if isinstance(G_render, (str, os.PathLike)):
            G_render = load_generator(G_render, device=device or G.device)
        if G_render is not None:
            _check_generator(G_render, "G_render")
        if generator_hash(G) != meta["generator"]["sha256"]:
            raise ValueError(f"the generator given does not have the weights {d} was prepared with "
                             f"({meta['generator'].get('source')})")
        if G_render is None and meta.get("G_render_file"):
            G_render = load_generator(d / meta["G_render_file"], device=device or G.device)
        if G_render is not None and meta.get("G_render_sha256") and generator_hash(G_render) != meta["G_render_sha256"]:
            raise ValueError(f"the rendering generator ({meta['G_render_file']} or the G_render given) does not have "
                             f"the weights {d} was saved with (incomplete or mixed-up save, or another generator)")
        st = meta["settings"]
        return cls(G=G, G_render=G_render, w_ref=t["w_ref"], ws_drive=t["ws_drive"], ws_codrive=t.get("ws_codrive"),
                   region_channels=meta["region_channels"],
                   pose_codes={k.split("/", 1)[1]: v for k, v in t.items() if k.startswith("pose_codes/")},
                   tracks={k.split("/", 1)[1]: v.numpy() for k, v in t.items() if k.startswith("tracks/")},
                   points={k.split("/", 1)[1]: v.numpy() for k, v in t.items() if k.startswith("points/")},
                   motion=st["motion"], pose=st["pose"], position=st["position"], regions=tuple(st["regions"]),
                   layers=tuple(st["layers"]), alpha=st["alpha"], beta=st["beta"], gamma=st["gamma"],
                   zeta=st["zeta"], baseline=st["baseline"], outside=st["outside"], fps=st["fps"],
                   fps_codrive=st["fps_codrive"], info=meta.get("info") or {},
                   # saves from before the motion modes: their coefficients and eq 7 reading are stored, and
                   # their position was the printed (absolute) track
                   motion_mode=st.get("motion_mode", "relative"), strength=st.get("strength", 1.0),
                   anchor=st.get("anchor", "first"), position_mode=st.get("position_mode", "absolute"),
                   ref_face_size=st.get("ref_face_size"))


def generator_from_spec(spec, device=None):
    """A generator from a saved spec: {'kind': 'tiny', 'cfg', 'resolution', 'seed'} or {'kind': 'source',
    'source': name / path / URL}; None when there is no spec."""
    if not spec:
        return None
    if spec.get("kind") == "tiny":
        from ..stylegan3 import tiny_generator
        return tiny_generator(spec.get("cfg", "R"), resolution=int(spec.get("resolution", 64)),
                              seed=int(spec.get("seed", 0))).to(device or "cpu")
    if spec.get("kind") == "source":
        from ..stylegan3 import load_generator
        return load_generator(spec["source"], device=device)
    raise ValueError(f"unknown generator spec {spec!r}")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
