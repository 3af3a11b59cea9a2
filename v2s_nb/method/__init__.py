"""The paper's steps, one module per section (see ``shared/PAPER.md``).

* :mod:`v2s_nb.method.invert` — W+ inversion of aligned frames (batched, warm-started over a video, cached),
  and pivotal tuning (PTI) of the generator around the inverted codes (section 3.1).
* :mod:`v2s_nb.method.local_channels` — S-space channels local to the eyes / nose / mouth, found by IoU of
  feature maps with face-region masks (section 3.4, eq 5-6).
"""
