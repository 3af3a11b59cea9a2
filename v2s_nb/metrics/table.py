"""Table 1 of the paper: evaluate result clips, lay the numbers out as the paper does, write a CSV.

* :func:`evaluate` - ΔK, ID (forward and, if given, reverse) and FID(forward results, reverse results) for
  one reference and one driving clip.
* :func:`run_table1` - runs re-enactment callables ``(reference, driving_frames) -> result_frames`` on the
  forward and the reversed driving video for every reference, pools the frames of all references, and builds
  the table (the paper: 5 identities, a 160-frame MEAD clip, forward and reverse).
* :func:`table1` - the table text (paper layout) and its CSV (standard library ``csv``, no pandas).

A row is a dict with the keys of :data:`TABLE1_COLUMNS` (``delta_k_x_f`` ... ``fid``) plus bookkeeping:
frames counted, frames without a face (``*_missing_*``, lists of frame indices), frames left out of FID
(``fid_missing_*``), the FID features used, the landmark front end (``landmarks``) and the ΔK units. The CSV
keeps all of it (lists as JSON), so a table read back from it has the same notes.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from ..video import ambiguous_channel_first
from ..face.landmark_detection import LandmarkTrack, NoFaceError
from ._common import clip_frames, one_image, progress_bar
from .frechet import (FaceEmbeddingFeatures, FeatureExtractor, _usable, frechet_distance_features,
                      get_feature_extractor)
from .identity import identity_distance, reference_embedding
from .keypoints import NORMALIZATIONS, UNITS, default_front_end, keypoint_distance, track_of

__all__ = ["TABLE1_COLUMNS", "PAPER_TABLE1", "Table1", "TableText", "evaluate", "run_table1", "table1",
           "write_table1_csv"]

#: (header as in the paper, row key)
TABLE1_COLUMNS = (("ΔKx f", "delta_k_x_f"), ("ΔKy f", "delta_k_y_f"), ("ΔKx r", "delta_k_x_r"),
                  ("ΔKy r", "delta_k_y_r"), ("ID f", "id_f"), ("ID r", "id_r"), ("FID", "fid"))

#: The paper's Table 1 (for side-by-side display: ``table1({**PAPER_TABLE1, **mine})``).
PAPER_TABLE1 = {
    "Baseline (paper)": dict(zip([k for _, k in TABLE1_COLUMNS], [0.19, 0.40, 0.26, 0.28, 0.46, 0.51, 17.34])),
    "Video2StyleGAN (paper)": dict(zip([k for _, k in TABLE1_COLUMNS], [0.17, 0.36, 0.20, 0.29, 0.24, 0.23, 6.15])),
}

#: extra CSV columns after the table's (bookkeeping; blank where a row lacks them)
EXTRA_COLUMNS = ("frames_f", "frames_r", "delta_k_frames_f", "delta_k_frames_r", "delta_k_missing_f",
                 "delta_k_missing_r", "delta_k_missing_driving_f", "delta_k_missing_driving_r",
                 "delta_k_missing_result_f", "delta_k_missing_result_r", "id_frames_f", "id_frames_r", "id_missing_f",
                 "id_missing_r",
                 "fid_frames_f", "fid_frames_r", "fid_missing_f", "fid_missing_r", "fid_features",
                 "fid_comparable_to_paper", "delta_k_units", "landmarks")


# ----------------------------------------------------------------------------------------------- one direction


class _Direction:
    """Accumulates ΔK / ID / features over the clips of one direction (pooled over references)."""

    def __init__(self):
        self.dk, self.idd, self.feats, self.labels = [], [], [], []
        self.frames = 0

    def add(self, label, dk, idd, feats):
        self.labels.append(label)
        self.dk.append(dk)
        self.idd.append(idd)
        self.frames += len(dk.valid)
        if feats is not None:
            self.feats.append(feats)

    @staticmethod
    def _dk_ok(dk) -> np.ndarray:
        # the frames averaged: valid and finite, so every frame left out is also listed
        return np.asarray(dk.valid, bool) & np.isfinite(dk.per_frame).all(axis=1)

    def _missing(self, key):
        out = []
        for label, dk, idd in zip(self.labels, self.dk, self.idd):
            idx = np.flatnonzero(~self._dk_ok(dk)) if key == "dk" else idd.missing
            out += [f"{label}:{int(i)}" if label else int(i) for i in idx]
        return out

    def fid_missing(self) -> list:
        """Frames whose features are not finite (e.g. no face for 'dlib-face'): left out of FID."""
        out = []
        for label, f in zip(self.labels, self.feats):
            out += [f"{label}:{i}" if label else i for i in _usable(f)[1]]
        return out

    def landmarks(self) -> set:
        return {dk.detector for dk in self.dk}

    def summary(self, s: str) -> dict:
        per = np.concatenate([d.per_frame for d in self.dk]) if self.dk else np.zeros((0, 2))
        ok = np.concatenate([self._dk_ok(d) for d in self.dk]) if self.dk else np.zeros(0, bool)
        ids = np.concatenate([d.per_frame for d in self.idd]) if self.idd else np.zeros(0)
        id_ok = np.isfinite(ids)
        return {
            f"delta_k_x_{s}": float(per[ok, 0].mean()) if ok.any() else float("nan"),
            f"delta_k_y_{s}": float(per[ok, 1].mean()) if ok.any() else float("nan"),
            f"id_{s}": float(ids[id_ok].mean()) if id_ok.any() else float("nan"),
            f"frames_{s}": int(self.frames),
            f"delta_k_frames_{s}": int(ok.sum()),
            f"delta_k_missing_{s}": self._missing("dk"),
            f"delta_k_missing_driving_{s}": int(sum(len(d.missing_driving) for d in self.dk)),
            f"delta_k_missing_result_{s}": int(sum(len(d.missing_result) for d in self.dk)),
            f"id_frames_{s}": int(id_ok.sum()),
            f"id_missing_{s}": self._missing("id"),
        }

    def features(self) -> np.ndarray | None:
        if not self.feats:
            return None
        return _usable(np.concatenate(self.feats, axis=0))[0]


def _fid_entries(ext: FeatureExtractor | None, fwd: _Direction, rev: _Direction | None) -> dict:
    if ext is None or rev is None:
        return {"fid": None, "fid_features": None, "fid_comparable_to_paper": None}
    fa, fb = fwd.features(), rev.features()
    value = frechet_distance_features(fa, fb) if len(fa) >= 2 and len(fb) >= 2 else float("nan")
    return {"fid": value, "fid_features": ext.name, "fid_comparable_to_paper": bool(ext.comparable_to_paper),
            "fid_frames_f": int(len(fa)), "fid_frames_r": int(len(fb)), "fid_missing_f": fwd.fid_missing(),
            "fid_missing_r": rev.fid_missing()}


def _landmarks(*directions: _Direction) -> str:
    """The landmark front end(s) of ΔK / ID in a row, e.g. 'rfb+pfld'."""
    return "; ".join(sorted(set().union(*(d.landmarks() for d in directions))))


def _front_end(detector: str | None) -> tuple[str, str | None]:
    """(detector, model) for the landmarks: ``None`` picks ΔK's default (see :func:`keypoint_distance`)."""
    return default_front_end() if detector is None else (detector, None)


