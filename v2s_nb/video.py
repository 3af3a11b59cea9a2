"""Reading, streaming, writing and showing videos.

Every frame array in v2s_nb is **uint8 RGB, shape [T, H, W, 3]** (T frames, H rows, W columns) together
with a frame rate in frames per second. :func:`as_rgb_uint8` is the one place that turns what users hand
us (grayscale, RGBA, float in [0, 1], torch tensors on any device) into that form; the face tools use it
too.

Decoding and encoding go through an ``ffmpeg`` binary: the one on ``PATH`` if there is one, else the one
bundled with ``imageio-ffmpeg``. Files are written as MP4 / H.264 / yuv420p, the format every browser and
player plays, and they are written atomically: the encoder writes a hidden temporary file in the target
folder, which is renamed onto the target name only once it is complete. Decoded frames are what a player shows:
rotation metadata applied, non-square pixels made square, frames with transparency put over white (as
:func:`v2s_nb.images.read_image` does with pictures), of several video streams the default one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import re
import os
import shutil
import subprocess
import tempfile
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence, Union

import numpy as np

from .atomic import atomic_path
from .errors import V2SError, V2SWarning
from .progress import progress_bar

__all__ = [
    "Video",
    "VideoReadError",
    "CorruptFramesWarning",
    "decode_errors",
    "report_decode_errors",
    "VideoWriteError",
    "FrameFormatError",
    "VideoInfo",
    "VideoStream",
    "as_rgb_uint8",
    "ffmpeg_exe",
    "read_video",
    "stream_video",
    "video_info",
    "write_video",
    "show_video",
    "show_videos",
]

PathLike = Union[str, os.PathLike]

#: Float frames may stray this far outside [0, 1] (rounding in resampling or a generator) and are clipped.
FLOAT_TOLERANCE = 1e-3


class FrameFormatError(V2SError, ValueError):
    """Frames that cannot be read as RGB images (wrong shape, dtype or value range)."""


class VideoReadError(V2SError, ValueError):
    """A file that exists but cannot be decoded as a video (corrupt, not a video, or no frames)."""


class VideoWriteError(V2SError, RuntimeError):
    """The encoder failed while writing a video file."""


# ----------------------------------------------------------------------------------------------- frames


_READ_FIRST = ("read the file first: v2s_nb.images.read_image(path) for a picture, v2s_nb.video.read_video(path) "
               "for a clip")


def _to_numpy(x, name: str = "frames") -> np.ndarray:
    """numpy view of ``x``; torch tensors on any device are detached and copied to host memory. A file path, or
    frames of different sizes, raise :class:`FrameFormatError` saying so."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    if isinstance(x, str) and len(x) == 1:  # a caller iterated a path given as frames
        raise FrameFormatError(f"{name}: got the character {x!r} where pixel frames are wanted (a file path given "
                               f"as frames is taken letter by letter); {_READ_FIRST}.")
    if isinstance(x, (str, os.PathLike)):
        raise FrameFormatError(f"{name}: got the path {os.fspath(x)!r} where pixel frames are wanted; {_READ_FIRST}.")
    paths = isinstance(x, (list, tuple)) and any(isinstance(v, (str, os.PathLike)) for v in x)
    try:
        arr = np.asarray(x) if not paths else np.empty(0, dtype=object)
    except ValueError as err:  # numpy >= 1.24 refuses ragged nesting instead of making an object array
        if "inhomogeneous" not in str(err) and "sequence" not in str(err):
            raise
        arr = np.empty(1, dtype=object)
    if paths or arr.dtype.kind in "US" or (arr.dtype == object and any(isinstance(v, (str, os.PathLike))
                                                                       for v in arr.flat)):
        raise FrameFormatError(f"{name}: got text or paths where pixel frames are wanted; {_READ_FIRST}, "
                               "one file at a time.")
    if arr.dtype == object and arr.ndim == 0:
        raise FrameFormatError(f"{name}: got a {type(x).__name__}, not frames; give a numpy array or torch tensor "
                               "[T, H, W, 3] (or a list of frames [H, W, 3]).")
    if arr.dtype == object:
        sizes = _item_shapes(x)
        raise FrameFormatError(f"{name}: frames of different sizes can't form one clip"
                               f"{' (shapes ' + ', '.join(sizes) + ')' if sizes else ''}; give frames that all "
                               "have the same height and width (resize them), or pass them as separate clips.")
    return arr


def _item_shapes(x, most: int = 4) -> list[str]:
    """The distinct shapes of the items of a sequence (up to ``most``), for a message; [] when unknown."""
    try:
        shapes = list(dict.fromkeys(str(tuple(np.shape(v))) for v in x))
    except (TypeError, ValueError):
        return []
    return shapes[:most] + (["..."] if len(shapes) > most else [])


def ambiguous_channel_first(shape) -> bool:
    """Whether a 3-d shape could be one channel-first picture [C, H, W] as well as C grey pictures [N, H, W]:
    first axis 3 or 4, last axis not a channel count. Callers refuse such input rather than guess, since the
    wrong guess splits one picture into grey ones."""
    return len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (1, 3, 4)


