"""docs/adding-a-method.md works as written: its two Python blocks (the method's file and its registry entry) are
run here, the method is registered from this test module, and it goes through the CLI and the app's handler like
any shipped method (generated controls, API parameters, run folder, errors). Plumbing on the untrained tiny model."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from unlearning.cli import main
from unlearning.methods import METHODS, MethodSpec
from unlearning.ui import unlearn as ui

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"
MODULE = "unlearning.methods.anchor_distill"
FAST = {"iterations": 2, "batch_size": 2, "data_size": 2, "lr": 1e-3}


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


@pytest.fixture()
def method(monkeypatch) -> MethodSpec:
    """The doc's method: its file executed as unlearning.methods.anchor_distill, its entry added to the registry."""
    file_block, entry_block = python_blocks()
    module = types.ModuleType(MODULE)
    module.__package__ = "unlearning.methods"
    monkeypatch.setitem(sys.modules, MODULE, module)
    exec(compile(file_block, f"{DOC}: the file", "exec"), module.__dict__)
    (spec,) = eval(compile(entry_block.strip(), f"{DOC}: the registry entry", "eval"),  # "MethodSpec(...)," is a 1-tuple
                   {"MethodSpec": MethodSpec, "anchor_distill": module})
    monkeypatch.setitem(METHODS, spec.name, spec)
    return spec


def test_the_doc_has_the_file_and_the_entry():
    blocks = python_blocks()
    assert len(blocks) == 2 and "def unlearn(" in blocks[0] and blocks[1].lstrip().startswith("MethodSpec(")


def test_the_cli_lists_and_runs_it(method, tiny_model, tmp_path, capsys):
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    assert "anchor_distill: Anchor distillation (example)" in listed and "--set group=<str>" in listed
    out = tmp_path / "run"
    sets = [x for k, v in FAST.items() for x in ("--set", f"{k}={v}")]
    assert main(["run", "--model", str(tiny_model), "--method", "anchor_distill", "--forget", "3 -> 8", "--preserve", "1,7",
                 "--out", str(out), *sets, "--forget-samples", "2", "--retain-samples", "1", "--steps", "2",
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    card = json.loads((out / "run.json").read_text())
    assert card["method"]["name"] == "anchor_distill" and card["settings"]["iterations"] == 2
    assert card["task"]["anchors"] == {"3": "8"}
    with safe_open(str(out / "edit.safetensors"), framework="pt") as f:
        changed = list(f.keys())  # noqa: SIM118 (safe_open is not iterable)
    assert changed and all(".attn2." in name for name in changed), changed  # the default group: cross-attention only


def test_its_errors_reach_the_cli_as_one_line(method, tiny_model, tmp_path, capsys):
    assert main(["run", "--model", str(tiny_model), "--method", "anchor_distill", "--forget", "3", "--out",
                 str(tmp_path / "a"), "--set", "iterations=0", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: setting 'iterations' must be >= 1; got 0."
    assert main(["run", "--model", str(tiny_model), "--method", "anchor_distill", "--forget", "3", "--out",
                 str(tmp_path / "b"), *[x for k, v in FAST.items() for x in ("--set", f"{k}={v}")], "--device", "cpu"]) == 2
    assert "give one" in capsys.readouterr().err.strip().splitlines()[-1]  # no anchor: the method's own InputError


def test_the_app_generates_its_controls_and_runs_it(method, tiny_model, tmp_path):
    controls = [c for c in ui.setting_controls(str(tiny_model)) if c.method == "anchor_distill"]
    assert [c.name for c in controls] == ["iterations", "lr", "batch_size", "data_size", "group"]
    assert [c.api_name for c in controls][:2] == ["anchor_distill_iterations", "anchor_distill_lr"]
    assert next(c for c in controls if c.name == "group").kind == "choice"
    assert ui.uses_anchor("anchor_distill") and ("Anchor distillation (example)", "anchor_distill") in ui.method_choices()
    values = {c.name: FAST.get(c.name, c.value) for c in controls}
    request = ui.parse_request(str(tiny_model), ["3"], "8", "anchor_distill", 0, 2, 1, 2, None, "cpu", values,
                               preserve=["1", "7"])
    outs = list(ui.run_stream(request))
    assert "**Done.**" in outs[-1].status, [o.status for o in outs if o.status]
    folder = Path(outs[-1].download).with_suffix("")
    assert json.loads((folder / "run.json").read_text())["method"]["name"] == "anchor_distill"
    loss = json.loads((folder / "loss.json").read_text())
    assert [e["step"] for e in loss] == [1, 2] and all(torch.isfinite(torch.tensor(e["loss"])) for e in loss)


def test_the_app_api_names_its_settings(method):
    import app

    params = app.build_demo().get_api_info()["named_endpoints"]["/unlearn"]["parameters"]
    names = [p["parameter_name"] for p in params]
    assert {"anchor_distill_iterations", "anchor_distill_lr", "anchor_distill_group"} <= set(names)
