"""The one implementation of StyleGAN3's input transform (translation + in-plane rotation).

StyleGAN3's Fourier-feature input samples its sinusoids on a grid whose central part spans one image width
(coordinates -0.5 .. 0.5, x right, y down). NVIDIA's ``gen_images.py`` builds a *forward* matrix

    m = [[cos a, sin a, tx], [-sin a, cos a, ty], [0, 0, 1]]

and writes its inverse into ``G.synthesis.input.transform``. With that convention, and as used everywhere in
v2s_nb:

* ``tx``, ``ty`` are in image widths; positive moves the content right / down;
* ``angle`` is in degrees; positive turns the content counter-clockwise as seen in the image
  (the convention of ``skimage.transform.rotate``).
"""

from __future__ import annotations

import numpy as np
import torch


def forward_matrix(tx, ty, angle_deg) -> np.ndarray:
    """NVIDIA's forward ``make_transform`` matrix(es), float64.

    Scalars give a [3, 3] array; arrays of the same shape [T] give [T, 3, 3].
    """
    tx, ty, a = np.broadcast_arrays(np.asarray(tx, np.float64), np.asarray(ty, np.float64),
                                    np.deg2rad(np.asarray(angle_deg, np.float64)))
    for name, v in (("tx", tx), ("ty", ty), ("angle_deg", a)):
        if not np.isfinite(v).all():
            raise ValueError(f"input transform {name} must be finite (NaN / inf give black images), got {v!r}")
    c, s = np.cos(a), np.sin(a)
    m = np.zeros(tx.shape + (3, 3), np.float64)
    m[..., 0, 0], m[..., 0, 1], m[..., 0, 2] = c, s, tx
    m[..., 1, 0], m[..., 1, 1], m[..., 1, 2] = -s, c, ty
    m[..., 2, 2] = 1.0
    return m


def input_transform(tx=0.0, ty=0.0, angle_deg=0.0) -> np.ndarray:
    """The value(s) for ``G.synthesis.input.transform``: the inverse of :func:`forward_matrix`, float64.

    Scalars give [3, 3]; arrays [T] give [T, 3, 3] (one matrix per video frame).
    """
    return np.linalg.inv(forward_matrix(tx, ty, angle_deg))


def set_input_transform(G, tx=0.0, ty=0.0, angle_deg=0.0) -> None:
    """Write the transform for (tx, ty, angle_deg) into ``G.synthesis.input.transform`` in place.

    Accepts a generator or its synthesis network. Units as in the module docstring.
    """
    synthesis = getattr(G, "synthesis", G)
    buf = synthesis.input.transform
    buf.copy_(torch.as_tensor(input_transform(float(tx), float(ty), float(angle_deg)), dtype=buf.dtype))
