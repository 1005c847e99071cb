"""The peer methods on the trained twins with their twin-tuned settings: forget rate and retain accuracy of the
held-out concepts ("star" on shapes-sd, "3" on digits; the settings were tuned on heart / square and 5 / 8 by
bench/tune_peers.py), original vs unlearned, same seeds. The issue's bar: forget rate at most half the original's,
retain accuracy within 10 points.

    python bench/peer_twins.py [--methods speed,rece,mace,fmn,ca,sld] [--out bench/results/peer_twins.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from unlearning.atomic import write_text_atomic  # noqa: E402
from unlearning.benchmarks.rates import SHAPES_RETAIN, forget_retain_rates  # noqa: E402
from unlearning.methods import METHODS  # noqa: E402
from unlearning.methods.base import RunContext, UnlearnTask  # noqa: E402
from unlearning.models.catalog import load_adapter  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="speed,rece,mace,fmn,ca,sld")
    ap.add_argument("--out", default="bench/results/peer_twins.json")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for model_id, concept in (("shapes-sd", "star"), ("digits", "3")):
        adapter = load_adapter(model_id, "cpu")
        retain = SHAPES_RETAIN if model_id == "shapes-sd" else [c for c in adapter.concepts() if c != concept]
        f0, r0 = forget_retain_rates(adapter, adapter.unet, concept, retain)
        for method in args.methods.split(","):
            spec = METHODS[method]
            if model_id == "digits" and method == "sld":
                continue  # a label prompt is the safety concept itself: SLD's scale is 0 (tests/test_methods_peers_twins.py)
            t0 = time.perf_counter()
            edit = spec.unlearn(adapter, UnlearnTask(forget=[concept], retain=retain), spec.settings(model_id), RunContext())
            took = time.perf_counter() - t0
            f1, r1 = forget_retain_rates(adapter, edit.apply_to_copy(adapter.unet), concept, retain)
            row = {"model": model_id, "concept": concept, "method": method, "forget_before": f0, "forget_after": f1,
                   "retain_before": r0, "retain_after": r1, "unlearn_s": round(took, 2),
                   "meets_bar": f1 <= f0 / 2 and r1 >= r0 - 0.10}
            rows.append(row)
            print(f"{model_id:10} {concept:5} {method:6} forget {f0:.2f} -> {f1:.2f}  retain {r0:.2f} -> {r1:.2f}  "
                  f"{took:6.1f} s  {'meets the bar' if row['meets_bar'] else 'misses the bar'}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(args.out), json.dumps({"rows": rows, "threads": args.threads}, indent=2) + "\n")


if __name__ == "__main__":
    main()
