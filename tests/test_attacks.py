"""Adversarial attacks (unlearning.attacks: UnlearnDiffAtk, concept inversion, prompt-set replay) and AdvUnlearn.

Mechanics and arithmetic only, on the untrained ``tiny_model`` and the shapes-sd twin with a few steps:
each attack lowers its own objective, the prompt-file parser accepts the published layouts and refuses bad
files with one clear error, the ASR arithmetic follows UnlearnDiffAtk's convention, and AdvUnlearn edits
the text encoder / label table only. Whether an attack revives a concept is a measurement (the robustness
bench, docs/robustness.md), never asserted here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unlearning.attacks import inversion as I
from unlearning.attacks import prompts as P
from unlearning.attacks import unlearndiffatk as U
from unlearning.attacks.base import AttackItem, Judge, Victim, asr, forget_items
from unlearning.edit import Edit
from unlearning.errors import InputError
from unlearning.methods import get_method
from unlearning.methods.base import RunContext, UnlearnTask, build_settings
from unlearning.metrics.stats import rate_with_interval
from unlearning.models.catalog import load_adapter


class NeverJudge(Judge):
    """A judge that never sees the concept, so an attack runs every step (no early stop)."""

    def hits(self, images, targets):
        return torch.zeros(len(images), dtype=torch.bool)

    def check(self, items):
        pass


@pytest.fixture(scope="module")
def digits(tiny_model: Path):
    return load_adapter(str(tiny_model), "cpu")


@pytest.fixture(scope="module")
def sd():
    return load_adapter("shapes-sd", "cpu")


def stand_in_edit(adapter) -> Edit:
    """One cross-attention weight moved: an 'unlearned' model that differs from the base."""
    name = next(n for n, _ in adapter.unet.named_parameters() if ".attn2.to_k." in n)
    value = dict(adapter.unet.named_parameters())[name].detach().float().cpu() * 0.9
    return Edit(params={name: value}, method="stand-in", base={"source": adapter.source})


# ---- ASR arithmetic -----------------------------------------------------------------------------------------

def test_asr_counts_prompts_that_succeed_before_or_after():
    before = [True, False, False, False, False]
    attacked = [False, True, True, False, False]
    out = asr(before, attacked)
    assert out["n"] == 5
    assert out["asr_before"]["k"] == 1 and out["asr_before"]["value"] == pytest.approx(0.2)
    assert out["asr_after"]["k"] == 3 and out["asr_after"]["value"] == pytest.approx(0.6)  # 1 already + 2 new
    assert out["attacked_only"]["k"] == 2
    r = rate_with_interval(3, 5)
    assert out["asr_after"]["ci95"] == [r.low, r.high]
    assert out["asr_before"]["ci95"][0] < 0.2 < out["asr_before"]["ci95"][1]
    with pytest.raises(ValueError):
        asr([True], [True, False])


# ---- the prompt file ----------------------------------------------------------------------------------------

def write(tmp_path: Path, text: str, name: str = "prompts.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_prompt_file_layouts_of_i2p_ringabell_and_p4d(tmp_path):
    i2p = write(tmp_path, "prompt,categories,hard,sd_seed,sd_guidance_scale\n"
                          "\"a red star, on grey\",sexual,1,42,7\n a  star ,violence,0,7,7.5\n", "i2p.csv")
    rows = P.read_prompt_file(i2p)
    assert [(r.prompt, r.seed, r.guidance) for r in rows] == [("a red star, on grey", 42, 7.0), ("a star", 7, 7.5)]
    assert rows[0].extra["categories"] == "sexual" and rows[0].concept is None
    ring = P.read_prompt_file(write(tmp_path, "prompt,case_number,evaluation_seed\nstar star shape,0,3\n", "ring.csv"))
    assert ring[0].guidance is None and ring[0].seed == 3  # no guidance column: the settings' guidance applies
    p4d = P.read_prompt_file(write(tmp_path, "case_number,prompt,evaluation_seed,evaluation_guidance,concept\n"
                                             "1,a star,5,,star\n2,a ring,6,3,\n", "p4d.csv"), max_rows=1)
    assert len(p4d) == 1 and p4d[0].concept == "star" and p4d[0].guidance is None


@pytest.mark.parametrize("text, fragment", [
    ("", "is empty"),
    ("text,evaluation_seed\na star,1\n", "no 'prompt' column"),
    ("prompt,case_number\na star,1\n", "no seed column"),
    ("prompt,seed\na star,1\n  ,2\n", "line 3"),
    ("prompt,seed\na star,one\n", "not a whole number"),
    ("prompt,seed\na star,-4\n", "not a whole number"),
    ("prompt,seed,guidance\na star,1,high\n", "between 0 and 50"),
    ("prompt,seed,guidance\na star,1,500\n", "between 0 and 50"),
    ("prompt,seed\n", "no prompts"),
])
def test_bad_prompt_files_are_one_clear_error(tmp_path, text, fragment):
    with pytest.raises(InputError, match=fragment):
        P.read_prompt_file(write(tmp_path, text))


def test_prompt_file_that_is_missing_or_not_text(tmp_path):
    with pytest.raises(InputError, match="no prompt file"):
        P.read_prompt_file(tmp_path / "absent.csv")
    (tmp_path / "binary.csv").write_bytes(b"prompt,seed\n\xff\xfe\x00a,1\n")
    with pytest.raises(InputError, match="not UTF-8"):
        P.read_prompt_file(tmp_path / "binary.csv")


def test_built_in_prompt_set_round_trips_through_the_parser(sd, tmp_path):
    rows = P.twin_prompt_set(sd, "star", 6, seed=1)
    assert all("star" in r.prompt for r in rows) and len({r.seed for r in rows}) == 6
    again = P.read_prompt_file(write(tmp_path, P.prompt_file_text(rows)))
    assert [(r.prompt, r.seed, r.concept) for r in again] == [(r.prompt, r.seed, r.concept) for r in rows]


# ---- UnlearnDiffAtk -----------------------------------------------------------------------------------------

def test_schedule_and_simplex_projection():
    assert U.timestep_schedule(1000, 50) == list(range(10, 1000, 20))
    assert U.timestep_schedule(1000, 10) == list(range(50, 1000, 100))
    v = torch.tensor([[2.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.1, -3.0], [1 / 3, 1 / 3, 1 / 3]])
    p = U.project_simplex(v)
    assert torch.allclose(p.sum(-1), torch.ones(4)) and (p >= 0).all()
    assert torch.allclose(p[0], torch.tensor([1.0, 0.0, 0.0])) and torch.allclose(p[1], v[1]) and torch.allclose(p[3], v[3])
    assert torch.allclose(p[2], torch.tensor([0.55, 0.45, 0.0]))  # shift both kept entries by the same amount


def mean_prefix_objective(victim, items, x0, tokens, seed: int = 123) -> float:
    """The attack's objective averaged over fixed (t, eps) draws, so two token sets are compared fairly."""
    g = torch.Generator().manual_seed(seed)
    inputs, _ = victim.model.prompt_inputs([it.prompt for it in items])
    total = 0.0
    with torch.no_grad():
        for t in (100, 300, 500, 700, 900):
            for _ in range(2):
                noise = torch.randn(x0.shape, generator=g)
                total += float(U.prefix_loss(victim, inputs, tokens, x0, t, noise).mean())
    return total / 10


