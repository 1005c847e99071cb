"""The scaling curve (ScaPre's claim): erase 1, 2, 4, ... concepts at once, measure what is left.

    python -m unlearning bench scaling [--model shapes-sd] [--counts 1,2,4,8,16] [--methods scapre,uce,esd]

Concepts are colour-shape pairs of the shapes-sd twin ("red star", "blue circle", ...): 64 of them,
so 16 can be erased while others of every shape and colour remain. A seeded permutation fixes the
order: the first k are erased at count k (nested sets), and a fixed set of pairs outside the first
max(counts) is preserved and measured. Per (method, k), with the same seeds for every method:

    forget rate       share of samples of the erased pairs ("a red star", paraphrases) the evaluator
                      still reads as that shape *and* colour
    retain accuracy   share of samples of the preserved pairs read correctly (shape and colour)
    SSIM              unlearned vs original image on the preserved pairs (same seed, same noise)
    evaluator-FID     preserved-pair samples vs drawn images of those pairs, on the evaluator's features

ESD-x trains with a fixed number of iterations for every k (its time grows with iterations, not k).
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

DEFAULT_COUNTS = (1, 2, 4, 8, 16)
DEFAULT_METHODS = ("scapre", "uce", "esd")
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "scaling.json"


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
    num_inference_steps: int | None = None  # None: the model's default


def concept_order(adapter, seed: int) -> list[str]:
    objects, attributes = adapter.vocabulary["objects"], adapter.vocabulary["attributes"]
    pairs = [f"{a} {o}" for o in objects for a in attributes]
    rng = np.random.default_rng(seed)
    return [pairs[i] for i in rng.permutation(len(pairs))]


def measure(adapter, unet, forget: list[str], retain: list[str], cfg: ScalingConfig) -> tuple[dict, torch.Tensor]:
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
                                           num_inference_steps=steps) for i in range(0, len(r_targets), 32)])
    return {
        "forget_rate": float(adapter.recognises(f_targets, f_images).float().mean()),
        "retain_accuracy": float(adapter.recognises(r_targets, r_images).float().mean()),
        "n_forget": len(f_targets),
        "n_retain": len(r_targets),
    }, r_images


def run_scaling(cfg: ScalingConfig) -> Iterator[dict]:
    """Yields one row per (method, count), the original model's row first (method "original")."""
    from ..models.catalog import load_adapter

    adapter = load_adapter(cfg.model, "auto")
    order = concept_order(adapter, cfg.seed)
    kmax = max(cfg.counts)
    retain = order[kmax : kmax + cfg.retain_pairs]
    real = adapter.reference_images(retain, n_per=16, seed=cfg.seed + 99)
    base_rows = {}
    for k in cfg.counts:
        row, base_images = measure(adapter, adapter.unet, order[:k], retain, cfg)
        row.update(method="original", k=k, seconds=0.0)
        row["evaluator_fid"] = M.evaluator_fid(adapter.evaluator, real, base_images) if real is not None else None
        row["ssim"] = 1.0
        base_rows[k] = (row, base_images)
        yield row
    for method in cfg.methods:
        spec = get_method(method)
        overrides = {"variant": "x"} if method == "esd" else {}
        if method == "esd" and cfg.esd_iterations:
            overrides["iterations"] = cfg.esd_iterations
        settings = spec.settings(cfg.model, overrides)
        for k in cfg.counts:
            task = UnlearnTask(forget=order[:k], retain=retain, seed=cfg.seed)
            t0 = time.perf_counter()
            edit = spec.unlearn(adapter, task, settings, RunContext())
            seconds = time.perf_counter() - t0
            row, images = measure(adapter, edit.apply_to_copy(adapter.unet), order[:k], retain, cfg)
            row.update(method=method, k=k, seconds=seconds,
                       ssim=M.ssim(images, base_rows[k][1]),
                       evaluator_fid=M.evaluator_fid(adapter.evaluator, real, images) if real is not None else None)
            row["forget_rate_original"] = base_rows[k][0]["forget_rate"]
            yield row


def format_table(rows: list[dict]) -> str:
    head = "| method | concepts | forget rate | retain accuracy | SSIM vs original | evaluator-FID | seconds |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        fid = f"{r['evaluator_fid']:.2f}" if r.get("evaluator_fid") is not None else "n/a"
        lines.append(f"| {r['method']} | {r['k']} | {r['forget_rate']:.2f} | {r['retain_accuracy']:.2f} | {r['ssim']:.3f} | {fid} | {r['seconds']:.2f} |")
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
        out.append({"concepts": r["k"], "value": r["retain_accuracy"], "metric": "retain accuracy", "method": r["method"]})
    return pd.DataFrame(out)
