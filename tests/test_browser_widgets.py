"""Notebooks 03 and 04 in a real browser: JupyterLab + Debian's headless chromium driven by Python playwright.

Runs all cells of a temporary copy of ``notebooks/03_sspace_feature_maps.ipynb``, moves the feature-map browser's
threshold slider with the keyboard and checks that the displayed IoU changed; runs all cells of
``notebooks/04_reenactment.ipynb``, checks that the tuner opened on a frame with motion, moves its ζ slider and
checks that the preview and the difference view changed and that no part of the tuner shows a scrollbar.
Screenshots go to
``$V2S_NB_TEST_ARTIFACTS`` (default: the test's temporary folder). Skipped, with the reason, when jupyterlab,
playwright or a chromium binary is missing (``pip install jupyterlab playwright``; ``apt-get install -y chromium``;
never ``playwright install``).
"""

from __future__ import annotations

import importlib.util
import contextlib
import os
import re
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # JupyterLab and Chromium

REPO = Path(__file__).resolve().parents[1]
# The JupyterLab server of the screenshot tool (docs/make_notebook_screenshots.py) serves the tests too.
_spec = importlib.util.spec_from_file_location("make_notebook_screenshots", REPO / "docs" / "make_notebook_screenshots.py")
screenshots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(screenshots)
NOTEBOOK = "03_sspace_feature_maps.ipynb"
NOTEBOOK_04 = "04_reenactment.ipynb"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str | None:
    env = os.environ.get("V2S_NB_CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _requirements():
    missing = [m for m in ("jupyterlab", "playwright") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"browser test needs {' and '.join(missing)} (pip install jupyterlab playwright)")
    exe = _chromium()
    if exe is None:
        pytest.skip("browser test needs a chromium binary (apt-get install -y chromium, or set V2S_NB_CHROMIUM)")
    return exe


@pytest.fixture
def lab(tmp_path):
    exe = _requirements()
    root = tmp_path / "root"
    root.mkdir()
    for path in (REPO / "notebooks").glob("0*.ipynb"):  # JupyterLab autosaves: never the repo's copy
        shutil.copy(path, root / path.name)
    with contextlib.ExitStack() as stack:
        try:
            base, token = stack.enter_context(screenshots.jupyterlab(root, timeout=90))
        except RuntimeError as e:
            pytest.fail(str(e))
        yield exe, base, token, tmp_path


def _open_and_run_all(page, base, token, notebook):
    page.goto(f"{base}/lab/tree/{notebook}?token={token}", timeout=60_000)
    idle = page.get_by_text(re.compile(r"\|\s*Idle"))
    deadline = time.time() + 90
    while not idle.first.is_visible():
        accept = page.locator(".jp-Dialog .jp-mod-accept")
        if accept.count() and accept.first.is_visible():  # "Select Kernel" on a fresh server
            accept.first.click()
        if time.time() > deadline:
            raise AssertionError("the kernel never became idle")
        page.wait_for_timeout(500)

    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).first.click()
    page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()


@contextlib.contextmanager
def _run_notebook_in_lab(lab, notebook, shot):
    """Open ``notebook`` in JupyterLab in headless Chromium, Run All, and yield the page.

    The page is saved as ``<shot>.png`` in the artifacts folder when the block ends (``<shot>_failure.png`` if it
    raised).
    """
    from playwright.sync_api import sync_playwright

    exe, base, token, tmp = lab
    artifacts = Path(os.environ.get("V2S_NB_TEST_ARTIFACTS", tmp))
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp / "profile"), executable_path=exe, headless=True,
                                                   args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
        page = ctx.new_page()
        try:
            _open_and_run_all(page, base, token, notebook)
            yield page
            page.screenshot(path=str(artifacts / f"{shot}.png"), full_page=False)
        except Exception:
            page.screenshot(path=str(artifacts / f"{shot}_failure.png"))
            raise
        finally:
            ctx.close()


def test_threshold_slider_changes_iou_in_jupyterlab(lab):
    with _run_notebook_in_lab(lab, NOTEBOOK, "feature_map_browser") as page:
        handle = page.locator(".v2s-fmap-threshold .noUi-handle")
        handle.wait_for(state="visible", timeout=180_000)
        label = page.locator(".v2s-fmap-iou")
        page.wait_for_function("() => document.querySelector('.v2s-fmap-iou')?.innerText.includes('IoU+')",
                               timeout=60_000)
        label.scroll_into_view_if_needed()
        before = label.inner_text()
        assert "threshold 0.50" in before

        handle.click()
        for _ in range(10):
            handle.press("ArrowRight")
        readout = page.locator(".v2s-fmap-threshold .widget-readout").inner_text().strip()
        assert float(readout) > 0.5, readout
        # every key press is sent to the kernel; wait until the label shows the slider's final value
        page.wait_for_function(
            "(r) => (document.querySelector('.v2s-fmap-iou')?.innerText || '').includes('threshold ' + r + ':')",
            arg=readout, timeout=60_000)
        after = label.inner_text()

    thr = lambda text: float(re.search(r"threshold (\d\.\d\d):", text).group(1))  # noqa: E731
    iou = lambda text: re.search(r"IoU\+ ([\d.]+), IoU- ([\d.]+)", text.replace("\u2212", "-")).groups()  # noqa: E731
    assert thr(after) > thr(before)
    assert iou(after) != iou(before)


