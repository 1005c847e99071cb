"""``python -m unlearning bench lm``: RMU, gradient ascent and NegGrad+, each with and without UAM, on one
causal LM, side by side on the same seeds (UAM's LLM table in miniature).

Every row unlearns the forget domain from the same base model with the same seeds (a seed fixes RMU's random
direction and every batch drawn), then is scored on the held-out questions of the forget and the retain
domain (``--split test``, what the docs report; ``--split val`` is where the twin's settings were chosen) and
by token perplexity on retain-domain text. With ``--relearn-steps`` > 0 each edit also faces a relearning
attack: the unlearned model is fine-tuned on forget-domain text (every weight, AdamW) and scored again.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..attacks.relearn_lm import relearn_text, text_relearn_settings
from ..errors import InputError
from ..methods import get_method
from ..methods.base import RunContext, UnlearnTask
from ..metrics.lm import FORMATS
from ..metrics.stats import mean_interval

log = logging.getLogger(__name__)

# (row label, method, overrides of the method's settings)
ROWS = [
    ("RMU", "rmu", {}),
    ("RMU + UAM", "rmu", {"uam": True}),
    ("GA", "gradient_ascent", {}),
    ("NegGrad+", "gradient_ascent", {"retain_weight": 1.0}),
    ("NegGrad+ + UAM", "gradient_ascent", {"retain_weight": 1.0, "uam": True}),
]
METRICS = ("forget", "retain", "perplexity")


@dataclass
class LMBenchConfig:
    model: str = "facts-lm"
    forget: list[str] = field(default_factory=lambda: ["hazard"])
    retain: list[str] = field(default_factory=list)  # empty: the model's default retain domains
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    split: str = "test"  # "test" (held-out questions) or "val" (the twin's tuning questions)
    rows: list[str] = field(default_factory=lambda: [r[0] for r in ROWS])
    settings: dict[str, dict] = field(default_factory=dict)  # method -> overrides for every row of that method
    perplexity_texts: int = 64
    relearn_steps: int = 0  # relearning attack: AdamW steps on forget-domain text (0: no attack)
    relearn_lr: float = 1e-3
    device: str = "auto"


def evaluate(adapter, params, forget: list[str], retain: list[str], split: str, n_texts: int) -> dict:
    """Forget- and retain-domain accuracy on held-out questions (``forget`` / ``retain``: in the model's question
    format, what a run's metrics.json reports; ``forget_<other>`` / ``retain_<other>``: in the other format), and
    retain perplexity."""
    fmt = getattr(adapter, "twin", {}).get("question_format", "letter")
    other = next(f for f in FORMATS if f != fmt)

    def acc(domains: list[str], fmt: str) -> float:
        hits, n = 0.0, 0
        for name in domains:
            d = adapter.domain(name)
            questions = d.tuning_questions if split == "val" else d.questions
            if not questions:
                raise InputError(f"the domain '{name}' has no {split} questions.")
            hits += adapter.accuracy(questions, d.subject, params, fmt=fmt) * len(questions)
            n += len(questions)
        return hits / n

    texts = [t for name in retain for t in adapter.domain(name).corpus[:n_texts]]
    return {"forget": acc(forget, fmt), "retain": acc(retain, fmt), f"forget_{other}": acc(forget, other),
            f"retain_{other}": acc(retain, other), "perplexity": adapter.perplexity(texts, params) if texts else None,
            "format": fmt}


def run_bench(cfg: LMBenchConfig) -> Iterator[dict]:
    """Yields the original's row, then one row per (method row, seed)."""
    from ..models.catalog import load_adapter, resolve

    model_id, _, _ = resolve(cfg.model)
    adapter = load_adapter(cfg.model, cfg.device)
    forget = [adapter.validate_concept(d) for d in cfg.forget]
    retain = [adapter.validate_concept(d) for d in cfg.retain] or adapter.default_retain(forget)
    if cfg.split not in ("test", "val"):
        raise InputError(f"split must be test or val; got '{cfg.split}'.")
    labels = {r[0]: r for r in ROWS}
    if unknown := [r for r in cfg.rows if r not in labels]:
        raise InputError(f"unknown row(s) {', '.join(unknown)}; rows: {', '.join(labels)}.")
    base = evaluate(adapter, None, forget, retain, cfg.split, cfg.perplexity_texts)
    attack = text_relearn_settings({"steps": cfg.relearn_steps, "lr": cfg.relearn_lr}) if cfg.relearn_steps else None

    def relearned(params, seed: int) -> float:  # forget accuracy after the relearning attack
        weights, _, _ = relearn_text(adapter, params, UnlearnTask(forget=forget, retain=retain, seed=seed), attack)
        return evaluate(adapter, weights, forget, retain, cfg.split, cfg.perplexity_texts)["forget"]

    if attack:
        base["forget_relearned"] = relearned(None, 0)
    yield {"row": "original", "seed": None, **base, "seconds": 0.0}
    for label in cfg.rows:
        _, method, overrides = labels[label]
        spec = get_method(method).for_family(adapter.family)
        settings = spec.settings(model_id, {**cfg.settings.get(method, {}), **overrides})
        for seed in cfg.seeds:
            task = UnlearnTask(forget=forget, retain=retain, seed=seed)
            t0 = time.perf_counter()
            edit = spec.unlearn(adapter, task, settings, RunContext())
            seconds = time.perf_counter() - t0
            row = {"row": label, "seed": seed, **evaluate(adapter, edit.params, forget, retain, cfg.split, cfg.perplexity_texts),
                   "seconds": seconds, "settings": asdict(settings)}
            if attack:
                row["forget_relearned"] = relearned(edit.params, seed)
            yield row


def _cell(values: list[float], digits: int = 3) -> str:
    mean, low, high = mean_interval(values)
    return f"{mean:.{digits}f}" + (f" [{low:.{digits}f}, {high:.{digits}f}]" if low is not None and high != low else "")


def format_table(rows: list[dict], cfg: LMBenchConfig) -> str:
    relearned = cfg.relearn_steps > 0
    fmt = rows[0]["format"]
    other = next(f for f in FORMATS if f != fmt)
    head = (f"| row | forget acc, {fmt} (↓, chance 0.25) | retain acc, {fmt} (↑) | retain perplexity (↓) | forget acc, {other} | "
            f"retain acc, {other} |" + (" forget acc after relearning |" if relearned else "") + " seconds |")
    lines = [head, "|---|" + "---:|" * (head.count("|") - 2)]
    order = list(dict.fromkeys(r["row"] for r in rows))
    for label in order:
        mine = [r for r in rows if r["row"] == label]
        cells = [_cell([r[k] for r in mine], 2 if k == "perplexity" else 3) for k in (*METRICS, f"forget_{other}", f"retain_{other}")]
        if relearned:
            cells.append(_cell([r["forget_relearned"] for r in mine]))
        cells.append(f"{sum(r['seconds'] for r in mine) / len(mine):.1f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"{cfg.model}: forget {', '.join(cfg.forget)}; {cfg.split} questions; seeds {', '.join(map(str, cfg.seeds))} "
              "(mean, and a 95 % t-interval over seeds when there are 3 or more); the same seeds for every row."]
    if relearned:
        attack = text_relearn_settings({"steps": cfg.relearn_steps, "lr": cfg.relearn_lr})
        lines.append(f"Relearning attack (attacks/relearn_lm.py): {attack.steps} AdamW steps (lr {attack.lr:g}, batch "
                     f"{attack.batch_size}) on {attack.data_size} forget-domain documents, every weight; the original row: the "
                     "original model fine-tuned the same way.")
    return "\n".join(lines)


def cmd_bench_lm(args) -> int:
    """The CLI's ``bench lm``: prints the table, writes the rows as JSON (atomically)."""
    from ..atomic import write_text_atomic

    settings: dict[str, dict] = {}
    for pair in args.set or []:
        key, sep, value = pair.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot:
            raise InputError(f"--set takes method.key=value (e.g. rmu.steering=20), got '{pair}'.")
        settings.setdefault(method.strip(), {})[name.strip()] = value.strip()
    seeds = [int(s) for s in (args.seeds or "0,1,2").split(",") if s.strip()]
    cfg = LMBenchConfig(model=args.model or "facts-lm", forget=args.forget.split(","), seeds=seeds, split=args.split,
                        retain=args.retain.split(",") if args.retain else [], settings=settings,
                        rows=[r.strip() for r in args.rows.split(",")] if args.rows else [r[0] for r in ROWS],
                        relearn_steps=args.relearn_steps, device=args.device)
    rows = []
    for row in run_bench(cfg):
        rows.append(row)
        print(f"  {row['row']} (seed {row['seed']}): forget {row['forget']:.3f} retain {row['retain']:.3f} "
              f"ppl {row['perplexity']:.2f} ({row['seconds']:.1f} s)", file=sys.stderr)
    print(format_table(rows, cfg))
    if args.out:
        write_text_atomic(Path(args.out), json.dumps({"config": asdict(cfg), "rows": rows}, indent=2, default=str) + "\n")
        print(f"written to {args.out}", file=sys.stderr)
    return 0
