"""Video I/O: round trips, streaming memory, atomic writes, frame validation and bad files."""

from __future__ import annotations

import gc
import subprocess
import tracemalloc
import warnings
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from v2s_nb.video import (FrameFormatError, Video, VideoReadError, as_rgb_uint8, ffmpeg_exe, read_video,
                          show_video, show_videos, stream_video, video_info, write_video)
from v2s_nb.errors import V2SWarning
from v2s_nb.video import _passthrough, _stderr_tail, decode_errors


def smooth_pattern(t: int, h: int, w: int, phase: float = 0.0) -> np.ndarray:
    """Smooth moving colour gradient, float [t, h, w, 3] in [0, 1] (easy for a codec)."""
    y = np.linspace(0, 1, h)[None, :, None]
    x = np.linspace(0, 1, w)[None, None, :]
    k = (np.arange(t)[:, None, None] + phase) / 24.0
    r = 0.5 + 0.35 * np.sin(2 * np.pi * (x + k))
    g = 0.2 + 0.6 * y + 0 * k
    b = 0.5 + 0.3 * np.cos(2 * np.pi * (0.5 * x + y - k))
    return np.stack(np.broadcast_arrays(r, g, b), axis=-1)


# ------------------------------------------------------------------------------------------ round trip


def test_write_read_round_trip(tmp_path):
    frames = as_rgb_uint8(smooth_pattern(24, 96, 128))
    path = write_video(tmp_path / "clip.mp4", frames, fps=25)
    assert path.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temporary file left behind
    video = read_video(path)
    assert isinstance(video, Video)
    assert video.frames.dtype == np.uint8 and video.frames.shape == (24, 96, 128, 3)
    assert video.fps == pytest.approx(25.0)
    err = np.abs(video.frames.astype(np.int16) - frames.astype(np.int16))
    assert err.mean() < 3.0, err.mean()  # H.264 crf 18 + 4:2:0 chroma on a smooth pattern: ~2 levels
    info = video_info(path)
    assert (info.width, info.height, info.codec) == (128, 96, "h264")
    assert info.approx_frames == 24


@pytest.mark.parametrize("fps", [12, 29.97, 60])
def test_fps_kept(tmp_path, fps):
    path = write_video(tmp_path / "f.mp4", smooth_pattern(6, 32, 32), fps=fps, preset="ultrafast")
    v = read_video(path)
    assert len(v) == 6
    assert v.fps == pytest.approx(fps, rel=1e-3)


def test_video_value_and_write_method(tmp_path):
    v = Video(smooth_pattern(5, 32, 48), fps=10)  # float frames are converted on construction
    assert v.frames.dtype == np.uint8 and len(v) == 5 and v.size == (48, 32) and v.duration == 0.5
    assert isinstance(v[1:3], Video) and len(v[1:3]) == 2 and v[0].shape == (32, 48, 3)
    out = read_video(v.write(tmp_path / "v.mp4", preset="ultrafast"))
    assert len(out) == 5 and out.fps == pytest.approx(10)
    with pytest.raises(ValueError, match="fps"):
        Video(v.frames, fps=0)


def test_odd_sizes(tmp_path):
    frames = as_rgb_uint8(smooth_pattern(4, 33, 47))
    assert read_video(write_video(tmp_path / "pad.mp4", frames, 24)).frames.shape == (4, 34, 48, 3)
    assert read_video(write_video(tmp_path / "crop.mp4", frames, 24, odd_size="crop")).frames.shape == (4, 32, 46, 3)
    with pytest.raises(FrameFormatError, match="odd_size='pad'"):
        write_video(tmp_path / "err.mp4", frames, 24, odd_size="error")
    assert not (tmp_path / "err.mp4").exists()


# ------------------------------------------------------------------------------------------ streaming


def test_stream_chunks_equal_full_read(tmp_path):
    path = write_video(tmp_path / "s.mp4", smooth_pattern(23, 40, 64), fps=30, preset="ultrafast")
    with stream_video(path, chunk=5) as s:
        assert (s.width, s.height) == (64, 40) and s.fps == pytest.approx(30)
        chunks = list(s)
    assert [len(c) for c in chunks] == [5, 5, 5, 5, 3]
    assert all(c.dtype == np.uint8 and c.shape[1:] == (40, 64, 3) for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), read_video(path).frames)
    with pytest.raises(ValueError, match="chunk"):
        stream_video(path, chunk=0)


