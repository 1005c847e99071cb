"""The causal-language-model family on a tiny model: data, harness-style scoring, the adapter, RMU and gradient
ascent (with and without UAM), the text comparison. Plumbing and maths, not quality (the twin's numbers are
in its model card and docs/language-model.md)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from unlearning.datasets import facts as data
from unlearning.errors import InputError
from unlearning.methods import get_method
from unlearning.methods.base import RunContext, UnlearnTask
from unlearning.metrics import lm as LM
from unlearning.models.causal_lm import CausalLMAdapter


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A facts-lm folder with a tiny, briefly trained model (its answers are near chance: plumbing only)."""
    from unlearning.embedded import facts_lm

    cfg = facts_lm.TwinConfig(hidden_size=32, num_hidden_layers=3, intermediate_size=64, num_attention_heads=2, steps=3,
                              batch_size=4)
    root = tmp_path_factory.mktemp("facts-lm")
    model, tokenizer, state = facts_lm.train(cfg, minutes=1, workdir=root / "work", eval_every=10**9)
    return facts_lm.write_twin(root / "facts-lm-tiny", model, tokenizer, state)


@pytest.fixture(scope="module")
def adapter(tiny_lm):
    return CausalLMAdapter(tiny_lm, torch.device("cpu"), torch.float32)


# ---- data --------------------------------------------------------------------------------------

def test_world_is_fixed_and_held_out_questions_are_never_training_text():
    a, b = data.World(), data.World()
    assert [(f.entity, f.attribute.name, f.value, f.split) for f in a.facts] == \
           [(f.entity, f.attribute.name, f.value, f.split) for f in b.facts]
    held_out = {q.question for d in data.DOMAINS for s in ("val", "test") for q in a.question_set(d, s)}
    rng = random.Random(0)
    examples = [next(a.training_texts(rng)) for _ in range(3000)]
    asked = {c for c, answer in examples if answer}
    assert not any(q in c for q in held_out for c in asked)
    assert any(answer in {" A", " B", " C", " D"} for _, answer in examples)  # letter questions are trained on ...
    assert any(answer and answer.strip() not in "ABCD" for _, answer in examples)  # ... and open ones
    for q in a.question_set("hazard", "test"):
        assert len(set(q.choices)) == 4 and 0 <= q.answer < 4


def test_prompt_is_the_harness_layout():
    q = LM.Question("Which organ?", ("liver", "heart", "skin", "eyes"), 1)
    pairs = LM.requests(q, "college_biology")
    assert pairs[0][0] == ("The following are multiple choice questions (with answers) about college biology.\n\n"
                           "Which organ?\nA. liver\nB. heart\nC. skin\nD. eyes\nAnswer:")
    assert [c for _, c in pairs] == [" A", " B", " C", " D"]
    assert [c for _, c in LM.requests(q, None, "cloze")] == [" liver", " heart", " skin", " eyes"]
    # the option with the highest log-likelihood is the answer (ties: the first)
    hits = next(LM.score_questions(lambda pairs: [0.0, -1.0, 5.0, 5.0], [q], None))
    assert hits == [False]
    assert LM.accuracy(lambda pairs: [-3.0, -1.0, -2.0, -9.0], [q], None) == 1.0
    with pytest.raises(InputError, match="answer index"):
        LM.Question("q", ("a", "b"), 2)


def test_published_layouts_are_read(tmp_path, monkeypatch):
    from unlearning.models import lm_data

    (tmp_path / "wmdp").mkdir()
    rows = [{"question": "What is X?", "choices": ["a", "b", "c", "d"], "answer": 2}]
    (tmp_path / "wmdp" / "wmdp-bio.json").write_text(json.dumps(rows))
    (tmp_path / "bio-forget-corpus.jsonl").write_text(json.dumps({"text": "x" * 60}) + "\n" + json.dumps({"text": "short"}) + "\n")
    test_dir = tmp_path / "mmlu" / "data" / "test"
    test_dir.mkdir(parents=True)
    (test_dir / "college_biology_test.csv").write_text('"Which cell?",red,white,"plate, let",stem,B\n')
    roots = [tmp_path]
    assert set(lm_data.published_names(roots)) == {"wmdp-bio", "mmlu"}
    bio = lm_data.published_domain("wmdp-bio", roots)
    assert bio.subject == "biology" and bio.questions[0].answer == 2 and bio.corpus == ["x" * 60]
    mmlu = lm_data.published_domain("mmlu", roots)
    assert mmlu.questions[0].choices == ("red", "white", "plate, let", "stem") and mmlu.questions[0].answer == 1
    assert mmlu.questions[0].subject == "college_biology"
    assert lm_data.published_domain("wmdp-cyber", roots) is None
    (tmp_path / "bad.json").write_text(json.dumps([{"question": "q"}]))
    with pytest.raises(InputError, match="question / choices / answer"):
        lm_data.read_questions(tmp_path / "bad.json")


