"""The repository stands alone: nothing a user gets from a clone points at files outside it."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The project's machines keep a folder of notes and fixtures beside the checkout; users never have it. Only
# .ci/run may know about it (to hand CI pre-downloaded weights). The pattern is assembled so that this file does
# not match itself.
_SIBLING = "sha" + "red"
OUTSIDE = re.compile(rf"\.\./{_SIBLING}\b|\b{_SIBLING}/(fixtures|PAPER|DESIGN|TOOLING|paper)\b|V2S_NB_{_SIBLING.upper()}")


def _tracked(*roots):
    out = subprocess.run(["git", "ls-files", "--", *roots], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:  # not a git checkout (an sdist, say): every file below the roots
        return [p for r in roots for p in (REPO / r).rglob("*") if p.is_file()]
    return [REPO / line for line in out.stdout.splitlines()]


def test_nothing_refers_to_files_beside_the_checkout():
    hits = []
    for path in _tracked("v2s_nb", "tests", "docs", "notebooks", "benchmarks", "binder", "README.md",
                         "pyproject.toml", "environment.yml"):
        if path.suffix in {".png", ".jpg", ".gif", ".mp4", ".npz", ".pkl", ".safetensors", ".pt"}:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(REPO)}:{i}: {line.strip()[:120]}")
    assert not hits, "files outside the repository are referred to:\n" + "\n".join(hits)


def test_fixtures_are_in_the_repository():
    fixtures = REPO / "tests" / "fixtures"
    for name in ("stylegan3_official_tiny/r64/network.pkl", "stylegan3_official_tiny/t64/reference.npz",
                 "bisenet_face_parsing/reference.npz", "README.md"):
        assert (fixtures / name).is_file(), name
    # Weights without a licence are never copied in (they are found through V2S_NB_WEIGHTS_DIR instead).
    names = [p.name for p in _tracked(".")]
    assert not [n for n in names if n.endswith(".onnx")], "no .onnx weights may be tracked"