@pytest.mark.slow
def test_stream_memory_is_bounded(tmp_path):
    """600 frames of 320x240 are 138 MB decoded; streaming in chunks of 8 must peak at a few MB.

    Measured here: peak 3.95 MB of Python/numpy allocations (tracemalloc) while streaming, i.e. 2.9 % of
    the full clip (two chunks of 1.8 MB: the one held by the caller and the next being filled); the test
    allows 10 %.
    """
    t, h, w, chunk = 600, 240, 320, 8

    def frames():  # written chunk by chunk too, so writing is bounded as well
        for start in range(0, t, 50):
            yield as_rgb_uint8(smooth_pattern(50, h, w, phase=start))

    path = write_video(tmp_path / "long.mp4", frames(), fps=30, preset="ultrafast", crf=28)
    full_bytes = t * h * w * 3
    count = 0
    tracemalloc.start()
    try:
        with stream_video(path, chunk=chunk) as s:
            for c in s:
                count += len(c)
                assert c.mean() > 0
                del c
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == t
    print(f"streaming peak {peak / 1e6:.2f} MB for a {full_bytes / 1e6:.0f} MB clip ({100 * peak / full_bytes:.1f} %)")
    assert peak < 0.10 * full_bytes
    assert peak < 3 * chunk * h * w * 3 + 2_000_000


# ------------------------------------------------------------------------------------------ atomic writes


def test_failed_write_leaves_no_file_and_keeps_old(tmp_path):
    target = tmp_path / "out.mp4"
    write_video(target, smooth_pattern(3, 32, 32), 24, preset="ultrafast")
    before = target.read_bytes()

    def bad_frames():
        yield np.zeros((2, 32, 32, 3), np.uint8)
        yield np.zeros((2, 48, 48, 3), np.uint8)  # size changes mid-clip

    with pytest.raises(FrameFormatError, match="same size"):
        write_video(target, bad_frames(), 24)
    assert target.read_bytes() == before  # the old, complete file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]  # and the partial temp file is gone


def test_write_rejects_bad_arguments(tmp_path):
    f = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\.mp4"):
        write_video(tmp_path / "x.avi", f, 24)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "x.mp4", f, -1)
    with pytest.raises(FrameFormatError, match="no frames"):
        write_video(tmp_path / "x.mp4", iter([]), 24)
    with pytest.raises(FrameFormatError, match="empty"):
        write_video(tmp_path / "x.mp4", np.zeros((0, 16, 16, 3), np.uint8), 24)
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_unknown_preset(tmp_path):
    with pytest.raises(ValueError, match=r"preset.*ultrafast.*'nope'"):  # was ffmpeg's exit code, cause cut off
        write_video(tmp_path / "x.mp4", np.zeros((2, 16, 16, 3), np.uint8), 24, preset="nope")
    assert list(tmp_path.iterdir()) == []


def test_ffmpeg_error_message_keeps_the_cause():
    # x264 names the cause first; ffmpeg 7 then logs several lines that only say that a task failed
    r = subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-f", "lavfi", "-i",
                        "color=s=64x48:d=0.2", "-c:v", "libx264", "-preset", "nope", "-f", "null", "-"],
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert "invalid preset" in _stderr_tail(r.stderr)


def test_failed_write_closes_ffmpeg_stdin(tmp_path):
    def frames():
        yield np.zeros((2, 32, 32, 3), np.uint8)
        raise RuntimeError("camera unplugged")

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match="unplugged"):
            write_video(tmp_path / "x.mp4", frames(), 24, preset="ultrafast")
        gc.collect()  # an unclosed pipe warns when it is collected
    assert [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)] == []
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ frame formats


