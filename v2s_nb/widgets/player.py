"""Side-by-side player: driving | co-driving | result | baseline (or any named clips) in sync.

:class:`SideBySidePlayer` (:func:`play_side_by_side`) shows one image per clip under its title, driven by a single
frame slider and a play button (linked in the browser, so playback runs without the kernel pacing it). Entries
that are ``None`` are skipped; clips of different lengths hold their last frame; frames of different sizes are
shown at the same height; :class:`~v2s_nb.video.Video` clips of different frame rates are paired frame by frame,
with a ``LengthMismatchWarning`` and each one's fps in its title. :meth:`SideBySidePlayer.close` closes the
widgets and drops the clips. All clips of a frame are drawn into **one** picture, sent as one message, so they change
together (four separate images arrived, and were painted, one after another); each frame's picture is encoded
once and kept, so replaying costs nothing. ``player.current`` is the list of frames shown (uint8 arrays).

Stable CSS classes: ``v2s-player``, ``v2s-player-frame``, ``v2s-player-play``, ``v2s-player-image``,
``v2s-player-titles``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np

from .track_viewer import _close_widgets, _png

__all__ = ["SideBySidePlayer", "play_side_by_side"]


class SideBySidePlayer:
    """Several clips in sync.

    Args:
        videos: {title: clip or None}; a clip is uint8 [T, H, W, 3], a :class:`~v2s_nb.video.Video` or anything
            :func:`v2s_nb.video.as_rgb_uint8` accepts. ``None`` entries are skipped.
        fps: playback rate in frames per second, > 0 (default: the first Video's fps, else 10).
        size: displayed height in pixels (each clip's width follows its aspect ratio, at least 1 pixel).
    """

    def __init__(self, videos: Mapping[str, object], *, fps: float | None = None, size: int = 192):
        import ipywidgets as W

        from ..video import Video, _check_fps, as_rgb_uint8

        if not isinstance(videos, Mapping):
            raise TypeError("videos must be a dict {title: clip or None}")
        items = [(str(k), v) for k, v in videos.items() if v is not None]
        if not items:
            raise ValueError("SideBySidePlayer got no clips (every entry is None)")
        rates = {k: float(v.fps) for k, v in items if isinstance(v, Video)}
        mixed_rates = len(set(rates.values())) > 1
        if mixed_rates:  # a 10 fps result ran 3 times as fast as a 30 fps driving clip, silently
            from ..method.reenact import LengthMismatchWarning

            warnings.warn("the clips have different frame rates (" + ", ".join(f"{k!r} {f:g} fps" for k, f in
                          rates.items()) + "): the player pairs them frame by frame (no resampling), as the "
                          "re-enactment pairs driving and co-driving, so they are not in time with each other",
                          LengthMismatchWarning, stacklevel=2)
        if fps is None:
            fps = next(iter(rates.values()), 10.0)
        self.titles = [k for k, _ in items]
        self.clips = [as_rgb_uint8(v, allow_single_image=True, name=k) for k, v in items]
        from ..validate import integer

        self.fps, self.size = _check_fps(fps), integer(size, "size (displayed height in pixels)", 1, 4096)
        n = max(len(c) for c in self.clips)
        self.num_frames = n
        self.frame = W.IntSlider(value=0, min=0, max=max(n - 1, 0), description="frame", continuous_update=True)
        self.frame.add_class("v2s-player-frame")
        self.play = W.Play(value=0, min=0, max=max(n - 1, 0), interval=max(20, int(round(1000 / self.fps))),
                           description="play")
        self.play.add_class("v2s-player-play")
        self._link = W.jslink((self.play, "value"), (self.frame, "value"))
        widths = [max(1, int(round(self.size * c.shape[2] / c.shape[1]))) for c in self.clips]  # PIL needs >= 1
        self._widths, self._gap = widths, 6
        total = sum(widths) + self._gap * (len(widths) - 1)
        self.image = W.Image(format="png", height=self.size, width=total)
        self.image.add_class("v2s-player-image")
        titles = W.HBox([W.HTML(f"<b>{t}</b> <small>({len(c)} frames"
                                + (f", {rates[t]:g} fps" if t in rates and mixed_rates else "")
                                + ")</small>", layout=W.Layout(width=f"{w + self._gap}px", overflow="hidden"))
                         for t, c, w in zip(self.titles, self.clips, widths)])
        titles.add_class("v2s-player-titles")
        self.current: list[np.ndarray] = []
        self._png_cache: dict[int, bytes] = {}
        self._closed = False
        self.frame.observe(lambda ch: self.show(ch["new"]), names="value")
        self.widget = W.VBox([W.HBox([self.play, self.frame]), titles, self.image])
        self.widget.add_class("v2s-player")
        self.show(0)

    def composite(self, j: int) -> np.ndarray:
        """uint8 [size, W, 3]: frame ``j`` of every clip scaled to the same height, side by side (white gaps)."""
        from PIL import Image

        parts = []
        for k, (c, w) in enumerate(zip(self.clips, self._widths)):
            f = c[min(int(j), len(c) - 1)]
            parts.append(np.asarray(Image.fromarray(np.ascontiguousarray(f)).resize((w, self.size), Image.BILINEAR)))
            if k < len(self.clips) - 1:
                parts.append(np.full((self.size, self._gap, 3), 255, np.uint8))
        return np.concatenate(parts, axis=1)

    def show(self, j: int) -> None:
        """Show frame ``j`` of every clip (a shorter clip shows its last frame)."""
        j = int(j)
        self.current = [c[min(j, len(c) - 1)] for c in self.clips]
        if j not in self._png_cache:
            pic = self.composite(j)
            self._png_cache[j] = _png(pic, max(pic.shape[:2]))
        self.image.value = self._png_cache[j]

    def close(self) -> None:
        """Close the player's widgets and drop its clips and cached pictures (closing ``player.widget`` alone
        leaves the slider registered, and through it the player and every clip)."""
        _close_widgets(self.widget, self._link)
        self.clips, self.current = [], []
        self._png_cache.clear()
        self._closed = True

    def _repr_mimebundle_(self, **kwargs):
        if self._closed:
            return {"text/plain": "SideBySidePlayer (closed)"}
        return self.widget._repr_mimebundle_(**kwargs)


def play_side_by_side(videos: Mapping[str, object], **kwargs) -> SideBySidePlayer:
    """Build a :class:`SideBySidePlayer` (display it by leaving it as a cell's last expression)."""
    return SideBySidePlayer(videos, **kwargs)