def _measure(result, driving_track: LandmarkTrack, ref_emb, ext, *, normalization, detector, model, upsample,
             progress, label, direction: _Direction):
    clip = clip_frames(result, name=f"result frames{' of ' + label if label else ''}")
    if len(clip) != len(driving_track):
        raise ValueError(f"a re-enactment must give one frame per driving frame: got {len(clip)} result frames for "
                         f"{len(driving_track)} driving frames{' (' + label + ')' if label else ''}.")
    tr = track_of(clip, detector=detector, upsample=upsample, progress=progress, model=model)
    dk = keypoint_distance(tr, driving_track, normalization)
    idd = identity_distance(clip, ref_emb, track=tr, progress=False)
    if isinstance(ext, FaceEmbeddingFeatures) and (ext.detector, ext.upsample) == (detector, upsample):
        feats = idd.embeddings  # the same embeddings: don't detect again
    else:
        feats = ext(clip, progress=progress) if ext is not None else None
    direction.add(label, dk, idd, feats)


def evaluate(result_frames, driving_frames, reference, *, reverse_result_frames=None, reverse_driving_frames=None,
             feature_extractor="inception", fid_fallback=None, normalization: str = "percent",
             detector: str | None = None, upsample: int = 1, progress: bool = True) -> dict:
    """Table 1's numbers for one reference and one driving clip.

    ``result_frames``: the method's output for ``driving_frames`` ([T, H, W, 3] each, same T; any clip form of
    :mod:`v2s_nb.metrics`, sizes may differ - see :mod:`v2s_nb.metrics.keypoints`). ``reference``: the reference
    image [H, W, 3] (or its [128] embedding). With ``reverse_result_frames`` (the output for the reversed driving clip;
    ``reverse_driving_frames`` defaults to ``driving_frames[::-1]``) the reverse columns and
    FID(forward results, reverse results) are filled in, as in the paper; otherwise they are None and no
    feature extractor is built.

    ``feature_extractor``: ``'inception'`` (the paper's kind of FID; needs torch-fidelity or pytorch-fid and
    their weights), ``'pixels'`` / ``'dlib-face'`` (offline, not comparable to the paper), an extractor or a
    callable; ``fid_fallback``: the extractor to use if that one is unavailable (your explicit choice).
    ``normalization``: ΔK units (``'percent'`` of the frame size by default). ``detector``: the landmark
    detector of ΔK and ID (``'hog'``, ``'cnn'``, ``'rfb'``); by default the one :func:`keypoint_distance`
    uses, the paper's RFB-320 + PFLD when its weights can be had, else dlib's HOG with a warning.

    Returns a row dict: ``delta_k_x_f``, ``delta_k_y_f``, ``id_f``, ``delta_k_x_r``, ``delta_k_y_r``,
    ``id_r``, ``fid`` and bookkeeping (frames counted, frames without a face listed by index, the FID
    features' name, the ΔK units, the landmark front end that ran: ``landmarks``), ready for :func:`table1`.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
    has_rev = reverse_result_frames is not None
    ext = get_feature_extractor(feature_extractor, fallback=fid_fallback) if has_rev else None
    driving = clip_frames(driving_frames, name="driving frames")
    detector, model = _front_end(detector)
    ref_emb = reference_embedding(reference, detector=detector, upsample=upsample)
    d_track = track_of(driving, detector=detector, upsample=upsample, progress=progress, model=model)
    kw = dict(normalization=normalization, detector=detector, model=model, upsample=upsample, progress=progress,
              label="")
    fwd = _Direction()
    _measure(result_frames, d_track, ref_emb, ext, direction=fwd, **kw)
    row = {**fwd.summary("f"), "delta_k_units": UNITS[normalization]}
    if has_rev:
        if reverse_driving_frames is None:
            r_track = d_track[::-1]
        else:
            r_track = track_of(clip_frames(reverse_driving_frames, name="reverse driving frames"), detector=detector,
                               upsample=upsample, progress=progress, model=model)
        rev = _Direction()
        _measure(reverse_result_frames, r_track, ref_emb, ext, direction=rev, **kw)
        row.update(rev.summary("r"))
    else:
        row.update({k: None for k in ("delta_k_x_r", "delta_k_y_r", "id_r")})
    row.update(_fid_entries(ext, fwd, rev if has_rev else None))
    row["landmarks"] = _landmarks(fwd, *([rev] if has_rev else []))
    return row


# ----------------------------------------------------------------------------------------------- the table


class TableText(str):
    """The table as text; shows as itself (not as a quoted string) in a notebook, as Markdown in Jupyter."""

    def __repr__(self) -> str:
        return str(self)

    def _repr_markdown_(self) -> str:
        return str(self)


def _flat(row: Mapping) -> dict:
    """Accept flat rows (``delta_k_x_f`` ...) or nested ``{'forward': {...}, 'reverse': {...}, 'fid': x}``
    (inner keys ``delta_k_x``, ``delta_k_y``, ``id`` and optional bookkeeping)."""
    if "forward" not in row and "reverse" not in row:
        return dict(row)
    out = {k: v for k, v in row.items() if k not in ("forward", "reverse")}
    for name, s in (("forward", "f"), ("reverse", "r")):
        for k, v in (row.get(name) or {}).items():
            out[k if k.endswith(f"_{s}") else f"{k}_{s}"] = v
    return out


def _fmt(v, digits: int) -> str:
    if v is None or (isinstance(v, str) and not v.strip()):  # a blank CSV cell is a missing entry
        return "–"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "nan" if math.isnan(f) else f"{f:.{digits}f}"


def _as_bool(v) -> bool:
    """A flag from a row or read back from the CSV ("False" / "0" / "" are false there, not non-empty strings)."""
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)


def _as_number(v) -> float | None:
    """A count or value from a row or a CSV cell; None where blank or not a number."""
    try:
        return None if v is None or (isinstance(v, str) and not v.strip()) else float(v)
    except (TypeError, ValueError):
        return None


def _as_frames(v) -> tuple[int, list]:
    """(how many, the frame ids) from a list in a row or its CSV cell: a JSON list, or an older CSV's count."""
    if isinstance(v, str):
        v = v.strip()
        try:
            v = json.loads(v) if v else []
        except ValueError:
            v = [x.strip() for x in v.split(";") if x.strip()]
    if v is None:
        return 0, []
    if isinstance(v, (int, float, np.integer, np.floating)):
        return int(v), []  # a count without the indices (CSV written before the lists were kept)
    v = list(v)
    return len(v), v


