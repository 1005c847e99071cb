"""The app's relearning comparison: every relearning test of the session, one row per method, same seeds.

Each press of "Relearning test" adds (or replaces) the row of the last run's method; the table shows
the rows whose model, forgotten concepts and seeds match the latest test, so the numbers compare
methods on the same samples (ResAlign's table: forget rate before / after unlearning / after the
downstream fine-tune, with utility beside it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from ..attacks.comparison import comparison_row, format_comparison

COMPARISON_INTRO = ("**Across methods, same seeds** (every relearning test of this session whose model, concepts and "
                    "seeds match the latest one; run another method on the same concept and press the button again):")


def comparison_markdown(history: list[dict]) -> str:
    """The rows comparable with the latest one, as a Markdown table ('' when there are none)."""
    if not history:
        return ""
    key = history[-1]["key"]
    rows = [h["row"] for h in history if h["key"] == key]
    hidden = len(history) - len(rows)
    note = f"\n\n{hidden} earlier test(s) on other models, concepts or seeds not shown." if hidden else ""
    return f"{COMPARISON_INTRO}\n\n{format_comparison(rows)}{note}"


def add_result(history: list[dict] | None, result: dict) -> list[dict]:
    """A new history with ``result`` (from ui.relearn_test's ``reports``) replacing any row of the same method and key."""
    report = result["report"]
    key = json.dumps([result["model"], result["forget"], report["seeds"], result["settings"]], sort_keys=True, default=str)
    row = comparison_row(result["method"], report, relearn_s=result.get("relearn_s"))
    shots = int(result["settings"].get("forget_shots") or 0)
    row["attack"] = f"{shots}-shot relearning" if shots else "benign fine-tune"
    kept = [h for h in (history or []) if not (h["key"] == key and h["row"]["method"] == row["method"])]
    return [*kept, {"key": key, "row": row}]


def relearn_with_table(run_folder: str | None, history: list[dict] | None, forget_shots: float | None = 0,
                       overrides: dict | None = None) -> Iterator[tuple[str, list[dict], str]]:
    """ui.relearn_test, plus the session's comparison table: yields (test output, history, table).
    ``forget_shots`` > 0 gives the attacker that many images of the forgotten concept (few-shot relearning)."""
    from .unlearn import relearn_test

    history = list(history or [])
    results: list[dict] = []
    overrides = {**(overrides or {}), **({"forget_shots": int(forget_shots)} if forget_shots else {})}
    for message in relearn_test(run_folder, overrides, results):
        if results:
            history = add_result(history, results.pop())
        yield message, history, comparison_markdown(history)
