"""The protocol's leaderboards as markdown (docs/protocol.md's "Measured" section), read from protocol.json files.

    python bench/protocol_tables.py bench/results/protocol-shapes-sd bench/results/protocol-digits

Columns in UnlearnCanvas's order as protocol.csv has them (style = colours, object = shapes on shapes-sd; digits have
one kind, objects), each UA / IRA / CRA as the mean in % with its 95 % Student-t interval over the measured cells;
columns no row has (CRA and style on digits) are left out. With two kinds, the UA over all concepts beside them. Then the measured and missing cells of every method.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

ORIGINAL = "original"


def pct(entry: dict, metric: str) -> str:
    v = entry.get(metric)
    if v is None:
        return ""
    ci = entry.get(f"{metric}_ci95")
    return f"{100 * v:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def num(v, scale=1.0, fmt="{:.2f}") -> str:
    return "" if v is None else fmt.format(v * scale)


def kind_original(result: dict, kind: str) -> dict:
    """The original model's summary over one kind's concepts, its intervals included (protocol_results.summarise)."""
    from unlearning.benchmarks.protocol_results import summarise

    rows = [r for r in result["original"]["rows"] if r["concept"] in result["protocol"]["kinds"].get(kind, [])]
    return summarise(rows).get(ORIGINAL, {})


def table(result: dict) -> str:
    kinds = [k for k in ("style", "object") if k in result["by_kind"] or k in result["protocol"]["kinds"]]
    summary = {ORIGINAL: result["original"]["summary"].get(ORIGINAL, {}), **result["summary"]}
    by_kind = {k: {ORIGINAL: kind_original(result, k), **result["by_kind"].get(k, {})} for k in kinds}
    head = [f"{k.title()} {m} (%)" for k in kinds for m in ("UA", "IRA", "CRA")]
    rows = []
    for method, e in summary.items():
        cells = [pct(by_kind[k].get(method, {}), m) for k in kinds for m in ("ua", "ira", "cra")]
        worst = "" if e.get("worst_concept") is None else f"{e['worst_concept']} ({100 * e['worst_ua']:.1f})"
        rows.append([method, *cells, pct(e, "ua") if len(kinds) > 1 else "", num(e.get("fid")), num(e.get("unlearn_s"), fmt="{:.3g}"),
                     num(e.get("peak_mem_bytes"), 1e-9, "{:.3f}"), num(e.get("edit_bytes"), 1e-9, "{:.6f}"), worst,
                     str(e.get("n", 0))])
    header = ["Method", *head, "UA, all concepts (%)", "FID (evaluator)", "Time (s)", "Memory (GB)", "Storage (GB)", "Worst concept (UA %)", "Cells"]
    keep = [i for i in range(len(header)) if i == 0 or any(r[i] for r in rows)]
    lines = ["| " + " | ".join(header[i] for i in keep) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in keep) + "|"]
    lines += ["| " + " | ".join(r[i] or "-" for i in keep) + " |" for r in rows]
    return "\n".join(lines)


def coverage(result: dict) -> str:
    """Per method, what is measured: with more than one seed in the table, per seed (seed 0 on every concept, seeds
    1 and 2 on a few, ...)."""
    concepts, seeds = result["protocol"]["concepts"], result["protocol"]["seeds"]
    lines = []
    for method in result["protocol"]["methods"]:
        parts = []
        for seed in seeds:
            done = [r["concept"] for r in result["rows"] if r["method"] == method and r["seed"] == seed]
            failed = [f["concept"] for f in result["failed"] if f["method"] == method and f["seed"] == seed]
            missing = [m["concept"] for m in result["missing"] if m["method"] == method and m["seed"] == seed]
            state = "all" if len(done) == len(concepts) else f"{len(done)} of {len(concepts)}"
            text = f"{state} measured" if done or failed else "not measured"
            if 0 < len(done) < len(concepts):
                text += f" ({', '.join(done)})"
            if failed:
                text += f"; failed: {', '.join(failed)}"
            if missing and done:
                text += f"; missing: {', '.join(missing)}"
            parts.append((seed, text))
        groups: dict[str, list[int]] = {}  # seeds with the same coverage said once
        for seed, text in parts:
            groups.setdefault(text, []).append(seed)
        if len(seeds) == 1:
            said = parts[0][1]
        elif len(groups) == 1:
            said = f"{parts[0][1]} (seeds {', '.join(map(str, seeds))})"
        else:
            said = "; ".join(f"seed{'s' if len(ss) > 1 else ''} {', '.join(map(str, ss))}: {text}" for text, ss in groups.items())
        lines.append(f"- {method}: {said}")
    return "\n".join(lines)


def main() -> None:
    for folder in sys.argv[1:]:
        result = json.loads((Path(folder) / "protocol.json").read_text())
        p = result["protocol"]
        print(f"### {result['model']} ({folder})\n")
        print(f"{len(p['concepts'])} concepts, seeds {p['seeds']}, {p['samples_per_prompt']} images per prompt, "
              f"{p['num_inference_steps']} {p['sampler']} steps, guidance {p['guidance_scale']}; cell seconds "
              f"{p['cell_seconds_total']:.0f}\n")
        print(table(result) + "\n")
        print(coverage(result) + "\n")


if __name__ == "__main__":
    main()
