"""SLD: Safe Latent Diffusion (safety guidance at sampling time; no weight changes).

Schramowski, Brack, Deiseroth, Kersting. "Safe Latent Diffusion: Mitigating Inappropriate Degeneration in
Diffusion Models", CVPR 2023. Nothing is trained: every sampling step runs the UNet on three conditions,
unconditional (u), the prompt (p) and the safety concept (S), and steers the guidance away from S where the
prompt's prediction is close to the concept's (element-wise; paper Eq. 3-8, diffusers'
StableDiffusionPipelineSafe):

    d   = eps_p - eps_S
    mu  = min(1, s_S |d|)  where d < lambda,  else 0                          (Eq. 6)
    g   = mu (eps_S - eps_u) + s_m v                                           (Eq. 4, 7)
    v  <- beta_m v + (1 - beta_m) g                                            (Eq. 8; accumulates from step 0)
    eps = eps_u + s_g ((eps_p - eps_u) - g)      from step index ``warmup_steps`` on, plain CFG before  (Eq. 3)

Active only when s_S > 1 and the guidance scale s_g > 1 (without classifier-free guidance there is nothing
to steer). The paper's presets (warmup, s_S, lambda, s_m, beta_m) are in :data:`PRESETS`; the defaults below are
MEDIUM, the pipeline's own defaults. The safety concept S is one text: by default the forgotten concepts
joined by ", " (the paper's default S is a list of 20 inappropriate-content terms); on a class-label model it
is the forgotten label.

This is a guard, not unlearning: the weights are untouched, so the returned Edit is empty and carries a
*sampling rule* (``Edit.sampling``) that the family adapter's sampling loop follows. Anyone who samples the
weights without the rule (a plain pipeline, an exported model folder) gets the original model; exports say so.
Where the prompt *is* the safety concept (a class label erased on a class-label model, or a text prompt equal to
S), eps_p = eps_S, so d = 0 and mu = min(1, s_S |0|) = 0: SLD leaves that sample alone. It steers prompts near
the concept, not the concept's own prompt. The noise-difference scale differs between models, so s_S and lambda may need rescaling (twin-tuned values in
the registry). The presets' warm-up counts steps of a 50-step sampler.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from ..edit import Edit
from ..errors import InputError
from ..models.base import FamilyAdapter
from .base import RunContext, UnlearnTask, setting

# SafetyConfig presets of the paper / diffusers: warmup_steps, guidance_scale (s_S), threshold (lambda),
# momentum_scale (s_m), momentum_beta (beta_m)
PRESET_KEYS = ("warmup_steps", "guidance_scale", "threshold", "momentum_scale", "momentum_beta")
PRESETS = {
    "weak": (15, 20.0, 0.0, 0.0, 0.0),
    "medium": (10, 1000.0, 0.01, 0.3, 0.4),
    "strong": (7, 2000.0, 0.025, 0.5, 0.7),
    "max": (0, 5000.0, 1.0, 0.5, 0.7),
}


@dataclass
class SLDSettings:
    warmup_steps: int = setting(10, "steps of plain guidance before safety guidance is applied (presets: 15 / 10 / 7 / 0)", low=0, high=1000)
    guidance_scale: float = setting(1000.0, "s_S: safety guidance scale; <= 1 switches SLD off (presets: 20 / 1000 / 2000 / 5000)", low=0.0)
    threshold: float = setting(0.01, "lambda: where eps_p - eps_S is below it, the element is steered (presets: 0 / 0.01 / 0.025 / 1)")
    momentum_scale: float = setting(0.3, "s_m: weight of the safety momentum (presets: 0 / 0.3 / 0.5 / 0.5)", low=0.0)
    momentum_beta: float = setting(0.4, "beta_m: how much momentum is kept per step (presets: 0 / 0.4 / 0.7 / 0.7)", low=0.0, high=1.0)
    safety_concept: str = setting("", "the concept to steer away from; empty: the forgotten concepts, joined by ', '")


def sld_guidance(eps_u: torch.Tensor, eps_p: torch.Tensor, eps_s: torch.Tensor, v: torch.Tensor | None,
                 s: SLDSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, v_next): the safety guidance term and the updated momentum (Eq. 4, 6, 7, 8)."""
    diff = eps_p - eps_s
    mu = torch.where(diff >= s.threshold, torch.zeros_like(diff), torch.clamp(diff.abs() * s.guidance_scale, max=1.0))  # Eq. 6
    v = torch.zeros_like(diff) if v is None else v
    g = mu * (eps_s - eps_u) + s.momentum_scale * v  # Eq. 4, 7
    return g, s.momentum_beta * v + (1 - s.momentum_beta) * g  # Eq. 8


