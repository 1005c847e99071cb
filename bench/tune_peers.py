"""Twin settings of the peer methods (SPEED, RECE, MACE, SLD, Forget-Me-Not, Concept Ablation), tuned on held-out
concepts only: the tests and the README judge "star" on shapes-sd and "3" on digits, and the scaling bench uses
concept order seed 0, so tuning looks at other shapes ("heart", "square"), other digits ("5", "8") and the
scaling order with seed 1 (8 colour-shape pairs, its own 16 preserved pairs).

    python bench/tune_peers.py [--model shapes-sd|digits] [--problems single,pairs] [--forget-samples 16]
        [--retain-per-concept 2] METHOD ["{'lr': 1e-4}" ...]

Each settings dict (a Python literal, over the paper defaults) is run on every held-out problem; printed per
problem: forget rate before -> after, retain accuracy before -> after, edit seconds, OK where the forget rate at
least halves at a retain cost of at most 10 points; then the trade-off score summed over the problems: forget-rate
drop minus retain-accuracy drop. The shapes-sd values of SLD, Forget-Me-Not, gradient ascent and fine-tuning are the
settings with the highest score, the defaults ("{}") among the candidates (docs/protocol.md, "Twin values for SLD,
..."); the earlier peers' values were chosen by the bar.
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unlearning.benchmarks.rates import forget_retain_rates  # noqa: E402
from unlearning.benchmarks.scaling import ScalingConfig, concept_order, measure, retained_pairs  # noqa: E402
from unlearning.methods import get_method  # noqa: E402
from unlearning.methods.base import RunContext, UnlearnTask  # noqa: E402
from unlearning.models.catalog import load_adapter  # noqa: E402

HELD_OUT = {"shapes-sd": ["heart", "square"], "digits": ["5", "8"]}


def single_rates(adapter, unet, concept: str, retain: list[str], n: int = 16, per_retain: int = 2) -> tuple[float, float]:
    """Forget rate over the concept's paraphrases (seeds 500..), retain accuracy over the other concepts (seeds 900..):
    other seeds than the tests' and bench/peer_twins.py's."""
    return forget_retain_rates(adapter, unet, concept, retain, n, per_retain, forget_seed=500, retain_seed=900)


def problems(adapter, model: str, which: list[str], n: int = 16, per_retain: int = 2):
    """(name, task, scorer(unet) -> (forget, retain)) for each held-out problem."""
    if "single" in which:
        for concept in HELD_OUT[model]:
            retain = [c for c in adapter.default_retain([concept])]
            yield concept, UnlearnTask(forget=[concept], retain=retain), \
                lambda u, c=concept, r=retain: single_rates(adapter, u, c, r, n=n, per_retain=per_retain)
    if "pairs" in which and model == "shapes-sd":
        cfg = ScalingConfig(seed=1, forget_total=32, per_retain=1)
        order = concept_order(adapter, cfg.seed)
        for k in (8,):
            retain = retained_pairs(order, k, cfg)

            def score(u, k=k, retain=retain):
                row, _ = measure(adapter, u, order[:k], retain, cfg)
                return row["forget_rate"], row["retain_accuracy"]

            yield f"{k} pairs (seed 1)", UnlearnTask(forget=order[:k], retain=retain, seed=1), score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("method")
    parser.add_argument("configs", nargs="*", default=["{}"])
    parser.add_argument("--model", default="shapes-sd")
    parser.add_argument("--problems", default="single,pairs")
    parser.add_argument("--forget-samples", type=int, default=16, help="single problems: samples of the forgotten concept")
    parser.add_argument("--retain-per-concept", type=int, default=2,
                        help="single problems: samples per retained concept (more: a finer retain accuracy to choose between finalists)")
    args = parser.parse_args()
    adapter = load_adapter(args.model, "cpu")
    spec = get_method(args.method)
    probs = list(problems(adapter, args.model, args.problems.split(","), args.forget_samples, args.retain_per_concept))
    base = {name: score(adapter.unet) for name, _, score in probs}
    print("original", {k: tuple(round(x, 2) for x in v) for k, v in base.items()}, flush=True)
    for text in args.configs:
        overrides = ast.literal_eval(text)
        out, total = [], 0.0
        for name, task, score in probs:
            t0 = time.perf_counter()
            edit = spec.unlearn(adapter, task, spec.settings(None, overrides), RunContext())
            seconds = time.perf_counter() - t0
            f, r = score(edit.apply_to_copy(adapter.unet))
            f0, r0 = base[name]
            ok = f <= f0 / 2 and r >= r0 - 0.10
            total += (f0 - f) - (r0 - r)
            out.append(f"{name}: forget {f0:.2f}->{f:.2f} retain {r0:.2f}->{r:.2f} {seconds:.1f}s{' OK' if ok else ''}")
        print(args.method, overrides, " | ".join(out), f"| score {total:+.2f}", flush=True)


if __name__ == "__main__":
    main()