# ---- the adapter ---------------------------------------------------------------------------------

def test_twin_folder_loads_like_a_hub_checkpoint(adapter, tiny_lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoTokenizer.from_pretrained(tiny_lm)("vexarine is made from")["input_ids"][0] == 1  # BOS
    assert type(AutoModelForCausalLM.from_pretrained(tiny_lm)).__name__ == "LlamaForCausalLM"
    assert adapter.concepts() == ["hazard", "general"]
    assert adapter.default_retain(["hazard"]) == ["general"]
    hazard = adapter.domain("Hazard")
    assert len(hazard.questions) == 60 and len(hazard.tuning_questions) == 60 and len(hazard.corpus) > 100
    with pytest.raises(InputError, match="available: hazard, general"):
        adapter.validate_concept("biology")


def test_loglikelihood_and_hidden_states_match_a_plain_forward(adapter):
    tm = adapter
    context, continuation = "the city of", " tammar lies in"
    whole = tm.encode(context + continuation)
    start = len(tm.encode(context))
    with torch.no_grad():
        logp = tm.model(torch.tensor([whole])).logits.log_softmax(-1)[0]
    expected = sum(float(logp[i - 1, whole[i]]) for i in range(start, len(whole)))
    assert tm.loglikelihood([(context, continuation), ("a", " b c")])[0] == pytest.approx(expected, abs=1e-4)
    ids, mask = tm.texts(["the city of tammar", "exposure to"])
    with torch.no_grad():
        states = tm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    torch.testing.assert_close(tm.hidden(ids, mask, 1), states[2].float())
    assert math.isfinite(tm.perplexity(["the city of tammar lies in", "exposure to x"]))


def test_edit_params_leave_the_base_untouched_and_match_an_edited_copy(adapter):
    name = adapter.parameter_names("mlp_out", [1])
    assert name == ["model.layers.1.mlp.down_proj.weight"]
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    new = {name[0]: torch.randn_like(dict(adapter.model.named_parameters())[name[0]])}
    edit = adapter.edit_from(new, method="test")
    ids, mask = adapter.texts(["the city of tammar"])
    substituted = adapter.logits(ids, mask, edit.params)
    with edit.applied(adapter.model):
        applied = adapter.logits(ids, mask)
    torch.testing.assert_close(substituted, applied)
    assert all(torch.equal(before[n], p) for n, p in adapter.model.named_parameters())
    assert not torch.allclose(substituted, adapter.logits(ids, mask))


def test_continuations_share_random_numbers(adapter):
    a = adapter.continue_text("the city of", temperature=1.0, seed=3, max_new_tokens=6)
    assert a == adapter.continue_text("the city of", temperature=1.0, seed=3, max_new_tokens=6)
    greedy = adapter.continue_text("the city of", max_new_tokens=6)
    assert greedy == adapter.continue_text("the city of", temperature=1e-6, seed=9, max_new_tokens=6)


# ---- methods -------------------------------------------------------------------------------------

def run(adapter, method: str, **overrides):
    spec = get_method(method).for_family("causal-lm")
    settings = spec.settings("facts-lm", {"iterations": 3, "batch_size": 2, **overrides})
    return spec.unlearn(adapter, UnlearnTask(forget=["hazard"], retain=["general"], seed=0), settings, RunContext())


def test_rmu_trains_only_the_mlp_out_of_its_layers_and_steers_forget_states(adapter):
    from unlearning.models.causal_lm import masked_mse

    edit = run(adapter, "rmu", iterations=6, lr=1e-2, steering=8.0, update_layers="0,1", layer=1)
    assert set(edit.params) == {f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1)}
    log = edit.loss_log
    assert log[-1]["forget_loss"] < log[0]["forget_loss"]  # the forget states move towards c u
    ids, mask = adapter.texts(adapter.domain("general").corpus[:4])
    before = adapter.hidden(ids, mask, 1)
    after = adapter.hidden(ids, mask, 1, edit.params)
    assert masked_mse(after, before, mask) < 1.0  # retain states stay near the frozen model's


