"""UAM: Unlearning-Aware Minimization, as an optimiser wrapper any forget/retain method can switch on.

Kim, Kim, Chae, Yoon. "Unlearning-Aware Minimization", NeurIPS 2025. Written from the paper's
description and the project's method card (``methods/uam.md``); the authors' library ``torchunlearn``
is only run side by side in ``python -m unlearning bench classifier``, never imported here.

Like SAM, UAM evaluates one gradient at a perturbed point: it looks ahead in the direction that
*forgets* (raises the paper's forget loss) and takes the retain gradient there, so the retain update is
the one that still holds after more forgetting; the component of that retain gradient along the forget
direction is then removed so that keeping the rest does not undo the forgetting.

Notation (the method card's, one step):
    w            the trainable weights, flattened over every trainable tensor (one global norm)
    L_f(w)       the base method's forget objective *as it is minimised* (NegGrad: -CE(D_f); ESD: its
                 MSE to the negatively guided target; VDU: -(1 - gamma_vdu) L_C(D_f))
    L_r(w)       the base method's retain objective, weight included (NegGrad+: alpha CE(D_r); ESD:
                 retain_weight times distillation to the frozen model; VDU: its Gaussian anchor)
    g_f          grad L_f(w)
    rho          perturbation radius; w_hat = w - rho g_f / ||g_f|| (the paper maximises the forget loss
                 CE(D_f) = -L_f for NegGrad, i.e. it steps *down* our L_f)
    g_r          grad L_r(w_hat)
    P_f          g_f g_f^T / ||g_f||^2, the projection on the forget gradient
    gamma        how much of g_r's forget component is removed, in [0, 1]
    update       w <- optimiser step with gradient g_f + (I - gamma P_f) g_r

The projection is the card's, applied whatever the sign of g_r . g_f. Removing only the component that
opposes forgetting (g_r . g_f < 0, the condition of the authors' unused helper ``reverse_proj_v1_on_v2``)
was tried: on the classifier bench the class-wise NegGrad+ + UAM row forgot nothing with either
(forget accuracy 1.000 both times), and rho 0.05 with gamma 0 forgets nothing too, so it is the
perturbation, not the projection, that holds the class there.

How the forget step enters (the paper's pseudo-code shows only the retain update; recorded here): the
base method's own forget gradient g_f, taken at w (not w_hat), is added unchanged. So with rho = 0 and
gamma = 0 a UAM step is exactly the base method's step (a test checks this).
The authors' library (torchunlearn 0.1.0, ``optim/minimizer.py``) differs: its ``UAM.step`` perturbs
along the forget *cost* the caller supplies, then steps on the retain cost at w_hat only, with no forget
term and no projection (its projection helper is not called); the bench runs it as shipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import InputError
from .settings import setting

# the fields a method adds to its settings dataclass to offer UAM (defaults: off; rho, gamma chosen)
UAM_FIELDS = ("uam", "uam_rho", "uam_gamma")


@dataclass
class Objective:
    """One step's loss split into its forget and retain parts, each computed on demand.

    Each callable runs one forward pass on a batch drawn *once* for this step (calling it twice would
    draw new noise), so a step calls each exactly once: without UAM both at w, in that order (the
    same random draws as before the split); with UAM the forget part at w and the retain part at w_hat.
    """

    forget: Callable[[], torch.Tensor] | None  # L_f at the current weights (None: no forget term, e.g. fine-tuning)
    retain: Callable[[], torch.Tensor] | None = None  # L_r at the current weights (None: the method has none)
    extra: dict[str, float] = field(default_factory=dict)  # filled by the callables for the loss log


@dataclass(frozen=True)
class UAMConfig:
    rho: float  # perturbation radius (>= 0)
    gamma: float  # share of the retain gradient's forget component removed, in [0, 1]

    def __post_init__(self) -> None:
        check_uam_values(self.rho, self.gamma)


def check_uam_values(rho: float, gamma: float) -> None:
    if not rho >= 0:  # also refuses NaN
        raise InputError(f"UAM's rho must be >= 0 (the perturbation radius); got {rho}.")
    if not 0 <= gamma <= 1:
        raise InputError(f"UAM's gamma must be between 0 and 1 (share of the forget component removed); got {gamma}.")


def require_retain_loss(settings, has_retain: bool, how: str) -> None:
    """For a settings ``check()``: UAM switched on needs a retain loss; ``how`` says how to give one."""
    if getattr(settings, "uam", False) and not has_retain:
        raise InputError(f"UAM needs a retain loss to take at the perturbed weights, and this run has none: {how}, "
                         "or switch UAM off.")


def uam_config(settings) -> UAMConfig | None:
    """The UAMConfig a method's settings ask for, or None when UAM is off."""
    return UAMConfig(settings.uam_rho, settings.uam_gamma) if getattr(settings, "uam", False) else None