def as_rgb_uint8(frames, *, allow_single_image: bool = False, name: str = "frames") -> np.ndarray:
    """Validate frames and convert them to uint8 RGB, shape [T, H, W, 3].

    Accepted input (numpy array, nested sequence or torch tensor on any device):

    * shape [T, H, W, 3] (RGB), [T, H, W, 4] (RGBA: alpha is dropped), [T, H, W, 1] or [T, H, W]
      (grayscale: replicated to three channels);
    * with ``allow_single_image=True`` also one image [H, W, 3], [H, W, 4] or [H, W] (returned with T = 1).
      A 3-d array whose last axis has length 3 or 4 is then read as one image, any other 3-d array as a
      grayscale clip;
    * a 3-d array [3 or 4, H, W] (W not 1, 3 or 4) is refused: it could be one channel-first picture
      [C, H, W] or 3 or 4 grey frames (see :func:`ambiguous_channel_first`); give a grey clip of 3 or 4
      frames as [T, H, W, 1];
    * dtype uint8 (kept), any other integer type with values in 0..255, bool (True = 255), or float with
      values in [0, 1] (values up to ``FLOAT_TOLERANCE`` outside are clipped; the result is
      ``round(255 * x)``).

    Anything else raises :class:`FrameFormatError` whose message names the problem and the fix (channel-first
    tensors, floats in [-1, 1] or [0, 255], NaN, empty arrays...). The result is C-contiguous; it shares
    memory with the input only when the input already was contiguous uint8 RGB.
    """
    if isinstance(frames, Video):
        return frames.frames
    arr = _to_numpy(frames, name)
    shape = arr.shape
    if ambiguous_channel_first(shape):  # reading it as grey frames would split one picture into its channels
        gen = arr.dtype.kind == "f" and arr.size and float(np.nanmin(arr)) < -FLOAT_TOLERANCE
        raise FrameFormatError(
            f"{name}: shape {tuple(shape)} is ambiguous: one channel-first picture [C, H, W] or {shape[0]} grey "
            "frames [T, H, W]; v2s_nb wants channel-last: " + (
                "these look like generator images in [-1, 1]: pass v2s_nb.images.to_uint8(x){one} for one picture"
                if gen else "for one picture pass x.permute(1, 2, 0){one} (torch) or x.transpose(1, 2, 0){one} "
                            "(numpy)").format(one="" if allow_single_image else "[None]")
            + f"; for {shape[0]} grey frames pass x[..., None] ([T, H, W, 1]).")
    if allow_single_image and (arr.ndim == 2 or (arr.ndim == 3 and shape[-1] in (3, 4))):
        arr = arr[None]
    if arr.ndim == 4 and shape[-1] not in (1, 3, 4) and arr.shape[1] in (1, 3, 4):
        gen = arr.dtype.kind == "f" and arr.size and float(np.nanmin(arr)) < -FLOAT_TOLERANCE
        raise FrameFormatError(
            f"{name}: shape {tuple(shape)} looks channel-first [T, C, H, W]; v2s_nb wants channel-last "
            "[T, H, W, C]: " + ("these look like generator images in [-1, 1]: pass v2s_nb.images.to_uint8(x)."
                                if gen else "pass frames.permute(0, 2, 3, 1) (torch) or frames.transpose(0, 2, 3, "
                                            "1) (numpy)."))
    if arr.ndim == 3 and shape[-1] in (3, 4):  # (allow_single_image is off here) no clip is 3 or 4 pixels wide
        raise FrameFormatError(f"{name}: shape {tuple(shape)} looks like one image [H, W, {shape[-1]}]; a clip is "
                               f"[T, H, W, 3]: pass frames[None] for a clip of one frame.")
    if arr.ndim == 3:  # grayscale clip [T, H, W]
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        want = "[T, H, W, 3] (or [H, W, 3] for one image)" if allow_single_image else "[T, H, W, 3]"
        raise FrameFormatError(f"{name}: expected {want} RGB frames (RGBA and grayscale are also accepted), "
                               f"got shape {tuple(shape)}.")
    if min(arr.shape[:3]) == 0:
        raise FrameFormatError(f"{name}: empty array of shape {tuple(shape)}; give at least one frame of at "
                               "least 1x1 pixels.")
    if arr.shape[-1] == 4:
        arr = arr[..., :3]

    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * np.uint8(255)
    elif np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise FrameFormatError(
                f"{name}: integer frames must lie in 0..255, got values in [{lo}, {hi}] (dtype {arr.dtype}); "
                "rescale them (e.g. 16-bit: (frames >> 8).astype(np.uint8)).")
        out = arr.astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise FrameFormatError(f"{name}: float frames contain NaN or infinity; replace them first "
                                   "(e.g. np.nan_to_num(frames)).")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -FLOAT_TOLERANCE or hi > 1.0 + FLOAT_TOLERANCE:
            if lo >= -1.0 - FLOAT_TOLERANCE and lo < -FLOAT_TOLERANCE and hi <= 1.0 + FLOAT_TOLERANCE:
                fix = "these look like generator output in [-1, 1]: pass (frames + 1) / 2"
            elif lo >= -0.1 and hi <= 1.1:  # a slight overshoot (generator output): rescaling would change contrast
                fix = ("these look like pictures in [0, 1] that overshoot slightly (e.g. StyleGAN output); clip "
                       "them: np.clip(frames, 0, 1) (torch: frames.clamp(0, 1))")
            elif hi <= 255.0 + FLOAT_TOLERANCE and lo >= -FLOAT_TOLERANCE:
                fix = "these look like 0..255 values: pass frames / 255 or frames.astype(np.uint8)"
            elif lo >= -1.2 and hi <= 1.2:
                fix = ("these look like generator output in [-1, 1] that overshoots slightly; clip them: "
                       "np.clip((frames + 1) / 2, 0, 1), or v2s_nb.images.to_uint8(x) for [N, C, H, W] tensors")
            else:
                fix = "rescale them to [0, 1]"
            raise FrameFormatError(f"{name}: float frames must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; "
                                   f"{fix}.")
        out = np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise FrameFormatError(f"{name}: unsupported dtype {arr.dtype}; give uint8 (0..255) or float (0..1) frames.")

    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)


