"""Sampling is reproducible per seed, and no method (finished or diverged) touches the base model.

Uses the untrained ``tiny_model``: its pictures are noise, which is enough to compare bits.
"""

from __future__ import annotations

import pytest
import torch

from unlearning.errors import DivergedError
from unlearning.hosting.profile import HostProfile, Limits
from unlearning.models.catalog import load_adapter
from unlearning.runner import RunRequest, execute, prepare

STEPS = 4  # DDIM steps: enough to run the whole sampler, cheap on a CPU
PROFILE = HostProfile(models=("digits",), limits=Limits(max_iterations=100))


@pytest.fixture(scope="module")
def adapter(tiny_model):
    return load_adapter(str(tiny_model), "cpu")


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"the base model was modified: {changed[:5]}"
    assert not any(p.requires_grad for p in module.parameters()), "the base model was made trainable"


def test_generate_is_reproducible(adapter):
    concepts, seeds = ["3", "7", "3"], [0, 1, 2]
    first = adapter.generate(concepts, seeds, num_inference_steps=STEPS)
    second = adapter.generate(concepts, seeds, num_inference_steps=STEPS)
    assert first.shape == (3, *adapter.sample_shape())
    assert first.dtype == torch.float32 and first.device.type == "cpu"
    assert first.min() >= 0.0 and first.max() <= 1.0
    assert torch.equal(first, second)


def test_different_seeds_give_different_images(adapter):
    images = adapter.generate(["3", "3"], [0, 1], num_inference_steps=STEPS)
    assert not torch.equal(images[0], images[1])


def test_initial_noise_depends_on_the_seed_only(adapter):
    alone = adapter.initial_noise([5])
    batch = adapter.initial_noise([9, 5, 11])
    assert alone.shape == (1, *adapter.sample_shape())
    assert torch.equal(batch[1], alone[0])  # same seed, same noise, whatever its position in the batch
    assert torch.equal(adapter.initial_noise([11, 9, 5])[2], alone[0])
    assert not torch.equal(batch[0], batch[2])


def test_initial_noise_ignores_the_global_generator(adapter):
    torch.manual_seed(1)
    a = adapter.initial_noise([3])
    torch.manual_seed(2)
    torch.randn(10)
    assert torch.equal(adapter.initial_noise([3]), a)


def tiny_request(model, method: str, **settings) -> RunRequest:
    return RunRequest(model=str(model), method=method, forget=["3"], preserve=["4", "5"], settings=settings,
                      device="cpu", forget_samples=2, retain_samples=1, num_inference_steps=3)


def test_a_run_never_changes_the_base_unet(tiny_model, adapter):
    run = prepare(tiny_request(tiny_model, "esd", iterations=2, ddim_steps=4, batch_size=1), PROFILE)
    assert run.adapter is adapter  # the cached adapter every later run shares
    before_unet, before_labels = state(adapter.unet), state(adapter.label_encoder)
    events = list(execute(run))
    assert [e.kind for e in events if e.kind == "train"] == ["train", "train"]
    assert events[-1].kind == "done"
    edit = events[-1].edit
    assert edit.params, "the method changed nothing, so this test would prove nothing"
    assert all(".attn2." in name for name in edit.params)  # ESD-x: cross-attention only
    assert_unchanged(adapter.unet, before_unet)
    assert_unchanged(adapter.label_encoder, before_labels)


def test_a_diverging_run_raises_and_leaves_the_base_unchanged(tiny_model, adapter):
    # Adam's first step moves every trained weight by about lr whatever the gradient, so lr = 1e30
    # puts weights near 1e30 after one step and the next loss overflows: deterministic, no seed luck.
    # retain_weight = 0 (plain ascent) and small data keep it fast.
    run = prepare(tiny_request(tiny_model, "gradient_ascent", lr=1e30, iterations=20, retain_weight=0,
                               batch_size=2, data_size=4), PROFILE)
    before = state(adapter.unet)
    with pytest.raises(DivergedError, match=r"lower the learning rate.*base model is unchanged"):
        for _ in execute(run):
            pass
    assert_unchanged(adapter.unet, before)