def test_uam_wraps_rmu_and_neggrad_plus(adapter):
    plain = run(adapter, "rmu")
    wrapped = run(adapter, "rmu", uam=True, uam_rho=0.05)
    assert set(wrapped.params) == set(plain.params)
    assert any(not torch.equal(plain.params[n], wrapped.params[n]) for n in plain.params)
    zero = run(adapter, "rmu", uam=True, uam_rho=0.0, uam_gamma=0.0)  # rho 0, gamma 0: exactly the plain step
    for n in plain.params:
        torch.testing.assert_close(zero.params[n], plain.params[n])
    neggrad = run(adapter, "gradient_ascent", retain_weight=1.0, uam=True)
    assert neggrad.params and "retain_nll" in neggrad.loss_log[0]
    with pytest.raises(InputError, match="needs a retain loss"):
        run(adapter, "gradient_ascent", uam=True)


def test_gradient_ascent_raises_the_forget_loss(adapter):
    edit = run(adapter, "gradient_ascent", iterations=5, lr=1e-2, group="all")
    texts = adapter.domain("hazard").corpus[:8]
    assert adapter.perplexity(texts, edit.params) > adapter.perplexity(texts)


def test_lm_settings_errors(adapter):
    spec = get_method("rmu")
    with pytest.raises(InputError, match="layer numbers"):
        spec.settings("facts-lm", {"update_layers": "five"})
    with pytest.raises(InputError, match="does not exist"):
        run(adapter, "rmu", update_layers="0,9")
    with pytest.raises(InputError, match="does not support causal-lm"):
        get_method("esd").for_family("causal-lm")
    assert get_method("gradient_ascent").for_family("causal-lm").settings_cls.__name__ == "LMGradientAscentSettings"


# ---- the comparison --------------------------------------------------------------------------------

def test_text_comparison_streams_and_scores(adapter):
    from unlearning.compare_lm import iter_text_comparison, plan_text_comparison

    task = UnlearnTask(forget=["hazard"], retain=["general"])
    edit = run(adapter, "rmu")
    plan = plan_text_comparison(adapter, task, questions_per_domain=6, prompts=["the city of"], batch_size=4)
    assert [g for g, _, _ in plan.questions] == ["forget"] * 4 + ["retain"] * 4 + ["forget"] * 2 + ["retain"] * 2
    # a subset is spread through the question file (files are grouped by attribute), not its first six questions
    hazard = sorted(i for g, _, i in plan.questions if g == "forget")
    n = len(adapter.domain("hazard").questions)
    assert len(set(hazard)) == 6 and hazard[0] == 0 and hazard[-1] >= n - n // 6 - 1
    states = [json.loads(json.dumps(s.metrics)) for s in iter_text_comparison(adapter, edit.params, plan, task, 1.0)]
    assert states[0]["samples"]["done"] == 0 and states[-1]["samples"]["done"] == 12
    final = states[-1]
    assert final["forget_rate"]["n"] == 6 and final["retain_accuracy"]["chance"] == 0.25
    assert 0 <= final["forget_rate"]["unlearned"] <= 1 and set(final["perplexity"]) >= {"original", "unlearned"}
    assert set(final["per_domain"]) == {"hazard", "general"}


# ---- the shared run path, exports, the tab's handler -----------------------------------------------

def test_catalog_reads_transformers_folders(tiny_lm, tmp_path):
    from unlearning.models.catalog import concept_choices, resolve

    _, path, family = resolve(str(tiny_lm))
    assert family == "causal-lm" and path == tiny_lm.resolve()
    assert concept_choices(str(tiny_lm)) == ["hazard", "general"]
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(InputError, match="not a causal language model"):
        resolve(str(tmp_path))