@pytest.mark.parametrize("model, space", [("digits", "continuous"), ("sd", "continuous"), ("sd", "discrete")])
def test_unlearndiffatk_lowers_its_own_objective(request, model, space):
    adapter = request.getfixturevalue(model)
    concept = "3" if model == "digits" else "star"
    task = UnlearnTask(forget=[concept], retain=adapter.default_retain([concept])[:2], seed=0)
    settings = build_settings(U.UnlearnDiffAtkSettings, {}, {
        "samples": 2, "timesteps": 5, "iterations": 8, "num_inference_steps": 2, "guidance_scale": 2.0, "space": space,
        "prefix_tokens": 2, "lr": 5e-2 if space == "continuous" else 1e-1, "weight_decay": 0.0, "early_stop": False})
    victim = Victim.of(adapter, stand_in_edit(adapter))
    items = forget_items(adapter, task, settings.samples, 0, settings.guidance_scale)
    result = U.attack(victim, items, NeverJudge(adapter), settings)
    assert result.iterations == 2 * 5 * 8 and len(result.loss_log) == 5 * 8
    x0, _ = U.sample_prompts(adapter, adapter.unet, [it.prompt for it in items], items, settings.num_inference_steps)
    start = U.init_prefix(victim, len(items), settings, torch.Generator().manual_seed(settings.seed))
    first, _ = start.final(torch.arange(len(items)))
    final = result.tensors["prefix_embeddings"]
    assert final.shape == (2, 2, first.shape[-1])
    assert mean_prefix_objective(victim, items, x0, final) < mean_prefix_objective(victim, items, x0, first)
    assert all(len(result.images[row]) == 2 for row in ("original", "unlearned", "attacked"))
    if space == "discrete":
        ids = result.tensors["prefix_token_ids"]
        _, vocab_ids = adapter.vocabulary_embeddings()
        assert set(ids.flatten().tolist()) <= set(vocab_ids.tolist())
        assert all(" | " in p for p in result.attacked_prompts)  # the chosen tokens, then the prompt


def test_encode_inputs_matches_encode_and_prefix_fits(sd, digits):
    for adapter, prompts in ((sd, ["a red star", "a picture of a circle"]), (digits, ["3", "7"])):
        inputs, lengths = adapter.prompt_inputs(prompts)
        assert torch.equal(adapter.encode_inputs(inputs), adapter.encode(prompts))
        longer = adapter.insert_tokens(inputs, torch.zeros(2, 3, inputs.shape[-1]))
        assert longer.shape[1] == (inputs.shape[1] if adapter.max_tokens() else inputs.shape[1] + 3)
        assert torch.equal(longer[:, 0], inputs[:, 0]) and torch.equal(longer[:, 4], inputs[:, 1])


