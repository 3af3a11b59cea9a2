"""Screenshots of the four notebooks as a reader sees them: JupyterLab in headless Chromium, Run All, then the
notebook scrolled to its main picture or widget, saved as ``docs/screenshots/<notebook>.png``.

    python docs/make_notebook_screenshots.py                      # all of notebooks/0*.ipynb
    python docs/make_notebook_screenshots.py 04_reenactment.ipynb  # one (e.g. after notebook 04 changed)

Needs ``pip install jupyterlab playwright`` and a Chromium binary (Debian: ``apt-get install -y chromium``;
``V2S_NB_CHROMIUM=/path/to/chrome`` to choose one; never ``playwright install``). Each notebook runs with its
own defaults, in a temporary folder (JupyterLab autosaves: the repository's copies are never opened), so the
first run of 01 / 03 fits the demo's generator (a few minutes on a CPU, then cached). Widgets are live (a
kernel runs them), unlike the outputs stored in the notebooks (``docs/make_notebook_outputs.py``), which keep
only static figures. The picture is the browser window (1400 x 1000, left sidebar closed), reduced to 256
colours to keep it small.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "screenshots"
VIEWPORT = {"width": 1400, "height": 1000}
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: notebook stem -> (CSS selector of what the shot shows, text in the code cell above it or None, seconds to wait
#: for it). The cell is scrolled to the top of the window.
TARGETS = {
    "01_canonical_transforms": (".v2s-track-viewer", "TrackViewer(", 900),
    "02_pose_optimization": (".jp-OutputArea-output img", "encode_pose_sequence(G", 600),
    "03_sspace_feature_maps": (".v2s-fmap-browser", "browse_feature_maps(", 900),
    "04_reenactment": (".v2s-tuner", "ReenactmentTuner(", 900),
}


def chromium() -> str:
    exe = os.environ.get("V2S_NB_CHROMIUM") or next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if exe is None:
        raise SystemExit("no Chromium found: apt-get install -y chromium, or set V2S_NB_CHROMIUM")
    return exe


@contextlib.contextmanager
def jupyterlab(root: Path, timeout: float = 120):
    """A JupyterLab server on a free local port serving ``root`` (log: ``root.parent / 'lab.log'``); yields (base
    URL, token). Raises RuntimeError with the log's end when it has not answered within ``timeout`` seconds."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    log = open(root.parent / "lab.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser", "--ip", "127.0.0.1", "--port", str(port),
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         f"--LabApp.workspaces_dir={root.parent / 'workspaces'}"], stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    log.flush()
                    raise RuntimeError(f"JupyterLab did not start:\n{(root.parent / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_idle(page, timeout: float) -> None:
    idle = page.get_by_text(re.compile(r"\|\s*Idle"))
    deadline = time.time() + timeout
    while not idle.first.is_visible():
        accept = page.locator(".jp-Dialog .jp-mod-accept")
        if accept.count() and accept.first.is_visible():  # "Select Kernel" on a fresh server
            accept.first.click()
        if time.time() > deadline:
            raise TimeoutError("the kernel did not become idle")
        page.wait_for_timeout(500)


def shoot(page, base: str, token: str, stem: str, target: Path) -> None:
    """Open ``stem``.ipynb, Run All, wait for the kernel, scroll to the notebook's target and save the window."""
    selector, cell_text, timeout = TARGETS.get(stem, (".jp-OutputArea-output", None, 900))
    page.goto(f"{base}/lab/tree/{stem}.ipynb?reset&token={token}", timeout=60_000)  # reset: only this tab
    _wait_idle(page, 120)
    for label in ("No",):  # "Would you like to get notified about official Jupyter news?"
        btn = page.locator(".jp-Notification-Toast button, .jp-toast-button", has_text=re.compile(f"^{label}$"))
        if btn.count():
            btn.first.click()
    current = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if current.count():  # clicking the open sidebar tab closes the sidebar: more room for the notebook
        current.first.click()
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).first.click()
    page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()
    page.locator(selector).first.wait_for(state="visible", timeout=timeout * 1000)
    page.wait_for_timeout(2000)
    _wait_idle(page, timeout)
    page.wait_for_timeout(1500)  # images and plots finish drawing
    if cell_text is not None:
        cell = page.locator(".jp-CodeCell", has_text=cell_text).first
        cell.scroll_into_view_if_needed()
        cell.evaluate("(el) => el.scrollIntoView({block: 'start'})")
    else:
        page.locator(selector).first.scroll_into_view_if_needed()
    page.wait_for_timeout(1000)
    raw = target.with_suffix(".raw.png")
    page.screenshot(path=str(raw))
    _shrink(raw, target)


def _stop_kernels(base: str, token: str) -> None:
    """Shut down every kernel of the server (the next notebook runs alone)."""
    import json

    hdr = {"Authorization": f"token {token}"}
    with urllib.request.urlopen(urllib.request.Request(f"{base}/api/kernels", headers=hdr), timeout=10) as r:
        kernels = json.load(r)
    for k in kernels:
        urllib.request.urlopen(urllib.request.Request(f"{base}/api/kernels/{k['id']}", headers=hdr, method="DELETE"),
                               timeout=30).read()


def _shrink(raw: Path, target: Path) -> None:
    from PIL import Image

    from v2s_nb.atomic import write_atomic

    img = Image.open(raw).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    write_atomic(target, lambda f: img.save(f, format="PNG", optimize=True))
    raw.unlink()


def main(argv=None) -> int:
    import argparse

    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", help="notebook file names (default: every notebooks/0*.ipynb)")
    ap.add_argument("--out", type=Path, default=OUT, help=f"folder for the PNGs (default {OUT.relative_to(REPO)})")
    args = ap.parse_args(argv)
    names = [Path(n).name for n in args.notebooks] or [p.name for p in sorted((REPO / "notebooks").glob("0*.ipynb"))]
    for n in names:
        if not (REPO / "notebooks" / n).is_file():
            raise SystemExit(f"no notebook notebooks/{n}")
    args.out.mkdir(parents=True, exist_ok=True)
    exe = chromium()
    with tempfile.TemporaryDirectory(prefix="v2s_nb_shots_") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        for n in names:
            shutil.copy(REPO / "notebooks" / n, root / n)
        try:
            lab = contextlib.ExitStack()
            base, token = lab.enter_context(jupyterlab(root))
        except RuntimeError as e:
            raise SystemExit(str(e)) from None
        with lab, sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(str(Path(tmp) / "profile"), executable_path=exe, headless=True,
                                                       args=CHROMIUM_ARGS, viewport=VIEWPORT)
            try:
                for n in names:
                    stem = Path(n).stem
                    page = ctx.new_page()
                    t0 = time.perf_counter()
                    target = args.out / f"{stem}.png"
                    try:
                        shoot(page, base, token, stem, target)
                    except Exception:
                        page.screenshot(path=str(args.out / f"{stem}_failure.png"))
                        raise
                    finally:
                        page.close()
                        _stop_kernels(base, token)
                    print(f"{n} -> {target} ({target.stat().st_size / 1024:.0f} KiB, {time.perf_counter() - t0:.0f} s)")
            finally:
                ctx.close()
    return 0


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    raise SystemExit(main())
