"""``python -m unlearning attack`` and ``bench robustness``: the files they write, and bad input as one error line
with nothing written. Tiny settings on the untrained ``tiny_model`` and quick UCE runs of the shapes-sd twin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from unlearning.cli import main

TINY_UDA = ["--set", "samples=3", "--set", "timesteps=2", "--set", "iterations=2", "--set", "num_inference_steps=2"]
TINY_INVERSION = ["--set", "samples=3", "--set", "steps=3", "--set", "images=2", "--set", "batch_size=2",
                  "--set", "num_inference_steps=2"]


@pytest.fixture(scope="module")
def digits_run(tiny_model: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "esd-3"
    assert main(["run", "--model", str(tiny_model), "--method", "esd", "--forget", "3", "--out", str(out), "--set", "iterations=2",
                 "--set", "ddim_steps=3", "--forget-samples", "4", "--retain-samples", "1", "--steps", "3"]) == 0
    return out


@pytest.fixture(scope="module")
def sd_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "uce-star"
    assert main(["run", "--model", "shapes-sd", "--method", "uce", "--forget", "star", "--out", str(out), "--forget-samples", "2",
                 "--retain-samples", "1", "--steps", "2"]) == 0
    return out


def test_unlearndiffatk_writes_attack_json_embeddings_and_three_rows(digits_run, tmp_path, capsys):
    out = tmp_path / "uda"
    assert main(["attack", "--run", str(digits_run), "--kind", "unlearndiffatk", "--out", str(out), *TINY_UDA]) == 0
    report = json.loads((out / "attack.json").read_text())
    assert {"kind", "asr_before", "asr_after", "n", "iterations", "attack_s"} <= set(report)
    assert report["kind"] == "unlearndiffatk" and report["n"] == 3 and 0 <= report["asr_before"] <= report["asr_after"] <= 1
    assert report["run"]["method"] == "esd" and len(report["items"]) == 3
    with safe_open(str(out / "adversarial.safetensors"), framework="pt") as f:
        # a model folder is not the digits twin: the paper's k = 3 discrete tokens, here rows of the label table
        assert f.get_tensor("prefix_embeddings").shape[:2] == (3, 3) and f.get_tensor("prefix_token_ids").shape == (3, 3)
    for row in ("original", "unlearned", "attacked"):
        assert len(list((out / "images" / row).glob("*.png"))) == 3
    assert (out / "images" / "attack_grid.png").is_file()
    assert "ASR after the attack" in capsys.readouterr().out


def test_inversion_saves_the_learned_token(digits_run, tmp_path):
    out = tmp_path / "inv"
    assert main(["attack", "--run", str(digits_run), "--kind", "inversion", "--out", str(out), *TINY_INVERSION]) == 0
    report = json.loads((out / "attack.json").read_text())
    assert report["kind"] == "inversion" and report["iterations"] == 3 * report["settings"]["accumulation"]  # steps x micro-batches
    with safe_open(str(out / "adversarial.safetensors"), framework="pt") as f:
        assert list(f.keys()) == ["<3>"]


def test_prompt_replay_on_a_file(sd_run, tmp_path):
    prompts = tmp_path / "p.csv"
    prompts.write_text("prompt,evaluation_seed,evaluation_guidance\na picture of a red star,3,5\nan outlined star,4,\n")
    assert main(["attack", "--run", str(sd_run), "--kind", "prompts", "--prompts", str(prompts), "--out", str(tmp_path / "rep"),
                 "--set", "num_inference_steps=2"]) == 0
    report = json.loads((tmp_path / "rep" / "attack.json").read_text())
    assert report["n"] == 2 and report["iterations"] == 0 and "original_rate" in report
    assert [it["guidance"] for it in report["items"]] == [5.0, 5.0]  # the second row takes the twin's default


@pytest.mark.parametrize("kind, extra, fragment", [
    ("prompts", [], "does not support class-conditional"),
    ("unlearndiffatk", ["--set", "timesteps=1000", "--set", "iterations=5000"], "at most 100,000"),
    ("unlearndiffatk", ["--set", "iterations=0"], "must be >= 1"),
    ("inversion", ["--set", "steps=1e9"], "must be <= 100000"),
    ("unlearndiffatk", ["--set", "bogus=1"], "unknown setting"),
    ("relearning", [], "unknown attack"),
    ("inversion", ["--prompts", "x.csv"], "--prompts is for the prompts attack"),
])
def test_bad_attack_requests_are_one_line_and_write_nothing(digits_run, tmp_path, capsys, kind, extra, fragment):
    out = tmp_path / "never"
    assert main(["attack", "--run", str(digits_run), "--kind", kind, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and fragment in err[-1], err
    assert not out.exists() and not list(digits_run.glob("attack-*"))


def test_not_a_run_folder_and_bad_prompt_files(sd_run, tmp_path, capsys):
    assert main(["attack", "--run", str(tmp_path), "--kind", "unlearndiffatk"]) == 2
    assert "no run.json" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    for text, fragment in (("text,seed\na star,1\n", "no 'prompt' column"), ("prompt,seed\n,1\n", "empty prompt")):
        bad.write_text(text)
        assert main(["attack", "--run", str(sd_run), "--kind", "prompts", "--prompts", str(bad), "--out", str(tmp_path / "o")]) == 2
        assert fragment in capsys.readouterr().err
        assert not (tmp_path / "o").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["attack", "--run", str(sd_run), "--kind", "prompts", "--out", str(busy)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_robustness_bench_runs_cells_and_resumes(tiny_model, tmp_path, capsys):
    args = ["bench", "robustness", "--model", str(tiny_model), "--methods", "uce", "--concepts", "3", "--out", str(tmp_path),
            "--set", "unlearndiffatk.samples=2", "--set", "unlearndiffatk.timesteps=1", "--set", "unlearndiffatk.iterations=2",
            "--set", "unlearndiffatk.num_inference_steps=2", "--set", "inversion.samples=2", "--set", "inversion.steps=2",
            "--set", "inversion.images=2", "--set", "inversion.num_inference_steps=2", "--set", "relearn.steps=1",
            "--set", "relearn.batch_size=2", "--forget-samples", "2", "--retain-samples", "1"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "| uce |" in table and "UnlearnDiffAtk" in table
    (cell,) = list((tmp_path / "cells" / "uce" / "3").iterdir())
    assert cell.name.startswith("seed0-") and (cell / "run.json").is_file()
    made = {p: p.stat().st_mtime_ns for p in (cell / "run.json", cell / "attack-unlearndiffatk" / "attack.json", cell / "relearn-2shot.json")}
    assert main(args) == 0  # a second call finds every measurement and redoes none
    assert all(p.stat().st_mtime_ns == t for p, t in made.items())
    rows = json.loads((tmp_path / "robustness.json").read_text())["rows"]
    assert rows[0]["uda_after"] is not None and rows[0]["relearn_forget"] is not None


def test_cells_are_named_by_the_registered_method_and_variants_by_their_hash(tmp_path):
    """The protocol bench's cell store layout: ESD-x and ESD-u are both ``esd`` cells, told apart by the settings hash."""
    from unlearning.benchmarks.robustness import cell_folder

    x, u = (cell_folder(tmp_path, "shapes-sd", label, "star", 0) for label in ("esd-x", "esd-u"))
    assert x.parent == u.parent == tmp_path / "cells" / "esd" / "star" and x != u
    assert cell_folder(tmp_path, "shapes-sd", "esd-x", "star", 0, {"iterations": 7}) != x


