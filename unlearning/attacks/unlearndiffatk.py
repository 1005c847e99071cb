"""UnlearnDiffAtk: an adversarial prompt found with the unlearned model as its own classifier.

Zhang, Jia, Chen, Chen, Zhang, Liu, Liu. "To Generate or Not? Safety-Driven Unlearned Diffusion Models Are
Still Easy to Generate Unsafe Images ... For Now", ECCV 2024 (code: OPTML-Group/Diffusion-MU-Attack,
src/attackers/text_grad_.py, src/tasks/classifier_.py).

White-box and cheap: no second model and no classifier in the loop. For each prompt a reference image
x_0 of the concept comes from the *original* model (the prompt's own seed); the attack then looks for k
tokens to prepend to the prompt so that the *unlearned* model denoises x_0 well. A model that still
denoises the concept well under some prompt can still draw it.

Notation (paper Eq. 3-5):
    theta_u     the unlearned model (its UNet and its text encoder E)
    x_0         reference sample of the concept from the original model theta_0 (model space: VAE latents)
    W           the token embedding table (V, D); P the prompt's own token embeddings
    u_i         one distribution over the V tokens per adversarial token i = 1..k, on the simplex
    c(u)        E([SOT; onehot(u) W; P]): the prompt with k sampled tokens after its start token
    x_t         sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, eps ~ N(0, I)
    loss        || eps - eps_theta_u(x_t, t, c(u)) ||^2       (L2 criterion; L1 optional)

Procedure (the paper's sequential schedule): for t = 10, 30, ..., 990 (``timesteps`` values, ascending),
``iterations`` Adam steps on u (lr 0.01, weight decay 0.1), each followed by the Euclidean projection of
every u_i onto the simplex; the forward pass uses one-hot tokens sampled from u with a straight-through
(hardtanh) gradient. After each t the argmax prompt generates an image (same seed) that is judged; a prompt
stops at its first success, and a prompt that already succeeds without the attack is not attacked.

``space = "continuous"``: the k tokens are free embeddings (a soft prompt, as AdvUnlearn's inner attack);
on a class-conditional model (digits) the "vocabulary" is the label table, so ``discrete`` enumerates labels
and ``continuous`` optimises a label embedding, the issue's analogue. All prompts are attacked in one batch
(each with its own u); per-prompt results equal separate runs because Adam's update is per element.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..methods.base import RunContext, setting
from .base import AttackItem, AttackResult, AttackSettings, Judge, Victim, sample, sample_prompts, settings_dict


@dataclass
class UnlearnDiffAtkSettings(AttackSettings):
    """The paper's defaults (configs/object/text_grad_esd_church_classifier.json); twin values in TUNED."""

    samples: int = setting(50, "attacked prompts n: the forgotten concept's prompts and seeds, as a run's comparison "
                           "draws them (paper: 50 per object, 142 for nudity)", low=1, high=10_000)
    prefix_tokens: int = setting(3, "k: adversarial tokens put before the prompt (paper: 3 for objects and Van Gogh, "
                                 "5 for nudity)", low=1, high=32)
    timesteps: int = setting(50, "timesteps visited in order, t = 10, 30, ..., 990 for 50 (paper 50)", low=1, high=1000)
    iterations: int = setting(40, "Adam steps at each timestep (paper 40; worst case timesteps x iterations per prompt)",
                              low=1, high=10_000)
    lr: float = setting(1e-2, "Adam learning rate on u (paper 0.01)", low=0.0, low_inclusive=False)
    weight_decay: float = setting(0.1, "Adam weight decay (paper 0.1)", low=0.0)
    space: str = setting("discrete", "discrete: a distribution over the vocabulary per token, projected on the simplex, "
                         "one-hot samples with a straight-through gradient (the paper); continuous: free token "
                         "embeddings (a soft prompt)", choices=("discrete", "continuous"))
    criterion: str = setting("l2", "denoising error: l2 (paper) or l1", choices=("l2", "l1"))
    early_stop: bool = setting(True, "stop a prompt at its first success (the paper judges after every timestep)")
    seed: int = setting(0, "the attack's own randomness (initialisation, noise, token samples)", low=0)

    def optimiser_steps(self) -> int:
        """The most optimiser steps one prompt can take."""
        return self.timesteps * self.iterations

    def check(self) -> None:
        if self.timesteps * self.iterations > 100_000:
            raise InputError(f"timesteps x iterations = {self.timesteps * self.iterations} optimiser steps per prompt; "
                             "at most 100,000 (the paper's worst case is 2,000).")


