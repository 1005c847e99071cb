"""Method settings and run requests: every bad value is refused up front with a message naming it."""

from __future__ import annotations

import dataclasses
import re

import pytest

from unlearning.errors import InputError
from unlearning.hosting.profile import HostProfile, Limits
from unlearning.methods import METHODS, get_method
from unlearning.methods.base import settings_fields, validate_settings
from unlearning.runner import RunRequest, prepare

ALL = sorted(METHODS)
ITERATIVE = [m for m in ALL if "iterations" in {f.name for f in settings_fields(METHODS[m].settings_cls)}]  # not the closed forms
MAX_ITERATIONS = 50
PROFILE = HostProfile(models=("digits",), limits=Limits(max_iterations=MAX_ITERATIONS, max_concepts=16))


def fields_of_type(kind: str) -> list[tuple[str, str]]:
    """(method, field) for every settings field of a type, across all registered methods."""
    return [(name, f.name) for name, spec in sorted(METHODS.items()) for f in settings_fields(spec.settings_cls)
            if (f.type if isinstance(f.type, str) else f.type.__name__) == kind]


def with_choices() -> list[tuple[str, str]]:
    return [(name, f.name) for name, spec in sorted(METHODS.items()) for f in settings_fields(spec.settings_cls)
            if f.metadata.get("choices")]


def test_every_method_is_listed():
    assert {"esd", "gradient_ascent", "finetune"} <= set(METHODS)
    assert fields_of_type("int") and fields_of_type("float") and fields_of_type("bool")  # the tests below see each type


# ---- settings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("model_id", [None, "digits"])
def test_defaults_validate(method, model_id):
    spec = METHODS[method]
    settings = spec.settings(model_id)
    validate_settings(settings)
    assert dataclasses.asdict(settings) == spec.defaults(model_id)


@pytest.mark.parametrize("method", ALL)
def test_every_field_has_help_and_a_default_of_its_type(method):
    for f in settings_fields(METHODS[method].settings_cls):
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        assert f.metadata.get("help"), f"{method}.{f.name} has no help text"
        assert type(f.default).__name__ == kind, f"{method}.{f.name}: default {f.default!r} is not a {kind}"


@pytest.mark.parametrize("method", ["uce", "scapre"])
def test_closed_form_settings_from_text(method):
    s = METHODS[method].settings(None, {"ridge": "0.5", "include_last_token": "false"})
    assert s.ridge == 0.5 and s.include_last_token is False
    with pytest.raises(InputError, match="'ridge' must be > 0"):
        METHODS[method].settings(None, {"ridge": "0"})


@pytest.mark.parametrize("method", ITERATIVE)
def test_strings_are_converted_to_the_field_types(method):
    extra = {"warmup": "1"} if method == "advunlearn" else {}  # its attack starts after warm-up (< iterations)
    s = METHODS[method].settings(None, {"iterations": "5", "lr": "1e-3", **extra})
    assert s.iterations == 5 and type(s.iterations) is int
    assert s.lr == 0.001 and type(s.lr) is float
    assert METHODS[method].settings(None, {"iterations": "1e2", **extra}).iterations == 100  # a whole number in float form


@pytest.mark.parametrize(("method", "name"), fields_of_type("bool"))
@pytest.mark.parametrize(("text", "value"), [("true", True), ("True", True), ("yes", True), ("1", True),
                                             ("false", False), ("no", False), ("0", False)])
def test_booleans_from_text(method, name, text, value):
    companions = {("esd", "uam"): {"retain_weight": 1.0}, ("gradient_ascent", "uam"): {"retain_weight": 1.0}}
    extra = companions.get((method, name), {}) if value else {}  # UAM needs a retain loss to be switched on
    assert getattr(METHODS[method].settings(None, {name: text, **extra}), name) is value