def _check_fps(fps) -> float:
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}.") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}.")
    return value


#: Frame rates an MP4 is written at (write_video, show_videos): near 1e-4 fps ffmpeg's muxer drops frames, at 1e-5
#: it fails; the top is above any camera and far below the rates ffmpeg refuses (~1e12).
WRITE_FPS_RANGE = (1e-3, 1e5)


def _check_write_fps(fps) -> float:
    value = _check_fps(fps)
    lo, hi = WRITE_FPS_RANGE
    if not lo <= value <= hi:
        raise ValueError(f"fps must lie in [{lo:g}, {hi:g}] frames per second to write an MP4 (ffmpeg drops frames "
                         f"or fails outside), got {fps!r}" + ("; for one frame every N seconds pass fps=1 / N."
                                                             if value < lo else "."))
    return value


@dataclasses.dataclass(frozen=True, eq=False)
class Video:
    """A clip in memory: ``frames`` uint8 RGB [T, H, W, 3] and ``fps`` (frames per second, float > 0).

    The constructor accepts anything :func:`as_rgb_uint8` accepts (grayscale, RGBA, float in [0, 1],
    torch tensors) and stores the converted uint8 array.
    """

    frames: np.ndarray
    fps: float = 30.0

    def __post_init__(self):
        object.__setattr__(self, "frames", as_rgb_uint8(self.frames))
        object.__setattr__(self, "fps", _check_fps(self.fps))

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def __getitem__(self, index):
        """Frame(s) by index; a slice gives a new :class:`Video` with the same fps, an int one frame [H, W, 3]."""
        if isinstance(index, slice):
            return Video(self.frames[index], self.fps)
        return self.frames[index]

    @property
    def num_frames(self) -> int:
        return len(self)

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.width, self.height

    @property
    def duration(self) -> float:
        """Length in seconds (T / fps)."""
        return len(self) / self.fps

    def __repr__(self) -> str:
        return f"Video({len(self)} frames, {self.width}x{self.height}, {self.fps:g} fps)"

    def show(self, **kwargs):
        """Show inline in a notebook (see :func:`show_video`)."""
        return show_video(self, **kwargs)

    def write(self, path: PathLike, **kwargs) -> Path:
        """Write to an MP4 file (see :func:`write_video`)."""
        return write_video(path, self.frames, self.fps, **kwargs)


