"""Runs the Triton kernel tests of tests/interpreted/ on the CPU, each module in a fresh process with
TRITON_INTERPRET=1 (Triton picks interpreter or compiler when it is imported, so the variable must be set before).
Slow: minutes per module. Skips where Triton is missing or its interpreter can't run kernels like ours."""

import importlib.util
import os
import subprocess
import sys
from xml.etree import ElementTree

import pytest

from conftest import REPO

MODULES = sorted(p.name for p in (REPO / "tests" / "interpreted").glob("test_*.py"))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="this run collects tests/interpreted itself")
@pytest.mark.parametrize("module", MODULES)
def test_kernels_under_the_interpreter(module, tmp_path):
    report = tmp_path / "report.xml"
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", f"--junitxml={report}",
                        f"tests/interpreted/{module}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    suite = ElementTree.parse(report).getroot().find("testsuite")
    cases = suite.findall("testcase")
    skips = [c.find("skipped") for c in cases if c.find("skipped") is not None]
    assert cases, f"no tests ran in tests/interpreted/{module}"
    if len(skips) == len(cases):
        pytest.skip(skips[0].get("message", "skipped"))
