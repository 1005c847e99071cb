"""CA: Concept Ablation (model-based and noise-based).

Kumari, Zhang, Wang, Shechtman, Zhang, Zhu. "Ablating Concepts in Text-to-Image Diffusion Models", ICCV 2023.
Makes the model's distribution for the target concept match that of an anchor concept.

Notation:
    c          an anchor prompt ("a red circle"); c* the same prompt with the target concept ("a red star").
               Without an anchor the concept is dropped from the prompt ("a picture of a star" -> "a picture
               of"; for class labels: the null label), so the concept is ablated towards what is left.
    x          anchor images: samples of the original model from the anchor prompts (data-free; the paper
               generates them with SD from LLM-written prompts, here the adapter's own prompt templates)
    x_t        x noised to t ~ U{0 .. T-1}
    model-based (default)   L = || eps_theta(x_t, c*, t) - sg[eps_theta(x_t, c, t)] ||^2
    noise-based             L = || eps_theta(x_t, c*, t) - eps ||^2
    prior term (optional)   + w || eps_theta(x_t, c, t) - eps ||^2

sg[.]: no gradient. As in the paper, the model-based target comes from the network being trained (it moves
as training goes); ``teacher = "frozen"`` takes it from the original model instead (the card's comparison).
Parameter groups: "kv" = the cross-attention key / value projections (paper default), "attn" = q, k, v, out of
every attention layer (nudity), "full" = every weight (memorised images). The paper's fourth group (the target
words' token-embedding rows) edits the text encoder, which an Edit of the UNet cannot carry: left out.

``lr`` is the effective rate: the paper's 2e-6 scaled by ``--scale_lr`` (x batch 4 x 2 GPUs = 1.6e-5).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..edit import Edit
from ..models.base import FamilyAdapter
from .base import RunContext, UnlearnTask, finish, forward_noise, optimise, prompt_pairs, setting, trainable_copy

GROUPS = {
    "kv": ("all", lambda n: n.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))),
    "attn": ("all", lambda n: (".attn1." in n or ".attn2." in n) and ".to_" in n),
    "full": ("all", None),
}


@dataclass
class CASettings:
    loss: str = setting("model", "model-based (match the anchor's prediction) or noise-based (match the noise)", choices=("model", "noise"))
    group: str = setting("kv", "trained weights: cross-attention K/V (paper), every attention projection, or all", choices=tuple(GROUPS))
    iterations: int = setting(100, "optimisation steps (paper 100 for styles and objects, 400 for nudity)", low=1)
    lr: float = setting(1.6e-5, "effective Adam learning rate: 2e-6 x batch 4 x 2 GPUs (the paper's --scale_lr)", low=0.0, low_inclusive=False)
    batch_size: int = setting(4, "anchor images per step (paper 4 per GPU)", low=1, high=256)
    anchor_images: int = setting(200, "anchor images sampled from the original model (paper: 200 CompVis runs, 1000 README)",
                                 low=1, high=10_000)
    prior_weight: float = setting(0.0, "w: weight of the prior term on anchor pairs (paper: 1 for nudity and overlapping words)", low=0.0)
    teacher: str = setting("moving", "model-based target from the network being trained (paper) or from the original",
                           choices=("moving", "frozen"))


def ca_loss(eps_target_prompt: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|| eps_theta(x_t, c*, t) - target ||^2 with target = sg[eps(x_t, c, t)] (model-based) or eps (noise-based)."""
    return F.mse_loss(eps_target_prompt, target.detach())


@torch.no_grad()
def anchor_latents(adapter: FamilyAdapter, anchors: list[str | None], n: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """x: n samples of the original model spread over the anchor prompts (cycled), and each sample's pair index."""
    which = [i % len(anchors) for i in range(n)]
    seeds = [seed * 100_003 + i for i in range(n)]
    xs = []
    for start in range(0, n, 32):
        idx = which[start : start + 32]
        xs.append(adapter.denoise(adapter.initial_noise(seeds[start : start + 32]), adapter.encode_or_null([anchors[i] for i in idx])))
    return torch.cat(xs), which


def unlearn(adapter: FamilyAdapter, task: UnlearnTask, settings: CASettings, ctx: RunContext) -> Edit:
    started = time.perf_counter()
    s = settings
    # 1. (c*, c) prompt pairs and anchor images from the original model
    pairs = prompt_pairs(adapter, task)
    x0, which = anchor_latents(adapter, [p.anchor for p in pairs], s.anchor_images, task.seed)
    with torch.no_grad():
        c_star = adapter.encode([p.prompt for p in pairs])  # (P, T, D)
        c = adapter.encode_or_null([p.anchor for p in pairs])
    which = torch.tensor(which)
    group, select = GROUPS[s.group]
    unet, names = trainable_copy(adapter, group, s, select=select)
    teacher = adapter.unet if s.teacher == "frozen" else unet
    g = torch.Generator().manual_seed(task.seed)

    def loss_fn(step: int):
        # 2. noise anchor images; the target prompt's prediction is pulled to the anchor's (or to the noise)
        idx = torch.randint(len(x0), (s.batch_size,), generator=g)
        x_t, t, noise = forward_noise(adapter, x0[idx], g)
        pair = which[idx].to(c.device)
        eps_star = adapter.eps(unet, x_t, t, c_star[pair]).float()
        if s.loss == "model":
            with torch.no_grad():
                target = adapter.eps(teacher, x_t, t, c[pair]).float()
        else:
            target = noise.float()
        loss = ca_loss(eps_star, target)
        extra = {"ablation_loss": loss.item()}
        if s.prior_weight > 0:  # 3. prior term: the anchor prompt keeps denoising its own images
            prior = F.mse_loss(adapter.eps(unet, x_t, t, c[pair]).float(), noise.float())
            loss = loss + s.prior_weight * prior
            extra["prior_loss"] = prior.item()
        return loss, extra

    log = optimise(unet, names, loss_fn, iterations=s.iterations, lr=s.lr, ctx=ctx, method="Concept Ablation")
    return finish(adapter, unet, names, method="ca", settings=settings, log=log, started=started)
