"""Measure what unlearning/hosting/zerogpu.py needs: seconds per iteration of each method and seconds per
sampling step per image, on this machine's device, then check the duration estimate against real runs.

    python bench/bench_zerogpu.py [--model digits] [--device auto] [--methods esd,uce,...] [--json out.json]

1. per method: wall time of the method at two iteration counts (n1, n2), side by side; the slope is
   the per-iteration cost (closed-form methods: the one solve, timed at n1 = n2 = 1);
2. sampling: one batch at two step counts; the slope / batch is the per image-step cost;
   (the intercept, a method's setup that does not grow with iterations, is printed beside it: the
   profile's `overhead_s` has to cover it, with the comparison's metrics);
3. for each method one whole request (unlearn + compare, as the app runs it) is timed and put beside
   the estimate that `estimate_seconds` makes from the numbers measured in 1-2 (with the margin, and
   without it): the margin should cover the real run.

Prints a markdown table and the `gpu_duration:` / `zerogpu:` YAML to paste into a hosted profile.
On a ZeroGPU Space run it on the Space's own hardware (a dedicated H200 slice), e.g. in a
Space terminal; nothing here imports `spaces`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(fn) -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    from unlearning.hosting.profile import HostProfile, ZeroGPU
    from unlearning.hosting.zerogpu import estimate_seconds
    from unlearning.methods import METHODS
    from unlearning.methods.base import RunContext, UnlearnTask
    from unlearning.models.catalog import load_adapter
    from unlearning.runner import RunRequest, execute, prepare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", default=None, help="comma-separated (default: every method for the model's family)")
    parser.add_argument("--iterations", default="2,6", help="n1,n2 for the iterative methods")
    parser.add_argument("--steps", default="2,10", help="two sampling step counts")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    adapter = load_adapter(args.model, args.device)
    n1, n2 = (int(x) for x in args.iterations.split(","))
    s1, s2 = (int(x) for x in args.steps.split(","))
    names = args.methods.split(",") if args.methods else [n for n, s in METHODS.items() if adapter.family in s.families]
    concepts = adapter.concepts()
    forget, retain = concepts[:1], concepts[1:4]
    task = UnlearnTask(forget=forget, retain=retain, seed=0)
    model_id = args.model if args.model in ("digits", "shapes-sd") else None

    # warm-up: first calls pay for kernels and caches
    adapter.generate([adapter.prompt_for(c) for c in retain[:1]], [0], num_inference_steps=2)

    # 2. sampling cost per image-step
    prompts = [adapter.prompt_for(retain[i % len(retain)]) for i in range(args.batch)]
    seeds = list(range(args.batch))
    t_s1 = timed(lambda: adapter.generate(prompts, seeds, num_inference_steps=s1))
    t_s2 = timed(lambda: adapter.generate(prompts, seeds, num_inference_steps=s2))
    sample_step_s = max(1e-6, (t_s2 - t_s1) / (s2 - s1) / args.batch)

    # 1. per-iteration cost of each method
    per_iter, iterative, fixed = {}, {}, {}
    for name in names:
        spec = METHODS[name]
        has_iterations = iterative[name] = any(f.name == "iterations" for f in dataclasses.fields(spec.settings_cls))
        counts = (n1, n2) if has_iterations else (1, 1)
        times = []
        for n in counts:
            settings = spec.settings(model_id, {"iterations": n} if has_iterations else {})
            times.append(timed(lambda spec=spec, settings=settings: spec.unlearn(adapter, task, settings, RunContext())))
        per_iter[name] = max(1e-6, (times[1] - times[0]) / (n2 - n1)) if has_iterations else times[0]
        fixed[name] = max(0.0, times[0] - n1 * per_iter[name]) if has_iterations else 0.0  # setup not proportional to n

    # 3. one whole request per method, measured beside the estimate
    zero = ZeroGPU(sample_step_s=sample_step_s, overhead_s=1.0)  # the model is loaded already: little overhead here
    profile = HostProfile(gpu_duration=per_iter, zerogpu=zero)
    rows = []
    for name in names:
        request = RunRequest(model=args.model, method=name, forget=forget, preserve=retain, settings={"iterations": n2} if iterative[name] else {},
                             device=args.device, forget_samples=4, retain_samples=2, num_inference_steps=s2)
        try:
            run = prepare(request, profile)
        except Exception as exc:  # noqa: BLE001 (a method that needs other settings on this model: say so, go on)
            rows.append({"method": name, "error": str(exc)})
            continue
        actual = timed(lambda run=run: list(execute(run)))
        estimate = estimate_seconds(request, profile)
        rows.append({"method": name, "s_per_iteration": per_iter[name], "fixed_s": fixed[name], "actual_s": actual, "estimate_s": estimate,
                     "estimate_no_margin_s": estimate / zero.margin, "covered": actual <= estimate})

    print(f"model {args.model} on {adapter.device} ({adapter.dtype}); sampling {sample_step_s * 1000:.2f} ms per image-step "
          f"(batch {args.batch}, {s1} vs {s2} steps: {t_s1:.2f} s vs {t_s2:.2f} s)\n")
    print("| method | s / iteration | method's fixed setup (s) | whole request (s) | estimate, margin 1.5 (s) | "
          "estimate, no margin (s) | covered |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | | | | | | skipped: {r['error']} |")
        else:
            print(f"| {r['method']} | {r['s_per_iteration']:.4f} | {r['fixed_s']:.2f} | {r['actual_s']:.2f} | {r['estimate_s']:.2f} | "
                  f"{r['estimate_no_margin_s']:.2f} | {'yes' if r['covered'] else 'NO'} |")
    print("\n# paste into the hosted profile (measured on this device)\ngpu_duration:")
    for name, value in per_iter.items():
        print(f"  {name}: {value:.4g}")
    print(f"zerogpu:\n  sample_step_s: {sample_step_s:.4g}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "device": str(adapter.device), "sample_step_s": sample_step_s,
                                               "per_iteration_s": per_iter, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