@pytest.mark.parametrize(("method", "name"), fields_of_type("bool"))
def test_a_non_boolean_is_refused(method, name):
    with pytest.raises(InputError, match=rf"setting '{name}' must be bool, got 'maybe'"):
        METHODS[method].settings(None, {name: "maybe"})


@pytest.mark.parametrize(("method", "name"), fields_of_type("int") + fields_of_type("float"))
def test_a_non_number_is_refused_naming_the_setting(method, name):
    with pytest.raises(InputError, match=rf"setting '{name}' must be .*got 'abc'"):
        METHODS[method].settings(None, {name: "abc"})


@pytest.mark.parametrize(("method", "name"), fields_of_type("int"))
def test_a_fraction_is_refused_for_a_whole_number(method, name):
    with pytest.raises(InputError, match=rf"setting '{name}' must be a whole number, got '2\.5'"):
        METHODS[method].settings(None, {name: "2.5"})


@pytest.mark.parametrize("method", ITERATIVE)
@pytest.mark.parametrize("lr", ["0", "-1", "-1e-5", 0.0, -3])
def test_learning_rate_must_be_positive(method, lr):
    with pytest.raises(InputError, match=r"setting 'lr' must be > 0"):
        METHODS[method].settings(None, {"lr": lr})


@pytest.mark.parametrize("method", ITERATIVE)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", float("nan"), float("inf")])
def test_a_learning_rate_that_is_not_finite_is_refused(method, value):
    with pytest.raises(InputError, match=r"setting 'lr' must be a finite number"):
        METHODS[method].settings(None, {"lr": value})


@pytest.mark.parametrize(("method", "name"), [m for m in fields_of_type("float") if m[1] != "lr"])
def test_other_floats_must_be_finite_too(method, name):
    with pytest.raises(InputError, match=rf"setting '{name}' must be a finite number"):
        METHODS[method].settings(None, {name: "inf"})


@pytest.mark.parametrize("method", ITERATIVE)
@pytest.mark.parametrize("iterations", ["0", "-1", "-100", 0, "nan", "inf"])
def test_iterations_must_be_at_least_one(method, iterations):
    with pytest.raises(InputError, match=r"setting 'iterations' must be"):
        METHODS[method].settings(None, {"iterations": iterations})


@pytest.mark.parametrize("method", ALL)
def test_an_unknown_setting_is_refused_listing_the_valid_ones(method):
    spec = METHODS[method]
    with pytest.raises(InputError) as info:
        spec.settings(None, {"nosuchkey": "1"})
    message = str(info.value)
    assert "nosuchkey" in message
    for f in settings_fields(spec.settings_cls):
        assert f.name in message


@pytest.mark.parametrize(("method", "name"), with_choices())
def test_a_value_outside_the_choices_is_refused(method, name):
    choices = next(f for f in settings_fields(METHODS[method].settings_cls) if f.name == name).metadata["choices"]
    with pytest.raises(InputError, match=rf"setting '{name}' must be one of .*got 'zzz'") as info:
        METHODS[method].settings(None, {name: "zzz"})
    assert all(str(c) in str(info.value) for c in choices)
    for choice in choices:  # and every listed choice is accepted
        assert getattr(METHODS[method].settings(None, {name: choice}), name) == choice


def test_esd_variant_choices():
    assert get_method("esd").settings(None, {"variant": "u"}).variant == "u"
    with pytest.raises(InputError, match=r"'variant' must be one of x, u, a; got 'b'"):
        get_method("esd").settings(None, {"variant": "b"})


@pytest.mark.parametrize("name", ["ESD", " esd ", "gradient-ascent"])
def test_method_names_are_forgiving_about_case_and_dashes(name):
    assert get_method(name).name in METHODS


def test_an_unknown_method_lists_the_available_ones():
    with pytest.raises(InputError, match=r"unknown method 'no_such_method'; available: .*esd"):
        get_method("no_such_method")


# ---- run.prepare --------------------------------------------------------------------------------------

