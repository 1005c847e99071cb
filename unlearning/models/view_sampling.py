"""Novel-view sampling with dynamic timestep skipping (Algorithm 1 of Wang, Ye, Wang, NeurIPS 2025).

The views of one input around the object are generated together. Without a plan every view runs the whole
DDIM trajectory from one shared initial noise. With a :class:`SkipPlan`, a few *reference* views run the whole
trajectory and every other view joins part-way, from a blend of two references' latents at its jump step, so
it only runs the remaining steps:

1. reference azimuths: N_ref evenly spaced from 0 degrees (the views nearest to them);
2. the references' trajectories are the cache: a view joining at step j reads their latents after j steps;
3. each other view blends the two references whose conditioning tokens are most cosine-similar to its own,
   weights proportional to the similarities;
4. jump length: ``skip`` steps, or with the near/far rule ``skip_near`` within ``tau`` degrees of a reference
   and ``skip_far`` otherwise.

Used by the skip3d method (its training trajectories) and by the comparison engine (sampling speed at each
skip). The functions take the family adapter (``unlearning.models.novel_view``) for its noise prediction and
scheduler; nothing here is changed behind the caller's back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from .zero123 import Condition, wrap_degrees

StepHook = Callable[[int, list[int], torch.Tensor], None]  # (step k, active view indices, latents the step starts from)
PAPER_SAMPLING_SPEEDUP = {8: 1.43, 12: 1.71, 16: 2.12}  # the paper's per-view sampling speedup at skip 8 / 12 / 16 of 32


def azimuth_grid(step: float) -> list[float]:
    """Azimuth deltas 0, step, 2 step, ... below 360 degrees."""
    return [float(a) for a in np.arange(0.0, 360.0 - 1e-9, step)]


def reference_azimuths(n_ref: int) -> list[float]:
    return [360.0 * i / n_ref for i in range(n_ref)]


def angular_distance(a: float, b: float) -> float:
    return abs(float(wrap_degrees(a - b)))


@dataclass
class SkipPlan:
    """Which views are references, and for the others the jump step and blend of two references."""

    references: list[int]  # view indices
    jump: dict[int, int]  # view -> steps skipped (0 for references)
    blend: dict[int, tuple[int, int, float, float]]  # view -> (ref a, ref b, w_a, w_b) as reference positions


def plan_skipping(azimuths: list[float], tokens: torch.Tensor | None, *, n_ref: int, skip: int, dynamic: bool = False,
                  skip_near: int = 16, skip_far: int = 8, tau: float = 20.0) -> SkipPlan:
    """Algorithm 1's bookkeeping. References are the views nearest to n_ref azimuths evenly spaced from 0;
    each other view blends the two references whose tokens (its conditioning embeddings) are most
    cosine-similar, weights proportional to the similarities (clamped at 0; equal if both are 0)."""
    if n_ref > len(azimuths):
        raise InputError(f"{n_ref} references for {len(azimuths)} views: the number of references must not exceed the views.")
    refs: list[int] = []
    for target in reference_azimuths(n_ref):
        best = min((i for i in range(len(azimuths)) if i not in refs), key=lambda i: angular_distance(azimuths[i], target))
        refs.append(best)
    plan = SkipPlan(references=refs, jump={r: 0 for r in refs}, blend={})
    flat = tokens.reshape(len(azimuths), -1).float() if tokens is not None else None
    for v in range(len(azimuths)):
        if v in refs:
            continue
        if flat is not None:
            sims = torch.nn.functional.cosine_similarity(flat[v][None], flat[refs], dim=-1)
        else:  # no tokens: similarity from the angle
            sims = torch.tensor([math.cos(math.radians(angular_distance(azimuths[v], azimuths[r]))) for r in refs])
        order = torch.argsort(sims, descending=True)[:2].tolist()
        a, b = (order + order)[:2]
        wa, wb = max(float(sims[a]), 0.0), max(float(sims[b]), 0.0) if b != a else 0.0
        if wa + wb == 0:
            wa, wb = 1.0, (1.0 if b != a else 0.0)
        total = wa + wb
        plan.blend[v] = (a, b, wa / total, wb / total)
        near = min(angular_distance(azimuths[v], azimuths[r]) for r in refs) <= tau
        plan.jump[v] = (skip_near if near else skip_far) if dynamic else skip
    return plan


def _blend(plan: SkipPlan, views: list[int], x: torch.Tensor, active: list[int]) -> torch.Tensor:
    """The joining views' starting latents: each a weighted sum of two references' current latents."""
    pos = {v: i for i, v in enumerate(active)}
    return torch.stack([plan.blend[v][2] * x[pos[plan.references[plan.blend[v][0]]]]
                        + plan.blend[v][3] * x[pos[plan.references[plan.blend[v][1]]]] for v in views])


@torch.no_grad()
def run_trajectories(adapter, unet, cond: Condition, *, steps: int, guidance: float, noise: torch.Tensor,
                     plan: SkipPlan | None, stop_before_last: bool = False, on_step: StepHook | None = None
                     ) -> tuple[torch.Tensor, dict]:
    """Latents of every view (rows of ``cond``): after the last DDIM step, or (``stop_before_last``) the latent
    the last step starts from. Without a plan every view runs all ``steps``; with one, references run all
    steps and the others start from a blend of two references' latents at their jump step.
    ``noise`` (1, C, h, w) is shared. ``on_step(k, active, x)`` sees the latents each step starts from (the
    views in ``active``; a hook may record them, or raise to stop). Returns (latents, {"unet_evals": number of
    view-steps computed})."""
    sched = adapter.ddim_scheduler(steps)
    timesteps = sched.timesteps
    end = steps - 1 if stop_before_last else steps
    n = len(cond)
    out = torch.empty((n, *noise.shape[1:]), dtype=noise.dtype, device=noise.device)
    evals = 0

    if plan is None:
        joins: dict[int, list[int]] = {0: list(range(n))}
    else:
        joins = {0: list(plan.references)}
        for v, j in plan.jump.items():
            if v not in plan.references:
                joins.setdefault(min(j, end), []).append(v)
    # One batch that grows: references (or, without a plan, every view) start from the shared noise; a view
    # with jump j joins at step j from the blend of two references' latents after j steps. Views that have
    # joined are denoised together, so skipping saves UNet work without adding sequential calls.
    active: list[int] = []
    x = noise[:0]
    for k in range(end):
        if k in joins:
            new = noise.expand(len(joins[0]), -1, -1, -1).clone() if k == 0 else _blend(plan, joins[k], x, active)
            active += joins[k]
            x = torch.cat([x, new])
        if on_step is not None:
            on_step(k, active, x)
        x = sched.step(adapter.guided_eps(unet, x, timesteps[k], cond.index(active), guidance), timesteps[k], x).prev_sample
        evals += len(x)
    late = [v for j, vs in joins.items() if j >= end for v in vs]  # jumps past the end: the blend itself
    if late:
        x = torch.cat([x, _blend(plan, late, x, active)])
        active += late
    out[active] = x
    return out, {"unet_evals": evals}
