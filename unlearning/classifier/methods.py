"""Unlearning methods for a classifier: the baselines of UAM's classification tables, RMU, and UAM.

Every method is one objective split into a forget part and a retain part (``methods.uam.Objective``),
stepped by the same loop; with ``uam`` the step is UAM's (``methods/uam.py``, the same code that wraps
the diffusion methods). The original model is never modified: each run trains a deep copy.

Notation:
    D_f, D_r       forget and retain samples (x, y); one batch of each per step
    CE(D)          mean cross-entropy of the model on D
    finetune       L = CE(D_r)                                  (Warnecke et al. 2023)
    neggrad        L_f = -beta CE(D_f), L_r = CE(D_r)            (NegGrad+, Kurmanji et al. 2023)
    random_label   L_f = CE(x_f, y~), y~ a random other class; L_r = CE(D_r)   (Golatkar et al. 2020)
    l1_sparse      L = CE(D_r) + lambda_t ||w||_1, lambda_t decays linearly to 0 (Jia et al. 2023)
    rmu            at the feature layer h (pre-activation, 64-d): L_f = mean_d (h(x_f) - c u)^2 with u a
                   fixed random unit vector (non-negative entries) and c = steer x the frozen model's mean
                   ||h(x_r)||; L_r = alpha mean_d (h(x_r) - h_0(x_r))^2 (RMU's MSE); only the last conv stage and the feature layer train, the head
                   stays frozen (Li et al. 2024, WMDP; adapted from an LLM's MLP layers to this CNN)
    retrain        a fresh model trained on D_r only (the gold standard; ``task.train_model``)
Optimiser for all: SGD, momentum 0.9, weight decay 5e-4 (torchunlearn's defaults for its trainers).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import DivergedError, InputError
from ..methods.base import setting, validate_settings
from ..methods.uam import Objective, UAMConfig, gradient_step
from .task import ForgetSplit

METHODS = ("finetune", "neggrad", "random_label", "l1_sparse", "rmu")
UAM_METHODS = ("neggrad", "random_label", "rmu")  # the ones with both a forget and a retain loss


@dataclass
class ClassifierSettings:
    steps: int = setting(150, "optimisation steps (one forget and one retain batch each; chosen)", low=1, high=100_000)
    lr: float = setting(0.002, "SGD learning rate (chosen: at 0.01 NegGrad+ and RandomLabel wreck class-wise retain accuracy)",
                        low=0.0, low_inclusive=False)
    batch_size: int = setting(64, "samples per batch, forget and retain each", low=1, high=4096)
    forget_weight: float = setting(0.1, "NegGrad+ beta: weight of -CE(D_f) (chosen; 1 runs away on this model)", low=0.0)
    l1: float = setting(5e-4, "L1-sparse lambda at step 0, decaying linearly to 0 (Jia et al.'s CIFAR value)", low=0.0)
    rmu_steer: float = setting(4.0, "RMU c, in units of the frozen model's mean feature norm on retain data (chosen)", low=0.0,
                               low_inclusive=False)
    rmu_alpha: float = setting(1.0, "RMU alpha: weight of keeping retain features (chosen)", low=0.0)
    uam_rho: float = setting(0.05, "UAM rho: perturbation radius (global L2 norm of all trained weights; chosen)", low=0.0)
    uam_gamma: float = setting(1.0, "UAM gamma: share of the retain gradient's forget component removed", low=0.0, high=1.0)


def settings_from(overrides: dict | None = None) -> ClassifierSettings:
    from ..methods.base import build_settings

    return build_settings(ClassifierSettings, {}, overrides or {})


def hidden(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The feature layer before its activation, (B, feature_dim): RMU's steering point."""
    return model.features_head(model.body(images * 2 - 1).mean(dim=(2, 3)))


