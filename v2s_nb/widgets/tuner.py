"""Coefficient tuner for the re-enactment (the paper's section 3.6, eq 10-12) over a prepared
:class:`~v2s_nb.method.reenact.Reenactor`.

:class:`ReenactmentTuner` (:func:`tune`) shows

* the motion mode (relative / absolute / paper, :mod:`v2s_nb.method.motion`; choosing one sets α, β, γ, ζ to its
  defaults, which stay tunable), the expression strength k, the anchor frame (first, best when the Reenactor
  holds landmarks, or an index) and the position track's form (relative in face units / absolute);
* sliders for α, β, γ (eq 10-11, on the ``X_s`` channels) and ζ (eq 12, on the other channels of the mixed rows);
* the W+ rows whose S codes are mixed (an ``IntRangeSlider``, paper: 3-7; any rows may be chosen, and when the
  enabled regions have no ``X_s`` channel there the status line says so and names the rows that hold them:
  α, β, γ and the region toggles then change nothing, ζ still does);
* a toggle per face region (eyes / nose / mouth) that puts its channels in ``X_s`` or leaves them out;
* the source of each component: local motion (driving / co-driving), pose (the pose-encoded reference of section
  3.3: driving / co-driving / none) and position (the canonical track of section 3.2: driving / co-driving /
  none). Switching a source only recomputes the per-frame S codes (affine layers, no synthesis, no inversion,
  no channel discovery), so it is offered wherever the Reenactor holds that source; choices it does not hold are
  absent and a component with a single choice is shown read-only, with the reason;
* a frame slider and a live preview of that frame (``ipywidgets.Image``, PNG), next to a **difference view**:
  result − reference (the reference rendered with the frame's pose and position,
  :meth:`~v2s_nb.method.reenact.Reenactor.render_reference`), amplified by a chosen gain around mid-grey, with the
  gain and the largest difference written under it, so that small changes (ζ, the W+ rows) are visible;
* two reset buttons: **paper defaults** (:data:`PAPER_DEFAULTS`: the printed eq 7 and coefficients, rows 3-7,
  the printed absolute position track) and **v2s_nb defaults** (:data:`V2S_NB_DEFAULTS`: relative motion and
  position); either also puts every region in ``X_s``, k = 1, the first frame as anchor, and each source back to
  the driving video where the Reenactor holds it;
* a "render video" button with a progress bar; the video is shown inline (``v2s_nb.video.show_videos`` HTML).

Choices with few options (motion mode, position form, sources, gain) are toggle buttons whose chosen one is
highlighted; a region toggle is green with a tick when its channels are in ``X_s`` and grey with a cross when not.

The tuner opens on a frame **with motion** (:func:`motion_frame`: the driving frame furthest from the anchor in
the mixed W+ rows and the position track), since at the anchor frame the relative modes give the reference
unchanged and the coefficients have nothing to act on; ``frame=`` overrides.

The tuner edits the Reenactor it is given (``tuner.reenactor.alpha`` etc. follow the controls), so a later
``reenactor.render_video()`` or ``reenactor.save(...)`` uses the tuned settings. A control change re-renders only
the preview frame (:meth:`Reenactor.render_frame`, one synthesis from cached S codes). Sliders send their value
on release (``continuous_update=False``), and the preview is rendered in a background thread with a
"latest value wins" rule: requests arriving while a frame is being drawn are merged into one render with the
newest settings, so dragging or key presses never queue up work. ``background=False`` renders synchronously.

For tests and scripts: ``tuner.preview`` is the current preview (uint8 [R, R, 3]), ``tuner.difference`` the
difference view (uint8 [R, R, 3]: 128 + gain · (result − reference), clipped), ``tuner.video`` the last rendered
video (uint8 [T, R, R, 3] or None), :meth:`ReenactmentTuner.wait` waits for a pending preview, ``tuner.params`` is
the current settings, :meth:`~ReenactmentTuner.refresh` re-reads a Reenactor changed from code and
:meth:`~ReenactmentTuner.close` closes every widget and drops the pictures and video. Stable CSS classes:
``v2s-tuner``, ``v2s-tuner-motion-mode``, ``v2s-tuner-strength``, ``v2s-tuner-anchor``, ``v2s-tuner-position-mode``,
``v2s-tuner-alpha``, ``v2s-tuner-beta``, ``v2s-tuner-gamma``, ``v2s-tuner-zeta``, ``v2s-tuner-layers``,
``v2s-tuner-region-<name>``, ``v2s-tuner-source-<component>``, ``v2s-tuner-frame``, ``v2s-tuner-preview``,
``v2s-tuner-difference``, ``v2s-tuner-gain``, ``v2s-tuner-difference-label``, ``v2s-tuner-reset-paper``,
``v2s-tuner-reset-v2s``, ``v2s-tuner-status`` (its ``v2s-tuner-rows-note``: the rows hold no X_s channel),
``v2s-tuner-render``, ``v2s-tuner-progress``, ``v2s-tuner-video``.
"""

