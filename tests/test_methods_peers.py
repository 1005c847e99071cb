"""The peer methods (SPEED, RECE, MACE, SLD, Forget-Me-Not, Concept Ablation) on small problems: each closed form
satisfies its own equations, each trained objective goes down, SLD is a sampling rule with an empty weight edit.

Models: random matrices for the closed forms, the untrained ``tiny_model`` (conftest) for the runs, the shapes-sd
twin's tokenizer for prompt alignment. Whether the methods forget on a trained twin: test_methods_peers_twins.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from unlearning.edit import SAMPLING_RULE, Edit
from unlearning.errors import InputError
from unlearning.methods import METHODS
from unlearning.methods.base import RunContext, UnlearnTask
from unlearning.models.catalog import load_adapter


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return load_adapter(str(tiny_model), "cpu")


@pytest.fixture(scope="module")
def task(tiny):
    return UnlearnTask(forget=["3"], retain=[c for c in tiny.concepts() if c != "3"], seed=0)


def fingerprint(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.state_dict().items()}


def run(adapter, task, method: str, **overrides) -> Edit:
    before = fingerprint(adapter.unet)
    spec = METHODS[method]
    edit = spec.unlearn(adapter, task, spec.settings(None, overrides), RunContext())
    after = fingerprint(adapter.unet)
    assert all(torch.equal(before[k], after[k]) for k in before), "the base model was modified"
    return edit


def mean(xs) -> float:
    return sum(xs) / len(xs)


# ---- registry ------------------------------------------------------------------------------------

def test_paper_defaults_are_the_dataclass_defaults():
    s = METHODS["speed"].settings(None)
    assert (s.params, s.tau, s.alpha, s.lam, s.augmentations, s.clusters) == ("V", 0.1, 1.0, 0.0, 10, 3)
    r = METHODS["rece"].settings(None)
    assert (r.epochs, r.regular_scale, r.lam, r.preserve_scale, r.start) == (3, 0.1, 0.1, 0.1, "uce")
    m = METHODS["mace"].settings(None)
    assert (m.lam, m.lr, m.iterations, m.rank, m.images_per_concept) == (1e3, 1e-5, 50, 1, 8)
    d = METHODS["sld"].settings(None)
    from unlearning.methods.sld import PRESETS

    assert (d.warmup_steps, d.guidance_scale, d.threshold, d.momentum_scale, d.momentum_beta) == PRESETS["medium"]
    t = METHODS["sld"].settings("shapes-sd")  # the twin's held-out tuning chose the paper's MAX preset
    assert (t.warmup_steps, t.guidance_scale, t.threshold, t.momentum_scale, t.momentum_beta) == PRESETS["max"]
    f = METHODS["fmn"].settings(None)
    assert (f.iterations, f.lr, f.group, f.use_pooler) == (35, 2e-6, "all", True)
    c = METHODS["ca"].settings(None)
    assert (c.loss, c.group, c.iterations, c.lr, c.batch_size) == ("model", "kv", 100, 1.6e-5, 4)


@pytest.mark.parametrize(("method", "overrides", "message"), [
    ("speed", {"params": "Q"}, "must be one of V, K, KV"),
    ("speed", {"alpha": 0}, "'alpha' must be > 0"),
    ("rece", {"epochs": 0}, "'epochs' must be >= 1"),
    ("mace", {"rank": 0}, "'rank' must be >= 1"),
    ("sld", {"momentum_beta": 1.5}, "'momentum_beta' must be <= 1"),
    ("ca", {"loss": "kl"}, "must be one of model, noise"),
    ("fmn", {"group": "lora"}, "must be one of"),
])
def test_bad_settings_are_refused(method, overrides, message):
    with pytest.raises(InputError, match=message):
        METHODS[method].settings(None, overrides)


# ---- SPEED: the constrained minimiser --------------------------------------------------------------

def test_speed_update_is_the_constrained_minimiser():
    """D minimises mean ||(W + D) c_t - W c_a||^2 + alpha ||D||^2 over {D : D = D P, D K2 = 0}: the gradient
    vanishes on that subspace, and D respects both constraints."""
    from unlearning.methods.speed import SPEEDSettings, speed_update

    g = torch.Generator().manual_seed(0)
    d, d_out = 12, 7
    w = torch.randn(d_out, d, generator=g, dtype=torch.float64)
    c_t, c_a = torch.randn(d, 3, generator=g, dtype=torch.float64), torch.randn(d, 3, generator=g, dtype=torch.float64)
    c_r = torch.randn(d, 4, generator=g, dtype=torch.float64) * 3  # retain rows: rank 4, well above tau
    k2 = torch.randn(d, 2, generator=g, dtype=torch.float64)
    s = SPEEDSettings(tau=1e-6, alpha=0.3, augmentations=0)
    s_tt, s_at = c_t @ c_t.T / 3, c_a @ c_t.T / 3
    delta = speed_update(w, s_tt, s_at, c_r, k2, s, g)
    # feasible row space V = null(C_r^T) minus span(P K2)
    evals, evecs = torch.linalg.eigh(c_r @ c_r.T / 4)
    p = evecs[:, evals < s.tau] @ evecs[:, evals < s.tau].T
    b = p @ k2
    q = p - b @ torch.linalg.pinv(b.T @ b) @ b.T
    scale = torch.linalg.norm(w @ (s_at - s_tt))
    assert torch.linalg.norm(delta @ c_r) < 1e-9 * scale  # retained rows untouched
    assert torch.linalg.norm(delta @ k2) < 1e-9 * scale  # IEC: the empty prompt's directions untouched
    grad = (w + delta) @ s_tt - w @ s_at + s.alpha * delta
    assert torch.linalg.norm(grad @ q) < 1e-9 * scale
    assert torch.linalg.norm(delta) > 1e-3 * scale  # and it does move


def test_speed_on_the_tiny_model_keeps_retained_labels_exactly(tiny, task):
    """Twin note of the card: with the retained labels and the null label spanning a small subspace of the text
    width, the retained labels' value outputs stay unchanged (fp tolerance) while the forgotten label's move."""
    edit = run(tiny, task, "speed", augmentations=0, tau=1e-6)
    assert edit.params and all(n.endswith("attn2.to_v.weight") for n in edit.params)
    base = dict(tiny.unet.named_parameters())
    labels = tiny.encode(task.retain)[:, 1].double().T  # (d, 9): the retained label rows
    forgotten = tiny.encode(["3"])[0, 1].double()
    for name, new in edit.params.items():
        w0 = base[name].detach().double()
        assert torch.linalg.norm((new.double() - w0) @ labels) <= 1e-5 * torch.linalg.norm(w0 @ labels)
        assert torch.linalg.norm((new.double() - w0) @ forgotten) > 1e-3 * torch.linalg.norm(w0 @ forgotten)
    assert edit.loss_log[-1]["invariant_drift"] < 1e-6 and edit.timings["per_concept_s"] > 0


# ---- RECE --------------------------------------------------------------------------------------------

def test_rece_derived_embedding_and_uce_step_solve_their_normal_equations():
    from unlearning.methods.rece import RECESettings, derived_embedding, uce_step

    g = torch.Generator().manual_seed(1)
    d = 10
    w0 = [torch.randn(6, d, generator=g, dtype=torch.float64) for _ in range(3)]
    f = torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=g, dtype=torch.float64)
    e = torch.randn(d, 4, generator=g, dtype=torch.float64)
    gram0 = sum(w.T @ w for w in w0)
    e_adv = derived_embedding(f, gram0, e, 0.1)
    # gradient of sum_l ||W_l F x - W_l x_0||^2 + lam_r ||x||^2 is zero at e'
    grad = sum((w @ f).T @ (w @ f @ e_adv - w @ e) for w in w0) + 0.1 * e_adv
    assert torch.linalg.norm(grad) < 1e-9 * torch.linalg.norm(e)
    s = RECESettings()
    target, keep = torch.randn(d, 4, generator=g, dtype=torch.float64), torch.randn(d, 2, generator=g, dtype=torch.float64)
    m = uce_step(e_adv, target, keep, s)
    # W M minimises lam ||W' - W||^2 + erase ||W' e' - W t||^2 + p ||W' r - W r||^2 (for any W; take W = I)
    grad = s.lam * (m - torch.eye(d)) + s.erase_scale * (m @ e_adv - target) @ e_adv.T + s.preserve_scale * (m @ keep - keep) @ keep.T
    assert torch.linalg.norm(grad) < 1e-9


def test_rece_keeps_the_epoch_with_the_lowest_validation_rate(tiny, task):
    edit = run(tiny, task, "rece", epochs=2, validation_samples=4)
    assert edit.params and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in edit.params)
    epochs = [e for e in edit.loss_log if "validation_forget_rate" in e]
    assert len(epochs) == 2
    chosen = edit.loss_log[-1]["chosen_epoch"]
    rates = [e["validation_forget_rate"] for e in epochs]
    assert rates[chosen - 1] == min(rates) and chosen == rates.index(min(rates)) + 1
    assert edit.timings["validation_s"] > 0 and edit.timings["closed_form_s"] < edit.timings["unlearn_s"]


# ---- MACE ------------------------------------------------------------------------------------------

def test_mace_aligns_the_tokens_around_the_concept():
    """CFR's contexts skip the concept's own tokens and pair what follows them with the anchor prompt's rows."""
    from unlearning.methods.mace import aligned_rows

    sd = load_adapter("shapes-sd", "cpu")
    length = sd.null_condition(1).shape[1]
    # "a red star" = [BOS, a, red, star, EOS] -> "a red circle": only "star"'s position is left out
    old, new = aligned_rows(sd, "a red star", "a red circle")
    assert old == new == [0, 1, 2] + list(range(4, length))
    # erasing drops the word: "a star" -> "a" (3 tokens); EOS and padding shift by one
    old, new = aligned_rows(sd, "a star", sd.anchor_prompt("a star", "star", None) or "")
    assert old == [0] + list(range(3, length)) and new == [0] + list(range(1, length - 2))
    assert sd.concept_positions("a red star", "star") == [3]
    assert sd.concept_positions("a red star", "red star", use_pooler=True) == [2, 3, *range(4, length)]


