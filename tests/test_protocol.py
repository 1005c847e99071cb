"""The benchmark protocol (unlearning/benchmarks/protocol.py): its arithmetic on hand-made grids, its files,
resuming from the cell store, parallel and Ray executors giving the same table, and the user's mistakes.

End-to-end cases run on the untrained ``tiny_model`` (noise pictures; plumbing only) with closed-form methods
and a 2-step sampler, so the file stays well under a minute.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from unlearning.benchmarks import protocol as P
from unlearning.benchmarks.cells import CellStore
from unlearning.benchmarks.protocol_results import CSV_COLUMNS, ORIGINAL, summarise
from unlearning.cli import main
from unlearning.errors import InputError

SHAPES = P.ConceptSet("toy", (("object", ("star", "ring")), ("style", ("red", "orange"))), "{a} {style} {object}")


def entry(obj: str, style: str, n: int, obj_hits: int, style_hits: int) -> dict:
    return {"cell": {"object": obj, "style": style}, "n": n, "hits": {"object": obj_hits, "style": style_hits}}


# ---- arithmetic ------------------------------------------------------------------------------------------------

def test_grid_and_prompts_follow_the_template():
    assert SHAPES.grid() == [{"object": o, "style": s} for o in ("star", "ring") for s in ("red", "orange")]
    assert [SHAPES.prompt(c) for c in SHAPES.grid()] == ["a red star", "an orange star", "a red ring", "an orange ring"]
    canvas = P.ConceptSet("uc", (("object", ("Dogs",)), ("style", ("Van_Gogh",))), P.UNLEARNCANVAS_TEMPLATE)
    assert canvas.prompt(canvas.grid()[0]) == "An Dogs image in Van Gogh style."
    assert SHAPES.select("all") == ["star", "ring", "red", "orange"]
    assert SHAPES.select("ring, red") == ["ring", "red"]
    with pytest.raises(InputError, match="'heart' is not in the toy concept set"):
        SHAPES.select("heart")


def test_ua_ira_cra_from_hit_counts():
    # forgetting "star": star images (8) recognised as star 2 times -> UA 6/8; ring images (8) recognised 7 -> IRA 7/8;
    # colour recognised on 3 + 4 + 4 + 3 of 16 images (forgotten concept's included) -> CRA 14/16
    grid = [entry("star", "red", 4, 1, 3), entry("star", "orange", 4, 1, 4), entry("ring", "red", 4, 4, 4),
            entry("ring", "orange", 4, 3, 3)]
    scores = P.row_scores(grid, "star", "object")
    assert scores == {"ua": 6 / 8, "ira": 7 / 8, "cra": 14 / 16, "n_forget": 8, "n_retain": 8}
    # forgetting the colour "red": red images' colour recognised 3 + 4 of 8 -> UA 1/8; orange 4 + 3 of 8 -> IRA 7/8;
    # shapes recognised 1 + 1 + 4 + 3 of 16 -> CRA 9/16
    assert P.row_scores(grid, "red", "style") == {"ua": 1 / 8, "ira": 7 / 8, "cra": 9 / 16, "n_forget": 8, "n_retain": 8}
    one_kind = [{"cell": {"object": d}, "n": 5, "hits": {"object": h}} for d, h in (("3", 1), ("4", 5), ("5", 4))]
    assert P.row_scores(one_kind, "3", "object") == {"ua": 4 / 5, "ira": 9 / 10, "cra": None, "n_forget": 5, "n_retain": 10}


def test_summary_means_intervals_and_worst_concept():
    rows = [{"method": "m", "concept": c, "seed": s, "ua": ua, "ira": 0.5, "cra": None, "fid": 1.0, "unlearn_s": 2.0,
             "peak_mem_bytes": 100, "edit_bytes": 10}
            for c, s, ua in (("a", 0, 1.0), ("a", 1, 0.8), ("b", 0, 0.2), ("b", 1, 0.4))]
    entry_ = summarise(rows)["m"]
    assert entry_["ua"] == pytest.approx(0.6) and entry_["n"] == 4
    low, high = entry_["ua_ci95"]
    assert low < 0.6 < high  # a Student-t interval over the 4 rows
    assert entry_["ira_ci95"] == [0.5, 0.5]  # equal values: the interval is the point
    assert entry_["cra"] is None and entry_["cra_ci95"] is None
    assert (entry_["worst_concept"], entry_["worst_ua"]) == ("b", pytest.approx(0.3))
    two = summarise(rows[:2])["m"]
    assert two["ua_ci95"] is None  # fewer than 3 values: no interval


def test_concept_file(tmp_path):
    f = tmp_path / "concepts.txt"
    f.write_text("# UnlearnCanvas-style\nobject: Dogs\nstyle: Van Gogh\nstyle: Monet  # a comment\nCats\n")
    cs = P.read_concept_file(f)
    assert cs.by_kind == {"object": ("Dogs", "Cats"), "style": ("Van Gogh", "Monet")}
    assert cs.template == P.UNLEARNCANVAS_TEMPLATE
    f.write_text("template: a photo of {object}\ndog\ncat\n")
    assert P.read_concept_file(f).prompt({"object": "dog"}) == "a photo of dog"
    f.write_text("colour: red\n")
    with pytest.raises(InputError, match="'colour' is not a kind"):
        P.read_concept_file(f)
    f.write_text("template: a {object}\nstyle: Monet\n")
    with pytest.raises(InputError, match="does not name"):
        P.read_concept_file(f)
    f.write_text("# nothing\n")
    with pytest.raises(InputError, match="names no concepts"):
        P.read_concept_file(f)


def test_cell_store_keys_and_files(tmp_path):
    store = CellStore(tmp_path / "cells")
    key = store.key("m", "uce", "Van Gogh", 0, {"lam": 0.5})
    assert key == store.key("m", "uce", "Van Gogh", 0, {"lam": 0.5})
    assert key.settings_hash != store.key("m", "uce", "Van Gogh", 0, {"lam": 0.6}).settings_hash
    assert key.settings_hash != store.key("other", "uce", "Van Gogh", 0, {"lam": 0.5}).settings_hash
    payload = json.dumps({"model": "m", "method": "uce", "settings": {"lam": 0.5}}, sort_keys=True)
    assert key.settings_hash == hashlib.sha256(payload.encode()).hexdigest()[:12]  # the documented key
    assert store.folder(key) == tmp_path / "cells" / "uce" / "Van_Gogh" / f"seed0-{key.settings_hash}"
    assert store.get(key) is None and store.get_measure(key, "protocol-x") is None
    store.put(key, {"status": "done", "unlearn_s": 1.0})
    store.put_measure(key, "protocol-x", {"ua": 1.0})
    assert store.get(key)["unlearn_s"] == 1.0 and store.get(key)["edit"] is None and store.load_edit(key) is None
    assert store.get_measure(key, "protocol-x") == {"ua": 1.0}
    assert [(folder.name, cell["concept"]) for folder, cell in store.cells()] == [(f"seed0-{key.settings_hash}", "Van Gogh")]
    (store.folder(key) / "cell.json").write_text("{half a reco")  # unreadable: treated as missing, so it is recomputed
    assert store.get(key) is None


# ---- end to end on the tiny model -------------------------------------------------------------------------------

def config(model: Path, out: Path, **kw) -> P.ProtocolConfig:
    base = dict(model=str(model), methods="uce,scapre", concepts="3,5", seeds=1, out=out, device="cpu",
                samples_per_prompt=2, num_inference_steps=2)
    return P.ProtocolConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def finished(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("protocol")
    protocol = P.resolve_protocol(config(tiny_model, out))
    result = P.run_protocol(protocol, quiet=True)
    from unlearning.benchmarks.protocol_results import write_outputs

    write_outputs(result, out)
    return protocol, result, out


def test_protocol_json_schema_and_rows(finished):
    protocol, result, out = finished
    data = json.loads((out / "protocol.json").read_text())
    assert data["model"] == protocol.model_id
    assert [(r["method"], r["concept"], r["seed"]) for r in data["rows"]] == [
        (m, c, 0) for m in ("uce", "scapre") for c in ("3", "5")]
    for row in data["rows"]:
        assert set(row) == {"method", "concept", "seed", "ua", "ira", "cra", "fid", "unlearn_s", "peak_mem_bytes", "edit_bytes"}
        assert 0 <= row["ua"] <= 1 and 0 <= row["ira"] <= 1 and row["cra"] is None  # digits: one kind, no CRA
        assert row["unlearn_s"] > 0 and row["peak_mem_bytes"] > 10 * 2**20 and row["edit_bytes"] > 0
    for method in ("uce", "scapre"):
        summary = data["summary"][method]
        assert {"ua", "ira", "cra", "fid", "unlearn_s", "worst_concept", "worst_ua"} <= set(summary)
        mine = [r for r in data["rows"] if r["method"] == method]
        assert summary["ua"] == pytest.approx(sum(r["ua"] for r in mine) / 2)
        assert summary["worst_ua"] == min(r["ua"] for r in mine)
    assert data["missing"] == [] and data["failed"] == []
    assert [r["concept"] for r in data["original"]["rows"]] == ["3", "5"]


def test_rows_recompute_from_the_stored_grid(finished):
    protocol, result, _ = finished
    for job, key in zip(protocol.jobs(), protocol.cell_keys(), strict=True):
        measure = protocol.store.get_measure(key, protocol.measure)
        if job.method == ORIGINAL:
            assert len(measure["grid"]) == 10 and all(e["n"] == 2 for e in measure["grid"])
            continue
        again = P.row_scores(measure["grid"], job.concept, "object")
        assert (again["ua"], again["ira"]) == (measure["ua"], measure["ira"])
        assert protocol.store.get(key)["status"] == "done" and protocol.store.edit_path(key).is_file()


def test_csv_and_heatmap(finished):
    _, result, out = finished
    rows = list(csv.reader(io.StringIO((out / "protocol.csv").read_text())))
    assert rows[0] == CSV_COLUMNS
    assert [r[0] for r in rows[1:]] == [ORIGINAL, "uce", "scapre"]
    uce = rows[2]
    assert uce[1:4] == ["", "", ""]  # no styles on digits
    assert float(uce[4]) == pytest.approx(100 * result["by_kind"]["object"]["uce"]["ua"], abs=0.01)
    from PIL import Image

    with Image.open(out / "heatmap.png") as image:
        assert image.size[0] > 100 and image.size[1] > 100


def test_resume_runs_only_missing_cells(finished, tmp_path, monkeypatch):
    protocol, result, out = finished
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    again = P.resolve_protocol(config(Path(protocol.config.model), copy))
    sampled, unlearned = [], []
    real_measure, real_unlearn = P.measure_grid, P.unlearn_cell

    def measuring(adapter, plan, judge, unet, seed, concept):
        sampled.append(concept)
        return real_measure(adapter, plan, judge, unet, seed, concept)

    def unlearning(run, device):
        unlearned.append((run.spec.name, run.task.forget[0]))
        return real_unlearn(run, device)

    monkeypatch.setattr(P, "measure_grid", measuring)
    monkeypatch.setattr(P, "unlearn_cell", unlearning)
    assert P.run_protocol(again, quiet=True)["rows"] == result["rows"] and sampled == []  # all stored: nothing runs
    keys = dict(zip([(j.method, j.concept) for j in again.jobs()], again.cell_keys(), strict=True))
    (again.store.folder(keys["scapre", "5"]) / f"{again.measure}.json").unlink()  # the measurement lost, the edit kept
    shutil.rmtree(again.store.folder(keys["uce", "3"]))  # the whole cell lost
    resumed = P.run_protocol(again, quiet=True)
    assert sorted(sampled) == ["3", "5"] and unlearned == [("uce", "3")]  # the kept edit is measured, not unlearned again
    assert resumed["rows"] == [{**r, "unlearn_s": s["unlearn_s"], "peak_mem_bytes": s["peak_mem_bytes"]}
                               for r, s in zip(result["rows"], resumed["rows"], strict=True)]  # same seeds: same scores
    unlearned.clear()
    changed = P.resolve_protocol(config(Path(protocol.config.model), copy, overrides={"uce": {"preserve_scale": 0.25}}))
    P.run_protocol(changed, quiet=True)
    assert unlearned == [("uce", "3"), ("uce", "5")]  # a changed setting is a new cell


def test_an_edit_of_the_conditioner_is_measured_through_it(finished, tmp_path, monkeypatch):
    """A stored edit that changes the label encoder (as AdvUnlearn's does) is sampled with that encoder: the
    grid goes through ``adapter.edited(edit)``, not the UNet part alone (which refused such an edit)."""
    from unlearning.edit import Edit

    protocol, _, out = finished
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    again = P.resolve_protocol(config(Path(protocol.config.model), copy))
    keys = dict(zip([(j.method, j.concept) for j in again.jobs()], again.cell_keys(), strict=True))
    folder = again.store.folder(keys["uce", "3"])
    stored = again.store.load_edit(keys["uce", "3"])
    shutil.rmtree(folder)  # an edit found without its cell.json: measured, not unlearned again
    from unlearning.models.catalog import load_adapter

    encoder = load_adapter(str(protocol.config.model), "cpu").label_encoder
    name, weight = next(iter(encoder.state_dict().items()))
    edit = Edit(params={**stored.params, f"label_encoder.{name}": weight.flip(0).clone()}, method="uce", timings={"unlearn_s": 1.5})
    edit.save(again.store.edit_path(keys["uce", "3"]))
    seen = []
    real = P.measure_grid

    def measuring(adapter, plan, judge, unet, seed, concept):
        seen.append((concept, adapter.label_encoder.state_dict()[name].clone()))
        return real(adapter, plan, judge, unet, seed, concept)

    monkeypatch.setattr(P, "measure_grid", measuring)
    result = P.run_protocol(again, quiet=True)
    assert result["failed"] == [] and [c for c, _ in seen] == ["3"]
    assert torch.equal(seen[0][1], weight.flip(0))  # sampled with the edited encoder
    cell = again.store.get(keys["uce", "3"])
    assert cell["reused"] and cell["unlearn_s"] == 1.5 and cell["peak_mem_bytes"] is None


def test_parallel_jobs_give_the_same_table(finished, tmp_path):
    protocol, result, _ = finished
    parallel = P.run_protocol(P.resolve_protocol(config(Path(protocol.config.model), tmp_path, jobs=2)), quiet=True)
    assert parallel["rows"] == [{**r, "unlearn_s": p["unlearn_s"], "peak_mem_bytes": p["peak_mem_bytes"]}
                                for r, p in zip(result["rows"], parallel["rows"], strict=True)]


def test_a_worker_result_crosses_processes_by_value():
    """The parallel path packs an edit's tensors as bytes: torch's pickler would pass each tensor as a file descriptor,
    and a long run ran out of them."""
    import pickle

    from unlearning.edit import Edit

    params = {"a.weight": torch.randn(3, 4), "b.bias": torch.randn(5).to(torch.bfloat16)}
    edit = Edit(params=params, method="uce", settings={"lam": 0.1}, timings={"unlearn_s": 1.0})
    packed = P.pack_result(({"status": "ok"}, {"ua": 0.5}, edit))
    blob = pickle.dumps(packed)
    assert b"torch" not in blob  # no tensor inside, only bytes and plain data
    cell, measure, back = P.unpack_result(pickle.loads(blob))
    assert cell == {"status": "ok"} and measure == {"ua": 0.5}
    assert (back.method, back.settings, back.timings) == ("uce", {"lam": 0.1}, {"unlearn_s": 1.0})
    assert back.params.keys() == params.keys() and all(torch.equal(back.params[n], t) for n, t in params.items())
    assert back.params["b.bias"].dtype == torch.bfloat16
    assert P.unpack_result(P.pack_result(({"status": "failed"}, None, None))) == ({"status": "failed"}, None, None)


def test_cli_protocol_and_its_errors(tiny_model, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cli"
    args = ["bench", "protocol", "--model", str(tiny_model), "--methods", "uce", "--concepts", "3", "--out", str(out),
            "--samples-per-prompt", "1", "--steps", "2", "--device", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "| uce |" in printed.out and (out / "protocol.json").is_file() and (out / "heatmap.png").is_file()

    def no_sampling(*a, **k):
        raise AssertionError("--collect must not sample")

    with monkeypatch.context() as patch:  # --collect: the table of the stored cells; a method not run yet is listed as missing
        patch.setattr(P, "measure_grid", no_sampling)
        assert main([*args, "--methods", "uce,scapre", "--collect"]) == 0
        data = json.loads((out / "protocol.json").read_text())
        assert [r["method"] for r in data["rows"]] == ["uce"] and data["missing"] == [{"method": "scapre", "concept": "3", "seed": 0}]
        assert "| uce |" in capsys.readouterr().out
        assert main([*args, "--out", str(tmp_path / "empty"), "--collect"]) == 2
        assert "found no measured cells" in capsys.readouterr().err
    for bad, fragment in ((["--concepts", "11"], "'11' is not in the digits concept set"),
                          (["--methods", "nope"], "unknown method 'nope'"),
                          (["--set", "esd.iterations=2"], "--set names method(s) esd"),
                          (["--set", "uce.nope=1"], "unknown setting(s) nope"),
                          (["--set", "iterations=2"], "METHOD.KEY=VALUE"),
                          (["--seeds", "0"], "--seeds must be at least 1"),
                          (["--first-seed", "-1"], "--first-seed must be 0 or more")):
        assert main([*args, *bad]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and fragment in err.strip().splitlines()[-1], err


def test_real_sd_path_with_a_concept_file_and_the_users_classifier(tmp_path):
    """A text-to-image folder without a vocabulary (as real SD) scored by a classifier folder the user gives: the
    shapes-sd twin's components without its twin.json, and its evaluator folder as the user's classifier."""
    from unlearning.models.catalog import ASSETS

    twin = ASSETS / "shapes-sd"
    folder = tmp_path / "plain-sd"
    folder.mkdir()
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "model_index.json"):
        (folder / part).symlink_to(twin / part)
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("template: {a} {style} {object}\nobject: star\nobject: ring\nstyle: red\n")
    protocol = P.resolve_protocol(P.ProtocolConfig(model=str(folder), methods="uce", concepts=str(concepts), out=tmp_path / "o",
                                                   device="cpu", samples_per_prompt=1, num_inference_steps=2,
                                                   classifier=str(twin / "evaluator")))
    assert protocol.plan.concept_set.grid() == [{"object": "star", "style": "red"}, {"object": "ring", "style": "red"}]
    assert protocol.judge == "classifier evaluator"
    result = P.run_protocol(protocol, quiet=True)
    assert [(r["concept"], r["fid"]) for r in result["rows"]] == [("star", None), ("ring", None), ("red", None)]  # no real data
    assert all(r["cra"] is not None for r in result["rows"])
    with pytest.raises(InputError, match="no concept vocabulary"):
        P.resolve_protocol(P.ProtocolConfig(model=str(folder), methods="uce", out=tmp_path / "p", device="cpu"))


def test_more_seeds_later_in_another_folder_merge_into_the_table(tiny_model, tmp_path, capsys):
    """`--seeds 1 --first-seed 1` measures seed 1 only (its own original grid, its own unlearning run); merged with the
    seed-0 table, each method's summary is over both seeds."""
    from unlearning.benchmarks.protocol_results import merge_results

    args = ["bench", "protocol", "--model", str(tiny_model), "--methods", "uce", "--concepts", "3", "--samples-per-prompt", "1",
            "--steps", "2", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "s0")]) == 0
    assert main([*args, "--out", str(tmp_path / "s1"), "--seeds", "1", "--first-seed", "1"]) == 0
    capsys.readouterr()
    first, later = (json.loads((tmp_path / name / "protocol.json").read_text()) for name in ("s0", "s1"))
    assert later["protocol"]["seeds"] == [1] and [r["seed"] for r in later["rows"]] == [1]
    assert {r["seed"] for r in later["original"]["rows"]} == {1}
    merged = merge_results([first, later])
    assert [(r["method"], r["seed"]) for r in merged["rows"]] == [("uce", 0), ("uce", 1)] and merged["missing"] == []
    assert merged["summary"]["uce"]["n"] == 2
    assert merged["summary"]["uce"]["ua"] == pytest.approx((first["rows"][0]["ua"] + later["rows"][0]["ua"]) / 2)