# ----------------------------------------------------------------------------------------------- ffmpeg


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary used: ``ffmpeg`` on PATH, else the one shipped with imageio-ffmpeg."""
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg
    except ImportError:  # pragma: no cover - imageio-ffmpeg is a dependency
        raise RuntimeError("No ffmpeg found: install ffmpeg (e.g. apt-get install ffmpeg) or "
                           "pip install 'imageio-ffmpeg<0.8'.") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def _existing_file(path: PathLike) -> Path:
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"Video file not found: '{p}'. Check the path (the current folder is '{os.getcwd()}').")
    if p.is_dir():
        raise IsADirectoryError(f"'{p}' is a folder, not a video file.")
    return p


def _ffmpeg_input(p: Path) -> str:
    """``p`` as ffmpeg's input argument: absolute, so that a relative name that ffmpeg would take for a protocol or
    for its standard input ("take1:2.mp4": "Protocol not found"; "pipe:0.mp4", "-") is read as the file it is."""
    return str(p.absolute())


_FFMPEG_NOISE = ("ffmpeg version", "built with", "configuration:", "lib", "=== stderr ===",
                 "Could not load meta information", "Input #", "Metadata:", "Duration:", "Stream #", "Output #",
                 "encoder ", "handler_name", "vendor_id", "major_brand", "minor_version", "compatible_brands")


def _stderr_tail(text: str, lines: int = 4, causes: int = 2) -> str:
    """The informative lines of an ffmpeg log (banner and stream listings dropped): the first ``causes`` lines
    that say error (the cause, e.g. ``x264 [error]: invalid preset``; the last lines only say that a task
    failed) and the last ``lines`` lines."""
    keep = [ln.strip() for ln in str(text).strip().splitlines()
            if ln.strip() and not ln.strip().startswith(_FFMPEG_NOISE)]
    tail = keep[-lines:]
    first = [ln for ln in keep[:len(keep) - len(tail)] if "error" in ln.lower()][:causes]
    return "\n    ".join(first + tail) or "(no message)"


@functools.lru_cache(maxsize=None)
def _passthrough(exe: str) -> tuple[str, ...]:
    """ffmpeg output options that pass decoded frames on as they are: without them ffmpeg resamples a
    variable-frame-rate video to a constant rate (duplicating frames). ``-fps_mode`` exists since ffmpeg 5.1
    and ``-vsync`` was removed later, so the binary's version picks one."""
    try:
        out = subprocess.run([exe, "-version"], capture_output=True, text=True, errors="replace", timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    m = re.match(r"ffmpeg version n?(\d+)\.(\d+)", out)  # git builds ("N-1234-g...") are recent: no match
    if m and (int(m.group(1)), int(m.group(2))) < (5, 1):
        return ("-vsync", "passthrough")
    return ("-fps_mode", "passthrough")


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What ffmpeg reports about a file before decoding: frame ``width`` and ``height`` in pixels (after any
    rotation metadata is applied and non-square pixels are made square, see :data:`_SQUARE_PIXELS`), ``fps``
    (frames per second; exact for the usual rates though ffmpeg prints them rounded, see
    :func:`_rate_and_duration`), ``duration`` in seconds (0 when unknown),
    ``codec`` name and ``approx_frames`` (round(duration * fps); the exact count is known only after decoding).
    For a variable-frame-rate file ``fps`` is the average rate (frames / duration), the rate that makes the
    decoded frames (passed on as they are, none duplicated) last ``duration``. All of it is about the one video
    stream that is read (see :func:`_video_line`)."""

    path: Path
    width: int
    height: int
    fps: float
    duration: float
    codec: str

    @property
    def approx_frames(self) -> int:
        return int(round(self.duration * self.fps))


_FPS = re.compile(r", (\d+(?:\.\d+)?)(k?) fps\b")
_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_STREAM_INDEX = re.compile(r"Stream #0:(\d+)")


def _video_line(report: str) -> str:
    """The line of ffmpeg's report on an input file (what ``ffmpeg -i FILE`` writes to stderr) of the video stream
    v2s_nb reads, "" when there is none: the stream marked default (the one players show), else the first. Cover
    pictures ("attached pic": a song's cover art, a clip's thumbnail) are not video. Reader, rate and
    :func:`decode_errors` all take this stream (``-map``); ffmpeg's own choice (the largest picture) and the rate
    of the first video stream could be two different streams."""
    lines = [ln for ln in report.splitlines() if ln.lstrip().startswith("Stream #") and " Video: " in ln
             and "(attached pic)" not in ln]
    return next((ln for ln in lines if "(default)" in ln), lines[0] if lines else "")


def _probe(exe: str, p: Path) -> tuple[str, str, list[str]]:
    """(ffmpeg's report on ``p``, "" when ffmpeg could not run; the line of the video stream read, see
    :func:`_video_line`; the ``-map`` arguments that pick it, none when ffmpeg listed no streams: a file it can't
    open, whose error the reader gives). Raises :class:`VideoReadError` when ffmpeg lists streams but no video."""
    try:
        report = subprocess.run([exe, "-hide_banner", "-nostdin", "-i", _ffmpeg_input(p)], capture_output=True,
                                text=True, errors="replace", timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        report = ""
    line = _video_line(report)
    index = _STREAM_INDEX.search(line)
    if not line and re.search(r"^\s*Stream #0:", report, re.MULTILINE):
        what = (", only a cover picture (audio with cover art)" if "(attached pic)" in report
                else " (a zero-frame video, or audio only)")
        raise VideoReadError(f"'{p}' has no video stream{what}; give a file that contains video frames.")
    return report, line, ["-map", f"0:{index[1]}"] if index else []


#: ffmpeg filters that make non-square pixels square, as players show them: an anamorphic frame (sample aspect
#: ratio, SAR, between 1/4 and 4; e.g. DV's 8:9, HDV's 4:3) is stretched (never shrunk) to its display shape, so
#: faces aren't squeezed. A SAR outside that range is taken for broken metadata and left alone.
_SQUARE_PIXELS = "scale=w='round(iw*if(between(sar,1,4),sar,1))':h='round(ih/if(between(sar,0.25,1),sar,1))',setsar=1"
#: ffmpeg filters that put a frame with transparency over white, as :func:`v2s_nb.images.read_image` does (rgb24
#: output drops alpha raw: a transparent pixel showed whatever colour it stores). In 8 bits: 255 - (255 - c) a, c
#: over white, within 2 levels of the exact value; fully opaque pixels keep theirs exactly.
_OVER_WHITE = "format=gbrap,negate,premultiply=inplace=1,negate"
#: Pixel formats (as ffmpeg names them on a stream line) with an alpha channel.
_ALPHA_FORMAT = re.compile(r"(rgba|bgra|argb|abgr|ya\d|yuva|gbrap|rgba64|bgra64)")


def _stream_fields(line: str) -> list[str]:
    """The comma-separated fields after "Video:" on a stream line of ffmpeg's report, commas inside parentheses not
    counted ("Stream #0:0: Video: png (png / 0x...), rgba(pc, ...), 32x24, ..." -> ["png (png / 0x...)",
    "rgba(pc, ...)", "32x24", ...]): the codec first, then the pixel format; [] for no line."""
    fields, depth, start = [], 0, 0
    text = line.split(" Video: ", 1)[1] if " Video: " in line else ""
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            fields.append(text[start:i].strip())
            start = i + 1
    return fields + [text[start:].strip()] if text else []


def _pixel_format(line: str) -> str:
    """The pixel format named on a stream line of ffmpeg's report (the example of :func:`_stream_fields` ->
    "rgba"); "" when there is none."""
    fields = _stream_fields(line)
    return fields[1].split("(", 1)[0].strip() if len(fields) > 1 else ""


def _filters(line: str) -> list[str]:
    """The ``-vf`` output option for the stream on ``line``: transparency over white where it has any, then
    square pixels."""
    chain = ([_OVER_WHITE] if _ALPHA_FORMAT.match(_pixel_format(line)) else []) + [_SQUARE_PIXELS]
    return ["-vf", ",".join(chain)]


def _rate_and_duration(report: str) -> tuple[float, float]:
    """(average frame rate, duration in seconds) of the video stream read (:func:`_video_line`) in ffmpeg's report on
    an input file (what ``ffmpeg -i FILE`` writes to stderr); 0 for either where the report gives none.

    Why not imageio-ffmpeg's ``meta["fps"]`` and ``meta["duration"]``: its parser reads "1k fps" (how ffmpeg prints
    1000, 2000, ... fps) as no rate, and its duration pattern wants two-digit hours, so 100 hours and more read as 0.
    And ffmpeg prints the rate rounded (print_fps in libavformat/dump.c: to 0.01, to 0.0001 below 0.005 fps) and the
    exact fraction nowhere (ffprobe would tell it, but imageio-ffmpeg does not ship it). So a rate printed with
    decimals is taken for the one usual fraction that ffmpeg prints the same: an NTSC rate n * 1000 / 1001 ("23.98"
    is 24000/1001, "29.97" 30000/1001, "59.94" 60000/1001) or one frame every N seconds ("0.33" is 1/3); where none or
    several fit ("0.07": 1/14 or 1/15?) the printed value. A file at exactly 2997/50 fps reads as 60000/1001 (1e-6 off).
    """
    def printed(rate: float) -> str:  # as print_fps does
        v = round(rate * 100)
        if not v:
            return f"{rate:.4f}"
        if v % 100:
            return f"{rate:.2f}"
        return f"{rate:.0f}" if v % 100_000 else f"{rate / 1000:.0f}k"

    m = _DURATION.search(report)
    duration = 3600 * int(m[1]) + 60 * int(m[2]) + float(m[3]) if m else 0.0
    m = _FPS.search(_video_line(report))
    fps = float(m[1]) * (1000 if m[2] else 1) if m else 0.0
    if m and "." in m[1] and fps > 0:
        n = int(1 / fps)  # one frame every N s: N near 1 / fps (two either side, to see whether several fit)
        every = [1 / k for k in range(max(n - 1, 1), n + 3)] if fps < 1 else []
        fits = {c for c in [round(fps * 1.001) * 1000 / 1001, *every] if printed(c) == m[1]}
        fps = fits.pop() if len(fits) == 1 else fps
    return fps, duration


class _RotationNote(logging.Filter):
    """Drops imageio-ffmpeg's "The frame size for reading (W, H) is different from the source frame size (H, W)",
    logged for every file with rotation metadata (phone videos) or non-square pixels: ffmpeg applies the rotation
    (and :data:`_SQUARE_PIXELS` the pixel shape), the frames come upright and the size reported is theirs, so the
    note only alarms."""

    def filter(self, record):
        return "is different from the source frame size" not in record.getMessage()


@contextlib.contextmanager
def _quiet_rotation_note():
    log, note = logging.getLogger("imageio_ffmpeg"), _RotationNote()
    log.addFilter(note)
    try:
        yield
    finally:
        log.removeFilter(note)


def _animated_webp(p: Path) -> bool:
    """Whether ``p`` is an animated WebP (RIFF / WEBP / VP8X with the animation flag), which ffmpeg 7 can't decode."""
    with open(p, "rb") as f:
        head = f.read(21)
    return len(head) == 21 and head[:4] == b"RIFF" and head[8:16] == b"WEBPVP8X" and bool(head[20] & 0x02)