def test_mace_lora_lowers_the_attention_loss(tiny, task):
    edit = run(tiny, task, "mace", iterations=30, lr=3e-2, images_per_concept=4, lam=1.0, rank=2)
    losses = [e["loss"] for e in edit.loss_log if "concept" in e]
    assert len(losses) == 30 and mean(losses[-5:]) < 0.9 * mean(losses[:5]), losses
    assert all(".attn2.to_k." in n or ".attn2.to_v." in n for n in edit.params)
    assert edit.timings["lora_s"] > 0 and edit.timings["closed_form_s"] > 0


def test_mace_without_lora_is_the_closed_form_refinement(tiny, task):
    """lora = False: the edit is W_0 M_cfr, and M_cfr solves CFR's normal equations on the aligned rows."""
    from unlearning.methods.closed_form import kv_weights
    from unlearning.methods.mace import aligned_rows

    s = METHODS["mace"].settings(None, {"lora": False, "lam": 0.5, "preserve_scale": 0.1})
    edit = METHODS["mace"].unlearn(tiny, task, s, RunContext())
    w0 = kv_weights(tiny)
    old, new = aligned_rows(tiny, "3", None)
    e = tiny.encode(["3"])[0, old].double().T
    e_star = tiny.null_condition(1)[0, new].double().T
    c_p = tiny.encode(task.retain).double().reshape(-1, e.shape[0]).T
    for name, w in w0.items():
        w_new = edit.params[name].double()
        grad = s.lam * (w_new - w) + (w_new @ e - w @ e_star) @ e.T + s.preserve_scale * (w_new - w) @ c_p @ c_p.T
        assert torch.linalg.norm(grad) < 1e-4 * torch.linalg.norm(w), name


