"""The scaling curve (ScaPre's claim): erase 1, 2, 4, ... 64 concepts at once, measure what is left.

    python -m unlearning bench scaling [--model shapes-sd] [--counts 1,2,4,8,16,32,64] [--methods speed,mace,rece,uce,scapre,esd]

Concepts are colour-shape pairs of the shapes-sd twin ("red star", "blue circle", ...): all 64 of them.
A seeded permutation fixes the order: the first k are erased at count k (nested sets), and the *last*
``retain_pairs`` (16) pairs of the order are the fixed preserved set, measured at every count that leaves
them alone (k <= 48). At k = 64 every pair is erased, so nothing is left to keep: its retain columns are
empty and the "acceptable" rule cannot be judged there. Per (method, k), with the same seeds for every
method:

    forget rate       share of samples of the erased pairs ("a red star", paraphrases) the evaluator
                      still reads as that shape *and* colour
    retain accuracy   share of samples of the preserved pairs read correctly (shape and colour)
    SSIM              unlearned vs original image on the preserved pairs (same seed, same noise)
    evaluator-FID     preserved-pair samples vs drawn images of those pairs, on the evaluator's features

ESD-x trains with a fixed number of iterations for every k (its time grows with iterations, not k) and runs
up to ``esd_max_count`` (16) concepts. Timings: the edit's wall-clock seconds and seconds per concept; for
methods with a training stage (MACE's LoRAs, RECE's validation sampling) the closed-form part is shown apart.

"Acceptable" (:func:`acceptable`): forget rate at most half of the original model's on the same erased pairs
and seeds, and retain accuracy within 10 points of the original's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import metrics as M
from ..methods import get_method
from ..methods.base import RunContext, UnlearnTask
from ..paths import BENCH_RESULTS

DEFAULT_COUNTS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_METHODS = ("speed", "mace", "rece", "uce", "scapre", "esd")
ACCEPTABLE_FORGET_FRACTION = 0.5  # forget rate at most this share of the original's
ACCEPTABLE_RETAIN_DROP = 0.10  # retain accuracy at most this far below the original's
RESULTS = BENCH_RESULTS / "scaling.json"


@dataclass
class ScalingConfig:
    model: str = "shapes-sd"
    counts: tuple[int, ...] = DEFAULT_COUNTS
    methods: tuple[str, ...] = DEFAULT_METHODS
    forget_total: int = 32  # forget samples at least (per pair: max(4, forget_total // k)), so small k is not noise
    retain_pairs: int = 16
    per_retain: int = 2
    seed: int = 0
    esd_iterations: int | None = None  # None: the twin's tuned value
    esd_max_count: int = 16  # ESD-x trains for minutes per count; larger counts are left out
    num_inference_steps: int | None = None  # None: the model's default


def concept_order(adapter, seed: int) -> list[str]:
    objects, attributes = adapter.vocabulary["objects"], adapter.vocabulary["attributes"]
    pairs = [f"{a} {o}" for o in objects for a in attributes]
    rng = np.random.default_rng(seed)
    return [pairs[i] for i in rng.permutation(len(pairs))]


def retained_pairs(order: list[str], k: int, cfg: ScalingConfig) -> list[str]:
    """The fixed preserved pairs (the last ``retain_pairs`` of the order) when none of them is erased at count k, else []."""
    retain = order[len(order) - cfg.retain_pairs :]
    return retain if k <= len(order) - cfg.retain_pairs else []


def measure(adapter, unet, forget: list[str], retain: list[str], cfg: ScalingConfig) -> tuple[dict, torch.Tensor | None]:
    f_prompts, f_targets = [], []
    per_concept = max(4, cfg.forget_total // len(forget))
    for c in forget:
        prompts = adapter.forget_prompts(c)
        f_prompts += [prompts[i % len(prompts)] for i in range(per_concept)]
        f_targets += [c] * per_concept
    r_targets = [c for c in retain for _ in range(cfg.per_retain)]
    seeds_f = list(range(cfg.seed, cfg.seed + len(f_prompts)))
    seeds_r = list(range(cfg.seed + 10_000, cfg.seed + 10_000 + len(r_targets)))
    steps = cfg.num_inference_steps
    f_images = torch.cat([adapter.generate(f_prompts[i : i + 32], seeds_f[i : i + 32], unet=unet, num_inference_steps=steps)
                          for i in range(0, len(f_prompts), 32)])
    r_images = torch.cat([adapter.generate([adapter.prompt_for(c) for c in r_targets[i : i + 32]], seeds_r[i : i + 32], unet=unet,
                                           num_inference_steps=steps) for i in range(0, len(r_targets), 32)]) if r_targets else None
    return {
        "forget_rate": float(adapter.recognises(f_targets, f_images).float().mean()),
        "retain_accuracy": float(adapter.recognises(r_targets, r_images).float().mean()) if r_targets else None,
        "n_forget": len(f_targets),
        "n_retain": len(r_targets),
    }, r_images


def run_scaling(cfg: ScalingConfig) -> Iterator[dict]:
    """Yields one row per (method, count), the original model's rows first (method "original")."""
    from ..models.catalog import load_adapter

    adapter = load_adapter(cfg.model, "auto")
    order = concept_order(adapter, cfg.seed)
    if max(cfg.counts) > len(order):
        from ..errors import InputError

        raise InputError(f"{cfg.model} has {len(order)} colour-shape pairs; erase at most that many (got {max(cfg.counts)}).")
    kept = retained_pairs(order, 0, cfg)
    real = adapter.reference_images(kept, n_per=16, seed=cfg.seed + 99) if kept else None
    base_rows = {}
    for k in cfg.counts:
        retain = retained_pairs(order, k, cfg)
        row, base_images = measure(adapter, adapter.unet, order[:k], retain, cfg)
        row.update(method="original", k=k, seconds=0.0, ssim=1.0 if retain else None,
                   evaluator_fid=M.evaluator_fid(adapter.evaluator, real, base_images) if real is not None and retain else None)
        base_rows[k] = (row, base_images)
        yield row
    for method in cfg.methods:
        spec = get_method(method)
        overrides = {"variant": "x"} if method == "esd" else {}
        if method == "esd" and cfg.esd_iterations:
            overrides["iterations"] = cfg.esd_iterations
        settings = spec.settings(cfg.model, overrides)
        for k in cfg.counts:
            if method == "esd" and k > cfg.esd_max_count:
                continue
            retain = retained_pairs(order, k, cfg)
            task = UnlearnTask(forget=order[:k], retain=retain, seed=cfg.seed)
            t0 = time.perf_counter()
            edit = spec.unlearn(adapter, task, settings, RunContext())
            seconds = time.perf_counter() - t0
            row, images = measure(*adapter.edited(edit), order[:k], retain, cfg)  # AdvUnlearn: its text encoder too
            row.update(method=method, k=k, seconds=seconds, seconds_per_concept=seconds / k,
                       closed_form_s=edit.timings.get("closed_form_s"),
                       ssim=M.ssim(images, base_rows[k][1]) if retain else None,
                       evaluator_fid=M.evaluator_fid(adapter.evaluator, real, images) if real is not None and retain else None)
            row["forget_rate_original"] = base_rows[k][0]["forget_rate"]
            row["retain_accuracy_original"] = base_rows[k][0]["retain_accuracy"]
            row["acceptable"] = acceptable(row)
            yield row


