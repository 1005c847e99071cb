"""The relearning test: fine-tune an unlearned model on benign data, the way a downstream user would.

Li et al., "Towards Resilient Safety-driven Unlearning for Diffusion Models against Downstream
Fine-tuning" (ResAlign, NeurIPS 2025, arXiv 2507.16302), evaluation protocol: an unlearned UNet is
fine-tuned (full UNet, AdamW, lr 1e-5, batch 1 x gradient accumulation 4, 200 steps) on data that
does *not* contain the erased concept, then the forget rate is measured again. ESD-style edits tend
to relapse: the concept comes back although it was never shown.

Notation:
    theta_0        the base model (the adapter's cached UNet; never modified here)
    theta_u        theta_0 + edit: the unlearned model the downstream user starts from
    D_b            benign data: images of the retained concepts, each with its own label
    theta_ft       theta_u after `steps` AdamW steps on L_simple(D_b)  (LoRA: theta_u + B A, merged)
    relearn gap    forget rate(theta_ft) - forget rate(theta_u)

Any edit can be put through it: :func:`relearn` returns the fine-tuned weights as an Edit relative
to theta_0, and :func:`relearn_report` scores theta_0, theta_u and theta_ft on the same seeds with
the comparison engine's own metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import torch

from ..compare import ComparisonState, generate_plan, plan_comparison, score
from ..edit import CONDITIONER_PREFIXES, Edit
from ..errors import DivergedError, InputError
from ..methods.base import ConceptPool, RunContext, UnlearnTask, build_settings, denoising_loss, setting
from ..methods.resalign import LORA_TARGETS, inject_lora  # noqa: F401 (LORA_TARGETS: re-exported)
from ..models.base import FamilyAdapter

log = logging.getLogger(__name__)



@dataclass
class RelearnSettings:
    """A downstream user's fine-tune (ResAlign's relearning test; defaults are the paper's SD 1.4 values)."""

    mode: str = setting("full", "what the user trains: full = every UNet weight, lora = rank-r LoRA on "
                        "to_q/to_k/to_v/to_out.0 (peft), merged at the end", choices=("full", "lora"))
    lr: float = setting(1e-5, "AdamW learning rate (paper 1e-5)", low=0.0, low_inclusive=False)
    steps: int = setting(200, "optimiser steps (paper 200)", low=1, high=100_000)
    batch_size: int = setting(1, "samples per micro-batch (paper 1)", low=1, high=512)
    accumulation: int = setting(4, "micro-batches accumulated per optimiser step (paper 4)", low=1, high=256)
    weight_decay: float = setting(1e-2, "AdamW weight decay (torch's default)", low=0.0)
    rank: int = setting(4, "LoRA rank r (mode = lora)", low=1, high=256)
    lora_alpha: float = setting(4.0, "LoRA alpha; the update is scaled by alpha / r (mode = lora)", low=0.0, low_inclusive=False)
    data_size: int = setting(64, "benign samples drawn once per concept", low=1, high=100_000)
    benign: str = setting("", "benign concepts, comma-separated (empty: every retained concept); never a forgotten one")
    forget_shots: int = setting(0, "images of each forgotten concept mixed into the fine-tune data, with the concept's own "
                                "label: 0 = benign (the paper's test); k > 0 = the few-shot relearning attack, a stronger "
                                "adversary who holds k examples of the concept", low=0, high=10_000)

    def benign_concepts(self, task: UnlearnTask) -> list[str]:
        """The concepts the user fine-tunes on; refuses any concept the edit was meant to forget."""
        chosen = [c.strip() for c in self.benign.split(",") if c.strip()] or list(task.retain)
        if leaked := sorted(set(chosen) & set(task.forget)):
            raise InputError(f"benign data may not contain the forgotten concept(s) {', '.join(leaked)}; "
                             "remove them from the 'benign' setting.")
        if not chosen:
            raise InputError("no benign concepts to fine-tune on; name some in the 'benign' setting.")
        return chosen