# Twin values: about 10 timesteps x 10 iterations over the twin vocabulary (attacks.md's twin note), the twin's own
# sampler settings, 16 prompts. Digits: the continuous label embedding, lr 0.2 (the strongest of 0.01 / 0.05 /
# 0.2 on held-out digits 1 and 7 against ESD-x; enumerating the labels (discrete) revived nothing there);
# bench/results/robustness_tuning_digits.json.
TUNED: dict[str, dict] = {
    "shapes-sd": {"samples": 16, "prefix_tokens": 3, "timesteps": 10, "iterations": 10, "num_inference_steps": 25,
                  "guidance_scale": 5.0},
    "digits": {"samples": 16, "prefix_tokens": 1, "timesteps": 10, "iterations": 10, "num_inference_steps": 25,
               "guidance_scale": 2.0, "space": "continuous", "lr": 0.2, "weight_decay": 0.0},
}


class StraightThroughSample(torch.autograd.Function):
    """One-hot tokens sampled from u in the forward pass; hardtanh(grad) passed straight to u in the backward."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:  # (N, k, V)
        flat = u.detach().flatten(0, -2).clamp(min=0).cpu() + 1e-12
        ids = torch.multinomial(flat, 1, generator=generator).view(u.shape[:-1])
        return F.one_hot(ids, u.shape[-1]).to(u.dtype).to(u.device)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return F.hardtanh(grad), None


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of v (..., V) onto {x >= 0, sum x = 1} (sort-based; the paper's bisection
    finds the same point)."""
    s, _ = torch.sort(v, dim=-1, descending=True)
    css = s.cumsum(-1) - 1
    k = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    rho = ((s - css / k) > 0).to(v.dtype).mul(k).amax(-1, keepdim=True)  # the last index where the condition holds
    theta = css.gather(-1, rho.long() - 1) / rho
    return (v - theta).clamp(min=0)