# ---- Forget-Me-Not and Concept Ablation: their objectives go down ---------------------------------------

def test_fmn_lowers_the_attention_on_the_concept(tiny, task):
    edit = run(tiny, task, "fmn", iterations=25, lr=1e-3, group="cross_attention", data_size=8)
    losses = [e["loss"] for e in edit.loss_log]
    assert mean(losses[-5:]) < 0.8 * mean(losses[:5]), losses
    assert edit.params and all(".attn2." in n for n in edit.params)


def test_ca_lowers_the_ablation_loss(tiny, task):
    edit = run(tiny, task, "ca", iterations=30, lr=3e-3, anchor_images=8, teacher="frozen")
    losses = [e["ablation_loss"] for e in edit.loss_log]
    assert mean(losses[-5:]) < 0.8 * mean(losses[:5]), losses
    assert edit.params and all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in edit.params)


def test_cross_attention_maps_are_probabilities(tiny):
    from unlearning.methods.attention import CrossAttentionMaps, cross_attention_modules

    unet = tiny.frozen_copy_for_training()
    x = tiny.initial_noise([0, 1])
    with CrossAttentionMaps(unet) as maps:
        tiny.eps(unet, x, torch.tensor([500, 500]), tiny.encode(["3", "5"]))
        probs = maps.probabilities()
    assert len(probs) == len(cross_attention_modules(unet)) > 0
    for p in probs:
        assert torch.allclose(p.sum(-1), torch.ones(()), atol=1e-5)
    assert not any(m._forward_hooks for m in unet.modules())  # hooks removed on exit


