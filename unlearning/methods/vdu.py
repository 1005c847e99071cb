"""VDU: Variational Diffusion Unlearning.

Panda, Varun, Jain, Maharana, Prathosh. "Variational Diffusion Unlearning", arXiv 2510.04058 (TMLR 2026).
No public code: the loss is the one in the authors' method figure; the hyperparameters they do not
publish are chosen here, marked "chosen", and exposed as settings.

Data-constrained unlearning: the user has only a *subset* of the forget data and no retain data.
Gradient ascent on that subset lowers the model's likelihood of the concept (plasticity); a
diagonal-Gaussian anchor in parameter space around the deployed weights keeps the ascent bounded
(stability). With gamma = 0 VDU is plain gradient ascent on the forget subset.

Notation (paper, method figure):
    theta        the weights being edited (the chosen group of UNet weights); P their number
    mu           the deployed weights (the adapter's frozen base UNet)
    sigma^2      per-parameter variance over K checkpoints of the model's own lineage, floored at sigma_floor^2
    D_f          the forget subset: ``forget_size`` images per forget concept, each with its condition c: the
                 class label, or for text-to-image models the VAE latent with its caption (the card's
                 feature forgetting on SD; ``adapter.captioned_data``: on the shapes-sd twin the drawing's
                 own "a red star", on real SD the original model's samples with their prompt)
    C_t          per-timestep weight: 1 ("simple") or the DDPM ELBO weight ("elbo")
    gamma        stability / plasticity trade-off in [0, 1]
    loss         gamma * (1/P) sum_i (theta_i - mu_i)^2 / (2 sigma_i^2)
                 - (1 - gamma) * E_{(x_0, c) in D_f, t, eps} C_t || eps - eps_theta(x_t, t, c) ||^2

With ``uam`` on, UAM (``uam.py``) wraps the step with L_f = -(1 - gamma) L_C(D_f) and, since VDU has no
retain data, the Gaussian anchor gamma * (1/P) sum (theta - mu)^2 / (2 sigma^2) as L_r (so gamma > 0).

Choices recorded here (the paper does not state them):
- The stability term is divided by P (the paper writes a plain sum). Both terms are then means, so
  gamma means the same on a 1.7 M-parameter twin and an 860 M-parameter UNet.
- The K checkpoints are the deployed weights and the K - 1 latest snapshots in ``<model>/snapshots/``
  (``step-*.safetensors``: fp16 differences from the final weights, keys ``unet.<parameter name>``),
  each rebuilt as final + difference. sigma^2 is their population variance (numpy's ``var``,
  ddof = 0). A folder without enough snapshots gets them from :func:`make_snapshots`: independent
  short continuations of ordinary training of the run's parameter group from the deployed weights (the
  card's recipe for a real model with no checkpoints), on captioned data of every concept the model knows (open-vocabulary
  models: the run's forget and retained concepts). They are kept on the loaded model, so later runs
  (and the K ablation) reuse them.
- ``sigma_floor`` floors the standard deviation, sigma^2 >= sigma_floor^2: weights that did not move
  across the checkpoints would otherwise be anchored infinitely hard.
- ELBO weight: C_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)) with the DDPM choice
  sigma_t^2 = beta_t (Ho et al. 2020, Eq. 12 and Sec. 3.2), i.e. beta_t / (2 alpha_t (1 - alpha_bar_t)),
  divided by its mean over t so that "elbo" and "simple" share a scale. On a cosine schedule (the
  digits twin's) beta_t is clipped at 0.999 near t = T, and 98 % of the weight lies on t >= 990.

On the digits twin (forget "3", seed 0, 32 forget / 72 retained samples): the round-1 run (gamma 0.5,
15 steps of batch 64, K = 5, then the twin value; since 4 December the twin values are 30 steps on digits
and 18 on shapes-sd, tuned on held-out concepts: docs/protocol.md, "VDU's twin values") takes the forget
rate from 1.00 to 0.00 but the retained digits from 0.96 to 0.49; with gamma = 0 (plain ascent, same
steps) 0.43, so the anchor helps, but ascent stopped early (gamma = 0, 8 steps) does better still
(forget 0.16, retain 0.68). No setting tried removed the digit while keeping the others within 15
points: with forget data only, the ascent damages the weights every digit shares. Below gamma ~0.85
(lr 1e-3) the ascent runs away; above ~0.9 the anchor stops it before the digit goes.

On the shapes-sd twin (forget "star", seed 0, made snapshots: 4 x 50 steps at lr 1e-5; 32 forget /
28 retained samples, batch 16): 10 steps: forget rate 0.72 -> 0.59, retain 0.79 -> 0.82, evaluator-FID
27 -> 53; 15 steps (then the twin value): 0.72 -> 0.50, 0.79 -> 0.61, FID 94; 20 steps: 0.72 -> 0.22, 0.79 -> 0.39,
FID 170; gamma 0.9 (20 steps) does nothing; gamma 0 (15 steps) 0.72 -> 0.00 with retain 0.11. Per
step the ascent on star raises every shape's denoising loss about equally (+0.066 star, +0.068 circle
after 15 steps): what is shared, not what is the star's, goes first.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..edit import Edit
from ..errors import InputError
from ..models.base import PARAMETER_GROUPS, FamilyAdapter
from .base import (
    ConceptPool,
    Memory,
    RunContext,
    UnlearnTask,
    checkpointing_setting,
    denoising_loss,
    finish,
    mixed_precision_setting,
    optimise,
    setting,
    trainable_copy,
)
from .uam import Objective, require_retain_loss, uam_config, uam_gamma, uam_rho, uam_switch

logger = logging.getLogger(__name__)

SNAPSHOT_FILE = re.compile(r"step-(\d+)\.safetensors")


@dataclass
class VDUSettings:
    gamma: float = setting(0.5, "stability (1) vs plasticity (0) weight; 0 = plain gradient ascent (chosen)", low=0.0, high=1.0)
    sigma_floor: float = setting(1e-4, "floor on each weight's checkpoint std: sigma^2 >= sigma_floor^2 (chosen)",
                                 low=0.0, low_inclusive=False)
    weighting: str = setting("simple", "C_t: 'simple' (1) or 'elbo' (DDPM ELBO weight, mean 1); the paper offers both",
                             choices=("simple", "elbo"))
    forget_size: int = setting(64, "images in the forget subset, per forget concept (the only data VDU sees; chosen)",
                               low=1, high=100_000)
    num_checkpoints: int = setting(5, "K: checkpoints sigma^2 is estimated from (the final weights + K - 1 snapshots); paper ablates 2, 3, 5",
                                   low=2, high=5)
    iterations: int = setting(200, "optimisation steps (chosen)", low=1)
    lr: float = setting(1e-4, "Adam learning rate (chosen; small-DDPM scale)", low=0.0, low_inclusive=False)
    batch_size: int = setting(16, "forget samples per step", low=1, high=512)
    group: str = setting("all", "which UNet weights are trained", choices=tuple(PARAMETER_GROUPS))
    snapshot_steps: int = setting(50, "training steps per snapshot made for a model folder without snapshots/", low=1, high=10_000)
    snapshot_lr: float = setting(1e-5, "Adam learning rate of those continuations", low=0.0, low_inclusive=False)
    uam: bool = uam_switch()
    uam_rho: float = uam_rho()
    uam_gamma: float = uam_gamma()
    mixed_precision: str = mixed_precision_setting()
    gradient_checkpointing: bool = checkpointing_setting()

    def check(self) -> None:
        require_retain_loss(self, self.gamma > 0, "VDU's retain loss is its Gaussian anchor; set gamma > 0")


def stability_term(theta: list[torch.Tensor], mu: list[torch.Tensor], inv_var: list[torch.Tensor]) -> torch.Tensor:
    """(1/P) sum_i (theta_i - mu_i)^2 / (2 sigma_i^2); VDU's loss is gamma * this - (1 - gamma) * L_C(D_f)."""
    num = sum(p.numel() for p in theta)
    return sum(((p - m) ** 2 * iv).sum() for p, m, iv in zip(theta, mu, inv_var, strict=True)) / (2 * num)


