"""SalUn: saliency unlearning.

Fan, Liu, Zhang, Wong, Wei, Liu. "SalUn: Empowering Machine Unlearning via Gradient-based Weight
Saliency in Both Image Classification and Generation", ICLR 2024.

Two parts. (1) A weight saliency mask: the gradient of the forgetting loss (the denoising loss on
forget data) w.r.t. every weight of the chosen group; the top ``mask_fraction`` of the weights by
gradient magnitude (one threshold over all of them) are trained, the rest stay exactly as they are.
(2) Random labelling: on the forget images, the model's prediction for the forget condition is
pulled to its own prediction under a *different, random* condition (a retained concept, drawn per
sample; the official DDPM code uses the next class), so the forget label draws something else;
ordinary denoising on retain data (weight alpha) keeps the other concepts.

Notation (paper Eq. 5 for the mask, Eq. 7 for random labelling in diffusion models):
    D_f, D_r     forget and retain data (x_0, c)
    g_i          | d L(D_f) / d theta_i |, the gradient summed over ``saliency_batches`` forget batches
    m_S          1[g_i > gamma_S], gamma_S chosen so that at most ``mask_fraction`` of the entries pass
    c'           a random retained concept, per sample (c' != c)
    L_f          E_{(x_0, c) in D_f, t, eps, c'} || eps_theta(x_t, t, c) - sg[eps_theta(x_t, t, c')] ||^2
    loss         L_f + alpha * L(D_r);  update  theta <- theta - lr * Adam(m_S * grad)

sg[.] is stop-gradient: the target is the model's own current prediction for c', detached, as in the
official code. The frozen entries get a zero gradient, so Adam leaves them untouched; they are also
copied back from the base at the end, so they are bit-identical to it whatever the optimiser does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..edit import Edit
from ..errors import InputError
from ..models.base import PARAMETER_GROUPS, FamilyAdapter
from .base import (
    ConceptPool,
    Memory,
    RunContext,
    UnlearnTask,
    checkpointing_setting,
    denoising_loss,
    finish,
    forward_noise,
    mixed_precision_setting,
    optimise,
    setting,
    trainable_copy,
)


@dataclass
class SalUnSettings:
    mask_fraction: float = setting(0.5, "fraction of the weights (by saliency) that are trained; paper 0.5",
                                   low=0.0, high=1.0, low_inclusive=False)
    iterations: int = setting(500, "optimisation steps (official DDPM config: 500)", low=1)
    lr: float = setting(1e-5, "Adam learning rate (paper: 1e-5 for SD, 1e-4 for small DDPMs)", low=0.0, low_inclusive=False)
    retain_weight: float = setting(1e-3, "alpha: weight of the retain denoising loss (official DDPM command: 1e-3)", low=0.0)
    batch_size: int = setting(8, "forget (and retain) samples per step", low=1, high=512)
    data_size: int = setting(64, "samples drawn once per run for the forget concept and each retained one", low=1, high=100_000)
    saliency_batches: int = setting(8, "forget batches whose gradient makes the saliency map (paper: the whole forget set)",
                                    low=1, high=1000)
    group: str = setting("all", "which UNet weights are candidates for the mask", choices=tuple(PARAMETER_GROUPS))
    mixed_precision: str = mixed_precision_setting()
    gradient_checkpointing: bool = checkpointing_setting()


def salun_loss(eps_forget: torch.Tensor, eps_pseudo: torch.Tensor, loss_retain: torch.Tensor, alpha: float) -> torch.Tensor:
    """|| eps_theta(x_t, t, c) - sg[eps_theta(x_t, t, c')] ||^2 + alpha L(D_r)."""
    return F.mse_loss(eps_forget, eps_pseudo.detach()) + alpha * loss_retain


def saliency_mask(adapter: FamilyAdapter, unet: torch.nn.Module, names: list[str], forget: ConceptPool, *,
                  fraction: float, batches: int, batch_size: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """m_S per parameter (bool, same shape): True where |sum of forget-loss gradients| is in the top ``fraction``.

    The threshold is strict (``>`` the k-th smallest magnitude), so ties never let more than
    ``fraction`` of the entries through. Gradients are summed in the parameters' own ``.grad`` (one buffer of the
    group's size, freed on return) and the threshold is found without a concatenated copy of all of them.
    """
    params = dict(unet.named_parameters())
    wanted = [params[n] for n in names]
    for p in wanted:
        p.grad = None
    for _ in range(batches):
        denoising_loss(adapter, unet, *forget.batch(batch_size, g), g).backward()  # sums into .grad
    grads = {n: params[n].grad.abs_() if params[n].grad is not None else torch.zeros_like(params[n]) for n in names}
    for p in wanted:
        p.grad = None
    total = sum(v.numel() for v in grads.values())
    keep = int(fraction * total)
    if keep == 0:
        raise InputError(f"mask_fraction = {fraction:g} leaves no weight trainable in this group ({total} weights); raise it.")
    if keep >= total:
        return {n: torch.ones_like(v, dtype=torch.bool) for n, v in grads.items()}
    threshold = top_threshold(list(grads.values()), keep)
    return {n: v > threshold for n, v in grads.items()}


def top_threshold(magnitudes: list[torch.Tensor], keep: int) -> float:
    """The smallest float32 t with at most ``keep`` entries strictly above it: the same mask as ``> kthvalue(P - keep)``
    of all entries, found by bisection over float32 bit patterns (31 counting passes, no (P,) copy)."""
    def above(bits: int) -> int:
        t = torch.tensor(bits, dtype=torch.int32).view(torch.float32).item()
        return sum(int((m > t).sum()) for m in magnitudes)

    lo, hi = 0, 0x7F800000  # the bit patterns of 0.0 and +inf (nothing is above +inf)
    while lo < hi:
        mid = (lo + hi) // 2
        if above(mid) <= keep:
            hi = mid
        else:
            lo = mid + 1
    return torch.tensor(lo, dtype=torch.int32).view(torch.float32).item()


def unlearn(adapter: FamilyAdapter, task: UnlearnTask, settings: SalUnSettings, ctx: RunContext) -> Edit:
    started = time.perf_counter()
    if not task.retain:
        raise InputError("SalUn relabels the forget concept with a retained one: keep at least one other concept.")
    # 1. data: forget images (with their own condition c), retained images, and the retained conditions c'
    forget = ConceptPool.build(adapter, task.forget, settings.data_size, task.seed)
    retain = ConceptPool.build(adapter, task.retain, settings.data_size, task.seed + 1)
    with torch.no_grad():
        pseudo_conds = adapter.encode([adapter.prompt_for(c) for c in task.retain])  # (R, T, D)
    unet, names = trainable_copy(adapter, settings.group, settings)
    memory = Memory.of(settings)
    g = torch.Generator().manual_seed(task.seed)

    # 2. weight saliency: which weights the forget loss depends on most
    with memory.autocast_context(adapter.device):
        mask = saliency_mask(adapter, unet, names, forget, fraction=settings.mask_fraction,
                             batches=settings.saliency_batches, batch_size=settings.batch_size, g=g)
    params = dict(unet.named_parameters())
    for n in names:  # hooks live on this copy only; the base UNet is never touched
        params[n].register_hook(lambda grad, m=mask[n]: grad * m)

    def loss_fn(step: int):
        # 3. random labelling: the prediction for c is pulled to the prediction for a random c' on the same x_t
        x0, cond = forget.batch(settings.batch_size, g)
        pseudo = pseudo_conds[torch.randint(len(pseudo_conds), (x0.shape[0],), generator=g).to(pseudo_conds.device)]
        x_t, t, _ = forward_noise(adapter, x0, g)
        eps_forget = adapter.eps(unet, x_t, t, cond).float()
        with torch.no_grad():
            eps_pseudo = adapter.eps(unet, x_t, t, pseudo).float()
        # 4. plus ordinary denoising on retained data
        l_r = denoising_loss(adapter, unet, *retain.batch(settings.batch_size, g), g)
        extra = {"relabel_loss": F.mse_loss(eps_forget, eps_pseudo).item(), "retain_loss": l_r.item()}
        return salun_loss(eps_forget, eps_pseudo, l_r, settings.retain_weight), extra

    log = optimise(unet, names, loss_fn, iterations=settings.iterations, lr=settings.lr, ctx=ctx, method="SalUn", memory=memory)
    # 5. exact: frozen entries are copied back from the base (the masked gradient already kept them there)
    base = dict(adapter.unet.named_parameters())
    with torch.no_grad():
        for n in names:
            params[n].copy_(torch.where(mask[n], params[n], base[n].to(params[n].dtype)))
    return finish(adapter, unet, names, method="salun", settings=settings, log=log, started=started)