def acceptable(row: dict) -> bool | None:
    """The rule: forget rate at most half the original's and retain accuracy within 10 points; None where the
    row has no retained pairs to judge (every pair erased)."""
    if row.get("retain_accuracy") is None or row.get("retain_accuracy_original") is None:
        return None
    return (row["forget_rate"] <= ACCEPTABLE_FORGET_FRACTION * row["forget_rate_original"]
            and row["retain_accuracy"] >= row["retain_accuracy_original"] - ACCEPTABLE_RETAIN_DROP - 1e-9)


def acceptable_counts(rows: list[dict]) -> dict[str, dict]:
    """Per method: the counts that pass the rule, the largest of them, and whether every smaller judged count passed."""
    out: dict[str, dict] = {}
    for r in rows:
        if r["method"] == "original":
            continue
        entry = out.setdefault(r["method"], {"passed": [], "failed": [], "unjudged": []})
        verdict = r.get("acceptable", acceptable(r) if "forget_rate_original" in r else None)
        entry["unjudged" if verdict is None else "passed" if verdict else "failed"].append(r["k"])
    for entry in out.values():
        entry["largest"] = max(entry["passed"], default=0)
        entry["all_up_to_largest"] = all(k > entry["largest"] for k in entry["failed"])
    return out


def _num(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def format_table(rows: list[dict]) -> str:
    head = ("| method | concepts | forget rate | retain accuracy | SSIM vs original | evaluator-FID | seconds | s / concept "
            "| acceptable |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        verdict = {True: "yes", False: "no", None: "n/a"}[r.get("acceptable")] if r["method"] != "original" else ""
        per = r.get("seconds_per_concept")
        lines.append(f"| {r['method']} | {r['k']} | {r['forget_rate']:.2f} | {_num(r['retain_accuracy'], '.2f')} | "
                     f"{_num(r.get('ssim'), '.3f')} | {_num(r.get('evaluator_fid'), '.2f')} | {r['seconds']:.2f} | "
                     f"{_num(per, '.4f') if r['method'] != 'original' else ''} | {verdict} |")
    return "\n".join(lines)


def save_results(rows: list[dict], cfg: ScalingConfig, path: Path = RESULTS) -> Path:
    import dataclasses
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    payload = {"config": dataclasses.asdict(cfg), "device": str(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
               "torch": torch.__version__, "rows": rows}
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def load_results(path: Path = RESULTS) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def plot_frame(rows: list[dict]):
    """Long-format frame for gr.LinePlot: x = concepts erased, y = value, one series per method and metric."""
    import pandas as pd

    out = []
    for r in rows:
        out.append({"concepts": r["k"], "value": r["forget_rate"], "metric": "forget rate", "method": r["method"]})
        if r.get("retain_accuracy") is not None:
            out.append({"concepts": r["k"], "value": r["retain_accuracy"], "metric": "retain accuracy", "method": r["method"]})
    return pd.DataFrame(out)