from __future__ import annotations

import html
import threading
import time
import warnings

import numpy as np

from ..method.motion import MOTION_MODES, POSITION_MODES, motion_mode
from ..method.reenact import DEFAULT_LAYERS, REGIONS, CoefficientWarning, check_coefficients
from .track_viewer import _close_widgets, _png

__all__ = ["ReenactmentTuner", "tune", "motion_frame", "channel_rows", "PAPER_DEFAULTS", "V2S_NB_DEFAULTS",
           "DIFFERENCE_GAINS"]

#: What "reset to paper defaults" sets: eq 7 as printed with its coefficients (section 3.6), rows 3-7 (the paper's
#: best), every region, k = 1, the first frame as anchor, the canonical track as printed (section 3.2).
PAPER_DEFAULTS = {"motion_mode": "paper", **motion_mode("paper").coefficients, "layers": DEFAULT_LAYERS,
                  "regions": REGIONS, "strength": 1.0, "anchor": "first", "position_mode": "absolute"}
#: What "reset to v2s_nb defaults" sets: the package's defaults (:class:`~v2s_nb.method.reenact.Reenactor`).
V2S_NB_DEFAULTS = {"motion_mode": MOTION_MODES[0], **motion_mode(MOTION_MODES[0]).coefficients,
                   "layers": DEFAULT_LAYERS, "regions": REGIONS, "strength": 1.0, "anchor": "first",
                   "position_mode": POSITION_MODES[0]}
#: Gains offered for the difference view (result − reference) · gain + mid-grey.
DIFFERENCE_GAINS = (1, 4, 16)


def motion_frame(reenactor) -> int:
    """The driving frame that moves most away from the anchor frame: argmax over frames j of
    ``d_w(j) / max d_w + d_t(j) / max d_t``, with ``d_w`` the RMS difference of the motion source's codes
    (mixed W+ rows only) from the anchor frame's, and ``d_t`` the position track's change since the anchor
    (|Δtx| + |Δty| in widths, plus |Δangle| / 90°). A term that is zero for every frame is left out; with
    no motion at all, the last frame."""
    r = reenactor
    n = len(r)
    if n <= 1:
        return 0
    a = r.anchor_frame()
    ws = r.ws_drive if r.sources()["motion"] == "driving" else r.ws_codrive
    rows = [i for i in r.layers if i < ws.shape[1]] or list(range(ws.shape[1]))
    d_w = (ws[:n, rows] - ws[a, rows]).float().pow(2).mean(dim=(1, 2)).sqrt().cpu().numpy().astype(np.float64)
    score = np.zeros(n)
    src = r.sources()["position"]
    terms = [d_w]
    if src != "none":
        t = np.asarray(r.tracks[src][:n, :3], np.float64)
        d = t - t[a]
        terms.append(np.abs(d[:, 0]) + np.abs(d[:, 1]) + np.abs(d[:, 2]) / 90.0)
    for term in terms:
        term = np.nan_to_num(term)
        if term.max() > 0:
            score += term / term.max()
    return int(np.argmax(score)) if score.max() > 0 else n - 1

#: Slider ranges (a subset of the allowed COEFFICIENT_RANGES, where the images stay usable).
SLIDER_RANGES = {"alpha": (-3.0, 3.0), "beta": (-3.0, 3.0), "gamma": (-3.0, 3.0), "zeta": (-0.5, 1.5)}
_LABELS = {"alpha": "α (s_ref)", "beta": "β (s_j)", "gamma": "γ (s_base)", "zeta": "ζ (ref/base)"}
_TIPS = {"alpha": "eq 10: weight of the reference's S code on the X_s channels (paper: -1)",
         "beta": "eq 10: weight of the driving frame's S code on the X_s channels (paper: 1)",
         "gamma": "eq 11: weight of the baseline's S code added on the X_s channels (paper: 1)",
         "zeta": "eq 12: other channels of the mixed rows = ζ s_ref + (1-ζ) s_base (paper: 0.5)"}


