"""The Runs tab's handlers: list run folders, reopen one, compare two (two tiny real runs, no browser)."""

from __future__ import annotations

import json

import pytest

from unlearning.hosting.profile import HostProfile, Runs, get_profile
from unlearning.runner import RunRequest, execute, prepare
from unlearning.ui import runs as ui_runs


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, iterations in (("a-run", 1), ("b-run", 2)):
        run = prepare(RunRequest(model="digits", method="esd", forget=["3"], settings={"iterations": iterations, "ddim_steps": 2,
                                                                                        "batch_size": 1},
                                 forget_samples=2, retain_samples=1, num_inference_steps=2), HostProfile())
        list(execute(run, out_dir=root / name))
    (root / "not-a-run").mkdir()
    (root / "broken").mkdir()
    (root / "broken" / "run.json").write_text("{not json")
    return root


def test_list_shows_finished_runs_newest_first(runs_root):
    rows, names = ui_runs.runs_table(runs_root)
    assert names == ["b-run", "a-run"]  # no "not-a-run" (no run.json), no "broken" (unreadable)
    assert rows[0][0] == "b-run" and rows[0][2] == "digits" and rows[0][3] == "esd" and rows[0][4] == "3"
    assert "→" in rows[0][5]  # forget rate original -> unlearned


def test_reopen_shows_grids_and_metrics(runs_root):
    text, forget, retain, metrics = ui_runs.run_view("a-run", runs_root)
    assert "ESD" in text and "iterations=1" in text and "python -m unlearning run" in text
    assert forget.endswith("forget_grid.png") and retain.endswith("retain_grid.png")
    assert any(row[0].startswith("forget rate") for row in metrics)


def test_a_path_never_opens_a_run(runs_root):
    for bad in ("../a-run", str(runs_root / "a-run"), "not-a-run", "", None):
        text, forget, _, _ = ui_runs.run_view(bad, runs_root)
        assert text.startswith("**Could not open:**") and forget is None


def test_compare_puts_both_runs_side_by_side(runs_root):
    status, view_a, view_b, table = ui_runs.compare_view("a-run", "b-run", runs_root)
    assert "a-run" in status and "b-run" in status and "different models" not in status
    assert "iterations=1" in view_a[0] and "iterations=2" in view_b[0]
    metrics_a = json.loads((runs_root / "a-run" / "metrics.json").read_text())
    row = next(r for r in table if r[0].startswith("forget rate"))
    assert row[1].startswith(f"{metrics_a['forget_rate']['unlearned']:.2f}")
    assert ui_runs.compare_view("a-run", None, runs_root)[0] == "Pick two runs to compare."
    assert ui_runs.compare_view("a-run", "gone", runs_root)[0].startswith("**Could not compare:**")


def test_default_root_is_the_profiles(monkeypatch, runs_root):
    profile = HostProfile(runs=Runs(dir=runs_root))
    monkeypatch.setattr(ui_runs, "get_profile", lambda: profile)
    assert ui_runs.runs_table()[1] == ["b-run", "a-run"]
    assert get_profile() is not profile  # the process's profile itself is untouched


def test_export_from_the_tab_and_push_refused_by_the_profile(runs_root):
    import zipfile

    archive, status = ui_runs.export_run("a-run", runs_root)
    assert archive and archive.endswith("export.zip"), status
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
    assert {"README.md", "delta.safetensors", "run.json", "model/model_index.json"} <= names, sorted(names)
    assert "no LoRA" in status and "Stable Diffusion" in status  # a class-conditional twin: said, not silently skipped
    assert ui_runs.export_run("a-run", runs_root)[0] == archive  # the second click reuses the export
    assert ui_runs.export_run("nope", runs_root)[1].startswith("**Could not export:**")
    assert get_profile().hub_export is False  # the repo's profile
    assert "disabled on this instance" in ui_runs.push_run("a-run", "me/model", runs_root)
    assert "export the run first" in ui_runs.push_run("b-run", "me/model", runs_root)
