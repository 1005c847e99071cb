"""``python -m unlearning bench classifier``: every classifier method on one scenario, side by side.

Same original model, same split, same seeds and the same batches for every row; a model retrained
from scratch on the retain set is the reference, and "gap" is the mean absolute difference from it
over forget / retain / test accuracy and the MIA score (the summary the UAM and SalUn papers use).

The optional ``torchunlearn`` row runs the seed authors' own UAM (their ``optim/minimizer.py``, as
published on PyPI) on the same model copy, optimiser, steps and batches. It is a benchmark-only
dependency, never imported by the package otherwise: install it with
``python -m pip install --target DIR --no-deps torchunlearn`` and put DIR on PYTHONPATH. Its package
``__init__`` imports matplotlib and torchvision's attack code, which this project does not install, so
only the minimizer's file is loaded (it needs nothing but torch); the published wheel (0.1.0) also lacks
the ``unlearn/trainers`` package its ``Unlearn`` easy mode imports, so no other part of it could run.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..classifier.methods import ClassifierSettings, unlearn
from ..classifier.task import ForgetSplit, evaluate, make_split, train_model
from ..errors import InputError

log = logging.getLogger(__name__)

# (row label, method, uam); "torchunlearn" is the authors' UAM, when installed
ROWS = [
    ("finetune", "finetune", False),
    ("NegGrad+", "neggrad", False),
    ("NegGrad+ + UAM (ours)", "neggrad", True),
    ("UAM (torchunlearn, as shipped)", "torchunlearn", True),
    ("RandomLabel", "random_label", False),
    ("RandomLabel + UAM (ours)", "random_label", True),
    ("L1-sparse", "l1_sparse", False),
    ("RMU (feature layer)", "rmu", False),
    ("RMU + UAM (ours)", "rmu", True),
]
GAP_KEYS = ("forget", "retain", "test", "mia")


@dataclass
class ClassifierBenchConfig:
    scenario: str = "class"  # "class" or "random"
    forget_class: int = 3
    forget_fraction: float = 0.1  # random forgetting: share of the training split
    seed: int = 0
    train_epochs: int = 15  # the original and the retrained model


def load_torchunlearn_uam():
    """(the authors' UAM class, version) from an installed torchunlearn, or (None, why not)."""
    spec = importlib.util.find_spec("torchunlearn")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None, "torchunlearn is not installed (pip install --target DIR --no-deps torchunlearn; PYTHONPATH=DIR)"
    path = Path(next(iter(spec.submodule_search_locations))) / "optim" / "minimizer.py"
    if not path.is_file():
        return None, f"torchunlearn found, but without optim/minimizer.py ({path})"
    module_spec = importlib.util.spec_from_file_location("torchunlearn_minimizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    try:
        from importlib.metadata import version

        found = version("torchunlearn")
    except Exception:  # noqa: BLE001 - a missing dist-info only loses the version string
        found = "unknown version"
    return module.UAM, found


def run_torchunlearn(uam_cls, model: torch.nn.Module, split: ForgetSplit, settings: ClassifierSettings,
                     seed: int) -> tuple[torch.nn.Module, float]:
    """The authors' UAM step on a copy of ``model``: same optimiser, steps and batches as ``unlearn``.

    Their ``UAM.step(cost_fn, inputs)`` ascends along the forget samples' cost (here cross-entropy, the
    paper's forget loss it maximises), steps the retain cost at that point, moves back and lets the
    SGD step; there is no separate forget term."""
    started = time.perf_counter()
    edited = copy.deepcopy(model).train()
    opt = torch.optim.SGD(edited.parameters(), lr=settings.lr, momentum=0.9, weight_decay=5e-4)
    minimizer = uam_cls(edited, opt, rho=settings.uam_rho, gamma=settings.uam_gamma)
    g = torch.Generator().manual_seed(seed)
    x, y = split.images, split.labels

    def batch(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = indices[torch.randint(len(indices), (settings.batch_size,), generator=g)]
        return x[idx], y[idx]

    def cost_fn(data, reduction: str | None = "mean") -> torch.Tensor:
        images, labels = data
        return F.cross_entropy(edited(images), labels, reduction=reduction or "none")

    for _ in range(settings.steps):
        forget, retain = batch(split.forget), batch(split.retain)
        opt.zero_grad(set_to_none=True)
        minimizer.step(cost_fn, {"Forget": forget, "Retain": retain})
    return edited.eval(), time.perf_counter() - started


def run_bench(cfg: ClassifierBenchConfig, settings: ClassifierSettings | None = None,
              with_torchunlearn: bool = True) -> Iterator[dict]:
    """Yields one row per model: original, retrain, then each method of ROWS."""
    settings = settings or ClassifierSettings()
    if cfg.train_epochs < 1:
        raise InputError(f"train epochs must be >= 1; got {cfg.train_epochs}.")
    split = make_split(cfg.scenario, forget_class=cfg.forget_class,
                       forget_fraction=cfg.forget_fraction if cfg.scenario == "random" else None, seed=cfg.seed)
    log.info("classifier bench: %s", split.describe())
    t0 = time.perf_counter()
    original = train_model(split, split.train, epochs=cfg.train_epochs, seed=cfg.seed)
    yield {"row": "original", **evaluate(original, split), "seconds": time.perf_counter() - t0, "split": split.describe()}
    t0 = time.perf_counter()
    retrained = train_model(split, split.retain, epochs=cfg.train_epochs, seed=cfg.seed)
    reference = evaluate(retrained, split)
    yield {"row": "retrain (reference)", **reference, "seconds": time.perf_counter() - t0}
    uam_cls, why = load_torchunlearn_uam() if with_torchunlearn else (None, "not requested")
    for label, method, uam in ROWS:
        if method == "torchunlearn":
            if uam_cls is None:
                yield {"row": label, "unavailable": why}
                continue
            label = f"UAM (torchunlearn {why}, as shipped)"  # `why` holds the version when it loaded
            model, seconds = run_torchunlearn(uam_cls, original, split, settings, cfg.seed)
        else:
            model, seconds = unlearn(original, split, method, settings, uam=uam, seed=cfg.seed)
        metrics = evaluate(model, split)
        gap = sum(abs(metrics[k] - reference[k]) for k in GAP_KEYS) / len(GAP_KEYS)
        yield {"row": label, **metrics, "gap": gap, "seconds": seconds}


def format_table(rows: list[dict], cfg: ClassifierBenchConfig, settings: ClassifierSettings) -> str:
    class_wise = cfg.scenario == "class"
    head = "| model | forget acc | retain acc | test acc |" + (" test acc, forgotten class |" if class_wise else "")
    head += " MIA | gap to retrain (↓) | seconds |"
    lines = [head, "|" + "---|" + "---:|" * (head.count("|") - 2)]
    for r in rows:
        if "unavailable" in r:
            lines.append(f"| {r['row']} | unavailable: {r['unavailable']} |")
            continue
        cells = [f"{r['forget']:.3f}", f"{r['retain']:.3f}", f"{r['test']:.3f}"]
        if class_wise:
            cells.append(f"{r['test_forget']:.3f}")
        cells += [f"{r['mia']:.3f}", f"{r['gap']:.3f}" if "gap" in r else "", f"{r['seconds']:.1f}"]
        lines.append(f"| {r['row']} | " + " | ".join(cells) + " |")
    what = f"class {cfg.forget_class}" if class_wise else f"random {cfg.forget_fraction:.0%} of the training split"
    s = asdict(settings)
    lines.append("")
    lines.append(f"Forgetting {what}; {rows[0].get('split', '')}; seed {cfg.seed}; SGD lr {s['lr']:g}, momentum 0.9, "
                 f"{s['steps']} steps of {s['batch_size']} forget + {s['batch_size']} retain samples; UAM rho {s['uam_rho']:g}, "
                 f"gamma {s['uam_gamma']:g}.")
    return "\n".join(lines)


def cmd_bench_classifier(args) -> int:
    """The CLI's ``bench classifier``: prints the table, writes the rows as JSON (atomically)."""
    import json
    import os
    import sys

    from ..classifier.methods import settings_from

    settings = settings_from(args.settings)  # unknown / out-of-range settings fail before any training
    cfg = ClassifierBenchConfig(scenario=args.scenario, forget_class=args.forget_class, forget_fraction=args.fraction,
                                seed=args.seed, train_epochs=args.train_epochs)
    rows = []
    for row in run_bench(cfg, settings, with_torchunlearn=not args.no_torchunlearn):
        rows.append(row)
        if "unavailable" in row:
            print(f"  {row['row']}: unavailable: {row['unavailable']}", file=sys.stderr)
        else:
            print(f"  {row['row']}: forget {row['forget']:.3f} retain {row['retain']:.3f} test {row['test']:.3f} "
                  f"MIA {row['mia']:.3f} ({row['seconds']:.1f} s)", file=sys.stderr)
    print(format_table(rows, cfg, settings))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps({"config": asdict(cfg), "settings": asdict(settings), "rows": rows}, indent=2) + "\n")
        os.replace(tmp, out)
        print(f"written to {out}", file=sys.stderr)
    return 0