def _flat(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params, strict=True)])


def combined_step(params: Sequence[torch.Tensor], objective: Objective) -> torch.Tensor:
    """Without UAM: L = L_f + L_r at w, gradients into ``.grad``; returns L (detached)."""
    parts = [part() for part in (objective.forget, objective.retain) if part is not None]
    if not parts:
        raise ValueError("an Objective needs a forget or a retain part")
    loss = parts[0] if len(parts) == 1 else parts[0] + parts[1]
    for p in params:
        p.grad = None
    loss.backward()
    return loss.detach()


def uam_step(params: Sequence[torch.Tensor], objective: Objective, cfg: UAMConfig) -> torch.Tensor:
    """One UAM gradient into ``.grad`` (the caller's optimiser then steps); returns L_f(w) + L_r(w_hat).

    The weights are back at w, bit for bit, when this returns (the perturbation is undone from a copy).
    """
    if objective.retain is None or objective.forget is None:
        raise InputError("UAM needs a forget and a retain loss: this method's objective lacks one.")
    params = list(params)
    # 1. g_f = grad L_f(w)
    loss_f = objective.forget()
    g_f = _flat(torch.autograd.grad(loss_f, params, allow_unused=True), params)  # (P,)
    norm_f = g_f.norm()
    # 2. w_hat = w - rho g_f / ||g_f|| (towards more forgetting); keep w to restore it exactly
    saved = [p.detach().clone() for p in params]
    if cfg.rho > 0 and norm_f > 0:
        with torch.no_grad():
            step = cfg.rho / norm_f
            offset = 0
            for p in params:
                n = p.numel()
                p.sub_(step * g_f[offset : offset + n].view_as(p))
                offset += n
    # 3. g_r = grad L_r(w_hat)
    try:
        loss_r = objective.retain()
        g_r = _flat(torch.autograd.grad(loss_r, params, allow_unused=True), params)
    finally:
        with torch.no_grad():
            for p, w in zip(params, saved, strict=True):
                p.copy_(w)
    # 4. g = (I - gamma P_f) g_r, then add the forget step measured at w
    if cfg.gamma > 0 and norm_f > 0:
        g_r = g_r - cfg.gamma * (torch.dot(g_r, g_f) / norm_f**2) * g_f
    total = g_f + g_r
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = total[offset : offset + n].view_as(p).clone()
        offset += n
    objective.extra["forget_grad_norm"] = float(norm_f)
    return (loss_f + loss_r).detach()


def gradient_step(params: Sequence[torch.Tensor], objective: Objective, cfg: UAMConfig | None) -> torch.Tensor:
    """Fill ``.grad`` for one step of a forget/retain objective, with or without UAM; returns the loss."""
    return uam_step(params, objective, cfg) if cfg is not None else combined_step(params, objective)


# ---- the settings fields a method adds to offer UAM (the UI shows `uam` as a checkbox) -----------

def uam_switch():
    return setting(False, "UAM: take the retain gradient at weights perturbed towards more forgetting and remove its "
                   "forget component (Kim et al., NeurIPS 2025); needs a retain loss", label="UAM")


def uam_rho():
    return setting(0.05, "UAM rho: perturbation radius in weight space (global L2 norm; chosen, SAM's usual value)", low=0.0)


def uam_gamma():
    return setting(1.0, "UAM gamma: share of the retain gradient's forget component removed (1 = all; torchunlearn's default)",
                   low=0.0, high=1.0)
