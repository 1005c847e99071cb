"""Perspective-coherent accelerated unlearning for Zero123 ("skip3d"; card: methods/sfd_skip3d.md).

Wang, Ye, Wang, "Machine Unlearning in 3D Generation: A Perspective-Coherent Acceleration
Framework" (NeurIPS 2025). Losses follow Score Forgetting Distillation (SFD; Chen et al., ICLR 2025),
whose names and hyperparameters the paper uses.

Task: when conditioned on a **forget** view (e.g. a pyramid), the model should synthesise the views of
an **override** object (e.g. a cube) at the same camera pose, while views of **remain** objects stay as
they were. ``target = "background"`` makes the override a blank white image (erasure) instead.

Three networks. S_t: the frozen original UNet ("true score"); S_f: the "fake score", initialised from
S_t and trained to denoise what the generator currently makes; G: the generator, the UNet being
unlearned, initialised from S_t. For a condition c (input view, relative pose), x_g is G's clean view,
x_t = noised x_g with t ~ U[t_min, t_max), D_S(x_t; c) the x0-prediction of network S.

- fake-score loss (remain and forget alike), G fixed: || eps_Sf(x_t; c) - eps ||^2;
  L_fake = lam * remain + mu * forget.
- generator loss, S_f fixed: y_real = D_St(x_t; c*), y_fake = D_Sf(x_t; c), w = stopgrad(mean |x_g - y_real|)
  clipped below at 1e-5, L = sum((y_real - y_fake) * (y_fake - x_g)) / w; gradients reach G through x_g only.
  c* = c on remain inputs; on forget inputs c* is the **override** view at the same pose (the teacher
  imagines the override's view) while y_fake keeps the forget condition. L_gen = lam * remain + mu * forget.
- Adam (beta1 0, beta2 0.999, eps 1e-8), lr 4e-6 (S_f) and 6e-6 (G); gradients with NaN/inf are
  zeroed and clipped to norm 1 before each step.

How G produces x_g (the paper is silent; our choice, setting ``generator``): G runs the 32-step DDIM
sampler from the fixed initial noise without gradients (the trajectories Algorithm 1 caches); x_g is
G's x0-prediction, computed with gradients, from the latent the last step starts from ("last-step",
default: truncated backpropagation through one UNet call) or from the latent at a random step of that
view's own trajectory ("trajectory", so every noise level is trained). Measured on the shapes-3d twin
(seed 0, 4 epochs, lr_fake 1e-3): "last-step" at lr_gen 2e-4 moved the forget views towards the
override (SSIM to the override's renders 0.316 -> 0.368) at a cost of 0.02-0.03 SSIM on remain views;
"trajectory" at lr_gen 1e-4 / 3e-4 damaged the remain views (0.93 -> 0.76 / 0.58) without re-targeting.
Either keeps the multi-step trajectory whose cost the skipping reduces, at the memory of one UNet call.
The trajectories are regenerated once per epoch (with the current G); within an epoch the
generator and fake-score steps alternate over minibatches of views.

Dynamic timestep skipping (Algorithm 1). Training views are the input pose's azimuth deltas on a grid
(``azimuth_step``, 10 degrees). N_ref reference azimuths, evenly spaced from 0, run the full trajectory
from one shared initial noise and cache the latent after every step. Every other view starts part-way:
the two references whose conditioning tokens are most cosine-similar to the view's are blended at the
jump step with weights proportional to their similarities, and only the remaining steps are run. The
jump is ``skip`` steps, or with ``dynamic`` skipping ``skip_near`` steps within ``tau`` degrees of a
reference and ``skip_far`` steps otherwise. ``skipping = False`` runs every view's full trajectory: the
same method without the acceleration (the baseline the speedup is measured against).

Guidance: trajectories use classifier-free guidance (scale ``guidance``, the unconditional branch
zeroes token and concat latent, as Zero123 does); S_t and S_f are evaluated conditionally (our choice).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMScheduler

from ..errors import CancelledError, DivergedError, InputError
from ..models.zero123 import Condition, Zero123, pose_vector, wrap_degrees
from .base import (
    Memory,
    RunContext,
    checkpointing_setting,
    lora_setting,
    lora_weights,
    mixed_precision_setting,
    setting,
    trainable_module,
)


@dataclass
class Skip3DSettings:
    lam: float = setting(1.0, "lambda: weight of the remain terms (paper 1.0)", low=0.0)
    mu: float = setting(0.01, "mu: weight of the forget terms (paper 0.01)", low=0.0)
    lr_fake: float = setting(4e-6, "Adam learning rate of the fake score S_f (paper 4e-6)", low=0.0, low_inclusive=False, high=1.0)
    lr_gen: float = setting(6e-6, "Adam learning rate of the generator G (paper 6e-6)", low=0.0, low_inclusive=False, high=1.0)
    beta1: float = setting(0.0, "Adam beta1 (paper 0)", low=0.0, high=0.999)
    epochs: int = setting(4, "epochs: trajectories regenerated with the current G, then one pass over the views", low=1, high=200)
    batch_size: int = setting(8, "views per generator / fake-score step (paper 8 on an A100, 2 on smaller GPUs)", low=1, high=256)
    steps: int = setting(32, "DDIM steps of a trajectory (paper 32)", low=2, high=1000)
    guidance: float = setting(3.0, "classifier-free guidance scale of the trajectories (Zero123 default 3.0)", low=1.0, high=30.0)
    skipping: bool = setting(True, "dynamic timestep skipping on (off: every view runs its full trajectory)")
    n_ref: int = setting(4, "number of reference azimuths N_ref (paper: 3, 4 or 8)", low=1, high=36)
    skip: int = setting(12, "steps skipped by non-reference views (paper tables: 8, 12 or 16 of 32)", low=0)
    dynamic: bool = setting(False, "near/far rule: skip_near within tau of a reference, skip_far otherwise (off: always `skip`)")
    skip_near: int = setting(16, "steps skipped within tau of a reference (dynamic rule)", low=0)
    skip_far: int = setting(8, "steps skipped farther than tau from every reference (dynamic rule)", low=0)
    tau: float = setting(20.0, "tau: degrees from a reference that count as near (paper 20)", low=0.0, high=180.0)
    azimuth_step: float = setting(10.0, "training views: azimuth deltas every this many degrees (paper 10)", low=1.0, high=180.0)
    t_min: int = setting(20, "lowest noise timestep of the distillation losses (SFD: 20)", low=0, high=999)
    t_max: int = setting(980, "highest noise timestep (exclusive) of the distillation losses (SFD: 980)", low=1, high=1000)
    grad_clip: float = setting(1.0, "gradient-norm clip for both networks", low=0.0, low_inclusive=False)
    target: str = setting("override", "forget views become the override object's ('override') or a blank background ('background')",
                          choices=("override", "background"))
    generator: str = setting("last-step", "how G makes x_g: its x0-prediction, with gradients, from a random step of its own "
                             "cached DDIM trajectory ('trajectory') or from the last step only ('last-step', default)",
                             choices=("trajectory", "last-step"))
    mixed_precision: str = mixed_precision_setting()
    gradient_checkpointing: bool = checkpointing_setting()
    lora_rank: int = lora_setting()

    def check(self) -> None:
        if self.mixed_precision == "fp16":
            raise InputError("skip3d has no loss scaling for fp16 autocast: use mixed_precision=bf16 (or no).")
        for name in ("skip", "skip_near", "skip_far") if self.dynamic else ("skip",):
            if getattr(self, name) >= self.steps:
                raise InputError(f"setting '{name}' ({getattr(self, name)}) must be below the number of steps ({self.steps}): "
                                 "a view cannot skip its whole trajectory.")
        if self.t_min >= self.t_max:
            raise InputError(f"setting 't_min' ({self.t_min}) must be below 't_max' ({self.t_max}).")
        n_views = len(training_azimuths(self.azimuth_step))
        if self.n_ref > n_views:
            raise InputError(f"n_ref ({self.n_ref}) is more than the number of training views ({n_views} azimuths every "
                             f"{self.azimuth_step:g} degrees); lower n_ref or azimuth_step.")


# Values tuned on the shapes-3d twin (the paper's are for a 1 B-parameter model at 256 px).
# Measured there (seed 0): lr_gen 5e-4 (4 epochs, 30-degree grid) wrecked every view; 3e-5 / 1e-4 barely moved the forget views.
TUNED = {"shapes-3d": {"lr_fake": 1e-3, "lr_gen": 2e-4, "mu": 1.0, "epochs": 4, "azimuth_step": 45.0}}


@dataclass
class ViewTask:
    """Inputs of one run: images (1, 3, H, W) in [0, 1] at the same input pose."""

    forget: torch.Tensor
    override: torch.Tensor  # the blank image when target == "background"
    remain: list[torch.Tensor]
    input_polar: float = 75.0
    seed: int = 0


def training_azimuths(step: float) -> list[float]:
    return [float(a) for a in np.arange(0.0, 360.0 - 1e-9, step)]


def reference_azimuths(n_ref: int) -> list[float]:
    return [360.0 * i / n_ref for i in range(n_ref)]


def angular_distance(a: float, b: float) -> float:
    return abs(float(wrap_degrees(a - b)))


# ---- trajectories with and without skipping ---------------------------------------------------------
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


def _scheduler(model: Zero123, steps: int) -> DDIMScheduler:
    sched = DDIMScheduler.from_config(model.scheduler.config)
    sched.set_timesteps(steps)
    return sched


@torch.no_grad()
def run_trajectories(model: Zero123, unet, cond: Condition, *, steps: int, guidance: float, noise: torch.Tensor,
                     plan: SkipPlan | None, stop_before_last: bool = False, ctx: RunContext | None = None,
                     history: bool = False) -> tuple[torch.Tensor, dict]:
    """Latents of every view (rows of ``cond``): after the last DDIM step, or (``stop_before_last``) the latent
    the last step starts from. Without a plan every view runs all ``steps``; with one, references run all
    steps and the others start from a blend of two references' latents at their jump step (the references'
    trajectory is the cache: a view joining at step j reads the references' latents after j steps).
    Returns (latents, {"unet_evals": number of view-steps computed}); with ``history`` the info also holds
    "latents" (end, n, C, h, w), the latent each step started from, and "valid" (end, n), False for the steps a
    view skipped. ``noise`` (1, C, h, w) is shared."""
    sched = _scheduler(model, steps)
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
    hist = torch.zeros((end, n, *noise.shape[1:]), dtype=noise.dtype, device=noise.device) if history else None
    valid = torch.zeros((end, n), dtype=torch.bool)
    for k in range(end):
        if k in joins:
            if k == 0:
                new = noise.expand(len(joins[0]), -1, -1, -1).clone()
            else:
                pos = {v: i for i, v in enumerate(active)}
                new = torch.stack([plan.blend[v][2] * x[pos[plan.references[plan.blend[v][0]]]]
                                   + plan.blend[v][3] * x[pos[plan.references[plan.blend[v][1]]]] for v in joins[k]])
            active += joins[k]
            x = torch.cat([x, new])
        if ctx is not None and ctx.cancel.is_set():
            raise CancelledError("the run was cancelled; the base model is unchanged.")
        if hist is not None:
            hist[k, active] = x
            valid[k, active] = True
        x = sched.step(model.eps(unet, x, timesteps[k], cond.index(active), guidance), timesteps[k], x).prev_sample
        evals += len(x)
    late = [v for j, vs in joins.items() if j >= end for v in vs]  # jumps past the end: the blend itself
    if late:
        pos = {v: i for i, v in enumerate(active)}
        x = torch.cat([x, torch.stack([plan.blend[v][2] * x[pos[plan.references[plan.blend[v][0]]]]
                                       + plan.blend[v][3] * x[pos[plan.references[plan.blend[v][1]]]] for v in late])])
        active += late
    out[active] = x
    if hist is not None:
        return out, {"unet_evals": evals, "latents": hist, "valid": valid}
    return out, {"unet_evals": evals}


def x0_prediction(model: Zero123, unet, x: torch.Tensor, t, cond: Condition) -> torch.Tensor:
    """D(x_t; c) = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), conditional (no guidance)."""
    a = model.scheduler.alphas_cumprod.to(x.device)[torch.as_tensor(t, device=x.device).long()].float()
    a = a.reshape(-1, *[1] * (x.dim() - 1)) if a.dim() else a
    eps = unet(torch.cat([x, cond.latent], 1), t, encoder_hidden_states=cond.token).sample
    return (x - (1 - a).sqrt() * eps) / a.sqrt()


# ---- the unlearning run ----------------------------------------------------------------------------
@dataclass
class Skip3DResult:
    unet: torch.nn.Module  # the unlearned generator G (a copy; the base model is untouched)
    log: list[dict]
    timings: dict
    settings: dict


def _sanitise_and_clip(params, max_norm: float) -> float:
    params = list(params)
    for p in params:
        if p.grad is not None:
            torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def unlearn_views(model: Zero123, task: ViewTask, settings: Skip3DSettings, ctx: RunContext | None = None) -> Skip3DResult:
    """Run the method; returns the unlearned UNet (a float32 copy) with the loss log and timings."""
    ctx = ctx or RunContext()
    s = settings
    started = time.perf_counter()
    device = model.device
    g = torch.Generator().manual_seed(task.seed)
    teacher = model.unet
    memory = Memory.of(s)  # G and S_f: float32 copies, or LoRA on the teacher's (shared) weights with lora_rank
    everything = [n for n, _ in teacher.named_parameters()]
    gen, gen_names = trainable_module(teacher, everything, memory)
    fake, fake_names = trainable_module(teacher, everything, memory)
    gen_params, fake_params = ([p for n, p in net.named_parameters() if n in trained]
                               for net, trained in ((gen, set(gen_names)), (fake, set(fake_names))))
    opt_g = torch.optim.Adam(gen_params, lr=s.lr_gen, betas=(s.beta1, 0.999), eps=1e-8)
    opt_f = torch.optim.Adam(fake_params, lr=s.lr_fake, betas=(s.beta1, 0.999), eps=1e-8)

    azimuths = training_azimuths(s.azimuth_step)
    inputs = [task.forget, *task.remain]
    embeds, latents = model.encode_images(torch.cat([*inputs, task.override]))
    pose = pose_vector(0.0, azimuths)
    conds = [model.condition(embeds[i : i + 1], latents[i : i + 1], pose) for i in range(len(inputs))]
    override = model.condition(embeds[-1:], latents[-1:], pose)
    # rows: input-major (forget views first), the same azimuth order for every input
    cond_all = Condition.cat(conds)
    teacher_cond = Condition.cat([override, *conds[1:]])
    is_forget = torch.zeros(len(cond_all), dtype=torch.bool)
    is_forget[: len(azimuths)] = True
    weight = torch.where(is_forget, torch.tensor(s.mu), torch.tensor(s.lam)).to(device)
    plans = [plan_skipping(azimuths, c.token, n_ref=s.n_ref, skip=s.skip, dynamic=s.dynamic, skip_near=s.skip_near,
                           skip_far=s.skip_far, tau=s.tau) for c in conds] if s.skipping else None
    noise = torch.randn((1, *model.latent_shape), generator=g).to(device)
    sched = _scheduler(model, s.steps)
    t_last = sched.timesteps[-1]
    alphas = model.scheduler.alphas_cumprod.to(device).float()

    log: list[dict] = []
    traj_s = 0.0
    evals = 0
    n_batches = math.ceil(len(cond_all) / s.batch_size)
    total = s.epochs * n_batches
    step = 0
    with memory.autocast_context(device):  # no-op unless mixed_precision
        for epoch in range(s.epochs):
            t0 = time.perf_counter()
            gen.eval()
            parts, hists, valids = [], [], []
            for i, c in enumerate(conds):
                lat, info = run_trajectories(model, gen, c, steps=s.steps, guidance=s.guidance, noise=noise,
                                             plan=plans[i] if plans else None, stop_before_last=True, ctx=ctx,
                                             history=s.generator == "trajectory")
                parts.append(lat)
                if s.generator == "trajectory":
                    hists.append(info["latents"])
                    valids.append(info["valid"])
                evals += info["unet_evals"]
            x_before_last = torch.cat(parts)
            if hists:
                hist, valid = torch.cat(hists, 1), torch.cat(valids, 1)  # (steps - 1, views, ...), (steps - 1, views)
            traj_s += time.perf_counter() - t0
            gen.train()
            perm = torch.randperm(len(cond_all), generator=g)
            for b in range(n_batches):
                idx = perm[b * s.batch_size : (b + 1) * s.batch_size]
                c, ct, w = cond_all.index(idx), teacher_cond.index(idx), weight[idx]
                if hists:  # a random step each view actually computed (skipped views start at their jump)
                    ks = torch.stack([torch.multinomial(valid[:, v].float(), 1, generator=g)[0] for v in idx.tolist()])
                    x_start, t_vec = hist[ks, idx], sched.timesteps[ks].to(device)
                else:
                    x_start, t_vec = x_before_last[idx], torch.full((len(idx),), int(t_last), device=device)
                x_g = x0_prediction(model, gen, x_start, t_vec, c)  # with gradients into G
                t = torch.randint(s.t_min, s.t_max, (len(idx),), generator=g).to(device)
                eps = torch.randn(x_g.shape, generator=g).to(device)
                a = alphas[t].reshape(-1, 1, 1, 1)
                # (a) fake score on G's current samples, G fixed
                x_t = a.sqrt() * x_g.detach() + (1 - a).sqrt() * eps
                pred = fake(torch.cat([x_t, c.latent], 1), t, encoder_hidden_states=c.token).sample
                loss_f = ((pred - eps) ** 2).flatten(1).mean(1).mul(w).sum() / len(idx)
                opt_f.zero_grad(set_to_none=True)
                loss_f.backward()
                _sanitise_and_clip(fake_params, s.grad_clip)
                opt_f.step()
                # (b) generator, S_f fixed; gradients reach G through x_g only
                x_t = a.sqrt() * x_g + (1 - a).sqrt() * eps
                with torch.no_grad():
                    y_real = x0_prediction(model, teacher, x_t.detach().to(teacher.dtype), t, Condition(ct.token.to(teacher.dtype), ct.latent.to(teacher.dtype))).float()
                    y_fake = x0_prediction(model, fake, x_t.detach(), t, c)
                    scale = (x_g.detach() - y_real).abs().flatten(1).mean(1).clamp_min(1e-5)
                per = ((y_real - y_fake) * (y_fake - x_g)).flatten(1).sum(1) / scale
                loss_g = (per * w).sum() / len(idx)
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                gnorm = _sanitise_and_clip(gen_params, s.grad_clip)
                opt_g.step()
                step += 1
                if not (math.isfinite(loss_f.item()) and math.isfinite(loss_g.item())):
                    raise DivergedError(f"skip3d: the loss became non-finite at step {step}; lower lr_gen / lr_fake and run again. "
                                        "The base model is unchanged.")
                forget_gap = float(((y_real - x_g.detach()).abs().flatten(1).mean(1)[is_forget[idx]]).mean()) if is_forget[idx].any() else float("nan")
                entry = {"step": step, "epoch": epoch + 1, "loss": float(loss_g.item()), "fake_loss": float(loss_f.item()),
                         "grad_norm": gnorm, "forget_gap": forget_gap}
                log.append(entry)
                ctx.report(step, total, entry["loss"], fake_loss=entry["fake_loss"])
    if memory.lora_rank:  # a plain UNet of the teacher's dtype with W_0 + B A merged
        from ..edit import Edit

        gen = Edit(params=lora_weights(gen, teacher)).apply_to_copy(teacher)
    gen.eval().requires_grad_(False)
    for p in gen.parameters():
        if not torch.isfinite(p).all():
            raise DivergedError("skip3d produced non-finite weights; lower the learning rates. The base model is unchanged.")
    timings = {"unlearn_s": time.perf_counter() - started, "trajectory_s": traj_s, "unet_evals": evals,
               "views_per_epoch": len(cond_all)}
    return Skip3DResult(unet=gen, log=log, timings=timings, settings=dataclasses.asdict(s))


def sample_views(model: Zero123, unet, image01: torch.Tensor, azimuths: list[float], *, delta_polar: float = 0.0, steps: int = 32,
                 guidance: float = 3.0, seed: int = 0, skip: int = 0, n_ref: int = 4, dynamic: bool = False, skip_near: int = 16,
                 skip_far: int = 8, tau: float = 20.0) -> tuple[torch.Tensor, dict]:
    """Views of one input at the given azimuth deltas (images in [0, 1]), optionally with skipping
    (skip = 0 and not dynamic: every view runs all steps). One shared initial noise per ``seed``."""
    embeds, latents = model.encode_images(image01)
    cond = model.condition(embeds, latents, pose_vector(delta_polar, azimuths))
    noise = torch.randn((1, *model.latent_shape), generator=torch.Generator().manual_seed(seed)).to(model.device, model.dtype)
    plan = None
    if skip > 0 or dynamic:
        plan = plan_skipping(azimuths, cond.token, n_ref=min(n_ref, len(azimuths)), skip=skip, dynamic=dynamic,
                             skip_near=skip_near, skip_far=skip_far, tau=tau)
    t0 = time.perf_counter()
    lat, info = run_trajectories(model, unet, Condition(cond.token.to(model.dtype), cond.latent.to(model.dtype)), steps=steps,
                                 guidance=guidance, noise=noise, plan=plan)
    images = model.decode(lat)
    info["seconds"] = time.perf_counter() - t0
    return images, info