# Values tuned for the embedded twins so the test runs in well under a minute on a CPU. On digits, lr 1e-3 x 80
# steps (full) already damages the retained digits (evaluator-FID 7.4 -> 39), which no downstream user would keep.
TUNED: dict[str, dict] = {
    "digits": {"lr": 5e-4, "steps": 40, "batch_size": 16, "accumulation": 1, "data_size": 64},
}


def relearn_settings(model_id: str | None, overrides: dict | None = None) -> RelearnSettings:
    """Paper defaults, then the twin's tuned values, then the user's overrides (validated)."""
    return build_settings(RelearnSettings, TUNED.get(model_id or "", {}), overrides or {})


@dataclass
class RelearnResult:
    edit: Edit  # theta_ft as new values relative to theta_0 (LoRA merged)
    loss_log: list[dict] = field(default_factory=list)  # [{"step": i, "loss": float}]
    timings: dict = field(default_factory=dict)  # {"relearn_s": ...}
    benign: list[str] = field(default_factory=list)  # the concepts fine-tuned on


# ---- the fine-tune -------------------------------------------------------------------------------

def unlearned_copy(adapter: FamilyAdapter, edit: Edit) -> torch.nn.Module:
    """theta_u's UNet: a float32 copy of the base with the edit's UNet part applied; the cached base is not touched.
    (An edit of the text encoder, AdvUnlearn's, reaches the fine-tune through ``adapter.edited(edit)``'s conditions.)"""
    unet = adapter.frozen_copy_for_training()
    edit, _ = edit.split(adapter.conditioner_name)
    edit.check_compatible(unet)
    own = dict(unet.named_parameters())
    with torch.no_grad():
        for name, value in edit.params.items():
            own[name].copy_(value.to(own[name].device, own[name].dtype))
    return unet


def _with_lora(unet: torch.nn.Module, settings: RelearnSettings) -> tuple[torch.nn.Module, dict[str, torch.nn.Module]]:
    """A copy of ``unet`` with LoRA adapters injected by peft; returns it and its LoRA layers by module name."""
    return inject_lora(unet, settings.rank, settings.lora_alpha)


def relearn(adapter: FamilyAdapter, edit: Edit, task: UnlearnTask, settings: RelearnSettings,
            ctx: RunContext | None = None) -> RelearnResult:
    """Fine-tune theta_u on benign data only; return theta_ft as an Edit relative to the base."""
    ctx = ctx or RunContext()
    started = time.perf_counter()
    base = adapter
    adapter = adapter.conditioned_by(edit)
    # 1. benign data: retained concepts with their own labels, never the forgotten one (conditioned by theta_u's encoder)
    benign = settings.benign_concepts(task)
    benign = [adapter.validate_concept(c) for c in benign] if adapter.concepts() else benign
    pool = ConceptPool.build(adapter, benign, settings.data_size, task.seed + 101)
    if settings.forget_shots:  # few-shot relearning: k examples of each forgotten concept join the data
        shots = ConceptPool.build(adapter, list(task.forget), settings.forget_shots, task.seed + 303)
        pool = ConceptPool(torch.cat([pool.x0, shots.x0]), torch.cat([pool.cond, shots.cond]))
    # 2. the user's starting point theta_u, and what they train
    unet = unlearned_copy(adapter, edit)
    if settings.mode == "lora":
        trained, layers = _with_lora(unet, settings)
        params = [p for n, p in trained.named_parameters() if "lora_" in n]
    else:
        trained, layers = unet, {}
        params = list(trained.parameters())
    for p in params:
        p.requires_grad_(True)
    trained.train()
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    g = torch.Generator().manual_seed(task.seed + 202)
    # 3. AdamW on L_simple(D_b), `accumulation` micro-batches per step
    loss_log: list[dict] = []
    for step in range(settings.steps):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(settings.accumulation):
            loss = denoising_loss(adapter, trained, *pool.batch(settings.batch_size, g), g) / settings.accumulation
            if not torch.isfinite(loss):
                raise DivergedError(f"relearning: the loss became {loss.item()} at step {step + 1}; lower the learning "
                                    f"rate (now {settings.lr:g}). The base model and the edit are unchanged.")
            loss.backward()
            total += float(loss.item())
        opt.step()
        loss_log.append({"step": step + 1, "loss": total})
        ctx.report(step + 1, settings.steps, total)
    # 4. LoRA: merge W <- W + (alpha / r) B A into theta_u (our own copy), finite-checked first
    if layers:
        own = dict(unet.named_parameters())
        with torch.no_grad():
            for name, layer in layers.items():
                merged = own[f"{name}.weight"] + layer.get_delta_weight("default")
                if not torch.isfinite(merged).all():
                    raise DivergedError(f"relearning produced non-finite LoRA weights in '{name}'; lower the learning rate.")
                own[f"{name}.weight"].copy_(merged)
    # 5. theta_ft relative to the base (includes the original edit's changes)
    result = Edit.from_trained(
        base.unet, unet, [n for n, _ in unet.named_parameters()],
        method=f"{edit.method}+relearn", settings={"relearn": dataclasses.asdict(settings), "edit": edit.settings},
        loss_log=loss_log, timings={"relearn_s": time.perf_counter() - started}, base=edit.base,
    )
    result.sampling = dict(edit.sampling)  # a sampling-time edit (SLD) still guides the fine-tuned weights
    conditioner = {n: v for n, v in edit.params.items() if n.startswith(CONDITIONER_PREFIXES)}  # kept as the user got it
    result.params.update(conditioner)
    return RelearnResult(edit=result, loss_log=loss_log, timings=dict(result.timings), benign=benign)