def _open_reader(p: Path):
    """Start ffmpeg decoding ``p`` to rgb24, each decoded frame once; returns (generator of frame bytes, VideoInfo)."""
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    report, line, stream = _probe(exe, p)
    gen = imageio_ffmpeg.read_frames(_ffmpeg_input(p), pix_fmt="rgb24",
                                     output_params=[*stream, *_filters(line), *_passthrough(exe)])
    try:
        with _quiet_rotation_note():
            meta = next(gen)
        width, height = (int(v) for v in meta["size"])
        if width <= 0 or height <= 0:
            raise ValueError(f"frame size {width}x{height}")
    except Exception as err:  # imageio-ffmpeg raises IOError/RuntimeError/ValueError/IndexError here
        gen.close()
        if "does not contain any stream" in str(err):
            raise VideoReadError(f"'{p}' has no video stream (a zero-frame video, or audio only); "
                                 "give a file that contains video frames.") from None
        if _animated_webp(p):
            raise VideoReadError(f"'{p}' is an animated WebP, which this ffmpeg ({exe}) cannot decode; convert it "
                                 "to MP4 or GIF first, e.g. in Python: PIL.Image.open(path).save('clip.gif', "
                                 "save_all=True).") from None
        raise VideoReadError(
            f"Could not read '{p}' as a video (corrupt file, or not a video). "
            f"ffmpeg said:\n    {_stderr_tail(err)}") from None
    # Rate, duration and codec from ffmpeg's report, read by _rate_and_duration: imageio-ffmpeg's are those of the
    # first video stream (a cover picture, or another stream than the one read), a rate printed rounded is taken as
    # printed, "1k fps" as none, 100+ hours as 0 and the codec keeps a comma ("gif,"). Its values only where the
    # report has no video stream line (ffmpeg could not run).
    fps, duration = _rate_and_duration(report)
    codec = _stream_fields(line)[0].split(None, 1)[0] if line else ""
    if not line:
        fps, duration = float(meta.get("fps") or 0.0), duration or float(meta.get("duration") or 0.0)
        codec = str(meta.get("codec", "")).rstrip(",")
    if not np.isfinite(fps) or fps <= 0:
        warnings.warn(f"'{p}': ffmpeg reports no frame rate; assuming 30 fps. If that is wrong, re-encode the file "
                      "with its rate (ffmpeg -i IN -r RATE OUT).", V2SWarning, stacklevel=3)
        fps = 30.0
    info = VideoInfo(path=p, width=width, height=height, fps=fps, duration=duration, codec=codec)
    return gen, info


def video_info(path: PathLike) -> VideoInfo:
    """Metadata of a video file without decoding its frames (see :class:`VideoInfo`)."""
    gen, info = _open_reader(_existing_file(path))
    gen.close()
    return info