def test_grayscale_rgba_float_conversion():
    gray = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)
    rgb = as_rgb_uint8(gray)
    assert rgb.shape == (2, 4, 5, 3) and (rgb == gray[..., None]).all()
    np.testing.assert_array_equal(as_rgb_uint8(gray[..., None]), rgb)
    rgba = np.concatenate([rgb, np.full((2, 4, 5, 1), 7, np.uint8)], -1)
    np.testing.assert_array_equal(as_rgb_uint8(rgba), rgb)
    np.testing.assert_array_equal(as_rgb_uint8(rgb / 255.0), rgb)  # float [0, 1] -> exact uint8
    assert as_rgb_uint8(np.full((1, 2, 2, 3), 1.0 + 1e-4)).max() == 255  # tiny overshoot is clipped
    assert as_rgb_uint8(rgb.astype(np.int64)).dtype == np.uint8
    one = as_rgb_uint8(rgb[0], allow_single_image=True)
    assert one.shape == (1, 4, 5, 3)


def test_torch_tensor_frames():
    torch = pytest.importorskip("torch")
    x = torch.rand(2, 8, 8, 3, dtype=torch.float32)
    out = as_rgb_uint8(x)
    np.testing.assert_array_equal(out, np.rint(x.numpy() * 255).astype(np.uint8))


@pytest.mark.parametrize("frames, message", [
    (np.full((1, 4, 4, 3), 1.5), r"\[0, 1\]"),
    (np.full((1, 4, 4, 3), -0.5), r"\(frames \+ 1\) / 2"),
    (np.full((1, 4, 4, 3), 200.0), "frames / 255"),
    (np.full((1, 4, 4, 3), np.nan), "NaN"),
    (np.zeros((2, 3, 16, 16), np.uint8), "channel-first"),
    (np.zeros((2, 16, 16, 2), np.uint8), r"\[T, H, W, 3\]"),
    (np.full((1, 4, 4, 3), 300, np.int32), "0..255"),
    (np.zeros((1, 4, 4, 3), np.complex64), "dtype"),
    (np.zeros((64, 48, 3), np.uint8), r"one image .* frames\[None\]"),  # not a 64-frame clip 3 px wide
])
def test_bad_frames_give_clear_errors(frames, message):
    with pytest.raises(FrameFormatError, match=message):
        as_rgb_uint8(frames)


def test_channel_first_picture_is_refused_not_read_as_grey_frames(tmp_path):
    # [3, H, W] was read as a clip of 3 grey frames: one of its channels per frame, no error
    torch = pytest.importorskip("torch")
    rgb = (np.arange(16 * 24 * 3) % 251).astype(np.uint8).reshape(16, 24, 3)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    for x in (chw, chw.numpy(), chw.float() / 255, torch.cat([chw, chw[:1]])):
        for single in (True, False):
            with pytest.raises(FrameFormatError, match=r"ambiguous.*permute\(1, 2, 0\).*\[T, H, W, 1\]"):
                as_rgb_uint8(x, allow_single_image=single)
    with pytest.raises(FrameFormatError, match=r"to_uint8"):  # a generator image [3, H, W] in [-1, 1]
        as_rgb_uint8(chw.float() / 127.5 - 1, allow_single_image=True)
    with pytest.raises(FrameFormatError, match="ambiguous"):
        write_video(tmp_path / "x.mp4", [chw, chw], 10)
    assert list(tmp_path.iterdir()) == []
    np.testing.assert_array_equal(as_rgb_uint8(chw.permute(1, 2, 0), allow_single_image=True)[0], rgb)
    grey = rgb.transpose(2, 0, 1)  # 3 grey frames, said so with a channel axis; 5 frames need none
    np.testing.assert_array_equal(as_rgb_uint8(grey[..., None])[..., 0], grey)
    assert as_rgb_uint8(np.zeros((5, 16, 24), np.uint8)).shape == (5, 16, 24, 3)


