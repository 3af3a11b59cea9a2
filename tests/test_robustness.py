"""Bad inputs as a careless user (or an attacker) gives them: each gets one line naming the problem, exit 2,
no traceback, and nothing left under a final name; inputs are never overwritten."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from v2s_nb.cli import main, make_demo_inputs
from v2s_nb.video import read_video

FAST = ["--invert-steps", "1", "--invert-steps-next", "1", "--device", "cpu", "--quiet"]


def run_cli(*args, timeout=300, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "v2s_nb.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


@pytest.fixture(scope="module")
def demo_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("robust-inputs")
    return make_demo_inputs(d, frames=4, size=256)


def _read_only_folder(tmp_path) -> Path:
    """A folder where files cannot be created (root ignores permission bits: then a folder under /proc)."""
    if os.geteuid() == 0:
        if not Path("/proc/self").is_dir():
            pytest.skip("running as root without /proc: no read-only folder to test with")
        return Path("/proc")
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d


def _finals(folder: Path) -> set[str]:
    """Files under ``folder`` that are not hidden temporaries."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")}


# ------------------------------------------------------------------------------------ inputs are never outputs


def test_out_equal_to_driving_input_is_refused_and_input_kept(demo_inputs, tmp_path, capsys):
    ref, drv, _ = demo_inputs
    work = tmp_path / "dl"
    work.mkdir()
    drv2 = work / "driving.mp4"
    drv2.write_bytes(Path(drv).read_bytes())
    before = drv2.read_bytes()
    assert main(["reenact", "--reference", str(ref), "--driving", str(drv2), "--out", str(drv2)] + FAST) == 2
    err = capsys.readouterr().err
    assert "is the input file" in err and err.count("\n") == 1
    assert drv2.read_bytes() == before
    assert not (work / "driving.mp4.v2s").exists()  # refused before any work


@pytest.mark.parametrize("how", ["relative", "symlink", "hardlink", "reference"])
def test_out_resolving_to_an_input_is_refused(demo_inputs, tmp_path, monkeypatch, capsys, how):
    ref, drv, _ = demo_inputs
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "in.mp4"
    src.write_bytes(Path(drv).read_bytes())
    if how == "relative":
        (tmp_path / "sub").mkdir()
        out = "sub/../in.mp4"
    elif how == "symlink":
        out = "link.mp4"
        os.symlink(src, out)
    elif how == "hardlink":
        out = "hard.mp4"
        os.link(src, out)
    else:  # the reference image, written as the output (also refused for the extension, but first as an input)
        img = tmp_path / "ref.mov"
        img.write_bytes(Path(ref).read_bytes())
        ref, out = img, "ref.mov"
    before = src.read_bytes()
    assert main(["reenact", "--reference", str(ref), "--driving", str(src), "--out", out] + FAST) == 2
    assert "is the input file" in capsys.readouterr().err
    assert src.read_bytes() == before


def test_input_inside_the_outputs_intermediates_is_refused(demo_inputs, tmp_path, capsys):
    ref, drv, _ = demo_inputs
    out = tmp_path / "o.mp4"
    cache = tmp_path / "o.mp4.v2s"
    cache.mkdir()
    inside = cache / "driving.mp4"
    inside.write_bytes(Path(drv).read_bytes())
    assert main(["reenact", "--reference", str(ref), "--driving", str(inside), "--out", str(out)] + FAST) == 2
    assert "intermediates" in capsys.readouterr().err


def test_out_inside_an_inputs_intermediates_is_refused(demo_inputs, tmp_path, capsys):
    ref, drv, _ = demo_inputs
    src = tmp_path / "d.mp4"
    src.write_bytes(Path(drv).read_bytes())
    out = tmp_path / "d.mp4.v2s" / "x.mp4"
    assert main(["reenact", "--reference", str(ref), "--driving", str(src), "--out", str(out)] + FAST) == 2
    assert "intermediates" in capsys.readouterr().err


def test_generate_refuses_overwriting_its_network(tmp_path, capsys, sg3_fixture_dir):
    net = tmp_path / "net.png"  # a snapshot that happens to be called .png
    net.write_bytes((sg3_fixture_dir / "t64" / "network.pkl").read_bytes())
    before = net.read_bytes()
    assert main(["generate", "--network", str(net), "--out", str(net), "--device", "cpu", "--quiet"]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert net.read_bytes() == before


# ------------------------------------------------------------------------------------ resumable by default


def test_reenact_resumes_inversion_after_sigkill(demo_inputs, tmp_path):
    """Kill the CLI (SIGKILL) once the first inversion batch is saved; the rerun reuses it (its files are not
    rewritten) and finishes."""
    import signal
    import time

    ref, drv, _ = demo_inputs  # 4 frames: 2 batches of 2
    out = tmp_path / "r.mp4"
    argv = ["reenact", "--reference", ref, "--driving", drv, "--out", out, "--invert-batch", "2",
            "--invert-steps", "40", "--invert-steps-next", "40", "--device", "cpu", "--quiet", "--pose-from", "none"]
    batches = tmp_path / "r.mp4.v2s" / "inversions" / "batches" / "driving"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "v2s_nb.cli", *map(str, argv)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(batches.glob("frames_*.json")):
        assert proc.poll() is None, f"the run ended before any batch was saved: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no inversion batch saved within 240 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = sorted(batches.glob("frames_*"))
    assert len(done) == 2 and not out.exists()  # one batch (.json + .npy), no output
    stamps = {p.name: p.stat().st_mtime_ns for p in done}
    r = run_cli(*argv)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in done} == stamps  # reused, not recomputed
    assert len(list(batches.glob("frames_*.json"))) == 2 and len(read_video(out)) == 4


def test_truncated_or_altered_faces_cache_is_recomputed(demo_inputs, tmp_path):
    from v2s_nb.cli import _faces, build_parser

    ref, drv, _ = demo_inputs
    args = build_parser().parse_args(["reenact", "--reference", str(ref), "--driving", str(drv),
                                      "--out", str(tmp_path / "o.mp4"), "--quiet"])
    cache = tmp_path / "cache"
    cache.mkdir()
    first = _faces(ref, "image", 64, cache, args)
    (npz,) = cache.glob("faces-image-*.npz")
    good = npz.read_bytes()
    npz.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.warns(RuntimeWarning, match="unreadable.*recomputing"):
        again = _faces(ref, "image", 64, cache, args)
    assert not again["cached"] and np.array_equal(again["aligned"], first["aligned"])
    assert _faces(ref, "image", 64, cache, args)["cached"]  # rewritten whole

    d = dict(np.load(npz))
    d["points"] = d["points"] + 5.0  # well-formed but altered
    with open(npz, "wb") as f:
        np.savez(f, **d)
    with pytest.warns(RuntimeWarning, match="digest"):
        again = _faces(ref, "image", 64, cache, args)
    assert not again["cached"] and np.allclose(again["points"], first["points"])
