"""Handlers behind the Gradio app. ``app.py`` lays out components and wires them to these.

Every handler is a plain function of plain values, so it can be tested without a browser.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..atomic import zip_dir
from ..errors import UnlearningError
from ..hosting.profile import get_profile
from ..images import side_by_side
from ..methods import METHODS, get_method
from ..methods.base import settings_fields
from ..models.catalog import CATALOG, HUB_MODELS, concept_choices, hub_availability, sampling_defaults  # noqa: F401 (the app uses them)
from ..run_folder import group_grid, hold, new_run_folder, prune_runs, zip_run
from ..runner import RunRequest, execute, prepare
from .report import metrics_rows

log = logging.getLogger(__name__)

ERASE = "(none: erase)"
UPDATE_EVERY_S = 0.4  # at most this often a streamed update reaches the browser

INTRO = """
**Machine unlearning** removes a concept from a trained generative model (a digit from a model that
draws handwritten digits; a shape or a colour from a tiny Stable Diffusion; or anything you type from
a real Stable Diffusion on your GPU) while keeping everything else it can do. Pick a model, the
concept(s) and a method, press **Unlearn**, and compare: every image pair below comes from the *same
seed and the same starting noise* through the original (top row) and the unlearned model (bottom
row), so any difference is the edit and nothing else. A separate classifier (the *evaluator*) scores
how often the forgotten concept still appears and whether the others are still drawn correctly.
"""

TEXT_FAMILIES = {"causal-lm"}  # families with their own tab (ui/lm.py): not offered here

LOSS_EMPTY = pd.DataFrame({"step": pd.Series([], dtype=float), "loss": pd.Series([], dtype=float), "series": pd.Series([], dtype=str)})


# ---- choices --------------------------------------------------------------------------------------

def model_choices() -> list[tuple[str, str]]:
    """Embedded twins, then real checkpoints with their availability: the profile's hub ids, or (where the
    profile allows any model) the known ones."""
    allowed = get_profile().models
    out = [(e.label, e.id) for e in CATALOG.values() if (not allowed or e.id in allowed) and e.family not in TEXT_FAMILIES]
    hub = [m for m in allowed if m not in CATALOG] if allowed else [m for m, f in HUB_MODELS.items() if f not in TEXT_FAMILIES]
    for repo in hub:
        ok, _ = hub_availability(repo)
        out.append((f"{repo} ({'GPU recommended' if ok else 'not available offline'})", repo))
    return out


def method_choices() -> list[tuple[str, str]]:
    allowed = get_profile().methods
    return [(s.label, s.name) for s in image_methods() if allowed is None or s.name in allowed]


def image_methods() -> list:
    """The registered methods this tab offers: those written for an image family."""
    return [s for s in METHODS.values() if set(s.families) - TEXT_FAMILIES]


def model_markdown(model: str) -> str:
    entry = CATALOG.get(model)
    if entry:
        return entry.description
    if model in HUB_MODELS:
        ok, why = hub_availability(model)
        return f"Stable Diffusion from the Hugging Face hub: {why}." + (" Loads in fp16 on a CUDA GPU." if ok else "")
    return "A hub id (owner/name) or a local folder in diffusers' layout (the folder `save_pretrained` writes)."


def method_markdown(method: str) -> str:
    spec = get_method(method)
    return f"{spec.summary}  \n*{spec.citation}*"


@dataclass(frozen=True)
class SettingControl:
    """One generated control: which method and field it sets."""

    method: str
    name: str
    kind: str  # "number" | "int" | "choice" | "bool" | "text"
    value: Any
    label: str
    info: str
    choices: tuple | None = None


def setting_controls(model_id: str, specs: list | None = None) -> list[SettingControl]:
    """Controls for every method's settings (``specs``: these methods; default: this tab's), built from the
    settings dataclasses."""
    out = []
    for spec in image_methods() if specs is None else specs:
        fields = {f.name: f for f in settings_fields(spec.settings_cls)}
        for row in spec.describe(model_id):
            f = fields[row["name"]]
            kind = "choice" if row.get("choices") else {"bool": "bool", "int": "int", "str": "text"}.get(row["type"], "number")
            paper = f"paper: {row['paper']}" + (f"; tuned for {model_id}" if row["tuned"] else "")
            out.append(SettingControl(spec.name, f.name, kind, row["value"], f.metadata.get("label") or f.name,
                                      f"{row['help']} ({paper})", row.get("choices")))
    return out


def setting_component(c: SettingControl):
    """The Gradio input for one setting control (call inside a Blocks layout)."""
    import gradio as gr

    if c.kind == "choice":
        return gr.Dropdown(list(c.choices), value=c.value, label=c.label, info=c.info)
    if c.kind == "bool":
        return gr.Checkbox(value=c.value, label=c.label, info=c.info)
    if c.kind == "text":
        return gr.Textbox(str(c.value), label=c.label, info=c.info)
    return gr.Number(value=c.value, label=c.label, info=c.info, precision=0 if c.kind == "int" else None)


# ---- the run ------------------------------------------------------------------------------------

@dataclass
class Outputs:
    """What one streamed update sets; None leaves a component as it is."""

    status: str | None = None
    loss: pd.DataFrame | None = None
    forget_grid: Any = None
    retain_grid: Any = None
    prompt_grid: Any = None  # the user's own prompts (text-to-image models)
    metrics: list[list[str]] | None = None
    pairs: dict | None = None  # pair label -> (original PIL, unlearned PIL)
    download: str | None = None
    extras: dict = field(default_factory=dict)


def loss_frame(loss_log: list[dict]) -> pd.DataFrame:
    if len(loss_log) <= 1:  # a closed-form edit has no curve: its residuals are in the status line
        return LOSS_EMPTY
    rows = [{"step": e["step"], "loss": e["loss"], "series": "loss"} for e in loss_log]
    for key in ("forget_loss", "retain_loss", "remap_loss", "relabel_loss", "stability", "forget_nll", "retain_nll"):
        rows += [{"step": e["step"], "loss": e[key], "series": key.replace("_", " ")} for e in loss_log if key in e]
    return pd.DataFrame(rows) if rows else LOSS_EMPTY


def parse_request(model: str, forget: list[str] | str | None, anchor: str | None, method: str, seed: float | None,
                  forget_samples: float | None, retain_samples: float | None, steps: float | None,
                  guidance: float | None, device: str, settings: dict[str, Any],
                  preserve: list[str] | str | None = None, sampler: str | None = None,
                  prompts: str | None = None) -> RunRequest:
    def whole(value, name: str) -> int | None:
        if value is None:
            return None
        number = float(value)
        if not math.isfinite(number) or number != int(number):  # int(nan) / int(inf) would raise a bare ValueError
            from ..errors import InputError

            raise InputError(f"{name} must be a whole number, got {value}.")
        return int(number)

    forget_list = [forget] if isinstance(forget, str) else list(forget or [])
    preserve_list = ([preserve] if isinstance(preserve, str) else list(preserve or [])) or None
    return RunRequest(
        model=model, method=method, forget=forget_list, anchor=None if anchor in (None, "", ERASE) else anchor,
        preserve=preserve_list, sampler=sampler or "ddim",
        prompts=[line.strip() for line in (prompts or "").splitlines() if line.strip()] or None,
        settings=settings, seed=whole(seed, "seed") or 0, device=device or "auto",
        forget_samples=whole(forget_samples, "forget samples") or 16, retain_samples=whole(retain_samples, "retain samples") or 4,
        num_inference_steps=whole(steps, "sampling steps"), guidance_scale=guidance,
    )


def run_stream(request: RunRequest, cancel: threading.Event | None = None, progress=None,
               owner: str | None = None) -> Iterator[Outputs]:
    """Prepare, unlearn and compare, yielding UI updates; errors become a status message. ``owner``: the
    browser / session id the run folder belongs to (a hosted profile lists it only for them)."""
    try:
        yield Outputs(status="Checking the request and loading the model…", loss=LOSS_EMPTY, metrics=[], pairs={})
        run = prepare(request)
        profile = get_profile()
        device = f"{run.adapter.device} ({str(run.adapter.dtype).replace('torch.', '')})"
        head = f"**{run.spec.label}** on **{run.model_id}**, forgetting **{', '.join(run.task.forget)}** · device {device}"
        folder = new_run_folder(profile.runs.dir, run.model_id, run.spec.name)
        last = 0.0
        shown = (0, 0, 0)  # forget / retain / own-prompt samples in the grids already sent
        closed = ""  # a closed-form edit's residuals, kept for the final status
        for event in execute(run, out_dir=folder, cancel=cancel, owner=owner):
            now = time.perf_counter()
            if event.kind == "train":
                s = event.step
                if progress is not None:
                    progress((s.step, s.total), desc=f"unlearning: step {s.step}/{s.total}")
                if now - last >= UPDATE_EVERY_S or s.step == s.total:
                    last = now
                    yield Outputs(status=f"{head}  \nUnlearning: step {s.step} / {s.total}, loss {s.loss:.4f}", loss=loss_frame(event.loss_log))
            elif event.kind == "edit":
                last_log = event.edit.loss_log[-1] if event.edit.loss_log else {}
                closed = (f" Closed form: erase gap {last_log['erase_gap']:.2f} (0 = erased words read exactly as their anchor),"
                          f" preserve drift {last_log['preserve_drift']:.3f}." if "erase_gap" in last_log else "")
                yield Outputs(status=f"{head}  \nUnlearning done in {event.edit.timings['unlearn_s']:.1f} s "
                              f"({event.edit.summary()['changed_values']:,} weights changed).{closed} Sampling both models…",
                              loss=loss_frame(event.loss_log))
            elif event.kind in ("compare", "done"):
                st = event.state
                if progress is not None and event.kind == "compare":
                    progress((len(st.original), len(st.plan.items)), desc="sampling original and unlearned")
                out = Outputs(metrics=metrics_rows(st.metrics))
                # Send a grid only when it changed: Gradio caches images by content, and re-sending an
                # identical one rewrites the file the browser may be downloading at that moment.
                counts = tuple(len(st.indices(g)) for g in GROUPS)
                out.forget_grid, out.retain_grid, out.prompt_grid = grids(run, st, changed=tuple(c != o for c, o in zip(counts, shown, strict=True)))
                shown = counts
                if event.kind == "compare":
                    out.status = f"{head}  \nSampling: {len(st.original)} / {len(st.plan.items)} pairs (same seeds for both models)…"
                else:
                    # The final grids come from the run folder: the same pictures under another file name,
                    # so Gradio's cache never rewrites a file the browser is still downloading.
                    files = [event.folder / "images" / f"{g}_grid.png" for g in GROUPS]
                    out.forget_grid, out.retain_grid, out.prompt_grid = (str(f) if f.is_file() else None for f in files)
                    out.pairs = pair_images(st)
                    out.download = str(zip_run(event.folder))
                    m = st.metrics
                    fr = m.get("forget_rate", {})
                    summary = (f"forget rate {fr['original']:.2f} → {fr['unlearned']:.2f}" if "original" in fr else "")
                    out.status = f"{head}  \n**Done.** {summary}.{closed} Run folder: `{event.folder}`"
                    prune_runs(profile.runs.dir, profile.runs.keep, profile.runs.max_bytes)
                yield out
    except UnlearningError as exc:
        yield Outputs(status=f"**Could not run:** {exc}")
    except Exception as exc:  # a bug: say so plainly, keep the traceback in the log
        log.exception("run failed")
        yield Outputs(status=f"**Internal error** ({type(exc).__name__}: {exc}). This is a bug; the base model is unchanged.")


GROUPS = ("forget", "retain", "prompt")


def grids(run, state, changed: tuple[bool, ...] = (True, True, True)) -> tuple[Any, ...]:
    """(forget, retain, own-prompt grid) as PIL images; None for a group that is empty or not ``changed``."""
    return tuple(group_grid(run, state, g) if c else None for g, c in zip(GROUPS, changed, strict=True))


def pair_images(state) -> dict:
    return {
        f"{group} · {concept} · seed {seed}": side_by_side(state.original[i], state.unlearned[i])
        for i, (group, concept, seed) in enumerate(state.plan.items)
    }


def settings_from_controls(method: str, controls: list[SettingControl], values: list[Any]) -> dict[str, Any]:
    """The selected method's settings from the generated controls' values."""
    return {c.name: v for c, v in zip(controls, values, strict=True) if c.method == method}



def export_from_run(run_folder: str | None, name: str, write) -> tuple[Path | None, str]:
    """``write(adapter, edit, run_folder / name)`` unless that export exists; (its path, "") or (None, why not)."""
    from ..runner import load_run

    if not run_folder:
        return None, "Run an unlearning first; the export is made from the finished run."
    folder = Path(run_folder)
    hold(folder)  # being exported and downloaded: retention keeps it
    out = folder / name
    try:
        if not out.exists():
            run, edit = load_run(folder)
            write(run.adapter, edit, out)
    except UnlearningError as exc:
        return None, f"**Could not export:** {exc}"
    return out, ""


def export_model(run_folder: str | None) -> tuple[str | None, str]:
    """Write the last run's unlearned model as a full diffusers folder inside its run folder; return
    (a zip of it for small models, a status line)."""
    from ..export import export_diffusers

    out, problem = export_from_run(run_folder, "model", export_diffusers)
    if out is None:
        return None, problem
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    loader = ("StableDiffusionPipeline.from_pretrained" if (out / "text_encoder").exists() else
              "AutoModelForCausalLM.from_pretrained" if (out / "tokenizer_config.json").exists() else "this app (as a local folder)")
    if size > 200e6:
        return None, f"Written to `{out}` ({size / 1e9:.1f} GB, too large to download here); it loads with {loader}."
    archive = zip_dir(out, out.with_suffix(".zip"))
    return str(archive), f"Written to `{out}` ({size / 1e6:.1f} MB); it loads with {loader}."


def relearn_test(run_folder: str | None, overrides: dict | None = None, results: list | None = None) -> Iterator[str]:
    """The relearning test on the last run (ResAlign's threat model): fine-tune the unlearned model on
    benign data, then forget rate and retain accuracy of original / unlearned / fine-tuned, same seeds.
    ``results`` (when given) receives the report with the method, model, concepts and attack settings."""
    from ..attacks.relearn import relearn, relearn_report, relearn_settings
    from ..methods.base import RunContext
    from ..runner import load_run

    if not run_folder:
        yield "Run an unlearning first; the relearning test starts from the finished run."
        return
    try:
        hold(Path(run_folder))  # under test: retention keeps it
        run, edit = load_run(Path(run_folder))
        settings = relearn_settings(run.model_id, overrides)
        data = (f"benign data plus {settings.forget_shots} image(s) of the forgotten concept (few-shot relearning attack)"
                if settings.forget_shots else "benign data")
        yield f"Fine-tuning the unlearned model on {data} ({settings.mode}, {settings.steps} steps, lr {settings.lr:g})…"
        result = relearn(run.adapter, edit, run.task, settings, RunContext())
        yield "Sampling original, unlearned and fine-tuned models on the run's seeds…"
        r = run.request
        report = relearn_report(run.adapter, run.task, edit, result.edit, r.forget_samples, r.seed, retain_samples=r.retain_samples,
                                num_inference_steps=r.num_inference_steps, guidance_scale=r.guidance_scale)
    except UnlearningError as exc:
        yield f"**Could not run the relearning test:** {exc}"
        return
    if results is not None:
        results.append({"method": run.spec.name, "model": run.model_id or str(r.model), "forget": run.task.forget,
                        "settings": asdict(settings), "report": report, "relearn_s": result.timings.get("relearn_s")})

    def cell(v):
        return "n/a" if v is None else f"{v:.2f}"

    lines = ["| model | forget rate ↓ | retain accuracy ↑ |", "|---|---:|---:|"]
    lines += [f"| {row['model']} | {cell(row['forget_rate'])} | {cell(row['retain_accuracy'])} |" for row in report["rows"]]
    gap = report["relearn_gap"]
    shots = f" + {settings.forget_shots} image(s) of {', '.join(run.task.forget)}" if settings.forget_shots else ""
    lines += ["", f"**Relearn gap** (forget rate after the fine-tune − after unlearning): "
              f"{'n/a' if gap is None else f'{100 * gap:+.1f} points'}; fine-tuned on {', '.join(result.benign)}{shots} "
              f"({settings.mode}, {settings.steps} steps, {result.timings.get('relearn_s', 0):.1f} s), n = {report['n_forget']} forget samples."]
    yield "\n".join(lines)


# ---- the scaling tab ----------------------------------------------------------------------------

SCALING_INTRO = """
Erase 1, 2, 4, 8 and 16 colour-shape pairs ("red star", "blue circle", ...) of the **shapes-sd** twin at
once and watch what is left: the forget rate of the erased pairs should stay low while the retain
accuracy of a fixed set of preserved pairs should stay high. ScaPre claims to hold quality for several
times more concepts than UCE. The numbers shown first are the committed results of
`python -m unlearning bench scaling` (bench/results/scaling.json); the button re-runs it here.
"""


def scaling_stored() -> list[dict]:
    from ..benchmarks.scaling import load_results

    data = load_results()
    return data["rows"] if data else []


def scaling_frame(rows: list[dict], metric: str) -> pd.DataFrame:
    from ..benchmarks.scaling import plot_frame

    frame = plot_frame(rows) if rows else pd.DataFrame({"concepts": [], "value": [], "metric": [], "method": []})
    return frame[frame["metric"] == metric][["concepts", "value", "method"]] if len(frame) else frame


def scaling_markdown(rows: list[dict]) -> str:
    from ..benchmarks.scaling import format_table

    if not rows:
        return "No scaling results yet: press the button or run `python -m unlearning bench scaling`."
    return format_table(rows)


def scaling_stream(counts_text: str, methods: list[str]):
    """Run the scaling benchmark, yielding (forget plot, retain plot, table) after every row."""
    from ..benchmarks.scaling import ScalingConfig, run_scaling

    try:
        counts = tuple(sorted({int(c) for c in str(counts_text).split(",") if c.strip()}))
        if not counts or counts[0] < 1 or counts[-1] > get_profile().limits.max_concepts:
            raise ValueError
    except ValueError:
        yield None, None, f"**Could not run:** give numbers of concepts between 1 and {get_profile().limits.max_concepts}, e.g. 1,2,4."
        return
    if not methods:
        yield None, None, "**Could not run:** pick at least one method."
        return
    rows: list[dict] = []
    try:
        for row in run_scaling(ScalingConfig(counts=counts, methods=tuple(methods))):
            rows.append(row)
            yield scaling_frame(rows, "forget rate"), scaling_frame(rows, "retain accuracy"), scaling_markdown(rows) + "\n\n*running…*"
    except UnlearningError as exc:
        yield None, None, f"**Could not run:** {exc}"
        return
    yield scaling_frame(rows, "forget rate"), scaling_frame(rows, "retain accuracy"), scaling_markdown(rows)
