"""Point the notebooks and the README at the published repository: the Colab install source and the badges.

Whoever publishes the repository runs, once, from its root::

    python -m v2s_nb.notebook_links OWNER/REPO [--branch main]

It writes, in place:

* in each notebook's first code cell, ``V2S_NB_SOURCE = "git+https://github.com/OWNER/REPO@BRANCH"``: what
  that cell pip-installs on Colab (until then the cell prints how to install instead of failing);
* in each notebook's first markdown cell and in the README, "Open in Colab" and "Binder" badges between the
  markers ``<!-- links -->`` and ``<!-- /links -->`` (replaced on every run, so it can be run again for another
  owner or branch).

Notebooks are rewritten with :mod:`json` keeping nbformat's layout (one-space indent, a final newline), through a
temporary file and a rename (:mod:`v2s_nb.atomic`), so a failure never leaves a half-written notebook.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.parse
from pathlib import Path

from .atomic import write_atomic
from .errors import V2SError

START, END = "<!-- links -->", "<!-- /links -->"
_SOURCE_LINE = re.compile(r"^V2S_NB_SOURCE = .*$", re.M)
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$")
_BRANCH_RE = re.compile(r"^[A-Za-z0-9._/-]{1,200}$")
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
BINDER_BADGE = "https://mybinder.org/badge_logo.svg"


class LinkError(V2SError, ValueError):
    """The repository name, the branch or the files to rewrite are not what the command needs."""


def install_source(repo: str, branch: str) -> str:
    """pip's source for ``repo`` ("owner/name") at ``branch``: ``git+https://github.com/owner/name@branch``."""
    return f"git+https://github.com/{repo}@{branch}"


def colab_url(repo: str, branch: str, notebook: str) -> str:
    """Colab's address of ``notebook`` (a path inside the repository, e.g. ``notebooks/01_x.ipynb``)."""
    return f"https://colab.research.google.com/github/{repo}/blob/{branch}/{notebook}"


def binder_url(repo: str, branch: str, notebook: str) -> str:
    """Binder's address that opens ``notebook`` in JupyterLab."""
    return f"https://mybinder.org/v2/gh/{repo}/{branch}?labpath={urllib.parse.quote(notebook, safe='')}"


def _badges(repo: str, branch: str, notebook: str) -> str:
    return (f"[![Open in Colab]({COLAB_BADGE})]({colab_url(repo, branch, notebook)}) "
            f"[![Binder]({BINDER_BADGE})]({binder_url(repo, branch, notebook)})")


def _replace_block(text: str, block: str, *, after_first_line: bool) -> str:
    """``text`` with the marked block replaced by ``block``; inserted (after the first line, or at the end) if absent."""
    marked = f"{START}\n{block}\n{END}"
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: marked, text, count=1)
    if after_first_line:
        first, _, rest = text.partition("\n")
        return f"{first}\n\n{marked}\n{rest}" if rest else f"{first}\n\n{marked}\n"
    return text.rstrip("\n") + f"\n\n{marked}\n"


def _cell_text(cell) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def _set_cell_text(cell, text: str) -> None:
    cell["source"] = text.splitlines(keepends=True)


def _source_cell(path: Path, nb: dict) -> dict:
    """The notebook's first code cell, which must hold the ``V2S_NB_SOURCE = ...`` line."""
    code = next((c for c in nb.get("cells", []) if c.get("cell_type") == "code"), None)
    if code is None or not _SOURCE_LINE.search(_cell_text(code)):
        raise LinkError(f"{path}: its first code cell has no 'V2S_NB_SOURCE = ...' line to set")
    return code


def _check_readme(path: Path) -> str:
    """The README's text, which must hold the marked block."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if START not in text:
        raise LinkError(f"{path}: no '{START}' ... '{END}' block to fill")
    return text


def link_notebook(path: Path, repo: str, branch: str, rel: str) -> None:
    """Write the install source and the badges into one notebook (see the module docstring)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = nb.get("cells", [])
    code = _source_cell(path, nb)
    _set_cell_text(code, _SOURCE_LINE.sub(lambda _: f"V2S_NB_SOURCE = {install_source(repo, branch)!r}",
                                          _cell_text(code), count=1))
    md = next((c for c in cells if c.get("cell_type") == "markdown"), None)
    if md is None:
        raise LinkError(f"{path}: no markdown cell to put the badges in")
    _set_cell_text(md, _replace_block(_cell_text(md), _badges(repo, branch, rel), after_first_line=True))
    text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def link_readme(path: Path, repo: str, branch: str, notebooks: list[str]) -> None:
    """Replace the README's marked block with one line of badges per notebook."""
    lines = [f"{Path(rel).stem}: {_badges(repo, branch, rel)}<br>" for rel in notebooks]
    text = _check_readme(path)
    new = _replace_block(text, "\n".join(lines), after_first_line=False)
    write_atomic(path, lambda f: f.write(new.encode("utf-8")))


def link_repository(root, repo: str, branch: str = "main") -> list[Path]:
    """Point every ``notebooks/*.ipynb`` under ``root`` and its ``README.md`` at ``repo`` / ``branch``.

    Returns the files written. Raises :class:`LinkError` for a malformed repository or branch name, or files
    without the places to write into (nothing is written then).
    """
    if not _REPO_RE.match(repo or ""):
        raise LinkError(f"repository must be OWNER/NAME as on GitHub (e.g. alice/v2s_nb), got {repo!r}")
    if not _BRANCH_RE.match(branch or "") or ".." in branch:
        raise LinkError(f"not a usable branch name: {branch!r}")
    root = Path(root)
    notebooks = sorted((root / "notebooks").glob("*.ipynb"))
    if not notebooks:
        raise LinkError(f"no notebooks found under {root / 'notebooks'}; run this from the repository's root")
    rels = [nb.relative_to(root).as_posix() for nb in notebooks]
    readme = root / "README.md"
    # Check every file before writing any, so a bad one leaves everything as it was.
    for nb in notebooks:
        _source_cell(nb, json.loads(nb.read_text(encoding="utf-8")))
    _check_readme(readme)
    for nb, rel in zip(notebooks, rels):
        link_notebook(nb, repo, branch, rel)
    link_readme(readme, repo, branch, rels)
    return [*notebooks, readme]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m v2s_nb.notebook_links", description=__doc__.split("\n\n")[0])
    p.add_argument("repo", help="the published repository, OWNER/NAME on GitHub")
    p.add_argument("--branch", default="main", help="branch or tag the links and the install source use (default main)")
    p.add_argument("--root", default=".", help="the repository's root folder (default: the current folder)")
    a = p.parse_args(argv)
    try:
        written = link_repository(a.root, a.repo, a.branch)
    except (LinkError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
