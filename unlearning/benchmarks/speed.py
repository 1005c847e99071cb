"""Fast paths, measured side by side in one run: ESD's cached trajectories and the app's first press.

    python -m unlearning bench speed [--parts esd,press] [--models digits,shapes-sd] [--forget-samples 64]
                                     [--retain-samples 8] [--out bench/results/speed.json]

esd      per model, three ESD runs on the same concept (digits "3", shapes-sd "star"; the cached values were
         tuned on held-out concepts, bench/tune_esd_cached.py) from the same seed, then every edit through the
         same comparison seeds:
             reference, old values   the twin-tuned values before cached trajectories (trajectory=reference)
             reference, same values  the cached row's settings with trajectory=reference (isolates the bank)
             cached                  the twin-tuned values (trajectory=cached)
         speedup = the old reference's unlearning time / this row's; forget rate and retain accuracy beside it
         say whether the row got to the same place.
press    the app's first press on digits: its default request (RunRequest(): ESD, forget "3", twin-tuned
         values) against the same request with the old values; the unlearning time, then the comparison
         of 16 + 16 samples with metrics (7 of the forgotten digit + 1 per retained digit, as
         bench_foundation) and the app's default comparison (16 + 4 per retained digit), each beside the
         same images without metrics; the default's forget rate / retain accuracy on a larger sample.

Every timed block has its peak memory beside it (benchmarks/memory.py). The thread count is printed:
time it with the machine otherwise idle.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..compare import ComparisonState, generate_plan, iter_comparison, plan_comparison, score
from ..methods import get_method
from ..methods.base import RunContext, UnlearnTask
from ..models.catalog import load_adapter
from .memory import PeakMemory

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "speed.json"
FORGET = {"digits": "3", "shapes-sd": "star"}  # measured here; the cached values were tuned on others
# the twin-tuned ESD values before cached trajectories existed (the registry at commit 09774f9)
OLD_TUNED = {
    "digits": {"iterations": 80, "lr": 1e-3, "ddim_steps": 25, "batch_size": 2, "start_guidance": 2.0, "trajectory": "reference"},
    "shapes-sd": {"iterations": 60, "lr": 1e-3, "ddim_steps": 25, "batch_size": 2, "start_guidance": 3.0, "trajectory": "reference"},
}


def timed(fn, device="cpu"):
    """(result, seconds, peak memory dict) of ``fn()``."""
    with PeakMemory(device) as peak:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    return out, seconds, peak.as_dict()


def _quality(adapter, task, plan, original, t_orig, edit) -> dict:
    images, t = generate_plan(adapter, edit.apply_to_copy(adapter.unet).eval(), plan)
    m = score(adapter, ComparisonState(plan, original=original, unlearned=images, seconds={"original": t_orig, "unlearned": t}), task)
    return {"forget_rate": m["forget_rate"].get("unlearned"), "forget_rate_original": m["forget_rate"].get("original"),
            "retain_accuracy": m["retain_accuracy"].get("unlearned"), "retain_accuracy_original": m["retain_accuracy"].get("original"),
            "n_forget": m["forget_rate"].get("n"), "n_retain": m["retain_accuracy"].get("n")}


def esd_rows(model: str, *, seed: int = 0, forget_samples: int = 64, retain_samples: int = 8) -> list[dict]:
    """The three ESD rows of one model (see the module docstring)."""
    spec = get_method("esd")
    adapter = load_adapter(model, "cpu")
    forget = [adapter.validate_concept(FORGET.get(model, adapter.concepts()[0] if adapter.concepts() else ""))]
    task = UnlearnTask(forget=forget, retain=adapter.default_retain(forget), seed=seed)
    plan = plan_comparison(adapter, task, forget_samples=forget_samples, retain_samples=retain_samples, seed=seed)
    original, t_orig = generate_plan(adapter, adapter.unet, plan)
    cached = spec.settings(model, {})
    variants = [("reference, old twin values", spec.settings(None, OLD_TUNED[model])),
                ("reference, cached row's values", dataclasses.replace(cached, trajectory="reference")),
                ("cached (twin-tuned)", cached)]
    rows = []
    for label, settings in variants:
        edit, seconds, peak = timed(lambda s=settings: spec.unlearn(adapter, task, s, RunContext()))
        rows.append({"model": model, "forget": forget, "variant": label, "settings": dataclasses.asdict(settings),
                     "unlearn_s": seconds, **peak, **_quality(adapter, task, plan, original, t_orig, edit)})
    for r in rows:
        r["speedup"] = rows[0]["unlearn_s"] / r["unlearn_s"]
    return rows


def press_rows(*, seed: int = 0, forget_samples: int = 64, retain_samples: int = 8) -> list[dict]:
    """The app's first press on digits: unlearning with the new and the old default, then the comparisons."""
    from ..runner import RunRequest, prepare

    rows = []
    (run, load_s, load_peak) = timed(lambda: prepare(RunRequest(seed=seed, device="cpu")))  # the app's default request
    rows.append({"measure": "load the model + prepare (first press only)", "seconds": load_s, **load_peak})
    adapter, task = run.adapter, run.task
    quality_plan = plan_comparison(adapter, task, forget_samples=forget_samples, retain_samples=retain_samples, seed=seed)
    original, t_orig = generate_plan(adapter, adapter.unet, quality_plan)
    old = run.spec.settings(None, OLD_TUNED[run.model_id])
    edits = {}
    for label, settings in (("old default", old), ("default", run.settings)):
        edit, seconds, peak = timed(lambda s=settings: run.spec.unlearn(adapter, task, s, RunContext()))
        edits[label] = edit
        rows.append({"measure": f"unlearning, {label} ({settings.trajectory}, {settings.iterations} it., batch "
                     f"{settings.batch_size})", "seconds": seconds, **peak, "settings": dataclasses.asdict(settings),
                     **_quality(adapter, task, quality_plan, original, t_orig, edit)})
    edited = edits["default"].apply_to_copy(adapter.unet).eval()
    for label, plan in (("16 + 16 samples with metrics (7 forget + 1 per retained digit)",
                         plan_comparison(adapter, task, forget_samples=7, retain_samples=1, seed=seed)),
                        ("the app's comparison with metrics (16 forget + 4 per retained digit, both models)",
                         plan_comparison(adapter, task, forget_samples=16, retain_samples=4, seed=seed))):
        def with_metrics(plan=plan):
            return list(iter_comparison(adapter, edited, plan, task))[-1]

        def without(plan=plan):
            generate_plan(adapter, adapter.unet, plan)
            generate_plan(adapter, edited, plan)

        _, seconds, peak = timed(with_metrics)
        _, bare, _ = timed(without)
        rows.append({"measure": label, "seconds": seconds, **peak, "baseline": "same images without metrics",
                     "baseline_seconds": bare, "pairs": len(plan.items)})
    return rows


