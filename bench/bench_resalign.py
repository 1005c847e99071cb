"""Does the concept come back after a benign fine-tune? ESD, gradient ascent and ResAlign side by side.

    python bench/bench_resalign.py [--model digits] [--forget 3] [--methods esd,gradient_ascent,resalign]
                                   [--attack lr=1e-3 --attack steps=200] [--also "few-shot 8:forget_shots=8,data_size=4"]
                                   [--set resalign.iterations=40]
                                   [--forget-samples 32] [--retain-samples 4] [--seed 0] [--out bench/results/resalign.json]

Each method unlearns with the twin-tuned settings (+ --set METHOD.KEY=VALUE), then the same relearning
attack (the downstream user's fine-tune on the retained concepts only; unlearning.attacks.relearn,
twin-tuned values + --attack KEY=VALUE) runs on every edit, and all three stages are scored on the same
seeds by the comparison engine. Each --also LABEL:KEY=VALUE,... adds one more attack (the base attack's
settings with those changed) that every edit also goes through, e.g. the few-shot relearning attack.
Prints a Markdown table and writes the rows (with every setting and attack) to --out atomically. CPU is fine; a GPU is used when present (--device).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="digits")
    parser.add_argument("--forget", default="3")
    parser.add_argument("--methods", default="esd,gradient_ascent,resalign")
    parser.add_argument("--attack", action="append", default=[], metavar="KEY=VALUE", help="relearning setting")
    parser.add_argument("--also", action="append", default=[], metavar="LABEL:KEY=VALUE,...",
                        help="one more attack: the base attack with these settings changed")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE", help="method setting")
    parser.add_argument("--forget-samples", type=int, default=32)
    parser.add_argument("--retain-samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="bench/results/resalign.json")
    args = parser.parse_args()
    from unlearning.threads import configure_threads

    configure_threads()  # the user's OMP_NUM_THREADS / UNLEARNING_THREADS, else one per core (docs/speed.md)

    from unlearning.attacks.comparison import compare_relearning, format_comparison
    from unlearning.attacks.relearn import relearn_settings
    from unlearning.methods.base import RunContext, UnlearnTask
    from unlearning.models.catalog import load_adapter, resolve

    model_id, _, _ = resolve(args.model)
    adapter = load_adapter(args.model, args.device)
    forget = [adapter.validate_concept(c.strip()) for c in args.forget.split(",") if c.strip()]
    task = UnlearnTask(forget=forget, retain=adapter.default_retain(forget), seed=args.seed)
    attack = relearn_settings(model_id, parse_pairs(args.attack))
    attacks = {"benign" if not attack.forget_shots else f"{attack.forget_shots}-shot": attack}
    for item in args.also:
        label, sep, pairs = item.partition(":")
        if not sep or not label.strip():
            raise SystemExit(f"error: --also expects LABEL:KEY=VALUE,..., got {item!r}")
        attacks[label.strip()] = relearn_settings(model_id, {**parse_pairs(args.attack), **parse_pairs(pairs.split(","))})
    overrides: dict[str, dict] = {}
    for key, value in parse_pairs(args.set).items():
        method, _, field = key.partition(".")
        overrides.setdefault(method, {})[field] = value
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    print(f"{args.model}: forget {forget}, retain {len(task.retain)} concepts, seed {args.seed}; attack: "
          f"{attack.mode}, lr {attack.lr:g}, {attack.steps} steps x batch {attack.batch_size} x {attack.accumulation}", flush=True)

    def on_step(report) -> None:
        if report.step == report.total or report.step % max(1, report.total // 5) == 0:
            print(f"    step {report.step}/{report.total}  loss {report.loss:.4f}  {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    rows = []
    t0 = time.perf_counter()
    for row in compare_relearning(adapter, model_id, task, methods, attacks, forget_samples=args.forget_samples,
                                  retain_samples=args.retain_samples, overrides=overrides, ctx=RunContext(on_step)):
        rows.append(row)
        print(f"  {row['method']} / {row['attack']}: unlearn {row['unlearn_s']:.0f} s, relearn {row['relearn_s']:.0f} s, forget "
              f"{row['forget_unlearned']:.2f} -> {row['forget_finetuned']:.2f}", flush=True)
    print()
    print(format_comparison(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"model": args.model, "forget": forget, "retain": task.retain, "seed": args.seed,
            "forget_samples": args.forget_samples, "retain_samples": args.retain_samples,
            "attacks": {k: dataclasses.asdict(v) for k, v in attacks.items()}, "rows": rows, "seconds": time.perf_counter() - t0,
            "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(adapter.device),
                        "cpu": platform.processor() or platform.machine()},
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, out)
    print(f"\nwritten to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
