"""Run the four notebooks on the CPU and keep one figure of each as a thumbnail for the README.

    python docs/make_notebook_thumbnails.py            # writes docs/notebooks/0N_*.png

Each notebook is executed top to bottom (nbclient, kernel python3, in its own folder, as the tests do); the
thumbnail is the notebook's largest PNG output (the figure a reader would look at first), scaled to 480 px wide.
"""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "notebooks"
WIDTH = 480


def largest_png(nb) -> Image.Image | None:
    best = None
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" in data:
                img = Image.open(io.BytesIO(base64.b64decode(data["image/png"])))
                if best is None or img.width * img.height > best.width * best.height:
                    best = img
    return best


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for path in sorted((REPO / "notebooks").glob("0*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
        img = largest_png(nb)
        if img is None:
            print(f"{path.name}: no figure", file=sys.stderr)
            continue
        img = img.convert("RGB")
        img = img.resize((WIDTH, round(img.height * WIDTH / img.width)), Image.LANCZOS)
        target = OUT / (path.stem + ".png")
        tmp = target.with_suffix(".part.png")
        img.save(tmp, optimize=True)
        tmp.replace(target)
        print(f"{path.name} -> {target.relative_to(REPO)} ({img.width}x{img.height})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
