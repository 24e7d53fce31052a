"""environment.yml (conda users) and pyproject.toml (pip, the tested route) must not drift apart."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def normalise(req: str) -> str:
    return req.replace(" ", "").lower()


def test_environment_yml_lists_exactly_the_pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(map(normalise, project["dependencies"]))
    for extra in project["optional-dependencies"].values():
        wanted |= set(map(normalise, extra))
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert set(map(normalise, pip)) == wanted
    assert "python=3.11" in env["dependencies"]


def test_run_py_pins_the_same_torch_as_pyproject():
    import re

    pinned = re.search(r'TORCH = "(torch==[^"]+)"', (ROOT / "run.py").read_text()).group(1)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert pinned in project["dependencies"]
