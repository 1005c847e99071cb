"""FMN: Forget-Me-Not (attention re-steering).

Zhang, Wang, Xu, Wang, Shi. "Forget-Me-Not: Learning to Forget in Text-to-Image Diffusion Models", arXiv
2303.17591 (2023). Teaches the UNet to stop looking at the concept: on noisy latents of images of the concept,
the cross-attention mass every layer puts on the concept's tokens is driven to zero.

Notation:
    x_t        noisy latent of an image of the concept, t ~ U{0 .. T-1} (the paper's real photos; here the
               twin's drawn images or real digits, and the original model's own samples on any other model)
    c          the image's caption, which names the concept ("a photo of {c}" in the paper; the twin's captions)
    A_l        cross-attention probabilities of layer l, (B, heads, N, T)
    P          positions of the concept's tokens in c, plus every end-of-text position when ``use_pooler``
    loss       L = || concat_l A_l[:, :, :, P] ||_F      (one Frobenius norm over all layers, not squared)

No denoising loss, no retain term, no frozen teacher: only the attention objective, so too many steps hurt
neighbouring concepts (the README says to tune steps and lr per concept). AdamW (weight decay 1e-2), constant
learning rate, gradient norm clipped at 1, as the paper's config.

Left out: the optional first stage (textual inversion of the concept into new tokens <s1>..<s4>) needs new
tokenizer entries; the re-steering targets the concept's own tokens instead. Not in the paper: ``use_masks``
restricts the loss to the object's pixels where the model family knows them (the shapes twin's renderer), as the
README recommends for segmented images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..edit import Edit
from ..models.base import PARAMETER_GROUPS, FamilyAdapter
from .attention import CrossAttentionMaps, concept_attention
from .base import RunContext, UnlearnTask, finish, forward_noise, optimise, setting, trainable_copy


@dataclass
class FMNSettings:
    iterations: int = setting(35, "optimisation steps (paper 35)", low=1)
    lr: float = setting(2e-6, "AdamW learning rate (paper 2e-6, SD 2.1)", low=0.0, low_inclusive=False)
    group: str = setting("all", "trained weights (paper: the whole UNet; only_optimize_ca = cross-attention)", choices=tuple(PARAMETER_GROUPS))
    batch_size: int = setting(1, "images per step (paper 1)", low=1, high=256)
    data_size: int = setting(10, "images of the concept (the paper's example ships 10 photos)", low=1, high=10_000)
    use_pooler: bool = setting(True, "also steer attention off every end-of-text / padding position (paper config: on)")
    use_masks: bool = setting(False, "only count attention inside the object's mask, where the model knows it (not in the paper)")
    weight_decay: float = setting(1e-2, "AdamW weight decay (paper 1e-2)", low=0.0)


def fmn_loss(attention: list[torch.Tensor]) -> torch.Tensor:
    """|| concat over layers of the attention on the concept's tokens ||_F."""
    return torch.linalg.norm(torch.cat(attention))


def unlearn(adapter: FamilyAdapter, task: UnlearnTask, settings: FMNSettings, ctx: RunContext) -> Edit:
    started = time.perf_counter()
    s = settings
    # 1. images of the concept with their captions (and object masks), drawn once
    x0, conds, positions, masks = [], [], [], []
    with torch.no_grad():
        for k, concept in enumerate(task.forget):
            x, captions = adapter.captioned_data(concept, s.data_size, task.seed + 7919 * k)
            m = adapter.object_masks(concept, s.data_size, task.seed + 7919 * k) if s.use_masks else None
            x0.append(x)
            conds.append(adapter.encode(captions))
            positions += [adapter.concept_positions(c, concept, s.use_pooler) for c in captions]
            masks.append(m if m is not None else torch.ones(len(x), 1, *adapter.sample_shape()[1:]))
    x0, conds, masks = torch.cat(x0), torch.cat(conds), torch.cat(masks)
    unet, names = trainable_copy(adapter, s.group)
    g = torch.Generator().manual_seed(task.seed)

    def loss_fn(step: int):
        # 2. a noisy latent of the concept, the UNet's attention on the concept's tokens
        idx = torch.randint(len(x0), (s.batch_size,), generator=g)
        x_t, t, _ = forward_noise(adapter, x0[idx], g)
        maps.clear()
        adapter.eps(unet, x_t, t, conds[idx])
        parts = concept_attention(maps.probabilities(), [positions[i] for i in idx.tolist()], masks[idx] if s.use_masks else None)
        return fmn_loss(parts)

    with CrossAttentionMaps(unet) as maps:  # hooks on our own copy only
        log = optimise(unet, names, loss_fn, iterations=s.iterations, lr=s.lr, ctx=ctx, method="Forget-Me-Not",
                       optimizer="adamw", weight_decay=s.weight_decay, max_grad_norm=1.0)
    return finish(adapter, unet, names, method="fmn", settings=settings, log=log, started=started)
