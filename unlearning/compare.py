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
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from . import metrics as M
from .methods.base import UnlearnTask
from .models.base import FamilyAdapter


@dataclass(frozen=True)
class ComparisonPlan:
    items: list[tuple[str, str, int]]  # (group "forget" | "retain", concept, seed)
    num_inference_steps: int
    guidance_scale: float
    batch_size: int = 16

    @property
    def seeds(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for group, concept, seed in self.items:
            out.setdefault(f"{group}:{concept}", []).append(seed)
        return out


def plan_comparison(adapter: FamilyAdapter, task: UnlearnTask, *, forget_samples: int = 16, retain_samples: int = 4,
                    seed: int = 0, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                    batch_size: int = 16) -> ComparisonPlan:
    """Seeds: forget samples use seed, seed+1, ...; each retained concept gets the next block.

    The same seed lists are used for every method and both models, so runs are comparable.
    """
    items = []
    per_forget = max(1, forget_samples // len(task.forget))
    s = seed
    for concept in task.forget:
        items += [("forget", concept, s + i) for i in range(per_forget)]
        s += per_forget
    for concept in task.retain:
        items += [("retain", concept, s + i) for i in range(retain_samples)]
        s += retain_samples
    return ComparisonPlan(
        items=items,
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
                                      guidance_scale=plan.guidance_scale)
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
    names = adapter.concepts()

    def stack(which: str, idx: list[int]) -> torch.Tensor:
        return torch.stack([getattr(state, which)[i] for i in idx])

    if evaluator is not None:
        with torch.no_grad():
            for key, idx, want in (("forget_rate", f_idx, "forget"), ("retain_accuracy", r_idx, "retain")):
                if not idx:
                    continue
                target = torch.tensor([names.index(plan.items[i][1]) for i in idx])
                entry = {"n": len(idx), "reference": "evaluator classifier on generated samples"}
                for which in ("original", "unlearned"):
                    pred = evaluator(stack(which, idx).to(evaluator.device)).argmax(1).cpu()
                    hits = int((pred == target).sum())
                    rate = M.rate_with_interval(hits, len(idx))
                    entry[which] = rate.value
                    entry[f"{which}_ci95"] = [rate.low, rate.high]
                    if want == "retain":
                        entry.setdefault("per_class", {})[which] = {
                            c: float((pred[target == names.index(c)] == names.index(c)).float().mean())
                            for c in task.retain if (target == names.index(c)).any()
                        }
                out[key] = entry
        if "forget_rate" in out:
            out["pul"] = M.pul(out["forget_rate"]["original"], out["forget_rate"]["unlearned"])
    else:
        out["forget_rate"] = out["retain_accuracy"] = {"unavailable": "this model folder has no evaluator classifier"}

    if r_idx:
        a, b = stack("unlearned", r_idx), stack("original", r_idx)
        out["ssim"] = {"value": M.ssim(a, b), "n": len(r_idx), "compares": "unlearned vs original, retained concepts", "library": "torchmetrics"}
        out["psnr"] = {"value": M.psnr(a, b), "n": len(r_idx), "compares": "unlearned vs original, retained concepts", "library": "torchmetrics", "cap_db": M.PSNR_CAP_DB}
        status = M.lpips_status()
        if status.available:
            out["lpips"] = {"value": M.lpips_distance(a, b), "n": len(r_idx), "compares": "unlearned vs original, retained concepts", "library": "lpips (AlexNet)"}
        else:
            out["lpips"] = {"unavailable": status.reason, "how_to_enable": status.how_to_enable}
        real = adapter.real_dataset() if hasattr(adapter, "real_dataset") else None
        if evaluator is not None and real is not None:
            images, labels = real
            keep = torch.isin(labels, torch.tensor([names.index(c) for c in task.retain]))
            entry = {"n": len(r_idx), "n_real": int(keep.sum()), "compares": "retained-concept samples vs real data of those concepts",
                     "library": "torchmetrics FID on evaluator features"}
            for which in ("original", "unlearned"):
                entry[which] = M.evaluator_fid(evaluator, images[keep], stack(which, r_idx))
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
