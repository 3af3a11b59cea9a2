"""Canonical track viewer (the paper's section 3.2): tx, ty and angle over time, raw and smoothed, with the frames.

:class:`TrackViewer` (:func:`view_track`) shows

* two plots against the frame index: translation (tx, ty in % of the image width) and angle (degrees), raw
  (thin, faint) and smoothed (thick), frames without a face (interpolated values) marked, and the current frame
  marked on every curve;
* a ``kernel`` slider (odd values >= 3) and a ``method`` dropdown ('mean' as in the paper, 'gaussian' or 'robust') that
  re-smooth the raw track with :meth:`v2s_nb.face.CanonicalTrack.smooth`;
* a ``frame`` scrubber (with a play button) showing that frame with its 68 landmarks
  (:meth:`v2s_nb.face.LandmarkTrack.draw`), the eye midpoint e and the eyes-to-mouth vector v
  (:func:`v2s_nb.face.eye_mouth_geometry`), and the frame's raw / smoothed values.

A view only: the numbers come from :mod:`v2s_nb.face`. ``viewer.smoothed`` is the current smoothed
:class:`~v2s_nb.face.CanonicalTrack` (hand it to ``G.synthesis(ws, transform=viewer.smoothed.input_transforms())``);
``viewer.raw`` the unsmoothed one. Functions registered with :meth:`TrackViewer.on_smooth` are called with the
new smoothed track whenever the controls change it; :meth:`TrackViewer.close` closes every widget and drops the frames.

Plots use a plotly ``FigureWidget`` (needs ``anywidget``; ``backend='plotly'``) or matplotlib drawn into an
``ipywidgets.Output`` (``backend='matplotlib'``); ``'auto'`` takes plotly when it can. Stable CSS classes for
browser tests: ``v2s-track-viewer``, ``v2s-track-kernel``, ``v2s-track-method``, ``v2s-track-frame``,
``v2s-track-play``, ``v2s-track-plot``, ``v2s-track-image``, ``v2s-track-info``.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np

from ..face import CanonicalTrack, LandmarkTrack, canonical_track, eye_mouth_geometry

__all__ = ["TrackViewer", "view_track"]

#: Colours of tx, ty and angle (raw and smoothed curves share the colour).
COLORS = {"tx": "#1f77b4", "ty": "#ff7f0e", "angle": "#2ca02c"}


def _png(rgb: np.ndarray, size: int) -> bytes:
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(rgb))
    scale = size / max(im.size)
    if scale != 1:
        im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))),
                       Image.NEAREST if scale >= 2 else Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _close_widgets(*roots) -> None:
    """Close ``roots``, every widget inside them (box children) and their layout / style widgets. Closing a box
    leaves its children registered with ipywidgets, where their callbacks keep the view object that made them,
    and the arrays it holds, alive for the rest of the session."""
    import ipywidgets as W

    seen, stack = set(), list(roots)
    while stack:
        w = stack.pop()
        if not isinstance(w, W.Widget) or id(w) in seen:
            continue
        seen.add(id(w))
        stack.extend(getattr(w, "children", None) or ())
        stack.extend(w.trait_values().get(k) for k in ("layout", "style"))  # traits: plotly's .layout is no widget
        w.close()


def _plotly_ok() -> bool:
    try:
        import anywidget  # noqa: F401
        import plotly.graph_objects  # noqa: F401
    except ImportError:
        return False
    return True


def _read_frames_hint(path) -> str:
    return (f"vid = v2s_nb.video.read_video({str(path)!r}); view_track(v2s_nb.face.landmarks(vid), vid)"
            if path is not None else "view_track(v2s_nb.face.landmarks(video), video)")


def _refuse_face_clip(landmarks) -> None:
    """A ``prepare.FaceClip`` (or ``Faces``) is refused with what to pass instead: its points are in the pixels of
    the FFHQ-aligned crops, where the alignment has removed the head motion (their track is about 0), and its
    ``track`` is already smoothed and lacks the original frames' size, so neither gives the raw track to view."""
    clip = getattr(landmarks, "driving", None) if hasattr(landmarks, "reference") else landmarks
    if not all(hasattr(clip, a) for a in ("aligned", "points", "track", "path")):
        return
    what = "a Faces" if clip is not landmarks else "a FaceClip"
    raise TypeError(f"view_track got {what}, whose landmarks are on the FFHQ-aligned crops (the alignment removed "
                    "the head motion the track measures) and whose track is already smoothed: pass the landmarks "
                    f"and frames of the original video instead: {_read_frames_hint(getattr(clip, 'path', None))}")


