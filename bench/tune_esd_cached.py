"""Tune ESD's cached-trajectory settings on a *held-out* concept (the speed bench measures others).

    python bench/tune_esd_cached.py --model digits --forget 5 '{"iterations": 30}' '{"iterations": 20, "batch_size": 8}' ...

Each argument is a JSON object of ESD settings over the twin's reference values (the twin-tuned values
with trajectory=reference, as before the cached bank existed); the first row is always that reference.
Rows: forget rate and retain accuracy on the same seeds (32 forget samples, 4 per retained concept),
and the unlearning wall-clock. Held-out concepts used for the shipped values: digits "5" and "7",
shapes-sd "heart" (the speed bench and the app measure digits "3" and shapes-sd "star").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unlearning.benchmarks.speed import OLD_TUNED  # noqa: E402
from unlearning.threads import configure_threads  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="digits")
    parser.add_argument("--forget", default="5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--forget-samples", type=int, default=32)
    parser.add_argument("--retain-samples", type=int, default=4)
    parser.add_argument("configs", nargs="*")
    args = parser.parse_args()
    configure_threads()

    from unlearning.compare import ComparisonState, generate_plan, plan_comparison, score
    from unlearning.methods import get_method
    from unlearning.methods.base import RunContext, UnlearnTask
    from unlearning.models.catalog import load_adapter

    adapter = load_adapter(args.model, "cpu")
    forget = [adapter.validate_concept(c) for c in args.forget.split(",")]
    task = UnlearnTask(forget=forget, retain=adapter.default_retain(forget), seed=args.seed)
    plan = plan_comparison(adapter, task, forget_samples=args.forget_samples, retain_samples=args.retain_samples, seed=args.seed)
    original, t_orig = generate_plan(adapter, adapter.unet, plan)
    spec = get_method("esd")
    print(f"{args.model}: forget {forget} (held out), seed {args.seed}, {len(plan.items)} samples per model\n")
    print("| settings | unlearn s | forget rate | retain acc. |\n|---|---:|---:|---:|")
    for i, text in enumerate(["{}", *args.configs]):
        overrides = {**OLD_TUNED[args.model], **json.loads(text)}
        settings = spec.settings(None, overrides)
        t0 = time.perf_counter()
        edit = spec.unlearn(adapter, task, settings, RunContext())
        seconds = time.perf_counter() - t0
        images, t = generate_plan(adapter, edit.apply_to_copy(adapter.unet).eval(), plan)
        m = score(adapter, ComparisonState(plan, original=original, unlearned=images, seconds={"original": t_orig, "unlearned": t}),
                  task)
        label = "reference (old twin values)" if i == 0 else text
        if i == 0:
            print(f"| original model | - | {m['forget_rate']['original']:.2f} | {m['retain_accuracy']['original']:.2f} |")
        print(f"| {label} | {seconds:.1f} | {m['forget_rate']['unlearned']:.2f} | {m['retain_accuracy']['unlearned']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