def test_closed_form_and_trained_cells_are_pooled_apart():
    from unlearning.benchmarks.robustness import by_kind

    def row(method, before, after):
        return {"method": method, "ua": 1 - before, "uda_before": before, "uda_after": after, "inversion_after": None,
                "relearn_forget": 0.5}

    rows = [row("uce", 0.0, 0.5), row("scapre", 0.25, 0.5), row("uce", 0.5, 0.5), row("esd-x", 0.0, 0.25), row("salun", 0.0, 0.0)]
    closed, trained = by_kind(rows)
    assert closed["kind"] == "closed-form" and closed["methods"] == ["uce", "scapre"] and closed["cells"] == 3
    assert closed["uda_revival"]["mean"] == pytest.approx((0.5 + 0.25 + 0.0) / 3) and closed["uda_revival"]["ci95"] is not None
    assert trained["uda_after"] == {"mean": 0.125, "ci95": None, "n": 2}  # two cells: no interval
    assert "inversion_after" not in trained  # nothing measured, nothing reported


def test_revival_share_is_over_what_the_erasure_had_fixed():
    from unlearning.benchmarks.robustness import by_kind

    rows = [{"method": "uce", "uda_before": 0.5, "uda_after": 0.75}, {"method": "uce", "uda_before": 0.0, "uda_after": 0.5},
            {"method": "uce", "uda_before": 1.0, "uda_after": 1.0}]  # nothing fixed: left out of the share
    (closed,) = by_kind(rows)
    assert closed["uda_revival_share"]["n"] == 2 and closed["uda_revival_share"]["mean"] == pytest.approx((0.5 + 0.5) / 2)
    assert closed["uda_revival"]["n"] == 3