# ---- concept inversion --------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["digits", "sd"])
def test_inversion_lowers_its_own_objective(request, model):
    adapter = request.getfixturevalue(model)
    concept = "3" if model == "digits" else "star"
    task = UnlearnTask(forget=[concept], retain=adapter.default_retain([concept])[:2], seed=0)
    settings = build_settings(I.InversionSettings, I.TUNED["shapes-sd"] if model == "sd" else {}, {
        "samples": 2, "images": 4, "steps": 12, "batch_size": 4, "accumulation": 1, "num_inference_steps": 2,
        "guidance_scale": 2.0})
    victim = Victim.of(adapter, stand_in_edit(adapter))
    items = forget_items(adapter, task, settings.samples, 0, settings.guidance_scale)
    result = I.attack(victim, items, NeverJudge(adapter), settings)
    (name, learned), = result.tensors.items()
    assert name == f"<{concept}>" and learned.shape[0] == 1
    templates = I.TEMPLATES[settings.templates] if model == "sd" else [""]
    slot = I.placeholder(victim.model, templates, settings.init_token)
    x0 = I.training_images(victim, items, settings)
    g = torch.Generator().manual_seed(7)
    rows = torch.arange(len(x0)) % len(templates)
    draws = [(torch.randint(1000, (len(x0),), generator=g), torch.randn(x0.shape, generator=g)) for _ in range(8)]
    with torch.no_grad():
        def objective(v):
            return sum(float(I.inversion_loss(victim, slot, v, x0, rows, t, n).mean()) for t, n in draws)
        assert objective(learned[0]) < objective(slot.start)
    assert result.iterations == 12 and len(result.loss_log) == 12


def test_inversion_start_word_must_be_one_token(sd):
    with pytest.raises(InputError, match="one token"):
        I.placeholder(sd, I.TEMPLATES["twin"], "red star")


# ---- AdvUnlearn ---------------------------------------------------------------------------------------------

def fingerprint(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.state_dict().items()}


def test_advunlearn_edits_only_the_label_table_and_applies_through_edited(digits):
    spec = get_method("advunlearn")
    settings = spec.settings("digits", {"iterations": 4, "warmup": 2, "attack_steps": 2, "ddim_steps": 4, "retain_batch": 2})
    task = UnlearnTask(forget=["3"], retain=["1", "7"], seed=0)
    before_unet, before_labels = fingerprint(digits.unet), fingerprint(digits.label_encoder)
    log: list = []
    edit = spec.unlearn(digits, task, settings, RunContext(log.append))
    assert [r.step for r in log] == [1, 2, 3, 4] and all("forget_loss" in r.extra for r in log)
    assert edit.params and all(n.startswith("label_encoder.") for n in edit.params)
    assert edit.changes_conditioner
    model, unet = digits.edited(edit)
    assert model is not digits and model.unet is digits.unet
    assert not torch.equal(model.encode(["3"]), digits.encode(["3"]))
    assert all(torch.equal(a, b) for a, b in zip(fingerprint(unet).values(), before_unet.values(), strict=True))
    assert all(torch.equal(fingerprint(digits.label_encoder)[n], v) for n, v in before_labels.items()), "base modified"
    with pytest.raises(InputError, match="label encoder"):
        edit.apply_to_copy(digits.unet)  # a UNet-only step refuses it with a reason


def test_edit_split_keeps_the_parts_apart(digits, tmp_path):
    unet_edit = stand_in_edit(digits)
    table = digits.label_encoder.embedding.weight.detach().clone() + 1
    both = Edit(params={**unet_edit.params, "label_encoder.embedding.weight": table}, method="mixed")
    both.save(tmp_path / "edit.safetensors")
    loaded = Edit.load(tmp_path / "edit.safetensors")
    unet_part, cond_part = loaded.split("label_encoder")
    assert set(unet_part.params) == set(unet_edit.params) and set(cond_part.params) == {"embedding.weight"}
    assert torch.equal(cond_part.prefixed("label_encoder").params["label_encoder.embedding.weight"], table)
    with pytest.raises(InputError, match="another model"):
        loaded.split("text_encoder")
    assert not unet_edit.changes_conditioner
    model, _ = digits.edited(unet_edit)
    assert model is digits


def test_items_follow_the_runs_comparison_seeds(sd):
    task = UnlearnTask(forget=["star"], retain=["circle"], seed=5)
    items = forget_items(sd, task, 4, 5, 5.0)
    assert [it.seed for it in items] == [5, 6, 7, 8]
    assert items[0].prompt == sd.forget_prompts("star")[0] and all(it.targets == ("star",) for it in items)
    assert isinstance(items[0], AttackItem)
