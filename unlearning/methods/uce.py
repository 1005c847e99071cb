"""UCE: Unified Concept Editing.

Gandikota, Orgad, Belinkov, Materzynska, Bau. "Unified Concept Editing in Diffusion Models", WACV 2024.

One closed-form step on every cross-attention key / value projection W (old value W_0):

    W = ( sum_i v*_i c_i^T + lam sum_j W_0 c_j c_j^T + eps W_0 ) ( sum_i c_i c_i^T + lam sum_j c_j c_j^T + eps I )^-1

with c_i the erased concepts' token embeddings, v*_i = W_0 c*_i their targets (c*_i: the anchor's
embeddings, the empty prompt's when erasing), c_j preserved concepts' embeddings, lam the preservation
weight and eps a ridge that keeps W near W_0 in directions no concept spans. Because every target is
W_0 times something, the solution is W = W_0 M with one d_in x d_in matrix

    M = (C_A C_E^T + lam C_P C_P^T + eps I)(C_E C_E^T + lam C_P C_P^T + eps I)^-1

shared by all projections: one small solve per edit, then a matrix product per layer.
Multi-concept editing is native (stack the columns). No data, no training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..edit import Edit
from ..models.base import FamilyAdapter
from .base import RunContext, UnlearnTask, setting
from .closed_form import closed_form_edit, concept_rows


@dataclass
class UCESettings:
    preserve_scale: float = setting(0.5, "lam: weight of the preserved concepts (card default 0.5)", low=0.0)
    erase_scale: float = setting(1.0, "weight of the erased concepts' terms (UCE's erase_scale)", low=0.0, low_inclusive=False)
    ridge: float = setting(1.0, "eps: ridge towards the original weights in directions no concept spans", low=0.0, low_inclusive=False)
    include_last_token: bool = setting(True, "also edit the prompt's last (EOS) token, which has read the whole prompt",
                                       families=("stable-diffusion",))  # a class label has no EOS token
    include_padding: bool = setting(False, "also edit the padding positions after EOS (UCE's released code edits from the "
                                    "concept's last token to the end of the context)")


def uce_factor(rows, *, preserve_scale: float, erase_scale: float, ridge: float) -> torch.Tensor:
    """M with W = W_0 M (see the module docstring); float64."""
    d = rows.erase.shape[0]
    eye = torch.eye(d, dtype=torch.float64)
    gram_p = preserve_scale * rows.preserve @ rows.preserve.T
    left = erase_scale * rows.target @ rows.erase.T + gram_p + ridge * eye
    right = erase_scale * rows.erase @ rows.erase.T + gram_p + ridge * eye
    return torch.linalg.solve(right.T, left.T).T  # left @ right^-1 (right is symmetric)


def unlearn(adapter: FamilyAdapter, task: UnlearnTask, settings: UCESettings, ctx: RunContext) -> Edit:
    started = time.perf_counter()
    rows = concept_rows(adapter, task, include_last=settings.include_last_token, include_padding=settings.include_padding)
    factor = uce_factor(rows, preserve_scale=settings.preserve_scale, erase_scale=settings.erase_scale, ridge=settings.ridge)
    update = factor - torch.eye(factor.shape[0], dtype=factor.dtype)  # W = W_0 M = W_0 + W_0 (M - I)
    return closed_form_edit(adapter, task, rows, update, method="uce", settings=settings, ctx=ctx, started=started)
