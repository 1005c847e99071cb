"""Gradient ascent (GA / NegGrad), with an optional retain term (NegGrad+).

The plainest way to forget: *maximise* the denoising loss on data of the forget concept, so the
model's likelihood of it drops. Unbounded: run long enough and the whole model collapses, which the
retain term (ordinary denoising on retained concepts, weight alpha) slows but does not prevent.
Used as a baseline by every unlearning paper (e.g. Thudi et al. 2022; Fan et al. 2024, SalUn).

Notation:
    D_f, D_r     forget and retain data (x_0, c)
    L(D)         E_{(x_0, c) in D, t, eps} || eps - eps_theta(x_t, t, c) ||^2
    loss         -L(D_f) + alpha * L(D_r)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..edit import Edit
from ..models.base import PARAMETER_GROUPS, FamilyAdapter
from .base import ConceptPool, RunContext, UnlearnTask, denoising_loss, finish, optimise, setting, trainable_copy


@dataclass
class GradientAscentSettings:
    iterations: int = setting(200, "optimisation steps; too many collapses the model", low=1)
    lr: float = setting(1e-5, "Adam learning rate (SD scale; the twin uses more)", low=0.0, low_inclusive=False)
    retain_weight: float = setting(0.0, "alpha: weight of the retain denoising loss (0 = plain GA, > 0 = NegGrad+)", low=0.0)
    batch_size: int = setting(8, "forget (and retain) samples per step", low=1, high=512)
    data_size: int = setting(64, "forget samples drawn once per run (and per retained concept)", low=1, high=100_000)
    group: str = setting("all", "which UNet weights are trained", choices=tuple(PARAMETER_GROUPS))


def ga_loss(loss_forget: torch.Tensor, loss_retain: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """-L(D_f) + alpha L(D_r)."""
    return -loss_forget + (alpha * loss_retain if loss_retain is not None else 0.0)


def unlearn(adapter: FamilyAdapter, task: UnlearnTask, settings: GradientAscentSettings, ctx: RunContext) -> Edit:
    started = time.perf_counter()
    # 1. data: the forget concepts' samples, and the retained ones' when alpha > 0
    forget = ConceptPool.build(adapter, task.forget, settings.data_size, task.seed)
    retain = ConceptPool.build(adapter, task.retain, settings.data_size, task.seed + 1) if settings.retain_weight > 0 else None
    # 2. a trainable copy of the chosen parameter group
    unet, names = trainable_copy(adapter, settings.group)
    g = torch.Generator().manual_seed(task.seed)

    def loss_fn(step: int):
        # 3. ascend on the forget loss, descend on the retain loss
        l_f = denoising_loss(adapter, unet, *forget.batch(settings.batch_size, g), g)
        l_r = denoising_loss(adapter, unet, *retain.batch(settings.batch_size, g), g) if retain else None
        extra = {"forget_loss": l_f.item(), **({"retain_loss": l_r.item()} if l_r is not None else {})}
        return ga_loss(l_f, l_r, settings.retain_weight), extra

    log = optimise(unet, names, loss_fn, iterations=settings.iterations, lr=settings.lr, ctx=ctx, method="gradient ascent")
    return finish(adapter, unet, names, method="gradient_ascent", settings=settings, log=log, started=started)
