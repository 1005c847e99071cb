"""AdvUnlearn: adversarial training of the text encoder, so erasure survives adversarial prompts.

Zhang, Chen, Jia, Zhang, Fan, Liu, Liu. "Defensive Unlearning with Adversarial Training for Robust Concept
Erasure in Diffusion Models", NeurIPS 2024 (code: OPTML-Group/AdvUnlearn, train-scripts/AdvUnlearn.py,
utils/attack_util.py, utils/get_loss.py).

A bi-level problem: the inner attacker finds a soft prompt d that brings the concept back (the attack the
method defends against); the outer step erases the concept *under that prompt* with ESD's objective, while
a utility term keeps retained prompts as the original model had them. Only the text encoder is trained
(all transformer layers and the final norm; token and position embeddings frozen), so the defence is a
new text encoder that plugs into the unchanged UNet.

Notation (paper Eq. 5-7):
    E_theta, E_0   the text encoder being trained and the frozen original; eps_0 the frozen UNet (shared:
                   the UNet is not trained)
    c, r           the concept's prompt; a retained prompt
    d              k adversarial token embeddings put after the start token: [d; c]
    z_t            DDIM from noise with prompt c (current model, CFG ``start_guidance``), stopped at a random step
    target         eps_0(z_t, t, "") - eta (eps_0(z_t, t, c) - eps_0(z_t, t, ""))          (ESD's negative guidance)
    lower (attack) d* = argmin_d || eps(z_t, t, E_theta([d; c])) - eps_0(z_t, t, E_0(c)) ||^2
    upper (train)  min_theta || eps(z_t, t, E_theta([d*; c])) - target ||^2
                             + gamma E_r || eps(z_r, t, E_theta(r)) - eps_0(z_r, t, E_0(r)) ||^2

Schedule: ``warmup`` iterations without the attack, then a fresh d* every ``attack_every`` iterations
(``attack_steps`` Adam steps, warm-started from the previous d*: ``attack_init = latest``). On a
class-conditional model the "text encoder" is the label table (embedding rows and norm) and d is an extra
token between the start token and the label.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..edit import Edit
from ..errors import InputError
from ..models.base import FamilyAdapter
from .base import RunContext, UnlearnTask, optimise, setting
from .esd import esd_loss


@dataclass
class AdvUnlearnSettings:
    iterations: int = setting(1000, "outer iterations (paper 1,000)", low=1)
    lr: float = setting(1e-5, "Adam learning rate of the text encoder (paper 1e-5)", low=0.0, low_inclusive=False)
    negative_guidance: float = setting(1.0, "eta: strength of ESD's negative guidance in the target (paper 1.0)", low=0.0)
    retain_weight: float = setting(0.3, "gamma: weight of the utility term on retained prompts (paper README 0.3)", low=0.0)
    retain_batch: int = setting(5, "retained prompts per iteration (paper 5)", low=1, high=256)
    warmup: int = setting(200, "iterations at the start without the attack (paper 200)", low=0)
    attack_every: int = setting(1, "a new adversarial prompt every N iterations after the warm-up (paper 1)", low=1)
    attack_steps: int = setting(30, "inner attack steps per adversarial prompt (paper 30)", low=1, high=10_000)
    attack_lr: float = setting(1e-3, "inner attack Adam learning rate (paper 1e-3)", low=0.0, low_inclusive=False)
    attack_tokens: int = setting(1, "k: adversarial token embeddings in d (paper 1)", low=1, high=16)
    attack_init: str = setting("latest", "latest: warm start from the previous d* (paper); random: random vocabulary tokens",
                               choices=("latest", "random"))
    attack_method: str = setting("pgd", "pgd: Adam on the gradient (paper); fast_at: Adam on its sign", choices=("pgd", "fast_at"))
    ddim_steps: int = setting(50, "DDIM steps of the trajectory z_t is drawn from (paper 50)", low=2, high=1000)
    start_guidance: float = setting(3.0, "CFG scale used when drawing z_t (paper 3)", low=1.0)

    def check(self) -> None:
        if self.warmup >= self.iterations:
            raise InputError(f"warmup ({self.warmup}) must be below iterations ({self.iterations}), or the attack never runs.")


def trainable_conditioner(adapter: FamilyAdapter) -> tuple[torch.nn.Module, list[str]]:
    """A float32 copy of the conditioner with the paper's parameters trainable: every layer of a text encoder
    except its token and position embeddings; every weight of a label table."""
    module = copy.deepcopy(adapter.conditioner).float().train()
    names = [n for n, _ in module.named_parameters() if not n.startswith("embeddings.")]
    for n, p in module.named_parameters():
        p.requires_grad_(n in names)
    return module, names


def condition(model: FamilyAdapter, prompts: list[str], prefix: torch.Tensor | None = None) -> torch.Tensor:
    """E([d; prompt]) from ``model``'s conditioner, differentiable in it and in ``prefix`` (B, k, D)."""
    inputs, _ = model.prompt_inputs(prompts)
    if prefix is not None:
        inputs = model.insert_tokens(inputs, prefix)
    return model.encode_inputs(inputs)


