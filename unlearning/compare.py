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

The novel-view (Zero123) view of the same engine: a concept is an input view and an item of the plan is one
target view of it (its delta azimuth in ``plan.azimuths``); every view of an input starts from its seed's noise,
so original and unlearned views differ by the edit alone. The same forget rate / retain accuracy (the
evaluator's shape head), PUL and SSIM / PSNR / LPIPS of retained views apply; on top (:func:`view_metrics`):
    ground truth      forget views vs the override object's renders (success = closer to the override) and vs
                      the forget object's own; remain views vs their own (SSIM, PSNR, LPIPS, evaluator shape share)
    override rate     share of forget views the evaluator calls the override's shape
    evaluator-FID     remain views vs their ground-truth renders
    sampling          (``plan.sampling_skips``) seconds per view with timestep skipping on the unlearned model, and
                      the speedup over skip 0 measured in the same run, with the quality at each skip
A family whose results are not images from seeds adds a *view* (:class:`ComparisonView`, registered in
``VIEWS``): how a run's comparison is planned, streamed, recorded in the run card and written to the run
folder. The language-model family's view (``compare_lm.TextView``) compares continuations and scores
multiple-choice questions; every other family uses the image comparison below.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from . import metrics as M
from .compare_lm import TextView
from .methods.base import UnlearnTask
from .metrics.clip import clip_score, clip_status
from .models.base import FamilyAdapter
from .models.view_sampling import PAPER_SAMPLING_SPEEDUP


@dataclass(frozen=True)
class ComparisonPlan:
    items: list[tuple[str, str, int]]  # (group "forget" | "retain", prompt, seed)
    num_inference_steps: int
    guidance_scale: float
    batch_size: int = 16
    sampler: str = "ddim"  # "ddim" | "dpm-solver"
    targets: list[str] = field(default_factory=list)  # per item: the concept the evaluator looks for
    azimuths: list[float] = field(default_factory=list)  # novel-view: per item, the delta azimuth of its view
    input_polar: float | None = None  # novel-view: the input views' polar angle (degrees)
    sampling_skips: tuple[int, ...] = ()  # novel-view: time sampling at these skips on the unlearned model
    skip_refs: int = 4  # ... with this many reference views

    def target(self, i: int) -> str:
        return self.targets[i] if self.targets else self.items[i][1]

    def generate_kwargs(self, idx: Sequence[int]) -> dict:
        """What a family's ``generate`` needs beyond concepts and seeds for items ``idx`` (views: their azimuths)."""
        if not self.azimuths:
            return {}
        return {"azimuths": [self.azimuths[i] for i in idx], "input_polar": self.input_polar}

    @property
    def seeds(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for group, concept, seed in self.items:
            out.setdefault(f"{group}:{concept}", []).append(seed)
        return out


def plan_comparison(adapter: FamilyAdapter, task: UnlearnTask, *, forget_samples: int = 16, retain_samples: int = 4,
                    seed: int = 0, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                    batch_size: int = 16, sampler: str = "ddim", prompts: list[str] | None = None,
                    prompt_samples: int = 2, sampling_skips: Sequence[int] = (), skip_refs: int = 4) -> ComparisonPlan:
    """Seeds: forget samples use seed, seed+1, ...; each retained concept gets the next block.

    Forget samples cycle through the adapter's paraphrases of each concept ("a star", "a star shape",
    "a red star", ...), each judged for the concept itself; retained samples use the plain prompt of
    each retained concept. The same seed lists are used for every method and both models.
    A novel-view model gets a view plan instead (:func:`plan_views`).
    """
    if adapter.comparison_azimuths() is not None:
        return plan_views(adapter, task, forget_samples=forget_samples, retain_samples=retain_samples, seed=seed,
                          num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, sampler=sampler,
                          sampling_skips=sampling_skips, skip_refs=skip_refs)
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


def plan_views(adapter: FamilyAdapter, task: UnlearnTask, *, forget_samples: int = 16, retain_samples: int = 4, seed: int = 0,
               num_inference_steps: int | None = None, guidance_scale: float | None = None, sampler: str = "ddim",
               sampling_skips: Sequence[int] = (), skip_refs: int = 4) -> ComparisonPlan:
    """Every input (forget objects, then remain objects) seen from the adapter's comparison azimuths, once per seed:
    ceil(samples / views) seeds (at least one), the same seeds seed, seed+1, ... for every input, so every row of
    views is comparable. One batch is one input at one seed. What the evaluator looks for: in a forget view the
    forget object's shape (still drawn?), in a remain view the whole object (shape and colour: drawn correctly?)."""
    azimuths = adapter.comparison_azimuths()
    items, targets, poses = [], [], []
    for group, concepts, samples in (("forget", task.forget, forget_samples), ("retain", task.retain, retain_samples)):
        for concept in concepts:
            target = adapter.shape_of(concept) if group == "forget" else concept
            for k in range(max(1, -(-samples // len(azimuths)))):
                items += [(group, concept, seed + k)] * len(azimuths)
                targets += [target] * len(azimuths)
                poses += azimuths
    return ComparisonPlan(
        items=items, targets=targets, azimuths=poses, input_polar=task.input_polar, sampler=sampler,
        num_inference_steps=num_inference_steps or adapter.sampling.num_inference_steps,
        guidance_scale=adapter.sampling.guidance_scale if guidance_scale is None else guidance_scale,
        batch_size=len(azimuths), sampling_skips=tuple(sampling_skips), skip_refs=skip_refs,
    )


@dataclass
class ComparisonState:
    """Everything generated so far; ``metrics`` is recomputed after each batch."""

    plan: ComparisonPlan
    original: list[torch.Tensor] = field(default_factory=list)  # (C, H, W) in [0, 1], CPU
    unlearned: list[torch.Tensor] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: {"original": 0.0, "unlearned": 0.0})
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # a family view's own results (views: ground truth, the sampling table)
    real_fid: M.EvaluatorFID | None = None  # evaluator-FID's real side, computed once per comparison

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
        images.extend(_generate(adapter, unet, plan, start))
    return images, time.perf_counter() - t0


def _generate(adapter: FamilyAdapter, unet: torch.nn.Module, plan: ComparisonPlan, start: int) -> torch.Tensor:
    """The images of the plan's batch starting at item ``start``, from one UNet (``adapter``: the model's conditioning,
    an edited one where the edit changed the text encoder)."""
    batch = plan.items[start : start + plan.batch_size]
    return adapter.generate([c for _, c, _ in batch], [s for _, _, s in batch], unet=unet,
                            num_inference_steps=plan.num_inference_steps, guidance_scale=plan.guidance_scale,
                            sampler=plan.sampler, **plan.generate_kwargs(range(start, start + len(batch))))


def iter_comparison(adapter: FamilyAdapter, edited_unet: torch.nn.Module, plan: ComparisonPlan,
                    task: UnlearnTask, unlearn_s: float | None = None, method_timings: dict | None = None,
                    edited_adapter: FamilyAdapter | None = None) -> Iterator[ComparisonState]:
    """Generate batch by batch, yielding the growing state with fresh metrics after each batch (and, for a view
    plan with ``sampling_skips``, once more with the sampling table). ``method_timings``: the Edit's timings,
    recorded beside the sampling times. ``edited_adapter``: the unlearned model's conditioning where the edit
    changed the text encoder (``adapter.edited(edit)``); default ``adapter``."""
    state = ComparisonState(plan)
    for start in range(0, len(plan.items), plan.batch_size):
        for name, model, unet in (("original", adapter, adapter.unet), ("unlearned", edited_adapter or adapter, edited_unet)):
            t0 = time.perf_counter()
            images = _generate(model, unet, plan, start)
            state.seconds[name] += time.perf_counter() - t0
            getattr(state, name).extend(images)
        state.metrics = score(adapter, state, task, unlearn_s, method_timings)
        yield state
    if plan.sampling_skips:
        state.extra["sampling"] = sampling_table(adapter, edited_unet, plan, task)
        state.metrics = score(adapter, state, task, unlearn_s, method_timings)
        yield state


def score(adapter: FamilyAdapter, state: ComparisonState, task: UnlearnTask, unlearn_s: float | None = None,
          method_timings: dict | None = None) -> dict:
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
        if state.real_fid is None and evaluator is not None and not plan.azimuths:
            real = adapter.reference_images(task.retain, n_per=32, seed=12345)
            state.real_fid = M.EvaluatorFID(evaluator, real) if real is not None else None
        if plan.azimuths:
            pass  # views: evaluator-FID against their ground-truth renders (view_metrics)
        elif state.real_fid is not None and len(r_idx) < 2:  # a Gaussian fit needs two samples
            out["evaluator_fid"] = {"unavailable": "needs at least 2 retained-concept samples; ask for more samples"}
        elif state.real_fid is not None:
            entry = {"n": len(r_idx), "n_real": state.real_fid.n_real, "compares": "retained-concept samples vs real data of those "
                     "concepts", "library": "torchmetrics FID on evaluator features"}
            for which in ("original", "unlearned"):
                entry[which] = state.real_fid(stack(which, r_idx))
            out["evaluator_fid"] = entry
        else:
            out["evaluator_fid"] = {"unavailable": "needs an evaluator and the model's real data"}
    if plan.azimuths:
        out.update(view_metrics(adapter, state, task))
    out["timings"] = {
        "unlearn_s": unlearn_s,
        "sample_s_per_image": {k: v / max(1, n_done) for k, v in state.seconds.items()},
        "images": n_done,
        **({"method": dict(method_timings)} if set(method_timings or {}) - {"unlearn_s"} else {}),  # e.g. skip3d's speedup
        "threads": torch.get_num_threads(),  # CPU threads torch used: timings mean little without it
    }
    if "sampling" in state.extra:
        out["sampling"] = state.extra["sampling"]
    out["samples"] = {"done": n_done, "total": len(plan.items)}
    return out


# ---- the novel-view view ----------------------------------------------------------------------------

def _truth(adapter, state: ComparisonState, concept: str | None, idx: list[int]) -> torch.Tensor | None:
    """Ground-truth renders of ``concept`` at the azimuths of items ``idx`` (cached in the state); None without one."""
    if concept is None:
        return None
    cache = state.extra.setdefault("truth", {})
    plan = state.plan
    missing = sorted({plan.azimuths[i] for i in idx} - {a for c, a in cache if c == concept})
    if missing:
        renders = adapter.ground_truth(concept, plan.input_polar, missing)
        for k, a in enumerate(missing):
            cache[(concept, a)] = None if renders is None else renders[k]
    views = [cache[(concept, plan.azimuths[i])] for i in idx]
    return None if any(v is None for v in views) else torch.stack(views)


def _pair_row(adapter, views: torch.Tensor, reference: torch.Tensor, judged_as: str | None) -> dict:
    """SSIM, PSNR, LPIPS (None when unavailable) of views vs a reference, and the share the evaluator calls ``judged_as``
    (a shape)."""
    row = {"ssim": M.ssim(views, reference), "psnr": M.psnr(views, reference), "n": len(views)}
    try:
        row["lpips"] = M.lpips_distance(views, reference)
    except M.MetricUnavailable:
        row["lpips"] = None
    hits = adapter.recognises([judged_as] * len(views), views) if judged_as is not None else None
    row["shape_rate"] = None if hits is None else float(hits.float().mean())
    return row


def view_metrics(adapter, state: ComparisonState, task: UnlearnTask) -> dict:
    """The novel-view additions to :func:`score`: the ground-truth table, the override rate, evaluator-FID of the
    remain views vs their renders."""
    from .models.novel_view import concept_label

    out: dict = {}
    plan, n_done = state.plan, len(state.original)
    rows = []
    inputs = [("forget", c, "forget" if len(task.forget) == 1 else f"forget {k + 1}") for k, c in enumerate(task.forget)]
    inputs += [("retain", c, f"remain {k + 1}") for k, c in enumerate(task.retain)]
    pooled: dict[str, list[torch.Tensor]] = {"original": [], "unlearned": [], "truth": []}
    for group, concept, label in inputs:
        idx = [i for i in range(n_done) if plan.items[i][:2] == (group, concept)]
        if not idx:
            continue
        own = _truth(adapter, state, concept, idx)
        override = task.anchor_of(concept) if group == "forget" else None
        override_truth = _truth(adapter, state, override, idx)
        for which in ("original", "unlearned"):
            views = torch.stack([getattr(state, which)[i] for i in idx])
            base = {"views": label, "object": concept_label(concept), "model": which}
            if override_truth is not None:
                rows.append({**base, "against": f"override ({concept_label(override)})",
                             **_pair_row(adapter, views, override_truth, adapter.shape_of(override))})
            if own is not None:
                rows.append({**base, "against": f"own ({concept_label(concept)})",
                             **_pair_row(adapter, views, own, adapter.shape_of(concept))})
                if group == "retain":
                    pooled[which].append(views)
            elif which == "unlearned":
                original = torch.stack([state.original[i] for i in idx])
                rows.append({**base, "against": "original model's views (no ground truth for an image)",
                             **_pair_row(adapter, views, original, None)})
        if own is not None and group == "retain":
            pooled["truth"].append(own)
        if override is not None and group == "forget" and override_truth is not None:
            hits = {w: adapter.recognises([adapter.shape_of(override)] * len(idx), torch.stack([getattr(state, w)[i] for i in idx]))
                    for w in ("original", "unlearned")}
            if all(h is not None for h in hits.values()):
                entry = out.setdefault("override_rate", {"n": 0, "reference": "evaluator's shape head: forget views drawn "
                                                         "with the override's shape (higher = re-targeted)", "hits": {}})
                entry["n"] += len(idx)
                for w, h in hits.items():
                    entry["hits"][w] = entry["hits"].get(w, 0) + int(h.sum())
    if "override_rate" in out:
        entry = out["override_rate"]
        for w, k in entry.pop("hits").items():
            rate = M.rate_with_interval(k, entry["n"])
            entry[w], entry[f"{w}_ci95"] = rate.value, [rate.low, rate.high]
    out["ground_truth"] = {"rows": rows, "input_polar": plan.input_polar, "azimuths": sorted(set(plan.azimuths)),
                           "lpips": "available" if M.lpips_status().available else M.lpips_status().reason}
    evaluator = getattr(adapter, "evaluator", None)
    truth = torch.cat(pooled["truth"]) if pooled["truth"] else None
    if evaluator is None or truth is None:
        out["evaluator_fid"] = {"unavailable": "needs an evaluator and ground-truth renders of the remain objects"}
    elif len(truth) < 2:
        out["evaluator_fid"] = {"unavailable": "needs at least 2 remain views; ask for more samples"}
    else:
        out["evaluator_fid"] = {"n": len(truth), "n_real": len(truth), "compares": "remain views vs their ground-truth renders",
                                "library": "torchmetrics FID on evaluator features",
                                **{w: M.evaluator_fid(evaluator, truth, torch.cat(pooled[w])) for w in ("original", "unlearned")}}
    return out


def sampling_table(adapter, unet: torch.nn.Module, plan: ComparisonPlan, task: UnlearnTask,
                   azimuths: Sequence[float] | None = None) -> list[dict]:
    """Seconds per view with timestep skipping at each of ``plan.sampling_skips`` (skips at or past the plan's steps
    are left out), on ``unet``, every input seen from ``azimuths`` (default: the comparison azimuths) at the plan's
    first seed, timed in this process; speedup = skip 0's seconds / this skip's. Quality of the pooled views vs ground
    truth (forget views vs the override's renders, a blank view for an erasure; remain views vs their own) where
    renders exist."""
    from .models.novel_view import BLANK

    azimuths = list(azimuths) if azimuths is not None else adapter.comparison_azimuths()
    seed = plan.items[0][2]
    inputs = [*task.forget, *task.retain]
    targets = [adapter.ground_truth(task.anchor_of(c) or BLANK, plan.input_polar, azimuths) for c in task.forget]
    targets += [adapter.ground_truth(c, plan.input_polar, azimuths) for c in task.retain]
    truth = torch.cat(targets) if all(t is not None for t in targets) else None
    evaluator = getattr(adapter, "evaluator", None)
    rows = []
    for skip in plan.sampling_skips:
        if skip >= plan.num_inference_steps:
            continue
        seconds, evals, pooled = 0.0, 0, []
        for concept in inputs:
            image = adapter.input_view(concept, plan.input_polar)[0]
            skips = adapter.skip_plan(image, azimuths, n_ref=min(plan.skip_refs, len(azimuths)), skip=skip) if skip > 0 else None
            views, info = adapter.sample_views(unet, image, azimuths, steps=plan.num_inference_steps, guidance=plan.guidance_scale,
                                               seed=seed, plan=skips)
            seconds += info["seconds"]
            evals += info["unet_evals"]
            pooled.append(views)
        row = {"skip": skip, "seconds_per_view": seconds / (len(pooled) * len(azimuths)), "unet_evals": evals}
        if truth is not None:
            gen = torch.cat(pooled)
            row.update(ssim=M.ssim(gen, truth), psnr=M.psnr(gen, truth))
            if evaluator is not None:
                row["evaluator_fid"] = M.evaluator_fid(evaluator, truth, gen)
        rows.append(row)
    base = next((r for r in rows if r["skip"] == 0), None)
    for row in rows:
        row["speedup"] = base["seconds_per_view"] / row["seconds_per_view"] if base else None
        row["paper_speedup"] = PAPER_SAMPLING_SPEEDUP.get(row["skip"]) if plan.skip_refs == 4 else None
    return rows
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
