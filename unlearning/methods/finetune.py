"""Fine-tuning (FT): continue ordinary training on retained data only.

The simplest baseline (e.g. Warnecke et al. 2023; Fan et al. 2024): forgetting comes only from
catastrophic forgetting of what is no longer rehearsed, which for a conditional model is usually
weak, so FT shows how much of a method's effect is "just more training". With ``remap_forget`` the
forget concept's condition is also trained on images of the anchor concept (a random retained one
when no anchor is given), the "anchor-relabelled forget data" variant.

Notation:
    D_r          retain data (x_0, c)
    D_f->a       images of the anchor concept a, conditioned on the forget concept c
    loss         L(D_r) + beta * L(D_f->a)        (beta = 0 unless remap_forget)
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


@dataclass
class FineTuneSettings:
    iterations: int = setting(200, "optimisation steps", low=1)
    lr: float = setting(1e-5, "Adam learning rate (SD scale; the twin uses more)", low=0.0, low_inclusive=False)
    batch_size: int = setting(8, "samples per step", low=1, high=512)
    data_size: int = setting(64, "samples drawn once per run for each concept", low=1, high=100_000)
    remap_forget: bool = setting(False, "also train the forget concept's condition on anchor images")
    remap_weight: float = setting(1.0, "beta: weight of the remapped forget loss", low=0.0)
    group: str = setting("all", "which UNet weights are trained", choices=tuple(PARAMETER_GROUPS))
    mixed_precision: str = mixed_precision_setting()
    gradient_checkpointing: bool = checkpointing_setting()
    lora_rank: int = lora_setting()


def unlearn(adapter: FamilyAdapter, task: UnlearnTask, settings: FineTuneSettings, ctx: RunContext) -> Edit:
    started = time.perf_counter()
    # 1. data: retained concepts; optionally anchor images labelled as each forget concept
    retain = ConceptPool.build(adapter, task.retain, settings.data_size, task.seed + 1)
    remap = None
    if settings.remap_forget:
        g_anchor = torch.Generator().manual_seed(task.seed)
        anchors = [task.anchor_of(c) or task.retain[int(torch.randint(len(task.retain), (1,), generator=g_anchor))] for c in task.forget]
        remap = ConceptPool.build(adapter, anchors, settings.data_size, task.seed + 2, condition_on=task.forget)
    # 2. a trainable copy of the chosen parameter group
    unet, names = trainable_copy(adapter, settings.group, settings)
    g = torch.Generator().manual_seed(task.seed)

    def loss_fn(step: int):
        # 3. ordinary denoising on retained data (+ the remapped forget condition)
        l_r = denoising_loss(adapter, unet, *retain.batch(settings.batch_size, g), g)
        if remap is None:
            return l_r
        l_m = denoising_loss(adapter, unet, *remap.batch(settings.batch_size, g), g)
        return l_r + settings.remap_weight * l_m, {"retain_loss": l_r.item(), "remap_loss": l_m.item()}

    log = optimise(unet, names, loss_fn, iterations=settings.iterations, lr=settings.lr, ctx=ctx, method="fine-tuning",
                   memory=Memory.of(settings))
    return finish(adapter, unet, names, method="finetune", settings=settings, log=log, started=started)