# ---- SLD: a sampling rule, no weights ------------------------------------------------------------------

def test_sld_guidance_matches_the_papers_equations():
    from unlearning.methods.sld import SLDSettings, sld_guidance

    g = torch.Generator().manual_seed(2)
    eps_u, eps_p, eps_s = (torch.randn(50, generator=g) * 0.02 for _ in range(3))
    s = SLDSettings(threshold=0.01, guidance_scale=30.0, momentum_scale=0.3, momentum_beta=0.4)
    v = torch.randn(50, generator=g) * 0.01
    out, v_next = sld_guidance(eps_u, eps_p, eps_s, v, s)
    for i in range(50):
        d = float(eps_p[i] - eps_s[i])
        mu = 0.0 if d >= s.threshold else min(1.0, abs(d) * s.guidance_scale)
        gi = mu * float(eps_s[i] - eps_u[i]) + s.momentum_scale * float(v[i])
        assert abs(float(out[i]) - gi) < 1e-6
        assert abs(float(v_next[i]) - (s.momentum_beta * float(v[i]) + (1 - s.momentum_beta) * gi)) < 1e-6


def test_sld_is_an_empty_edit_with_a_sampling_rule(tiny, task, tmp_path):
    edit = run(tiny, task, "sld", guidance_scale=50.0, warmup_steps=0)
    assert edit.params == {} and edit.weightless and edit.sampling["method"] == "sld" and edit.sampling["safety_concept"] == "3"
    assert edit.summary()["changed_values"] == 0 and edit.summary()["sampling"]["method"] == "sld"
    edited = edit.apply_to_copy(tiny.unet)
    assert not hasattr(tiny.unet, SAMPLING_RULE) and getattr(edited, SAMPLING_RULE)["method"] == "sld"
    seeds, prompts = [0, 1, 2], ["5", "8", "3"]
    base = tiny.generate(prompts, seeds, num_inference_steps=4)
    guided = tiny.generate(prompts, seeds, unet=edited, num_inference_steps=4)
    assert not torch.equal(base[:2], guided[:2])  # the rule changes the samples ...
    # ... except where the prompt *is* the safety concept: eps_p = eps_S, so mu = min(1, s_S |0|) = 0 (Eq. 6)
    # (eps_p and eps_S come from different batches: float noise of ~1e-6 with 2 threads, far below what the rule moves)
    moved = (base[:2] - guided[:2]).abs().max().item()
    assert (base[2] - guided[2]).abs().max().item() < min(1e-3, moved / 100)
    with edit.applied(tiny.unet):
        assert torch.equal(tiny.generate(prompts, seeds, num_inference_steps=4), guided)
    assert not hasattr(tiny.unet, SAMPLING_RULE)
    off = run(tiny, task, "sld", guidance_scale=1.0).apply_to_copy(tiny.unet)  # s_S <= 1 switches it off exactly
    assert torch.equal(tiny.generate(prompts, seeds, unet=off, num_inference_steps=4), base)
    path = edit.save(tmp_path / "sld.safetensors")
    assert Edit.load(path).sampling == edit.sampling


def test_sld_export_says_it_is_a_pipeline_setting(tiny, task, tmp_path):
    from unlearning.export import export_delta, export_diffusers

    edit = run(tiny, task, "sld")
    with pytest.raises(InputError, match="pipeline setting, not weights"):
        export_delta(tiny, edit, tmp_path / "delta.safetensors")
    out = export_diffusers(tiny, edit, tmp_path / "model")
    info = json.loads((out / "unlearning_edit.json").read_text())
    assert info["changed_parameters"] == 0 and info["sampling"]["method"] == "sld" and "not weights" in info["note"]


def test_sld_refuses_a_safety_concept_the_model_cannot_read(tiny, task):
    with pytest.raises(InputError, match="not a class of this model"):
        run(tiny, task, "sld", safety_concept="eleven")
    with pytest.raises(InputError, match="one class at a time"):
        run(tiny, UnlearnTask(forget=["3", "5"], retain=["1"]), "sld")
