"""ZeroGPU: the duration callable (estimate from the request, with margin, capped) and the guarded decorator."""

from __future__ import annotations

import dataclasses
import math
import sys
import types

import pytest

from unlearning.hosting import zerogpu
from unlearning.hosting.profile import HostProfile, ZeroGPU
from unlearning.runner import RunRequest


def profile(**zero) -> HostProfile:
    return HostProfile(gpu_duration={"uce": 2.0, "esd": 0.5}, zerogpu=ZeroGPU(**{"max_duration": 1000.0, **zero}))


def esd(**kw) -> RunRequest:
    base = {"model": "digits", "method": "esd", "forget": ["3"], "settings": {"iterations": 100}, "forget_samples": 4,
            "retain_samples": 1, "num_inference_steps": 10}
    return RunRequest(**{**base, **kw})


def test_estimate_is_steps_times_measured_cost_with_margin():
    p = profile(margin=1.5, overhead_s=10, sample_step_s=0.05)
    # digits knows 10 digits: 4 forget pairs + 9 retained x 1 = 13 pairs, each 2 models x 10 steps
    expected = 1.5 * (10 + 100 * 0.5 + 13 * 2 * 10 * 0.05)
    assert zerogpu.estimate_seconds(esd(), p) == pytest.approx(expected)
    assert zerogpu.estimate_duration(esd(), p) == math.ceil(expected)  # whole seconds, rounded up


def test_duration_grows_with_iterations_and_sampling_steps():
    p = profile()
    short = zerogpu.estimate_seconds(esd(), p)
    assert zerogpu.estimate_seconds(esd(settings={"iterations": 200}), p) > short
    assert zerogpu.estimate_seconds(esd(num_inference_steps=20), p) > short
    assert zerogpu.estimate_seconds(esd(retain_samples=3), p) > short


def test_duration_is_capped_at_the_profiles_maximum():
    p = profile(max_duration=60.0)
    assert zerogpu.estimate_seconds(esd(settings={"iterations": 5000}), p) > 60
    assert zerogpu.estimate_duration(esd(settings={"iterations": 5000}), p) == 60


def test_closed_form_counts_one_solve_and_unlisted_methods_use_the_default_cost():
    p = profile(margin=1.0, overhead_s=1.0, sample_step_s=0.001, default_step_s=3.0)
    uce = esd(method="uce", settings={})
    sampling = 13 * 2 * 10 * 0.001
    assert zerogpu.estimate_seconds(uce, p) == pytest.approx(1.0 + 2.0 + sampling)  # gpu_duration["uce"] once
    fine = esd(method="finetune", settings={"iterations": 10})
    assert zerogpu.estimate_seconds(fine, p) == pytest.approx(1.0 + 10 * 3.0 + sampling)


def test_a_bad_request_still_gets_a_small_duration():
    # prepare() rejects it with its own message inside the GPU function; the estimate must not raise
    p = profile()
    bad = esd(model="no-such-model", method="no-such-method", settings={"iterations": "x"})
    assert 0 < zerogpu.estimate_duration(bad, p) <= p.zerogpu.max_duration


def test_without_spaces_the_function_is_returned_unchanged(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # import spaces -> ImportError
    def fn(request):
        return request

    assert zerogpu.on_gpu(zerogpu.request_duration)(fn) is fn
    assert zerogpu.zero_gpu_active() is False


def test_with_spaces_the_duration_callable_sees_the_request(monkeypatch):
    seen = {}

    def gpu(duration):
        def wrap(fn):
            def wrapped(*args, **kwargs):
                seen["duration"] = duration(*args, **kwargs)  # what ZeroGPU does before attaching a GPU
                return fn(*args, **kwargs)
            return wrapped
        return wrap

    fake = types.SimpleNamespace(GPU=gpu, config=types.SimpleNamespace(Config=types.SimpleNamespace(zero_gpu=True)))
    monkeypatch.setitem(sys.modules, "spaces", fake)
    p = profile(max_duration=77.0)
    monkeypatch.setattr(zerogpu, "get_profile", lambda: p)

    def work(request, progress=None):
        return "ran"

    decorated = zerogpu.on_gpu(zerogpu.request_duration)(work)
    request = esd(settings={"iterations": 5000})
    assert decorated(request, progress=None) == "ran"
    assert seen["duration"] == 77
    assert zerogpu.zero_gpu_active() is True
    assert dataclasses.is_dataclass(request)  # plain CPU data crosses the boundary


def test_what_crosses_the_gpu_boundary_is_picklable_cpu_data():
    """ZeroGPU runs the decorated function in a worker process and pickles what it yields back: every update
    of a real (tiny) run must pickle, and hold no torch tensor (a CUDA tensor there would fail or leak)."""
    import pickle

    import torch

    from unlearning.ui import unlearn as ui

    def tensors(value) -> list:
        if isinstance(value, torch.Tensor):
            return [value]
        if isinstance(value, dict):
            return [t for v in value.values() for t in tensors(v)]
        if isinstance(value, list | tuple):
            return [t for v in value for t in tensors(v)]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return [t for f in dataclasses.fields(value) for t in tensors(getattr(value, f.name))]
        return []

    request = esd(settings={"iterations": 2, "ddim_steps": 2, "batch_size": 1}, forget_samples=1, num_inference_steps=2,
                  device="cpu")
    pickle.loads(pickle.dumps(request))  # the arguments cross too
    updates = list(ui.run_stream(request))
    assert "Done" in updates[-1].status, updates[-1].status
    for update in updates:
        assert not tensors(update), f"a tensor in {update}"
        pickle.loads(pickle.dumps(update))


def test_the_zerogpu_profile_offers_closed_form_methods_and_its_hub_models(monkeypatch):
    from pathlib import Path

    from unlearning.hosting.profile import load_profile
    from unlearning.ui import unlearn as ui

    profile = load_profile(Path(__file__).resolve().parents[1] / "spaces_config.zerogpu.yaml")
    monkeypatch.setattr(ui, "get_profile", lambda: profile)
    monkeypatch.setattr(ui, "hub_availability", lambda repo: (False, "offline"))  # no network probe in a test
    methods = [v for _, v in ui.method_choices()]
    assert set(methods) == {"uce", "scapre"} and profile.default_method in methods  # what app.py opens on
    models = [v for _, v in ui.model_choices()]
    assert models[:2] == ["digits", "shapes-sd"] and "CompVis/stable-diffusion-v1-4" in models
