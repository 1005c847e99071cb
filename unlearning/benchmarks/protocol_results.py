"""The protocol's results: summary per method, the CSV in UnlearnCanvas's column order, the UA heatmap, a table.

Everything here works on the plain dict that ``protocol.json`` holds (see :mod:`unlearning.benchmarks.protocol`),
so an existing results folder can be shown again without the model, and without importing the protocol.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError

ORIGINAL = "original"  # the method name of the unedited model's rows
METRICS = ("ua", "ira", "cra", "fid", "unlearn_s", "peak_mem_bytes", "edit_bytes")


def summarise(rows: Sequence[dict]) -> dict:
    """Per method: means over its rows (concepts x seeds) with 95 % intervals, and the worst concept by mean UA."""
    from ..metrics.stats import mean_interval

    out: dict = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        entry: dict = {"n": len(mine)}
        for metric in METRICS:
            values = [float(r[metric]) for r in mine if r.get(metric) is not None and math.isfinite(float(r[metric]))]
            if not values:
                entry[metric], entry[f"{metric}_ci95"] = None, None
                continue
            mean, low, high = mean_interval(values)
            entry[metric], entry[f"{metric}_ci95"] = mean, (None if low is None else [low, high])
        per_concept: dict[str, list[float]] = {}
        for r in mine:
            if r.get("ua") is not None:
                per_concept.setdefault(r["concept"], []).append(float(r["ua"]))
        if per_concept:
            worst = min(per_concept, key=lambda c: sum(per_concept[c]) / len(per_concept[c]))
            entry["worst_concept"], entry["worst_ua"] = worst, sum(per_concept[worst]) / len(per_concept[worst])
        else:
            entry["worst_concept"] = entry["worst_ua"] = None
        out[method] = entry
    return out


CSV_COLUMNS = ["Method", "Style UA (%)", "Style IRA (%)", "Style CRA (%)", "Object UA (%)", "Object IRA (%)", "Object CRA (%)",
               "FID", "Time (s)", "Memory (GB)", "Storage (GB)", "Worst concept", "Worst UA (%)", "Cells"]


def csv_text(result: dict) -> str:
    """One row per method in UnlearnCanvas's column order (style = colours, object = shapes on shapes-sd)."""
    def pct(v):
        return "" if v is None else f"{100 * v:.2f}"

    def num(v, scale=1.0, fmt="{:.4g}"):
        return "" if v is None else fmt.format(v * scale)

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    summary = {ORIGINAL: result["original"]["summary"].get(ORIGINAL, {}), **result["summary"]}
    by_kind = {kind: {**({ORIGINAL: _kind_summary(result, kind)}), **entry} for kind, entry in result["by_kind"].items()}
    for method, entry in summary.items():
        style, obj = by_kind.get("style", {}).get(method, {}), by_kind.get("object", {}).get(method, {})
        writer.writerow([method, pct(style.get("ua")), pct(style.get("ira")), pct(style.get("cra")), pct(obj.get("ua")),
                         pct(obj.get("ira")), pct(obj.get("cra")), num(entry.get("fid"), fmt="{:.2f}"),
                         num(entry.get("unlearn_s"), fmt="{:.1f}"), num(entry.get("peak_mem_bytes"), 1e-9),
                         num(entry.get("edit_bytes"), 1e-9), entry.get("worst_concept") or "", pct(entry.get("worst_ua")),
                         entry.get("n", 0)])
    return buf.getvalue()


def _kind_summary(result: dict, kind: str) -> dict:
    rows = [r for r in result["original"]["rows"] if r["concept"] in result["protocol"]["kinds"].get(kind, [])]
    return summarise(rows).get(ORIGINAL, {})


def ua_matrix(result: dict) -> tuple[list[str], list[str], list[list[float | None]]]:
    """(methods, concepts, mean UA over seeds per method and concept), the original's row first."""
    concepts = list(result["protocol"]["concepts"])
    rows = result["original"]["rows"] + result["rows"]
    methods = list(dict.fromkeys([ORIGINAL, *result["protocol"]["methods"]]))
    grid: list[list[float | None]] = []
    for m in methods:
        line = []
        for c in concepts:
            values = [r["ua"] for r in rows if r["method"] == m and r["concept"] == c and r.get("ua") is not None]
            line.append(sum(values) / len(values) if values else None)
        grid.append(line)
    return methods, concepts, grid


