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
The skipping sampler itself (plans, trajectories with join points) is the family's: it lives in
``unlearning.models.view_sampling``; this file decides which trajectories to run and what to learn from them.

In the registry's terms: the forget concept is the forget object (one per run), the anchor is the override
and the preserved concepts are the remain objects (``unlearning.models.novel_view``: object names or image
files). :func:`unlearn` returns an :class:`~unlearning.edit.Edit` of the generator's changed weights; with
``measure_speedup`` the same run without skipping (same seed) is timed too and its numbers join the Edit's
timings.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from ..edit import Edit
from ..errors import CancelledError, DivergedError, InputError
from ..models.novel_view import BLANK, NovelViewAdapter
from ..models.view_sampling import azimuth_grid, plan_skipping, run_trajectories
from ..models.zero123 import Condition, pose_vector
from .base import (
    Memory,
    RunContext,
    UnlearnTask,
    checkpointing_setting,
    lora_setting,
    lora_weights,
    mixed_precision_setting,
    setting,
    trainable_module,
)

PAPER_SPEEDUP = {12: 1.22, 16: 1.32}  # the paper's unlearning wall-clock speedup at 4 references, by skip (of 32)


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
    measure_speedup: bool = setting(False, "also run the same method without skipping on the same seed and report the measured "
                                    "speedup (about doubles the time; the Edit is the skipping run's)",
                                    label="also run without skipping (measures the speedup)")
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
    mixed_precision: str = mixed_precision_setting(fp16=False)  # G's and S_f's losses have no loss scaling
    gradient_checkpointing: bool = checkpointing_setting()
    lora_rank: int = lora_setting()

    def check(self) -> None:
        for name in ("skip", "skip_near", "skip_far") if self.dynamic else ("skip",):
            if getattr(self, name) >= self.steps:
                raise InputError(f"setting '{name}' ({getattr(self, name)}) must be below the number of steps ({self.steps}): "
                                 "a view cannot skip its whole trajectory.")
        if self.t_min >= self.t_max:
            raise InputError(f"setting 't_min' ({self.t_min}) must be below 't_max' ({self.t_max}).")
        n_views = len(azimuth_grid(self.azimuth_step))
        if self.n_ref > n_views:
            raise InputError(f"n_ref ({self.n_ref}) is more than the number of training views ({n_views} azimuths every "
                             f"{self.azimuth_step:g} degrees); lower n_ref or azimuth_step.")


@dataclass
class ViewTask:
    """Inputs of one run: images (1, 3, H, W) in [0, 1] at the same input pose."""

    forget: torch.Tensor
    override: torch.Tensor  # the blank image when target == "background"
    remain: list[torch.Tensor]
    input_polar: float = 75.0
    seed: int = 0


def check_task(task: UnlearnTask, settings: Skip3DSettings) -> None:
    """One forget object per run, and an override unless the forget views are erased to the background."""
    if len(task.forget) != 1:
        raise InputError(f"skip3d forgets one object per run; got {len(task.forget)} ({', '.join(task.forget)}).")
    if settings.target == "override" and task.anchor_of(task.forget[0]) is None:
        raise InputError("skip3d needs an override object (the anchor) drawn instead of the forgotten one, e.g. 'blue cube'; "
                         "or set target=background to erase the forget views to a blank background.")
    if task.anchor_of(task.forget[0]) in task.retain:
        raise InputError("the override is also a remain object; pick another override or remove it from the remain set.")


def view_task(adapter: NovelViewAdapter, task: UnlearnTask, settings: Skip3DSettings) -> ViewTask:
    """The input views of a task: forget, override (blank for target 'background'), remain, at the task's polar."""
    polar = adapter.check_polar(task.input_polar)
    override = BLANK if settings.target == "background" else task.anchor_of(task.forget[0])
    forget, over = (adapter.input_view(c, polar)[0] for c in (task.forget[0], override))
    if torch.equal(forget, over):
        raise InputError("the override is the same as the forget object: pick a different override (e.g. a cube for a pyramid).")
    remain = [adapter.input_view(c, polar)[0] for c in task.retain]
    if not remain:
        raise InputError("the remain set is empty: pick at least one object whose views must stay as they were.")
    if any(torch.equal(forget, r) for r in remain):
        raise InputError("the forget object is also in the remain set; remove it from one of them.")
    return ViewTask(forget, over, remain, input_polar=polar, seed=task.seed)


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


