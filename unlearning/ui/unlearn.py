"""Handlers behind the Gradio app. ``app.py`` lays out components and wires them to these.

Every handler is a plain function of plain values, so it can be tested without a browser.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..atomic import zip_dir
from ..errors import UnlearningError
from ..hosting.profile import get_profile
from ..images import side_by_side
from ..methods import METHODS, get_method, methods_for  # noqa: F401 (the app uses METHODS)
from ..methods.base import settings_fields
from ..models.catalog import (  # noqa: F401 (the app uses concept_choices and sampling_defaults)
    CATALOG,
    FAMILY_OPTIONS,
    HUB_MODELS,
    concept_choices,
    family_of,
    hub_availability,
    sampling_defaults,
)
from ..run_folder import group_grid, hold
from ..runner import RunRequest, prepare, relearn_run, run_to_folder
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

TAB_FAMILIES = ("class-conditional", "stable-diffusion", "stable-diffusion-xl")  # what this tab offers (Zero123: its tab; LMs: theirs)


def model_choices(families: tuple[str, ...] = TAB_FAMILIES) -> list[tuple[str, str]]:
    """Embedded twins, then real checkpoints with their availability: the profile's hub ids, or (where the
    profile allows any model) the known ones; those of ``families`` (a profile's own hub ids are all listed)."""
    allowed = get_profile().models
    out = [(e.label, e.id) for e in CATALOG.values() if (not allowed or e.id in allowed) and e.family in families]
    hub = [m for m in allowed if m not in CATALOG and HUB_MODELS.get(m, families[0]) in families] if allowed \
        else [m for m, family in HUB_MODELS.items() if family in families]
    for repo in hub:
        ok, _ = hub_availability(repo)
        out.append((f"{repo} ({'GPU recommended' if ok else 'not available offline'})", repo))
    return out


def method_choices(family: str | None = None, families: tuple[str, ...] = TAB_FAMILIES) -> list[tuple[str, str]]:
    """(label, name) of the methods this instance offers for the tab's ``families``; with ``family``, only those
    that support it."""
    allowed = get_profile().methods
    return [(s.label, s.name) for s in methods_for(families)
            if (allowed is None or s.name in allowed) and (family is None or family in s.families)]


def image_methods() -> list:
    """The registered methods this tab offers: those written for one of its families."""
    return methods_for(TAB_FAMILIES)


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
    families: tuple | None = None  # the model families the field means something for (None: all)

    @property
    def api_name(self) -> str:
        """The control's parameter name in the app's API (/unlearn): method and field, e.g. ``esd_iterations``."""
        return f"{self.method}_{self.name}"

    def applies_to(self, family: str | None) -> bool:
        return family is None or not self.families or family in self.families


def setting_controls(model_id: str, families: tuple[str, ...] = TAB_FAMILIES, specs: list | None = None) -> list[SettingControl]:
    """Controls for the settings of every method of ``families`` (``specs``: these methods instead), built from the
    settings dataclasses."""
    out = []
    for spec in methods_for(families) if specs is None else specs:
        fields = {f.name: f for f in settings_fields(spec.settings_cls)}
        for row in spec.describe(model_id):
            f = fields[row["name"]]
            kind = "choice" if row.get("choices") else {"bool": "bool", "int": "int", "str": "text"}.get(row["type"], "number")
            paper = f"paper: {row['paper']}" + (f"; tuned for {model_id}" if row["tuned"] else "")
            out.append(SettingControl(spec.name, f.name, kind, row["value"], f.metadata.get("label") or f.name,
                                      f"{row['help']} ({paper})", row.get("choices"), f.metadata.get("families")))
    return out


@dataclass(frozen=True)
class FormView:
    """What of the Unlearn form applies to a model; the rest is hidden (an empty "your prompts" box on a model that
    only knows class labels, a setting that means nothing for it, a method that cannot run on it)."""

    family: str | None  # None: not known before loading (a hub id offline, a mistyped folder): everything is shown
    methods: list[tuple[str, str]]  # (label, name) of the offered methods that support the family
    options: frozenset[str]  # what the family's comparison takes (models.catalog.FAMILY_OPTIONS): prompts, sampler, guidance

    def method(self, wanted: str | None) -> str | None:
        """``wanted`` when it runs on this model, else the first method that does."""
        names = [name for _, name in self.methods]
        return wanted if wanted in names else (names[0] if names else None)


def form_view(model: str) -> FormView:
    family = family_of(model)
    options = FAMILY_OPTIONS.get(family, frozenset()) if family else frozenset().union(*FAMILY_OPTIONS.values())
    return FormView(family, method_choices(family), options)


def uses_anchor(method: str | None) -> bool:
    """Whether the Anchor control applies: the method maps forgotten concepts to another one."""
    return bool(method) and method in METHODS and METHODS[method].uses_anchor


def anchor_info() -> str:
    labels = [spec.label.split(" (")[0] for spec in METHODS.values() if spec.uses_anchor]
    return (f"the forgotten concepts are drawn as this concept instead; 'none' erases them (methods that map a concept: "
            f"{', '.join(labels)})")


def setting_component(c: SettingControl, family: str | None = None):
    """The Gradio component of one generated control (call inside a Blocks layout); hidden when the setting means
    nothing for a model of ``family``."""
    import gradio as gr

    shown = c.applies_to(family)
    if c.kind == "choice":
        return gr.Dropdown(list(c.choices), value=c.value, label=c.label, info=c.info, visible=shown)
    if c.kind == "bool":
        return gr.Checkbox(value=c.value, label=c.label, info=c.info, visible=shown)
    if c.kind == "text":
        return gr.Textbox(str(c.value), label=c.label, info=c.info, visible=shown)
    return gr.Number(value=c.value, label=c.label, info=c.info, visible=shown, precision=0 if c.kind == "int" else None)


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


LOSS_SERIES = {"forget_loss": "forget loss", "retain_loss": "retain loss", "remap_loss": "remap loss", "relabel_loss": "relabel loss",
               "stability": "stability", "fake_loss": "fake-score loss", "forget_gap": "forget gap (teacher's override view vs G)"}


def loss_frame(loss_log: list[dict]) -> pd.DataFrame:
    """The loss curve and the method's other logged series. skip3d logs a fake-score loss: its generator loss is a
    gradient carrier whose scale means nothing, so its curves are the fake-score loss and the forget gap instead."""
    if len(loss_log) <= 1:  # a closed-form edit has no curve: its residuals are in the status line
        return LOSS_EMPTY
    surrogate = any("fake_loss" in e for e in loss_log)
    rows = [] if surrogate else [{"step": e["step"], "loss": e["loss"], "series": "loss"} for e in loss_log]
    for key, name in LOSS_SERIES.items():
        rows += [{"step": e["step"], "loss": e[key], "series": name} for e in loss_log if key in e and math.isfinite(e[key])]
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
        device = f"{run.adapter.device} ({str(run.adapter.dtype).replace('torch.', '')})"
        head = f"**{run.spec.label}** on **{run.model_id}**, forgetting **{', '.join(run.task.forget)}** · device {device}"
        last = 0.0
        shown = (0, 0, 0)  # forget / retain / own-prompt samples in the grids already sent
        closed = ""  # a closed-form edit's residuals, kept for the final status
        # a new folder under the profile's runs.dir, zipped for the download button, older runs pruned (runner.run_to_folder)
        for event in run_to_folder(run, cancel=cancel, owner=owner, archive=True):
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
                changed = ("no weights changed: a sampling-time setting" if event.edit.weightless
                           else f"{event.edit.summary()['changed_values']:,} weights changed")
                yield Outputs(status=f"{head}  \nUnlearning done in {event.edit.timings['unlearn_s']:.1f} s "
                              f"({changed}).{closed} Sampling both models…",
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
                    out.download = str(event.archive)
                    m = st.metrics
                    fr = m.get("forget_rate", {})
                    summary = (f"forget rate {fr['original']:.2f} → {fr['unlearned']:.2f}" if "original" in fr else "")
                    out.status = f"{head}  \n**Done.** {summary}.{closed} Run folder: `{event.folder}`"
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
    """Write the last run's unlearned model as a full model folder inside its run folder; return (a zip of it for
    small models, a status line)."""
    from ..export import export_diffusers

    out, problem = export_from_run(run_folder, "model", export_diffusers)
    if out is None:
        return None, problem
    # a sampling-time edit (SLD): the export recorded why it holds the base weights; no second load of the edit
    info_file = out / "unlearning_edit.json"
    written = json.loads(info_file.read_text()) if info_file.is_file() else {}
    note = f" **{written['note']}**" if written.get("note") else ""
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    loader = ("StableDiffusionPipeline.from_pretrained" if (out / "text_encoder").exists()
              else "unlearning.models.zero123.Zero123.from_pretrained or this app" if (out / "cc_projection").exists()
              else "AutoModelForCausalLM.from_pretrained" if (out / "tokenizer_config.json").exists()
              else "this app (as a local folder)")
    if size > 200e6:
        return None, f"Written to `{out}` ({size / 1e9:.1f} GB, too large to download here); it loads with {loader}.{note}"
    archive = zip_dir(out, out.with_suffix(".zip"))
    return str(archive), f"Written to `{out}` ({size / 1e6:.1f} MB); it loads with {loader}.{note}"


def relearn_test(run_folder: str | None, overrides: dict | None = None, results: list | None = None) -> Iterator[str]:
    """The relearning test on the last run (ResAlign's threat model; :func:`unlearning.runner.relearn_run`, the same
    code as ``python -m unlearning relearn``): fine-tune the unlearned model as a downstream user would, then forget
    rate and retain accuracy of original / unlearned / fine-tuned, same seeds. ``results`` (when given) receives the
    record (method, model, concepts, attack settings, report), as written to the run's relearn.json."""
    if not run_folder:
        yield "Run an unlearning first; the relearning test starts from the finished run."
        return
    try:
        for event in relearn_run(Path(run_folder), overrides):
            settings = event.settings
            if event.kind == "finetune":
                data = (f"benign data plus {settings.forget_shots} image(s) of the forgotten concept (few-shot relearning attack)"
                        if settings.forget_shots else "benign data")
                yield f"Fine-tuning the unlearned model on {data} ({settings.mode}, {settings.steps} steps, lr {settings.lr:g})…"
            elif event.kind == "score":
                yield "Sampling original, unlearned and fine-tuned models on the run's seeds…"
            else:
                record, forget = event.record, event.run.task.forget
    except UnlearningError as exc:
        yield f"**Could not run the relearning test:** {exc}"
        return
    if results is not None:
        results.append(record)

    def cell(v):
        return "n/a" if v is None else f"{v:.2f}"

    report, relearn_s = record["report"], record["timings"].get("relearn_s", 0)
    lines = ["| model | forget rate ↓ | retain accuracy ↑ |", "|---|---:|---:|"]
    lines += [f"| {row['model']} | {cell(row['forget_rate'])} | {cell(row['retain_accuracy'])} |" for row in report["rows"]]
    gap = report["relearn_gap"]
    shots = f" + {settings.forget_shots} image(s) of {', '.join(forget)}" if settings.forget_shots else ""
    lines += ["", f"**Relearn gap** (forget rate after the fine-tune − after unlearning): "
              f"{'n/a' if gap is None else f'{100 * gap:+.1f} points'}; fine-tuned on {', '.join(record['benign'])}{shots} "
              f"({settings.mode}, {settings.steps} steps, {relearn_s:.1f} s), n = {report['n_forget']} forget samples."]
    yield "\n".join(lines)


# ---- the scaling tab ----------------------------------------------------------------------------

SCALING_INTRO = """
Erase 1, 2, 4, ... 64 colour-shape pairs ("red star", "blue circle", ...) of the **shapes-sd** twin at once
and watch what is left: the forget rate of the erased pairs should stay low while the retain accuracy of a
fixed set of 16 preserved pairs should stay high (at 64 every pair is erased, so nothing is left to keep).
ScaPre claims to hold quality for several times more concepts than the best baseline; SPEED and MACE claim
100. The numbers shown first are the committed results of `python -m unlearning bench scaling`
(bench/results/scaling.json; what they say: docs/peer_methods.md); the button re-runs it here.
"""
SCALING_METHODS = ("speed", "mace", "rece", "uce", "scapre", "esd")


def scaling_default_counts() -> str:
    """1, 2, 4, ... up to 64 concepts, or the profile's per-run limit when it is lower (a hosted app)."""
    limit = get_profile().limits.max_concepts
    return ",".join(str(k) for k in (1, 2, 4, 8, 16, 32, 64) if k <= limit)


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
