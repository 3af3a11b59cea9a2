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
    """Files under ``folder`` that are not hidden temporaries, outside ``*.v2s`` intermediates folders (whose
    complete entries a rerun reuses)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
            and not any(part.endswith(".v2s") for part in p.relative_to(folder).parts)}


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


@pytest.mark.slow
def test_reenact_resumes_inversion_after_sigkill(demo_inputs, tmp_path):
    """Kill the CLI (SIGKILL) once the first inversion batch is saved; the rerun reuses it (its files are not
    rewritten) and finishes."""
    import signal
    import time

    ref, drv, _ = demo_inputs  # 4 frames: 2 batches of 2
    out = tmp_path / "r.mp4"
    argv = ["reenact", "--reference", ref, "--driving", drv, "--out", out, "--invert-batch", "2",
            # few steps for the reference and the first batch, more for the second: the kill lands inside it
            "--invert-steps", "4", "--invert-steps-next", "40", "--device", "cpu", "--quiet", "--pose-from", "none"]
    batches = tmp_path / "r.mp4.v2s" / "inversions" / "batches" / "driving"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "v2s_nb.cli", *map(str, argv)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(batches.glob("*/frames_*.json")):  # one folder per clip
        assert proc.poll() is None, f"the run ended before any batch was saved: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no inversion batch saved within 240 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = sorted(batches.glob("*/frames_*"))
    assert len(done) == 2 and not out.exists()  # one batch (.json + .npy), no output
    stamps = {p.name: p.stat().st_mtime_ns for p in done}
    r = run_cli(*argv)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in done} == stamps  # reused, not recomputed
    assert len(list(batches.glob("*/frames_*.json"))) == 2 and len(read_video(out)) == 4


def test_truncated_or_altered_faces_cache_is_recomputed(demo_inputs, tmp_path):
    from v2s_nb.prepare import face_clip

    ref, drv, _ = demo_inputs
    cache = tmp_path / "cache"
    cache.mkdir()

    first = face_clip(ref, "image", 64, cache=cache, progress=False)
    (npz,) = cache.glob("faces-image-*.npz")
    good = npz.read_bytes()
    npz.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.warns(RuntimeWarning, match="unreadable.*recomputing"):
        again = face_clip(ref, "image", 64, cache=cache, progress=False)
    assert not again.cached and np.array_equal(again.aligned, first.aligned)
    assert face_clip(ref, "image", 64, cache=cache, progress=False).cached  # rewritten whole

    d = dict(np.load(npz))
    d["points"] = d["points"] + 5.0  # well-formed but altered
    with open(npz, "wb") as f:
        np.savez(f, **d)
    with pytest.warns(RuntimeWarning, match="digest"):
        again = face_clip(ref, "image", 64, cache=cache, progress=False)
    assert not again.cached and np.allclose(again.points, first.points)


# ------------------------------------------------------------------------------------ media


def _two_colour(h=20, w=30):
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[: h // 2] = [200, 30, 40]
    rgb[h // 2:] = [10, 120, 250]
    return rgb


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    from PIL import Image

    from v2s_nb.images import read_image

    rgb = _two_colour()
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    got = read_image(tmp_path / "c.jpg")
    assert got.shape == rgb.shape and np.abs(got.astype(int) - rgb).max() <= 4


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    from v2s_nb.images import read_image

    stored = np.zeros((20, 30, 3), np.uint8)
    stored[:4, :4] = 255  # white mark top-left as stored
    ex = Image.Exif()
    ex[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "o.png", exif=ex)
    got = read_image(tmp_path / "o.png")
    assert got.shape == (30, 20, 3)
    assert got[:4, -4:].min() == 255 and got[:4, :4].max() == 0  # the mark is now top-right


def test_16bit_and_palette_with_transparency(tmp_path):
    from PIL import Image

    from v2s_nb.images import read_image

    g = np.full((8, 8), 65535, np.uint16)
    g[:4] = 32896  # 128 * 257
    Image.fromarray(g).save(tmp_path / "g16.png")
    got = read_image(tmp_path / "g16.png")
    assert got.shape == (8, 8, 3) and got[0, 0].tolist() == [128] * 3 and got[-1, -1].tolist() == [255] * 3

    p = Image.new("P", (8, 8))
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    p.paste(1, (0, 0, 8, 4))  # top half palette index 1 (red), bottom half index 0 (black, made transparent)
    p.save(tmp_path / "p.png", transparency=0)
    got = read_image(tmp_path / "p.png")
    assert got[0, 0].tolist() == [255, 0, 0] and got[-1, -1].tolist() == [255, 255, 255]


def test_a_photo_past_pillows_pixel_limit_says_so(tmp_path, monkeypatch):
    """Pillow's DecompressionBombError was reported as 'a bug in v2s-nb' (a 200 MP phone photo, say)."""
    from PIL import Image

    from v2s_nb.images import ImageReadError, read_image

    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: more than twice the limit
    with pytest.raises(ImageReadError, match=r"big\.png is too large to read safely \(0\.0041 MP; .*downscale it"):
        read_image(tmp_path / "big.png")