class SafeLatentGuidance:
    """The sampling rule: ``rule(step_index, x_t, t, guidance_scale) -> eps`` for one sampling call (the momentum
    starts at zero for every call)."""

    def __init__(self, adapter: FamilyAdapter, unet: torch.nn.Module, cond: torch.Tensor, settings: SLDSettings):
        self.adapter, self.unet, self.cond, self.s = adapter, unet, cond, settings
        self.safety = encode_safety_concept(adapter, settings.safety_concept)  # (1, T, D)
        self.v: torch.Tensor | None = None

    def __call__(self, step: int, x_t: torch.Tensor, t: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        a, s = self.adapter, self.s
        if not (s.guidance_scale > 1 and guidance_scale > 1):
            return a.guided_eps(self.unet, x_t, t, self.cond, guidance_scale)
        b = x_t.shape[0]
        conds = torch.cat([a.null_condition(b), self.cond, self.safety.expand(b, -1, -1)])
        eps_u, eps_p, eps_s = a.eps(self.unet, torch.cat([x_t, x_t, x_t]), t, conds).float().chunk(3)  # three passes in one
        g, self.v = sld_guidance(eps_u, eps_p, eps_s, self.v, s)
        guide = eps_p - eps_u
        if step >= s.warmup_steps:  # Eq. 3 after the warm-up
            guide = guide - g
        return (eps_u + guidance_scale * guide).to(x_t.dtype)


def encode_safety_concept(adapter: FamilyAdapter, text: str) -> torch.Tensor:
    """S as a condition (1, T, D): a text model reads the joined concepts, a class-label model one label."""
    return adapter.encode([adapter.validate_concept(text)])


def sampling_rule(adapter: FamilyAdapter, unet: torch.nn.Module, cond: torch.Tensor, spec: dict) -> SafeLatentGuidance:
    """Build the rule an Edit's ``sampling`` dict describes, for one sampling call."""
    names = {f.name for f in dataclasses.fields(SLDSettings)}
    return SafeLatentGuidance(adapter, unet, cond, SLDSettings(**{k: v for k, v in spec.items() if k in names}))


def unlearn(adapter: FamilyAdapter, task: UnlearnTask, settings: SLDSettings, ctx: RunContext) -> Edit:
    started = time.perf_counter()
    text = settings.safety_concept or ", ".join(task.forget)
    if adapter.family != "stable-diffusion" and len(task.forget) > 1 and not settings.safety_concept:
        raise InputError("SLD steers away from one safety concept; on a class-label model that is one label. "
                         "Forget one class at a time.")
    encode_safety_concept(adapter, text)  # a clear error now (too long, unknown label), not at sampling time
    rule = {"method": "sld", **dataclasses.asdict(settings), "safety_concept": text,
            "note": "a sampling-time pipeline setting, not weights: the model's weights are unchanged"}
    ctx.report(1, 1, 0.0)
    return Edit(params={}, method="sld", settings=dataclasses.asdict(settings), loss_log=[{"step": 1, "loss": 0.0}],
                timings={"unlearn_s": time.perf_counter() - started}, sampling=rule,
                base={"source": adapter.source, "family": adapter.family})
