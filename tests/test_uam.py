"""UAM, the optimiser wrapper: its step on small known objectives, its settings on the diffusion methods,
the UI's checkbox, and one short wrapped run of each method on the digits twin (plumbing, not quality;
the with / without comparison is in bench/bench_uam.py and the README)."""

from __future__ import annotations

import pytest
import torch

from unlearning.errors import InputError
from unlearning.methods import METHODS
from unlearning.methods.uam import Objective, UAMConfig, combined_step, uam_step


def toy(seed: int = 0):
    """Two weight tensors and two quadratic losses with known gradients.

    L_f(w) = 0.5 ||w - a||^2, L_r(w) = 0.5 ||A w - b||^2 (w flattened over both tensors)."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(3, 2, generator=g).requires_grad_(), torch.randn(4, generator=g).requires_grad_()]
    a = torch.randn(10, generator=g)
    mat, b = torch.randn(10, 10, generator=g), torch.randn(10, generator=g)

    def flat() -> torch.Tensor:
        return torch.cat([p.reshape(-1) for p in params])

    def objective() -> Objective:
        return Objective(lambda: 0.5 * (flat() - a).pow(2).sum(), lambda: 0.5 * (mat @ flat() - b).pow(2).sum())

    grads = {
        "f": lambda w: w - a,
        "r": lambda w: mat.T @ (mat @ w - b),
    }
    return params, flat, objective, grads


def grad_of(params) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])


def test_with_rho_and_gamma_zero_uam_is_the_plain_step():
    params, _, objective, _ = toy()
    combined_step(params, objective())
    plain = grad_of(params)
    uam_step(params, objective(), UAMConfig(0.0, 0.0))
    torch.testing.assert_close(grad_of(params), plain)


@pytest.mark.parametrize("seed", [1, 2])  # g_r . g_f > 0 and < 0
@pytest.mark.parametrize(("rho", "gamma"), [(0.3, 0.0), (0.3, 1.0), (0.7, 0.5), (0.0, 1.0)])
def test_uam_gradient_matches_the_recipe_and_leaves_the_weights(rho, gamma, seed):
    params, flat, objective, grads = toy(seed)
    w = flat().detach().clone()
    uam_step(params, objective(), UAMConfig(rho, gamma))
    # the weights are back at w, bit for bit
    assert torch.equal(flat().detach(), w)
    # 1. g_f at w; 2. w_hat = w - rho g_f / ||g_f||; 3. g_r at w_hat; 4. g_f + (I - gamma P_f) g_r
    g_f = grads["f"](w)
    g_r = grads["r"](w - rho * g_f / g_f.norm())
    expected = g_f + g_r - gamma * (g_r @ g_f) / (g_f @ g_f) * g_f
    torch.testing.assert_close(grad_of(params), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [1, 2])
def test_gamma_one_leaves_no_retain_component_along_the_forget_gradient(seed):
    params, flat, objective, grads = toy(seed)
    w = flat().detach().clone()
    uam_step(params, objective(), UAMConfig(0.2, 1.0))
    g_f = grads["f"](w)
    retain_part = grad_of(params) - g_f
    assert abs(float(retain_part @ g_f)) < 1e-4 * float(retain_part.norm() * g_f.norm())


def test_uam_without_a_retain_loss_is_refused():
    params, _, _, _ = toy()
    with pytest.raises(InputError, match="UAM needs a forget and a retain loss"):
        uam_step(params, Objective(lambda: params[0].sum(), None), UAMConfig(0.1, 1.0))


@pytest.mark.parametrize(("rho", "gamma", "message"), [
    (-0.1, 1.0, "rho must be >= 0"),
    (float("nan"), 1.0, "rho must be >= 0"),
    (0.1, 1.5, "gamma must be between 0 and 1"),
    (0.1, -0.5, "gamma must be between 0 and 1"),
])
def test_bad_uam_values_are_refused(rho, gamma, message):
    with pytest.raises(InputError, match=message):
        UAMConfig(rho, gamma)


# ---- on the diffusion methods --------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "overrides", "message"), [
    ("gradient_ascent", {"uam": True, "retain_weight": 0}, r"UAM needs a retain loss.*retain_weight > 0"),
    ("esd", {"uam": True}, r"UAM needs a retain loss.*retain_weight > 0"),
    ("vdu", {"uam": True, "gamma": 0}, r"UAM needs a retain loss.*gamma > 0"),
    ("esd", {"uam": True, "retain_weight": 1, "uam_rho": -1}, r"setting 'uam_rho' must be >= 0"),
    ("gradient_ascent", {"uam_gamma": 1.5}, r"setting 'uam_gamma' must be <= 1"),
    ("vdu", {"uam_gamma": -0.5}, r"setting 'uam_gamma' must be >= 0"),
    ("salun", {"uam": True}, r"UAM wraps methods whose loss has a forget and a retain part"),
    ("uce", {"uam_rho": 0.1}, r"UAM wraps methods whose loss has a forget and a retain part"),
])
def test_bad_uam_settings_are_refused(method, overrides, message):
    with pytest.raises(InputError, match=message):
        METHODS[method].settings("digits", overrides)


def test_the_ui_has_a_uam_checkbox_for_each_wrapped_method_only():
    from unlearning.ui.unlearn import setting_controls

    boxes = {c.method for c in setting_controls("digits") if c.label == "UAM" and c.kind == "bool"}
    assert boxes == {"esd", "gradient_ascent", "vdu"}


@pytest.mark.parametrize(("method", "overrides"), [
    ("gradient_ascent", {"uam": True, "uam_rho": 0.5, "iterations": 2}),
    ("esd", {"uam": True, "retain_weight": 1.0, "iterations": 2, "ddim_steps": 4}),
    ("vdu", {"uam": True, "iterations": 2, "forget_size": 8, "batch_size": 8}),
])
def test_wrapped_methods_run_and_change_the_model(method, overrides):
    from unlearning.methods.base import RunContext, UnlearnTask
    from unlearning.models.catalog import load_adapter

    adapter = load_adapter("digits", "cpu")
    before = {n: p.detach().clone() for n, p in adapter.unet.named_parameters()}
    spec = METHODS[method]
    settings = spec.settings("digits", overrides)
    task = UnlearnTask(forget=["3"], retain=[str(d) for d in range(10) if d != 3])
    edit = spec.unlearn(adapter, task, settings, RunContext())
    assert len(edit.loss_log) == 2 and all("forget_grad_norm" in e for e in edit.loss_log)
    assert edit.num_changed > 0
    # the base model is never modified
    assert all(torch.equal(p, before[n]) for n, p in adapter.unet.named_parameters())
