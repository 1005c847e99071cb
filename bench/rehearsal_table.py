"""The full-size rehearsal table of docs/rehearsal.md from the rehearsal.json files kept in bench/results/rehearsal.

    python bench/rehearsal_table.py [--results bench/results/rehearsal]

Keeps one JSON per architecture and method (``<arch>/<method>.json``, copied from a rehearsal's ``--out`` folder:
``python bench/rehearsal_table.py --collect runs/rehearsal/sd15``) and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "rehearsal"
GIB = 1024**3


def collect(folder: Path, results: Path) -> list[Path]:
    """Copy <folder>/<method>/rehearsal.json to <results>/<arch>/<method>[-<variant>].json."""
    out = []
    for path in sorted(folder.glob("*/rehearsal.json")):
        r = json.loads(path.read_text())
        target = results / r["arch"] / f"{path.parent.name}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        out.append(target)
    return out


def variant(r: dict) -> str:
    """What the run changed beyond the rehearsal's defaults (group, LoRA, spaces, precision)."""
    s, keys = r.get("rehearsal_settings", {}), ("variant", "group", "lora_rank", "ft_spaces", "mixed_precision", "gradient_checkpointing")
    shown = [f"{k}={s[k]}" for k in keys if k in s and k not in ("mixed_precision", "gradient_checkpointing")]
    if r["settings"].get("mixed_precision", "no") == "no" and r["dtype"] == "float32":
        shown.append("no autocast")
    return ", ".join(shown)


def row(r: dict) -> str:
    proj = r["projected_gpu_bytes"]
    proj_text = " / ".join(f"{proj[k] / GIB:.1f}" for k in ("float16", "bfloat16") if k in proj) or f"{proj['float32'] / GIB:.1f} (fp32)"
    spi = "-" if r["s_per_iteration"] is None else f"{r['s_per_iteration']:.1f}"
    pub = f"{r['published']['gb']:g}" if r.get("published") else "-"
    b = r["bytes"]
    parts = " / ".join(f"{b[k] / GIB:.2f}" for k in ("weights", "grads", "optimizer", "activations"))
    return (f"| {r['arch']} | {r['method']} | {variant(r)} | {r['dtype']} | {r['resolution']} | {r['trainable_params'] / 1e6:.1f} M | "
            f"{r['load_s']:.0f} | {r['unlearn_s']:.0f} | {spi} | {r['peak_rss_bytes'] / GIB:.1f} | {parts} | "
            f"{r['projection']['R_user']} | {proj_text} | {pub} |")


HEADER = ("| arch | method | settings | dtype | px | trained | load s | unlearn s | s / iteration | peak RSS GiB | "
          "weights / grads / optimizer / activations GiB | user px | projected GPU GiB fp16 / bf16 | published GB |\n"
          "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
ORDER = ["sd15", "sd14", "sd21-base", "sdxl", "zero123-xl"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--collect", type=Path, default=None, help="a rehearsal --out folder to copy into --results first")
    args = parser.parse_args()
    if args.collect:
        for path in collect(args.collect, args.results):
            print(f"kept {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    rows = [json.loads(p.read_text()) for p in sorted(args.results.glob("*/*.json"))]
    rows.sort(key=lambda r: (ORDER.index(r["arch"]) if r["arch"] in ORDER else 99, r["method"]))
    print(HEADER)
    for r in rows:
        print(row(r))


if __name__ == "__main__":
    main()
