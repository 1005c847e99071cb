"""Relearning across methods: the table ResAlign's main claim rests on, measured on the same seeds.

For each method: unlearn, put the edit through the same downstream fine-tune (the relearning test),
and score original / after unlearning / after the fine-tune with the comparison engine on one set of
seeds. A row is plain data (JSON-ready); :func:`format_comparison` renders rows as a Markdown table,
which the bench script prints and the app shows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict

from ..methods import get_method
from ..methods.base import RunContext, UnlearnTask
from ..models.base import FamilyAdapter
from .relearn import RelearnSettings, relearn, relearn_report


def comparison_row(method: str, report: dict, *, unlearn_s: float | None = None, relearn_s: float | None = None) -> dict:
    """One method's line: forget rate at the three stages, utility after unlearning and after the fine-tune."""
    rows = {r["model"]: r for r in report["rows"]}
    fid = report.get("evaluator_fid", {})

    def fid_of(stage: str) -> float | None:
        entry = fid.get(stage) or {}
        return entry.get("unlearned") if isinstance(entry.get("unlearned"), (int, float)) else None

    return {
        "method": method,
        "forget_original": rows["original"]["forget_rate"],
        "forget_unlearned": rows["after unlearning"]["forget_rate"],
        "forget_finetuned": rows["after fine-tune"]["forget_rate"],
        "relearn_gap": report.get("relearn_gap"),
        "retain_original": rows["original"]["retain_accuracy"],
        "retain_unlearned": rows["after unlearning"]["retain_accuracy"],
        "retain_finetuned": rows["after fine-tune"]["retain_accuracy"],
        "fid_unlearned": fid_of("after unlearning"),
        "fid_finetuned": fid_of("after fine-tune"),
        "n_forget": report.get("n_forget"),
        "unlearn_s": unlearn_s,
        "relearn_s": relearn_s,
    }


def compare_relearning(adapter: FamilyAdapter, model_id: str | None, task: UnlearnTask, methods: Sequence[str],
                       attacks: Mapping[str, RelearnSettings], *, forget_samples: int = 32, retain_samples: int = 4,
                       overrides: dict[str, dict] | None = None, ctx: RunContext | None = None) -> Iterator[dict]:
    """One row per (method, attack): each method unlearns once (twin-tuned settings + ``overrides[method]``)
    and its edit goes through every attack in ``attacks`` (label -> settings); same seeds for all."""
    ctx = ctx or RunContext()
    for name in methods:
        spec = get_method(name)
        settings = spec.settings(model_id, (overrides or {}).get(name, {}))
        t0 = time.perf_counter()
        edit = spec.unlearn(adapter, task, settings, ctx)
        unlearn_s = time.perf_counter() - t0
        for label, attack in attacks.items():
            result = relearn(adapter, edit, task, attack, ctx)
            report = relearn_report(adapter, task, edit, result.edit, forget_samples, task.seed, retain_samples=retain_samples)
            row = comparison_row(spec.name, report, unlearn_s=unlearn_s, relearn_s=result.timings.get("relearn_s"))
            row.update(attack=label, settings=asdict(settings), attack_settings=asdict(attack))
            yield row


def format_comparison(rows: Sequence[dict]) -> str:
    """Rows as a Markdown table (forget rate: lower is better; retain accuracy: higher; evaluator-FID: lower)."""
    def cell(v, fmt: str = "{:.2f}") -> str:
        return "n/a" if v is None else fmt.format(v)

    by_attack = any(r.get("attack") for r in rows)  # rows from several attacks: one more column
    lines = ["| method |" + (" attack |" if by_attack else "") + " forget: original | after unlearning | after fine-tune | "
             "relearn gap | retain acc. after unlearning → after fine-tune | evaluator-FID after unlearning → after fine-tune | n |",
             "|---|" + ("---|" if by_attack else "") + "---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        attack = f" {r.get('attack') or ''} |" if by_attack else ""
        lines.append(f"| {r['method']} |{attack} {cell(r['forget_original'])} | {cell(r['forget_unlearned'])} | "
                     f"{cell(r['forget_finetuned'])} | {cell(r['relearn_gap'], '{:+.2f}')} | "
                     f"{cell(r['retain_unlearned'])} → {cell(r['retain_finetuned'])} | "
                     f"{cell(r['fid_unlearned'], '{:.1f}')} → {cell(r['fid_finetuned'], '{:.1f}')} | {r.get('n_forget') or 'n/a'} |")
    return "\n".join(lines)
