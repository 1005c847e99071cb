"""Gradient ascent (GA / NegGrad), with an optional retain term (NegGrad+).

The plainest way to forget: *maximise* the denoising loss on data of the forget concept, so the
model's likelihood of it drops. Unbounded: run long enough and the whole model collapses, which the
retain term (ordinary denoising on retained concepts, weight alpha) slows but does not prevent.
Used as a baseline by every unlearning paper (e.g. Thudi et al. 2022; Fan et al. 2024, SalUn).

Notation:
    D_f, D_r     forget and retain data (x_0, c)
    L(D)         E_{(x_0, c) in D, t, eps} || eps - eps_theta(x_t, t, c) ||^2
    loss         -L(D_f) + alpha * L(D_r)

With ``uam`` on, the step is taken by the UAM wrapper (``uam.py``) with L_f = -L(D_f) and
L_r = alpha L(D_r): the retain gradient is measured at weights perturbed towards more forgetting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..edit import Edit
from ..models.base import PARAMETER_GROUPS, FamilyAdapter
from .base import (
    ConceptPool,
    Memory,
    RunContext,
    UnlearnTask,
    checkpointing_setting,
    denoising_loss,
    finish,
    lora_setting,
    mixed_precision_setting,
    optimise,
    setting,
    trainable_copy,
)
from .uam import Objective, require_retain_loss, uam_config, uam_gamma, uam_rho, uam_switch


@dataclass
class GradientAscentSettings:
    iterations: int = setting(200, "optimisation steps; too many collapses the model", low=1)
    lr: float = setting(1e-5, "Adam learning rate (SD scale; the twin uses more)", low=0.0, low_inclusive=False)
    retain_weight: float = setting(0.0, "alpha: weight of the retain denoising loss (0 = plain GA, > 0 = NegGrad+)", low=0.0)
    batch_size: int = setting(8, "forget (and retain) samples per step", low=1, high=512)
    data_size: int = setting(64, "forget samples drawn once per run (and per retained concept)", low=1, high=100_000)
    group: str = setting("all", "which UNet weights are trained", choices=tuple(PARAMETER_GROUPS))
    uam: bool = uam_switch()
    uam_rho: float = uam_rho()
    uam_gamma: float = uam_gamma()
    mixed_precision: str = mixed_precision_setting()
    gradient_checkpointing: bool = checkpointing_setting()
    lora_rank: int = lora_setting()

    def check(self) -> None:
        require_retain_loss(self, self.retain_weight > 0, "set retain_weight > 0 (NegGrad+)")


def unlearn(adapter: FamilyAdapter, task: UnlearnTask, settings: GradientAscentSettings, ctx: RunContext) -> Edit:
    started = time.perf_counter()
    # 1. data: the forget concepts' samples, and the retained ones' when alpha > 0
    forget = ConceptPool.build(adapter, task.forget, settings.data_size, task.seed)
    retain = ConceptPool.build(adapter, task.retain, settings.data_size, task.seed + 1) if settings.retain_weight > 0 else None
    # 2. a trainable copy of the chosen parameter group
    unet, names = trainable_copy(adapter, settings.group, settings)
    g = torch.Generator().manual_seed(task.seed)

    def loss_fn(step: int) -> Objective:
        # 3. ascend on the forget loss (L_f = -L(D_f)), descend on the retain loss (L_r = alpha L(D_r))
        extra: dict[str, float] = {}

        def forget_part() -> torch.Tensor:
            l_f = denoising_loss(adapter, unet, *forget.batch(settings.batch_size, g), g)
            extra["forget_loss"] = l_f.item()
            return -l_f

        def retain_part() -> torch.Tensor:
            l_r = denoising_loss(adapter, unet, *retain.batch(settings.batch_size, g), g)
            extra["retain_loss"] = l_r.item()
            return settings.retain_weight * l_r

        return Objective(forget_part, retain_part if retain else None, extra)

    log = optimise(unet, names, loss_fn, iterations=settings.iterations, lr=settings.lr, ctx=ctx, method="gradient ascent",
                   uam=uam_config(settings), memory=Memory.of(settings))
    return finish(adapter, unet, names, method="gradient_ascent", settings=settings, log=log, started=started)
