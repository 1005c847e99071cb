"""ResAlign: unlearning that survives downstream fine-tuning.

Li, Gu, Wang, Qi, Li, Wang, Qin, Zhang. "Towards Resilient Safety-driven Unlearning for Diffusion
Models against Downstream Fine-tuning", NeurIPS 2025 (arXiv 2507.16302). Written from the paper and
the method card (../shared/design/methods/resalign.md); the official code was read, not copied.

An unlearned model is later fine-tuned by someone else on benign data, and the erased concept comes
back. ResAlign trains the edit so that the harmful loss stays high *after* a simulated fine-tune:
it models the fine-tune's end point as a proximal point of theta and differentiates through it with
the implicit function theorem, averaging over many simulated fine-tuning configurations.

Notation (paper, Sec. 3 and Algorithms 1-2):
    theta          the trainable weights: rank-r LoRA on q / k / v / out of every attention layer (peft)
    W(theta)       the UNet weights with the LoRA update B A (alpha / r) added
    theta_0        the frozen original UNet (the adapter's base)
    L_h(w)         harmful loss on the forget data: -|| eps - eps_w(x_t, t, c) ||^2 (gradient ascent), or
                   ESD's || eps_w(x_t, t, c) - [eps_0(c_a) - eta (eps_0(c) - eps_0(c_a))] ||^2 ("esd")
    R(theta)       || eps_W(theta)(x_t, t, c) - eps_theta_0(x_t, t, c) ||^2 on retain data (distillation)
    L_FT(w)        a simulated downstream fine-tune's loss on a benign pool (plain or prior-preserving)
    w*(theta)      argmin_w L_FT(w) + 1/(2 gamma) || w - theta ||^2, reached by `steps` optimiser steps from theta
    d w*/d theta   (I + gamma H)^-1, H = Hessian of L_FT at w* (implicit function theorem; gamma = 1)
    v              (I + H)^-1 g, g = grad L_h(w*); K Richardson steps v <- v + a (g - v - H v), v_0 = 0
    lam, w_r       resilience weight 0.8; retain weight ramped 1.6 -> 2.0 over the second half
    outer loss     (1 - lam) L_h(theta) + lam L_h(w*(theta)) + w_r R(theta)

Choices recorded here (the paper or card leaves them open):
- The simulated fine-tune runs in place on a copy of the weights and is then undone (LoRA factors from a
  snapshot; the weights of W(theta), which change only inside a simulated fine-tune, from the base they are
  a float32 copy of): the implicit gradient needs only w*, never the unrolled trajectory. The simulated
  optimiser and its gradients are dropped before the Hessian-vector products (memory).
- "full" configurations fine-tune every weight of W(theta) with the LoRA update held fixed; v lives in
  weight space and reaches theta through the LoRA product (a vector-Jacobian product of B A).
  "lora" configurations fine-tune theta itself, so v is the hypergradient directly.
- The update is grad[(1 - lam) L_h(theta) + w_r R(theta)] + scale * lam * mean_k J_k^T v_k ("scale 0.3").
- Gate: when v is not finite or its norm (in theta space) exceeds ``max_hypergrad_norm``, the step a is
  halved and Richardson reruns (up to ``max_retries`` times); after that the configuration contributes
  no resilience term (the "direct gradient" fallback) and the log counts a fallback.
- Prior preservation (DreamBooth) adds the denoising loss on the retained concepts' data to the
  benign pool's; the benign pools are the retained concepts split round-robin into ``benign_pools`` groups.
- Every simulated run gets a fresh optimiser (the card notes the reference code reuses one).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..edit import Edit
from ..errors import DivergedError, InputError
from ..models.base import FamilyAdapter
from .base import (
    ConceptPool,
    Memory,
    RunContext,
    UnlearnTask,
    checkpointing_setting,
    forward_noise,
    lora_weights,
    mixed_precision_setting,
    setting,
)
from .esd import esd_loss

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # every attention projection, self and cross


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


@dataclass
class ResAlignSettings:
    objective: str = setting("ga", "L_h: ga = gradient ascent on the forget data (paper), esd = ESD's negative-guidance target",
                             choices=("ga", "esd"))
    iterations: int = setting(160, "outer steps (paper 160)", low=1)
    lr: float = setting(2e-4, "AdamW learning rate of the LoRA weights (paper 2e-4)", low=0.0, low_inclusive=False)
    weight_decay: float = setting(1e-2, "AdamW weight decay (paper 1e-2)", low=0.0)
    lam: float = setting(0.8, "lambda: weight of L_h after the simulated fine-tune vs before it (paper 0.8)", low=0.0, high=1.0)
    retain_weight_start: float = setting(1.6, "w_r at the start; ramps by a sigmoid over the second half (paper 1.6)", low=0.0)
    retain_weight_end: float = setting(2.0, "w_r at the end (paper 2.0)", low=0.0)
    hypergrad_scale: float = setting(0.3, "scale of the averaged hypergradient (paper 0.3)", low=0.0)
    richardson_steps: int = setting(5, "K: Richardson / Neumann iterations for (I + H)^-1 g (paper 5)", low=0, high=100)
    max_hypergrad_norm: float = setting(0.2, "norm gate: above it the Richardson step is halved and retried (paper 0.2)",
                                        low=0.0, low_inclusive=False)
    max_retries: int = setting(5, "halvings before falling back to the direct gradient (paper 5)", low=0, high=20)
    num_configs: int = setting(15, "simulated fine-tuning configurations drawn once per run (paper 15)", low=1, high=1000)
    configs_per_step: int = setting(3, "configurations sampled per outer step (paper 3)", low=1, high=100)
    ft_lrs: str = setting("1e-4,1e-5,1e-6", "simulated fine-tuning learning rates, comma-separated (paper 1e-4, 1e-5, 1e-6)")
    ft_steps: str = setting("5,10,20,30", "simulated fine-tuning steps, comma-separated (paper 5, 10, 20, 30)")
    ft_batch_size: int = setting(1, "batch of a simulated fine-tuning step (the relearning test's batch is 1)", low=1, high=256)
    benign_pools: int = setting(3, "benign data pools the retained concepts are split into (paper 3)", low=1, high=100)
    batch_size: int = setting(1, "forget and retain samples per outer step", low=1, high=256)
    data_size: int = setting(64, "samples drawn once per concept for the forget, retain and benign data", low=1, high=100_000)
    negative_guidance: float = setting(1.0, "eta of the esd objective", low=0.0)
    lora_rank: int = setting(4, "r of the LoRA on every attention projection (paper 4)", low=1, high=256)
    lora_alpha: float = setting(4.0, "LoRA alpha; the update is scaled by alpha / r", low=0.0, low_inclusive=False)
    ft_spaces: str = setting("lora,full", "what the simulated fine-tunes train: the LoRA factors, every weight of W(theta), or both "
                             "(paper); 'lora' alone needs no weight-sized gradients, optimiser moments or Hessian-vector products",
                             choices=("lora,full", "lora", "full"))
    mixed_precision: str = mixed_precision_setting()
    gradient_checkpointing: bool = checkpointing_setting()

    def check(self) -> None:
        for name, parse, low in (("ft_lrs", _floats, 0.0), ("ft_steps", _ints, 0)):
            try:
                values = parse(getattr(self, name))
            except ValueError:
                raise InputError(f"setting '{name}' must be comma-separated numbers, got {getattr(self, name)!r}.") from None
            if not values or any(not math.isfinite(v) or v <= low for v in values):
                raise InputError(f"setting '{name}' needs at least one number, each > {low}; got {getattr(self, name)!r}.")

    def retain_weight(self, step: int) -> float:
        """w_r: the start value for the first half, then a sigmoid ramp to the end value."""
        u = (step / max(self.iterations - 1, 1) - 0.5) * 2  # -1 .. 1; the ramp runs over 0 .. 1
        if u <= 0:
            return self.retain_weight_start
        s = torch.sigmoid(torch.tensor(12.0 * (u - 0.5))).item()
        lo, hi = torch.sigmoid(torch.tensor(-6.0)).item(), torch.sigmoid(torch.tensor(6.0)).item()
        return self.retain_weight_start + (self.retain_weight_end - self.retain_weight_start) * (s - lo) / (hi - lo)


@dataclass(frozen=True)
class FineTuneConfig:
    """One simulated downstream fine-tune (Algorithm 2's configuration space)."""

    lr: float
    steps: int
    prior: bool  # DreamBooth-style prior preservation
    space: str  # "lora" (theta itself) or "full" (every weight of W(theta))
    optimizer: str  # "sgd" or "adam"
    pool: int  # which benign pool


def draw_configs(settings: ResAlignSettings, n_pools: int, g: torch.Generator) -> list[FineTuneConfig]:
    """``num_configs`` distinct configurations drawn from the product space (all of it when smaller)."""
    space = [FineTuneConfig(*c) for c in itertools.product(_floats(settings.ft_lrs), _ints(settings.ft_steps), (False, True),
                                                            settings.ft_spaces.split(","), ("sgd", "adam"), range(n_pools))]
    order = torch.randperm(len(space), generator=g).tolist()
    return [space[i] for i in order[: settings.num_configs]]


def inject_lora(unet: torch.nn.Module, rank: int, alpha: float, *, in_place: bool = False) -> tuple[torch.nn.Module, dict[str, torch.nn.Module]]:
    """A copy of ``unet`` (``in_place``: ``unet`` itself, for a caller's own fresh copy) with peft LoRA on every
    attention projection; returns it and its LoRA layers by name."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(LORA_TARGETS), lora_dropout=0.0)
    model = inject_adapter_in_model(config, unet if in_place else copy.deepcopy(unet))
    return model, {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


class ResAlign:
    """The state of one run: the LoRA model, the frozen original, the data, the configurations."""

    def __init__(self, adapter: FamilyAdapter, task: UnlearnTask, settings: ResAlignSettings):
        self.adapter, self.task, self.s = adapter, task, settings
        self.g = torch.Generator().manual_seed(task.seed)
        # 1. data: forget pairs (L_h), retain pairs (R and the prior), benign pools (simulated fine-tunes)
        retain = list(task.retain)
        if not retain:
            raise InputError("ResAlign needs retained concepts (its distillation term and the simulated fine-tunes "
                             "train on them); name some under 'concepts to preserve'.")
        self.forget = ConceptPool.build(adapter, task.forget, settings.data_size, task.seed)
        self.retain = ConceptPool.build(adapter, retain, settings.data_size, task.seed + 1)
        groups = [retain[i :: settings.benign_pools] for i in range(min(settings.benign_pools, len(retain)))]
        per = len(self.retain.x0) // len(retain)
        self.pools = [ConceptPool(torch.cat([self.retain.x0[retain.index(c) * per : (retain.index(c) + 1) * per] for c in grp]),
                                  torch.cat([self.retain.cond[retain.index(c) * per : (retain.index(c) + 1) * per] for c in grp]))
                      for grp in groups]
        if settings.objective == "esd":
            with torch.no_grad():
                anchors = [adapter.encode([a]) if (a := task.anchor_of(c)) else adapter.null_condition(1) for c in task.forget]
            self.anchor_of_row = torch.cat([a.expand(settings.data_size, -1, -1) for a in anchors])  # (N, T, D)
        self.configs = draw_configs(settings, len(self.pools), self.g)
        # 2. theta: LoRA on a float32 copy; the adapter's base UNet stays frozen and plays theta_0
        self.frozen = adapter.unet
        self.model, self.layers = inject_lora(adapter.frozen_copy_for_training(), settings.lora_rank, settings.lora_alpha, in_place=True)
        if settings.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        self.model.train()
        self.theta = {n: p for n, p in self.model.named_parameters() if "lora_" in n}
        self.weights = {n: p for n, p in self.model.named_parameters() if "lora_" not in n}
        base = dict(adapter.unet.named_parameters())
        self.origin = {n: base[n.replace(".base_layer.", ".")] for n in self.weights}  # what a full fine-tune is undone to
        self._set_trainable(self.theta)
        self.memory = Memory.of(settings)

    # ---- the losses ------------------------------------------------------------------------------
    def _set_trainable(self, params: dict[str, torch.Tensor]) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)

    def _eps(self, unet, x_t, t, c) -> torch.Tensor:
        with self.memory.autocast_context(self.adapter.device):
            return self.adapter.eps(unet, x_t, t, c).float()

    def harmful_loss(self) -> torch.Tensor:
        """L_h on a fresh batch of forget pairs (minimising it forgets)."""
        idx = torch.randint(len(self.forget.x0), (self.s.batch_size,), generator=self.g)
        x0, c = self.forget.x0[idx], self.forget.cond[idx]
        x_t, t, noise = forward_noise(self.adapter, x0, self.g)
        eps = self._eps(self.model, x_t, t, c)
        if self.s.objective == "ga":
            return -F.mse_loss(eps, noise.float())
        with torch.no_grad():
            eps0_c, eps0_a = self._eps(self.frozen, x_t, t, c), self._eps(self.frozen, x_t, t, self.anchor_of_row[idx])
        return esd_loss(eps, eps0_c, eps0_a, self.s.negative_guidance)

    def retain_loss(self) -> torch.Tensor:
        """R: distillation to the frozen original on retain pairs."""
        x0, c = self.retain.batch(self.s.batch_size, self.g)
        x_t, t, _ = forward_noise(self.adapter, x0, self.g)
        with torch.no_grad():
            target = self._eps(self.frozen, x_t, t, c)
        return F.mse_loss(self._eps(self.model, x_t, t, c), target)

    def finetune_loss(self, cfg: FineTuneConfig) -> torch.Tensor:
        """L_FT: the simulated user's denoising loss on a benign pool (+ the prior term when prior-preserving)."""
        def simple(pool: ConceptPool) -> torch.Tensor:
            x0, c = pool.batch(self.s.ft_batch_size, self.g)
            x_t, t, noise = forward_noise(self.adapter, x0, self.g)
            return F.mse_loss(self._eps(self.model, x_t, t, c), noise.float())

        loss = simple(self.pools[cfg.pool])
        return loss + simple(self.retain) if cfg.prior else loss

    # ---- Algorithm 1: the hypergradient through one simulated fine-tune -------------------------
    def hypergradient(self, cfg: FineTuneConfig) -> tuple[dict[str, torch.Tensor] | None, dict]:
        """J^T (I + H)^-1 grad L_h(w*) in theta space, or None when the norm gate falls back."""
        params = self.theta if cfg.space == "lora" else self.weights
        snapshot = {n: p.detach().clone() for n, p in params.items()} if cfg.space == "lora" else self.origin
        self._set_trainable(params)
        try:
            # 1. w*: the simulated user's fine-tune from theta, with a fresh optimiser
            opt = (torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD)(list(params.values()), lr=cfg.lr)
            for _ in range(cfg.steps):
                opt.zero_grad(set_to_none=True)
                self.finetune_loss(cfg).backward()
                opt.step()
            del opt  # Adam's moments: two more weight-sized buffers, not needed past w*
            for p in params.values():
                p.grad = None
            # 2. g = grad L_h(w*), and grad L_FT(w*) kept differentiable for Hessian-vector products
            ws = list(params.values())
            g = [x.detach() for x in torch.autograd.grad(self.harmful_loss(), ws)]
            # the fused attention kernels have no double backward (and checkpointing recomputes under this context)
            with sdpa_kernel(SDPBackend.MATH):
                grad_ft = torch.autograd.grad(self.finetune_loss(cfg), ws, create_graph=True)

                def hvp(v: list[torch.Tensor]) -> list[torch.Tensor]:
                    return [h.detach() for h in torch.autograd.grad(grad_ft, ws, grad_outputs=v, retain_graph=True)]

                # 3. Richardson for (I + H) v = g; the step a is halved while the result is not finite or too large
                a, norm = 1.0, float("nan")
                for attempt in range(self.s.max_retries + 1):
                    v = richardson(hvp, g, a, self.s.richardson_steps)
                    hyper = self._to_theta(cfg, dict(zip(params, v, strict=True)))
                    norm = _norm(hyper.values())
                    if math.isfinite(norm) and norm <= self.s.max_hypergrad_norm:
                        return hyper, {"retries": attempt, "fallback": 0, "norm": norm}
                    a /= 2
            return None, {"retries": self.s.max_retries, "fallback": 1, "norm": norm}
        finally:
            # 4. undo the simulated fine-tune: theta and W(theta) are exactly as before
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(snapshot[n])
            self._set_trainable(self.theta)

    def _to_theta(self, cfg: FineTuneConfig, v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """v in theta space: itself for LoRA-space fine-tunes; for full ones (d W / d theta)^T v through B A."""
        if cfg.space == "lora":
            return v
        theta = list(self.theta.values())
        for p in theta:
            p.requires_grad_(True)
        with torch.enable_grad():
            deltas = [layer.get_delta_weight("default") for layer in self.layers.values()]
            vs = [v[f"{name}.base_layer.weight"] for name in self.layers]
            grads = torch.autograd.grad(deltas, theta, grad_outputs=vs, allow_unused=True)
        for p in theta:
            p.requires_grad_(False)
        return {n: torch.zeros_like(p) if gr is None else gr for (n, p), gr in zip(self.theta.items(), grads, strict=True)}

    # ---- Algorithm 2: the outer loop -------------------------------------------------------------
    def step(self, step: int, opt: torch.optim.Optimizer) -> dict:
        s = self.s
        w_r = s.retain_weight(step)
        # 1. the direct terms (1 - lam) L_h(theta) + w_r R(theta)
        l_h, r = self.harmful_loss(), self.retain_loss()
        loss = (1 - s.lam) * l_h + w_r * r
        if not torch.isfinite(loss):
            raise DivergedError(f"ResAlign: the loss became {loss.item()} at step {step + 1}; lower the learning rate "
                                f"(now {s.lr:g}) and run again. The base model is unchanged.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # 2. the resilience term: hypergradients of 3 sampled fine-tuning configurations, averaged and scaled
        picks = torch.randperm(len(self.configs), generator=self.g)[: s.configs_per_step].tolist()
        total = {n: torch.zeros_like(p) for n, p in self.theta.items()}
        fallbacks, norms = 0, []
        for i in picks:
            hyper, info = self.hypergradient(self.configs[i])
            fallbacks += info["fallback"]
            norms.append(info["norm"])
            if hyper is not None:
                for n in total:
                    total[n] += hyper[n]
        with torch.no_grad():
            for n, p in self.theta.items():
                p.grad = (p.grad if p.grad is not None else torch.zeros_like(p)) + s.hypergrad_scale * s.lam * total[n] / len(picks)
        if not all(torch.isfinite(p.grad).all() for p in self.theta.values()):
            raise DivergedError(f"ResAlign: a non-finite gradient at step {step + 1}; lower the learning rate (now {s.lr:g}).")
        opt.step()
        return {"loss": float(loss.item()), "harmful_loss": float(l_h.item()), "retain_loss": float(r.item()),
                "retain_weight": w_r, "hypergrad_norm": sum(norms) / len(norms), "fallbacks": fallbacks}

    def merged(self) -> dict[str, torch.Tensor]:
        """W(theta) of every projection: the base's weight + B A (alpha / r), finite-checked (no copy of the UNet)."""
        weights = lora_weights(self.model, self.adapter.unet)
        for name, value in weights.items():
            if not torch.isfinite(value).all():
                raise DivergedError(f"ResAlign produced non-finite weights in '{name}'; lower the learning rate.")
        return weights


def richardson(hvp: Callable[[list[torch.Tensor]], list[torch.Tensor]], g: list[torch.Tensor], a: float,
               steps: int) -> list[torch.Tensor]:
    """K steps of v <- v + a (g - v - H v) from v = 0: approximately (I + H)^-1 g (a = 1: the Neumann series)."""
    v = [torch.zeros_like(x) for x in g]
    for _ in range(steps):
        hv = hvp(v)
        v = [vi + a * (gi - vi - hvi) for vi, gi, hvi in zip(v, g, hv, strict=True)]
    return v


def _norm(tensors) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def unlearn(adapter: FamilyAdapter, task: UnlearnTask, settings: ResAlignSettings, ctx: RunContext) -> Edit:
    started = time.perf_counter()
    state = ResAlign(adapter, task, settings)
    opt = torch.optim.AdamW(list(state.theta.values()), lr=settings.lr, weight_decay=settings.weight_decay)
    log: list[dict] = []
    for step in range(settings.iterations):
        entry = {"step": step + 1, **state.step(step, opt)}
        log.append(entry)
        ctx.report(step + 1, settings.iterations, entry["loss"], **{k: v for k, v in entry.items() if k not in {"step", "loss"}})
    return Edit(params=state.merged(), method="resalign", settings=dataclasses.asdict(settings), loss_log=log,
                timings={"unlearn_s": time.perf_counter() - started}, base={"source": adapter.source, "family": adapter.family})
