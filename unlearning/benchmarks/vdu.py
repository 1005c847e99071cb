"""VDU's comparison: data-constrained unlearning side by side, and the checkpoint ablation.

    python -m unlearning bench vdu [--model digits] [--forget 3] [--methods vdu,ga,esd,salun]
                                   [--checkpoints 2,3,5] [--iterations 5,10,20] [--set vdu.gamma=0.7]

Every row unlearns the same concept from the same base with the same seed, and its samples come from
the same seeds and initial noise as every other row (the original model's images are made once):

    vdu      VDU with the twin-tuned settings, once per K in --checkpoints (the paper ablates 2, 3, 5)
    ga       gradient ascent on the same forget subset: VDU with gamma = 0 (no anchor), same steps
    esd      ESD, twin-tuned (data-free: it sees no images at all)
    salun    SalUn, twin-tuned, its forget data the same subset (SalUn also sees retained data; VDU does not)

--iterations adds a sweep of VDU (largest K) and ga over those step counts, so the two can be compared
at matched PUL rather than at one step count. Columns (unlearning.compare.score):

    PUL        100 (forget rate before - after) / before
    u-FID      evaluator-FID of the retained concepts' samples against real data without the forget
               concept (the twins' drawing code; features of the model's evaluator, not Inception)
    retain     evaluator accuracy on the retained concepts; "worst" the weakest retained concept
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ..compare import ComparisonState, generate_plan, plan_comparison, score
from ..errors import InputError
from ..methods import get_method
from ..methods.base import RunContext, UnlearnTask
from ..models.base import FamilyAdapter

METHODS = ("vdu", "ga", "esd", "salun")


@dataclass
class Variant:
    label: str
    method: str  # registry name
    settings: dict = field(default_factory=dict)  # overrides on the twin-tuned values


def variants(methods: Sequence[str], checkpoints: Sequence[int], iterations: Sequence[int] = (),
             overrides: dict[str, dict] | None = None, forget_size: int | None = None) -> list[Variant]:
    """The rows to run, in order; ``overrides`` per short name (vdu, ga, esd, salun)."""
    overrides = overrides or {}
    if unknown := [m for m in methods if m not in METHODS]:
        raise InputError(f"unknown method(s) {', '.join(unknown)} for the VDU comparison; choose from {', '.join(METHODS)}.")
    if bad := [k for k in checkpoints if not 2 <= k <= 5]:
        raise InputError(f"checkpoint counts must be 2 to 5 (the final weights + up to 4 snapshots), got {bad}.")
    if any(n < 1 for n in iterations):
        raise InputError("--iterations takes step counts of at least 1.")
    same_subset = {"forget_size": forget_size} if forget_size else {}
    out: list[Variant] = []
    for m in methods:
        if m == "vdu":
            out += [Variant(f"VDU, K = {k}", "vdu", {**same_subset, **overrides.get("vdu", {}), "num_checkpoints": k})
                    for k in checkpoints]
        elif m == "ga":
            out.append(Variant("gradient ascent (VDU, gamma = 0)", "vdu", {**same_subset, **overrides.get("ga", {}), "gamma": 0.0}))
        elif m == "esd":
            out.append(Variant("ESD (data-free)", "esd", dict(overrides.get("esd", {}))))
        else:
            sub = {"data_size": forget_size} if forget_size else {}
            out.append(Variant("SalUn (+ retained data)", "salun", {**sub, **overrides.get("salun", {})}))
    k_max = max(checkpoints, default=5)
    for n in iterations:
        if "vdu" in methods:
            out.append(Variant(f"VDU, K = {k_max}, {n} steps", "vdu",
                               {**same_subset, **overrides.get("vdu", {}), "num_checkpoints": k_max, "iterations": n}))
        if "ga" in methods:
            out.append(Variant(f"gradient ascent, {n} steps", "vdu", {**same_subset, **overrides.get("ga", {}), "gamma": 0.0, "iterations": n}))
    return out


def _summary(metrics: dict, which: str) -> dict:
    fr, ra, fid = metrics.get("forget_rate", {}), metrics.get("retain_accuracy", {}), metrics.get("evaluator_fid", {})
    per_class = ra.get("per_class", {}).get(which, {})
    worst = min(per_class, key=per_class.get) if per_class else None
    return {"forget_rate": fr.get(which), "pul": metrics.get("pul") if which == "unlearned" else None,
            "u_fid": fid.get(which), "retain_accuracy": ra.get(which),
            "worst_retained": None if worst is None else {"concept": worst, "accuracy": per_class[worst]},
            "per_class": per_class, "n_forget": fr.get("n"), "n_retain": ra.get("n")}


def run_comparison(adapter: FamilyAdapter, model_id: str | None, task: UnlearnTask, rows: Sequence[Variant], *,
                   forget_samples: int = 32, retain_samples: int = 8, ctx: RunContext | None = None) -> Iterator[dict]:
    """Yield the original model's row, then one row per variant; all on the same sample seeds."""
    ctx = ctx or RunContext()
    plan = plan_comparison(adapter, task, forget_samples=forget_samples, retain_samples=retain_samples, seed=task.seed)

    original, t_orig = generate_plan(adapter, adapter.unet, plan)
    first = True
    for variant in rows:
        spec = get_method(variant.method)
        settings = spec.settings(model_id, variant.settings)
        t0 = time.perf_counter()
        edit = spec.unlearn(adapter, task, settings, ctx)
        unlearn_s = time.perf_counter() - t0
        images, t = generate_plan(adapter, edit.apply_to_copy(adapter.unet).eval(), plan)
        state = ComparisonState(plan, original=original, unlearned=images, seconds={"original": t_orig, "unlearned": t})
        metrics = score(adapter, state, task, unlearn_s)
        if first:
            yield {"label": "original model", "method": None, "settings": {}, **_summary(metrics, "original"), "unlearn_s": None}
            first = False
        yield {"label": variant.label, "method": spec.name, "settings": dataclasses.asdict(settings),
               **_summary(metrics, "unlearned"), "unlearn_s": unlearn_s}


def format_table(rows: Sequence[dict]) -> str:
    """Markdown: PUL and forget rate (forgetting), u-FID and retain accuracy (what is kept), time."""
    def num(v, fmt: str) -> str:
        return "n/a" if not isinstance(v, (int, float)) else fmt.format(v)

    lines = ["| model | forget rate | PUL ↑ | u-FID ↓ | retain acc. ↑ | worst retained | unlearning (s) |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        worst = r.get("worst_retained")
        worst = "n/a" if not worst else f"{worst['concept']} {worst['accuracy']:.2f}"
        lines.append(f"| {r['label']} | {num(r['forget_rate'], '{:.2f}')} | {num(r['pul'], '{:.0f}')} | {num(r['u_fid'], '{:.1f}')} | "
                     f"{num(r['retain_accuracy'], '{:.2f}')} | {worst} | "
                     f"{num(r['unlearn_s'], '{:.1f}')} |")
    return "\n".join(lines)
