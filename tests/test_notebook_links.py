"""The Colab install source and badges: the link command writes them, and the first cell never fails without them."""

import io
import json
import shutil
import sys
import types
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from conftest import REPO
from v2s_nb import notebook_links as L

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _copy_repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copy(REPO / "README.md", root / "README.md")
    return root


def _first(nb, kind):
    return "".join(next(c for c in nb["cells"] if c["cell_type"] == kind)["source"])


def test_link_command_writes_source_and_badges(tmp_path):
    root = _copy_repo(tmp_path)
    assert L.main(["alice/v2s-fork", "--branch", "dev", "--root", str(root)]) == 0
    readme = (root / "README.md").read_text()
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        assert "V2S_NB_SOURCE = 'git+https://github.com/alice/v2s-fork@dev'" in _first(nb, "code")
        md = _first(nb, "markdown")
        rel = f"notebooks/{path.name}"
        assert f"https://colab.research.google.com/github/alice/v2s-fork/blob/dev/{rel}" in md
        assert f"https://mybinder.org/v2/gh/alice/v2s-fork/dev?labpath=notebooks%2F{path.name}" in md
        assert md.splitlines()[0].startswith("# ")  # the title stays the first line
        assert f"colab.research.google.com/github/alice/v2s-fork/blob/dev/{rel}" in readme
    # Running it again for another owner replaces the links instead of adding a second set.
    assert L.main(["bob/v2s", "--root", str(root)]) == 0
    nb = json.loads(sorted((root / "notebooks").glob("*.ipynb"))[0].read_text())
    md, readme = _first(nb, "markdown"), (root / "README.md").read_text()
    assert md.count(L.START) == 1 and "alice" not in md and "bob/v2s/blob/main" in md
    assert readme.count(L.START) == 1 and "alice" not in readme and readme.count("bob/v2s/blob/main") == len(NOTEBOOKS)
    assert "V2S_NB_SOURCE = 'git+https://github.com/bob/v2s@main'" in _first(nb, "code")


@pytest.mark.parametrize("repo, branch", [("not a repo", "main"), ("alice", "main"), ("a/b", "../x"), ("a/b", "")])
def test_link_command_refuses_bad_names_and_writes_nothing(tmp_path, repo, branch, capsys):
    root = _copy_repo(tmp_path)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert L.main([repo, "--branch", branch, "--root", str(root)]) == 2
    assert "error:" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_link_command_says_where_it_must_run(tmp_path, capsys):
    assert L.main(["a/b", "--root", str(tmp_path)]) == 2
    assert "no notebooks found" in capsys.readouterr().err


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_cell_on_colab_without_a_source_explains_instead_of_failing(path, monkeypatch):
    """On Colab with v2s_nb missing and no source set, the cell prints how to install and raises nothing."""
    cell = _first(json.loads(path.read_text()), "code")
    assert "V2S_NB_SOURCE = None" in cell and "github.com/OWNER" not in cell
    calls = []
    colab = types.ModuleType("google.colab")
    colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: calls.append("widgets"))
    google = types.ModuleType("google")
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    import importlib.util
    import subprocess

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "v2s_nb" else real_find_spec(name, *a))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run without a source"))
    out = io.StringIO()
    with redirect_stdout(out):
        exec(compile(cell, str(path), "exec"), {})
    text = out.getvalue()
    assert "pip install" in text and "run this cell again" in text and calls == ["widgets"]