def _result(methods, rows, *, settings=None, steps=25):
    concepts = ["star", "red"]
    original = [{"method": "original", "concept": c, "seed": 0, "ua": 0.0, "ira": 0.9, "cra": 0.9, "fid": 1.0} for c in concepts]
    return {"model": "shapes-sd", "rows": rows, "original": {"rows": original}, "failed": [], "missing": [],
            "protocol": {"version": 1, "concept_set": "shapes-sd", "template": "{a} {style} {object}", "samples_per_prompt": 4,
                         "num_inference_steps": steps, "guidance_scale": 5.0, "sampler": "ddim", "judge": "evaluator",
                         "methods": methods, "concepts": concepts, "seeds": [0], "kinds": {"object": ["star"], "style": ["red"]},
                         "settings": settings or {m: {"lr": 1} for m in methods}, "cell_seconds_total": 10.0, "elapsed_s": 12.0}}


def _row(method, concept, ua):
    return {"method": method, "concept": concept, "seed": 0, "ua": ua, "ira": 0.8, "cra": 0.7, "fid": 2.0, "unlearn_s": 1.0}


def test_merging_protocol_results_unions_cells_and_recomputes_what_is_missing():
    from unlearning.benchmarks.protocol_results import csv_text, merge_results

    old = _result(["uce", "esd"], [_row("uce", "star", 0.5), _row("uce", "red", 0.25)])  # esd never measured
    new = _result(["esd", "uce"], [_row("esd", "star", 1.0), _row("uce", "red", 0.75)])
    merged = merge_results([old, new])
    assert merged["protocol"]["methods"] == ["uce", "esd"] and merged["protocol"]["merged_from"] == 2
    assert merged["summary"]["uce"]["ua"] == pytest.approx((0.5 + 0.75) / 2)  # the later (uce, red) replaces the earlier
    assert merged["by_kind"]["style"]["uce"]["ua"] == pytest.approx(0.75) and merged["by_kind"]["object"]["esd"]["ua"] == 1.0
    assert merged["missing"] == [{"method": "esd", "concept": "red", "seed": 0}]
    assert merged["protocol"]["cell_seconds_total"] == 20.0 and merged["protocol"]["elapsed_s"] == 24.0
    assert "esd" in csv_text(merged)