#: Elements inside a widget that show a scrollbar: their content is larger than their box and their overflow
#: lets the browser scroll it.
_SCROLLBARS_JS = """(root) => {
    const out = [];
    for (const el of [root, ...root.querySelectorAll('*')]) {
        const cs = getComputedStyle(el);
        const sx = ['auto', 'scroll'].includes(cs.overflowX) && el.scrollWidth > el.clientWidth + 1;
        const sy = ['auto', 'scroll'].includes(cs.overflowY) && el.scrollHeight > el.clientHeight + 1;
        if (sx || sy) out.push(el.className + (sx ? ' (x)' : '') + (sy ? ' (y)' : ''));
    }
    return out;
}"""


def test_tuner_moves_on_a_frame_with_motion_in_jupyterlab(lab):
    """Notebook 04: Run All; the tuner opens on a frame other than the anchor; moving ζ with the keyboard changes
    the preview and the difference view; nothing in the tuner shows a scrollbar."""
    with _run_notebook_in_lab(lab, NOTEBOOK_04, "reenactment_tuner") as page:
        handle = page.locator(".v2s-tuner-zeta .noUi-handle")
        handle.wait_for(state="visible", timeout=240_000)
        preview, diff = page.locator("img.v2s-tuner-preview"), page.locator("img.v2s-tuner-difference")
        page.wait_for_function(
            "() => (document.querySelector('img.v2s-tuner-difference')?.getAttribute('src') || '').length > 0",
            timeout=60_000)
        page.locator(".v2s-tuner").scroll_into_view_if_needed()
        status = page.locator(".v2s-tuner-status").inner_text()
        frame = int(page.locator(".v2s-tuner-frame .widget-readout").inner_text().strip())
        anchor = int(re.search(r"anchor frame (\d+)", status).group(1))
        assert frame != anchor, status  # opened on a frame with motion
        before, diff_before = preview.get_attribute("src"), diff.get_attribute("src")
        read = lambda: float(page.locator(".v2s-tuner-zeta .widget-readout").inner_text()  # noqa: E731
                             .strip().replace("\u2212", "-"))
        zeta0 = read()
        assert zeta0 == 0.5, zeta0  # the relative motion mode's ζ (the default mode)

        handle.click()
        for _ in range(10):
            handle.press("ArrowRight")
        zeta = read()
        assert zeta > zeta0, zeta
        # the kernel re-renders the frame (latest value wins); wait for the status line to show the new ζ
        page.wait_for_function(
            "(z) => (document.querySelector('.v2s-tuner-status')?.innerText || '').includes('ζ ' + z)",
            arg=f"{zeta:.2f}", timeout=60_000)
        page.wait_for_function(
            "(b) => document.querySelector('img.v2s-tuner-preview')?.getAttribute('src') !== b",
            arg=before, timeout=60_000)
        after, diff_after = preview.get_attribute("src"), diff.get_attribute("src")
        scrollbars = page.locator(".v2s-tuner").evaluate(_SCROLLBARS_JS)

    assert before and after and after != before
    assert diff_after != diff_before
    assert scrollbars == [], scrollbars


#: Formulas (MathJax containers) that pass the right edge of their markdown cell, or scroll inside their own box.
_WIDE_FORMULAS_JS = """() => {
    const out = [];
    for (const md of document.querySelectorAll('.jp-RenderedMarkdown')) {
        const edge = md.getBoundingClientRect().right + 1;
        for (const m of md.querySelectorAll('mjx-container')) {
            const inner = m.firstElementChild ? m.firstElementChild.getBoundingClientRect().right : 0;
            if (m.getBoundingClientRect().right > edge || inner > edge || m.scrollWidth > m.clientWidth + 1)
                out.push((m.querySelector('mjx-assistive-mml')?.textContent || m.outerHTML).slice(0, 80));
        }
    }
    return out;
}"""


@pytest.mark.parametrize("notebook", ["01_canonical_transforms.ipynb", "02_pose_optimization.ipynb",
                                      "03_sspace_feature_maps.ipynb"])
def test_formulas_fit_the_page(lab, notebook):
    """Notebooks 01-03 opened in JupyterLab in a 1000 px window (a laptop; the file browser open, so the cells are
    about 570 px wide): no formula runs off the right edge of its cell."""
    from playwright.sync_api import sync_playwright

    exe, base, token, tmp = lab
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp / "profile"), executable_path=exe, headless=True,
                                                   args=CHROMIUM_ARGS, viewport={"width": 1000, "height": 1000})
        try:
            page = ctx.new_page()
            page.goto(f"{base}/lab/tree/{notebook}?token={token}", timeout=60_000)
            page.locator("mjx-container").first.wait_for(state="attached", timeout=120_000)
            page.wait_for_timeout(3000)  # MathJax typesets cell by cell
            n = page.locator("mjx-container").count()
            wide = page.evaluate(_WIDE_FORMULAS_JS)
        finally:
            ctx.close()
    assert n > 3, f"only {n} formulas rendered"
    assert wide == [], wide