def unlearn(adapter: FamilyAdapter, task: UnlearnTask, settings: AdvUnlearnSettings, ctx: RunContext) -> Edit:
    started = time.perf_counter()
    # 1. a trainable copy of the conditioner; the adapter's own stays frozen as E_0, its UNet as eps_0
    trained, names = trainable_conditioner(adapter)
    frozen = adapter.unet
    g = torch.Generator().manual_seed(task.seed)
    timesteps = adapter.make_sampler(settings.ddim_steps).timesteps
    table, _ = adapter.vocabulary_embeddings()
    if not task.retain and settings.retain_weight > 0:
        raise InputError("AdvUnlearn's utility term needs a retained concept; name one or set retain_weight=0.")
    with torch.no_grad():
        e0_forget = adapter.encode(task.forget)  # (K, T, D): E_0(c)
        e0_retain = adapter.encode(task.retain) if task.retain else None  # (R, T, D): E_0(r)
    state: dict = {"d": None}

    def rollout(model: FamilyAdapter, cond: torch.Tensor, stop: int) -> torch.Tensor:
        """z_t: DDIM with the current encoder and the UNet, from fresh noise, stopped at ``stop`` (no gradient)."""
        seeds = torch.randint(2**31 - 1, (cond.shape[0],), generator=g).tolist()
        return model.denoise(model.initial_noise(seeds), cond, unet=frozen, num_inference_steps=settings.ddim_steps,
                             guidance_scale=settings.start_guidance, stop_step=stop)

    def inner_attack(model: FamilyAdapter, concept: str, k: int) -> torch.Tensor:
        """d* = argmin_d || eps(z_t, t, E_theta([d; c])) - eps_0(z_t, t, E_0(c)) ||^2 (attack_util.soft_prompt_attack)."""
        if state["d"] is None or settings.attack_init == "random":
            state["d"] = table[torch.randint(len(table), (1, settings.attack_tokens), generator=g).to(table.device)].clone()
        d = state["d"].clone().requires_grad_(True)
        opt = torch.optim.Adam([d], lr=settings.attack_lr)
        with torch.no_grad():
            e_c = condition(model, [concept])
        for _ in range(settings.attack_steps):
            stop = int(torch.randint(settings.ddim_steps, (1,), generator=g))
            z = rollout(model, e_c, stop)
            t = timesteps[stop]
            with torch.no_grad():
                eps0 = adapter.eps(frozen, z, t, e0_forget[k : k + 1]).float()
            loss = F.mse_loss(adapter.eps(frozen, z, t, condition(model, [concept], d)).float(), eps0)
            opt.zero_grad(set_to_none=True)
            (grad,) = torch.autograd.grad(loss, [d])
            d.grad = grad.sign() if settings.attack_method == "fast_at" else grad
            opt.step()
        state["d"] = d.detach()
        return state["d"]

    def loss_fn(step: int) -> tuple[torch.Tensor, dict]:
        model = adapter.with_conditioner(trained)  # a fresh view: its null condition follows the trained encoder
        # 2. a concept, a stopping step; z_t from the current model (ESD's data-free trajectory)
        k = int(torch.randint(len(task.forget), (1,), generator=g))
        concept = task.forget[k]
        trained.eval()
        # 3. the inner attack, after the warm-up: a soft prompt d* that brings the concept back
        attacking = step >= settings.warmup and (step - settings.warmup) % settings.attack_every == 0
        prefix = inner_attack(model, concept, k) if attacking else (state["d"] if step >= settings.warmup else None)
        stop = int(torch.randint(settings.ddim_steps, (1,), generator=g))
        with torch.no_grad():
            z = rollout(model, condition(model, [concept]), stop)
        t = timesteps[stop]
        trained.train()
        # 4. the frozen original's predictions: ESD's negatively guided target
        with torch.no_grad():
            eps0_c = adapter.eps(frozen, z, t, e0_forget[k : k + 1]).float()
            eps0_null = adapter.eps(frozen, z, t, adapter.null_condition(1)).float()
        # 5. upper level: erase the concept under [d*; c]
        erase = esd_loss(adapter.eps(frozen, z, t, condition(model, [concept], prefix)).float(), eps0_c, eps0_null,
                         settings.negative_guidance)
        extra = {"forget_loss": float(erase.item())}
        loss = erase
        if settings.retain_weight > 0:
            # 6. utility: retained prompts keep the original's predictions on their own trajectories
            pick = torch.randint(len(task.retain), (settings.retain_batch,), generator=g).tolist()
            prompts = [task.retain[i] for i in pick]
            with torch.no_grad():
                z_r = rollout(model, condition(model, prompts), stop)
                eps0_r = adapter.eps(frozen, z_r, t, e0_retain[pick]).float()
            retain = F.mse_loss(adapter.eps(frozen, z_r, t, condition(model, prompts)).float(), eps0_r)
            loss = loss + settings.retain_weight * retain
            extra["retain_loss"] = float(retain.item())
        return loss, extra

    log = optimise(trained, names, loss_fn, iterations=settings.iterations, lr=settings.lr, ctx=ctx, method="AdvUnlearn")
    edit = Edit.from_trained(adapter.conditioner, trained, names, method="advunlearn", settings=dataclasses.asdict(settings),
                             loss_log=log, timings={"unlearn_s": time.perf_counter() - started},
                             base={"source": adapter.source, "family": adapter.family})
    return edit.prefixed(adapter.conditioner_name)
