"""The relearning test works for every method in the registry (closed-form ones too), on the digits twin.

Tiny settings: this checks that each method's edit can be fine-tuned and re-scored, that the base is
never touched and that the fine-tuned model carries the edit forward; whether a method *resists*
relearning is a measurement (bench/bench_resalign.py), not something asserted here.
"""

from __future__ import annotations

import pytest
import torch

from unlearning.attacks import relearn as R
from unlearning.methods import METHODS
from unlearning.methods.base import RunContext, UnlearnTask
from unlearning.models.catalog import load_adapter

# The smallest settings each method runs with; a method added to the registry fails below until it has an entry.
TINY: dict[str, dict] = {
    "esd": {"iterations": 1, "ddim_steps": 2, "batch_size": 1},
    "gradient_ascent": {"iterations": 1, "batch_size": 2, "data_size": 2, "retain_weight": 1.0},
    "finetune": {"iterations": 1, "batch_size": 2, "data_size": 2, "remap_forget": True},
    "salun": {"iterations": 1, "batch_size": 2, "data_size": 2, "saliency_batches": 1},
    "vdu": {"iterations": 1, "batch_size": 2, "forget_size": 2, "num_checkpoints": 2},
    "uce": {},
    "scapre": {},
    "resalign": {"iterations": 1, "data_size": 2, "batch_size": 2, "ft_batch_size": 2, "ft_steps": "1",
                 "richardson_steps": 1, "configs_per_step": 2, "num_configs": 4, "max_retries": 0},
    "advunlearn": {"iterations": 2, "warmup": 1, "attack_steps": 1, "ddim_steps": 2, "retain_batch": 1},
    "ca": {"iterations": 1, "batch_size": 2, "anchor_images": 2},
    "fmn": {"iterations": 1, "data_size": 2},
    "mace": {"iterations": 1, "images_per_concept": 2},
    "rece": {"epochs": 1, "validation_samples": 2},
    "sld": {},
    "speed": {"augmentations": 1},
    "skip3d": {},  # novel-view models only (tests/test_zero123.py)
    "rmu": {},  # language models only (tests/test_lm.py)
}
TINY_RELEARN = {"steps": 1, "batch_size": 2, "accumulation": 1, "data_size": 2, "lr": 1e-3}


@pytest.fixture(scope="module")
def adapter():
    return load_adapter("digits", "cpu")


def test_every_registered_method_has_tiny_settings():
    assert set(TINY) == set(METHODS)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_relearning_test_runs_for(adapter, name):
    spec = METHODS[name]
    if "class-conditional" not in spec.families:
        pytest.skip(f"{name} does not run on class-conditional models")
    task = UnlearnTask(forget=["3"], retain=["1", "7"], seed=0)
    before = {k: v.clone() for k, v in adapter.unet.state_dict().items()}
    edit = spec.unlearn(adapter, task, spec.settings("digits", TINY[name]), RunContext())
    assert edit.params or edit.sampling, f"{name} changed nothing"  # SLD: no weights, a sampling rule
    result = R.relearn(adapter, edit, task, R.relearn_settings("digits", TINY_RELEARN))
    after = adapter.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), f"{name} or the relearning test modified the base"
    # theta_ft starts from theta_u: every parameter the edit changed is in it, and the fine-tune moved something
    assert set(edit.params) <= set(result.edit.params)
    assert any(not torch.equal(result.edit.params[n], edit.params.get(n, before[n].float())) for n in result.edit.params)
    report = R.relearn_report(adapter, task, edit, result.edit, forget_samples=2, seed=3, retain_samples=1, num_inference_steps=2)
    assert [r["model"] for r in report["rows"]] == ["original", "after unlearning", "after fine-tune"]
    assert all(0.0 <= r["forget_rate"] <= 1.0 for r in report["rows"])
