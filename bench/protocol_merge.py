"""Merge protocol results of one model into one folder (protocol.json, protocol.csv, heatmap.png), e.g. the committed
shapes-sd leaderboard (its cell store is not kept in git) and a later run that adds methods:

    python -m unlearning bench protocol --model shapes-sd --methods rece,mace --concepts all --out runs/protocol-more
    python bench/protocol_merge.py bench/results/protocol-shapes-sd bench/results/protocol-shapes-sd runs/protocol-more

A later folder's (method, concept, seed) row replaces an earlier one's; summaries and missing cells are recomputed
(unlearning.benchmarks.protocol_results.merge_results). Results of different models or sampling plans, or a method at
two settings, are refused unless the method is named in `--replace` (retuned since: its rows come only from the last
folder that measured it, e.g. `--replace sld,fmn` after new twin values). Then `python bench/protocol_tables.py ...` renders docs/protocol.md's tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere


def main(argv: list[str] | None = None) -> int:
    from unlearning.benchmarks.protocol_results import format_table, load_results, merge_results, write_outputs

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the merged protocol.json, protocol.csv and heatmap.png")
    parser.add_argument("folders", nargs="+", type=Path, help="protocol result folders, merged in this order")
    parser.add_argument("--replace", default="", help="comma-separated methods retuned since the earlier folders: their "
                        "rows and settings come only from the last folder that measured them")
    args = parser.parse_args(argv)
    replace = [m.strip() for m in args.replace.split(",") if m.strip()]
    merged = merge_results([load_results(folder) for folder in args.folders], replace=replace)  # every input read before anything is written
    args.out.mkdir(parents=True, exist_ok=True)
    for path in write_outputs(merged, args.out).values():
        print(f"wrote {path}", file=sys.stderr)
    print(format_table(merged))
    print(f"\n{len(merged['rows'])} cells measured, {len(merged['missing'])} missing, {len(merged['failed'])} failed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
