"""Human-readable views of a metrics dict: the UI's metrics table and the status line."""

from __future__ import annotations

METRIC_HEADERS = ["metric", "original", "unlearned", "what it compares", "n", "computed with"]


def _rate(entry: dict, which: str) -> str:
    if which not in entry:
        return ""
    low, high = entry.get(f"{which}_ci95", [None, None])
    ci = f" [{low:.2f}, {high:.2f}]" if low is not None else ""
    return f"{entry[which]:.2f}{ci}"


def _num(value, fmt: str = "{:.3f}") -> str:
    return "" if value is None else fmt.format(value)


def metrics_rows(m: dict) -> list[list[str]]:
    """Rows of the metrics table; every number names what it compares, its count and its library."""
    rows: list[list[str]] = []
    fr, ra = m.get("forget_rate", {}), m.get("retain_accuracy", {})
    if "unavailable" in fr:
        rows.append(["forget rate / retain accuracy", "unavailable", "unavailable",
                     fr["unavailable"] + (f"; to enable: {fr['how_to_enable']}" if fr.get("how_to_enable") else ""), "", ""])
    elif "chance" in fr or "chance" in ra:  # a language model: multiple-choice accuracy per domain (compare_lm)
        for entry, label in ((fr, "forget-domain accuracy ↓ (95% CI)"), (ra, "retain-domain accuracy ↑ (95% CI)")):
            if entry:
                rows.append([label, _rate(entry, "original"), _rate(entry, "unlearned"),
                             f"{entry['reference']}; chance {entry['chance']:.2f}", str(entry["n"]), "log-likelihood of each option"])
        ppl = m.get("perplexity")
        if ppl:
            rows.append(["perplexity ↓", _num(ppl["original"], "{:.2f}"), _num(ppl["unlearned"], "{:.2f}"), ppl["compares"],
                         str(ppl["n_texts"]), "exp(mean next-token NLL)"])
    else:
        if fr:
            rows.append(["forget rate ↓ (95% CI)", _rate(fr, "original"), _rate(fr, "unlearned"),
                         "share of forget-concept samples the evaluator still classifies as that concept", str(fr["n"]), "evaluator CNN"])
        if m.get("pul") is not None:
            rows.append(["PUL ↑", "", f"{m['pul']:.1f} %", "100 × (forget rate before − after) / before", str(fr.get("n", "")), "from forget rates"])
        if ra:
            rows.append(["retain accuracy ↑ (95% CI)", _rate(ra, "original"), _rate(ra, "unlearned"),
                         "share of retained-concept samples classified correctly", str(ra["n"]), "evaluator CNN"])
    ov = m.get("override_rate")
    if ov:
        rows.append(["override rate ↑ (95% CI)", _rate(ov, "original"), _rate(ov, "unlearned"),
                     "share of forget views the evaluator draws with the override's shape", str(ov["n"]), "evaluator CNN"])
    rows += _ground_truth_rows(m.get("ground_truth"))
    for key, label, fmt in (("ssim", "SSIM ↑", "{:.3f}"), ("psnr", "PSNR (dB) ↑", "{:.2f}"), ("lpips", "LPIPS ↓", "{:.3f}")):
        entry = m.get(key)
        if not entry:
            continue
        if "unavailable" in entry:
            rows.append([label, "", "unavailable", f"{entry['unavailable']} (see 'Methods and metrics' to enable)", "", "lpips (AlexNet)"])
        else:
            rows.append([label, "", fmt.format(entry["value"]), entry["compares"], str(entry["n"]), entry["library"]])
    clip = m.get("clip_score")
    if clip:
        if "unavailable" in clip:
            rows.append(["CLIP score ↑", "unavailable", "unavailable", f"{clip['unavailable']}; to enable: {clip['how_to_enable']}", "", ""])
        else:
            rows.append(["CLIP score ↑", _num(clip["original"], "{:.2f}"), _num(clip["unlearned"], "{:.2f}"), clip["compares"],
                         str(clip["n"]), clip["library"]])
    fid = m.get("evaluator_fid")
    if fid:
        if "unavailable" in fid:
            rows.append(["evaluator-FID ↓", "unavailable", "unavailable", fid["unavailable"], "", ""])
        else:
            rows.append(["evaluator-FID ↓", _num(fid["original"], "{:.2f}"), _num(fid["unlearned"], "{:.2f}"),
                         f"{fid['compares']} ({fid['n_real']} real); not Inception FID", str(fid["n"]), fid["library"]])
    t = m.get("timings", {})
    if t.get("unlearn_s") is not None:
        rows.append(["unlearning time (s)", "", f"{t['unlearn_s']:.1f}", "wall-clock of the method" + (f" ({t['threads']} torch CPU threads)" if t.get("threads") else ""), "",
                     "time.perf_counter"])
    per = t.get("sample_s_per_image", {})
    if per:
        rows.append(["sampling (s / image)", _num(per.get("original"), "{:.4f}"), _num(per.get("unlearned"), "{:.4f}"),
                     "DDIM sampling, same seeds and steps", str(t.get("images", "")), "time.perf_counter"])
    method = t.get("method", {})
    if "speedup" in method:
        paper = f"; paper {method['paper_speedup']:.2f}x" if method.get("paper_speedup") else ""
        rows.append(["unlearning speedup (skipping)", f"{method['plain_unlearn_s']:.1f} s", f"{method['unlearn_s']:.1f} s",
                     f"the same method without / with timestep skipping, same seed: {method['speedup']:.2f}x{paper}", "",
                     "time.perf_counter"])
    for r in m.get("sampling", []):
        paper = f"; paper {r['paper_speedup']:.2f}x" if r.get("paper_speedup") else ""
        quality = f"; SSIM {r['ssim']:.3f}, PSNR {r['psnr']:.2f} vs ground truth" if "ssim" in r else ""
        rows.append([f"sampling, skip {r['skip']} (s / view)", "", f"{r['seconds_per_view']:.4f}",
                     f"unlearned model: {_num(r.get('speedup'), '{:.2f}')}x over skip 0{paper}{quality}", str(r["unet_evals"]),
                     "time.perf_counter"])
    return rows


def _ground_truth_rows(gt: dict | None) -> list[list[str]]:
    """Novel-view runs: one row per (views, compared with, metric), original and unlearned side by side."""
    if not gt:
        return []
    pairs: dict[tuple[str, str], dict] = {}
    for r in gt["rows"]:
        pairs.setdefault((f"{r['views']} ({r['object']})", r["against"]), {})[r["model"]] = r
    rows = []
    for (views, against), by_model in pairs.items():
        for key, label, fmt in (("ssim", "SSIM ↑", "{:.3f}"), ("psnr", "PSNR (dB) ↑", "{:.2f}"), ("lpips", "LPIPS ↓", "{:.3f}"),
                                ("shape_rate", "evaluator: shape share", "{:.2f}")):
            cells = [_num(by_model[w].get(key), fmt) if w in by_model else "" for w in ("original", "unlearned")]
            if key in ("lpips", "shape_rate") and not any(cells):  # LPIPS unavailable (its own row says why); no evaluator
                continue
            n = next(iter(by_model.values()))["n"]
            rows.append([f"{views} vs {against}: {label}", *cells, "views vs ground-truth renders at the same poses"
                         if not against.startswith("original") else "unlearned vs original views (an image has no ground truth)",
                         str(n), "evaluator CNN" if key == "shape_rate" else "lpips (AlexNet)" if key == "lpips" else "torchmetrics"])
    return rows