class VideoStream:
    """Iterate over a video file in chunks of frames with bounded memory.

    Iterating yields uint8 arrays [n, H, W, 3] with n == ``chunk`` except possibly for the last chunk.
    Only one chunk (plus one frame being read from ffmpeg's pipe) is held at a time: each chunk is a fresh
    array, so keeping references to yielded chunks is safe (and is what costs memory).

    Attributes: ``fps``, ``width``, ``height``, ``info`` (:class:`VideoInfo`), ``frames_read`` (so far).
    Use as a context manager, or call :meth:`close`, to stop ffmpeg early; an exhausted stream closes itself.
    """

    def __init__(self, path: PathLike, chunk: int = 64, progress: bool = False):
        if not isinstance(chunk, (int, np.integer)) or isinstance(chunk, bool) or chunk < 1:
            raise ValueError(f"chunk must be a positive number of frames, got {chunk!r}.")
        self.path = _existing_file(path)
        self.chunk = int(chunk)
        self.progress = progress
        self._gen, self.info = _open_reader(self.path)
        self.frames_read = 0
        self._started = False

    fps = property(lambda self: self.info.fps)
    width = property(lambda self: self.info.width)
    height = property(lambda self: self.info.height)

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._started:
            raise RuntimeError("A VideoStream can be iterated only once; call stream_video() again.")
        self._started = True
        return self._chunks()

    def _chunks(self) -> Iterator[np.ndarray]:
        h, w = self.height, self.width
        frame_bytes = h * w * 3
        bar = progress_bar(total=self.info.approx_frames or None, desc=self.path.name, unit="frame",
                           enabled=self.progress)
        try:
            buf = np.empty((self.chunk, h, w, 3), np.uint8)
            n = 0
            while True:
                try:
                    data = next(self._gen)
                except StopIteration:
                    break
                except Exception as err:
                    raise VideoReadError(
                        f"Decoding '{self.path}' failed after {self.frames_read} frames (corrupt or truncated "
                        f"file?). ffmpeg said:\n    {_stderr_tail(err)}") from None
                if len(data) != frame_bytes:  # pragma: no cover - imageio-ffmpeg checks this already
                    raise VideoReadError(f"'{self.path}': got a frame of {len(data)} bytes, expected {frame_bytes}.")
                buf[n] = np.frombuffer(data, np.uint8).reshape(h, w, 3)
                del data
                n += 1
                self.frames_read += 1
                if n == self.chunk:
                    if bar is not None:
                        bar.update(n)
                    yield buf
                    buf = np.empty((self.chunk, h, w, 3), np.uint8)
                    n = 0
            if n:
                if bar is not None:
                    bar.update(n)
                yield buf[:n].copy() if n < self.chunk // 2 else buf[:n]
        finally:
            if bar is not None:
                bar.close()
            self.close()
        if self.frames_read == 0:
            raise VideoReadError(f"'{self.path}' contains no video frames (an empty or zero-length video); "
                                 "check that the recording/export finished.")

    def close(self) -> None:
        """Stop the ffmpeg process (safe to call more than once)."""
        self._gen.close()

    def __enter__(self) -> "VideoStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"VideoStream('{self.path}', {self.width}x{self.height}, {self.fps:g} fps, "
                f"chunk={self.chunk}, frames_read={self.frames_read})")


def stream_video(path: PathLike, chunk: int = 64, progress: bool = False) -> VideoStream:
    """Open a video file for chunked reading (any format ffmpeg reads); see :class:`VideoStream`.

    ``chunk`` is the number of frames per yielded array [chunk, H, W, 3] uint8. Memory use is about
    ``chunk * H * W * 3`` bytes whatever the length of the file. Errors for a missing file
    (:class:`FileNotFoundError`) or an unreadable one (:class:`VideoReadError`) are raised here, at open.

    Example::

        with stream_video("drive.mp4", chunk=32) as s:
            for frames in s:        # frames: uint8 [<=32, H, W, 3]
                ...
    """
    return VideoStream(path, chunk=chunk, progress=progress)


def read_video(path: PathLike, progress: bool = False, check: bool = False, strict: bool = False) -> Video:
    """Decode a whole video file (any format ffmpeg reads) into a :class:`Video` (uint8 [T, H, W, 3] + fps).

    Raises :class:`FileNotFoundError` for a missing path and :class:`VideoReadError` (a ValueError) for a
    corrupt file, a file without a video stream or one with zero frames. For long clips prefer
    :func:`stream_video`, which holds only one chunk in memory.

    ``check=True`` also asks ffmpeg for the errors it concealed while decoding (see :func:`decode_errors`; a
    second decoding pass) and reports them as one :class:`CorruptFramesWarning` naming the frames, or, with
    ``strict=True``, as a :class:`VideoReadError`.
    """
    stream = VideoStream(path, chunk=64, progress=progress)
    chunks = list(stream)
    frames = chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=0)
    if check or strict:
        report_decode_errors(path, decode_errors(path), strict, stacklevel=3)
    return Video(frames, stream.fps)


def report_decode_errors(path: PathLike, errs, strict: bool = False, stacklevel: int = 2) -> None:
    """Report the decoding errors ``errs`` of ``path`` (as :func:`decode_errors` gives them; none: nothing) as one
    :class:`CorruptFramesWarning` naming the frames, or, with ``strict``, as a :class:`VideoReadError`."""
    if not errs:
        return
    shown = sorted({f for f, _ in errs})
    msg = (f"'{path}': ffmpeg reported {len(errs)} decoding error(s) near frame(s) "
           f"{shown[:20]}{' ...' if len(shown) > 20 else ''} ({errs[0][1][:120]}); those frames may be "
           "damaged (concealed by the decoder)")
    if strict:
        raise VideoReadError(msg + ". Re-encode or replace the file (or pass strict=False to only warn).")
    warnings.warn(msg + ".", CorruptFramesWarning, stacklevel=stacklevel)


class CorruptFramesWarning(V2SWarning):
    """ffmpeg concealed decoding errors in a video (damaged or truncated data); the frames are named."""


