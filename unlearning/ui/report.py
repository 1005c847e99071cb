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
        rows.append(["unlearning time (s)", "", f"{t['unlearn_s']:.1f}", "wall-clock of the method", "", "time.perf_counter"])
    per = t.get("sample_s_per_image", {})
    if per:
        rows.append(["sampling (s / image)", _num(per.get("original"), "{:.4f}"), _num(per.get("unlearned"), "{:.4f}"),
                     "DDIM sampling, same seeds and steps", str(t.get("images", "")), "time.perf_counter"])
    return rows
