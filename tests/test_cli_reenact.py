"""`v2s-nb reenact` end to end on the tiny generator with driving + co-driving files on disk (few inversion
steps: the point is the plumbing, not the quality), intermediate reuse, and bad inputs."""

import time
import warnings

import numpy as np
import pytest

from v2s_nb.cli import main, make_demo_inputs
from v2s_nb.method.reenact import LengthMismatchWarning, Reenactor
from v2s_nb.video import read_video, write_video

FAST = ["--invert-steps", "1", "--invert-steps-next", "1", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    ref, drv, co = make_demo_inputs(d, frames=6, size=256)
    co_short = d / "co_short.mp4"
    write_video(co_short, read_video(co).frames[:5], fps=12)  # shorter and another fps
    return ref, drv, co, co_short


def test_reenact_end_to_end_then_reuse(inputs, tmp_path, capsys):
    ref, drv, co, co_short = inputs
    out = tmp_path / "out.mp4"
    argv = ["reenact", "--reference", str(ref), "--driving", str(drv), "--co-driving", str(co_short),
            "--out", str(out)] + FAST
    t0 = time.perf_counter()
    with pytest.warns(LengthMismatchWarning):
        assert main(argv) == 0
    t1 = time.perf_counter()
    first = read_video(out)
    assert len(first) == 5 and first.frames.shape[1:] == (64, 64, 3)  # truncated to the shorter (co-driving)
    assert abs(first.fps - 10) < 1e-6  # the driving video's fps
    cache = tmp_path / "out.mp4.v2s"
    assert (cache / "reenactor" / "reenactor.json").is_file() and any(cache.glob("faces-video-*.npz"))
    r = Reenactor.load(cache / "reenactor")
    assert r.sources() == {"motion": "driving", "pose": "none", "position": "co-driving"}
    # second run: intermediates reused -> faster, same frames
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LengthMismatchWarning)
        t2 = time.perf_counter()
        assert main(argv) == 0
        t3 = time.perf_counter()
    assert np.array_equal(read_video(out).frames, first.frames)
    assert t3 - t2 < t1 - t0


def test_bad_inputs(inputs, tmp_path, capsys):
    ref, drv, co, _ = inputs
    blank = tmp_path / "blank.png"
    import skimage.io
    skimage.io.imsave(str(blank), np.full((128, 128, 3), 127, np.uint8), check_contrast=False)
    base = ["--driving", str(drv), "--out", str(tmp_path / "x.mp4")] + FAST
    assert main(["reenact", "--reference", str(blank)] + base) == 2
    assert "no face was found in the reference image" in capsys.readouterr().err
    assert main(["reenact", "--reference", str(ref), "--alpha", "nan"] + base) == 2
    assert "finite" in capsys.readouterr().err
    assert main(["reenact", "--reference", str(ref), "--gamma", "100"] + base) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["reenact", "--reference", str(tmp_path / "missing.png")] + base) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["reenact", "--reference", str(ref), "--pose-from", "co-driving"] + base) == 2
    assert "--co-driving" in capsys.readouterr().err
