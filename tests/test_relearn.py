"""The relearning test (unlearning.attacks.relearn): mechanics only, on the untrained ``tiny_model``.

Whether a method resists relearning is a measurement, not something asserted here: these tests check
that the base is never touched, that LoRA changes only the attention projections, that benign data
never holds the forgotten concept, that the report has its three rows and the gap, and that the CLI
turns bad input into one ``error:`` line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unlearning.attacks import relearn as R
from unlearning.cli import main
from unlearning.edit import Edit
from unlearning.errors import InputError
from unlearning.hosting.profile import ENV_VAR, get_profile
from unlearning.methods.base import UnlearnTask
from unlearning.models.catalog import load_adapter

TINY_RELEARN = {"steps": 2, "batch_size": 2, "accumulation": 2, "data_size": 4, "lr": 1e-3}


@pytest.fixture(scope="module")
def adapter(tiny_model: Path):
    return load_adapter(str(tiny_model), "cpu")


@pytest.fixture()
def task() -> UnlearnTask:
    return UnlearnTask(forget=["3"], retain=["1", "7"], seed=0)


@pytest.fixture()
def edit(adapter) -> Edit:
    """A stand-in for an unlearning edit: one cross-attention weight moved."""
    name = next(n for n, _ in adapter.unet.named_parameters() if ".attn2.to_k." in n)
    value = dict(adapter.unet.named_parameters())[name].detach().float().cpu() + 0.01
    return Edit(params={name: value}, method="stand-in", base={"source": adapter.source})


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.state_dict().items()}


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    return {n for n in a if not torch.equal(a[n], b[n])}


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_base_untouched_and_result_differs(adapter, task, edit, mode):
    before = snapshot(adapter.unet)
    settings = R.relearn_settings(None, {**TINY_RELEARN, "mode": mode})
    result = R.relearn(adapter, edit, task, settings)
    after = snapshot(adapter.unet)
    assert all(torch.equal(before[n], after[n]) for n in before), "relearn modified the cached base UNet"
    start = snapshot(R.unlearned_copy(adapter, edit))
    tuned = snapshot(result.edit.apply_to_copy(adapter.unet))
    assert changed(start, tuned), "the fine-tune changed nothing"
    assert [e["step"] for e in result.loss_log] == [1, 2]
    assert all(torch.isfinite(v).all() for v in result.edit.params.values())
    assert result.timings["relearn_s"] > 0


def test_lora_changes_only_attention_projections(adapter, task, edit):
    settings = R.relearn_settings(None, {**TINY_RELEARN, "mode": "lora"})
    result = R.relearn(adapter, edit, task, settings)
    start = snapshot(R.unlearned_copy(adapter, edit))
    tuned = snapshot(result.edit.apply_to_copy(adapter.unet))
    moved = changed(start, tuned)
    assert moved
    assert all(n.endswith(tuple(f".{t}.weight" for t in R.LORA_TARGETS)) for n in moved), sorted(moved)
    assert not any("lora" in n for n in result.edit.params), "LoRA weights must be merged, not saved"


def test_benign_pool_never_holds_the_forget_concept(adapter, task, edit, monkeypatch):
    seen: list[list[str]] = []
    build = R.ConceptPool.build.__func__

    def spy(cls, adapter, concepts, *args, **kwargs):
        seen.append(list(concepts))
        return build(cls, adapter, concepts, *args, **kwargs)

    monkeypatch.setattr(R.ConceptPool, "build", classmethod(spy))
    result = R.relearn(adapter, edit, task, R.relearn_settings(None, {**TINY_RELEARN, "steps": 1}))
    assert seen == [["1", "7"]] and result.benign == ["1", "7"]
    for benign in ("3", "1,3", " 3 "):
        with pytest.raises(InputError, match="forgotten"):
            R.relearn_settings(None, {"benign": benign}).benign_concepts(task)
    assert R.relearn_settings(None, {"benign": "7"}).benign_concepts(task) == ["7"]


def test_settings_defaults_and_tuned():
    paper = R.relearn_settings(None)
    assert (paper.lr, paper.batch_size, paper.accumulation, paper.steps, paper.mode, paper.rank) == (1e-5, 1, 4, 200, "full", 4)
    assert R.relearn_settings("digits").lr == R.TUNED["digits"]["lr"]
    with pytest.raises(InputError, match="unknown setting"):
        R.relearn_settings("digits", {"learning_rate": "1"})
    with pytest.raises(InputError, match="mode"):
        R.relearn_settings("digits", {"mode": "qlora"})


def test_report_has_three_rows_and_the_gap(adapter, task, edit):
    result = R.relearn(adapter, edit, task, R.relearn_settings(None, {**TINY_RELEARN, "steps": 1}))
    report = R.relearn_report(adapter, task, edit, result.edit, forget_samples=2, seed=5, retain_samples=1,
                              num_inference_steps=2)
    assert [r["model"] for r in report["rows"]] == ["original", "after unlearning", "after fine-tune"]
    for row in report["rows"]:
        assert 0.0 <= row["forget_rate"] <= 1.0 and 0.0 <= row["retain_accuracy"] <= 1.0
    assert report["relearn_gap"] == pytest.approx(report["rows"][2]["forget_rate"] - report["rows"][1]["forget_rate"])
    assert report["seeds"] == {"forget:3": [5, 6], "retain:1": [7], "retain:7": [8]}
    assert "after fine-tune" in R.format_table(report)


# ---- the command line ----------------------------------------------------------------------------

@pytest.fixture()
def profile_file(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text("models: [digits]\nmethods: all\nlimits: {max_iterations: 300, max_concepts: 16}\nallow_local_models: true\n")
    monkeypatch.setenv(ENV_VAR, str(path))
    get_profile.cache_clear()
    yield path
    get_profile.cache_clear()


def last_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error:"), err
    return lines[-1]


def test_cli_errors(tmp_path, tiny_model, capsys, profile_file):
    assert main(["relearn", "--run", str(tmp_path / "nope")]) == 2
    assert "no run folder" in last_error(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["relearn", "--run", str(empty)]) == 2
    assert "run.json" in last_error(capsys)
    (empty / "run.json").write_text("{not json")
    assert main(["relearn", "--run", str(empty)]) == 2
    assert "run card" in last_error(capsys)
    (empty / "run.json").write_text(json.dumps({"request": {"model": str(tiny_model), "forget": ["3"]}}))
    assert main(["relearn", "--run", str(empty), "--set", "speed=9"]) == 2
    assert "unknown setting" in last_error(capsys)
    assert main(["relearn", "--run", str(empty), "--set", "steps=0"]) == 2
    assert "steps" in last_error(capsys)
    assert main(["relearn", "--run", str(empty), "--set", "steps=301"]) == 2  # the profile allows 300
    assert "allows" in last_error(capsys)
    assert main(["relearn", "--run", str(empty)]) == 2  # run.json but no edit.safetensors
    assert "edit" in last_error(capsys)


def tiny_run(tmp_path: Path, tiny_model: Path, capsys) -> Path:
    """A finished one-step ESD run folder on the tiny model (forget 3, keep 1 and 7)."""
    out = tmp_path / "run"
    args = ["run", "--model", str(tiny_model), "--forget", "3", "--preserve", "1,7", "--out", str(out),
            "--set", "iterations=1", "--set", "ddim_steps=2", "--set", "batch_size=1", "--forget-samples", "2",
            "--retain-samples", "1", "--steps", "2", "--device", "cpu"]
    assert main(args) == 0
    capsys.readouterr()
    return out


def test_cli_end_to_end(tmp_path, tiny_model, capsys, profile_file):
    out = tiny_run(tmp_path, tiny_model, capsys)
    sets = [x for k, v in {**TINY_RELEARN, "steps": 1, "mode": "lora"}.items() for x in ("--set", f"{k}={v}")]
    assert main(["relearn", "--run", str(out), *sets]) == 0
    printed = capsys.readouterr().out
    assert "after unlearning" in printed and "after fine-tune" in printed
    saved = json.loads((out / "relearn.json").read_text())
    assert [r["model"] for r in saved["report"]["rows"]] == ["original", "after unlearning", "after fine-tune"]
    assert saved["settings"]["mode"] == "lora" and saved["benign"] == ["1", "7"]
    assert saved["report"]["seeds"] == json.loads((out / "run.json").read_text())["comparison"]["seeds"]


def test_app_handler_runs_the_test_on_the_last_run(tmp_path, tiny_model, capsys, profile_file):
    from unlearning.ui import relearn as ui_relearn
    from unlearning.ui import unlearn as ui

    out = tiny_run(tmp_path, tiny_model, capsys)
    assert "Run an unlearning first" in next(ui.relearn_test(None))
    outputs = list(ui_relearn.relearn_with_table(str(out), [], overrides={**TINY_RELEARN, "steps": 1}))
    messages = [m for m, _, _ in outputs]
    assert messages[0].startswith("Fine-tuning") and "| after fine-tune |" in messages[-1] and "Relearn gap" in messages[-1]
    history, table = outputs[-1][1], outputs[-1][2]
    assert [h["row"]["method"] for h in history] == ["esd"] and "| esd | benign fine-tune |" in table
    # the few-shot attack (the number box beside the button) is said in the message and kept apart in the table
    outputs = list(ui_relearn.relearn_with_table(str(out), history, 2.0, overrides={**TINY_RELEARN, "steps": 1}))
    assert "2 image(s) of the forgotten concept" in outputs[0][0] and "+ 2 image(s) of 3" in outputs[-1][0]
    assert "| esd | 2-shot relearning |" in outputs[-1][2] and "1 earlier test(s)" in outputs[-1][2]
    assert list(ui.relearn_test(str(tmp_path / "none")))[-1].startswith("**Could not run the relearning test:**")


def test_comparison_table_keeps_one_row_per_method_on_the_same_seeds():
    from unlearning.ui import relearn as ui_relearn

    def result(method: str, after: float, seeds: dict) -> dict:
        rows = [{"model": m, "forget_rate": f, "retain_accuracy": 0.9} for m, f in
                (("original", 1.0), ("after unlearning", 0.0), ("after fine-tune", after))]
        return {"method": method, "model": "digits", "forget": ["3"], "settings": {"lr": 1e-3},
                "report": {"rows": rows, "relearn_gap": after, "seeds": seeds, "n_forget": 2}}

    same, other = {"forget:3": [0, 1]}, {"forget:3": [5, 6]}
    history = ui_relearn.add_result([], result("esd", 0.5, same))
    history = ui_relearn.add_result(history, result("resalign", 0.1, same))
    history = ui_relearn.add_result(history, result("esd", 0.25, same))  # a re-run replaces the method's row
    table = ui_relearn.comparison_markdown(history)
    assert [h["row"]["method"] for h in history] == ["resalign", "esd"]
    assert "| esd | benign fine-tune | 1.00 | 0.00 | 0.25 | +0.25 |" in table
    assert "| resalign | benign fine-tune | 1.00 | 0.00 | 0.10 |" in table
    history = ui_relearn.add_result(history, result("uce", 0.0, other))  # other seeds: not comparable, hidden
    table = ui_relearn.comparison_markdown(history)
    assert "| uce |" in table and "| esd |" not in table and "2 earlier test(s)" in table


def test_few_shot_attack_adds_the_forgotten_concept_and_benign_never_does(adapter, task, edit, monkeypatch):
    """forget_shots = 0 (the paper's benign test) never draws the forgotten concept; k > 0 draws k images of it."""
    built: list[tuple[list[str], int]] = []
    real = R.ConceptPool.build

    def spy(adapter_, concepts, per_concept, seed, condition_on=None):
        built.append((list(concepts), per_concept))
        return real(adapter_, concepts, per_concept, seed, condition_on)

    monkeypatch.setattr(R.ConceptPool, "build", spy)
    R.relearn(adapter, edit, task, R.relearn_settings(None, {**TINY_RELEARN, "steps": 1}))
    assert built and all("3" not in concepts for concepts, _ in built), built
    built.clear()
    result = R.relearn(adapter, edit, task, R.relearn_settings(None, {**TINY_RELEARN, "steps": 1, "forget_shots": 3}))
    assert (["3"], 3) in built, built
    assert result.edit.settings["relearn"]["forget_shots"] == 3
    with pytest.raises(InputError, match="forget_shots"):
        R.relearn_settings(None, {"forget_shots": -1})


def test_comparison_table_gets_an_attack_column_only_with_several_attacks():
    from unlearning.attacks.comparison import format_comparison

    row = {"method": "esd", "forget_original": 1.0, "forget_unlearned": 0.0, "forget_finetuned": 0.5, "relearn_gap": 0.5,
           "retain_unlearned": 0.9, "retain_finetuned": 0.8, "fid_unlearned": 10.0, "fid_finetuned": 12.0, "n_forget": 32}
    plain = format_comparison([row])
    assert "attack" not in plain.splitlines()[0] and "| esd | 1.00 | 0.00 | 0.50 | +0.50 |" in plain
    two = format_comparison([{**row, "attack": "benign"}, {**row, "attack": "8-shot", "forget_finetuned": 1.0}])
    lines = two.splitlines()
    assert "| attack |" in lines[0] and lines[1].count("|") == lines[0].count("|")
    assert "| esd | 8-shot | 1.00 | 0.00 | 1.00 |" in two
