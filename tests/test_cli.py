"""The ``v2s-nb`` command line, run as a user runs it."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from v2s_nb.cli import parse_seeds


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "v2s_nb.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_python_dash_m_v2s_nb_is_the_command():
    r = subprocess.run([sys.executable, "-m", "v2s_nb", "reenact", "--help"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "--co-driving" in r.stdout


@pytest.mark.slow
def test_generate_tiny(tmp_path):
    out = tmp_path / "grid.png"
    r = run("generate", "--seeds", "0-3", "--out", str(out), "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "RANDOM-WEIGHT" in r.stderr
    img = np.asarray(Image.open(out))
    assert img.shape == (64 * 2 + 2, 64 * 2 + 2, 3) and img.std() > 5


@pytest.mark.slow
def test_generate_snapshot(tmp_path, sg3_fixture_dir):
    out = tmp_path / "grid.png"
    r = run("generate", "--network", str(sg3_fixture_dir / "t64" / "network.pkl"), "--seeds", "1,2,3",
            "--cols", "3", "--rotate", "10", "--out", str(out), "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "RANDOM" not in r.stderr
    assert np.asarray(Image.open(out)).shape == (64, 64 * 3 + 4, 3)


@pytest.mark.slow
def test_generate_bad_network(tmp_path):
    bad = tmp_path / "page.pkl"
    bad.write_text("<html>login</html>")
    r = run("generate", "--network", str(bad), "--out", str(tmp_path / "x.png"), "--device", "cpu")
    assert r.returncode == 2 and "HTML" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.png").exists()


def test_parse_seeds():
    assert parse_seeds("0-3,7,10-11") == [0, 1, 2, 3, 7, 10, 11]
    with pytest.raises(Exception):
        parse_seeds("5-2")


def test_saved_files_get_normal_permissions(tmp_path):
    """Atomic writes go through mkstemp (0600); finished files must get the usual umask-based mode."""
    import os

    from v2s_nb.atomic import current_umask
    from v2s_nb.images import save_image

    path = save_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8))
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~current_umask()
    # read without setting it where Linux shows it: setting it to 0 for a moment would give another thread's new
    # files a mask of 0
    if os.path.exists("/proc/self/status"):
        saved = os.umask(0o027)
        try:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(os, "umask", lambda mask: pytest.fail("current_umask set the umask"))
                assert current_umask() == 0o027
        finally:
            os.umask(saved)


def test_make_demo_inputs_remakes_files_of_other_frames_or_size(tmp_path):
    """Existing inputs are reused only when they have the frames and size asked for (they were skipped by name,
    so a second call with other settings returned the first call's clips)."""
    from v2s_nb.cli import make_demo_inputs
    from v2s_nb.video import read_video

    def shape(paths):
        ref, drv, co = paths
        return Image.open(ref).size, read_video(drv).frames.shape, read_video(co).frames.shape

    first = make_demo_inputs(tmp_path, frames=3, size=128)
    assert shape(first) == ((128, 128), (3, 128, 128, 3), (3, 128, 128, 3))
    stamps = [p.stat().st_mtime_ns for p in first]
    assert [p.stat().st_mtime_ns for p in make_demo_inputs(tmp_path, frames=3, size=128)] == stamps  # reused
    assert shape(make_demo_inputs(tmp_path, frames=5, size=128))[1:] == ((5, 128, 128, 3),) * 2
    assert shape(make_demo_inputs(tmp_path, frames=5, size=96)) == ((96, 96), (5, 96, 96, 3), (5, 96, 96, 3))
    (tmp_path / "driving.mp4").write_bytes(b"not a video")  # unreadable: made again, not an error
    assert shape(make_demo_inputs(tmp_path, frames=5, size=96))[1] == (5, 96, 96, 3)
