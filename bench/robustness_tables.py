"""The robustness leaderboard as markdown (docs/robustness.md's per-model sections), read from robustness.json files.

    python bench/robustness_tables.py bench/results/robustness_shapes_sd.json
    python bench/robustness_tables.py --out bench/results/robustness_shapes_sd.json \
        bench/results/robustness_shapes_sd.json runs/robustness/shapes-sd/robustness.json

With several files (one model, one setting; e.g. a committed result whose cells are gone and a bench run that adds
methods) the rows are merged, a later file's (method, concept) row replacing an earlier one's, and the summary and
the closed-form / trained pooling recomputed (unlearning.benchmarks.robustness.merge_results); ``--out`` writes the
merged result atomically. Prints the leaderboard, the pooled kinds and every cell.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere


def main(argv: list[str] | None = None) -> int:
    from unlearning.atomic import write_text_atomic
    from unlearning.benchmarks import robustness as R

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="robustness.json files (merged in this order)")
    parser.add_argument("--out", type=Path, help="write the merged result here")
    args = parser.parse_args(argv)
    merged = R.merge_results([json.loads(p.read_text()) for p in args.results])
    if args.out:
        write_text_atomic(args.out, json.dumps(merged, indent=2, default=str) + "\n")
    print(R.format_leaderboard(merged["summary"]))
    print()
    print(R.format_by_kind(merged["by_kind"]))
    print()
    print(R.format_cells(merged["rows"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
