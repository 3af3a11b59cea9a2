"""Coefficient tuner for the re-enactment (PAPER.md section 3.6, eq 10-12) over a prepared
:class:`~v2s_nb.method.reenact.Reenactor`.

:class:`ReenactmentTuner` (:func:`tune`) shows

* the motion mode (relative / absolute / paper, :mod:`v2s_nb.method.motion`; choosing one sets α, β, γ, ζ to its
  defaults, which stay tunable), the expression strength k, the anchor frame (first, best when the Reenactor
  holds landmarks, or an index) and the position track's form (relative in face units / absolute);
* sliders for α, β, γ (eq 10-11, on the ``X_s`` channels) and ζ (eq 12, on the other channels of the mixed rows);
* the W+ rows whose S codes are mixed (an ``IntRangeSlider``, paper: 3-7);
* a toggle per face region (eyes / nose / mouth) that puts its channels in ``X_s`` or leaves them out;
* the source of each component: local motion (driving / co-driving), pose (the pose-encoded reference of section
  3.3: driving / co-driving / none) and position (the canonical track of section 3.2: driving / co-driving /
  none). Switching a source only recomputes the per-frame S codes (affine layers, no synthesis, no inversion,
  no channel discovery), so it is offered wherever the Reenactor holds that source; choices it does not hold are
  absent and a component with a single choice is shown read-only, with the reason;
* a frame slider and a live preview of that frame (``ipywidgets.Image``, PNG);
* a "render video" button with a progress bar; the video is shown inline (``v2s_nb.video.show_videos`` HTML).

The tuner edits the Reenactor it is given (``tuner.reenactor.alpha`` etc. follow the controls), so a later
``reenactor.render_video()`` or ``reenactor.save(...)`` uses the tuned settings. A control change re-renders only
the preview frame (:meth:`Reenactor.render_frame`, one synthesis from cached S codes). Sliders send their value
on release (``continuous_update=False``), and the preview is rendered in a background thread with a
"latest value wins" rule: requests arriving while a frame is being drawn are merged into one render with the
newest settings, so dragging or key presses never queue up work. ``background=False`` renders synchronously.

For tests and scripts: ``tuner.preview`` is the current preview (uint8 [R, R, 3]), ``tuner.video`` the last
rendered video (uint8 [T, R, R, 3] or None), :meth:`ReenactmentTuner.wait` waits for a pending preview,
``tuner.params`` is the current settings. Stable CSS classes: ``v2s-tuner``, ``v2s-tuner-motion-mode``,
``v2s-tuner-strength``, ``v2s-tuner-anchor``, ``v2s-tuner-position-mode``, ``v2s-tuner-alpha``,
``v2s-tuner-beta``, ``v2s-tuner-gamma``, ``v2s-tuner-zeta``, ``v2s-tuner-layers``, ``v2s-tuner-region-<name>``,
``v2s-tuner-source-<component>``, ``v2s-tuner-frame``, ``v2s-tuner-preview``, ``v2s-tuner-status``,
``v2s-tuner-render``, ``v2s-tuner-progress``, ``v2s-tuner-video``.
"""

from __future__ import annotations

import html
import threading
import time
import warnings

import numpy as np

from ..method.motion import MOTION_MODES, POSITION_MODES, motion_mode
from ..method.reenact import REGIONS, CoefficientWarning
from .track_viewer import _png

