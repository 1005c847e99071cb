"""The app's Attack panel: after a run, does the forgotten concept come back under an adversarial attack?

Beside the relearning test: pick an attack (UnlearnDiffAtk, concept inversion, prompt-set replay), watch
its loss curve, then see three rows of images on the same seeds (original model, unlearned model,
unlearned model under the attack) and the ASR table, which keeps one row per attack of this run.
The attack folder (attack.json, the adversarial prompt or embedding as safetensors, the images) is
written into the run folder, as ``python -m unlearning attack --run DIR`` writes it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import pandas as pd

from ..attacks.adversarial import ATTACKS, execute_attack, prepare_attack
from ..errors import InputError, UnlearningError
from ..methods.base import RunContext, StepReport
from ..methods.settings import settings_fields
from ..run_folder import hold

UPDATE_EVERY_S = 0.4
LOSS_EMPTY = pd.DataFrame({"step": pd.Series([], dtype=float), "loss": pd.Series([], dtype=float)})
CHOICES = [(spec.label, name) for name, spec in ATTACKS.items()]
INTRO = ("**Attack the unlearned model.** UnlearnDiffAtk searches a few prompt tokens that make the unlearned model "
         "denoise the concept again; concept inversion learns a new word for it; prompt replay generates a prompt file "
         "(CSV: prompt, seed, guidance; the twin has a built-in one). ASR = share of prompts whose image the evaluator "
         "reads as the forgotten concept, before and after the attack.")
_DONE = object()


def asr_markdown(history: list[dict]) -> str:
    """The ASR table of the attacks run on the current run (newest last)."""
    if not history:
        return ""

    def pct(v: float, ci: list[float]) -> str:
        return f"{100 * v:.0f}% [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]"

    lines = ["| attack | ASR before ↓ | ASR after ↓ | n | cost |", "|---|---:|---:|---:|---:|"]
    for h in history:
        lines.append(f"| {ATTACKS[h['kind']].label} | {pct(h['asr_before'], h['asr_before_ci95'])} | "
                     f"{pct(h['asr_after'], h['asr_after_ci95'])} | {h['n']} | {h['attack_s']:.1f} s, {h['iterations']} steps |")
    lines.append("\nASR after counts every prompt that shows the concept before or after the attack (UnlearnDiffAtk's "
                 "convention); intervals are 95 % Wilson.")
    return "\n".join(lines)


def parse_overrides(text: str | None) -> dict[str, str]:
    """'samples=8, iterations=5' -> {'samples': '8', 'iterations': '5'} (validated later by the attack's settings)."""
    out = {}
    for part in (text or "").replace("\n", ",").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise InputError(f"attack settings are key=value pairs separated by commas, got '{part.strip()}'.")
        out[key.strip()] = value.strip()
    return out


def attack_stream(run_folder: str | None, kind: str, prompt_file: str | None, settings_text: str | None,
                  history: list[dict] | None) -> Iterator[tuple[str, pd.DataFrame | None, str | None, str, list[dict]]]:
    """Yields (status, loss curve, three-row grid, ASR table, history). The attack runs in a worker thread so
    its loss streams; the ASR history keeps the rows of this run folder only."""
    history = [h for h in (history or []) if h.get("folder") == run_folder]
    if not run_folder:
        yield "Run an unlearning first; the attack starts from the finished run.", None, None, "", history
        return
    try:
        hold(Path(run_folder))  # under attack: retention keeps it
        prepared = prepare_attack(Path(run_folder), kind, prompts_file=prompt_file or None, overrides=parse_overrides(settings_text))
    except UnlearningError as exc:
        yield f"**Could not attack:** {exc}", None, None, asr_markdown(history), history
        return
    head = f"**{prepared.spec.label}** on the {prepared.run['method']} edit forgetting **{', '.join(prepared.task.forget)}**"
    yield f"{head}: sampling the original and the unlearned model on {len(prepared.items)} prompts…", LOSS_EMPTY, None, asr_markdown(history), history
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    out: dict = {}

    def work() -> None:
        try:
            out["result"], out["folder"] = execute_attack(prepared, RunContext(events.put, cancel))
        except BaseException as exc:  # handed to this generator
            out["error"] = exc
        finally:
            events.put(_DONE)

    worker = threading.Thread(target=work, name=f"attack-{kind}", daemon=True)
    worker.start()
    log: list[dict] = []
    last = 0.0
    try:
        while (item := events.get()) is not _DONE:
            report: StepReport = item
            log.append({"step": report.step, "loss": report.loss})
            if time.perf_counter() - last >= UPDATE_EVERY_S or report.step == report.total:
                last = time.perf_counter()
                yield (f"{head}: step {report.step} / {report.total}, loss {report.loss:.4f}", pd.DataFrame(log), None,
                       asr_markdown(history), history)
    finally:
        cancel.set()
        worker.join(timeout=30)
    if "error" in out:
        if isinstance(out["error"], UnlearningError):
            yield f"**Could not attack:** {out['error']}", None, None, asr_markdown(history), history
            return
        raise out["error"]
    result, folder = out["result"], out["folder"]
    summary = {**result.summary(), "folder": run_folder}
    history = [*[h for h in history if h["kind"] != summary["kind"]], summary]
    curve = pd.DataFrame([{"step": e["step"], "loss": e["loss"]} for e in result.loss_log]) if result.loss_log else LOSS_EMPTY
    status = (f"{head}: **done** in {result.attack_s:.1f} s. ASR {100 * summary['asr_before']:.0f}% → "
              f"{100 * summary['asr_after']:.0f}% (n = {summary['n']}). Rows: original, unlearned, unlearned under attack; "
              f"folder `{folder}`")
    if not result.loss_log and summary["asr_before"] >= 1.0:
        status += ("\n\nNothing to optimise: every attacked prompt already shows the concept *before* the attack (the "
                   "unlearning did not remove it on these seeds), so the loss curve is empty. Unlearn more (iterations, "
                   "learning rate) and attack that run.")
    yield status, curve, str(folder / "images" / "attack_grid.png"), asr_markdown(history), history


def settings_info(kind: str) -> str:
    """The chosen attack's settings and their values for this run's model, for the settings box."""
    spec = ATTACKS[kind]
    names = ", ".join(f.name for f in settings_fields(spec.settings_cls))
    return f"optional key=value pairs, comma-separated; {spec.label} takes: {names}"


def build_panel(folder_state: gr.State) -> None:
    """Lay out and wire the Attack panel (call inside the column that shows a finished run)."""
    gr.Markdown(INTRO)
    with gr.Row():
        kind = gr.Dropdown(CHOICES, value=CHOICES[0][1], label="attack", scale=2)
        settings = gr.Textbox("", label="attack settings", info=settings_info(CHOICES[0][1]), scale=3)
    prompts = gr.File(label="prompt file for prompt replay (CSV: prompt, seed, guidance; I2P / Ring-A-Bell / P4D)",
                      file_types=[".csv"], type="filepath", visible=False)
    attack_btn = gr.Button("Attack the unlearned model")
    status = gr.Markdown("")
    curve = gr.LinePlot(None, x="step", y="loss", title="Attack loss", height=200)
    grid = gr.Image(label="attack: original (top), unlearned (middle), unlearned under attack (bottom), same seeds",
                    format="png", type="filepath", interactive=False)
    table = gr.Markdown("")
    history = gr.State([])

    # another attack has other settings: the box starts empty (its twin-tuned values) for each
    kind.change(lambda k: (gr.update(visible=k == "prompts"), gr.update(value="", info=settings_info(k))), kind, [prompts, settings],
                api_visibility="private")
    attack_btn.click(attack_stream, [folder_state, kind, prompts, settings, history], [status, curve, grid, table, history],
                     concurrency_id="gpu", api_visibility="private")