class ReenactmentTuner:
    """Interactive α / β / γ / ζ, layer-range, region and source controls with a live frame preview.

    Args:
        reenactor: a prepared :class:`~v2s_nb.method.reenact.Reenactor` (e.g. from
            :func:`v2s_nb.prepare.reenactor`); it is edited in place.
        frame: initial preview frame; ``None`` = :func:`motion_frame` (a frame where the coefficients act).
        size: displayed preview size in pixels (the difference view has the same size).
        gain: initial amplification of the difference view, one of :data:`DIFFERENCE_GAINS`.
        batch: frames per synthesis call when rendering the video.
        background: render previews in a worker thread (latest value wins); ``False`` = synchronously.
    """

    def __init__(self, reenactor, *, frame: int | None = None, size: int = 256, batch: int = 8,
                 background: bool = True, gain: int = 4):
        import ipywidgets as W

        from ..method.reenact import Reenactor
        from ..validate import integer

        if not isinstance(reenactor, Reenactor):
            raise TypeError(f"the tuner takes a Reenactor (v2s_nb.prepare.reenactor(...) or Reenactor.load(folder)), "
                            f"got {type(reenactor).__name__}")
        self.reenactor = r = reenactor
        self.size = integer(size, "size (preview pixels)", 16, 4096)
        self.batch = integer(batch, "batch (frames per synthesis call)", 1, 4096)
        self.background = bool(background)
        n = len(r)
        num_ws = r.G_render.synthesis.num_ws
        if frame is None:
            frame = motion_frame(r)
        if not -n <= int(frame) < n:
            raise ValueError(f"frame {frame} is outside the {n} frames re-enacted: use 0..{n - 1} (negative counts "
                             "from the end) or frame=None for the frame with the most motion")
        if gain not in DIFFERENCE_GAINS:
            raise ValueError(f"gain must be one of {DIFFERENCE_GAINS} (the difference view's amplification), "
                             f"got {gain!r}")
        self.preview: np.ndarray | None = None
        self.difference: np.ndarray | None = None
        self.video: np.ndarray | None = None
        self.render_time = float("nan")
        self.error: BaseException | None = None
        self._lock = threading.Lock()      # guards the request counters
        self._render_lock = threading.Lock()  # one synthesis at a time (preview worker vs video button)
        self._wanted = self._done = 0
        self._running = False
        self._thread: threading.Thread | None = None
        self._ref_cache: tuple | None = None  # (key, reference render) for the difference view
        self._closed = False

        lay = W.Layout(width="400px")
        style = {"description_width": "100px"}
        toggle_style = {"description_width": "100px", "button_width": "86px"}
        self.sliders = {}
        for name in ("alpha", "beta", "gamma", "zeta"):
            lo, hi = SLIDER_RANGES[name]
            v = float(getattr(r, name))
            s = W.FloatSlider(value=v, min=min(lo, v), max=max(hi, v), step=0.05, description=_LABELS[name],
                              continuous_update=False, readout_format=".2f", layout=lay, style=style,
                              tooltip=_TIPS[name])
            s.add_class(f"v2s-tuner-{name}")
            self.sliders[name] = s
        self.alpha, self.beta, self.gamma, self.zeta = (self.sliders[k] for k in ("alpha", "beta", "gamma", "zeta"))
        self._holding = False  # True while a reset / mode change sets several controls (one preview for all)
        self.motion_mode = W.ToggleButtons(options=list(MOTION_MODES), value=r.motion_mode, description="motion mode",
                                           tooltips=[motion_mode(m).summary for m in MOTION_MODES],
                                           style=toggle_style)
        self.motion_mode.add_class("v2s-tuner-motion-mode")
        self.strength = W.FloatSlider(value=float(r.strength), min=min(0.0, r.strength), max=max(2.0, r.strength),
                                      step=0.05, description="strength k", continuous_update=False,
                                      readout_format=".2f", layout=lay, style=style)
        self.strength.add_class("v2s-tuner-strength")
        self.anchor = W.Dropdown(options=_anchor_options(r), value=_anchor_value(r), description="anchor",
                                 layout=W.Layout(width="260px"), style=style)
        self.anchor.add_class("v2s-tuner-anchor")
        self.position_mode = W.ToggleButtons(options=list(POSITION_MODES), value=r.position_mode,
                                             description="position", style=toggle_style,
                                             tooltips=["the driver's motion since the anchor frame, in face units",
                                                       "the canonical track as printed (section 3.2)"])
        self.position_mode.add_class("v2s-tuner-position-mode")
        rows = r.layers
        self.layers = W.IntRangeSlider(value=(min(rows), max(rows)), min=0, max=num_ws - 1, step=1,
                                       description="W+ rows", continuous_update=False, layout=lay, style=style)
        self.layers.add_class("v2s-tuner-layers")
        # the rows in use: r.layers (possibly non-contiguous, e.g. 3,5,7) until the slider is moved; observed
        # before the preview observers so that a slider change is seen by the render it triggers
        self._rows = tuple(rows)
        self.layers.observe(self._on_rows, names="value")
        self.region_toggles = {}
        for reg in REGIONS:
            t = W.ToggleButton(value=reg in r.regions, description=reg, tooltip=f"{reg} channels in X_s",
                               layout=W.Layout(width="90px"))
            t.add_class(f"v2s-tuner-region-{reg}")
            _style_toggle(t)
            t.observe(lambda ch, t=t: _style_toggle(t), names="value")
            self.region_toggles[reg] = t
        self.source_widgets = {}
        src = r.sources()
        self._source_choices, self.source_notes = _source_choices(r)
        for comp in ("motion", "pose", "position"):
            d = W.ToggleButtons(options=self._source_choices[comp], value=src[comp], description=f"{comp} from",
                                style=toggle_style, disabled=comp in self.source_notes)
            d.add_class(f"v2s-tuner-source-{comp}")
            self.source_widgets[comp] = d
        self.reset_paper = W.Button(description="reset to paper defaults", icon="undo", layout=W.Layout(width="205px"),
                                    tooltip="eq 7 as printed, α β γ ζ = -1 1 1 0.5, rows 3-7, every region, k 1, "
                                            "anchor first, absolute position track")
        self.reset_paper.add_class("v2s-tuner-reset-paper")
        self.reset_v2s = W.Button(description="reset to v2s_nb defaults", icon="undo", layout=W.Layout(width="205px"),
                                  tooltip="relative motion (α β γ ζ = 0 0 1 0.5), rows 3-7, every region, k 1, "
                                          "anchor first, relative position")
        self.reset_v2s.add_class("v2s-tuner-reset-v2s")
        self.reset_paper.on_click(lambda _b: self.reset("paper"))
        self.reset_v2s.on_click(lambda _b: self.reset("v2s_nb"))
        self.frame = W.IntSlider(value=int(frame) % n, min=0, max=max(n - 1, 0), description="frame",
                                 continuous_update=False, layout=W.Layout(width=f"{max(2 * self.size, 300)}px"),
                                 style={"description_width": "50px"})
        self.frame.add_class("v2s-tuner-frame")
        self.image = W.Image(format="png", width=self.size, height=self.size)
        self.image.add_class("v2s-tuner-preview")
        self.diff_image = W.Image(format="png", width=self.size, height=self.size)
        self.diff_image.add_class("v2s-tuner-difference")
        self.gain = W.ToggleButtons(options=[(f"×{g}", g) for g in DIFFERENCE_GAINS], value=gain,
                                    description="gain", style={"description_width": "50px", "button_width": "48px"},
                                    tooltips=[f"difference amplified {g} times" for g in DIFFERENCE_GAINS])
        self.gain.add_class("v2s-tuner-gain")
        cap = W.Layout(width=f"{self.size}px")
        self.preview_label = W.HTML(layout=cap)
        self.diff_label = W.HTML(layout=cap)
        self.diff_label.add_class("v2s-tuner-difference-label")
        self.status = W.HTML(layout=W.Layout(width=f"{2 * self.size + 8}px"))
        self.status.add_class("v2s-tuner-status")
        self.render_button = W.Button(description="render video", icon="film", button_style="primary")
        self.render_button.add_class("v2s-tuner-render")
        self.progress = W.IntProgress(value=0, min=0, max=max(n, 1), description="video",
                                      layout=W.Layout(width="300px"))
        self.progress.add_class("v2s-tuner-progress")
        self.video_html = W.HTML()
        self.video_html.add_class("v2s-tuner-video")

        for w in [*self.sliders.values(), self.layers, *self.region_toggles.values(), *self.source_widgets.values(),
                  self.frame, self.strength, self.anchor, self.position_mode]:
            w.observe(self._on_change, names="value")
        self.motion_mode.observe(self._on_mode, names="value")
        self.gain.observe(self._on_gain, names="value")
        self.render_button.on_click(self._on_render)

        self._notes = notes = W.HTML("<br>".join(html.escape(s) for s in self.source_notes.values()))
        css = W.HTML(f"<style>{_CSS}</style>", layout=W.Layout(display="none"))
        controls = W.VBox([W.HTML("<b>motion</b>"), self.motion_mode, self.strength, self.anchor, self.position_mode,
                           W.HTML("<b>eq 10-12 coefficients</b>"), *self.sliders.values(), self.layers,
                           W.HBox([W.Label("X_s regions", layout=W.Layout(width="104px")),
                                   *self.region_toggles.values()]),
                           W.HTML("<b>sources</b>"), *self.source_widgets.values(), notes,
                           W.HBox([self.reset_paper, self.reset_v2s]),
                           W.HBox([self.render_button, self.progress])],
                          layout=W.Layout(width="420px", margin="0 12px 0 0"))
        pictures = W.HBox([W.VBox([self.image, self.preview_label], layout=W.Layout(margin="0 8px 0 0")),
                           W.VBox([self.diff_image, self.diff_label])])
        right = W.VBox([self.frame, pictures, self.gain, self.status])
        self.widget = W.VBox([css, W.HBox([controls, right], layout=W.Layout(flex_flow="row wrap")),
                              self.video_html])
        self.widget.add_class("v2s-tuner")
        self._request()
        if self.background:
            self.wait()

    # ------------------------------------------------------------------ state

    @property
    def params(self) -> dict:
        """The settings the controls show: coefficients, layers, regions, sources, frame."""
        return {**{k: float(s.value) for k, s in self.sliders.items()}, "layers": self._rows,
                "regions": tuple(k for k, t in self.region_toggles.items() if t.value),
                **{k: d.value for k, d in self.source_widgets.items()}, "frame": int(self.frame.value),
                "gain": int(self.gain.value),
                "motion_mode": self.motion_mode.value, "strength": float(self.strength.value),
                "anchor": self.anchor.value, "position_mode": self.position_mode.value}

    def _on_rows(self, change) -> None:
        lo, hi = change["new"]
        self._rows = tuple(range(lo, hi + 1))

    _SETTINGS = ("alpha", "beta", "gamma", "zeta", "layers", "regions", "motion", "pose", "position", "motion_mode",
                 "strength", "anchor", "position_mode")

    def _apply(self, p: dict) -> None:
        """Put the settings on the Reenactor; settings it cannot use (e.g. anchor 'best' without the motion
        source's landmarks) raise and leave it with its previous ones, so a later render_video() still works."""
        r = self.reenactor
        try:  # prepare() below does not check them: a NaN typed from code stayed on the Reenactor
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CoefficientWarning)  # the render says these
                check_coefficients(*(p[k] for k in ("alpha", "beta", "gamma", "zeta")))
        except ValueError as e:
            raise ValueError(f"these settings were not applied (the Reenactor keeps its previous ones): {e}") from e
        old = {k: getattr(r, k) for k in self._SETTINGS}
        for k in ("alpha", "beta", "gamma", "zeta"):
            setattr(r, k, p[k])
        r.layers, r.regions = p["layers"], p["regions"]
        r.motion, r.pose, r.position = p["motion"], p["pose"], p["position"]
        r.motion_mode, r.strength, r.anchor, r.position_mode = (p["motion_mode"], p["strength"], p["anchor"],
                                                                p["position_mode"])
        try:
            r.prepare()  # validates sources, anchor, strength, position form (and caches the S codes)
        except Exception as e:
            for k, v in old.items():
                setattr(r, k, v)
            raise ValueError(f"these settings were not applied (the Reenactor keeps its previous ones): {e}") from e

    # ------------------------------------------------------------------ preview

    def _on_change(self, change=None) -> None:
        if not self._holding:
            self._request()

    def _on_mode(self, change=None) -> None:
        """A motion mode sets the coefficients to its defaults (they stay tunable); one preview follows."""
        if self._holding:
            return  # a reset sets the coefficients itself
        self._holding = True
        try:
            for k, v in motion_mode(self.motion_mode.value).coefficients.items():
                self.sliders[k].value = v
        finally:
            self._holding = False
        self._request()

    def reset(self, which: str = "v2s_nb") -> None:
        """Set every control to :data:`PAPER_DEFAULTS` (``'paper'``) or :data:`V2S_NB_DEFAULTS` (``'v2s_nb'``);
        each source goes back to the driving video where the Reenactor holds it (else its only choice). One
        preview follows."""
        if which not in ("paper", "v2s_nb"):
            raise ValueError(f"reset takes 'paper' or 'v2s_nb', got {which!r}")
        d = PAPER_DEFAULTS if which == "paper" else V2S_NB_DEFAULTS
        rows = [i for i in d["layers"] if i <= self.layers.max] or [self.layers.max]
        self._holding = True
        try:
            self.motion_mode.value = d["motion_mode"]
            for k in ("alpha", "beta", "gamma", "zeta"):
                self.sliders[k].value = d[k]
            self.layers.value = (min(rows), max(rows))
            self._rows = tuple(range(min(rows), max(rows) + 1))  # also when the slider already showed this range
            for reg, t in self.region_toggles.items():
                t.value = reg in d["regions"]
            self.strength.value = d["strength"]
            self.anchor.value = d["anchor"]
            self.position_mode.value = d["position_mode"]
            for comp, w in self.source_widgets.items():
                w.value = "driving" if "driving" in self._source_choices[comp] else self._source_choices[comp][0]
        finally:
            self._holding = False
        self._request()

    def _on_gain(self, change=None) -> None:
        """Only the difference picture changes: no synthesis."""
        if self.preview is not None and self._ref_cache is not None:
            self._show_difference(self.preview, self._ref_cache[1])

    def _request(self) -> None:
        if self._closed:
            return
        with self._lock:
            self._wanted += 1
            if self._running:
                return  # the worker picks up the newest settings when it finishes the current frame
            self._running = True
        if self.background:
            self._thread = threading.Thread(target=self._drain, name="v2s-tuner-preview", daemon=True)
            self._thread.start()
        else:
            self._drain()

    def _drain(self) -> None:
        while True:
            with self._lock:
                if self._done >= self._wanted:
                    self._running = False
                    return
                target = self._wanted
            try:
                self._render_preview()
            except BaseException as e:  # shown, never raised into the kernel's comm handler
                self.error = e
                self.status.value = f"<span style='color:#b00'>error: {html.escape(str(e))}</span>"
            with self._lock:
                self._done = max(self._done, target)

    def _render_preview(self) -> None:
        p = self.params
        with self._render_lock:
            self._apply(p)
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", CoefficientWarning)
                img = self.reenactor.render_frame(p["frame"])
            self.render_time = time.perf_counter() - t0
            ref = self._reference(p["frame"])
            # X_s as used for this render (under the lock: a newer _apply may follow)
            n_xs = int(sum(int(np.sum(m)) for m in self.reenactor.masks().values()))
            note = _xs_note(channel_rows(self.reenactor), p["layers"], p["regions"])
        self.preview = img
        self.error = None
        self.image.value = _png(img, self.size)
        self.preview_label.value = f"<small>result, frame {p['frame']}</small>"
        self._show_difference(img, ref)
        msg = (f"frame {p['frame']} · {p['motion_mode']} (anchor frame {self.reenactor.anchor_frame()}, "
               f"k {p['strength']:.2f}) · α {p['alpha']:.2f} β {p['beta']:.2f} γ {p['gamma']:.2f} "
               f"ζ {p['zeta']:.2f} · "
               f"rows {_rows_text(p['layers'])} · regions {', '.join(p['regions']) or 'none'}"
               + (f" ({n_xs} X_s channels)" if p["regions"] else "") + f" · {self.render_time * 1000:.0f} ms")
        if note:  # controls without effect must not look like they act
            msg += f"<br><span class='v2s-tuner-rows-note' style='color:#a60'>{html.escape(note)}</span>"
        for w in caught:
            msg += f"<br><span style='color:#a60'>{html.escape(str(w.message))}</span>"
        self.status.value = msg

    def _reference(self, j: int) -> np.ndarray:
        """The reference at frame ``j``'s pose and position (cached until the pose / position inputs change)."""
        r = self.reenactor
        r.prepare()
        key = (int(j), r._cache["prep"][0])
        if self._ref_cache is None or self._ref_cache[0] != key:
            self._ref_cache = (key, r.render_reference(int(j)))
        return self._ref_cache[1]

    def _show_difference(self, img: np.ndarray, ref: np.ndarray) -> None:
        g = int(self.gain.value)
        d = img.astype(np.int16) - ref.astype(np.int16)
        self.difference = np.clip(128 + g * d, 0, 255).astype(np.uint8)
        self.diff_image.value = _png(self.difference, self.size)
        self.diff_label.value = (f"<small title='result minus the reference rendered with this frame&#39;s pose and "
                                 f"position, times the gain, around grey'>(result − reference) × {g}, grey = 0 · "
                                 f"max |Δ| {int(np.abs(d).max())}/255</small>")

    def wait(self, timeout: float = 60.0) -> bool:
        """Wait until the preview shows the latest settings; True when it does."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                if not self._running and self._done >= self._wanted:
                    return True
            time.sleep(0.01)
        return False

    def refresh(self) -> None:
        """Re-read the Reenactor and re-render the preview, after changing it from code (its settings, codes,
        tracks or length) or after ``tuner.reenactor = another``: the controls take its settings (a coefficient
        outside its slider's range widens the slider), the frame slider and the anchor choices its frames (a frame
        past the end becomes the last one) and the source choices what it holds."""
        # the caches are keyed by the settings only: new codes (w_ref, ws_drive, pose codes, points) need them dropped
        r = self.reenactor
        with self._render_lock:
            if isinstance(getattr(r, "_cache", None), dict):
                r._cache.clear()
            r._anchor_cache = None
            self._ref_cache = None
            self._sync_controls()
        self._request()

    def _sync_controls(self) -> None:
        """Put the Reenactor's settings, length and sources on the controls (no preview: the caller asks one)."""
        r = self.reenactor
        n = len(r)
        self._holding = True
        try:
            self.frame.max = max(n - 1, 0)  # a value past the new end is clamped to the last frame
            self.progress.max = max(n, 1)
            self.anchor.options = _anchor_options(r)
            self.anchor.value = _anchor_value(r)
            self.motion_mode.value = r.motion_mode
            for name, s in self.sliders.items():
                v = float(getattr(r, name))
                lo, hi = SLIDER_RANGES[name]
                s.min, s.max = min(lo, v), max(hi, v)
                s.value = v
            self.strength.min, self.strength.max = min(0.0, r.strength), max(2.0, r.strength)
            self.strength.value = float(r.strength)
            self.position_mode.value = r.position_mode
            self.layers.max = r.G_render.synthesis.num_ws - 1
            self.layers.value = (min(r.layers), max(r.layers))
            self._rows = tuple(r.layers)  # also non-contiguous rows, as when the tuner was made
            for reg, t in self.region_toggles.items():
                t.value = reg in r.regions
            src = r.sources()
            self._source_choices, self.source_notes = _source_choices(r)
            for comp, w in self.source_widgets.items():
                w.options = self._source_choices[comp]
                w.value = src[comp]
                w.disabled = comp in self.source_notes
            self._notes.value = "<br>".join(html.escape(s) for s in self.source_notes.values())
        finally:
            self._holding = False

    # ------------------------------------------------------------------ video

    def render(self) -> np.ndarray:
        """Render every frame with the current settings (progress bar), show the video inline, return it."""
        from ..images import to_uint8
        from ..video import show_videos

        r = self.reenactor
        p = self.params
        n = len(r)
        self.render_button.disabled = True
        self.progress.max, self.progress.value = max(n, 1), 0
        out = []
        try:
            with self._render_lock:
                self._apply(p)
                t0 = time.perf_counter()
                for s in range(0, n, self.batch):
                    idx = np.arange(s, min(n, s + self.batch))
                    out.append(to_uint8(r.render_frames(idx), range_check=False))
                    self.progress.value = int(idx[-1]) + 1
                dt = time.perf_counter() - t0
            self.video = np.concatenate(out) if out else np.zeros((0, *r.resolution_hw, 3), np.uint8)
            h = max(self.size, 128)
            self.video_html.value = (show_videos({"re-enacted": self.video}, fps=r.fps, height=h, return_html=True)
                                     + f"<div>{n} frames in {dt:.1f} s at {r.fps:g} fps</div>")
        finally:
            self.render_button.disabled = False
        return self.video

    def _on_render(self, _button=None) -> None:
        try:
            self.render()
        except Exception as e:  # shown in the widget
            self.error = e
            self.video_html.value = f"<span style='color:#b00'>render failed: {html.escape(str(e))}</span>"

    def close(self) -> None:
        """Close every control and picture of the tuner (in the notebook and in the kernel) and drop what it
        rendered (preview, difference, video), so that they can be freed; the Reenactor is left as it is. Closing
        ``tuner.widget`` alone closes only the outer box: the controls stay registered with ipywidgets, and their
        callbacks keep the tuner, its pictures and its Reenactor alive."""
        self._closed = True
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=60)  # a preview being drawn finishes first (its result is dropped below)
        _close_widgets(self.widget)
        self.preview = self.difference = self.video = None
        self._ref_cache = self._thread = None
        for w in (self.image, self.diff_image):
            w.value = b""
        self.video_html.value = ""

    def _repr_mimebundle_(self, **kwargs):
        if self._closed:
            return {"text/plain": "ReenactmentTuner (closed)"}
        return self.widget._repr_mimebundle_(**kwargs)


