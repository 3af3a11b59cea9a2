"""The paper's steps, one module per section (see ``docs/method.md`` for the method and the decisions taken).

* :mod:`v2s_nb.method.invert` — W+ inversion of aligned frames (batched, warm-started over a video, cached),
  and pivotal tuning (PTI) of the generator around the inverted codes (section 3.1).
* :mod:`v2s_nb.method.local_channels` — S-space channels local to the eyes / nose / mouth, found by IoU of
  feature maps with face-region masks (section 3.4, eq 5-6).
* :mod:`v2s_nb.method.pose_encoding` — global pose encoding: optimise W+ rows 0-7 of the reference toward a target
  (yaw, pitch, roll) with any differentiable ``P_r`` (default: PFLD landmarks + head pose on the rendered image; a
  w-linear regressor fitted per generator where PFLD is unavailable), per frame warm-started (section 3.3).
* :mod:`v2s_nb.method.baseline` — the W+ baseline of eq 7, in its 'cumulative' (default) and 'printed' readings
  (section 3.5).
* :mod:`v2s_nb.method.motion` — the motion modes (relative / absolute / paper: which eq 7 reading and which default
  coefficients), the anchor frame and the position track's form, used by the Reenactor, the CLI and the tuner.
* :mod:`v2s_nb.method.reenact` — S-space mixing of eq 8-12 and the :class:`~v2s_nb.method.reenact.Reenactor`
  (prepared inputs, fast per-frame rendering, save / load) (section 3.6).
"""
