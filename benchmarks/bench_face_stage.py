"""Memory and time of the faces stage on a long high-resolution video (``v2s_nb.prepare.face_clip``).

Writes a clip of the astronaut photo (``skimage.data.astronaut``, its face ~500 px high) moving sideways on a
grey background, ``--frames`` frames of ``--width`` x ``--height`` at 30 fps, then runs the faces stage on it in
a fresh process (landmarks, smoothing, aligned crops at ``--resolution``; an empty cache) and reports the seconds
and the process's peak resident memory. The stage reads the video a chunk at a time, twice; decoding it whole
would hold ``frames x width x height x 3`` bytes on top of that (``--baseline`` prints the figure). Run it with
``PYTHONPATH`` pointing at another checkout to measure that code instead. Example::

    python benchmarks/bench_face_stage.py --frames 120 --width 1920 --height 1080 --resolution 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts this checkout first on the path)

_STAGE = """if True:
    import json, resource, sys, tempfile, time
    import v2s_nb
    from v2s_nb import prepare as P
    t = time.perf_counter()
    clip = P.face_clip(sys.argv[1], "video", int(sys.argv[2]), cache=tempfile.mkdtemp(), upsample=0,
                       progress=False, say=None)
    print(json.dumps({"frames": len(clip.aligned), "seconds": time.perf_counter() - t, "code": v2s_nb.__file__,
                      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}))
"""


def make_clip(path: Path, frames: int, width: int, height: int) -> Path:
    import cv2
    import numpy as np
    from skimage import data

    from v2s_nb.video import write_video

    side = min(width, height)
    face = cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_AREA)

    def chunks():  # one frame at a time: the clip is never whole in this process either
        for i in range(frames):
            f = np.full((height, width, 3), 90, np.uint8)
            x = (width - side) // 2 + int((width - side) // 3 * np.sin(i / 20))
            f[:side, x:x + side] = face
            yield f[None]

    return write_video(path, chunks(), fps=30)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=_common.positive_int, default=120)
    p.add_argument("--width", type=_common.positive_int, default=1920)
    p.add_argument("--height", type=_common.positive_int, default=1080)
    p.add_argument("--resolution", type=_common.positive_int, default=256, help="aligned crop size (px)")
    p.add_argument("--baseline", action="store_true", help="also print the bytes of the whole decoded video")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        clip = make_clip(Path(d) / "clip.mp4", args.frames, args.width, args.height)
        # this checkout, after any PYTHONPATH given (another checkout to compare); not the current folder's
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"),
                                                                        str(_common.REPO)])))
        run = subprocess.run([sys.executable, "-c", _STAGE, str(clip), str(args.resolution)], capture_output=True,
                             text=True, cwd=d, env=env)
    if run.returncode:
        sys.exit(f"error: the faces stage failed: {run.stderr.strip().splitlines()[-1]}")
    res = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"faces stage, {res['frames']} frames of {args.width}x{args.height} -> {args.resolution} px crops: "
          f"{res['seconds']:.1f} s, peak RSS {res['peak_rss_gib']:.2f} GiB ({res['code']})")
    if args.baseline:
        print(f"the whole decoded video: {args.frames * args.width * args.height * 3 / 2 ** 30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