_DECODE_ERROR = re.compile(r"error|corrupt|concealing|invalid|missing|truncat|non-existing|mmco", re.IGNORECASE)
_SHOWINFO_N = re.compile(r"Parsed_showinfo.*\bn:\s*(\d+)")


def decode_errors(path: PathLike) -> list[tuple[int, str]]:
    """Decode ``path`` once more with ffmpeg (one decoding thread, frames discarded) and return
    ``[(frame, message)]`` for every error the decoder logged. ``frame`` is the index (display order, from 0)
    of the first frame the filter graph showed after the message: approximate, as ffmpeg (7) decodes and
    filters in separate threads and B-frames are decoded out of display order, so the damaged frame is near
    it (usually within a few frames). Costs one extra decode of the file."""
    p = _existing_file(path)
    exe = ffmpeg_exe()  # frames passed on as decoded, as read_video does: showinfo's n is read_video's index
    stream = _probe(exe, p)[2] or ["-map", "0:v:0"]  # the stream read_video reads
    cmd = [exe, "-hide_banner", "-nostdin", "-loglevel", "info", "-threads", "1", "-i", _ffmpeg_input(p),
           *stream, "-vf", "showinfo=checksum=0", *_passthrough(exe), "-f", "null", "-"]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
    out, pending = [], []
    for line in proc.stderr.splitlines():
        m = _SHOWINFO_N.search(line)
        if m:
            out.extend((int(m.group(1)), msg) for msg in pending)
            pending = []
        elif line.startswith("[") and _DECODE_ERROR.search(line) and "Parsed_showinfo" not in line:
            pending.append(line.split("] ", 1)[-1].strip())
    last = max([f for f, _ in out], default=-1)
    out.extend((last + 1, msg) for msg in pending)  # errors after the last frame (a truncated end)
    return out


# ----------------------------------------------------------------------------------------------- writing


def _fps_fraction(fps: float) -> str:
    frac = Fraction(fps).limit_denominator(1001)
    if abs(float(frac) - fps) > 1e-6 * fps:
        frac = Fraction(fps).limit_denominator(1_000_000)
    return f"{frac.numerator}/{frac.denominator}"


def _fix_odd(frames: np.ndarray, odd_size: str) -> np.ndarray:
    h, w = frames.shape[1:3]
    if h % 2 == 0 and w % 2 == 0:
        return frames
    if odd_size == "pad":
        return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    if odd_size == "crop":
        if h < 2 or w < 2:
            raise FrameFormatError(f"frames of {w}x{h} pixels are too small to crop to even size; use odd_size='pad'.")
        return frames[:, : h - h % 2, : w - w % 2]
    raise FrameFormatError(
        f"H.264 yuv420p needs an even width and height, got {w}x{h}; pass odd_size='pad' (repeat the last "
        "row/column) or odd_size='crop' (drop it), or resize the frames.")


def _iter_chunks(frames) -> Iterator[np.ndarray]:
    """Yield [n, H, W, 3] uint8 chunks from an array / Video / iterable of chunks or single frames."""
    if isinstance(frames, Video):
        yield frames.frames
        return
    if isinstance(frames, (np.ndarray, str, os.PathLike)) or hasattr(frames, "detach"):  # a path: not iterated
        yield as_rgb_uint8(frames)
        return
    if isinstance(frames, (Iterable, VideoStream)):
        for i, item in enumerate(frames):
            yield as_rgb_uint8(item, allow_single_image=True, name=f"frames (item {i})")
        return
    yield as_rgb_uint8(frames)


#: x264's speed presets, fastest (biggest file) first.
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")


def write_video(path: PathLike, frames, fps: float = 30.0, *, crf: int = 18, preset: str = "medium",
                odd_size: str = "pad", progress: bool = False) -> Path:
    """Write frames to an MP4 file (H.264, yuv420p) at ``fps`` frames per second (in :data:`WRITE_FPS_RANGE`),
    atomically.

    ``frames``: an array [T, H, W, 3] in any form :func:`as_rgb_uint8` accepts, a :class:`Video` (then its
    own ``fps`` is used and the ``fps`` argument ignored), or an iterable of such chunks / single frames
    [H, W, 3] (e.g. a :class:`VideoStream`), so arbitrarily long clips can be written with bounded memory.

    ``crf``: x264 quality (0 = lossless luma, 18 = visually lossless, 23 = x264 default, 51 = worst).
    ``preset``: x264 speed preset, one of :data:`X264_PRESETS` (slower = smaller file at the same quality).
    ``odd_size``: yuv420p needs even width and height: ``'pad'`` (default) repeats the last row / column,
    ``'crop'`` drops it, ``'error'`` raises :class:`FrameFormatError`.

    The encoder writes a hidden temporary file in the target folder, and only a complete file is renamed to
    ``path`` (``os.replace``), so an interrupted write never leaves a finished-looking file. Missing parent
    folders are created. Returns the path written. Raises :class:`VideoWriteError` if ffmpeg fails.
    """
    if odd_size not in ("pad", "crop", "error"):
        raise ValueError(f"odd_size must be 'pad', 'crop' or 'error', got {odd_size!r}.")
    if isinstance(frames, Video):
        fps = frames.fps
    fps = _check_write_fps(fps)
    if not (isinstance(crf, (int, np.integer)) and 0 <= crf <= 51):
        raise ValueError(f"crf must be an integer in 0..51, got {crf!r}.")
    if preset not in X264_PRESETS:
        raise ValueError(f"preset must be one of x264's presets {', '.join(X264_PRESETS)}, got {preset!r}.")
    path = Path(os.fspath(path)).expanduser()
    if path.suffix.lower() not in (".mp4", ".m4v", ".mov"):
        raise ValueError(f"write_video writes MP4 (H.264) files; give a path ending in .mp4, got '{path}'.")
    if path.is_dir():
        raise IsADirectoryError(f"'{path}' is a folder; give a file name ending in .mp4.")
    path.parent.mkdir(parents=True, exist_ok=True)

    chunks = _iter_chunks(frames)
    try:
        first = _fix_odd(next(chunks), odd_size)
    except StopIteration:
        raise FrameFormatError("write_video got no frames; give at least one frame.") from None
    h, w = first.shape[1:3]

    log = tempfile.TemporaryFile()
    bar = progress_bar(desc=path.name, unit="frame", total=len(frames) if hasattr(frames, "__len__") else None,
                       enabled=progress)
    try:
        with atomic_path(path, suffix=".part.mp4") as tmp:  # ffmpeg writes the hidden temporary; renamed when done
            cmd = [ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", "-nostdin",
                   "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", _fps_fraction(fps), "-i", "-",
                   "-an", "-c:v", "libx264", "-preset", str(preset), "-crf", str(int(crf)), "-pix_fmt", "yuv420p",
                   "-movflags", "+faststart", "-f", "mp4", str(tmp)]
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
            try:
                _feed_ffmpeg(proc, itertools.chain([first], chunks), odd_size, h, w, bar)
                rc = proc.wait()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                try:  # still open when feeding failed (a frame error, or the caller's iterator raised)
                    proc.stdin.close()
                except OSError:  # BrokenPipeError: ffmpeg is gone, nothing left to flush
                    pass
            if rc != 0:
                log.seek(0)
                msg = log.read().decode("utf-8", "replace")
                raise VideoWriteError(f"ffmpeg failed writing '{path}' (exit code {rc}):\n    {_stderr_tail(msg)}")
    finally:
        if bar is not None:
            bar.close()
        log.close()
    return path