def request(tiny_model, **changes) -> RunRequest:
    """A small valid request on the tiny model, with ``changes`` (which may replace the model)."""
    base = RunRequest(model=str(tiny_model), method="esd", forget=["3"], device="cpu", forget_samples=2, retain_samples=1,
                      num_inference_steps=3, settings={"iterations": 2})
    return dataclasses.replace(base, **changes)


def test_a_valid_request_is_prepared(tiny_model):
    run = prepare(request(tiny_model, forget=[" 3 ", "5"], anchor="8"), PROFILE)
    assert run.task.forget == ["3", "5"]
    assert run.task.retain == [c for c in map(str, range(10)) if c not in ("3", "5")]
    assert run.task.anchor == "8"
    assert run.settings.iterations == 2
    assert len(run.plan.items) == 2 + 8


def test_iterations_at_the_limit_are_allowed(tiny_model):
    assert prepare(request(tiny_model, settings={"iterations": MAX_ITERATIONS}), PROFILE).settings.iterations == MAX_ITERATIONS


@pytest.mark.parametrize(("changes", "message"), [
    ({"model": "no-such-model"}, r"unknown model 'no-such-model'"),
    ({"model": ""}, r"no model given"),
    ({"method": "nope"}, r"unknown method 'nope'; available: "),
    ({"forget": [""]}, r"the concept to forget is empty"),
    ({"forget": []}, r"the concept to forget is empty"),
    ({"forget": ["   "]}, r"the concept to forget is empty"),
    ({"forget": ["3", ""]}, r"the concept to forget is empty"),
    ({"forget": ["42"]}, r"'42' is not a class of this model; it knows: 0, 1, 2"),
    ({"forget": [str(i) for i in range(10)]}, r"nothing would be left to keep"),
    ({"forget": ["3"], "preserve": ["3", "4"]}, r"3 is both forgotten and preserved"),
    ({"forget": ["3", "5"], "anchor": "3"}, r"the anchor '3' is also being forgotten"),
    ({"anchor": "42"}, r"'42' is not a class of this model"),
    ({"settings": {"iterations": MAX_ITERATIONS + 1}},
     rf"iterations = {MAX_ITERATIONS + 1} is more than this instance allows \({MAX_ITERATIONS}\)"),
    ({"forget": ["3", "4", "3"]}, r"a concept is listed twice in the forget list"),
    ({"forget": ["3", " 3"]}, r"a concept is listed twice in the forget list"),
    ({"settings": {"iterations": "abc"}}, r"setting 'iterations' must be a whole number"),
    ({"num_inference_steps": 0}, r"sampling steps must be between 1 and"),
    ({"forget_samples": 0}, r"number of comparison samples must be at least 1"),
])
def test_prepare_rejects(tiny_model, changes, message):
    with pytest.raises(InputError, match=message):
        prepare(request(tiny_model, **changes), PROFILE)


def test_prepare_rejects_a_method_the_profile_does_not_offer(tiny_model):
    profile = dataclasses.replace(PROFILE, methods=("gradient_ascent",))
    with pytest.raises(InputError, match=re.escape("method 'esd' is not allowed here; allowed: gradient_ascent.")):
        prepare(request(tiny_model), profile)


def test_prepare_rejects_more_concepts_than_the_profile_allows(tiny_model):
    profile = dataclasses.replace(PROFILE, limits=Limits(max_concepts=2))
    with pytest.raises(InputError, match=r"3 concepts to forget; this instance allows at most 2"):
        prepare(request(tiny_model, forget=["1", "2", "3"]), profile)


def test_prepare_rejects_a_comparison_larger_than_the_profile_allows(tiny_model):
    profile = dataclasses.replace(PROFILE, limits=Limits(max_samples=5))
    with pytest.raises(InputError, match=r"11 comparison pairs; this instance allows 5"):
        prepare(request(tiny_model), profile)
