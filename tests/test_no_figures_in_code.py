"""Speed figures live in docs/performance.md, each with the command that reproduces it, never in the package's code
or docstrings (they go stale the day they are written): a one-line reason may stay beside a choice, the numbers
may not."""

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "v2s_nb"
# throughput, milliseconds, GPU models, speed-up factors, seconds per item
FIGURES = re.compile(r"img/s|[0-9] ms\b|H100|H200|A100|\b[0-9.]+ ?x (faster|slower)\b|frames/s|"
                     r"[0-9] ?(s|µs|us) (per|for each) ")


def _hits(text: str) -> list[str]:
    return [f"{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1) if FIGURES.search(line)]


def test_the_pattern_finds_figures():
    assert _hits("# 1.9 ms per layer on an H200\n# 2.5x faster than cuDNN\n# ~1 s per frame\n# 1200 img/s") == [
        "1: # 1.9 ms per layer on an H200", "2: # 2.5x faster than cuDNN", "3: # ~1 s per frame",
        "4: # 1200 img/s"]
    assert _hits("# faster than cuDNN (docs/performance.md)\n# 4x-upsampling layers; 2 ms_per_frame = 3") == []


def test_no_speed_figures_in_the_package():
    hits = [f"{path.relative_to(PACKAGE.parent)}:{hit}" for path in sorted(PACKAGE.rglob("*.py"))
            for hit in _hits(path.read_text(encoding="utf-8"))]
    assert not hits, "speed figures belong in docs/performance.md (with their command):\n" + "\n".join(hits)