#: The chosen button of a toggle group in the theme's accent colour (JupyterLab's default only darkens it a little).
_CSS = (".v2s-tuner .widget-toggle-button.mod-active:not(.mod-success) {background: #1976d2; color: white;}"
        ".v2s-tuner .widget-toggle-button.mod-active:disabled {background: #90a4ae; color: white;}")


def _rows_text(rows) -> str:
    """'3-7' for a contiguous range, '3' for one row, else '3,5,7'."""
    rows = list(rows)
    if len(rows) > 1 and rows == list(range(rows[0], rows[-1] + 1)):
        return f"{rows[0]}-{rows[-1]}"
    return ",".join(map(str, rows))


def channel_rows(reenactor) -> dict[str, tuple[int, ...]]:
    """{region: the W+ rows holding at least one of its ``X_s`` channels} (row i drives ``style_names[i]``);
    () for a region without channels."""
    names = list(reenactor.G_render.synthesis.style_names)
    return {reg: tuple(sorted({names.index(l) for l, idx in by_l.items() if l in names and np.size(idx)}))
            for reg, by_l in (reenactor.region_channels or {}).items()}


def _xs_note(found: dict, rows, regions) -> str:
    """'' or a warning naming the enabled regions with no ``X_s`` channel in the mixed ``rows``: there α, β, γ
    and their toggles change nothing (eq 10-11 act on X_s only), while ζ still mixes the rows (eq 12)."""
    rows = set(rows)
    dead = [reg for reg in regions if not rows & set(found.get(reg, ()))]
    if not dead:
        return ""
    groups: dict[tuple, list[str]] = {}
    for reg in dead:
        groups.setdefault(tuple(found.get(reg, ())), []).append(reg)
    where = "; ".join(f"{', '.join(regs)} on {_rows_word(rr)}" if rr else f"{', '.join(regs)}: none found"
                      for rr, regs in groups.items())
    chosen = _rows_word(sorted(rows)) + (" holds" if len(rows) == 1 else " hold")
    if len(dead) == len(regions):
        # a region switched off may hold channels here: its toggle then still acts
        others = [reg for reg, rr in found.items() if reg not in regions and rows & set(rr)]
        acts = (f"change nothing here unless {' or '.join(others)} is switched on" if others else
                "and the region toggles change nothing here")
        return f"{chosen} none of the X_s channels ({where}): α, β, γ {acts}; ζ still mixes these rows (eq 12)"
    return (f"{chosen} no channel of {', '.join(dead)} ({where}): "
            + ("its toggle changes" if len(dead) == 1 else "their toggles change") + " nothing here")