def test_cli_run_writes_a_run_folder_and_exports(tiny_lm, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from unlearning.cli import main
    from unlearning.edit import Edit

    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny_lm), "--method", "rmu", "--forget", "hazard", "--out", str(out), "--questions", "4",
                 "--prompt", "the city of", "--set", "iterations=2", "--set", "uam=true", "--set", "layer=1",
                 "--set", "update_layers=0,1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {"forget_rate", "retain_accuracy", "perplexity"} <= set(summary)
    assert summary["forget_rate"]["n"] == 4 and summary["forget_rate"]["chance"] == 0.25
    card = json.loads((out / "run.json").read_text())
    assert card["task"]["retain"] == ["general"] and card["settings"]["uam"] is True
    assert card["comparison"]["questions_per_domain"] == {"hazard": 4, "general": 4}
    assert json.loads((out / "continuations.json").read_text())[0]["prompt"] == "the city of"
    assert len(json.loads((out / "questions.json").read_text())) == 8
    edit = Edit.load(out / "edit.safetensors")
    assert edit.method == "rmu" and all(".mlp.down_proj." in n for n in edit.params)
    # exports: the full transformers folder reproduces base + edit; the delta is new - base
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "model")]) == 0
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "delta.safetensors"), "--format", "delta"]) == 0
    adapter = CausalLMAdapter(tiny_lm, torch.device("cpu"))
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    ids, mask = adapter.texts(["exposure to"])
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=ids, attention_mask=mask).logits, adapter.logits(ids, mask, edit.params))
    from unlearning.export import apply_delta

    patched = apply_delta(adapter.model, tmp_path / "delta.safetensors")
    for name, value in edit.params.items():
        torch.testing.assert_close(dict(patched.named_parameters())[name], value)
    # the relearning attack on the run: forget-domain text, every weight; the base stays untouched
    from unlearning.models.catalog import load_adapter

    cached = load_adapter(str(tiny_lm), "auto").model  # the model the CLI's run loads (cached per source)
    before = {n: p.clone() for n, p in cached.named_parameters()}
    assert main(["relearn", "--run", str(out), "--set", "steps=2", "--set", "data_size=4", "--set", "batch_size=2"]) == 0
    report = json.loads((out / "relearn.json").read_text())["report"]
    assert [r["model"] for r in report["rows"]] == ["original", "after unlearning", "after fine-tune",
                                                     "original after the same fine-tune"]
    assert report["rows"][1]["forget_rate"] == summary["forget_rate"]["unlearned"]  # the run's own number, same questions
    assert len(report["loss_log"]) == 2 and "4 forget-domain documents" in report["attack"]
    assert all(torch.equal(p, before[n]) for n, p in cached.named_parameters())
    capsys.readouterr()
    assert main(["relearn", "--run", str(out), "--set", "data=everything"]) == 2  # one error line, status 2
    assert "setting 'data' must be one of" in capsys.readouterr().err


def test_cli_bench_lm(tiny_lm, tmp_path, capsys):
    from unlearning.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "lm", "--model", str(tiny_lm), "--seeds", "0", "--rows", "RMU,NegGrad+ + UAM", "--split", "val",
                 "--set", "rmu.iterations=2", "--set", "gradient_ascent.iterations=2", "--relearn-steps", "2",
                 "--set", "rmu.layer=1", "--set", "rmu.update_layers=0,1", "--set", "gradient_ascent.update_layers=1",
                 "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| RMU |" in table and "| NegGrad+ + UAM |" in table and "forget acc after relearning" in table
    rows = json.loads(out.read_text())["rows"]
    assert [r["row"] for r in rows] == ["original", "RMU", "NegGrad+ + UAM"]
    assert rows[2]["settings"]["uam"] is True and rows[2]["settings"]["retain_weight"] == 1.0


def test_tab_handler_streams_a_run(tiny_lm, tmp_path, monkeypatch):
    from unlearning.hosting.profile import HostProfile, Runs
    from unlearning.ui import lm as ui_lm
    from unlearning.ui import unlearn as ui

    profile = HostProfile(runs=Runs(dir=tmp_path / "runs"))
    monkeypatch.setattr(ui_lm, "get_profile", lambda: profile)
    assert "rmu" not in [v for _, v in ui.method_choices()]  # the image tab does not offer language-model methods
    assert {v for _, v in ui_lm.method_choices()} == {"rmu", "gradient_ascent"}
    names, forget, retain = ui_lm.domain_choices(str(tiny_lm))
    assert (names, forget, retain) == (["hazard", "general"], "hazard", ["general"])
    request = ui_lm.parse_request(str(tiny_lm), "gradient_ascent", "hazard", ["general"], "the city of\n", 4, 0, "cpu",
                                  {"iterations": 2, "retain_weight": 1.0, "update_layers": "1"})
    outs = list(ui_lm.lm_stream(request))
    final = outs[-1]
    assert final.status.startswith("**") and "Done" in final.status, final.status
    assert list(final.continuations.columns) == ui_lm.CONTINUATION_COLUMNS and len(final.continuations) == 1
    assert final.accuracy["questions"].tolist()[:2] == ["hazard", "general"] and final.download.endswith(".zip")
    assert any(o.accuracy is not None and o.accuracy.attrs["scored"].startswith("0 /") for o in outs)  # fills in as it goes
    path, message = ui_lm.export_delta(final.folder)
    assert path.endswith("delta.safetensors"), message