def test_coverage_lines_say_each_seed_once_it_has_several():
    """bench/protocol_tables.py's coverage list under a table: one seed as before; with more seeds, seeds of the same
    coverage together."""
    import importlib.util

    from unlearning.benchmarks.protocol_results import merge_results

    spec = importlib.util.spec_from_file_location("protocol_tables", Path(__file__).resolve().parents[1] / "bench" / "protocol_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    first = _result(["uce", "esd"], [_row("uce", "star", 0.5), _row("uce", "red", 0.5), _row("esd", "star", 1.0)])
    assert tables.coverage(merge_results([first])).splitlines() == ["- uce: all measured", "- esd: 1 of 2 measured (star); missing: red"]
    later = _result(["esd"], [{**_row("esd", "star", 0.9), "seed": 1}, {**_row("esd", "red", 0.8), "seed": 1}])
    later["protocol"]["seeds"] = [1]
    for r in later["original"]["rows"]:
        r["seed"] = 1
    assert tables.coverage(merge_results([first, later])).splitlines() == [
        "- uce: seed 0: all measured; seed 1: not measured", "- esd: seed 0: 1 of 2 measured (star); missing: red; seed 1: all measured"]


def test_merging_refuses_results_that_are_not_comparable():
    from unlearning.benchmarks.protocol_results import merge_results
    from unlearning.errors import InputError

    base = _result(["uce"], [_row("uce", "star", 0.5)])
    with pytest.raises(InputError, match="num_inference_steps"):
        merge_results([base, _result(["uce"], [], steps=50)])
    with pytest.raises(InputError, match="different settings"):
        merge_results([base, _result(["uce"], [], settings={"uce": {"lr": 2}})])
    with pytest.raises(InputError, match="nothing to merge"):
        merge_results([])


def test_merging_a_retuned_method_takes_it_whole_from_the_last_result():
    """`--replace`: a method retuned since the earlier result is not refused; its old rows go, even for a concept the
    later result has not measured again (missing, not kept at the old settings)."""
    from unlearning.benchmarks.protocol_results import merge_results
    from unlearning.errors import InputError

    old = _result(["sld", "uce"], [_row("sld", "star", 0.1), _row("sld", "red", 0.2), _row("uce", "star", 0.5)])
    new = _result(["sld"], [_row("sld", "star", 0.9)], settings={"sld": {"lr": 2}})
    with pytest.raises(InputError, match="different settings"):
        merge_results([old, new])
    merged = merge_results([old, new], replace=["sld"])
    # the replaced method keeps its place in the plan's order (the tables follow the rows)
    assert [(r["method"], r["concept"], r["ua"]) for r in merged["rows"]] == [("sld", "star", 0.9), ("uce", "star", 0.5)]
    assert merged["protocol"]["settings"] == {"sld": {"lr": 2}, "uce": {"lr": 1}}
    assert {"method": "sld", "concept": "red", "seed": 0} in merged["missing"]
    assert merged["summary"]["sld"]["ua"] == pytest.approx(0.9)
    with pytest.raises(InputError, match="nothing to replace for esd"):
        merge_results([old, new], replace=["esd"])