def rmu_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The last conv stage (6 modules: conv-GN-SiLU twice) and the feature layer."""
    return [*model.body[-6:].parameters(), *model.features_head.parameters()]


def make_objective(method: str, model: torch.nn.Module, forget: tuple[torch.Tensor, torch.Tensor],
                   retain: tuple[torch.Tensor, torch.Tensor], settings: ClassifierSettings, extra: dict) -> Objective:
    """One step's objective (see the notation above); ``forget`` already carries random_label's y~."""
    (x_f, y_f), (x_r, y_r) = forget, retain

    def ce_retain() -> torch.Tensor:
        return F.cross_entropy(model(x_r), y_r)

    if method == "finetune":
        return Objective(None, ce_retain)
    if method == "l1_sparse":
        return Objective(None, lambda: ce_retain() + extra["l1"] * sum(p.abs().sum() for p in extra["params"]))
    if method == "neggrad":
        return Objective(lambda: -settings.forget_weight * F.cross_entropy(model(x_f), y_f), ce_retain)
    if method == "random_label":
        return Objective(lambda: F.cross_entropy(model(x_f), y_f), ce_retain)
    # rmu: steer forget features to c u, keep retain features where the frozen model has them
    with torch.no_grad():
        h0_r = hidden(extra["frozen"], x_r)
    return Objective(lambda: F.mse_loss(hidden(model, x_f), extra["target"].expand(len(x_f), -1)),
                     lambda: settings.rmu_alpha * F.mse_loss(hidden(model, x_r), h0_r))


def unlearn(model: torch.nn.Module, split: ForgetSplit, method: str, settings: ClassifierSettings | None = None, *,
            uam: bool = False, seed: int = 0) -> tuple[torch.nn.Module, float]:
    """Unlearn ``split.forget`` from a copy of ``model`` with ``method``; returns (the copy, seconds)."""
    settings = settings or ClassifierSettings()
    validate_settings(settings)
    if method not in METHODS:
        raise InputError(f"unknown classifier method '{method}'; available: {', '.join(METHODS)}.")
    if uam and method not in UAM_METHODS:
        raise InputError(f"UAM needs a forget and a retain loss; '{method}' has only a retain loss. "
                         f"UAM wraps: {', '.join(UAM_METHODS)}.")
    if len(split.forget) == 0 or len(split.retain) == 0:
        raise InputError("the forget and the retain set must both be non-empty.")
    started = time.perf_counter()
    # 1. a trainable copy (the original stays as it is), its parameters and the optimiser
    edited = copy.deepcopy(model).train()
    for p in edited.parameters():
        p.requires_grad_(False)
    params = rmu_parameters(edited) if method == "rmu" else list(edited.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=settings.lr, momentum=0.9, weight_decay=5e-4)
    cfg = UAMConfig(settings.uam_rho, settings.uam_gamma) if uam else None
    g = torch.Generator().manual_seed(seed)
    x, y = split.images, split.labels
    n_classes = int(model.config.num_classes)

    # 2. RMU's fixed target c u and the frozen features it keeps on retain data
    if method == "rmu":
        frozen = copy.deepcopy(model).eval()
        with torch.no_grad():
            u = torch.rand(model.config.feature_dim, generator=g)
            u = u / u.norm()
            c = settings.rmu_steer * hidden(frozen, x[split.retain]).norm(dim=1).mean()

    def batch(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = indices[torch.randint(len(indices), (settings.batch_size,), generator=g)]
        return x[idx], y[idx]

    for step in range(settings.steps):
        # 3. the method's objective on this step's batches
        forget_batch, retain_batch = batch(split.forget), batch(split.retain)
        if method == "random_label":
            y_f = forget_batch[1]
            forget_batch = (forget_batch[0], (y_f + torch.randint(1, n_classes, y_f.shape, generator=g)) % n_classes)  # y~ != y
        extra = {"l1": settings.l1 * (1 - step / settings.steps), "params": params}
        if method == "rmu":
            extra.update(frozen=frozen, target=c * u)
        objective = make_objective(method, edited, forget_batch, retain_batch, settings, extra)
        # 4. one step, UAM's when switched on
        loss = gradient_step(params, objective, cfg)
        if not torch.isfinite(loss):
            raise DivergedError(f"{method}: the loss became {float(loss)} at step {step + 1}; lower lr (now {settings.lr:g}) "
                                "or the steps and run again. The original model is unchanged.")
        opt.step()
    return edited.eval(), time.perf_counter() - started