def elbo_weights(adapter: FamilyAdapter) -> torch.Tensor:
    """C_t = beta_t / (2 alpha_t (1 - alpha_bar_t)) (sigma_t^2 = beta_t), normalised to mean 1; (T,)."""
    betas = adapter.noise_scheduler.betas.double()
    alphas_cumprod = adapter.noise_scheduler.alphas_cumprod.double()
    weights = betas / (2 * (1 - betas) * (1 - alphas_cumprod))
    return (weights / weights.mean()).float()


# ---- the checkpoints sigma^2 comes from ---------------------------------------------------------

def load_snapshots(source: str | Path, names: list[str], limit: int) -> list[dict[str, torch.Tensor]]:
    """The ``limit`` latest snapshots in ``<source>/snapshots/`` as float32 differences from the final
    weights, for the UNet parameters ``names``; [] when the folder has none."""
    folder = Path(source) / "snapshots"
    if not folder.is_dir() or limit <= 0:
        return []
    files = sorted((int(m.group(1)), f) for f in folder.iterdir() if (m := SNAPSHOT_FILE.fullmatch(f.name)))
    diffs = []
    for _, path in files[-limit:]:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            missing = [n for n in names if f"unet.{n}" not in keys]
            if missing:
                raise InputError(f"snapshot '{path}' lacks unet.{missing[0]} (and {len(missing) - 1} more): it was made for "
                                 "another model; remove the snapshots/ folder to let VDU make its own.")
            diffs.append({n: f.get_tensor(f"unet.{n}").float() for n in names})
    return diffs