def timestep_schedule(num_train_timesteps: int, n: int) -> list[int]:
    """The paper's t = T/n/2, T/n/2 + T/n, ... (10, 30, ..., 990 for T = 1000, n = 50), ascending."""
    n = min(n, num_train_timesteps)
    step = num_train_timesteps // n
    return list(range(step // 2, num_train_timesteps, step))[:n]


def denoising_error(eps_pred: torch.Tensor, noise: torch.Tensor, criterion: str) -> torch.Tensor:
    """(B,) per-prompt error || eps - eps_theta_u ||: the attack's whole objective."""
    err = (eps_pred.float() - noise.float()).abs() if criterion == "l1" else (eps_pred.float() - noise.float()) ** 2
    return err.flatten(1).mean(1)


def prefix_loss(victim: Victim, inputs: torch.Tensor, tokens: torch.Tensor, x0: torch.Tensor, t: int, noise: torch.Tensor,
                criterion: str = "l2") -> torch.Tensor:
    """(N,) || eps - eps_theta_u(x_t, t, E([SOT; tokens; P])) || for each prompt: the attack's objective at one (t, eps)."""
    t_batch = torch.full((len(x0),), t, dtype=torch.long)
    x_t = victim.base.noise_scheduler.add_noise(x0, noise, t_batch)
    cond = victim.condition(victim.model.insert_tokens(inputs, tokens))
    return denoising_error(victim.eps(x_t, t_batch.to(x_t.device), cond), noise, criterion)


@dataclass
class Prefix:
    """The k adversarial tokens of every prompt: u (discrete) or the embeddings themselves (continuous)."""

    param: torch.Tensor  # (N, k, V) on the simplex, or (N, k, D)
    table: torch.Tensor  # (V, D) token embeddings
    ids: torch.Tensor  # (V,) their token ids
    discrete: bool

    def sampled(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(n, k, D) tokens for the forward pass of the prompts ``idx`` (differentiable in ``param``)."""
        if not self.discrete:
            return self.param[idx]
        return StraightThroughSample.apply(self.param[idx], generator) @ self.table

    def final(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(n, k, D) tokens of the attacked prompt as it is judged (discrete: argmax tokens) and their ids."""
        with torch.no_grad():
            if not self.discrete:
                return self.param[idx].detach().clone(), None
            choice = self.param[idx].argmax(-1)  # (n, k) rows of the table
            return self.table[choice], self.ids[choice]


def init_prefix(victim: Victim, n: int, settings: UnlearnDiffAtkSettings, g: torch.Generator) -> Prefix:
    table, ids = victim.model.vocabulary_embeddings()
    k = settings.prefix_tokens
    if settings.space == "discrete":  # u = uniform over the vocabulary (the paper's init; already on the simplex)
        param = torch.full((n, k, len(ids)), 1.0 / len(ids), device=table.device)
    else:  # random vocabulary tokens as the starting embeddings (AdvUnlearn's init of its soft prompt)
        param = table[torch.randint(len(ids), (n, k), generator=g).to(table.device)].clone()
    return Prefix(param.requires_grad_(True), table, ids, settings.space == "discrete")


def attack(victim: Victim, items: list[AttackItem], judge: Judge, settings: UnlearnDiffAtkSettings,
           ctx: RunContext | None = None) -> AttackResult:
    ctx = ctx or RunContext()
    g = torch.Generator().manual_seed(settings.seed)
    steps, prompts = settings.num_inference_steps, [it.prompt for it in items]
    # 1. reference x_0: the original model's sample of each (prompt, seed); the plain prompt on theta_u
    x0, original = sample_prompts(victim.base, victim.base.unet, prompts, items, steps)
    _, unlearned = sample_prompts(victim.model, victim.unet, prompts, items, steps)
    before = judge(unlearned, items)
    started = time.perf_counter()
    # 2. the prompts' token embeddings and the k adversarial tokens of each
    inputs, lengths = victim.model.prompt_inputs(prompts)  # (N, T, D)
    limit = victim.model.max_tokens()
    if limit and max(lengths) + settings.prefix_tokens > limit:
        raise InputError(f"a prompt of {max(lengths)} tokens leaves no room for {settings.prefix_tokens} adversarial tokens "
                         f"within this text encoder's {limit}; use shorter prompts or fewer prefix_tokens.")
    prefix = init_prefix(victim, len(items), settings, g)
    opt = torch.optim.Adam([prefix.param], lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = timestep_schedule(victim.base.noise_scheduler.config.num_train_timesteps, settings.timesteps)
    # 3. prompts that already succeed need no attack (the paper returns at once); the rest start active
    active = ~before if settings.early_stop else torch.ones(len(items), dtype=torch.bool)
    n_attacked = int(active.sum())
    attacked, attacked_images = before.clone(), unlearned.clone()
    final_tokens, final_ids = prefix.final(torch.arange(len(items)))
    loss_log: list[dict] = []
    prompt_steps, total = 0, len(schedule) * settings.iterations
    for n_t, t in enumerate(schedule):
        idx = active.nonzero().flatten()
        if len(idx) == 0:
            break
        for i in range(settings.iterations):
            # 4. one Adam step on u (or the embeddings) of the active prompts: min || eps - eps_theta_u(x_t, t, c(u)) ||^2
            noise = torch.randn(x0[idx].shape, generator=g).to(x0.device, x0.dtype)
            loss = prefix_loss(victim, inputs[idx], prefix.sampled(idx, g), x0[idx], t, noise, settings.criterion).mean()
            frozen = prefix.param.detach()[~active].clone()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():  # 5. stopped prompts keep their tokens; u back onto the simplex
                prefix.param[~active] = frozen
                if prefix.discrete:
                    prefix.param.copy_(project_simplex(prefix.param))
            prompt_steps += len(idx)
            step = n_t * settings.iterations + i + 1
            loss_log.append({"step": step, "loss": float(loss.item()), "t": t, "active": len(idx)})
            ctx.report(step, total, float(loss.item()))
        # 6. judge the prompt as it stands (argmax tokens), same seed; successes stop
        tokens, ids = prefix.final(idx)
        final_tokens[idx] = tokens
        if ids is not None:
            final_ids[idx] = ids
        with torch.no_grad():
            cond = victim.condition(victim.model.insert_tokens(inputs[idx], tokens))
        _, images = sample(victim.model, victim.unet, cond, [items[i] for i in idx.tolist()], steps)
        hits = judge(images, [items[i] for i in idx.tolist()])
        attacked_images[idx], attacked[idx] = images, hits
        if settings.early_stop:
            active[idx[hits]] = False
    attack_s = time.perf_counter() - started
    texts = [attacked_prompt(victim, prompts[i], None if final_ids is None else final_ids[i], settings) for i in range(len(items))]
    tensors = {"prefix_embeddings": final_tokens}
    if final_ids is not None:
        tensors["prefix_token_ids"] = final_ids
    return AttackResult(
        kind="unlearndiffatk", items=items, before=before.tolist(), attacked=attacked.tolist(),
        images={"original": original, "unlearned": unlearned, "attacked": attacked_images},
        iterations=prompt_steps, attack_s=attack_s, settings=settings_dict(settings), judge=judge.describe(),
        loss_log=loss_log, attacked_prompts=texts, tensors=tensors,
        extra={"iterations_per_attacked_prompt": prompt_steps / max(1, n_attacked), "attacked_prompts": n_attacked,
               "timestep_schedule": schedule},
    )


def attacked_prompt(victim: Victim, prompt: str, ids: torch.Tensor | None, settings: UnlearnDiffAtkSettings) -> str:
    """The attacked prompt as text: the chosen tokens (discrete) or a placeholder for soft tokens, then the prompt."""
    if ids is None:
        return f"<{settings.prefix_tokens} soft token{'s' if settings.prefix_tokens > 1 else ''}> {prompt}"
    return f"{victim.model.decode_tokens(ids.tolist())} | {prompt}"