def test_paths_and_ragged_frames_get_the_package_message(tmp_path):
    # ragged lists raised numpy's "setting an array element with a sequence"; a path said "got shape ()"
    import pathlib

    fr = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(FrameFormatError, match=r"different sizes.*\(32, 32, 3\), \(16, 32, 3\)"):
        as_rgb_uint8([fr[0], fr[1, :16]])
    for x in ("me.png", pathlib.Path("me.png"), ["a.png", "b.png"], [fr[0], pathlib.Path("b.png")]):
        with pytest.raises(FrameFormatError, match=r"read_image\(path\).*read_video\(path\)"):
            as_rgb_uint8(x, allow_single_image=True)
        with pytest.raises(FrameFormatError, match=r"read_image\(path\)"):
            write_video(tmp_path / "x.mp4", x, 10)
    with pytest.raises(FrameFormatError, match=r"got the path 'me\.png'"):
        as_rgb_uint8(pathlib.Path("me.png"))
    with pytest.raises(FrameFormatError, match=r"character '/'.*letter by letter"):  # a caller iterated a path
        as_rgb_uint8("/", name="frames (item 0)")
    with pytest.raises(FrameFormatError, match=r"got a NoneType, not frames"):
        as_rgb_uint8(None)
    assert list(tmp_path.iterdir()) == []


def test_write_fps_outside_what_ffmpeg_stores_is_refused(tmp_path):
    # 1e-5 failed in ffmpeg ("Not yet implemented"); near 1e-4 frames were silently dropped
    from v2s_nb.video import WRITE_FPS_RANGE

    f = np.zeros((3, 16, 16, 3), np.uint8)
    for fps in (1e-5, 1e-4, WRITE_FPS_RANGE[1] * 10):
        with pytest.raises(ValueError, match=r"fps must lie in \[0\.001, 100000\]"):
            write_video(tmp_path / "x.mp4", f, fps)
        with pytest.raises(ValueError, match=r"fps must lie in"):
            show_videos([f], fps=fps, return_html=True)
    with pytest.raises(ValueError, match=r"fps=1 / N"):
        Video(f, fps=1e-5).write(tmp_path / "x.mp4")  # a Video may hold it; writing it is refused
    assert list(tmp_path.iterdir()) == []
    assert len(read_video(write_video(tmp_path / "slow.mp4", f, WRITE_FPS_RANGE[0], preset="ultrafast"))) == 3


# ------------------------------------------------------------------------------------------ variable frame rate


def test_variable_frame_rate_reads_each_frame_once(tmp_path):
    """A phone-like clip: 90 frames at 30 fps, every 10th frame dropped by the camera (a gap of 2/30 s). ffmpeg's
    default resampling to the stream's 30 fps gave 99 frames (duplicates) at the 27.55 fps average rate."""
    path, exe = tmp_path / "vfr.mp4", ffmpeg_exe()
    subprocess.run([exe, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=30",
                    "-frames:v", "90", "-vf", "setpts='(N+floor(N/9))/30/TB'", _passthrough(exe)[0], "vfr",
                    "-video_track_timescale", "30000", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)],
                   check=True)
    info = video_info(path)
    v = read_video(path)
    assert len(v) == 90 and info.approx_frames == 90
    assert v.fps == info.fps and v.duration == pytest.approx(info.duration, abs=1 / v.fps)
    assert all(np.any(a != b) for a, b in zip(v.frames[:-1], v.frames[1:]))  # no frame repeated
    with stream_video(path, chunk=32) as s:
        assert sum(len(c) for c in s) == 90


# ------------------------------------------------------------------------------------------ rates and durations


def _lavfi_clip(path, rate: str, frames: int = 3, fmt: tuple = ("-c:v", "libx264", "-pix_fmt", "yuv420p")):
    """A clip of ``frames`` test-pattern frames at the exact rational ``rate`` (ffmpeg syntax, e.g. "24000/1001")."""
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc=size=64x48:rate={rate}", "-frames:v", str(frames), *fmt, str(path)], check=True)
    return path


@pytest.mark.parametrize("rate", ["24000/1001", "30000/1001", "60000/1001", "1/3", "1000", "2000"])
def test_rates_ffmpeg_prints_rounded_are_read_exactly(tmp_path, rate):
    """ffmpeg prints "23.98 fps" for 24000/1001, "0.33 fps" for 1/3 and "1k fps" for 1000 (which imageio-ffmpeg
    read as 0, and we then as 30 fps with a warning)."""
    path = _lavfi_clip(tmp_path / "r.mp4", rate)
    exact = float(Fraction(rate))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "assuming 30 fps"
        info = video_info(path)
        with stream_video(path) as s:
            assert s.fps == pytest.approx(exact, rel=0, abs=1e-6)
    assert info.fps == pytest.approx(exact, rel=0, abs=1e-6)
    assert info.duration == pytest.approx(3 / exact, abs=0.01)  # ffmpeg prints it to 0.01 s