def _frames_note(name: str, word: str, total, miss, what: str) -> str | None:
    n, ids = _as_frames(miss)
    if not n:
        return None
    total = _as_number(total)
    of = f" of {int(total)}" if total is not None else ""
    shown = (" [" + ", ".join(str(m) for m in ids[:8]) + (" ..." if len(ids) > 8 else "") + "]") if ids else ""
    return f"{name} {word}: {n}{of} frames {what}{shown}."


def _notes(rows: Mapping[str, dict]) -> list[str]:
    notes = []
    units = {r.get("delta_k_units") for r in rows.values() if r.get("delta_k_units")}
    if units:
        notes.append("ΔK units: " + "; ".join(sorted(units)) + " (mean over the 68 points and the frames).")
    by_landmarks: dict = {}
    for name, r in rows.items():
        if r.get("landmarks"):
            by_landmarks.setdefault(r["landmarks"], []).append(name)
    for lm, names in by_landmarks.items():
        notes.append(f"Landmarks (ΔK, ID): {lm} ({'all rows' if len(names) == len(rows) else ', '.join(names)}).")
    by_feats: dict = {}
    for name, r in rows.items():
        if r.get("fid_features"):
            by_feats.setdefault((r["fid_features"], _as_bool(r.get("fid_comparable_to_paper"))), []).append(name)
    for (feats, comparable), names in by_feats.items():
        who = "all rows" if len(names) == len(rows) else ", ".join(names)
        warn = "" if comparable else " - NOT Inception, not comparable to the paper"
        notes.append(f"FID features: '{feats}'{warn} ({who}).")
    for name, r in rows.items():
        why = "no face found" if r.get("fid_features") == "dlib-face" else "no usable features"
        for s, word in (("f", "forward"), ("r", "reverse")):
            total = r.get(f"frames_{s}")
            for key, what in (("delta_k_missing", "without a face left out of ΔK"),
                              ("id_missing", "without a face left out of ID"),
                              ("fid_missing", f"left out of FID ({why})")):
                note = _frames_note(name, word, total, r.get(f"{key}_{s}"), what)
                if note:
                    notes.append(note)
        fid_value = _as_number(r.get("fid"))
        if r.get("fid_features") and fid_value is not None and math.isnan(fid_value):
            got = [_as_number(r.get(f"fid_frames_{s}")) for s in "fr"]
            got = " and ".join(f"{int(g)} {w}" for g, w in zip(got, ("forward", "reverse")) if g is not None)
            notes.append(f"{name}: FID is nan: it needs at least 2 usable frames in each direction"
                         + (f", got {got}." if got else "."))
    return notes


