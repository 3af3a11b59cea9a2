"""Notebook views (ipywidgets / matplotlib / plotly) over the package's values; they display and edit, the
logic lives in :mod:`v2s_nb.method` and :mod:`v2s_nb.face`.

* :mod:`v2s_nb.widgets.feature_maps` - Fig. 5: S-space channel maps per face region, static and interactive.
* :mod:`v2s_nb.widgets.track_viewer` - section 3.2: the canonical track (tx, ty, angle) raw and smoothed, with a
  kernel slider and a frame scrubber over the landmarks and the eyes-to-mouth vector.
* :mod:`v2s_nb.widgets.tuner` - section 3.6: α / β / γ / ζ, W+ rows, regions and sources of a Reenactor with a
  live frame preview and a "render video" button.
* :mod:`v2s_nb.widgets.player` - driving | co-driving | result | baseline side by side, one slider / play button.

The names below are imported on first use, so ``import v2s_nb.widgets`` stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "plot_channel_maps": "feature_maps", "FeatureMapBrowser": "feature_maps", "browse_feature_maps": "feature_maps",
    "TrackViewer": "track_viewer", "view_track": "track_viewer",
    "ReenactmentTuner": "tuner", "tune": "tuner",
    "SideBySidePlayer": "player", "play_side_by_side": "player",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
