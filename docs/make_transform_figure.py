"""Draws docs/input_transform.png: what (tx, ty, angle) do to a StyleGAN3 image.

Uses the tiny random T generator at 128 px (its content is texture, not a face): the same w rendered with
the identity, tx = +0.25, ty = +0.25 and angle = +30 deg. A marker follows one texture point.
    python docs/make_transform_figure.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from v2s_nb.images import to_uint8  # noqa: E402
from v2s_nb.stylegan3 import forward_matrix, input_transform, tiny_generator  # noqa: E402

G = tiny_generator("T", resolution=128, seed=4)
ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(3)), None)
cases = [("identity", 0, 0, 0), ("tx = +0.25", 0.25, 0, 0), ("ty = +0.25", 0, 0.25, 0), ("angle = +30°", 0, 0, 30)]
fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
point = np.array([0.2, -0.15, 1.0])  # a point of the content, in image widths from the centre (x right, y down)
with torch.no_grad():
    imgs = torch.cat([G.synthesis(ws, transform=torch.from_numpy(input_transform(tx, ty, a)))
                      for _, tx, ty, a in cases])
imgs = (imgs - imgs.amin()) / (imgs.amax() - imgs.amin()) * 2 - 1  # contrast stretch: random weights are dull
for ax, img, (title, tx, ty, a) in zip(axes, to_uint8(imgs), cases):
    ax.imshow(img, extent=[-0.5, 0.5, 0.5, -0.5])
    moved = forward_matrix(tx, ty, a) @ point  # where the content point lands
    ax.plot([point[0]], [point[1]], "wo", mfc="none", ms=10)
    ax.plot([moved[0]], [moved[1]], "r+", ms=14, mew=2)
    ax.set_title(f"{title}")
    ax.set_xlabel("x (image widths)")
axes[0].set_ylabel("y (image widths, down)")
fig.suptitle("set_input_transform(G, tx, ty, angle): content moves by (+tx, +ty), turns counter-clockwise "
             "for angle > 0  (o: a texture point at identity, +: where it goes)", fontsize=9)
fig.tight_layout()
out = Path(__file__).with_name("input_transform.png")
fig.savefig(out, dpi=80)
print("wrote", out)
