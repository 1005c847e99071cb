"""What the CLI and the app share lives below both (unlearning.runner), so the two cannot drift: the relearning
test of a finished run (relearn_run: limits, fine-tune, report, relearn.json) and the run folder's lifecycle
(run_to_folder: where a run goes, its zip, retention). Plumbing only, on the untrained ``tiny_model``."""

from __future__ import annotations

import ast
import json
import stat
from pathlib import Path

import pytest

from unlearning.atomic import _umask
from unlearning.cli import main
from unlearning.hosting.profile import ENV_VAR, get_profile
from unlearning.runner import RunRequest, prepare, relearn_run, run_to_folder
from unlearning.ui import unlearn as ui

MAX_ITERATIONS = 300
TINY_ESD = {"iterations": 1, "ddim_steps": 2, "batch_size": 1}
TINY_RELEARN = {"steps": 1, "batch_size": 2, "accumulation": 1, "data_size": 2, "lr": 1e-3}
PACKAGE = Path(__file__).resolve().parents[1] / "unlearning"


@pytest.fixture()
def runs_root(tmp_path, monkeypatch) -> Path:
    """A hosted profile with known limits whose run folders go to a fresh folder (keep 2 runs); yields that folder."""
    root = tmp_path / "runs"
    path = tmp_path / "profile.yaml"
    path.write_text(f"models: [digits]\nmethods: all\nlimits: {{max_iterations: {MAX_ITERATIONS}, max_concepts: 16}}\n"
                    f"allow_local_models: true\nruns: {{dir: {root}, keep: 2}}\n")
    monkeypatch.setenv(ENV_VAR, str(path))
    get_profile.cache_clear()
    yield root
    get_profile.cache_clear()


def tiny_request(model: Path, seed: int = 0) -> RunRequest:
    return RunRequest(model=str(model), method="esd", forget=["3"], preserve=["1", "7"], settings=dict(TINY_ESD), seed=seed,
                      device="cpu", forget_samples=2, retain_samples=1, num_inference_steps=2)


def app_run(model: Path, seed: int = 0) -> Path:
    """One run through the app's handler; returns the run folder it reports."""
    outs = list(ui.run_stream(tiny_request(model, seed)))
    assert "**Done.**" in outs[-1].status, [o.status for o in outs if o.status]
    return Path(outs[-1].download).with_suffix("")


def test_the_app_handler_writes_zips_and_prunes_through_the_runner(tiny_model, runs_root, monkeypatch):
    folders = [app_run(tiny_model, seed) for seed in range(3)]
    for folder in folders:
        assert folder.parent == runs_root and (folder / "run.json").is_file() and folder.with_suffix(".zip").is_file()
    # the user's normal permissions, not the temp folder's 0700 / the temp file's 0600
    assert stat.S_IMODE(folders[-1].stat().st_mode) == 0o777 & ~_umask()
    assert stat.S_IMODE(folders[-1].with_suffix(".zip").stat().st_mode) == 0o666 & ~_umask()
    # keep 2, but a zip just offered for download holds its run: nothing is deleted yet
    assert all(f.exists() for f in folders)
    # an hour later the holds have lapsed: the next run prunes down to the two newest, zips included
    monkeypatch.setattr("unlearning.run_folder.held", set)
    folders.append(app_run(tiny_model, 3))
    assert [f.exists() for f in folders] == [False, False, True, True]
    assert not folders[0].with_suffix(".zip").exists() and folders[3].with_suffix(".zip").is_file()


def test_a_folder_the_user_names_is_written_there_and_nothing_is_pruned(tiny_model, runs_root, tmp_path):
    app_run(tiny_model, 0)
    app_run(tiny_model, 1)
    before = sorted(runs_root.iterdir())
    out = tmp_path / "mine"
    events = list(run_to_folder(prepare(tiny_request(tiny_model)), out))
    assert events[-1].kind == "done" and events[-1].folder == out and events[-1].archive is None
    assert (out / "run.json").is_file() and sorted(runs_root.iterdir()) == before


def finished_run(tiny_model: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    for _ in run_to_folder(prepare(tiny_request(tiny_model)), out):
        pass
    return out


def test_the_relearning_limit_is_enforced_in_the_cli_and_in_the_app(tiny_model, runs_root, tmp_path, capsys):
    run = finished_run(tiny_model, tmp_path)
    too_many = {**TINY_RELEARN, "steps": MAX_ITERATIONS + 1}
    assert main(["relearn", "--run", str(run), *[x for k, v in too_many.items() for x in ("--set", f"{k}={v}")]]) == 2
    cli_error = capsys.readouterr().err.strip().splitlines()[-1]
    messages = list(ui.relearn_test(str(run), too_many))
    assert len(messages) == 1 and messages[0].startswith("**Could not run the relearning test:**")
    assert cli_error.removeprefix("error: ") == messages[0].removeprefix("**Could not run the relearning test:** ")
    assert f"({MAX_ITERATIONS})" in cli_error and not (run / "relearn.json").exists()
    # at the limit both run it
    assert main(["relearn", "--run", str(run), "--set", f"steps={MAX_ITERATIONS}", "--set", "data_size=1",
                 "--set", "batch_size=1", "--set", "accumulation=1"]) == 0 or pytest.fail(capsys.readouterr().err)


def test_cli_and_app_write_the_same_relearning_record(tiny_model, runs_root, tmp_path, capsys):
    run = finished_run(tiny_model, tmp_path)
    sets = [x for k, v in TINY_RELEARN.items() for x in ("--set", f"{k}={v}")]
    assert main(["relearn", "--run", str(run), *sets]) == 0
    capsys.readouterr()
    from_cli = json.loads((run / "relearn.json").read_text())
    results: list[dict] = []
    messages = list(ui.relearn_test(str(run), dict(TINY_RELEARN), results))
    assert "Relearn gap" in messages[-1]
    from_app = json.loads((run / "relearn.json").read_text())
    for record in (from_cli, from_app, results[0]):
        assert {"method", "model", "forget", "benign", "settings", "report", "timings"} <= set(record)
    same = ("method", "model", "forget", "benign", "settings")
    assert {k: from_cli[k] for k in same} == {k: from_app[k] for k in same}
    assert from_cli["report"]["seeds"] == from_app["report"]["seeds"]
    events = [e.kind for e in relearn_run(run, dict(TINY_RELEARN))]
    assert events == ["finetune", "score", "done"]


def calls_in(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            names.add(f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "")
    return names


@pytest.mark.parametrize("path", [PACKAGE / "cli.py", PACKAGE / "ui" / "unlearn.py", PACKAGE / "ui" / "relearn.py"],
                         ids=lambda p: p.name)
def test_neither_front_end_runs_the_lifecycle_or_the_relearning_test_itself(path):
    """The CLI and the app call runner.run_to_folder / runner.relearn_run; folder handling and the fine-tune are not
    repeated in them (where they drifted before: the iteration limit was checked only in the CLI)."""
    own = calls_in(path) & {"execute", "new_run_folder", "prune_runs", "zip_run", "relearn", "relearn_report", "relearn_settings"}
    assert own == set()