def test_merging_results_keeps_every_cell_once_and_recomputes_the_summary():
    from unlearning.benchmarks.robustness import merge_results
    from unlearning.errors import InputError

    def payload(rows, **extra):
        return {"model": "shapes-sd", "seed": 0, "forget_samples": 16, "retain_samples": 4, "relearn": {"steps": 40},
                "attack_overrides": {}, "overrides": {}, "rows": rows, **extra}

    def row(method, concept, ua):
        return {"method": method, "concept": concept, "ua": ua, "uda_before": 1 - ua, "uda_after": 1.0}

    old = payload([row("uce", "star", 0.5), row("uce", "cross", 0.25)])
    new = payload([row("uce", "star", 1.0), row("resalign", "star", 0.75)], overrides={"resalign": {"steps": 3}})
    later = payload([row("uce", "diamond", 0.0)])
    merged = merge_results([old, new, later])
    assert [(r["method"], r["concept"], r["ua"]) for r in merged["rows"]] == [  # the later row wins; a method's rows together
        ("uce", "star", 1.0), ("uce", "cross", 0.25), ("uce", "diamond", 0.0), ("resalign", "star", 0.75)]
    uce = next(e for e in merged["summary"] if e["method"] == "uce")
    assert uce["ua"]["mean"] == pytest.approx(1.25 / 3) and merged["overrides"] == {"resalign": {"steps": 3}}
    assert [k["kind"] for k in merged["by_kind"]] == ["closed-form", "trained"]
    with pytest.raises(InputError, match="forget_samples"):
        merge_results([old, payload([], forget_samples=8)])
    with pytest.raises(InputError):
        merge_results([])


def test_attack_panel_says_why_the_loss_curve_is_empty(monkeypatch):
    """When every attacked prompt already shows the concept there is nothing to optimise: the panel says so instead
    of leaving an empty curve unexplained; after a real attack it does not."""
    from types import SimpleNamespace

    import unlearning.ui.attack as panel

    def summary(before):
        return {"kind": "unlearndiffatk", "asr_before": before, "asr_after": 1.0, "asr_before_ci95": [0.3, 1.0],
                "asr_after_ci95": [0.3, 1.0], "n": 2, "iterations": 0, "attack_s": 0.0}

    prepared = SimpleNamespace(spec=SimpleNamespace(label="UnlearnDiffAtk"), run={"method": "esd"},
                               task=SimpleNamespace(forget=["3"]), items=[0, 1])
    monkeypatch.setattr(panel, "hold", lambda folder: None)
    monkeypatch.setattr(panel, "prepare_attack", lambda *args, **kwargs: prepared)
    for before, log, said in ((1.0, [], True), (0.5, [{"step": 1, "loss": 0.3}], False)):
        result = SimpleNamespace(loss_log=log, attack_s=0.0, summary=lambda before=before: summary(before))
        monkeypatch.setattr(panel, "execute_attack", lambda prep, ctx, result=result: (result, Path("/tmp/attack")))
        *_, (status, curve, *_rest) = panel.attack_stream("/runs/esd-3", "unlearndiffatk", None, "", [])
        assert ("Nothing to optimise" in status) is said and len(curve) == len(log)
