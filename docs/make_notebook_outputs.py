"""Write the notebooks' outputs from a CPU run into the notebooks themselves, or check that they are current.

    python docs/make_notebook_outputs.py                     # every notebooks/0*.ipynb
    python docs/make_notebook_outputs.py 01_canonical_transforms.ipynb 03_sspace_feature_maps.ipynb
    python docs/make_notebook_outputs.py --check             # exit 1 and list the differences if re-running differs
    python docs/make_notebook_outputs.py --strip             # remove the outputs again

Why outputs in the notebooks (and not pages under ``docs/``): GitHub's notebook view and Colab's "open from GitHub"
both show a notebook's stored outputs, so a reader sees every figure, table and video before running anything,
next to the code that made it; pages under ``docs/`` would need a site to be rendered and would drift from the
notebooks. The cost is size and diffs; kept small by the notebooks' CPU defaults (64-128 px generators, short
clips) and by what is left out here.

Each notebook is executed top to bottom with nbclient (kernel ``python3``) in a temporary copy of its folder's
layout, with its own defaults (no parameters injected) on the CPU (``CUDA_VISIBLE_DEVICES=''``) and an empty v2s_nb
cache (``V2S_NB_CACHE``), then cleaned:

* widget outputs (the track viewer, the tuner, tqdm bars) and the notebook's widget state are removed: GitHub
  and Colab cannot run them without a kernel, and their state would hold every preview frame; the screenshots
  in ``docs/screenshots/`` show them (``docs/make_notebook_screenshots.py``). A cell whose value was a widget
  gets a one-line note in its place (:data:`WIDGET_NOTE`), so a reader does not take the empty cell for a failure;
* stderr (progress bars, warnings) and per-cell timing metadata are removed;
* figures are stored as 256-colour PNGs (median cut, no dithering) where that is smaller: a third of the size for
  photographic figures, about one grey level of mean error;
* ``metadata.v2s_nb_outputs`` records the tool, the run time in seconds, the machine and the versions.

``--check`` executes a copy the same way and compares it with the stored outputs: the same outputs in every cell
(consecutive prints joined: how they split into outputs depends on the kernel's flush timing),
text equal once durations ("12.3 s", "40 ms") are masked and other numbers agree within 5 % (or 0.05), pictures
of the same size whose mean absolute difference is under 4 grey levels (figures compared loosely: CPU kinds and
thread counts change the last bits of a float), videos present in the same cells.
"""

from __future__ import annotations

import argparse
import base64
import copy
import io
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # v2s_nb from this checkout
NOTEBOOKS = REPO / "notebooks"
WIDGET = "application/vnd.jupyter.widget-view+json"
MARKER = "v2s_nb_outputs"
#: Stored where a cell displayed a widget (markdown; the plain text for viewers without markdown).
WIDGET_NOTE = ("*An interactive widget shows here when the notebook runs (Jupyter, VS Code, or Colab once the "
               "cells above have run); a stored notebook cannot show one. Pictures of the widgets: "
               "`docs/screenshots/` in the repository.*")