# ------------------------------------------------------------------------------------ the table of bad inputs


def _make(kind: str, folder: Path, demo, sg3) -> str:
    """Materialise one bad (or good) input named in the table; returns its path."""
    import torch
    from PIL import Image

    from v2s_nb.stylegan3 import save_generator, tiny_generator

    ref, drv, _ = demo
    p = folder / kind
    if kind == "ref.png":
        return str(ref)
    if kind == "drv.mp4":
        return str(drv)
    if kind == "empty.png":
        p.write_bytes(b"")
    elif kind == "text.png":
        p.write_text("not a picture")
    elif kind == "truncated.png":
        data = Path(ref).read_bytes()
        p.write_bytes(data[: len(data) // 3])
    elif kind == "dir":
        p.mkdir()
        return str(p)
    elif kind == "readonly/out.png" or kind == "readonly/out.mp4":
        return str(_read_only_folder(folder) / Path(kind).name)
    elif kind == "page.pkl":
        p.write_text("<!DOCTYPE html><html><body>sign in</body></html>")
    elif kind == "half.pkl":
        data = (sg3 / "t64" / "network.pkl").read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "nan.safetensors":
        G = tiny_generator("R")
        with torch.no_grad():
            next(G.parameters()).view(-1)[0] = float("nan")
        save_generator(G, p)
    elif kind == "damaged.mp4":
        data = bytearray(Path(drv).read_bytes())
        for i in range(len(data) // 3, len(data) // 3 + 3000, 7):
            data[i] ^= 0x5A
        p.write_bytes(bytes(data))
    elif kind == "broken.mp4":
        data = Path(drv).read_bytes()
        p.write_bytes(data[:200])
    else:
        raise KeyError(kind)
    return str(p)


OUT_PNG, OUT_MP4 = "@out.png", "@out.mp4"

# (argv with {placeholders} for made inputs, text the error line must contain)
TABLE = [
    (["generate", "--trunc", "nan", "--out", OUT_PNG], "--trunc must be a finite number"),
    (["generate", "--rotate", "nan", "--out", OUT_PNG], "--rotate must be a finite number"),
    (["generate", "--translate", "inf", "0", "--out", OUT_PNG], "--translate must be a finite number"),
    (["generate", "--translate", "0", "1e6", "--out", OUT_PNG], "out of range"),
    (["generate", "--seeds", "5-2", "--out", OUT_PNG], "a <= b"),
    (["generate", "--seeds", "0-20000000", "--out", OUT_PNG], "too many seeds"),
    (["generate", "--seeds", "-3", "--out", OUT_PNG], "out of range"),
    (["generate", "--seeds", "x", "--out", OUT_PNG], "bad seed"),
    (["generate", "--batch", "0", "--out", OUT_PNG], "--batch = 0 is out of range"),
    (["generate", "--tiny-resolution", "1000000", "--out", OUT_PNG], "--tiny-resolution"),
    (["generate", "--out", "{dir}"], "is a folder"),
    (["generate", "--out", "{readonly/out.png}"], "not writable"),
    (["generate", "--out", "@out.txt"], "wrong extension"),
    (["generate", "--network", "{page.pkl}", "--out", OUT_PNG], "HTML"),
    (["generate", "--network", "{half.pkl}", "--out", OUT_PNG], "truncated"),
    (["generate", "--network", "{nan.safetensors}", "--out", OUT_PNG], "NaN / infinite"),
    (["reenact", "--reference", "{ref.png}", "--driving", "{drv.mp4}", "--t-fg", "nan", "--out", OUT_MP4],
     "--t-fg must be a finite number"),
    (["reenact", "--reference", "{ref.png}", "--driving", "{drv.mp4}", "--layers", "0-100000000", "--out", OUT_MP4],
     "out of range"),
    (["reenact", "--reference", "{ref.png}", "--driving", "{drv.mp4}", "--layers", "5-2", "--out", OUT_MP4],
     "bad layer range"),
    (["reenact", "--reference", "{ref.png}", "--driving", "{drv.mp4}", "--layers", "3-20", "--out", OUT_MP4],
     "w+ rows"),
    (["reenact", "--reference", "{ref.png}", "--driving", "{drv.mp4}", "--invert-steps", "0", "--out", OUT_MP4],
     "--invert-steps = 0 is out of range"),
    (["reenact", "--reference", "{ref.png}", "--driving", "{drv.mp4}", "--upsample", "9", "--out", OUT_MP4],
     "--upsample"),
    (["reenact", "--reference", "{ref.png}", "--driving", "{drv.mp4}", "--alpha", "inf", "--out", OUT_MP4], "finite"),
    (["reenact", "--reference", "{ref.png}", "--driving", "{drv.mp4}", "--out", "{drv.mp4}"], "is the input file"),
    (["reenact", "--reference", "{ref.png}", "--driving", "{drv.mp4}", "--out", "{dir}"], "is a folder"),
    (["reenact", "--reference", "{ref.png}", "--driving", "{drv.mp4}", "--out", "{readonly/out.mp4}"], "not writable"),
    (["reenact", "--reference", "{ref.png}", "--driving", "{drv.mp4}", "--out", "@out.gif"], "wrong extension"),
    (["reenact", "--reference", "{empty.png}", "--driving", "{drv.mp4}", "--out", OUT_MP4], "empty file"),
    (["reenact", "--reference", "{text.png}", "--driving", "{drv.mp4}", "--out", OUT_MP4], "not an image"),
    (["reenact", "--reference", "{truncated.png}", "--driving", "{drv.mp4}", "--out", OUT_MP4], "truncated"),
    (["reenact", "--reference", "{ref.png}", "--driving", "{broken.mp4}", "--out", OUT_MP4], "video"),
    (["reenact", "--reference", "{ref.png}", "--driving", "{damaged.mp4}", "--strict", "--out", OUT_MP4],
     "decoding error"),
    (["weights", "clear", "no-such-weights"], "unknown weight name"),
]


@pytest.mark.parametrize("argv, expect", TABLE, ids=[" ".join(a[:3]) + " " + e[:20] for a, e in TABLE])
def test_bad_input_gives_one_line_and_leaves_nothing(argv, expect, demo_inputs, sg3_fixture_dir, tmp_path,
                                                     monkeypatch, capsys):
    import re

    monkeypatch.setenv("V2S_NB_CACHE", str(tmp_path / "cache"))
    inputs = tmp_path / "in"
    inputs.mkdir()
    outdir = tmp_path / "o"
    outdir.mkdir()
    made = {}

    def fill(a):
        if a.startswith("@"):
            return str(outdir / a[1:])
        return re.sub(r"\{([^}]+)\}", lambda m: made.setdefault(m.group(1), _make(m.group(1), inputs, demo_inputs,
                                                                                    sg3_fixture_dir)), a)

    args = [fill(a) for a in argv] + (["--device", "cpu", "--quiet"] if argv[0] != "weights" else [])
    if argv[0] == "reenact":
        args += ["--invert-steps-next", "1"] + ([] if "--invert-steps" in argv else ["--invert-steps", "1"])
    before = {p: Path(p).read_bytes() for p in made.values() if Path(p).is_file()}
    try:
        rc = main(args)
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2, err
    assert len(errors) == 1 and expect in errors[0], err
    assert "Traceback" not in err
    assert _finals(outdir) == set()  # nothing under a final name (intermediates folder aside)
    assert {p: Path(p).read_bytes() for p in before} == before  # inputs untouched


def _corrupt_video(tmp_path) -> tuple[Path, Path]:
    from v2s_nb.video import write_video

    rng = np.random.default_rng(0)
    frames = np.cumsum((rng.random((30, 64, 64, 3)) * 255).astype(np.uint8), axis=1).astype(np.uint8)
    good = write_video(tmp_path / "good.mp4", frames, fps=10)
    data = bytearray(good.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 4000, 7):  # damage the middle of the stream, keep the header
        data[i] ^= 0x5A
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    return good, bad


def test_decoding_errors_are_warned_with_frames_or_refused_when_strict(tmp_path):
    import warnings

    from v2s_nb.video import CorruptFramesWarning, VideoReadError, decode_errors, read_video

    good, bad = _corrupt_video(tmp_path)
    assert decode_errors(good) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptFramesWarning)
        assert len(read_video(good, check=True)) == 30
    errs = decode_errors(bad)
    assert errs and all(0 <= f <= 30 for f, _ in errs)
    with pytest.warns(CorruptFramesWarning, match=r"near frame\(s\) \[\d+"):
        read_video(bad, check=True)
    with pytest.raises(VideoReadError, match="decoding error"):
        read_video(bad, strict=True)


@pytest.mark.slow
def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    import signal
    import time

    out = tmp_path / "grid.png"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-u", "-m", "v2s_nb.cli", "generate", "--seeds", "0-4095", "--batch",
                             "1", "--out", str(out), "--device", "cpu", "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()  # the random-generator note: printed once the command runs
    assert "RANDOM-WEIGHT" in first, first
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130
    assert "Traceback" not in rest and len(rest.strip().splitlines()) == 1 and "interrupted" in rest
    assert not out.exists() and _finals(tmp_path) == set()
