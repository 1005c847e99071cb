"""The comparison engine: the same seeds through the original and the unlearned model, scored.

It owns the seeds, the batching, classifier-free guidance and the metric calls, so every method is
scored by the same code. Both models start every image from the *same* initial noise x_T (drawn on
CPU from the seed) and run the same deterministic DDIM trajectory, so a difference between the two
images is the edit and nothing else.

Metrics are computed on the raw float images in [0, 1], never on what a browser received:
    forget rate       share of forget-concept samples the evaluator still classifies as that concept
    retain accuracy   share of retained-concept samples the evaluator classifies correctly
    PUL               100 (forget rate before - after) / before  (VDU's percentage of unlearning)
    SSIM, PSNR        unlearned vs original on retained concepts (torchmetrics)
    LPIPS             same pairs (lpips/AlexNet) or "unavailable" with the reason
    evaluator-FID     FID on the evaluator's features, retained-concept samples vs real data

A family whose results are not images from seeds adds a *view* (:class:`ComparisonView`, registered in
``VIEWS``): how a run's comparison is planned, streamed, recorded in the run card and written to the run
folder. The language-model family's view (``compare_lm.TextView``) compares continuations and scores
multiple-choice questions; every other family uses the image comparison below.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from . import metrics as M
from .compare_lm import TextView
from .methods.base import UnlearnTask
from .metrics.clip import clip_score, clip_status
from .models.base import FamilyAdapter


@dataclass(frozen=True)
class ComparisonPlan:
    items: list[tuple[str, str, int]]  # (group "forget" | "retain", prompt, seed)
    num_inference_steps: int
    guidance_scale: float
    batch_size: int = 16
    sampler: str = "ddim"  # "ddim" | "dpm-solver"
    targets: list[str] = field(default_factory=list)  # per item: the concept the evaluator looks for

    def target(self, i: int) -> str:
        return self.targets[i] if self.targets else self.items[i][1]

    @property
    def seeds(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for group, concept, seed in self.items:
            out.setdefault(f"{group}:{concept}", []).append(seed)
        return out


def plan_comparison(adapter: FamilyAdapter, task: UnlearnTask, *, forget_samples: int = 16, retain_samples: int = 4,
                    seed: int = 0, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                    batch_size: int = 16, sampler: str = "ddim", prompts: list[str] | None = None,
                    prompt_samples: int = 2) -> ComparisonPlan:
    """Seeds: forget samples use seed, seed+1, ...; each retained concept gets the next block.

    Forget samples cycle through the adapter's paraphrases of each concept ("a star", "a star shape",
    "a red star", ...), each judged for the concept itself; retained samples use the plain prompt of
    each retained concept. The same seed lists are used for every method and both models.
    """
    items, targets = [], []
    per_forget = max(1, forget_samples // len(task.forget))
    s = seed
    for concept in task.forget:
        paraphrases = adapter.forget_prompts(concept)
        items += [("forget", paraphrases[i % len(paraphrases)], s + i) for i in range(per_forget)]
        targets += [concept] * per_forget
        s += per_forget
    for concept in task.retain:
        items += [("retain", adapter.prompt_for(concept), s + i) for i in range(retain_samples)]
        targets += [concept] * retain_samples
        s += retain_samples
    for prompt in prompts or []:  # the user's own prompts: shown side by side, not scored
        items += [("prompt", prompt, s + i) for i in range(prompt_samples)]
        targets += [prompt] * prompt_samples
        s += prompt_samples
    return ComparisonPlan(
        items=items,
        targets=targets,
        sampler=sampler,
        num_inference_steps=num_inference_steps or adapter.sampling.num_inference_steps,
        guidance_scale=adapter.sampling.guidance_scale if guidance_scale is None else guidance_scale,
        batch_size=batch_size,
    )


@dataclass
class ComparisonState:
    """Everything generated so far; ``metrics`` is recomputed after each batch."""

    plan: ComparisonPlan
    original: list[torch.Tensor] = field(default_factory=list)  # (C, H, W) in [0, 1], CPU
    unlearned: list[torch.Tensor] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: {"original": 0.0, "unlearned": 0.0})
    metrics: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return len(self.original) == len(self.plan.items)

    def indices(self, group: str) -> list[int]:
        return [i for i, (g, _, _) in enumerate(self.plan.items[: len(self.original)]) if g == group]


def generate_plan(adapter: FamilyAdapter, unet: torch.nn.Module, plan: ComparisonPlan) -> tuple[list[torch.Tensor], float]:
    """Every image of the plan from one UNet, in one go (same seeds and sampler as :func:`iter_comparison`);
    returns the images and the seconds it took."""
    images: list[torch.Tensor] = []
    t0 = time.perf_counter()
    for start in range(0, len(plan.items), plan.batch_size):
        batch = plan.items[start : start + plan.batch_size]
        images.extend(adapter.generate([c for _, c, _ in batch], [s for _, _, s in batch], unet=unet,
                                       num_inference_steps=plan.num_inference_steps, guidance_scale=plan.guidance_scale,
                                       sampler=plan.sampler))
    return images, time.perf_counter() - t0


def iter_comparison(adapter: FamilyAdapter, edited_unet: torch.nn.Module, plan: ComparisonPlan,
                    task: UnlearnTask, unlearn_s: float | None = None) -> Iterator[ComparisonState]:
    """Generate batch by batch, yielding the growing state with fresh metrics after each batch."""
    state = ComparisonState(plan)
    for start in range(0, len(plan.items), plan.batch_size):
        batch = plan.items[start : start + plan.batch_size]
        concepts, seeds = [c for _, c, _ in batch], [s for _, _, s in batch]
        for name, unet in (("original", adapter.unet), ("unlearned", edited_unet)):
            t0 = time.perf_counter()
            images = adapter.generate(concepts, seeds, unet=unet, num_inference_steps=plan.num_inference_steps,
                                      guidance_scale=plan.guidance_scale, sampler=plan.sampler)
            state.seconds[name] += time.perf_counter() - t0
            getattr(state, name).extend(images)
        state.metrics = score(adapter, state, task, unlearn_s)
        yield state


def score(adapter: FamilyAdapter, state: ComparisonState, task: UnlearnTask, unlearn_s: float | None = None) -> dict:
    """The metrics dict shown in the UI table and written to metrics.json."""
    out: dict = {}
    plan, n_done = state.plan, len(state.original)
    f_idx, r_idx = state.indices("forget"), state.indices("retain")
    evaluator = getattr(adapter, "evaluator", None)

    def stack(which: str, idx: list[int]) -> torch.Tensor:
        return torch.stack([getattr(state, which)[i] for i in idx])

    judged = True
    for key, idx, want in (("forget_rate", f_idx, "forget"), ("retain_accuracy", r_idx, "retain")):
        if not idx or not judged:
            continue
        targets = [plan.target(i) for i in idx]
        entry = {"n": len(idx), "reference": "evaluator classifier on generated samples"}
        for which in ("original", "unlearned"):
            hits = adapter.recognises(targets, stack(which, idx))
            if hits is None:
                judged = False
                break
            rate = M.rate_with_interval(int(hits.sum()), len(idx))
            entry[which] = rate.value
            entry[f"{which}_ci95"] = [rate.low, rate.high]
            if want == "retain":
                entry.setdefault("per_class", {})[which] = {
                    c: float(hits[[t == c for t in targets]].float().mean()) for c in dict.fromkeys(targets)
                }
        if judged:
            out[key] = entry
    open_vocabulary = adapter.scored_by_clip()
    if not judged:
        entry = {"unavailable": "this model has no evaluator that recognises these concepts"}
        if open_vocabulary:
            status = clip_status()
            entry = {"unavailable": f"CLIP zero-shot recognition needs CLIP weights: {status.reason}", "how_to_enable": status.how_to_enable}
        elif evaluator is None:
            entry = {"unavailable": "this model folder has no evaluator classifier"}
        out["forget_rate"] = out["retain_accuracy"] = entry
    if open_vocabulary and r_idx:
        status = clip_status()
        if status.available:
            prompts = [plan.items[i][1] for i in r_idx]
            out["clip_score"] = {"original": clip_score(stack("original", r_idx), prompts), "unlearned": clip_score(stack("unlearned", r_idx), prompts),
                                 "n": len(r_idx), "compares": "retained-prompt images vs their prompts", "library": "CLIP (transformers), CLIPScore definition"}
        else:
            out["clip_score"] = {"unavailable": status.reason, "how_to_enable": status.how_to_enable}
    if "original" in out.get("forget_rate", {}):
        out["pul"] = M.pul(out["forget_rate"]["original"], out["forget_rate"]["unlearned"])

    if r_idx:
        a, b = stack("unlearned", r_idx), stack("original", r_idx)
        out["ssim"] = {"value": M.ssim(a, b), "n": len(r_idx), "compares": "unlearned vs original, retained concepts", "library": "torchmetrics"}
        out["psnr"] = {"value": M.psnr(a, b), "n": len(r_idx), "compares": "unlearned vs original, retained concepts", "library": "torchmetrics", "cap_db": M.PSNR_CAP_DB}
        status = M.lpips_status()
        if status.available:
            out["lpips"] = {"value": M.lpips_distance(a, b), "n": len(r_idx), "compares": "unlearned vs original, retained concepts", "library": "lpips (AlexNet)"}
        else:
            out["lpips"] = {"unavailable": status.reason, "how_to_enable": status.how_to_enable}
        real = adapter.reference_images(task.retain, n_per=32, seed=12345) if evaluator is not None else None
        if real is not None and len(r_idx) < 2:  # a Gaussian fit needs two samples
            out["evaluator_fid"] = {"unavailable": "needs at least 2 retained-concept samples; ask for more samples"}
        elif real is not None:
            entry = {"n": len(r_idx), "n_real": len(real), "compares": "retained-concept samples vs real data of those concepts",
                     "library": "torchmetrics FID on evaluator features"}
            for which in ("original", "unlearned"):
                entry[which] = M.evaluator_fid(evaluator, real, stack(which, r_idx))
            out["evaluator_fid"] = entry
        else:
            out["evaluator_fid"] = {"unavailable": "needs an evaluator and the model's real data"}
    out["timings"] = {
        "unlearn_s": unlearn_s,
        "sample_s_per_image": {k: v / max(1, n_done) for k, v in state.seconds.items()},
        "images": n_done,
    }
    out["samples"] = {"done": n_done, "total": len(plan.items)}
    return out


# ---- family views ------------------------------------------------------------------------------------

class ComparisonView(Protocol):
    """How a family's runs are compared, for families whose results are not images from seeds.

    The runner calls ``plan`` in ``prepare`` (after the concepts and settings are checked; raise InputError for
    a request the view cannot serve), ``iterate`` after unlearning (states with a ``metrics`` dict, streamed),
    then the run folder records ``card(plan)`` as the run card's "comparison" and lets ``write`` add its files.
    """

    name: str

    def plan(self, adapter: Any, task: UnlearnTask, request: Any, limits: Any) -> Any: ...

    def iterate(self, adapter: Any, edit: Any, plan: Any, task: UnlearnTask, unlearn_s: float | None) -> Iterator[Any]: ...

    def card(self, plan: Any) -> dict: ...

    def write(self, folder: Path, plan: Any, state: Any) -> None: ...


VIEWS: dict[str, ComparisonView] = {"causal-lm": TextView()}  # family -> its view (others: the image comparison)


def view_for(family: str) -> ComparisonView | None:
    """The family's view, or None for the image comparison of this module."""
    return VIEWS.get(family)
