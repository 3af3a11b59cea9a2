"""Stored notebook outputs (docs/make_notebook_outputs.py): what is kept, how fresh runs are compared, and (slow)
that re-running each notebook that stores outputs gives the same outputs."""

from __future__ import annotations

import base64
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("0*.ipynb"))
_spec = importlib.util.spec_from_file_location("make_notebook_outputs", REPO / "docs" / "make_notebook_outputs.py")
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

#: Largest stored notebook (bytes): small figures and clips only.
MAX_BYTES = 1_500_000


def _png_b64(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _nb(outputs):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(1)")
    cell.outputs = outputs
    nb.cells = [cell]
    return nb


def test_compare_text_masks_durations_and_allows_small_number_changes():
    assert tool.compare_text("loss 0.500 -> 0.100 in 12.3 s (40 ms a step)",
                             "loss 0.502 -> 0.101 in 3.0 s (7 ms a step)") is None
    assert "number" in tool.compare_text("faces found in 12 of 12 frames", "faces found in 9 of 12 frames")
    assert "text differs" in tool.compare_text("rows 8+ untouched: True", "rows 8+ untouched: False")
    # embedded videos: any data, even data that holds what reads as a duration ("9s/")
    assert tool.compare_text('<source src="data:video/mp4;base64,AAAAIGZ0eXA=" type="video/mp4"/>',
                             '<source src="data:video/mp4;base64,AfCE9s/Ykw+h" type="video/mp4"/>') is None


def test_compare_images_loosely():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 60, 3))
    near = np.clip(img + rng.integers(-2, 3, img.shape), 0, 255)
    assert tool.compare_image(_png_b64(img), _png_b64(near)) is None
    assert "grey levels" in tool.compare_image(_png_b64(img), _png_b64(255 - img))
    assert "size" in tool.compare_image(_png_b64(img), _png_b64(img[:, :50]))


def test_compare_notebooks():
    out = lambda text: nbformat.v4.new_output("stream", name="stdout", text=text)  # noqa: E731
    pic = lambda img: nbformat.v4.new_output("display_data", data={"image/png": _png_b64(img)})  # noqa: E731
    img = np.full((20, 20, 3), 100)
    a = _nb([out("angle error 0.51 deg\n"), pic(img)])
    assert tool.compare(a, _nb([out("angle error 0.52 deg\n"), pic(img + 1)])) == []
    assert len(tool.compare(a, _nb([out("angle error 0.52 deg\n")]))) == 1  # a figure missing
    problems = tool.compare(a, _nb([out("angle error 3.0 deg\n"), pic(img + 100)]))
    assert len(problems) == 2 and "number" in problems[0] and "grey levels" in problems[1]
    # prints split into outputs differently (kernel flush timing) compare as one stream; their text still counts
    split = _nb([out("angle error "), out("0.51 deg\n"), pic(img)])
    assert tool.compare(a, split) == [] and tool.compare(split, a) == []
    assert len(tool.compare(a, _nb([out("angle "), out("error 3.0 deg\n"), pic(img)]))) == 1


def test_clean_drops_widgets_stderr_and_timing():
    nb = _nb([nbformat.v4.new_output("stream", name="stderr", text="100%|####|"),
              nbformat.v4.new_output("display_data", data={tool.WIDGET: {"model_id": "x"}, "text/plain": "HBox()"}),
              nbformat.v4.new_output("stream", name="stdout", text="kept\n"),
              nbformat.v4.new_output("execute_result", data={tool.WIDGET: {"model_id": "y"}, "text/plain": "VBox()"},
                                     execution_count=1)])
    nb.metadata["widgets"] = {"state": {}}
    nb.cells[0].metadata["execution"] = {"iopub.status.busy": "t"}
    tool.clean(nb)
    kept, note = nb.cells[0].outputs  # a progress bar (display_data) goes; the cell's widget value leaves a note
    assert kept.text == "kept\n" and note.output_type == "display_data"
    assert note.data["text/markdown"] == tool.WIDGET_NOTE and "widget" in note.data["text/plain"]
    assert tool.WIDGET not in note.data
    assert "widgets" not in nb.metadata and "execution" not in nb.cells[0].metadata
    tool.strip(nb)
    assert nb.cells[0].outputs == [] and nb.cells[0].execution_count is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_outputs_are_clean_and_small(path):
    nb = nbformat.read(path, as_version=4)
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size} bytes"
    assert "widgets" not in nb.metadata
    code = [c for c in nb.cells if c.cell_type == "code"]
    if tool.MARKER not in nb.metadata:
        assert all(not c.outputs and c.execution_count is None for c in code), \
            f"{path.name} has outputs not written by docs/make_notebook_outputs.py"
        return
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "run top to bottom, once"
    for c in code:
        for o in c.outputs:
            assert o.output_type != "error", f"{path.name}: an error output is stored"
            assert not (o.output_type == "stream" and o.name == "stderr")
            assert tool.WIDGET not in o.get("data", {})


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_outputs_are_current(path):
    """Re-running the notebook (CPU, its defaults) gives the stored outputs (docs/make_notebook_outputs.py --check)."""
    stored = nbformat.read(path, as_version=4)
    if tool.MARKER not in stored.metadata:
        pytest.skip(f"{path.name} stores no outputs")
    written_with, here = stored.metadata[tool.MARKER].get("optional_weights"), tool.optional_weights()
    if written_with != here:
        pytest.skip(f"{path.name}'s outputs were written with optional weights {written_with}, this machine has "
                    f"{here}: the notebook takes another path (run docs/make_notebook_outputs.py here to compare)")
    fresh_input = nbformat.read(path, as_version=4)
    tool.strip(fresh_input)
    src = Path(pytest.importorskip("tempfile").mkdtemp()) / path.name
    nbformat.write(fresh_input, src)
    fresh, _ = tool.execute(src)
    tool.clean(fresh)
    assert tool.compare(stored, fresh) == [], "run: python docs/make_notebook_outputs.py " + path.name