@pytest.mark.parametrize("fps", [24000 / 1001, 30000 / 1001, 1 / 3, 1000])
def test_write_read_keeps_exact_rates(tmp_path, fps):
    path = write_video(tmp_path / "w.mp4", smooth_pattern(3, 32, 32), fps=fps, preset="ultrafast")
    v = read_video(path)
    assert len(v) == 3 and v.fps == pytest.approx(fps, rel=0, abs=1e-6)


def test_duration_of_100_hours_and_more(tmp_path):
    """ffmpeg prints "Duration: 150:00:00.00"; imageio-ffmpeg's pattern wants two-digit hours and gave 0."""
    path = _lavfi_clip(tmp_path / "long.mkv", "1/180000", fmt=("-c:v", "libx264"))  # 3 frames, 3 x 50 hours
    with pytest.warns(V2SWarning, match="assuming 30 fps"):  # Matroska gives no average rate here ("0.0000 tbr")
        info = video_info(path)
    assert info.duration == 540_000.0


@pytest.mark.parametrize("line, fps", [
    ("23.98 fps, 23.98 tbr, 24k tbn", 24000 / 1001), ("29.97 fps, 29.97 tbr, 30k tbn", 30000 / 1001),
    ("47.95 fps", 48000 / 1001), ("59.94 fps", 60000 / 1001), ("119.88 fps", 120000 / 1001),
    ("14.99 fps", 15000 / 1001), ("0.33 fps", 1 / 3), ("0.14 fps", 1 / 7), ("0.0042 fps", 0.0042),
    ("0.07 fps", 0.07),  # 1/14 and 1/15 both print "0.07": kept as printed
    ("1k fps, 1k tbr, 16k tbn", 1000), ("2k fps", 2000), ("100k fps", 100_000), ("1500 fps", 1500),
    ("25 fps, 25 tbr", 25), ("12.50 fps", 12.5), ("27.55 fps, 30 tbr", 27.55), ("0.0010 fps", 0.001),
    ("0.0000 fps, 0.0000 tbr", 0), ("25 tbr, 1k tbn", 0),
])
def test_rate_as_ffmpeg_prints_it(line, fps):
    from v2s_nb.video import _rate_and_duration

    text = f"  Stream #0:0[0x1](und): Video: h264 (High), yuv420p(progressive), 64x48 [SAR 1:1 DAR 4:3], 9 kb/s, {line}"
    assert _rate_and_duration(text)[0] == pytest.approx(fps, rel=0, abs=1e-9)


@pytest.mark.parametrize("line, seconds", [
    ("00:00:01.00, start: 0.000000", 1.0), ("99:59:59.99, start: 0", 359_999.99),
    ("100:00:00.00, start: 0.000000, bitrate: N/A", 360_000.0), ("1234:05:06.07", 4_442_706.07),
    ("N/A, bitrate: N/A", 0),
])
def test_duration_as_ffmpeg_prints_it(line, seconds):
    from v2s_nb.video import _rate_and_duration

    assert _rate_and_duration(f"  Duration: {line}\n")[1] == pytest.approx(seconds, abs=1e-9)


# ------------------------------------------------------------------------------------------ bad files


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.mp4"
    for fn in (read_video, stream_video, video_info):
        with pytest.raises(FileNotFoundError, match="nope.mp4"):
            fn(missing)


def test_corrupt_file(tmp_path):
    bad = tmp_path / "random.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoReadError, match="random.mp4") as info:
        read_video(bad)
    assert isinstance(info.value, ValueError)
    with pytest.raises(VideoReadError, match="random.mp4"):
        stream_video(bad)


def test_zero_frame_video(tmp_path):
    empty = tmp_path / "empty.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "color=c=black:s=64x64:r=25:d=1", "-frames:v", "0", "-c:v", "libx264", str(empty)], check=True)
    assert empty.exists()
    with pytest.raises(VideoReadError, match="empty.mp4"):
        read_video(empty)