def _feed_ffmpeg(proc, chunks, odd_size, h: int, w: int, bar) -> None:
    """Write uint8 [n, h, w, 3] chunks to ffmpeg's stdin and close it (a dead ffmpeg: stop; its log says why)."""
    n_frames = 0
    for chunk in chunks:
        chunk = np.ascontiguousarray(_fix_odd(chunk, odd_size))
        if chunk.shape[1:3] != (h, w):
            raise FrameFormatError(f"all frames must have the same size: the first were {w}x{h}, frame "
                                   f"{n_frames} is {chunk.shape[2]}x{chunk.shape[1]}.")
        try:
            proc.stdin.write(memoryview(chunk).cast("B"))
        except BrokenPipeError:
            break
        n_frames += len(chunk)
        if bar is not None:
            bar.update(len(chunk))
    try:
        proc.stdin.close()
    except BrokenPipeError:
        pass


# ----------------------------------------------------------------------------------------------- showing


def _mediapy():
    import mediapy

    if shutil.which("ffmpeg") is None:
        mediapy.set_ffmpeg(ffmpeg_exe())
    return mediapy


def _even(frames: np.ndarray) -> np.ndarray:
    return _fix_odd(frames, "pad")


def show_video(video, *, fps: float | None = None, title: str | None = None, height: int | None = None,
               return_html: bool = False, **kwargs):
    """Show one clip inline in a notebook (``mediapy.show_video``); H.264 in an HTML ``<video>`` element.

    ``video``: a :class:`Video` or frames in any form :func:`as_rgb_uint8` accepts. ``fps`` defaults to the
    Video's own (or 30). ``height`` is the displayed height in pixels (the frames are not resized).
    With ``return_html=True`` the HTML string is returned instead of displayed. Extra keyword arguments
    go to ``mediapy.show_video``.
    """
    return show_videos([video], fps=fps, titles=[title] if title is not None else None, height=height,
                       return_html=return_html, **kwargs)


def show_videos(videos: Mapping[str, object] | Sequence[object], *, fps: float | None = None,
                titles: Sequence[str] | None = None, height: int | None = None, columns: int | None = None,
                return_html: bool = False, **kwargs):
    """Show several clips side by side inline (``mediapy.show_videos``), e.g. ``{"driving": a, "output": b}``.

    ``videos``: a dict title -> clip, or a list of clips (each a :class:`Video` or frames in any form
    :func:`as_rgb_uint8` accepts). Clips may differ in size and length. ``fps`` defaults to the first
    Video's fps (or 30). ``columns`` wraps the row; ``height`` is the displayed height in pixels.
    Returns the HTML string when ``return_html=True``, else displays it and returns None.
    """
    if isinstance(videos, Mapping):
        if titles is not None:
            raise ValueError("give titles either as the dict's keys or as titles=, not both.")
        titles = [str(k) for k in videos.keys()]
        items = list(videos.values())
    elif isinstance(videos, (Video, np.ndarray)) or hasattr(videos, "detach"):
        items = [videos]
    else:
        items = list(videos)
    if not items:
        raise ValueError("show_videos got no videos.")
    if fps is None:
        fps = next((v.fps for v in items if isinstance(v, Video)), 30.0)
    fps = _check_write_fps(fps)  # mediapy encodes an MP4 with ffmpeg too
    arrays = [_even(as_rgb_uint8(v, name=f"video {i}")) for i, v in enumerate(items)]
    if titles is not None and len(titles) != len(arrays):
        raise ValueError(f"got {len(titles)} titles for {len(arrays)} videos.")
    media = _mediapy()
    return media.show_videos(arrays, titles=titles, fps=fps, height=height, columns=columns,
                             return_html=return_html, **kwargs)
