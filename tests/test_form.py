"""The Unlearn form shows what applies to the chosen model and method, and hides the rest; the app's API names its
parameters. Read from the handlers and the built Blocks (no server, no model loaded)."""

from __future__ import annotations

import keyword

import pytest

from unlearning.methods import METHODS
from unlearning.models.catalog import FAMILY_OPTIONS, family_of
from unlearning.ui import unlearn as ui


def test_families_are_read_without_loading_a_model():
    assert family_of("digits") == "class-conditional" and family_of("shapes-sd") == "stable-diffusion"
    assert family_of("CompVis/stable-diffusion-v1-4") == "stable-diffusion"
    assert family_of("/no/such/folder") is None


def test_own_prompts_only_for_text_to_image_models():
    assert "prompts" not in ui.form_view("digits").options
    assert "prompts" in ui.form_view("shapes-sd").options
    unknown = ui.form_view("/no/such/folder")  # nothing known yet: nothing hidden
    assert unknown.family is None and unknown.options == frozenset().union(*FAMILY_OPTIONS.values())


def test_methods_offered_are_those_that_support_the_family(monkeypatch):
    import dataclasses

    only_sd = dataclasses.replace(METHODS["uce"], name="sd_only", families=("stable-diffusion",))
    monkeypatch.setitem(METHODS, "sd_only", only_sd)
    digits, sd = ui.form_view("digits"), ui.form_view("shapes-sd")
    assert "sd_only" not in [n for _, n in digits.methods] and "sd_only" in [n for _, n in sd.methods]
    assert digits.method("sd_only") == digits.methods[0][1] and sd.method("sd_only") == "sd_only"


def test_the_anchor_shows_only_for_methods_that_map_a_concept():
    assert [m for m in METHODS if ui.uses_anchor(m)] == [m for m, s in METHODS.items() if s.uses_anchor]
    assert ui.uses_anchor("esd") and not ui.uses_anchor("gradient_ascent") and not ui.uses_anchor(None)
    for name, spec in METHODS.items():
        assert (spec.label.split(" (")[0] in ui.anchor_info()) == spec.uses_anchor, name


def test_a_setting_that_means_nothing_for_a_family_is_hidden_for_it(capsys):
    controls = {(c.method, c.name): c for c in ui.setting_controls("digits")}
    last = controls[("uce", "include_last_token")]  # a class label has no EOS token
    assert not last.applies_to("class-conditional") and last.applies_to("stable-diffusion") and last.applies_to(None)
    assert all(c.applies_to("class-conditional") for k, c in controls.items() if k[1] != "include_last_token")
    from unlearning.cli import main

    assert main(["methods"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "--set include_last_token" in x)
    assert line.endswith("(stable-diffusion models only)")


@pytest.fixture(scope="module")
def demo():
    import app

    return app.build_demo()


def component(demo, label: str):
    found = [b for b in demo.blocks.values() if getattr(b, "label", None) == label]
    assert len(found) == 1, (label, len(found))
    return found[0]


def test_the_first_screen_hides_what_the_default_model_does_not_use(demo):
    # digits (class labels) with ESD: no own prompts and no empty prompt grid; the anchor applies to ESD
    assert component(demo, "Your own prompts (optional)").visible is False
    assert component(demo, "your prompts: original above, unlearned below").visible is False
    assert component(demo, "Anchor (draw this instead)").visible is True
    hidden = [b for b in demo.blocks.values() if getattr(b, "label", None) == "include_last_token"]
    assert hidden and all(b.visible is False for b in hidden)


def test_the_api_names_every_unlearn_parameter(demo):
    params = demo.get_api_info()["named_endpoints"]["/unlearn"]["parameters"]
    names = [p["parameter_name"] for p in params]
    assert names[:13] == ["model", "forget", "anchor", "method", "seed", "forget_samples", "retain_samples", "sampling_steps",
                          "guidance_scale", "device", "preserve", "sampler", "own_prompts"]
    controls = ui.setting_controls("digits")
    assert names[13:] == [c.api_name for c in controls] and len(set(names)) == len(names)
    assert all(n.isidentifier() and not keyword.iskeyword(n) and len(n) >= 4 for n in names), names


def test_no_public_endpoint_has_unnamed_or_one_letter_parameters(demo):
    endpoints = demo.get_api_info()["named_endpoints"]
    assert {"/unlearn", "/zero123", "/runs_compare"} <= set(endpoints)
    for endpoint, info in endpoints.items():
        for p in info["parameters"]:
            name = p["parameter_name"]
            assert not name.startswith("param_") and len(name) > 2, (endpoint, name)
