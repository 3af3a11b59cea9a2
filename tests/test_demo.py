"""`v2s-nb demo` end to end on the CPU: a generator fitted to the astronaut photo follows a clip made from it.

Measured, not assumed: dlib must find a face in >= 90% of the result frames, and the result's roll (canonical
eyes -> mouth angle, relative to the first frame) must follow the driving clip's within 3 degrees. The demo runs
once per module with the fitted-generator cache in a temporary folder (so the fit really runs), then once more
to check that the cached generator is reused.
"""

import contextlib
import io
import json
import time

import numpy as np
import pytest

from v2s_nb.cli import main
from v2s_nb.demo import LABEL, FitSettings, fit_to_photo
from v2s_nb.face import landmarks
from v2s_nb.face.canonical import eye_mouth_geometry
from v2s_nb.video import read_video

pytestmark = pytest.mark.slow  # the whole offline demo runs once for the module


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    mp = pytest.MonkeyPatch()
    mp.setenv("V2S_NB_CACHE", str(d / "cache"))
    out = d / "out" / "demo.mp4"
    t0 = time.perf_counter()
    rc, stdout, stderr = _run(["demo", "--out", str(out), "--quiet"])
    elapsed = time.perf_counter() - t0
    yield {"dir": d, "out": out, "rc": rc, "stdout": stdout, "stderr": stderr, "elapsed": elapsed}
    mp.undo()


def test_demo_writes_labelled_outputs(demo):
    assert demo["rc"] == 0, demo["stderr"]
    out = demo["out"]
    side, sheet = out.with_name("demo_side_by_side.mp4"), out.with_name("demo_contact_sheet.png")
    res, sbs = read_video(out), read_video(side)
    assert res.frames.shape[1:] == (128, 128, 3) and len(res) == 32
    assert len(sbs) == len(res) and sbs.width == 2 * 256  # driving (256 px) | result (resized to 256 px)
    assert sheet.is_file() and sheet.stat().st_size < 400_000
    assert (out.parent / "demo_inputs" / "driving.mp4").is_file()
    assert (out.parent / "demo.mp4.v2s" / "reenactor" / "reenactor.json").is_file()
    text = demo["stdout"]
    assert LABEL in text and "not a face model" in text.lower()
    assert "cannot show" in text and "expression" in text and "head pose" in text
    fitted = list((demo["dir"] / "cache" / "demo").glob("fitted-*.safetensors"))
    assert len(fitted) == 1
    from v2s_nb.stylegan3 import load_generator
    G = load_generator(fitted[0])
    assert LABEL in repr(G) and not G.is_random
    summary = json.loads((out.parent / "demo.mp4.v2s" / "timings.json").read_text())
    assert summary["fitted_from_cache"] is False and summary["timings_s"]["fit"] > 0


def _rolls(frames, upsample):
    tr = landmarks(frames, upsample=upsample, progress=False)
    _, v = eye_mouth_geometry(tr.points)
    return np.where(tr.found, np.degrees(np.arctan2(v[:, 0], v[:, 1])), np.nan), tr.found


def test_demo_face_follows_the_driving_roll(demo):
    """Measured on the files the demo wrote, with dlib directly (not the demo's own check)."""
    assert demo["rc"] == 0, demo["stderr"]
    driving = read_video(demo["out"].parent / "demo_inputs" / "driving.mp4").frames
    result = read_video(demo["out"]).frames
    a_d, f_d = _rolls(driving, 0)  # 256 px frames, faces of ~110 px
    a_r, f_r = _rolls(result, 1)  # 128 px frames, faces of ~55 px
    assert f_d.all()
    assert f_r.mean() >= 0.9, f"dlib found a face in only {f_r.sum()}/{len(f_r)} result frames"
    assert f_r[0]
    rel_d, rel_r = a_d - a_d[0], a_r - a_r[0]
    assert np.nanmax(rel_d) - np.nanmin(rel_d) > 16  # the clip really rolls (+-10 degrees)
    err = np.abs(rel_r - rel_d)[f_r]
    assert err.max() <= 3.0, f"roll error up to {err.max():.2f} deg (frames {np.flatnonzero(np.abs(rel_r - rel_d) > 3)})"
    # the demo's own report agrees with this measurement
    summary = json.loads((demo["out"].parent / "demo.mp4.v2s" / "timings.json").read_text())
    assert summary["detection_rate"] == pytest.approx(f_r.mean())
    assert summary["max_roll_error_deg"] == pytest.approx(err.max(), abs=1e-6)


