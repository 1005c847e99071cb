"""UAM on the digits twin: each wrapped method with and without UAM, same seeds, side by side.

    python bench/bench_uam.py [--forget 3] [--seed 0] [--rhos 0.05,0.5] [--methods gradient_ascent,esd,vdu]
                              [--json out.json]

Every row is `python -m unlearning run --model digits --method M --forget 3 --forget-samples 32
--retain-samples 8` with the twin-tuned settings, UAM off, then on with each rho (gamma = 1); ESD gets
retain_weight = 1 in every row (UAM needs a retain loss, and the "off" row must differ only by UAM).
The forget rate / retain accuracy come from the project's evaluator on the same sample seeds.
Prints a markdown table (paste into the README).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXTRA = {"esd": {"retain_weight": 1.0}}  # ESD's preservation term: the retain loss UAM needs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--forget", default="3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rhos", default="0.05,0.5")
    parser.add_argument("--methods", default="gradient_ascent,esd,vdu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from unlearning.runner import RunRequest, execute, prepare

    torch.set_num_threads(max(1, torch.get_num_threads()))
    rhos = [float(r) for r in args.rhos.split(",") if r.strip()]
    rows = []
    for method in args.methods.split(","):
        for rho in [None, *rhos]:
            settings = dict(EXTRA.get(method, {}))
            if rho is not None:
                settings.update(uam=True, uam_rho=rho, uam_gamma=1.0)
            request = RunRequest(model="digits", method=method, forget=[args.forget], settings=settings, seed=args.seed,
                                 device="cpu", forget_samples=32, retain_samples=8)
            t0 = time.perf_counter()
            metrics = None
            for event in execute(prepare(request)):
                if event.kind == "done":
                    metrics = event.state.metrics
            row = {
                "method": method, "uam": rho is not None, "rho": rho, "settings": settings,
                "forget_before": metrics["forget_rate"]["original"], "forget_after": metrics["forget_rate"]["unlearned"],
                "retain_before": metrics["retain_accuracy"]["original"], "retain_after": metrics["retain_accuracy"]["unlearned"],
                "fid_after": metrics.get("evaluator_fid", {}).get("unlearned"),
                "unlearn_s": metrics["timings"]["unlearn_s"], "total_s": time.perf_counter() - t0,
            }
            rows.append(row)
            print(json.dumps(row, default=str), file=sys.stderr, flush=True)

    print("| method | UAM | forget rate before → after | retain accuracy before → after | evaluator-FID after | unlearning (s) |")
    print("|---|---|---|---|---:|---:|")
    for r in rows:
        uam = f"on, rho {r['rho']:g}, gamma 1" if r["uam"] else "off"
        print(f"| {r['method']} | {uam} | {r['forget_before']:.2f} → {r['forget_after']:.2f} | "
              f"{r['retain_before']:.2f} → {r['retain_after']:.2f} | {r['fid_after']:.1f} | {r['unlearn_s']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
