"""ResAlign (unlearning.methods.resalign): the hypergradient's pieces and the edit's mechanics.

On the untrained ``tiny_model``; what ResAlign does against the relearning attack on a real twin is
measured by bench/bench_resalign.py, not asserted here.
"""

from __future__ import annotations

import pytest
import torch

from unlearning.edit import Edit
from unlearning.errors import InputError
from unlearning.methods import get_method
from unlearning.methods import resalign as RA
from unlearning.methods.base import RunContext, UnlearnTask
from unlearning.models.catalog import load_adapter

TINY = {"iterations": 2, "data_size": 2, "batch_size": 2, "ft_batch_size": 2, "ft_steps": "2", "ft_lrs": "1e-3",
        "richardson_steps": 2, "configs_per_step": 2, "num_configs": 4, "lr": 1e-2, "max_retries": 1}


@pytest.fixture(scope="module")
def adapter(tiny_model):
    return load_adapter(str(tiny_model), "cpu")


@pytest.fixture()
def task() -> UnlearnTask:
    return UnlearnTask(forget=["3"], retain=["1", "7", "8"], seed=0)


def state_of(adapter, task, **overrides) -> RA.ResAlign:
    return RA.ResAlign(adapter, task, get_method("resalign").settings(None, {**TINY, **overrides}))


def test_paper_defaults_and_validation():
    s = get_method("resalign").settings(None)
    assert (s.lam, s.retain_weight_start, s.retain_weight_end, s.richardson_steps, s.max_hypergrad_norm, s.max_retries) == (0.8, 1.6, 2.0, 5, 0.2, 5)
    assert (s.configs_per_step, s.hypergrad_scale, s.lr, s.weight_decay, s.lora_rank, s.num_configs, s.iterations) == (3, 0.3, 2e-4, 1e-2, 4, 15, 160)
    for bad in ({"ft_lrs": "fast"}, {"ft_lrs": ""}, {"ft_steps": "5,0"}, {"ft_lrs": "1e-4,-1"}, {"mixed_precision": "fp8"}):
        with pytest.raises(InputError, match=next(iter(bad))):
            get_method("resalign").settings(None, bad)


def test_retain_weight_ramps_over_the_second_half():
    s = get_method("resalign").settings(None, {"iterations": 100})
    w = [s.retain_weight(i) for i in range(100)]
    assert w[0] == w[49] == 1.6 and w[-1] == pytest.approx(2.0)
    assert all(b >= a for a, b in zip(w, w[1:], strict=False)) and 1.6 < w[75] < 2.0


def test_configs_are_distinct_and_cover_the_space():
    s = get_method("resalign").settings(None)
    configs = RA.draw_configs(s, 3, torch.Generator().manual_seed(0))
    assert len(configs) == 15 == len(set(configs))
    assert {c.space for c in configs} == {"lora", "full"} and {c.optimizer for c in configs} == {"sgd", "adam"}


def test_richardson_solves_i_plus_h():
    g0 = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g0))
    h = q @ torch.diag(torch.linspace(0.05, 0.6, 6)) @ q.T  # symmetric, spectral radius < 1
    g = [torch.randn(6, generator=g0)]

    def hvp(v):
        return [h @ v[0]]

    exact = torch.linalg.solve(torch.eye(6) + h, g[0])
    assert torch.allclose(RA.richardson(hvp, g, 1.0, 200)[0], exact, atol=1e-5)
    assert torch.allclose(RA.richardson(hvp, g, 0.5, 400)[0], exact, atol=1e-5)
    assert torch.allclose(RA.richardson(hvp, g, 1.0, 2)[0], g[0] - h @ g[0], atol=1e-6)  # K = 2: the Neumann truncation


@pytest.mark.parametrize("space", ["lora", "full"])
def test_hypergradient_undoes_the_simulated_finetune(adapter, task, space):
    st = state_of(adapter, task, max_hypergrad_norm=1e6)
    with torch.no_grad():  # a non-zero LoRA update, so d W / d theta reaches both A and B
        for n, p in st.theta.items():
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(n)))
    before = {n: p.detach().clone() for n, p in st.model.named_parameters()}
    hyper, info = st.hypergradient(RA.FineTuneConfig(1e-2, 2, True, space, "adam", 0))
    assert all(torch.equal(before[n], p) for n, p in st.model.named_parameters()), "the simulated fine-tune was not undone"
    assert all(p.requires_grad == ("lora_" in n) for n, p in st.model.named_parameters())
    assert hyper is not None and set(hyper) == set(st.theta) and info["fallback"] == 0
    assert all(torch.isfinite(v).all() for v in hyper.values())
    assert any(v.abs().sum() > 0 for n, v in hyper.items() if "lora_A" in n)
    assert any(v.abs().sum() > 0 for n, v in hyper.items() if "lora_B" in n)


def test_norm_gate_retries_then_falls_back(adapter, task):
    st = state_of(adapter, task, max_hypergrad_norm=1e-30, max_retries=2)
    hyper, info = st.hypergradient(RA.FineTuneConfig(1e-3, 1, False, "lora", "sgd", 0))
    assert hyper is None and info == {**info, "fallback": 1, "retries": 2}


def test_unlearn_edits_only_attention_projections_and_merges_exactly(adapter, task):
    base = {k: v.clone() for k, v in adapter.unet.state_dict().items()}
    st = state_of(adapter, task, gradient_checkpointing=True)
    opt = torch.optim.AdamW(list(st.theta.values()), lr=1e-2)
    log = [st.step(i, opt) for i in range(1)]
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in log)
    merged = Edit(params=st.merged()).apply_to_copy(adapter.unet)  # W(theta): the base's weights + B A, no UNet copy made
    x = torch.randn(2, *adapter.sample_shape(), generator=torch.Generator().manual_seed(1))
    c = adapter.encode(["3", "1"])
    with torch.no_grad():
        assert torch.allclose(adapter.eps(merged.eval(), x, 10, c), adapter.eps(st.model.eval(), x, 10, c), atol=1e-5)
    edit = RA.unlearn(adapter, task, get_method("resalign").settings(None, {**TINY, "iterations": 1, "configs_per_step": 1}), RunContext())
    assert edit.params and all(n.endswith(tuple(f".{t}.weight" for t in RA.LORA_TARGETS)) for n in edit.params)
    assert [e["step"] for e in edit.loss_log] == [1] and edit.method == "resalign"
    assert all(torch.equal(base[k], v) for k, v in adapter.unet.state_dict().items()), "the base model was modified"


def test_needs_retained_concepts(adapter):
    with pytest.raises(InputError, match="retained"):
        state_of(adapter, UnlearnTask(forget=["3"], retain=[], seed=0))


def test_esd_objective_pulls_towards_the_negatively_guided_target(adapter, task):
    st = state_of(adapter, task, objective="esd")
    loss = st.harmful_loss()
    (grad,) = torch.autograd.grad(loss, [next(iter(st.theta.values()))], allow_unused=True)
    assert loss.item() >= 0 and torch.isfinite(loss)  # an MSE, minimised (GA's L_h is a negated one)
    assert grad is not None
