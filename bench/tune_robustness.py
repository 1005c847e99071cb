"""Twin values of the attacks and of AdvUnlearn, chosen on held-out concepts (never the leaderboard's).

    python bench/tune_robustness.py --model shapes-sd --concepts heart,ring [--what uda,inversion,advunlearn]
    python bench/tune_robustness.py --model digits --concepts 1,7

For each held-out concept: an ESD-x cell (the ordinary run path, cached under runs/robustness-tuning), then
- uda:        UnlearnDiffAtk on that edit at several budgets / spaces / learning rates;
- inversion:  concept inversion at several step counts;
- advunlearn: AdvUnlearn cells at several learning rates, each scored (UA, retain, evaluator-FID) and attacked
              with UnlearnDiffAtk at the twin values;
- esd-u:      ESD-u cells at several learning rates (ESD's twin values, tuned for ESD-x, wreck the model with ESD-u),
              scored and attacked the same way.
Prints one Markdown table per part; rows go to bench/results/robustness_tuning_<model>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GRIDS = {
    "shapes-sd": {
        "uda": [{}, {"timesteps": 20, "iterations": 20}, {"space": "continuous", "lr": 2e-3, "weight_decay": 0.0}],
        "inversion": [{}, {"steps": 400}],
        "advunlearn": [{}, {"lr": 1e-4}],
        "esd-u": [{"lr": 1e-4}, {"lr": 3e-5}],
    },
    "digits": {
        "uda": [{}, {"lr": 1e-2}, {"lr": 2e-1}, {"space": "discrete", "lr": 1e-2, "weight_decay": 0.1}],
        "inversion": [{}, {"steps": 400}],
        "advunlearn": [{}, {"lr": 1e-4}],
        "esd-u": [{"lr": 1e-4}, {"lr": 3e-5}],
    },
}


def save(out: Path, model_id: str, row: dict) -> None:
    """Add one row to the results file at once (a long tuning run keeps what it measured if stopped)."""
    print(json.dumps(row, default=str), flush=True)
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    out.write_text(json.dumps({"model": model_id, "rows": [*rows, row]}, indent=2, default=str) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="shapes-sd")
    parser.add_argument("--concepts", default="heart,ring")
    parser.add_argument("--what", default="uda,inversion,advunlearn")
    parser.add_argument("--root", default="runs/robustness-tuning")
    parser.add_argument("--grid", action="append", default=[], metavar="PART=JSON",
                        help='replace one part\'s grid, e.g. uda=\'[{}, {"lr": 0.2}]\'')
    args = parser.parse_args()

    from unlearning.attacks.adversarial import execute_attack, prepare_attack
    from unlearning.benchmarks.robustness import cell_folder, cell_row, ensure_cell
    from unlearning.models.catalog import resolve

    model_id, _, _ = resolve(args.model)
    grid = dict(GRIDS[model_id])
    for item in args.grid:
        part, _, text = item.partition("=")
        grid[part] = json.loads(text)
    out = Path(__file__).resolve().parent / "results" / f"robustness_tuning_{model_id}.json"
    what = [w.strip() for w in args.what.split(",") if w.strip()]

    def attack(folder: Path, kind: str, overrides: dict) -> dict:
        t0 = time.perf_counter()
        result, _ = execute_attack(prepare_attack(folder, kind, overrides=overrides, write=False))
        s = result.summary()
        return {"asr_before": s["asr_before"], "asr_after": s["asr_after"], "n": s["n"], "attack_s": s["attack_s"],
                "iterations": s["iterations"], "wall_s": time.perf_counter() - t0,
                "final_loss": result.loss_log[-1]["loss"] if result.loss_log else None}

    for concept in [c.strip() for c in args.concepts.split(",") if c.strip()]:
        esd = cell_folder(Path(args.root), model_id, "esd-x", concept, 0)
        ensure_cell(esd, args.model, "esd-x", concept, 0)
        for part in ("uda", "inversion"):
            if part in what:
                for overrides in grid[part]:
                    row = {"part": part, "concept": concept, "edit": "esd-x", "overrides": overrides,
                           **attack(esd, "unlearndiffatk" if part == "uda" else "inversion", overrides)}
                    save(out, model_id, row)
        for method in ("advunlearn", "esd-u"):
            if method not in what:
                continue
            for overrides in grid[method]:
                folder = cell_folder(Path(args.root), model_id, method, concept, 0, overrides)
                t0 = time.perf_counter()
                ensure_cell(folder, args.model, method, concept, 0, overrides)
                cell = cell_row(folder, method, concept)
                row = {"part": method, "concept": concept, "overrides": overrides, "ua": cell["ua"], "retain": cell["retain"],
                       "fid": cell["fid"], "unlearn_s": cell["unlearn_s"], "cell_s": time.perf_counter() - t0,
                       "uda": attack(folder, "unlearndiffatk", {})}
                save(out, model_id, row)
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