def _track_type_message(track) -> str:
    shape = getattr(track, "shape", None)
    hint = ""
    if shape is not None and len(shape) == 2 and shape[-1] in (3, 4):  # e.g. FaceClip.track: tx, ty, angle[, size]
        hint = (f"; an array {list(shape)} (such as FaceClip.track) is an already smoothed track without the size "
                "of its frames: leave track out, it is measured from the landmarks")
    return (f"track must be the raw v2s_nb.face.CanonicalTrack of the landmarks (canonical_track(landmarks)), got "
            f"{type(track).__name__}{hint}")


class TrackViewer:
    """Interactive view of a canonical track and the frames it was measured on.

    Args:
        landmarks: the clip's :class:`~v2s_nb.face.LandmarkTrack` (or points [T, 68, 2] in pixels with
            ``image_size``, (width, height) or an int; given with a LandmarkTrack it must be the track's),
            measured on the original frames: a ``prepare.FaceClip`` is refused (``TypeError`` saying what to
            pass), as its points are on the aligned crops, where the head motion is gone.
        frames: the clip, uint8 [T, H, W, 3] or a :class:`~v2s_nb.video.Video`, the T frames of W x H pixels the
            landmarks were measured on (else ``ValueError``; optional: without it the landmarks are drawn on a
            grey canvas).
        track: the raw :class:`~v2s_nb.face.CanonicalTrack` of these landmarks (same T and image size); default
            ``canonical_track(landmarks)``; anything else (e.g. an array [T, 4]) raises ``TypeError``.
        kernel, method: initial smoothing (see :meth:`~v2s_nb.face.CanonicalTrack.smooth`).
        max_kernel: largest kernel on the slider (default: the largest odd number <= min(T, 31), at least 3; an
            even value is rounded down to odd, as kernels are odd).
        backend: 'auto', 'plotly' or 'matplotlib'.     size: displayed frame size in pixels.
    """

    def __init__(self, landmarks, frames=None, track: CanonicalTrack | None = None, *, kernel: int = 3,
                 method: str = "mean", max_kernel: int | None = None, backend: str = "auto", size: int = 320,
                 image_size=None):
        import ipywidgets as W

        from ..face.landmark_detection import _check_frames_size, _track_size

        _refuse_face_clip(landmarks)
        if track is not None and not isinstance(track, CanonicalTrack):
            raise TypeError(_track_type_message(track))
        if not isinstance(landmarks, LandmarkTrack):
            if image_size is None:
                raise ValueError("image_size=(width, height) is needed when landmarks is an array.")
            landmarks = LandmarkTrack.from_points(landmarks, image_size)
        w, h = _track_size(landmarks, image_size, "view_track: image_size")
        self.landmarks = landmarks
        self.raw = canonical_track(landmarks) if track is None else track
        if len(self.raw) != len(landmarks):
            raise ValueError(f"the track has {len(self.raw)} frames but the landmarks {len(landmarks)}.")
        if tuple(self.raw.image_size) != (w, h):  # its tx, ty are in widths of other frames
            tw, th = self.raw.image_size
            raise ValueError(f"view_track: the CanonicalTrack was measured on {tw}x{th} frames but the landmarks on "
                             f"{w}x{h}; pass track=canonical_track(landmarks) (or leave track out).")
        if frames is not None:
            from ..video import as_rgb_uint8

            frames = as_rgb_uint8(frames, allow_single_image=True)
            if len(frames) != len(landmarks):
                raise ValueError(f"got {len(frames)} frames for a track of {len(landmarks)} frames.")
            _check_frames_size(landmarks, frames, "view_track: frames")
        self.frames = frames
        if backend == "auto":
            backend = "plotly" if _plotly_ok() else "matplotlib"
        if backend not in ("plotly", "matplotlib"):
            raise ValueError(f"backend must be 'auto', 'plotly' or 'matplotlib', got {backend!r}.")
        self.backend, self.size = backend, int(size)
        n = len(self.raw)
        if max_kernel is None:
            max_kernel = max(3, min(n, 31) - (1 - min(n, 31) % 2))
        max_kernel = int(max_kernel) - (1 - int(max_kernel) % 2)  # an even maximum is a value smooth() refuses
        self.smoothed = self.raw.smooth(int(kernel), method=method)  # validates kernel / method
        self._callbacks: list[Callable[[CanonicalTrack], None]] = []

        self.kernel = W.IntSlider(value=int(kernel), min=3, max=max(int(max_kernel), int(kernel)), step=2,
                                  description="kernel", continuous_update=False)
        self.method = W.Dropdown(options=["mean", "gaussian", "robust"], value=method, description="method")
        self.frame = W.IntSlider(value=0, min=0, max=max(n - 1, 0), description="frame", continuous_update=True)
        self.play = W.Play(value=0, min=0, max=max(n - 1, 0), interval=100, description="play")
        self._link = W.jslink((self.play, "value"), (self.frame, "value"))
        self.image = W.Image(format="png", width=self.size, height=self.size)
        self._png_cache: dict[int, bytes] = {}
        self._closed = False
        self.info = W.HTML()
        if backend == "plotly":
            self.figure = self._make_plotly()
            plot = self.figure
        else:
            self.figure = None
            self.output = W.Output()
            plot = self.output
        for w, cls in ((self.kernel, "kernel"), (self.method, "method"), (self.frame, "frame"), (self.play, "play"),
                       (plot, "plot"), (self.image, "image"), (self.info, "info")):
            w.add_class(f"v2s-track-{cls}")
        self.widget = W.VBox([W.HBox([self.kernel, self.method]), plot,
                              W.HBox([self.play, self.frame]), W.HBox([self.image, self.info])])
        self.widget.add_class("v2s-track-viewer")

        self.kernel.observe(self._on_smooth, names="value")
        self.method.observe(self._on_smooth, names="value")
        self.frame.observe(self._on_frame, names="value")
        self._draw_curves()
        self._on_frame()

    # ------------------------------------------------------------------ public
    def on_smooth(self, callback: Callable[[CanonicalTrack], None]) -> None:
        """Call ``callback(smoothed_track)`` whenever the kernel or method changes."""
        self._callbacks.append(callback)

    def curves(self) -> dict[str, np.ndarray]:
        """What the plots show now: {'tx', 'ty' (% of width), 'angle' (degrees)} for 'raw_*' and 'smooth_*'."""
        out = {}
        for name, tr in (("raw", self.raw), ("smooth", self.smoothed)):
            out[f"{name}_tx"], out[f"{name}_ty"], out[f"{name}_angle"] = 100 * tr.tx, 100 * tr.ty, tr.angle
        return out

    def close(self) -> None:
        """Close every control and picture of the viewer and drop its frames and cached pictures (closing
        ``viewer.widget`` alone leaves the controls registered, and through them the viewer and its frames)."""
        _close_widgets(self.widget, self._link)
        self._png_cache.clear()
        self._callbacks.clear()
        self.frames = None
        self._closed = True

    def _repr_mimebundle_(self, **kwargs):
        if self._closed:
            return {"text/plain": "TrackViewer (closed)"}
        return self.widget._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------------ events
    def _on_smooth(self, change=None):
        k = int(self.kernel.value)
        if k % 2 == 0:  # typed into the slider's readout, which keeps min / max but not the step of 2
            old = change["old"] if change and change.get("owner") is self.kernel else k - 1
            self.kernel.value = k + 1 if k > old else k - 1  # min and max are odd: both stay in range
            return  # that change smooths
        self.smoothed = self.raw.smooth(int(self.kernel.value), method=self.method.value)
        self._draw_curves()
        self._on_frame()
        for cb in self._callbacks:
            cb(self.smoothed)

    def _on_frame(self, *_):
        i = int(self.frame.value)
        if i not in self._png_cache:  # drawn and encoded once per frame: playback then only sends bytes
            self._png_cache[i] = _png(self.render_frame(i), self.size)
        self.image.value = self._png_cache[i]
        r, s = self.raw, self.smoothed
        note = " <i>(no face: interpolated)</i>" if r.interpolated[i] else ""
        self.info.value = (
            f"<b>frame {i}</b>{note}<br><table><tr><th></th><th>raw</th><th>smoothed</th></tr>"
            f"<tr><td>tx (% width)</td><td>{100 * r.tx[i]:+.2f}</td>"
            f"<td class='v2s-track-tx'>{100 * s.tx[i]:+.2f}</td></tr>"
            f"<tr><td>ty (% width)</td><td>{100 * r.ty[i]:+.2f}</td>"
            f"<td class='v2s-track-ty'>{100 * s.ty[i]:+.2f}</td></tr>"
            f"<tr><td>angle (deg)</td><td>{r.angle[i]:+.2f}</td><td class='v2s-track-angle'>{s.angle[i]:+.2f}</td></tr>"
            f"</table>kernel {self.kernel.value}, {self.method.value}")
        if self.figure is not None:
            with self.figure.batch_update():
                self._marker_trace_update(i)
        else:
            self._draw_matplotlib()

    # ------------------------------------------------------------------ drawing
    def render_frame(self, i: int) -> np.ndarray:
        """uint8 [H, W, 3]: frame ``i`` with its landmarks, e (white dot) and v (red arrow from e)."""
        import cv2

        w, h = self.landmarks.image_size
        img = self.frames[i:i + 1] if self.frames is not None else np.full((1, h, w, 3), 60, np.uint8)
        out = self.landmarks[i].draw(img, box=False)[0]
        if self.landmarks.found[i]:
            e, v = eye_mouth_geometry(self.landmarks.points[i])
            th = max(1, round(min(w, h) / 160))
            p0 = (int(round(e[0])), int(round(e[1])))
            p1 = (int(round(e[0] + v[0])), int(round(e[1] + v[1])))
            cv2.arrowedLine(out, p0, p1, (255, 40, 40), th, cv2.LINE_AA, tipLength=0.2)
            cv2.circle(out, p0, 2 * th, (255, 255, 255), -1, cv2.LINE_AA)
        return out

    def _make_plotly(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = go.FigureWidget(make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                                            subplot_titles=("translation (% of width; + = right / down)",
                                                            "angle (degrees; + = counter-clockwise)")))
        t = np.arange(len(self.raw))
        for key, row in (("tx", 1), ("ty", 1), ("angle", 2)):
            fig.add_scatter(x=t, y=np.zeros(len(t)), mode="lines+markers", name=f"{key} raw", row=row, col=1,
                            line=dict(color=COLORS[key], width=1, dash="dot"), marker=dict(size=3), opacity=0.6)
            fig.add_scatter(x=t, y=np.zeros(len(t)), mode="lines", name=f"{key} smoothed", row=row, col=1,
                            line=dict(color=COLORS[key], width=3))
        fig.add_scatter(x=[0, 0], y=[0, 0], mode="markers", name="frame", row=1, col=1, showlegend=False,
                        marker=dict(color="black", size=9, symbol="circle-open", line=dict(width=2)))
        fig.add_scatter(x=[0], y=[0], mode="markers", name="frame ", row=2, col=1, showlegend=False,
                        marker=dict(color="black", size=9, symbol="circle-open", line=dict(width=2)))
        missing = np.flatnonzero(self.raw.interpolated)
        for i in missing:
            for row in (1, 2):
                fig.add_vrect(x0=i - 0.5, x1=i + 0.5, fillcolor="grey", opacity=0.2, line_width=0, row=row, col=1)
        fig.update_layout(height=420, margin=dict(l=50, r=10, t=40, b=30), legend=dict(orientation="h", y=-0.12))
        fig.update_xaxes(title_text="frame", row=2, col=1)
        return fig

    def _trace(self, name: str):
        return next(tr for tr in self.figure.data if tr.name == name)

    def _marker_trace_update(self, i: int):
        s = self.smoothed
        self._trace("frame").update(x=[i, i], y=[100 * s.tx[i], 100 * s.ty[i]])
        self._trace("frame ").update(x=[i], y=[s.angle[i]])

    def _draw_curves(self):
        if self.figure is None:
            return  # matplotlib redraws everything in _on_frame
        c = self.curves()
        with self.figure.batch_update():
            for key in ("tx", "ty", "angle"):
                self._trace(f"{key} raw").y = c[f"raw_{key}"]
                self._trace(f"{key} smoothed").y = c[f"smooth_{key}"]

    def _draw_matplotlib(self):
        import matplotlib.pyplot as plt
        from IPython.display import display

        c, i = self.curves(), int(self.frame.value)
        t = np.arange(len(self.raw))
        fig, (a0, a1) = plt.subplots(2, 1, figsize=(7, 4), sharex=True)
        for ax, keys in ((a0, ("tx", "ty")), (a1, ("angle",))):
            for key in keys:
                ax.plot(t, c[f"raw_{key}"], ":", marker=".", ms=3, color=COLORS[key], alpha=0.6, label=f"{key} raw")
                ax.plot(t, c[f"smooth_{key}"], "-", lw=2.5, color=COLORS[key], label=f"{key} smoothed")
                ax.plot([i], [c[f"smooth_{key}"][i]], "o", mfc="none", mec="k")
            for j in np.flatnonzero(self.raw.interpolated):
                ax.axvspan(j - 0.5, j + 0.5, color="0.85", lw=0)
            ax.grid(alpha=0.3)
            ax.legend(loc="best", fontsize="small")
        a0.set_ylabel("% of width")
        a1.set_ylabel("degrees")
        a1.set_xlabel("frame")
        fig.tight_layout()
        self.output.clear_output(wait=True)
        with self.output:
            display(fig)
        plt.close(fig)


def view_track(landmarks, frames=None, track: CanonicalTrack | None = None, **kwargs) -> TrackViewer:
    """Build a :class:`TrackViewer` (display it by leaving it as a cell's last expression)."""
    return TrackViewer(landmarks, frames, track, **kwargs)
