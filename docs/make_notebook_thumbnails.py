"""Run the four notebooks on the CPU and keep one figure of each as a thumbnail for the README.

    python docs/make_notebook_thumbnails.py            # writes docs/notebooks/0N_*.png and docs/motion_modes.png
    python docs/make_notebook_thumbnails.py --stored 02_pose_optimization   # from its stored outputs, not run


Each notebook (all four, or those named) is executed top to bottom (nbclient, kernel python3, in its own folder, as the tests do); the
thumbnail is the notebook's largest PNG output (the figure a reader would look at first), scaled to 480 px wide.
Figures the README shows whole are saved too (:data:`FIGURES`: the output of the cell whose code contains a marker).
``--stored`` takes the figures from the outputs stored in the notebook file instead (those that
``docs/make_notebook_outputs.py`` wrote, with the weights it ran with), without running it.
"""

from __future__ import annotations

import argparse
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
#: notebook stem -> (text in the cell's code, file under docs/): figures kept at full size for the README.
FIGURES = {"04_reenactment": ("MOTION_MODES", "motion_modes.png")}


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


def cell_png(nb, marker: str) -> Image.Image | None:
    """The first PNG output of the first code cell whose source contains ``marker``."""
    for cell in nb.cells:
        if cell.cell_type == "code" and marker in cell.source:
            for out in cell.get("outputs", []):
                if "image/png" in out.get("data", {}):
                    return Image.open(io.BytesIO(base64.b64decode(out["data"]["image/png"])))
    return None


def _save(img: Image.Image, target: Path) -> None:
    tmp = target.with_suffix(".part.png")
    img.convert("RGB").save(tmp, optimize=True)
    tmp.replace(target)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="README thumbnails of the notebooks (docs/notebooks/0N_*.png).")
    ap.add_argument("notebooks", nargs="*", help="notebook stems, e.g. 02_pose_optimization (default: all four)")
    ap.add_argument("--stored", action="store_true", help="use the outputs stored in the notebooks; don't run them")
    args = ap.parse_args(argv)
    paths = sorted((REPO / "notebooks").glob("0*.ipynb"))
    unknown = set(args.notebooks) - {p.stem for p in paths}
    if unknown:
        ap.error(f"no notebook named {sorted(unknown)}; choose from {[p.stem for p in paths]}")
    OUT.mkdir(parents=True, exist_ok=True)
    for path in paths:
        if args.notebooks and path.stem not in args.notebooks:
            continue
        nb = nbformat.read(path, as_version=4)
        if not args.stored:
            NotebookClient(nb, timeout=900, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
        if path.stem in FIGURES:
            marker, name = FIGURES[path.stem]
            fig = cell_png(nb, marker)
            if fig is not None:
                _save(fig, REPO / "docs" / name)
                print(f"{path.name} -> docs/{name} ({fig.width}x{fig.height})")
        img = largest_png(nb)
        if img is None:
            print(f"{path.name}: no figure", file=sys.stderr)
            continue
        img = img.convert("RGB")
        img = img.resize((WIDTH, round(img.height * WIDTH / img.width)), Image.LANCZOS)
        target = OUT / (path.stem + ".png")
        _save(img, target)
        print(f"{path.name} -> {target.relative_to(REPO)} ({img.width}x{img.height})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
