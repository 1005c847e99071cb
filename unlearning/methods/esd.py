"""ESD: Erased Stable Diffusion.

Gandikota, Materzynska, Fiotto-Kaufman, Bau. "Erasing Concepts from Diffusion Models", ICCV 2023.

The edited model is taught to predict, for the concept c, the noise a *negatively guided* frozen
model predicts: it moves its own score for c away from c and towards the anchor.

Notation (paper, Eq. 4 and 5):
    theta*          frozen copy of the original model (here: the adapter's base UNet)
    theta           the model being edited (a trainable copy)
    c               the concept to erase; c_a the anchor (the null condition when erasing)
    x_t             produced *by the model being edited* from noise, conditioned on c (data-free), stopped
                    at a random DDIM step; ``trajectory`` says how (see trajectories.py): ``reference`` runs a
                    fresh partial trajectory every iteration (the paper), ``cached`` draws from a bank of
                    trajectories redrawn with the edited weights every ``refresh_every`` iterations
    eta             negative guidance strength
    target          eps_theta*(x_t, t, c_a) - eta * (eps_theta*(x_t, t, c) - eps_theta*(x_t, t, c_a))
    loss            || eps_theta(x_t, t, c) - target ||^2

Variants by the parameters trained: ESD-x (cross-attention only), ESD-u (all but cross-attention),
ESD-a (all).

Not in the paper: ``retain_weight`` > 0 adds a preservation term, distillation to the frozen model on a
retained concept at the same x_t and t, || eps_theta(x_t, t, c_r) - eps_theta*(x_t, t, c_r) ||^2; it is
the retain loss UAM needs (``uam``; see ``uam.py``), and 0 (the default) is the paper's ESD.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..edit import Edit
from ..errors import InputError
from ..models.base import FamilyAdapter
from .base import (
    Memory,
    RunContext,
    UnlearnTask,
    checkpointing_setting,
    finish,
    lora_setting,
    mixed_precision_setting,
    optimise,
    setting,
    trainable_copy,
)
from .trajectories import bank_size_setting, refresh_every_setting, trajectory_choice, trajectory_source, twice
from .uam import Objective, require_retain_loss, uam_config, uam_gamma, uam_rho, uam_switch

VARIANT_GROUPS = {"x": "cross_attention", "u": "non_cross_attention", "a": "all"}


@dataclass
class ESDSettings:
    variant: str = setting("x", "which weights are trained: x = cross-attention, u = all but cross-attention, a = all", choices=("x", "u", "a"))
    iterations: int = setting(1000, "optimisation steps (paper 1000; public tool's quick mode 200)", low=1)
    lr: float = setting(1e-5, "Adam learning rate (paper 1e-5; public tool 5e-5)", low=0.0, low_inclusive=False)
    negative_guidance: float = setting(1.0, "eta: strength of the negative guidance in the target", low=0.0)
    ddim_steps: int = setting(50, "DDIM steps of the trajectory x_t is drawn from", low=2, high=1000)
    start_guidance: float = setting(3.0, "CFG scale used when producing x_t from the concept", low=1.0)
    batch_size: int = setting(1, "x_t samples per step (paper 1)", low=1, high=256)
    trajectory: str = trajectory_choice()
    bank_size: int = bank_size_setting()
    refresh_every: int = refresh_every_setting()
    retain_weight: float = setting(0.0, "weight of distillation to the frozen model on a retained concept (0 = the paper's ESD; "
                                   "needed by UAM)", low=0.0)
    uam: bool = uam_switch()
    uam_rho: float = uam_rho()
    uam_gamma: float = uam_gamma()
    mixed_precision: str = mixed_precision_setting()
    gradient_checkpointing: bool = checkpointing_setting()
    lora_rank: int = lora_setting()

    def check(self) -> None:
        require_retain_loss(self, self.retain_weight > 0, "set retain_weight > 0 (distillation on retained concepts)")


def esd_loss(eps_edit: torch.Tensor, eps0_c: torch.Tensor, eps0_anchor: torch.Tensor, eta: float) -> torch.Tensor:
    """MSE between the edited prediction for c and the negatively guided frozen prediction."""
    target = eps0_anchor - eta * (eps0_c - eps0_anchor)
    return F.mse_loss(eps_edit, target)


def unlearn(adapter: FamilyAdapter, task: UnlearnTask, settings: ESDSettings, ctx: RunContext) -> Edit:
    started = time.perf_counter()
    # 1. a trainable copy; the adapter's base UNet stays frozen and plays theta*
    unet, names = trainable_copy(adapter, VARIANT_GROUPS[settings.variant], settings)
    frozen = adapter.unet
    b = settings.batch_size
    g = torch.Generator().manual_seed(task.seed)
    with torch.no_grad():
        conds = adapter.encode(task.forget)  # (K, T, D): one row per forget concept
        anchors = torch.cat([adapter.encode([a]) if (a := task.anchor_of(c)) else adapter.null_condition(1) for c in task.forget])
        retain_conds = adapter.encode(task.retain) if settings.retain_weight > 0 and task.retain else None  # (R, T, D)
    if settings.retain_weight > 0 and retain_conds is None:
        raise InputError("ESD's retain_weight needs at least one retained concept; name one or set retain_weight=0.")
    source = trajectory_source(adapter, conds, settings, g)

    def loss_fn(step: int) -> Objective:
        drawn: dict = {}
        extra: dict[str, float] = {}

        def forget_part() -> torch.Tensor:
            # 2. x_t from the model being edited, conditioned on each sample's concept c (data-free), no gradient
            d = source.draw(unet, step)
            c, c_a = conds[d.concept], anchors[d.concept]  # (B, T, D)
            drawn.update(x_t=d.x_t, t=d.t)
            extra["sampling_steps"] = source.unet_steps  # DDIM steps run so far to draw x_t (cumulative)
            # 3. the frozen model's predictions for c and the anchor (one batched pass)
            with torch.no_grad():
                eps0_c, eps0_anchor = adapter.eps(frozen, torch.cat([d.x_t, d.x_t]), twice(d.t), torch.cat([c, c_a])).float().chunk(2)
            # 4. the edited model's prediction for c, pulled to the negatively guided target
            return esd_loss(adapter.eps(unet, d.x_t, d.t, c).float(), eps0_c, eps0_anchor, settings.negative_guidance)

        def retain_part() -> torch.Tensor:
            # 5. (retain_weight > 0) a retained concept at the same x_t, t keeps the frozen model's prediction
            r = int(torch.randint(len(retain_conds), (1,), generator=g))
            c_r = retain_conds[r : r + 1].expand(b, -1, -1)
            with torch.no_grad():
                eps0_r = adapter.eps(frozen, drawn["x_t"], drawn["t"], c_r).float()
            return settings.retain_weight * F.mse_loss(adapter.eps(unet, drawn["x_t"], drawn["t"], c_r).float(), eps0_r)

        return Objective(forget_part, retain_part if retain_conds is not None else None, extra)

    log = optimise(unet, names, loss_fn, iterations=settings.iterations, lr=settings.lr, ctx=ctx, method="ESD",
                   uam=uam_config(settings), memory=Memory.of(settings))
    return finish(adapter, unet, names, method="esd", settings=settings, log=log, started=started)
