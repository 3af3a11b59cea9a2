"""The project's own install files agree with each other, and the README's commands are what CI runs."""

import re
import tomllib

import yaml

from conftest import REPO


def _names(reqs):
    return {re.split(r"[<>=!~ \[]", r.strip(), 1)[0].lower().replace("_", "-") for r in reqs if isinstance(r, str)}


def test_conda_environment_lists_every_dependency():
    deps = _names(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    conda_names = {"pytorch": "torch", "pytorch-cpu": "torch"}
    for env_file in ("environment.yml", "binder/environment.yml"):
        env = yaml.safe_load((REPO / env_file).read_text())
        listed = set()
        for item in env["dependencies"]:
            if isinstance(item, dict):
                listed |= _names(p for p in item["pip"] if not p.startswith("-e"))
            else:
                name = _names([item]).pop()
                listed.add(conda_names.get(name, name))
        assert deps <= listed, f"{env_file} lacks {sorted(deps - listed)}"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    commands = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(commands) == 2, "the README opens with exactly two commands"
    assert commands[1] in (REPO / ".ci" / "run").read_text()