def test_truncated_file(tmp_path):
    path = write_video(tmp_path / "t.mp4", smooth_pattern(30, 64, 64), 25, preset="ultrafast")
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    # a truncated file either decodes its first frames or fails with a clear error; never a crash
    try:
        v = read_video(cut)
    except VideoReadError as err:
        assert "cut.mp4" in str(err)
    else:
        assert 0 < len(v) <= 30


# ------------------------------------------------------------------------------------------ showing


def test_show_videos_html():
    a = Video(smooth_pattern(4, 33, 47), fps=8)  # odd size is padded for display
    html = show_videos({"a": a, "b": np.zeros((5, 20, 30), np.uint8)}, return_html=True)  # [3, H, W] is ambiguous
    assert html.count("<video") == 2 and "a" in html
    assert show_video(a, title="one", return_html=True).count("<video") == 1
    with pytest.raises(FrameFormatError):
        show_videos([np.full((2, 8, 8, 3), 2.0)], return_html=True)


def test_rotated_video_reads_upright_without_imageio_note(tmp_path, capfd, caplog):
    """A phone video with rotation metadata: frames come upright (ffmpeg applies the rotation), and imageio-ffmpeg's
    note "The frame size for reading ... is different from the source frame size" is not passed on."""
    src = write_video(tmp_path / "landscape.mp4", smooth_pattern(3, 48, 64), fps=10, preset="ultrafast")
    rotated = tmp_path / "phone.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-display_rotation", "90", "-i",
                    str(src), "-c", "copy", str(rotated)], check=True)
    capfd.readouterr()
    with caplog.at_level("DEBUG"):
        info = video_info(rotated)
        frames = read_video(rotated)
    assert (info.width, info.height) == (48, 64) and frames.frames.shape[1:3] == (64, 48)
    out, err = capfd.readouterr()
    assert "different from the source frame size" not in out + err + caplog.text


# ------------------------------------------------------------------------------------------ the user's own files


def _ffmpeg(*args):
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *map(str, args)], check=True)


def test_names_ffmpeg_would_take_for_a_protocol_or_stdin(tmp_path, monkeypatch):
    """A relative "take1:2.mp4" failed ("Protocol not found"); "pipe:0.mp4" and "-" were read from ffmpeg's
    standard input (nothing: "could not read as a video")."""
    src = _lavfi_clip(tmp_path / "src.mp4", "10")
    monkeypatch.chdir(tmp_path)
    for name in ("take1:2.mp4", "pipe:0.mp4", "-", "-clip.mp4", "my clip é.mp4"):
        (tmp_path / name).write_bytes(src.read_bytes())
        assert len(read_video(name)) == 3 and video_info(name).fps == 10
        assert decode_errors(name) == []


def test_several_video_streams_frames_and_rate_of_one_stream(tmp_path):
    """Frames came from the stream ffmpeg picks (the default one, 30 fps) and the rate from the first (15 fps)."""
    path = tmp_path / "two.mkv"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=32x24:rate=15", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=30",
            "-map", "0:v", "-map", "1:v", "-t", 1, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-disposition:v:0", 0,
            "-disposition:v:1", "default", path)
    v, info = read_video(path), video_info(path)
    assert (info.width, info.height, info.fps, info.approx_frames) == (64, 48, 30, 30)
    assert v.frames.shape == (30, 48, 64, 3) and v.fps == 30


def test_cover_picture_is_no_video(tmp_path):
    """A song with cover art read as a one-frame video "at 30 fps"; a clip's thumbnail is passed over."""
    cover = tmp_path / "cover.png"
    Image.fromarray(np.full((80, 80, 3), 200, np.uint8)).save(cover)
    song, clip = tmp_path / "song.m4a", _lavfi_clip(tmp_path / "clip.mp4", "10")
    _ffmpeg("-f", "lavfi", "-i", "sine=d=1", "-i", cover, "-map", "0:a", "-map", "1:v", "-c:a", "aac", "-c:v", "mjpeg",
            "-disposition:v", "attached_pic", song)
    for fn in (read_video, video_info, stream_video):
        with pytest.raises(VideoReadError, match=r"song\.m4a' has no video stream.*cover picture"):
            fn(song)
    thumb = tmp_path / "thumb.mp4"
    _ffmpeg("-i", clip, "-i", cover, "-map", 0, "-map", 1, "-c:v:0", "copy", "-c:v:1", "mjpeg",
            "-disposition:v:1", "attached_pic", thumb)
    assert read_video(thumb).frames.shape == (3, 48, 64, 3) and video_info(thumb).codec == "h264"