def write_table1_csv(rows: Mapping[str, Mapping], path: str | os.PathLike) -> Path:
    """Write the rows as CSV (method, the seven table columns at full precision, then bookkeeping).

    Lists of frames (``*_missing_*``) are written as JSON lists, so a table made from the CSV read back
    (``csv.DictReader``) has the same notes as the original.
    """
    import io

    from ..atomic import write_atomic

    flat = {name: _flat(r) for name, r in rows.items()}
    header = ["method"] + [k for _, k in TABLE1_COLUMNS] + list(EXTRA_COLUMNS)
    fh = io.StringIO(newline="")
    w = csv.writer(fh)
    w.writerow(header)
    for name, r in flat.items():
        line = [name]
        for k in header[1:]:
            v = r.get(k)
            if isinstance(v, (list, tuple, np.ndarray)):
                v = json.dumps([x.item() if isinstance(x, np.generic) else x for x in v])
            line.append("" if v is None else repr(float(v)) if isinstance(v, (float, np.floating)) else v)
        w.writerow(line)
    return write_atomic(path, lambda f: f.write(fh.getvalue().encode("utf-8")))


def table1(rows: Mapping[str, Mapping], csv_path: str | os.PathLike | None = None, *, digits: int = 2,
           notes: bool = True) -> TableText:
    """Table 1 in the paper's layout (Method | ΔKx f | ΔKy f | ΔKx r | ΔKy r | ID f | ID r | FID).

    ``rows``: ``{method name: row}``, a row as :func:`evaluate` / :func:`run_table1` return it (or nested
    ``{'forward': {...}, 'reverse': {...}, 'fid': x}``); missing entries show as "–". ``csv_path``: also
    write :func:`write_table1_csv` there. ``notes``: add lines below the table with the ΔK units, the FID
    features, and the frames without a face. Returns the text (a str; ``print`` it, or let a notebook show it).
    """
    flat = {name: _flat(r) for name, r in rows.items()}
    lines = ["| Method | " + " | ".join(h for h, _ in TABLE1_COLUMNS) + " |",
             "|---" * (len(TABLE1_COLUMNS) + 1) + "|"]
    for name, r in flat.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(r.get(k), digits) for _, k in TABLE1_COLUMNS) + " |")
    if notes:
        extra = _notes(flat)
        if extra:
            lines.append("")
            lines += [f"* {n}" for n in extra]
    if csv_path is not None:
        write_table1_csv(flat, csv_path)
    return TableText("\n".join(lines))


