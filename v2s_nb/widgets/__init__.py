"""Notebook views (ipywidgets / matplotlib / plotly) over the package's values; they display and edit, the
logic lives in :mod:`v2s_nb.method` and :mod:`v2s_nb.face`.

* :mod:`v2s_nb.widgets.feature_maps` - Fig. 5: S-space channel maps per face region, static and interactive.
"""
