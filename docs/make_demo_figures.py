"""Draws docs/demo_contact_sheet.png: the contact sheet of `v2s-nb demo` (driving clip above, the result of a
StyleGAN3-R generator fitted to this one photo below; what it can and cannot show; the measured check).

Runs the demo as shipped (CPU; the fit runs unless the fitted generator is already cached) into a temporary
folder and copies its contact sheet here:
    python docs/make_demo_figures.py [--device cpu]
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from v2s_nb.demo import run_demo  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "demo_contact_sheet.png"))
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        res = run_demo(Path(d) / "demo.mp4", device=a.device, quiet=True)
        shutil.copyfile(res.paths["contact_sheet"], a.out)
    print(f"wrote {a.out} ({Path(a.out).stat().st_size / 1024:.0f} KB); {res!r}")


if __name__ == "__main__":
    main()