CELL_TIMEOUT = 1800  # seconds; the first run of a notebook that fits the demo's generator takes a few minutes
#: Mean absolute difference (0-255 grey levels) under which two pictures count as the same.
IMAGE_TOLERANCE = 4.0
_NUMBER = re.compile(r"[-+−]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_DURATION = re.compile(r"\d+(?:\.\d+)?\s?(?:ms|s|min|sec|seconds)\b")
_BASE64 = re.compile(r"base64,[A-Za-z0-9+/=\s]+")


# ---------------------------------------------------------------------------------------------------- running


def execute(path: Path, timeout: int = CELL_TIMEOUT):
    """Run a copy of the notebook at ``path`` (in a temporary folder, CPU only); returns (notebook, seconds)."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="v2s_nb_outputs_") as tmp:
        env_before = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "V2S_NB_CACHE")}
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the kernel inherits it: the stored outputs come from the CPU
        # An empty v2s_nb cache: a run that reads stages back from a user's cache prints less than one that computes
        # them, so stored and re-run outputs are only comparable from the same (empty) start.
        os.environ["V2S_NB_CACHE"] = str(Path(tmp) / "cache")
        try:
            t0 = time.perf_counter()
            NotebookClient(nb, kernel_name="python3", timeout=timeout, allow_errors=False, record_timing=False,
                           resources={"metadata": {"path": tmp}}).execute()
            seconds = time.perf_counter() - t0
            _name_cache_folder(nb, str(Path(tmp) / "cache"))
        finally:
            for k, v in env_before.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return nb, seconds


def _name_cache_folder(nb, folder: str) -> None:
    """Printed paths inside the run's temporary cache folder read ``$V2S_NB_CACHE/...`` (stable between runs)."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = out["text"].replace(folder, "$V2S_NB_CACHE")
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    out["data"][mime] = value.replace(folder, "$V2S_NB_CACHE")


def small_png(data: str) -> str:
    """The base64 PNG ``data`` re-encoded with 256 colours when that is smaller (else unchanged)."""
    from PIL import Image

    raw = base64.b64decode(data)
    img = Image.open(io.BytesIO(raw))
    if img.mode == "P":
        return data
    q = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    q.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode() if buf.tell() < len(raw) else data


def clean(nb) -> None:
    """Remove what is not kept (module docstring): widget outputs (a note in their place) and state, stderr,
    timing metadata; figures as small PNGs."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        kept = []
        for out in cell.outputs:
            if out.output_type == "stream" and out.name == "stderr":
                continue
            if out.output_type in ("display_data", "execute_result") and WIDGET in out.get("data", {}):
                if out.output_type == "execute_result":  # the cell's value (tqdm's bars are display_data)
                    kept.append(nbformat.v4.new_output("display_data", data={
                        "text/markdown": WIDGET_NOTE, "text/plain": WIDGET_NOTE.strip("*").replace("`", "")}))
                continue
            if "image/png" in out.get("data", {}):
                out.data["image/png"] = small_png(out.data["image/png"])
            kept.append(out)
        cell.outputs = kept


def strip(nb) -> None:
    """Remove every output and execution count (the notebook as it is written)."""
    nb.metadata.pop("widgets", None)
    nb.metadata.pop(MARKER, None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)


def optional_weights() -> dict:
    """Which optional pretrained weights this machine has without a download ({name: bool}): the notebooks take
    another path with them (notebook 02 reads poses with PFLD, notebook 04 encodes head pose), so stored outputs
    can only be compared on a machine with the same set."""
    from v2s_nb.face.landmark_cnn import weights_path
    from v2s_nb.face.parsing import bisenet_available
    from v2s_nb.weights import WeightsUnavailableError

    have = {"bisenet-face-parsing": bisenet_available()}
    for name in ("pfld-68", "rfb-320-face-detector"):
        try:
            have[name] = weights_path(name, download=False).is_file()
        except WeightsUnavailableError:
            have[name] = False
    return have


def _record(nb, seconds: float) -> None:
    import torch

    nb.metadata[MARKER] = {
        "written_by": "docs/make_notebook_outputs.py", "seconds": round(seconds, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "python": platform.python_version(), "torch": torch.__version__, "optional_weights": optional_weights()}


def _write(nb, path: Path) -> None:
    from v2s_nb.atomic import write_atomic

    write_atomic(path, lambda f: nbformat.write(nb, f), mode="w")


# ---------------------------------------------------------------------------------------------------- comparing


def _numbers_close(a: str, b: str) -> bool:
    if a == b:  # (also digests such as '6E310' that read as an infinite float)
        return True
    x, y = float(a.replace("−", "-")), float(b.replace("−", "-"))
    return abs(x - y) <= max(0.05, 0.05 * max(abs(x), abs(y)))


def compare_text(a: str, b: str) -> str | None:
    """None when ``a`` and ``b`` agree (durations masked, numbers within 5 % or 0.05), else what differs."""
    # Embedded data first: base64 text can hold what reads as a duration ("...9s/..."), which would cut it short.
    a, b = _BASE64.sub("base64,<data>", a), _BASE64.sub("base64,<data>", b)
    a, b = _DURATION.sub("<duration>", a), _DURATION.sub("<duration>", b)
    if _NUMBER.sub("#", a) != _NUMBER.sub("#", b):
        for la, lb in zip(a.splitlines() + [""] * 9999, b.splitlines()):
            if _NUMBER.sub("#", la) != _NUMBER.sub("#", lb):
                return f"text differs: {la[:120]!r} vs {lb[:120]!r}"
        return "text differs in length"
    for x, y in zip(_NUMBER.findall(a), _NUMBER.findall(b)):
        if not _numbers_close(x, y):
            return f"number {x} vs {y}"
    return None


def _png(data: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), np.int16)


def compare_image(a: str, b: str) -> str | None:
    """None when the base64 PNGs ``a`` and ``b`` have the same size and a mean absolute difference under
    :data:`IMAGE_TOLERANCE` grey levels."""
    x, y = _png(a), _png(b)
    if x.shape != y.shape:
        return f"picture size {x.shape[1]}x{x.shape[0]} vs {y.shape[1]}x{y.shape[0]}"
    d = float(np.abs(x - y).mean())
    return None if d < IMAGE_TOLERANCE else f"pictures differ by {d:.1f} grey levels on average"


def _output_text(out) -> dict[str, str]:
    if out.output_type == "stream":
        return {f"stream/{out.name}": out.text}
    if out.output_type == "error":
        return {"error": f"{out.ename}: {out.evalue}"}
    return {k: v if isinstance(v, str) else "\n".join(v) for k, v in out.get("data", {}).items()}


def _coalesced(outputs) -> list:
    """``outputs`` with consecutive stream outputs of the same stream joined into one: how a cell's prints are split
    into outputs depends on when the kernel flushes (a busy machine splits them more), not on what they say."""
    out = []
    for o in outputs:
        if (o.output_type == "stream" and out and out[-1].output_type == "stream"
                and out[-1].name == o.name):
            out[-1] = copy.deepcopy(out[-1])
            out[-1].text = out[-1].text + o.text
        else:
            out.append(o)
    return out


def compare(stored, fresh) -> list[str]:
    """Differences between the stored outputs and those of a fresh run (both cleaned), one line each (consecutive
    prints compared as one stream output, :func:`_coalesced`)."""
    problems = []
    code_s = [c for c in stored.cells if c.cell_type == "code"]
    code_f = [c for c in fresh.cells if c.cell_type == "code"]
    if [c.source for c in code_s] != [c.source for c in code_f]:
        return ["the code cells differ: compare the same notebook"]
    for k, (cs, cf) in enumerate(zip(code_s, code_f)):
        where = f"cell {cs.get('id', k)}"
        outs_s, outs_f = _coalesced(cs.outputs), _coalesced(cf.outputs)
        if len(outs_s) != len(outs_f):
            problems.append(f"{where}: {len(outs_s)} outputs stored, {len(outs_f)} now")
            continue
        for os_, of in zip(outs_s, outs_f):
            ts, tf = _output_text(os_), _output_text(of)
            if sorted(ts) != sorted(tf):
                problems.append(f"{where}: output kinds {sorted(ts)} stored, {sorted(tf)} now")
                continue
            for mime in ts:
                why = compare_image(ts[mime], tf[mime]) if mime == "image/png" else compare_text(ts[mime], tf[mime])
                if why:
                    problems.append(f"{where} ({mime}): {why}")
    return problems


# ---------------------------------------------------------------------------------------------------- main


def _paths(names) -> list[Path]:
    if not names:
        return sorted(NOTEBOOKS.glob("0*.ipynb"))
    out = []
    for n in names:
        p = Path(n)
        p = p if p.is_file() else NOTEBOOKS / p.name
        if not p.is_file():
            raise SystemExit(f"no notebook {n!r} (give a file name in notebooks/, e.g. 01_canonical_transforms.ipynb)")
        out.append(p)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", help="notebook files (default: every notebooks/0*.ipynb)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="re-run and compare with the stored outputs; write nothing")
    g.add_argument("--strip", action="store_true", help="remove the stored outputs")
    args = ap.parse_args(argv)
    failed = 0
    for path in _paths(args.notebooks):
        if args.strip:
            nb = nbformat.read(path, as_version=4)
            strip(nb)
            _write(nb, path)
            print(f"{path.name}: outputs removed")
            continue
        stored = nbformat.read(path, as_version=4)
        if args.check and MARKER not in stored.metadata:
            print(f"{path.name}: no stored outputs to check")
            continue
        fresh_input = copy.deepcopy(stored)
        strip(fresh_input)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / path.name
            nbformat.write(fresh_input, src)
            nb, seconds = execute(src)
        clean(nb)
        if args.check:
            problems = compare(stored, nb)
            failed += bool(problems)
            print(f"{path.name}: {'current' if not problems else 'NOT current'} (re-run in {seconds:.0f} s)")
            for p in problems:
                print("   ", p)
            continue
        _record(nb, seconds)
        _write(nb, path)
        print(f"{path.name}: outputs written ({seconds:.0f} s run, {path.stat().st_size / 1024:.0f} KiB)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