def run_speed(parts: Sequence[str] = ("esd", "press"), models: Sequence[str] = ("digits", "shapes-sd"), *, seed: int = 0,
              forget_samples: int = 64, retain_samples: int = 8) -> dict:
    out: dict = {"threads": torch.get_num_threads(), "torch": torch.__version__, "seed": seed}
    t0 = time.perf_counter()
    if "press" in parts:  # first: the first press must pay the model load, as in a fresh app
        out["press"] = press_rows(seed=seed, forget_samples=forget_samples, retain_samples=retain_samples)
    if "esd" in parts:
        out["esd"] = [r for m in models for r in esd_rows(m, seed=seed, forget_samples=forget_samples, retain_samples=retain_samples)]
    out["total_s"] = time.perf_counter() - t0
    return out


def _num(v, fmt: str) -> str:
    return "n/a" if not isinstance(v, (int, float)) else fmt.format(v)


def format_tables(result: dict) -> str:
    lines = [f"torch {result['torch']}, {result['threads']} threads, seed {result['seed']}"]
    if "esd" in result:
        lines += ["", "| model | ESD trajectories | it. x batch | unlearn s | speedup | peak MB (+ added) | forget rate "
                  "(orig. -> unl.) | retain acc. (orig. -> unl.) |", "|---|---|---|---:|---:|---:|---|---|"]
        for r in result["esd"]:
            s = r["settings"]
            bank = f", bank {s['bank_size']} / {s['refresh_every']} it." if s["trajectory"] == "cached" else ""
            lines.append(f"| {r['model']} | {r['variant']}{bank} | {s['iterations']} x {s['batch_size']} | {r['unlearn_s']:.1f} | "
                         f"{r['speedup']:.2f}x | {r['peak_mb']:.0f} (+{r['added_mb']:.0f}) | "
                         f"{_num(r['forget_rate_original'], '{:.2f}')} -> {_num(r['forget_rate'], '{:.2f}')} | "
                         f"{_num(r['retain_accuracy_original'], '{:.2f}')} -> {_num(r['retain_accuracy'], '{:.2f}')} |")
    if "press" in result:
        lines += ["", "| first press (digits) | s | baseline | baseline s | peak MB (+ added) | forget rate | retain acc. |",
                  "|---|---:|---|---:|---:|---:|---:|"]
        for r in result["press"]:
            lines.append(f"| {r['measure']} | {r['seconds']:.2f} | {r.get('baseline', '')} | {_num(r.get('baseline_seconds'), '{:.2f}')} | "
                         f"{r['peak_mb']:.0f} (+{r['added_mb']:.0f}) | {_num(r.get('forget_rate'), '{:.2f}')} | "
                         f"{_num(r.get('retain_accuracy'), '{:.2f}')} |")
    return "\n".join(lines)


def save(result: dict, path: Path = RESULTS) -> Path:
    from ..atomic import write_text_atomic

    write_text_atomic(Path(path), json.dumps(result, indent=2, default=str) + "\n")
    return Path(path)