def _rows_word(rows) -> str:
    """'row 3' or 'rows 3-7' / 'rows 3,5,7'."""
    return ("row " if len(rows) == 1 else "rows ") + _rows_text(rows)


def _anchor_options(reenactor) -> list:
    """The anchor dropdown's choices: 'first', 'best' where it can work (it compares the motion source's landmarks
    with the reference's: offered only where both exist), then every frame."""
    r = reenactor
    motions = ["driving"] + (["co-driving"] if r.ws_codrive is not None else [])
    best = "reference" in r.points and any(k in r.points for k in motions)
    return ([("first", "first")] + ([("best", "best")] if best else [])
            + [(f"frame {j}", j) for j in range(len(r))])


def _anchor_value(reenactor):
    """The dropdown value of the Reenactor's anchor ('first', 'best' or its frame index)."""
    r = reenactor
    return r.anchor if r.anchor in ("first", "best") else int(r.anchor_frame())


def _source_choices(reenactor) -> tuple[dict, dict]:
    """({component: the sources the Reenactor holds}, {component: why it is fixed, for those with one choice})."""
    r = reenactor
    avail = {"motion": ["driving"] + (["co-driving"] if r.ws_codrive is not None else []),
             "pose": [k for k in ("driving", "co-driving") if k in r.pose_codes] + ["none"],
             "position": [k for k in ("driving", "co-driving") if k in r.tracks] + ["none"]}
    why = {"motion": "no co-driving video was prepared (ws_codrive is None)",
           "pose": "no pose codes were prepared" + (" (random generator: no head pose to encode)"
                                                   if getattr(r.G, "is_random", False) else ""),
           "position": "no canonical track was prepared"}
    notes = {comp: f"{comp}: fixed to '{avail[comp][0]}': {why[comp]}" for comp in avail if len(avail[comp]) == 1}
    return avail, notes


def _style_toggle(t) -> None:
    """A region toggle shows its state: green with a tick when on, plain with a cross when off."""
    t.button_style = "success" if t.value else ""
    t.icon = "check" if t.value else "times"


def tune(reenactor, **kwargs) -> ReenactmentTuner:
    """Shortcut for :class:`ReenactmentTuner` (display the result in a notebook cell)."""
    return ReenactmentTuner(reenactor, **kwargs)
