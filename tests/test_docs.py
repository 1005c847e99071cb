"""The README stays a first screen (under 15 KB, the two set-up commands in its first 30 lines), every link in it
and in docs/ points at a file that exists, its package map names what is there, and its API example calls /unlearn
with parameters the app has."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_a_first_screen():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode()) < 15_000
    first = text.splitlines()[:30]
    assert "    bash scripts/start.sh" in first and "    bash tests/run.sh" in first
    assert "Add a method = one file + one registry entry" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
        if "://" not in target:
            assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_the_package_map_names_what_is_there():
    block = README.read_text(encoding="utf-8").split("## The package", 1)[1].split("\n\n", 2)[1]
    names = re.findall(r"([\w.]+(?:\.py|/))", block)
    for name in names:
        found = (ROOT / name).exists() or any(p.name == name.rstrip("/") for p in (ROOT / "unlearning").rglob("*"))
        assert found, name
    packages = {p.parent.name for p in (ROOT / "unlearning").glob("*/__init__.py")}
    assert packages <= {n.rstrip("/") for n in names}, packages - {n.rstrip("/") for n in names}


def test_the_api_example_uses_parameters_the_app_has():
    import app

    code = re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)
    call = next(n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "predict")
    info = app.build_demo().get_api_info()["named_endpoints"]
    endpoint = next(k.value.value for k in call.keywords if k.arg == "api_name")
    params = {p["parameter_name"] for p in info[endpoint]["parameters"]}
    assert {k.arg for k in call.keywords} - {"api_name"} <= params
    assert len(ast.parse(code).body[2].targets[0].elts) == len(info[endpoint]["returns"])  # the outputs it unpacks