__all__ = ["ReenactmentTuner", "tune"]

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
            :func:`v2s_nb.cli.prepare_reenactment`); it is edited in place.
        frame: initial preview frame.   size: displayed preview size in pixels.
        batch: frames per synthesis call when rendering the video.
        background: render previews in a worker thread (latest value wins); ``False`` = synchronously.
    """

    def __init__(self, reenactor, *, frame: int = 0, size: int = 256, batch: int = 8, background: bool = True):
        import ipywidgets as W

        self.reenactor = r = reenactor
        self.size, self.batch, self.background = int(size), max(1, int(batch)), bool(background)
        n = len(r)
        num_ws = r.G_render.synthesis.num_ws
        self.preview: np.ndarray | None = None
        self.video: np.ndarray | None = None
        self.render_time = float("nan")
        self.error: BaseException | None = None
        self._lock = threading.Lock()      # guards the request counters
        self._render_lock = threading.Lock()  # one synthesis at a time (preview worker vs video button)
        self._wanted = self._done = 0
        self._running = False
        self._thread: threading.Thread | None = None

        lay = W.Layout(width="420px")
        style = {"description_width": "100px"}
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
        self._holding = False  # True while a mode change sets the sliders (one preview for all of them)
        self.motion_mode = W.Dropdown(options=list(MOTION_MODES), value=r.motion_mode, description="motion mode",
                                      layout=W.Layout(width="260px"), style=style)
        self.motion_mode.add_class("v2s-tuner-motion-mode")
        self.strength = W.FloatSlider(value=float(r.strength), min=min(0.0, r.strength), max=max(2.0, r.strength),
                                      step=0.05, description="strength k", continuous_update=False,
                                      readout_format=".2f", layout=lay, style=style)
        self.strength.add_class("v2s-tuner-strength")
        anchors = [("first", "first")] + ([("best", "best")] if "reference" in r.points else [])
        anchors += [(f"frame {j}", j) for j in range(n)]
        self.anchor = W.Dropdown(options=anchors, value=r.anchor if r.anchor in ("first", "best") else
                                 int(r.anchor_frame()), description="anchor", layout=W.Layout(width="260px"),
                                 style=style)
        self.anchor.add_class("v2s-tuner-anchor")
        self.position_mode = W.Dropdown(options=list(POSITION_MODES), value=r.position_mode,
                                        description="position", layout=W.Layout(width="260px"), style=style)
        self.position_mode.add_class("v2s-tuner-position-mode")
        rows = r.layers
        self.layers = W.IntRangeSlider(value=(min(rows), max(rows)), min=0, max=num_ws - 1, step=1,
                                       description="W+ rows", continuous_update=False, layout=lay, style=style)
        self.layers.add_class("v2s-tuner-layers")
        self.region_toggles = {}
        for reg in REGIONS:
            t = W.ToggleButton(value=reg in r.regions, description=reg, tooltip=f"{reg} channels in X_s",
                               layout=W.Layout(width="80px"))
            t.add_class(f"v2s-tuner-region-{reg}")
            self.region_toggles[reg] = t
        self.source_widgets, self.source_notes = {}, {}
        src = r.sources()
        avail = {"motion": ["driving"] + (["co-driving"] if r.ws_codrive is not None else []),
                 "pose": [k for k in ("driving", "co-driving") if k in r.pose_codes] + ["none"],
                 "position": [k for k in ("driving", "co-driving") if k in r.tracks] + ["none"]}
        why = {"motion": "no co-driving video was prepared (ws_codrive is None)",
               "pose": "no pose codes were prepared" + (" (random generator: no head pose to encode)"
                                                       if getattr(r.G, "is_random", False) else ""),
               "position": "no canonical track was prepared"}
        for comp in ("motion", "pose", "position"):
            d = W.Dropdown(options=avail[comp], value=src[comp], description=f"{comp} from",
                           layout=W.Layout(width="260px"), style=style)
            d.add_class(f"v2s-tuner-source-{comp}")
            if len(avail[comp]) == 1:
                d.disabled = True
                self.source_notes[comp] = f"{comp}: fixed to '{src[comp]}': {why[comp]}"
            self.source_widgets[comp] = d
        self.frame = W.IntSlider(value=int(frame) % max(n, 1), min=0, max=max(n - 1, 0), description="frame",
                                 continuous_update=False, layout=lay, style=style)
        self.frame.add_class("v2s-tuner-frame")
        self.image = W.Image(format="png", width=self.size, height=self.size)
        self.image.add_class("v2s-tuner-preview")
        self.status = W.HTML()
        self.status.add_class("v2s-tuner-status")
        self.render_button = W.Button(description="render video", icon="film", button_style="primary")
        self.render_button.add_class("v2s-tuner-render")
        self.progress = W.IntProgress(value=0, min=0, max=max(n, 1), description="video", layout=W.Layout(width="300px"))
        self.progress.add_class("v2s-tuner-progress")
        self.video_html = W.HTML()
        self.video_html.add_class("v2s-tuner-video")

        for w in [*self.sliders.values(), self.layers, *self.region_toggles.values(), *self.source_widgets.values(),
                  self.frame, self.strength, self.anchor, self.position_mode]:
            w.observe(self._on_change, names="value")
        self.motion_mode.observe(self._on_mode, names="value")
        self.render_button.on_click(self._on_render)

        notes = W.HTML("<br>".join(html.escape(s) for s in self.source_notes.values()))
        controls = W.VBox([W.HTML("<b>motion</b>"), self.motion_mode, self.strength, self.anchor, self.position_mode,
                           W.HTML("<b>eq 10-12 coefficients</b>"), *self.sliders.values(), self.layers,
                           W.HBox([W.Label("X_s regions"), *self.region_toggles.values()]),
                           W.HTML("<b>sources</b>"), *self.source_widgets.values(), notes,
                           W.HBox([self.render_button, self.progress])])
        right = W.VBox([self.frame, self.image, self.status])
        self.widget = W.VBox([W.HBox([controls, right]), self.video_html])
        self.widget.add_class("v2s-tuner")
        self._request()
        if self.background:
            self.wait()

    # ------------------------------------------------------------------ state

    @property
    def params(self) -> dict:
        """The settings the controls show: coefficients, layers, regions, sources, frame."""
        lo, hi = self.layers.value
        return {**{k: float(s.value) for k, s in self.sliders.items()}, "layers": tuple(range(lo, hi + 1)),
                "regions": tuple(k for k, t in self.region_toggles.items() if t.value),
                **{k: d.value for k, d in self.source_widgets.items()}, "frame": int(self.frame.value),
                "motion_mode": self.motion_mode.value, "strength": float(self.strength.value),
                "anchor": self.anchor.value, "position_mode": self.position_mode.value}

    def _apply(self, p: dict) -> None:
        r = self.reenactor
        for k in ("alpha", "beta", "gamma", "zeta"):
            setattr(r, k, p[k])
        r.layers, r.regions = p["layers"], p["regions"]
        r.motion, r.pose, r.position = p["motion"], p["pose"], p["position"]
        r.motion_mode, r.strength, r.anchor, r.position_mode = (p["motion_mode"], p["strength"], p["anchor"],
                                                                p["position_mode"])

    # ------------------------------------------------------------------ preview

    def _on_change(self, change=None) -> None:
        if not self._holding:
            self._request()

    def _on_mode(self, change=None) -> None:
        """A motion mode sets the coefficients to its defaults (they stay tunable); one preview follows."""
        self._holding = True
        try:
            for k, v in motion_mode(self.motion_mode.value).coefficients.items():
                self.sliders[k].value = v
        finally:
            self._holding = False
        self._request()

    def _request(self) -> None:
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
        self.preview = img
        self.error = None
        self.image.value = _png(img, self.size)
        msg = (f"frame {p['frame']} · {p['motion_mode']} (anchor frame {self.reenactor.anchor_frame()}, "
               f"k {p['strength']:.2f}) · α {p['alpha']:.2f} β {p['beta']:.2f} γ {p['gamma']:.2f} ζ {p['zeta']:.2f} · "
               f"rows {p['layers'][0]}-{p['layers'][-1]} · regions {', '.join(p['regions']) or 'none'} · "
               f"{self.render_time * 1000:.0f} ms")
        for w in caught:
            msg += f"<br><span style='color:#a60'>{html.escape(str(w.message))}</span>"
        self.status.value = msg

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
        """Re-render the preview (e.g. after changing the Reenactor from code)."""
        self._request()

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
                    out.append(to_uint8(r.render_frames(idx)))
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

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def tune(reenactor, **kwargs) -> ReenactmentTuner:
    """Shortcut for :class:`ReenactmentTuner` (display the result in a notebook cell)."""
    return ReenactmentTuner(reenactor, **kwargs)
