"""x_t drawn by sampling: the noisy samples data-free methods train on (ESD and every method built on its target).

ESD (Gandikota et al., ICCV 2023) trains on x_t that the *model being edited* produces from noise,
conditioned on the concept, stopped at a random DDIM step. Two ways to draw them, one setting:

    reference   the paper's algorithm: every iteration runs a fresh partial DDIM trajectory (on average
                half the steps, each with classifier-free guidance) to a random step, for one concept
                and one stopping step per batch. Sampling dominates an iteration.
    cached      a bank of ``bank_size`` whole trajectories, drawn together in batches with the edited
                model, keeping x_t after every step; it is redrawn with the current weights every
                ``refresh_every`` iterations. Each iteration draws (trajectory, step) pairs from the
                bank, so one batch mixes concepts and noise levels. The x_t are at most
                ``refresh_every`` iterations stale: the model that drew them is the edited one of a few
                steps ago, not of this step.

Notation (DDIM, Song et al. 2021; the adapter's deterministic sampler, eta = 0):
    S              DDIM steps of a trajectory (``ddim_steps``); tau_0 > tau_1 > ... > tau_{S-1} its timesteps
    x_{tau_s}      the latent after s DDIM steps from x_T (s = 0 is the initial noise), at noise level tau_s
    c_k            the condition of forget concept k; w the CFG scale the trajectories are drawn with
    bank           (S, N, C, H, W): bank[s, n] = x_{tau_s} of trajectory n, concept k_n

A method builds a source with :func:`trajectory_source` and calls ``draw(unet, step)`` once per
iteration; what comes back (x_t, t, concept index per sample) is the same for both kinds, so the
objective does not know which one it got.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..models.base import FamilyAdapter
from .settings import setting

TRAJECTORIES = ("reference", "cached")
BANK_CHUNK = 64  # trajectories denoised together while filling the bank (bounds memory on real models)


# ---- the settings a method adds to offer the choice (as uam.py's switch) ------------------------------

def trajectory_choice():
    return setting("reference", "how x_t is drawn: reference = a fresh partial trajectory of the edited model every "
                   "iteration (the paper); cached = from a bank of trajectories redrawn every refresh_every iterations "
                   "(several times faster)", choices=TRAJECTORIES)


def bank_size_setting():
    return setting(16, "cached: trajectories in the bank, drawn together with the edited model", low=1, high=4096)


def refresh_every_setting():
    return setting(10, "cached: iterations between redraws of the bank with the current weights", low=1)


@dataclass
class Draw:
    """One iteration's training samples."""

    x_t: torch.Tensor  # (B, C, H, W) noisy latents, produced by the edited model
    t: torch.Tensor  # () one DDPM timestep for the batch (reference) or (B,) one per sample (cached)
    concept: torch.Tensor  # (B,) long: index of each sample's forget concept in the conditions


def twice(t: torch.Tensor) -> torch.Tensor:
    """``t`` for a batch concatenated with itself: a per-sample (B,) t is repeated, a shared () t kept."""
    return t.repeat(2) if t.ndim else t


class _Source:
    """What both kinds share: the adapter, the forget conditions, the DDIM steps and the CFG scale."""

    def __init__(self, adapter: FamilyAdapter, conds: torch.Tensor, *, ddim_steps: int, guidance: float, batch_size: int,
                 generator: torch.Generator):
        self.adapter, self.conds = adapter, conds  # conds: (K, T, D), one row per forget concept
        self.steps, self.guidance, self.batch_size, self.g = ddim_steps, guidance, batch_size, generator
        self.timesteps = adapter.make_sampler(ddim_steps).timesteps  # (S,) tau_0 .. tau_{S-1}
        self.unet_steps = 0  # DDIM steps run so far (each one UNet pass over its batch, twice with CFG)

    def _denoise(self, unet: torch.nn.Module, x_T: torch.Tensor, cond: torch.Tensor, stop: int, callback=None) -> torch.Tensor:
        """x after ``stop`` DDIM steps of ``unet`` from x_T (eval mode for the sampling, then back to train)."""
        was_training = unet.training
        unet.eval()
        try:
            x = self.adapter.denoise(x_T, cond, unet=unet, num_inference_steps=self.steps, guidance_scale=self.guidance,
                                     stop_step=stop, callback=callback)
        finally:
            unet.train(was_training)
        self.unet_steps += stop
        return x