def make_snapshots(adapter: FamilyAdapter, n: int, steps: int, *, lr: float = 1e-5, per_concept: int = 16,
                   batch_size: int = 8, seed: int = 0, concepts: list[str] | None = None,
                   first: int = 0, group: str = "all") -> list[dict[str, torch.Tensor]]:
    """``n`` snapshots for a model that ships none: each an independent continuation of ordinary
    training of the ``group``'s weights (L_simple on captioned data of every concept the model knows, or
    of ``concepts`` for an open-vocabulary model; Adam, ``steps`` steps, its own seed) from the deployed
    weights; returned as float32 differences from them, for the group's parameters (VDU reads no others;
    a full-size UNet trained whole would need ~14 GB more for SD 1.5). Snapshot k (counting from
    ``first``) draws its batches with seed + 1 + k, so asking for more later extends the same list."""
    concepts = adapter.concepts() or list(concepts or [])
    if not concepts:
        raise InputError("this model has no named concepts to continue training on, and ships no snapshots/ for VDU.")
    pool = ConceptPool.captioned(adapter, concepts, per_concept, seed)
    base = dict(adapter.unet.named_parameters())
    diffs = []
    for k in range(first, first + n):
        unet, names = trainable_copy(adapter, group)
        g = torch.Generator().manual_seed(seed + 1 + k)
        opt = torch.optim.Adam([p for p in unet.parameters() if p.requires_grad], lr=lr)
        for _ in range(steps):
            loss = denoising_loss(adapter, unet, *pool.batch(batch_size, g), g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        trained = set(names)
        diffs.append({name: (p.detach() - base[name].float()).cpu() for name, p in unet.named_parameters() if name in trained})
        logger.info("VDU: made snapshot %d/%d (%d steps of continued training)", k + 1, first + n, steps)
    return diffs


def made_snapshots(adapter: FamilyAdapter, n: int, settings: VDUSettings, task: UnlearnTask) -> list[dict[str, torch.Tensor]]:
    """``n`` made snapshots, kept on the adapter so later runs on the same loaded model reuse them
    (keyed by recipe; the made ones depend only on the model, the recipe and the seed)."""
    cache = adapter.__dict__.setdefault("_vdu_snapshots", {})
    concepts = adapter.concepts() or sorted({*task.forget, *task.retain})
    key = (settings.snapshot_steps, settings.snapshot_lr, task.seed, tuple(concepts), settings.group)
    have = cache.get(key, [])
    if len(have) < n:
        logger.info("VDU: %s needs %d more snapshot(s); making them by continued training", adapter.source, n - len(have))
        have = cache[key] = have + make_snapshots(adapter, n - len(have), settings.snapshot_steps, lr=settings.snapshot_lr,
                                                  seed=task.seed, concepts=concepts, first=len(have), group=settings.group)
    return have[:n]


def checkpoint_variance(mu: dict[str, torch.Tensor], diffs: list[dict[str, torch.Tensor]], floor: float) -> dict[str, torch.Tensor]:
    """sigma^2 per weight: the variance (ddof = 0) over {mu, mu + d_1, ..., mu + d_{K-1}}, at least floor^2."""
    out = {}
    for name, m in mu.items():
        m = m.detach().float()
        bad = next((tuple(d[name].shape) for d in diffs if d[name].shape != m.shape), None)
        if bad is not None:
            raise InputError(f"a checkpoint's {name} has shape {bad}, the model's has {tuple(m.shape)}: the checkpoints were "
                             "made for another model; remove the snapshots/ folder to let VDU make its own.")
        stack = torch.stack([m] + [m + d[name].to(m.device) for d in diffs])  # (K, *shape)
        out[name] = stack.var(dim=0, unbiased=False).clamp_min(floor**2)
    return out


def unlearn(adapter: FamilyAdapter, task: UnlearnTask, settings: VDUSettings, ctx: RunContext) -> Edit:
    started = time.perf_counter()
    if not task.forget:
        raise InputError("VDU needs a forget subset: name at least one concept to forget.")
    # 1. the forget subset D_f: the only data VDU sees
    forget = ConceptPool.captioned(adapter, task.forget, settings.forget_size, task.seed)
    unet, names = trainable_copy(adapter, settings.group, settings)
    base = dict(adapter.unet.named_parameters())
    mu = {n: base[n] for n in names}

    # 2. sigma^2 from K checkpoints of the lineage: the shipped snapshots, made ones if too few
    need = settings.num_checkpoints - 1
    diffs = load_snapshots(adapter.source, names, need)
    if len(diffs) < need:
        diffs += [{n: d[n] for n in names} for d in made_snapshots(adapter, need - len(diffs), settings, task)]
    var = checkpoint_variance(mu, diffs, settings.sigma_floor)
    inv_var = [(1.0 / var[n]).to(adapter.device) for n in names]
    mu_list = [mu[n].detach().float() for n in names]
    params = dict(unet.named_parameters())
    theta = [params[n] for n in names]

    # 3. C_t
    weights = elbo_weights(adapter) if settings.weighting == "elbo" else None
    g = torch.Generator().manual_seed(task.seed)

    def loss_fn(step: int) -> Objective:
        # 4. ascend on the (weighted) forget denoising loss, anchored to mu with precision 1 / sigma^2
        extra: dict[str, float] = {}

        def forget_part() -> torch.Tensor:
            l_f = denoising_loss(adapter, unet, *forget.batch(settings.batch_size, g), g, weights=weights)
            extra["forget_loss"] = l_f.item()
            return -(1 - settings.gamma) * l_f

        def anchor_part() -> torch.Tensor:
            stability = stability_term(theta, mu_list, inv_var)
            extra["stability"] = stability.item()
            return settings.gamma * stability

        return Objective(forget_part, anchor_part, extra)

    log = optimise(unet, names, loss_fn, iterations=settings.iterations, lr=settings.lr, ctx=ctx, method="VDU",
                   uam=uam_config(settings), memory=Memory.of(settings))
    return finish(adapter, unet, names, method="vdu", settings=settings, log=log, started=started)
