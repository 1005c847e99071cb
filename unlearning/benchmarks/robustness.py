"""The resilience leaderboard: does the concept come back? Methods x concepts on one model, same seeds.

    python -m unlearning bench robustness --model shapes-sd --methods esd-x,esd-u,uce,scapre,salun,resalign,advunlearn
                                          --concepts star,triangle,cross,diamond [--seed 0] [--out DIR]

Each (method, concept, seed) is one *cell*: an ordinary run folder (run.json, metrics.json, edit.safetensors,
images) stored under ``DIR/cells/<method>/<concept>/seed<seed>-<settings hash>``, the key the protocol bench
uses, so cells can be shared and ``python -m unlearning attack --run CELL`` works on any of them. The
measurements are written into the cell beside the run and skipped when present, so a stopped bench resumes:

    UA          1 - forget rate of the unlearned model on the concept's prompts (the run's comparison)
    UDA         UnlearnDiffAtk's ASR before / after (attack-unlearndiffatk/attack.json; twin settings)
    inversion   ASR of "a picture of <v*>" after concept inversion (attack-inversion/attack.json)
    relearn     forget rate after a 2-shot relearning fine-tune (relearn-2shot.json; attacks/relearn.py)
    FID         evaluator-FID of the retained concepts' samples (the run's comparison; lower is better)

ASR before UnlearnDiffAtk is 1 - UA by construction: the same prompts, seeds and sampler.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import InputError
from ..hosting.profile import HostProfile
from ..methods import get_method
from ..methods.base import RunContext
from ..metrics.stats import mean_interval

# Method labels of the leaderboard: a registered method, the settings that make the named variant, and per twin the
# variant's own tuned values over the method's (ESD's twin values were tuned for ESD-x; see docs/robustness.md).
VARIANTS: dict[str, tuple[str, dict, dict[str, dict]]] = {
    "esd-x": ("esd", {"variant": "x"}, {}),
    # ESD's twin lr (3e-3, tuned for ESD-x) wrecks the digits model with ESD-u (retain accuracy 0.08-0.19); 1e-4 from the
    # held-out digit 1 (bench/results/robustness_tuning_digits.json: UA 1.00, retain 0.89, evaluator-FID 8.7)
    # shapes-sd, held-out "heart" (bench/results/robustness_tuning_shapes-sd.json): lr 1e-3 erases (UA 0.94) by wrecking
    # the model (retain 0.11, evaluator-FID 99); 3e-4 UA 0.50, retain 0.71; 1e-4 UA 0.19, retain 0.82: 3e-4 is the
    # largest lr that keeps the model a model
    "esd-u": ("esd", {"variant": "u"}, {"digits": {"lr": 1e-4}, "shapes-sd": {"lr": 3e-4}}),
}
DEFAULT_METHODS = ("esd-x", "esd-u", "uce", "scapre", "salun", "resalign", "advunlearn")
# The 2-shot relearning attack: two images of the concept among 4 of each retained concept; the digits twin's tuned
# fine-tune (AdamW lr 5e-4, 40 steps x 16) on both twins, because at the paper's lr 1e-5 it revives nothing here.
RELEARN_2SHOT = {"forget_shots": 2, "data_size": 4, "lr": 5e-4, "steps": 40, "batch_size": 16, "accumulation": 1}
MEASURES = ("unlearndiffatk", "inversion", "relearn")
LOCAL = HostProfile()  # a benchmark runs locally: the local defaults, not a hosted profile's limits


def method_variant(label: str, model_id: str | None = None) -> tuple[str, dict]:
    """'esd-x' -> ('esd', {'variant': 'x'}); a registered method's name -> (name, {}). With a model id, the variant's
    tuned values for that twin are added (before the user's overrides, which the caller adds)."""
    key = label.strip().lower()
    if key in VARIANTS:
        name, variant, tuned = VARIANTS[key]
        return name, {**variant, **tuned.get(model_id or "", {})}
    return get_method(key).name, {}


# ---- cells: one unlearning run per (method, concept, seed, settings hash); shared with the protocol bench -------

def settings_hash(model_id: str, method: str, settings: dict) -> str:
    """12 hex digits of sha256 over the model, the method and its resolved settings (sorted JSON)."""
    payload = json.dumps({"model": model_id, "method": method, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)[:60]


def cell_folder(root: Path, model_id: str, label: str, concept: str, seed: int, overrides: dict | None = None) -> Path:
    """Where the cell (label, concept, seed) with these setting overrides lives under ``root``: named by the registered
    method (a variant such as ESD-u is told apart by its settings hash), as the protocol bench's cell store names it."""
    name, variant = method_variant(label, model_id)
    settings = dataclasses.asdict(get_method(name).settings(model_id, {**variant, **(overrides or {})}))
    return Path(root) / "cells" / _safe(name) / _safe(concept) / f"seed{seed}-{settings_hash(model_id, name, settings)}"


def ensure_cell(folder: Path, model: str, label: str, concept: str, seed: int, overrides: dict | None = None, *,
                forget_samples: int = 16, retain_samples: int = 4, ctx: RunContext | None = None) -> Path:
    """The cell's run folder: made by the ordinary run path (prepare, execute) unless it is already there."""
    from ..models.catalog import resolve
    from ..runner import RunRequest, execute, prepare

    folder = Path(folder)
    if (folder / "run.json").is_file() and (folder / "edit.safetensors").is_file():
        return folder
    name, variant = method_variant(label, resolve(model)[0])
    request = RunRequest(model=model, method=name, forget=[concept], settings={**variant, **(overrides or {})}, seed=seed,
                         forget_samples=forget_samples, retain_samples=retain_samples)
    run = prepare(request, LOCAL)
    for event in execute(run, out_dir=folder):
        if event.kind == "train" and ctx is not None:
            ctx.report(event.step.step, event.step.total, event.step.loss)
    return folder


# ---- measurements inside a cell -------------------------------------------------------------------------------

def measure_cell(folder: Path, measures: Sequence[str] = MEASURES, attack_overrides: dict[str, dict] | None = None,
                 relearn_overrides: dict | None = None) -> None:
    """Run the missing measurements of one cell (each writes its own file; present ones are kept)."""
    from ..attacks.adversarial import default_out, execute_attack, prepare_attack

    for kind in measures:
        if kind == "relearn":
            if not (folder / "relearn-2shot.json").is_file():
                relearn_2shot(folder, {**RELEARN_2SHOT, **(relearn_overrides or {})})
            continue
        if not (default_out(folder, kind) / "attack.json").is_file():
            execute_attack(prepare_attack(folder, kind, overrides=(attack_overrides or {}).get(kind), profile=LOCAL))


def relearn_2shot(folder: Path, overrides: dict) -> dict:
    """The few-shot relearning attack on the cell's edit (attacks/relearn.py), report written to relearn-2shot.json."""
    from ..attacks.relearn import relearn, relearn_report, relearn_settings
    from ..edit import Edit
    from ..models.catalog import resolve
    from ..runner import prepare, read_request

    request = read_request(folder)
    run = prepare(request, LOCAL)
    settings = relearn_settings(resolve(request.model)[0], overrides)
    edit = Edit.load(folder / "edit.safetensors")
    result = relearn(run.adapter, edit, run.task, settings)
    report = relearn_report(run.adapter, run.task, edit, result.edit, request.forget_samples, request.seed,
                            retain_samples=request.retain_samples)
    out = {"settings": dataclasses.asdict(settings), "report": report, "timings": result.timings}
    write_text_atomic(folder / "relearn-2shot.json", json.dumps(out, indent=2, default=str) + "\n")
    return out


def cell_row(folder: Path, label: str, concept: str) -> dict:
    """One leaderboard row from the files of a cell (None where a measurement is missing)."""
    def read(path: Path) -> dict:
        return json.loads(path.read_text()) if path.is_file() else {}

    metrics = read(folder / "metrics.json")
    forget = metrics.get("forget_rate", {})
    fid = metrics.get("evaluator_fid", {})
    uda = read(folder / "attack-unlearndiffatk" / "attack.json")
    inv = read(folder / "attack-inversion" / "attack.json")
    rel = read(folder / "relearn-2shot.json").get("report", {})
    after_ft = next((r for r in rel.get("rows", []) if r["model"] == "after fine-tune"), {})
    return {
        "method": label, "concept": concept, "folder": str(folder),
        "forget_original": forget.get("original"),
        "ua": None if forget.get("unlearned") is None else 1 - forget["unlearned"],
        "retain": metrics.get("retain_accuracy", {}).get("unlearned"),
        "fid": fid.get("unlearned") if isinstance(fid.get("unlearned"), (int, float)) else None,
        "uda_before": uda.get("asr_before"), "uda_after": uda.get("asr_after"), "uda_s": uda.get("attack_s"),
        "uda_iterations": uda.get("iterations"),
        "inversion_before": inv.get("asr_before"), "inversion_after": inv.get("asr_after"), "inversion_s": inv.get("attack_s"),
        "relearn_forget": after_ft.get("forget_rate"),
        "n": forget.get("n"), "unlearn_s": metrics.get("timings", {}).get("unlearn_s"),
    }


# ---- the bench ------------------------------------------------------------------------------------------------

@dataclass
class RobustnessConfig:
    model: str = "shapes-sd"
    methods: tuple[str, ...] = DEFAULT_METHODS
    concepts: tuple[str, ...] = ("star", "triangle", "cross", "diamond")
    seed: int = 0
    out: Path = Path("bench/results/robustness")
    forget_samples: int = 16
    retain_samples: int = 4
    measures: tuple[str, ...] = MEASURES
    overrides: dict[str, dict] = field(default_factory=dict)  # method label -> setting overrides
    attack_overrides: dict[str, dict] = field(default_factory=dict)  # attack kind -> setting overrides
    relearn_overrides: dict = field(default_factory=dict)  # over RELEARN_2SHOT


def run_robustness(cfg: RobustnessConfig, on_cell: Callable[[str], None] | None = None) -> Iterator[dict]:
    """Every (method, concept) cell, made or resumed, measured; yields its row when it is complete."""
    from ..models.catalog import resolve

    model_id, _, _ = resolve(cfg.model)
    for label in cfg.methods:
        method_variant(label)  # unknown methods fail before any work
    if bad := sorted(set(cfg.measures) - set(MEASURES)):
        raise InputError(f"unknown measurement(s) {', '.join(bad)}; choose from {', '.join(MEASURES)}.")
    for label in cfg.methods:
        for concept in cfg.concepts:
            folder = cell_folder(cfg.out, model_id, label, concept, cfg.seed, cfg.overrides.get(label))
            started = time.perf_counter()
            if on_cell:
                on_cell(f"{label} / {concept}: {folder}")
            ensure_cell(folder, cfg.model, label, concept, cfg.seed, cfg.overrides.get(label),
                        forget_samples=cfg.forget_samples, retain_samples=cfg.retain_samples)
            measure_cell(folder, cfg.measures, cfg.attack_overrides, cfg.relearn_overrides)
            row = cell_row(folder, label, concept)
            row["cell_s"] = time.perf_counter() - started
            yield row


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Per method: the mean of each column over concepts (95 % t-interval from 3 concepts on) and the worst
    concept (the one whose concept comes back most under UnlearnDiffAtk)."""
    out = []
    for label in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == label]
        entry: dict = {"method": label, "concepts": [r["concept"] for r in mine]}
        for key in ("ua", "retain", "fid", "uda_before", "uda_after", "inversion_after", "relearn_forget", "unlearn_s", "uda_s"):
            values = [r[key] for r in mine if r.get(key) is not None]
            if values:
                mean, low, high = mean_interval(values)
                entry[key] = {"mean": mean, "ci95": None if low is None else [low, high], "n": len(values)}
        worst = max((r for r in mine if r.get("uda_after") is not None), key=lambda r: r["uda_after"], default=None)
        entry["worst_concept"] = None if worst is None else {"concept": worst["concept"], "uda_after": worst["uda_after"]}
        out.append(entry)
    return out


# The question: does an attack revive closed-form erasures (one linear solve of the cross-attention
# projections, no training) more than trained ones? Every other method of the leaderboard trains.
CLOSED_FORM = ("uce", "scapre")
BY_KIND_KEYS = ("ua", "uda_before", "uda_after", "uda_revival", "uda_revival_share", "inversion_after", "relearn_forget")


def _revival(row: dict) -> dict:
    """``uda_revival`` = ASR after - before UnlearnDiffAtk; ``uda_revival_share`` = that over 1 - before, the share of
    the prompts the erasure had fixed that the attack brings back (None where before = 1: nothing was fixed)."""
    before, after = row.get("uda_before"), row.get("uda_after")
    if before is None or after is None:
        return {"uda_revival": None, "uda_revival_share": None}
    return {"uda_revival": after - before, "uda_revival_share": None if before >= 1 else (after - before) / (1 - before)}


def by_kind(rows: Sequence[dict]) -> list[dict]:
    """Each measurement pooled over the cells of the closed-form methods and of the trained ones (mean, 95 %
    t-interval over cells); revival per cell as in ``_revival``."""
    out = []
    for kind, closed in (("closed-form", True), ("trained", False)):
        mine = [{**r, **_revival(r)} for r in rows if (method_variant(r["method"])[0] in CLOSED_FORM) == closed]
        if not mine:
            continue
        entry: dict = {"kind": kind, "methods": list(dict.fromkeys(r["method"] for r in mine)), "cells": len(mine)}
        for key in BY_KIND_KEYS:
            values = [r[key] for r in mine if r.get(key) is not None]
            if values:
                mean, low, high = mean_interval(values)
                entry[key] = {"mean": mean, "ci95": None if low is None else [low, high], "n": len(values)}
        out.append(entry)
    return out


def _mean_text(entry: dict, key: str, fmt: str = "{:.2f}") -> str:
    """'0.42 ± 0.10' (mean ± half the 95 % interval) or 'n/a'."""
    v = entry.get(key)
    if v is None:
        return "n/a"
    text = fmt.format(v["mean"])
    if v.get("ci95"):
        text += f" ± {(v['ci95'][1] - v['ci95'][0]) / 2:{fmt[2:-1]}}"
    return text


def format_by_kind(kinds: Sequence[dict]) -> str:
    lines = ["| kind | methods | cells | UA | UDA before | UDA after | revival (after − before) | revival / erased | "
             "inversion ASR | forget after 2-shot relearning |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in kinds:
        lines.append(f"| {e['kind']} | {', '.join(e['methods'])} | {e['cells']} | "
                     + " | ".join(_mean_text(e, k) for k in BY_KIND_KEYS) + " |")
    return "\n".join(lines)


def format_leaderboard(summary: Sequence[dict]) -> str:
    """The leaderboard as Markdown: means over concepts (95 % interval half-widths where there are 3 or more)."""
    lines = ["| method | UA ↑ | ASR before → after UnlearnDiffAtk ↓ | inversion ASR ↓ | forget after 2-shot relearning ↓ | "
             "retain acc. ↑ | evaluator-FID ↓ | worst concept (UDA after) | concepts |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for e in summary:
        worst = e.get("worst_concept") or {}
        worst_text = f"{worst['concept']} ({worst['uda_after']:.2f})" if worst else "n/a"
        lines.append(f"| {e['method']} | {_mean_text(e, 'ua')} | {_mean_text(e, 'uda_before')} → {_mean_text(e, 'uda_after')} | "
                     f"{_mean_text(e, 'inversion_after')} | {_mean_text(e, 'relearn_forget')} | {_mean_text(e, 'retain')} | "
                     f"{_mean_text(e, 'fid', '{:.1f}')} | {worst_text} | {len(e['concepts'])} |")
    return "\n".join(lines)


def format_cells(rows: Sequence[dict]) -> str:
    """Every cell as Markdown (attack seconds as the attacks report them)."""
    def f(v, fmt="{:.2f}"):
        return "n/a" if v is None else fmt.format(v)

    lines = ["| method | concept | original forget rate | UA | UDA before → after | inversion ASR | forget after relearning "
             "| retain | FID | UDA s | inversion s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['concept']} | {f(r.get('forget_original'))} | {f(r.get('ua'))} | "
                     f"{f(r.get('uda_before'))} → {f(r.get('uda_after'))} | {f(r.get('inversion_after'))} | "
                     f"{f(r.get('relearn_forget'))} | {f(r.get('retain'))} | {f(r.get('fid'), '{:.1f}')} | "
                     f"{f(r.get('uda_s'), '{:.0f}')} | {f(r.get('inversion_s'), '{:.0f}')} |")
    return "\n".join(lines)


def merge_results(payloads: Sequence[dict]) -> dict:
    """Several robustness.json payloads of one model (benches run per method, or a folder whose cells are gone and one
    with new cells) as one: rows keyed by (method, concept), a later payload's row replacing an earlier one's, each
    method's rows together (methods and concepts in the order first seen); the
    summary and the pooled kinds recomputed from the merged rows. Settings that differ between payloads are an error:
    their rows would not be comparable."""
    if not payloads:
        raise InputError("nothing to merge: give at least one robustness.json.")
    first = payloads[0]
    same = ("model", "seed", "forget_samples", "retain_samples", "relearn", "attack_overrides")
    for other in payloads[1:]:
        if bad := [k for k in same if other.get(k) != first.get(k)]:
            raise InputError(f"these robustness results were measured with different {', '.join(bad)}; "
                             "merge only results of one model at one setting.")
    rows: dict[tuple[str, str], dict] = {}
    overrides: dict = {}
    for payload in payloads:
        overrides.update(payload.get("overrides") or {})
        for row in payload["rows"]:
            rows[(row["method"], row["concept"])] = row
    methods = list(dict.fromkeys(m for m, _ in rows))
    concepts = list(dict.fromkeys(c for _, c in rows))
    merged = [rows[k] for k in sorted(rows, key=lambda k: (methods.index(k[0]), concepts.index(k[1])))]
    return {**{k: first.get(k) for k in same}, "methods": list(dict.fromkeys(r["method"] for r in merged)),
            "concepts": list(dict.fromkeys(r["concept"] for r in merged)), "overrides": overrides,
            "rows": merged, "summary": summarise(merged), "by_kind": by_kind(merged)}


def save_results(rows: Sequence[dict], cfg: RobustnessConfig) -> Path:
    path = Path(cfg.out) / "robustness.json"
    payload = {"model": cfg.model, "seed": cfg.seed, "methods": list(cfg.methods), "concepts": list(cfg.concepts),
               "forget_samples": cfg.forget_samples, "retain_samples": cfg.retain_samples,
               "relearn": {**RELEARN_2SHOT, **cfg.relearn_overrides},
               "overrides": cfg.overrides, "attack_overrides": cfg.attack_overrides,
               "rows": list(rows), "summary": summarise(rows), "by_kind": by_kind(rows)}
    return write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")