def heatmap_image(result: dict):
    """Method x concept UA as a PIL image (white 0 -> green 1; grey: not measured), values written in."""
    from PIL import Image, ImageDraw, ImageFont

    methods, concepts, values = ua_matrix(result)
    cell, left, top = 44, 12 + 8 * max(len(m) for m in methods), 16 + 7 * max((len(c) for c in concepts), default=1)
    image = Image.new("RGB", (left + cell * len(concepts) + 12, top + cell * len(methods) + 28), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for j, concept in enumerate(concepts):  # column labels, written downwards
        label = Image.new("RGB", (top - 6, 14), "white")
        ImageDraw.Draw(label).text((0, 0), concept, fill="black", font=font)
        image.paste(label.rotate(90, expand=True), (left + j * cell + cell // 2 - 7, 4))
    for i, method in enumerate(methods):
        y = top + i * cell
        draw.text((6, y + cell // 2 - 6), method, fill="black", font=font)
        for j, v in enumerate(values[i]):
            x = left + j * cell
            colour = (200, 200, 200) if v is None else (int(255 - 215 * v), int(255 - 95 * v), int(255 - 215 * v))
            draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=colour)
            draw.text((x + 8, y + cell // 2 - 6), "-" if v is None else f"{v:.2f}", fill="black", font=font)
    draw.text((6, top + cell * len(methods) + 8), f"UA (unlearning accuracy, higher = more forgotten) on {result['model']}",
              fill="black", font=font)
    return image


def write_outputs(result: dict, out: Path) -> dict[str, Path]:
    """protocol.json, protocol.csv and heatmap.png in ``out``, each written atomically."""
    from ..atomic import atomic_file, write_text_atomic

    out = Path(out)
    paths = {"json": out / "protocol.json", "csv": out / "protocol.csv", "heatmap": out / "heatmap.png"}
    write_text_atomic(paths["json"], json.dumps(result, indent=1, default=str) + "\n")
    write_text_atomic(paths["csv"], csv_text(result))
    with atomic_file(paths["heatmap"]) as tmp:
        heatmap_image(result).save(tmp, format="PNG")
    return paths


def load_results(out: Path) -> dict:
    """An existing results folder's protocol.json (InputError when there is none)."""
    path = Path(out) / "protocol.json"
    if not path.is_file():
        raise InputError(f"'{out}' holds no protocol.json; give a folder written by 'python -m unlearning bench protocol --out'.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"'{path}' is not readable JSON ({exc}).") from None


SUMMARY_HEADERS = ["method", "UA ↑", "IRA ↑", "CRA ↑", "evaluator-FID ↓", "time (s)", "peak memory (MB)", "storage (MB)",
                   "worst concept (UA)", "cells"]


def summary_rows(result: dict) -> list[list[str]]:
    """One row per method (the original model first): mean [95 % interval] over concepts and seeds."""
    def cell(entry, metric, fmt="{:.2f}"):
        v = entry.get(metric)
        if v is None:
            return "-"
        ci = entry.get(f"{metric}_ci95")
        return fmt.format(v) + (f" [{fmt.format(ci[0])}, {fmt.format(ci[1])}]" if ci else "")

    def scaled(v, scale, fmt):
        return "-" if v is None else fmt.format(v * scale)

    summary = {ORIGINAL: result["original"]["summary"].get(ORIGINAL, {}), **result["summary"]}
    out = []
    for method, e in summary.items():
        worst = "-" if e.get("worst_concept") is None else f"{e['worst_concept']} ({e['worst_ua']:.2f})"
        out.append([method, cell(e, "ua"), cell(e, "ira"), cell(e, "cra"), cell(e, "fid", "{:.1f}"),
                    scaled(e.get("unlearn_s"), 1, "{:.1f}"), scaled(e.get("peak_mem_bytes"), 2**-20, "{:.0f}"),
                    scaled(e.get("edit_bytes"), 2**-20, "{:.2f}"), worst, str(e.get("n", 0))])
    return out


def format_table(result: dict) -> str:
    """Markdown of :func:`summary_rows`."""
    lines = ["| " + " | ".join(SUMMARY_HEADERS) + " |", "|---|---|---|---|---|---:|---:|---:|---|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(result)]
    return "\n".join(lines)


# What makes two protocol results comparable: the model, the concept set and how every grid was drawn and judged.
PLAN_KEYS = ("version", "concept_set", "template", "samples_per_prompt", "num_inference_steps", "guidance_scale",
             "sampler", "judge")


def _without_methods(result: dict, methods: Sequence[str]) -> dict:
    """A protocol result with these methods' rows, failures and settings taken out (kept in its method list)."""
    if not methods:
        return result
    settings = {m: v for m, v in (result["protocol"].get("settings") or {}).items() if m not in methods}
    return {**result, "rows": [r for r in result["rows"] if r["method"] not in methods],
            "failed": [f for f in result.get("failed", []) if f["method"] not in methods],
            "protocol": {**result["protocol"], "settings": settings}}


def merge_results(results: Sequence[dict], replace: Sequence[str] = ()) -> dict:
    """Several protocol.json results of one model and one plan as one, e.g. a committed result whose cell store is gone
    and a later run that adds methods: rows keyed by (method, concept, seed) and the original's by (concept, seed), a
    later result's replacing an earlier one's; summaries, per-kind summaries and the missing cells recomputed.

    A method measured at different settings in two results, or results of different models or plans, are an InputError:
    their rows would not be comparable. A method in ``replace`` (retuned since an earlier result) is taken whole from
    the last result that measured it: its rows, failures and settings in earlier results are dropped, so a concept
    the later result did not measure again is missing rather than kept at the old settings."""
    if not results:
        raise InputError("nothing to merge: give at least one protocol result.")
    replace = list(dict.fromkeys(replace))
    if replace:
        last = {m: i for i, r in enumerate(results) for m in replace
                if any(row["method"] == m for row in r["rows"]) or (r["protocol"].get("settings") or {}).get(m) is not None}
        unknown = [m for m in replace if m not in last]
        if unknown:
            raise InputError(f"nothing to replace for {', '.join(unknown)}: no result measured it.")
        results = [_without_methods(r, [m for m in replace if last[m] != i]) for i, r in enumerate(results)]
    first = results[0]
    for other in results[1:]:
        bad = [k for k in PLAN_KEYS if other["protocol"].get(k) != first["protocol"].get(k)]
        if other["model"] != first["model"]:
            bad.insert(0, "model")
        if bad:
            raise InputError(f"these protocol results differ in {', '.join(bad)}; merge only results of one model and plan.")
    settings: dict = {}
    for result in results:
        for method, value in (result["protocol"].get("settings") or {}).items():
            if value is None:
                continue
            if settings.get(method) not in (None, value):
                raise InputError(f"'{method}' was measured at different settings in these results ({settings[method]} "
                                 f"and {value}); merge only one setting per method.")
            settings[method] = value
    rows: dict[tuple, dict] = {}
    originals: dict[tuple, dict] = {}
    failed: dict[tuple, dict] = {}
    methods, concepts, seeds = [], [], []
    kinds: dict[str, list[str]] = {}
    for result in results:
        p = result["protocol"]
        methods += p["methods"]
        concepts += p["concepts"]
        seeds += p["seeds"]
        for kind, names in p["kinds"].items():
            kinds[kind] = list(dict.fromkeys([*kinds.get(kind, []), *names]))
        for r in result["rows"]:
            rows[(r["method"], r["concept"], r["seed"])] = r
            failed.pop((r["method"], r["concept"], r["seed"]), None)
        for r in result["original"]["rows"]:
            originals[(r["concept"], r["seed"])] = r
        for f in result.get("failed", []):
            if (f["method"], f["concept"], f["seed"]) not in rows:
                failed[(f["method"], f["concept"], f["seed"])] = f
    methods, concepts, seeds = (list(dict.fromkeys(x)) for x in (methods, concepts, seeds))
    # rows in the plan's method and concept order, so a replaced method keeps its place in the tables
    method_rank, concept_rank = ({name: i for i, name in enumerate(names)} for names in (methods, concepts))
    merged_rows = sorted(rows.values(), key=lambda r: (method_rank[r["method"]], concept_rank.get(r["concept"], len(concepts)), r["seed"]))
    original_rows = list(originals.values())
    kind_of = {c: kind for kind, names in kinds.items() for c in names}
    missing = [{"method": m, "concept": c, "seed": s} for m in methods for c in concepts for s in seeds
               if (m, c, s) not in rows and (m, c, s) not in failed]
    elapsed = [r["protocol"].get("elapsed_s") for r in results]
    return {
        "model": first["model"],
        "rows": merged_rows,
        "summary": summarise(merged_rows),
        "original": {"rows": original_rows, "summary": summarise(original_rows)},
        "by_kind": {kind: summarise([r for r in merged_rows if kind_of.get(r["concept"]) == kind]) for kind in kinds},
        "failed": list(failed.values()),
        "missing": missing,
        "protocol": {
            **results[-1]["protocol"], "methods": methods, "concepts": concepts, "seeds": seeds, "kinds": kinds,
            "settings": {m: settings.get(m) for m in methods},
            # the rows keep no sampling time, so the totals are the inputs' (a cell measured twice counts twice)
            "cell_seconds_total": sum(r["protocol"].get("cell_seconds_total") or 0 for r in results),
            "elapsed_s": None if None in elapsed else sum(elapsed),
            "merged_from": len(results),
        },
    }