# ----------------------------------------------------------------------------------------------- the harness


@dataclasses.dataclass
class Table1:
    """What :func:`run_table1` returns: ``rows`` (method -> row dict), ``text`` (the table), ``csv_path``,
    and ``results`` (method -> {(reference name, 'f'/'r'): frames}) when ``keep_frames`` was set."""

    rows: dict
    text: TableText
    csv_path: Path | None
    results: dict | None = None

    def __str__(self) -> str:
        return str(self.text)

    def _repr_markdown_(self) -> str:
        return self.text._repr_markdown_()


def _named(items, what: str) -> dict:
    if isinstance(items, Mapping):
        return dict(items)
    return {f"{what}{i}": v for i, v in enumerate(items)}


def run_table1(reenact_fn_by_method: Mapping[str, Callable], references, driving_frames, *,
               csv_path: str | os.PathLike | None = "table1.csv", feature_extractor="inception", fid_fallback=None,
               normalization: str = "percent", detector: str | None = None, upsample: int = 1, progress: bool = True,
               keep_frames: bool = False, digits: int = 2) -> Table1:
    """Run every method forward and on the reversed driving video, measure, and build Table 1.

    ``reenact_fn_by_method``: ``{name: fn}``, ``fn(reference_image uint8 [H, W, 3], driving_frames uint8
    [T, H, W, 3]) -> result frames`` (T frames, any clip form). ``references``: one image, a list of images
    or ``{name: image}``. ``driving_frames``: one clip used with every reference (the paper's protocol), or a
    list / dict of clips paired with the references. Per method and direction, ΔK and ID are pooled over
    the frames of all references; FID compares all forward results with all reverse results.

    The FID feature extractor is built first, so a missing library / weight file fails before any work
    (see :func:`evaluate` for ``feature_extractor`` / ``fid_fallback``). Landmarks of each driving clip and
    the reference embeddings are computed once (``detector``: as in :func:`evaluate`). ``csv_path=None`` writes
    no CSV. Returns a :class:`Table1`.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
    for what, x in (("driving frames", driving_frames), ("references", references)):
        if isinstance(x, (str, os.PathLike)):  # iterated, a path would be taken letter by letter as clips
            clip_frames(x, name=what)  # raises FrameFormatError: "read the file first", as evaluate does
    ext = get_feature_extractor(feature_extractor, fallback=fid_fallback)
    refs = {k: one_image(v, name=f"reference {k!r}") for k, v in
            _named([references] if _is_one_image(references) else references, "ref").items()}
    if not refs:
        raise ValueError("give at least one reference image.")
    if _is_one_clip(driving_frames):
        clip = clip_frames(driving_frames, name="driving frames")
        drives = {k: clip for k in refs}
    else:
        drv = _named(driving_frames, "ref")
        if isinstance(driving_frames, Mapping):
            if set(drv) != set(refs):
                raise ValueError(f"driving clips are named {sorted(drv)} but references {sorted(refs)}.")
        elif len(drv) != len(refs):
            raise ValueError(f"got {len(drv)} driving clips for {len(refs)} references (give one clip, or one each).")
        else:
            drv = dict(zip(refs, drv.values()))
        drives = {k: clip_frames(v, name=f"driving frames of {k!r}") for k, v in drv.items()}

    detector, model = _front_end(detector)
    ref_embs = {}
    for k, img in refs.items():
        try:
            ref_embs[k] = reference_embedding(img, detector=detector, upsample=upsample)
        except NoFaceError as e:
            raise NoFaceError(f"reference {k!r}: {e}") from None
    d_tracks = {}
    by_id = {}
    for k, clip in drives.items():
        if id(clip) not in by_id:
            by_id[id(clip)] = track_of(clip, detector=detector, upsample=upsample, progress=progress, model=model)
        d_tracks[k] = by_id[id(clip)]

    steps = len(reenact_fn_by_method) * len(refs) * 2
    bar = progress_bar(steps, "Table 1", progress, unit="run")
    rows, kept = {}, {} if keep_frames else None
    kw = dict(normalization=normalization, detector=detector, model=model, upsample=upsample, progress=False)
    try:
        for method, fn in reenact_fn_by_method.items():
            dirs = {"f": _Direction(), "r": _Direction()}
            for k, ref in refs.items():
                for s in ("f", "r"):
                    bar.set_postfix_str(f"{method} / {k} / {'forward' if s == 'f' else 'reverse'}")
                    drive = drives[k] if s == "f" else np.ascontiguousarray(drives[k][::-1])
                    out = clip_frames(fn(ref, drive), name=f"output of {method!r} for {k!r}")
                    track = d_tracks[k] if s == "f" else d_tracks[k][::-1]
                    label = k if len(refs) > 1 else ""
                    _measure(out, track, ref_embs[k], ext, label=label, direction=dirs[s], **kw)
                    if keep_frames:
                        kept.setdefault(method, {})[(k, s)] = out
                    bar.update(1)
            rows[method] = {**dirs["f"].summary("f"), **dirs["r"].summary("r"),
                            **_fid_entries(ext, dirs["f"], dirs["r"]), "delta_k_units": UNITS[normalization],
                            "landmarks": _landmarks(dirs["f"], dirs["r"])}
    finally:
        bar.close()
    text = table1(rows, csv_path, digits=digits)
    return Table1(rows, text, Path(csv_path) if csv_path is not None else None, kept)


def _is_one_image(x) -> bool:
    if isinstance(x, (Mapping, list, tuple)):
        return False
    shape = np.shape(x)
    if ambiguous_channel_first(shape):
        raise ValueError(f"references of shape {tuple(shape)} are ambiguous: one channel-first picture [C, H, W] "
                         f"(e.g. torchvision's read_image) or {shape[0]} grayscale pictures [H, W]; pass one "
                         "picture as [H, W, C] (e.g. tensor.permute(1, 2, 0)), several as a list or dict.")
    return len(shape) in (2, 3) and (len(shape) == 2 or shape[-1] in (3, 4))


def _is_one_clip(x) -> bool:
    from ..video import Video

    if isinstance(x, Video):
        return True
    if isinstance(x, Mapping):
        return False
    if isinstance(x, (list, tuple)):  # a list of frames [H, W, 3] is one clip; a list of clips is not
        return len(x) > 0 and not isinstance(x[0], Video) and np.ndim(x[0]) <= 3
    return np.ndim(x) in (3, 4)
