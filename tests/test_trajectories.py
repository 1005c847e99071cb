"""x_t drawn by sampling (methods/trajectories.py): the cached bank trains on the reference's own x_t, redrawn on time.

On the tiny untrained model (plumbing, not quality); no timing asserts (speed lives in bench/bench_speed.py).
"""

from __future__ import annotations

import pytest
import torch

from unlearning.errors import InputError
from unlearning.methods import get_method
from unlearning.methods.base import RunContext, UnlearnTask, trainable_copy
from unlearning.methods.trajectories import CachedTrajectories, ReferenceTrajectories, trajectory_source
from unlearning.models.catalog import load_adapter

STEPS = 6


@pytest.fixture(scope="module")
def adapter(tiny_model):
    return load_adapter(str(tiny_model), "cpu")


def source(kind, adapter, conds, seed=0, **kw):
    cls = CachedTrajectories if kind == "cached" else ReferenceTrajectories
    return cls(adapter, conds, ddim_steps=STEPS, guidance=2.0, batch_size=kw.pop("batch_size", 4),
               generator=torch.Generator().manual_seed(seed), **kw)


def test_bank_holds_the_reference_trajectories(adapter):
    """bank[s, n] is x_t after s DDIM steps of the same model from trajectory n's noise: what the reference draws."""
    conds = adapter.encode(["3", "5"])
    bank = source("cached", adapter, conds, bank_size=3, refresh_every=100)
    bank.refresh(adapter.unet)
    assert bank.bank.shape == (STEPS, 3, *adapter.sample_shape())
    assert bank.bank_concept.tolist() == [0, 1, 0]  # the concepts in turn
    seeds = torch.randint(2**31 - 1, (3,), generator=torch.Generator().manual_seed(0)).tolist()  # the bank's own draw
    for n in range(3):
        c = conds[bank.bank_concept[n] : bank.bank_concept[n] + 1]
        for s in (0, 1, STEPS - 1):
            x = adapter.denoise(adapter.initial_noise(seeds[n : n + 1]), c, unet=adapter.unet, num_inference_steps=STEPS,
                                guidance_scale=2.0, stop_step=s)
            torch.testing.assert_close(bank.bank[s, n : n + 1], x, rtol=1e-4, atol=1e-5)


def test_a_draw_pairs_each_x_t_with_its_timestep_and_concept(adapter):
    conds = adapter.encode(["3", "5"])
    bank = source("cached", adapter, conds, bank_size=4, refresh_every=100, batch_size=8)
    d = bank.draw(adapter.unet, 0)
    assert d.x_t.shape == (8, *adapter.sample_shape()) and d.t.shape == (8,) and d.concept.shape == (8,)
    for i in range(8):  # each sample is one bank entry, with that entry's noise level and concept
        hits = [(s, n) for s in range(STEPS) for n in range(4) if torch.equal(bank.bank[s, n], d.x_t[i])]
        assert hits, "a drawn x_t is not in the bank"
        s, n = hits[0]
        assert int(d.t[i]) == int(bank.timesteps[s]) and int(d.concept[i]) == int(bank.bank_concept[n])


@pytest.mark.parametrize("trajectory", ["reference", "cached"])
def test_same_objective(adapter, trajectory):
    """ESD's first logged loss is the paper's loss, written out here, on the x_t the source draws: with either kind
    only where x_t comes from differs (the frozen predictions for c and the anchor are one batched pass in esd.py)."""
    spec = get_method("esd")
    settings = spec.settings(None, {"iterations": 1, "ddim_steps": STEPS, "batch_size": 3, "trajectory": trajectory,
                                    "bank_size": 4, "negative_guidance": 1.5})
    edit = spec.unlearn(adapter, UnlearnTask(forget=["3"], retain=["5"], seed=7), settings, RunContext())
    conds = adapter.encode(["3"])
    d = trajectory_source(adapter, conds, settings, torch.Generator().manual_seed(7)).draw(adapter.unet, 0)
    c, null = conds[d.concept], adapter.null_condition(3)
    with torch.no_grad():
        eps0_c, eps0_null = adapter.eps(adapter.unet, d.x_t, d.t, c), adapter.eps(adapter.unet, d.x_t, d.t, null)
        target = eps0_null - 1.5 * (eps0_c - eps0_null)  # ESD, Eq. 5: theta at step 0 is the base
        paper = torch.mean((adapter.eps(adapter.unet, d.x_t, d.t, c) - target) ** 2)
    assert edit.loss_log[0]["loss"] == pytest.approx(float(paper), rel=1e-4)


def test_bank_is_redrawn_with_the_current_weights_every_r_iterations(adapter):
    conds = adapter.encode(["3"])
    unet, names = trainable_copy(adapter, "cross_attention")
    bank = source("cached", adapter, conds, bank_size=2, refresh_every=3)
    banks = []
    for step in range(7):
        bank.draw(unet, step)
        banks.append(bank.bank.clone())
        with torch.no_grad():  # an optimiser step's worth of change to the weights being edited
            for n, p in unet.named_parameters():
                if n in names:
                    p.add_(0.05 * torch.randn_like(p))
    assert bank.refreshes == 3  # steps 0, 3, 6
    assert torch.equal(banks[0], banks[2]) and torch.equal(banks[3], banks[5])
    assert not torch.equal(banks[2][1:], banks[3][1:])  # redrawn: the edited weights changed the trajectories
    assert unet.training, "the bank's sampling left the trained UNet in eval mode"


def test_reference_runs_a_fresh_partial_trajectory_per_draw(adapter):
    conds = adapter.encode(["3"])
    ref = source("reference", adapter, conds)
    d = ref.draw(adapter.unet, 0)
    assert d.t.ndim == 0 and d.x_t.shape[0] == 4
    assert ref.unet_steps < STEPS  # one partial trajectory: s < S DDIM steps


@pytest.mark.parametrize("trajectory", ["reference", "cached"])
def test_esd_runs_with_either_trajectory(adapter, trajectory):
    spec = get_method("esd")
    settings = spec.settings(None, {"iterations": 4, "ddim_steps": STEPS, "batch_size": 2, "lr": 1e-3, "trajectory": trajectory,
                                    "bank_size": 4, "refresh_every": 2})
    before = {k: v.clone() for k, v in adapter.unet.state_dict().items()}
    edit = spec.unlearn(adapter, UnlearnTask(forget=["3"], retain=["5"]), settings, RunContext())
    assert len(edit.loss_log) == 4 and all(torch.isfinite(torch.tensor(e["loss"])) for e in edit.loss_log)
    assert edit.summary()["changed_tensors"] > 0
    assert all(torch.equal(before[k], v) for k, v in adapter.unet.state_dict().items()), "the base model was modified"


def test_trajectory_setting_parses_and_refuses_unknown_values():
    spec = get_method("esd")
    assert spec.settings(None, {"trajectory": "cached", "refresh_every": "5"}).refresh_every == 5
    with pytest.raises(InputError, match="trajectory.*reference, cached"):
        spec.settings(None, {"trajectory": "fast"})
    with pytest.raises(InputError, match="refresh_every"):
        spec.settings(None, {"refresh_every": "0"})