def test_non_square_pixels_are_made_square(tmp_path):
    """An anamorphic clip (sample aspect ratio 2:1, as a player stretches it to 128x48) was read squeezed, 64x48."""
    path = tmp_path / "anamorphic.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-frames:v", 3, "-vf", "setsar=2", "-c:v", "libx264",
            "-pix_fmt", "yuv420p", path)
    tall = tmp_path / "tall.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-frames:v", 3, "-vf", "setsar=1/2", "-c:v", "libx264",
            "-pix_fmt", "yuv420p", tall)
    assert read_video(path).frames.shape == (3, 48, 128, 3) and video_info(path).width == 128
    assert read_video(tall).frames.shape == (3, 96, 64, 3)
    with stream_video(path) as s:
        assert (s.width, s.height) == (128, 48)


def test_codec_names_without_punctuation(tmp_path):
    """ffmpeg lists "Video: gif, bgra, ...": the codec read as "gif,"."""
    gif = tmp_path / "clip.gif"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-frames:v", 3, gif)
    assert video_info(gif).codec == "gif" and len(read_video(gif)) == 3


def test_animated_webp_is_named(tmp_path):
    """ffmpeg 7 can't decode animated WebP: "Could not read ... (corrupt file, or not a video)" for a good file."""
    path = tmp_path / "sticker.webp"
    frames = [Image.fromarray(np.full((32, 32, 3), c, np.uint8)) for c in (0, 128, 255)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    try:
        v = read_video(path)
    except VideoReadError as err:
        assert "animated WebP" in str(err) and "corrupt" not in str(err)
    else:  # an ffmpeg that decodes it
        assert len(v) == 3


def test_transparency_is_put_over_white(tmp_path):
    """rgb24 decoding dropped alpha raw: a fully transparent red frame (PNG in MOV, a GIF's transparent colour)
    read as solid red; pictures (read_image) put transparency over white."""
    from v2s_nb.video import _pixel_format

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (24, 32, 4), dtype=np.uint8)
    rgba[:, :8, 3], rgba[:, 8:16, 3] = 0, 255
    Image.fromarray(rgba).save(tmp_path / "f.png")
    mov = tmp_path / "alpha.mov"
    _ffmpeg("-i", tmp_path / "f.png", "-c:v", "png", mov)
    got = read_video(mov).frames[0].astype(float)
    a = rgba[..., 3:] / 255.0
    want = rgba[..., :3] * a + 255 * (1 - a)
    assert np.abs(got - want).max() <= 2 and (got[:, :8] == 255).all()
    assert np.array_equal(got[:, 8:16], rgba[:, 8:16, :3])  # opaque pixels keep their values exactly
    pal = np.zeros((24, 32), np.uint8)
    pal[:, 16:] = 1  # palette entry 0 (red) is the transparent one, 1 is blue
    frames = [Image.fromarray(pal, "P") for _ in range(2)]
    for f in frames:
        f.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    frames[0].save(tmp_path / "clear.gif", save_all=True, append_images=frames[1:], transparency=0, duration=100,
                   disposal=2)
    gif = read_video(tmp_path / "clear.gif").frames
    assert (gif[:, :, :16] == 255).all() and (gif[:, :, 16:] == [0, 0, 255]).all()
    assert _pixel_format("  Stream #0:0[0x1]: Video: png (png  / 0x20676E70), rgba(pc, gbr/unknown/unknown, "
                         "progressive), 32x24 [SAR 1:1 DAR 4:3], 10 fps (default)") == "rgba"
    assert _pixel_format("  Stream #0:0: Video: h264 (High) (avc1 / 0x31637661), yuv420p(progressive), 64x48") \
        == "yuv420p"
    assert _pixel_format("  Stream #0:0: Video: gif, bgra, 32x24, 10 fps") == "bgra"
