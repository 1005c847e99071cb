"""pyproject.toml: the package's metadata agrees with requirements.txt (the exact set the two README commands
install and test), the console script exists, and the wheel `pip install .` builds holds every module and the
embedded twins. (Installing into a fresh venv needs the network; how it was checked is in the pull request.)"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def name_of(requirement: str) -> str:
    return re.split(r"[<>=!~; \[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[name_of(name)] = version
    return out


def test_every_pin_is_a_dependency_or_an_extra_with_the_pinned_version_as_its_lower_bound():
    project = PYPROJECT["project"]
    declared = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    bounds = {name_of(r): re.search(r">=([\w.]+)", r).group(1) for r in declared}
    assert bounds == pins()


def test_the_console_script_is_the_cli():
    module, _, function = PYPROJECT["project"]["scripts"]["unlearning"].partition(":")
    from unlearning.cli import main

    assert getattr(importlib.import_module(module), function) is main


def test_the_version_comes_from_the_package():
    import unlearning

    assert PYPROJECT["project"]["dynamic"] == ["version"] and re.fullmatch(r"\d+\.\d+\.\d+", unlearning.__version__)


def test_the_checkout_finds_its_own_assets():
    from unlearning import paths

    assert paths.IN_CHECKOUT and paths.ASSETS == ROOT / "assets"


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="building a wheel needs setuptools")
def test_the_wheel_holds_every_module_and_the_embedded_twins(tmp_path):
    source = tmp_path / "src"  # pip builds in the source tree: build a copy
    skip = shutil.ignore_patterns(".git", "runs", "test-artifacts", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache",
                                  "build", "*.egg-info", "tests", "bench")
    shutil.copytree(ROOT, source, ignore=skip)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                           "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("unlearning_lab-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "unlearning").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    twins = {"unlearning/" + p.relative_to(ROOT).as_posix() for p in (ROOT / "assets").rglob("*") if p.is_file()}
    assert twins <= names, sorted(twins - names)[:5]
    assert "unlearning = unlearning.cli:main" in entry_points