def unlearn_views(adapter: NovelViewAdapter, task: ViewTask, settings: Skip3DSettings, ctx: RunContext | None = None) -> Skip3DResult:
    """Run the method on prepared input views; returns the unlearned UNet (a float32 copy) with the loss log and timings."""
    ctx = ctx or RunContext()
    s = settings
    started = time.perf_counter()
    device = adapter.device
    g = torch.Generator().manual_seed(task.seed)
    teacher = adapter.unet
    memory = Memory.of(s)  # G and S_f: float32 copies, or LoRA on the teacher's (shared) weights with lora_rank
    everything = [n for n, _ in teacher.named_parameters()]
    gen, gen_names = trainable_module(teacher, everything, memory)
    fake, fake_names = trainable_module(teacher, everything, memory)
    gen_params, fake_params = ([p for n, p in net.named_parameters() if n in trained]
                               for net, trained in ((gen, set(gen_names)), (fake, set(fake_names))))
    opt_g = torch.optim.Adam(gen_params, lr=s.lr_gen, betas=(s.beta1, 0.999), eps=1e-8)
    opt_f = torch.optim.Adam(fake_params, lr=s.lr_fake, betas=(s.beta1, 0.999), eps=1e-8)

    azimuths = azimuth_grid(s.azimuth_step)
    inputs = [task.forget, *task.remain]
    embeds, latents = adapter.encode_images(torch.cat([*inputs, task.override]))
    pose = pose_vector(0.0, azimuths)
    conds = [adapter.condition(embeds[i : i + 1], latents[i : i + 1], pose) for i in range(len(inputs))]
    override = adapter.condition(embeds[-1:], latents[-1:], pose)
    # rows: input-major (forget views first), the same azimuth order for every input
    cond_all = Condition.cat(conds)
    teacher_cond = Condition.cat([override, *conds[1:]])
    is_forget = torch.zeros(len(cond_all), dtype=torch.bool)
    is_forget[: len(azimuths)] = True
    weight = torch.where(is_forget, torch.tensor(s.mu), torch.tensor(s.lam)).to(device)
    plans = [plan_skipping(azimuths, c.token, n_ref=s.n_ref, skip=s.skip, dynamic=s.dynamic, skip_near=s.skip_near,
                           skip_far=s.skip_far, tau=s.tau) for c in conds] if s.skipping else None
    noise = torch.randn((1, *adapter.latent_shape), generator=g).to(device)
    sched = adapter.ddim_scheduler(s.steps)
    t_last = sched.timesteps[-1]
    alphas = adapter.pipe.scheduler.alphas_cumprod.to(device).float()

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
                # the "trajectory" generator keeps the latent every step starts from (skipped steps stay invalid)
                hist = torch.zeros((s.steps - 1, len(c), *noise.shape[1:]), dtype=noise.dtype, device=noise.device) \
                    if s.generator == "trajectory" else None
                valid = torch.zeros((s.steps - 1, len(c)), dtype=torch.bool)

                def on_step(k: int, active: list[int], x: torch.Tensor, hist=hist, valid=valid) -> None:
                    if ctx.cancel.is_set():
                        raise CancelledError("the run was cancelled; the base model is unchanged.")
                    if hist is not None:
                        hist[k, active] = x
                        valid[k, active] = True

                lat, info = run_trajectories(adapter, gen, c, steps=s.steps, guidance=s.guidance, noise=noise,
                                             plan=plans[i] if plans else None, stop_before_last=True, on_step=on_step)
                parts.append(lat)
                if hist is not None:
                    hists.append(hist)
                    valids.append(valid)
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
                x_g = adapter.x0_prediction(gen, x_start, t_vec, c)  # with gradients into G
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
                    y_real = adapter.x0_prediction(teacher, x_t.detach().to(teacher.dtype), t,
                                                   Condition(ct.token.to(teacher.dtype), ct.latent.to(teacher.dtype))).float()
                    y_fake = adapter.x0_prediction(fake, x_t.detach(), t, c)
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
                ctx.report(step, total, entry["loss"], fake_loss=entry["fake_loss"], forget_gap=forget_gap)
    if memory.lora_rank:  # a plain UNet of the teacher's dtype with W_0 + B A merged
        gen = Edit(params=lora_weights(gen, teacher)).apply_to_copy(teacher)
    gen.eval().requires_grad_(False)
    for p in gen.parameters():
        if not torch.isfinite(p).all():
            raise DivergedError("skip3d produced non-finite weights; lower the learning rates. The base model is unchanged.")
    timings = {"unlearn_s": time.perf_counter() - started, "trajectory_s": traj_s, "unet_evals": evals,
               "views_per_epoch": len(cond_all)}
    return Skip3DResult(unet=gen, log=log, timings=timings, settings=dataclasses.asdict(s))


def unlearn(adapter: NovelViewAdapter, task: UnlearnTask, settings: Skip3DSettings, ctx: RunContext | None = None) -> Edit:
    """The registry's entry: skip3d on the task's input views; an Edit of the generator's changed weights.

    Timings: ``unlearn_s`` / ``trajectory_s`` / ``unet_evals`` of the run (with skipping when on); with
    ``measure_speedup``, the same for the run without skipping (``plain_*``, same seed, same process) and
    ``speedup`` = plain / skipping wall-clock beside the paper's at this skip."""
    ctx = ctx or RunContext()
    check_task(task, settings)
    views = view_task(adapter, task, settings)
    result = unlearn_views(adapter, views, settings, ctx)
    timings = dict(result.timings)
    if settings.measure_speedup and settings.skipping:
        plain = unlearn_views(adapter, views, dataclasses.replace(settings, skipping=False), ctx).timings
        timings.update({f"plain_{k}": v for k, v in plain.items() if k != "views_per_epoch"},
                       speedup=plain["unlearn_s"] / timings["unlearn_s"],
                       paper_speedup=PAPER_SPEEDUP.get(settings.skip) if settings.n_ref == 4 and not settings.dynamic else None)
    return Edit.from_trained(adapter.unet, result.unet, [n for n, _ in result.unet.named_parameters()], method="skip3d",
                             settings=result.settings, loss_log=result.log, timings=timings,
                             base={"source": adapter.source, "family": adapter.family})
