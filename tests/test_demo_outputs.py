"""The demo's bookkeeping, fast (a 64 px generator fitted for 1 step, 2-4 frame clips; tests/test_demo.py runs
the real demo): the fitted-generator cache is checked by its digest, the run says whether the fit really came
from the cache, and the outputs are one run's set even when a run is interrupted."""

import contextlib
import io
import json

import numpy as np
import pytest

from v2s_nb import demo
from v2s_nb.cli import main
from v2s_nb.errors import CacheWarning
from v2s_nb.video import read_video

TINY = demo.FitSettings(resolution=64, channel_base=512, channel_max=16, num_layers=2, z_dim=16, w_dim=16, steps=1)


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _flip_a_tensor_byte(path, index: int = 100):
    """XOR the low byte of a float32 in the data section: the values stay finite, the file is damaged."""
    b = bytearray(path.read_bytes())
    b[8 + int.from_bytes(b[:8], "little") + 4 * index] ^= 0x01
    path.write_bytes(bytes(b))


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """`v2s-nb demo` once with the tiny fit (its cache in the folder), 2 frames."""
    d = tmp_path_factory.mktemp("tiny_demo")
    mp = pytest.MonkeyPatch()
    mp.setenv("V2S_NB_CACHE", str(d / "cache"))
    mp.setitem(demo.run_demo.__kwdefaults__, "settings", TINY)  # cmd_demo passes no settings
    out = d / "demo.mp4"
    rc, _, err = _run(["demo", "--out", str(out), "--frames", "2", "--quiet"])
    assert rc == 0, err
    yield {"dir": d, "out": out}
    mp.undo()


def _outputs(out):
    p = demo.demo_paths(out)
    return [p["result"], p["side_by_side"], p["contact_sheet"], p["intermediates"] / "timings.json"]


def test_a_damaged_cached_fit_is_not_reported_as_loaded(tiny_demo):
    """The run used to decide 'from the cache' by the file being there, before loading it."""
    out = tiny_demo["out"]
    (fitted,) = (tiny_demo["dir"] / "cache" / "demo").glob("fitted-*.safetensors")
    _flip_a_tensor_byte(fitted)
    with pytest.warns(CacheWarning, match="recomputing"):
        rc, stdout, err = _run(["demo", "--out", str(out), "--frames", "2", "--quiet"])
    assert rc == 0, err
    assert json.loads(_outputs(out)[3].read_text())["fitted_from_cache"] is False and "fit computed" in stdout
    rc, stdout, err = _run(["demo", "--out", str(out), "--frames", "2", "--quiet"])  # fitted anew: reused now
    assert rc == 0, err
    assert json.loads(_outputs(out)[3].read_text())["fitted_from_cache"] is True and "fit from the cache" in stdout


def test_an_interrupted_demo_leaves_the_previous_outputs_whole(tiny_demo, monkeypatch):
    """Ctrl-C in stage 5 used to leave the new result video beside the previous run's companions."""
    out = tiny_demo["out"]
    before = {p: p.read_bytes() for p in _outputs(out)}

    def interrupted(*a, **k):  # Ctrl-C while dlib checks the result, after the result video was encoded
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "follow_check", interrupted)
    rc, _, err = _run(["demo", "--out", str(out), "--frames", "3", "--quiet"])
    assert rc == 130 and "no output was written" in err
    assert {p: p.read_bytes() for p in _outputs(out)} == before
    leftovers = [p.name for p in (out.parent, out.parent / "demo.mp4.v2s") for p in p.iterdir() if p.name[0] == "."]
    assert not leftovers


def test_demo_checkpoint_outputs_are_one_runs(tmp_path, monkeypatch):
    """``demo --checkpoint``: reenact wrote --out first, then the side-by-side video and contact sheet; Ctrl-C in
    between left a new result beside old companions."""
    from v2s_nb.stylegan3 import save_generator, tiny_generator

    monkeypatch.setenv("V2S_NB_CACHE", str(tmp_path / "cache"))
    ckpt = save_generator(tiny_generator("R", resolution=64), tmp_path / "tiny_r64.safetensors")
    out = tmp_path / "demo.mp4"
    argv = ["demo", "--out", str(out), "--checkpoint", str(ckpt), "--invert-steps", "1", "--invert-steps-next", "1",
            "--quiet"]
    rc, stdout, err = _run(argv + ["--frames", "2"])
    assert rc == 0, err
    assert read_video(out).frames.shape == (2, 64, 64, 3) and "2 frames" in stdout
    files = _outputs(out)[:3]

    def stamps():  # the same frames render the same bytes: a file written again shows in its inode / mtime
        return {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in files}

    before = stamps()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "contact_sheet", interrupted)  # the last of the three
    rc, _, err = _run(argv + ["--frames", "2"])  # the same settings: stages 1-4 come from the cache (fast)
    assert rc == 130
    assert stamps() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name[0] == "."]


def test_fitted_cache_damaged_in_a_byte_or_without_digest_is_fitted_again(tmp_path):
    """A flipped mantissa bit loaded silently as a cache hit (only NaN / inf was checked)."""
    import warnings

    from safetensors import safe_open
    from safetensors.torch import save_file

    from v2s_nb.face.regions import template_landmarks
    from v2s_nb.stylegan3 import load_generator

    photo = np.random.default_rng(0).integers(0, 256, size=(128, 128, 3), dtype=np.uint8)
    pts = template_landmarks(128)

    def fit():
        return demo.fit_to_photo(photo, pts, TINY, cache_dir=tmp_path, progress=False)

    fit()
    path = demo.fitted_cache_path(photo, pts, TINY, "cpu", tmp_path)
    _flip_a_tensor_byte(path)
    with pytest.warns(CacheWarning, match="digest"):
        fit()
    load_generator(path)  # written again, sound
    with safe_open(str(path), framework="pt") as f:  # as an older v2s_nb saved it: no digest, cannot be checked
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    del meta["tensors_sha256"]
    save_file(tensors, str(path), metadata=meta)
    with pytest.warns(CacheWarning, match="no digest"):
        fit()
    stamp = path.stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        fit()  # saved anew with its digest: loaded
    assert path.stat().st_mtime_ns == stamp