def test_demo_rerun_reuses_the_fitted_generator(demo, monkeypatch):
    assert demo["rc"] == 0, demo["stderr"]
    monkeypatch.setenv("V2S_NB_CACHE", str(demo["dir"] / "cache"))
    fitted = next((demo["dir"] / "cache" / "demo").glob("fitted-*.safetensors"))
    stamp = fitted.stat().st_mtime_ns
    first = read_video(demo["out"]).frames
    rc, stdout, stderr = _run(["demo", "--out", str(demo["out"]), "--quiet"])
    assert rc == 0, stderr
    summary = json.loads((demo["out"].parent / "demo.mp4.v2s" / "timings.json").read_text())
    assert summary["fitted_from_cache"] is True and "from the cache" in stdout
    assert "UNVERIFIED" not in stdout and "NOT a face model (fitted earlier" in stdout  # its own stand-in, as such
    assert fitted.stat().st_mtime_ns == stamp
    assert np.array_equal(read_video(demo["out"]).frames, first)


def test_fit_to_photo_refuses_bad_inputs():
    pts = np.zeros((68, 2))
    with pytest.raises(ValueError, match="uint8 RGB image"):
        fit_to_photo(np.zeros((64, 64, 3), np.float32), pts, FitSettings(), use_cache=False, progress=False)
    with pytest.raises(ValueError, match="68 dlib landmarks"):
        fit_to_photo(np.zeros((64, 64, 3), np.uint8), pts[:5], FitSettings(), use_cache=False, progress=False)


def test_damaged_fitted_generator_in_cache_is_fitted_again(tmp_path):
    """A damaged cache entry is redone with a CacheWarning (caching.py's promise), never an error."""
    from v2s_nb.caching import generator_hash
    from v2s_nb.demo import fitted_cache_path
    from v2s_nb.errors import CacheWarning
    from v2s_nb.face.regions import template_landmarks
    from v2s_nb.stylegan3 import load_generator

    photo = np.random.default_rng(0).integers(0, 256, size=(128, 128, 3), dtype=np.uint8)
    pts, s = template_landmarks(128), FitSettings(steps=1)
    path = fitted_cache_path(photo, pts, s, "cpu", tmp_path)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")  # a truncated / overwritten entry
    with pytest.warns(CacheWarning, match="recomputing"):
        G = fit_to_photo(photo, pts, s, cache_dir=tmp_path, progress=False)
    assert not G.is_random
    assert generator_hash(load_generator(path)) == generator_hash(G)  # written again, readable now
def test_demo_with_a_checkpoint_runs_the_reenact_pipeline(tmp_path, monkeypatch):
    """``--checkpoint``: no fitting; the reenact pipeline with that generator on the demo's inputs (here a tiny
    random-weight generator saved as a v2s_nb checkpoint, 64 px: the plumbing, not the quality)."""
    from v2s_nb.stylegan3 import save_generator, tiny_generator

    monkeypatch.setenv("V2S_NB_CACHE", str(tmp_path / "cache"))
    ckpt = save_generator(tiny_generator("R", resolution=64), tmp_path / "tiny_r64.safetensors")
    out = tmp_path / "demo.mp4"
    rc, stdout, stderr = _run(["demo", "--out", str(out), "--checkpoint", str(ckpt), "--frames", "6",
                               "--invert-steps", "1", "--invert-steps-next", "1", "--quiet"])
    assert rc == 0, stderr
    assert read_video(out).frames.shape == (6, 64, 64, 3)
    assert read_video(tmp_path / "demo_side_by_side.mp4").width == 512
    assert (tmp_path / "demo_contact_sheet.png").is_file()
    assert not (tmp_path / "cache" / "demo").exists()  # nothing was fitted
    assert "tiny_r64.safetensors" in stdout and LABEL not in stdout