class ReferenceTrajectories(_Source):
    """The paper's draw: a fresh partial trajectory of the edited model every iteration."""

    def draw(self, unet: torch.nn.Module, step: int) -> Draw:
        b = self.batch_size
        # 1. a concept, a stopping step s and initial noise (in this order: the run's random draws are ESD's own)
        k = int(torch.randint(len(self.conds), (1,), generator=self.g))
        stop = int(torch.randint(self.steps, (1,), generator=self.g))
        seeds = torch.randint(2**31 - 1, (b,), generator=self.g).tolist()
        # 2. x_{tau_s}: s DDIM steps of the model being edited, conditioned on c_k, no gradient
        x_t = self._denoise(unet, self.adapter.initial_noise(seeds), self.conds[k : k + 1].expand(b, -1, -1), stop)
        return Draw(x_t, self.timesteps[stop], torch.full((b,), k, dtype=torch.long))


class CachedTrajectories(_Source):
    """A bank of whole trajectories, redrawn with the edited model every ``refresh_every`` iterations."""

    def __init__(self, *args, bank_size: int, refresh_every: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.size, self.refresh_every = bank_size, refresh_every
        self.bank: torch.Tensor | None = None  # (S, N, C, H, W)
        self.bank_concept = torch.arange(bank_size) % len(self.conds)  # (N,) k_n: concepts in turn
        self.refreshes = 0

    @torch.no_grad()
    def refresh(self, unet: torch.nn.Module) -> None:
        """Redraw the bank: N trajectories of S - 1 DDIM steps with the current weights, x kept after every step."""
        seeds = torch.randint(2**31 - 1, (self.size,), generator=self.g).tolist()
        chunks = []
        for start in range(0, self.size, BANK_CHUNK):
            idx = slice(start, start + BANK_CHUNK)
            x_T = self.adapter.initial_noise(seeds[idx])  # (n, C, H, W)
            kept = [x_T]

            def keep(_i: int, _t: int, x: torch.Tensor, kept: list = kept) -> None:
                kept.append(x)

            # x_{tau_{S-1}} is the last latent a draw can ask for, so the final DDIM step is never run
            self._denoise(unet, x_T, self.conds[self.bank_concept[idx]], self.steps - 1, callback=keep)
            chunks.append(torch.stack(kept))  # (S, n, C, H, W)
        self.bank = torch.cat(chunks, dim=1)
        self.refreshes += 1

    def draw(self, unet: torch.nn.Module, step: int) -> Draw:
        if self.bank is None or step % self.refresh_every == 0:
            self.refresh(unet)
        # (trajectory n, step s) pairs uniformly over the bank: the same distribution over s as the reference
        n = torch.randint(self.size, (self.batch_size,), generator=self.g)
        s = torch.randint(self.steps, (self.batch_size,), generator=self.g)
        return Draw(self.bank[s, n], self.timesteps[s], self.bank_concept[n])


def trajectory_source(adapter: FamilyAdapter, conds: torch.Tensor, settings, generator: torch.Generator,
                      ) -> ReferenceTrajectories | CachedTrajectories:
    """The source ``settings.trajectory`` names, with the settings' ``ddim_steps``, ``start_guidance``,
    ``batch_size`` (and for ``cached``: ``bank_size``, ``refresh_every``)."""
    common = {"ddim_steps": settings.ddim_steps, "guidance": settings.start_guidance, "batch_size": settings.batch_size,
              "generator": generator}
    if settings.trajectory == "cached":
        return CachedTrajectories(adapter, conds, bank_size=settings.bank_size, refresh_every=settings.refresh_every, **common)
    return ReferenceTrajectories(adapter, conds, **common)


__all__: Sequence[str] = ["TRAJECTORIES", "CachedTrajectories", "Draw", "ReferenceTrajectories", "trajectory_source",
                          "trajectory_choice", "bank_size_setting", "refresh_every_setting", "twice"]