# ---- the report ----------------------------------------------------------------------------------

def relearn_report(adapter: FamilyAdapter, task: UnlearnTask, edit: Edit, relearned_edit: Edit,
                   forget_samples: int = 16, seed: int = 0, *, retain_samples: int = 4,
                   num_inference_steps: int | None = None, guidance_scale: float | None = None) -> dict:
    """Forget rate and retain accuracy of theta_0, theta_u and theta_ft on the same seeds.

    The images come from the same seeds and DDIM sampler as a run's comparison; the numbers come
    from :func:`unlearning.compare.score`, so they match what a run reports.
    """
    plan = plan_comparison(adapter, task, forget_samples=forget_samples, retain_samples=retain_samples, seed=seed,
                           num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
    original, t_orig = generate_plan(adapter, adapter.unet, plan)
    metrics = {}
    for key, e in (("unlearned", edit), ("relearned", relearned_edit)):
        images, t = generate_plan(*adapter.edited(e), plan)
        state = ComparisonState(plan, original=original, unlearned=images, seconds={"original": t_orig, "unlearned": t})
        metrics[key] = score(adapter, state, task)

    def row(label: str, src: str, which: str) -> dict:
        out: dict = {"model": label}
        for key in ("forget_rate", "retain_accuracy"):
            entry = metrics[src].get(key, {})
            out[key] = entry.get(which)
            out[f"{key}_ci95"] = entry.get(f"{which}_ci95")
        return out

    rows = [row("original", "unlearned", "original"), row("after unlearning", "unlearned", "unlearned"),
            row("after fine-tune", "relearned", "unlearned")]
    f_u, f_ft = rows[1]["forget_rate"], rows[2]["forget_rate"]
    return {
        "rows": rows,
        "relearn_gap": None if f_u is None or f_ft is None else f_ft - f_u,
        "n_forget": metrics["unlearned"].get("forget_rate", {}).get("n"),
        "seeds": plan.seeds,
        "num_inference_steps": plan.num_inference_steps,
        "guidance_scale": plan.guidance_scale,
        "evaluator_fid": {"after unlearning": metrics["unlearned"].get("evaluator_fid"),
                          "after fine-tune": metrics["relearned"].get("evaluator_fid")},
    }


def format_table(report: dict) -> str:
    """The three rows as plain text (the CLI prints it)."""
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:5.1f}%"

    lines = [f"{'':18} {'forget rate':>12} {'retain acc':>11}"]
    lines += [f"{r['model']:18} {pct(r['forget_rate']):>12} {pct(r['retain_accuracy']):>11}" for r in report["rows"]]
    gap = report.get("relearn_gap")
    lines.append(f"relearn gap (after fine-tune - after unlearning): {'n/a' if gap is None else f'{100 * gap:+.1f} points'}")
    return "\n".join(lines)
