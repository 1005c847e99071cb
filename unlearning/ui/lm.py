"""The Language model tab: unlearn a domain from a causal language model and compare the two models.

RMU, gradient ascent / NegGrad+, each with or without UAM, through the shared run path (``runner.prepare`` /
``execute``, the text view of ``compare_lm``): the same prompts continued by the original and the unlearned
model (greedy, and sampled with the same random numbers), the held-out questions of both domains scored as
they go, perplexity on retain text, the loss curve and the timings. Handlers are plain functions (tested
without a browser); :func:`build_tab` lays out and wires the components, called from app.py.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from ..errors import InputError, UnlearningError
from ..hosting.profile import get_profile
from ..hosting.zerogpu import on_gpu, request_duration, zero_gpu_active
from ..methods import METHODS
from ..models.catalog import CATALOG, HUB_MODELS, concept_choices, hub_availability, read_twin, resolve
from ..run_folder import new_run_folder, prune_runs, zip_run
from ..runner import RunRequest, execute, prepare
from .runs import viewer_of
from .unlearn import LOSS_EMPTY, UPDATE_EVERY_S, export_from_run, loss_frame, setting_component, setting_controls

FAMILY = "causal-lm"
CONTINUATION_COLUMNS = ["prompt", "original (greedy)", "unlearned (greedy)", "original (sampled)", "unlearned (sampled)"]
ACCURACY_COLUMNS = ["questions", "role", "scored", "original", "unlearned", "chance"]

INTRO = """**Unlearning knowledge in a language model** (WMDP's setting: Li et al. 2024; UAM's LLM experiments). Pick
the domain to forget and the domain to keep; **RMU** scrambles the model's hidden states on forget-domain text at one
layer while holding them on retain-domain text; **gradient ascent** raises the next-token loss on forget-domain text
(**NegGrad+** keeps training on retain text beside it); **UAM** wraps RMU or NegGrad+ (retain gradient taken at
weights pushed towards more forgetting). Both models then continue the same prompts and answer the same *held-out*
four-option questions, scored like lm-evaluation-harness (the option with the highest log-likelihood): forget-domain
accuracy should fall to chance, retain-domain accuracy should stay. The embedded *facts-lm* is a small Llama-style
model trained here on generated facts of two made-up domains: *hazard* (invented compounds) and *general* (invented
cities and people). A real checkpoint (e.g. Zephyr-7B) reads WMDP / MMLU from local files (`$UNLEARNING_LM_DATA`)."""


# ---- choices --------------------------------------------------------------------------------------

def model_choices() -> list[tuple[str, str]]:
    allowed = get_profile().models
    out = [(e.label, e.id) for e in CATALOG.values() if e.family == FAMILY and (not allowed or e.id in allowed)]
    for repo, family in HUB_MODELS.items():
        if family == FAMILY and (not allowed or repo in allowed):
            ok, _ = hub_availability(repo)
            out.append((f"{repo} ({'GPU needed' if ok else 'not available offline'})", repo))
    return out


def lm_methods() -> list:
    """The registered methods written for language models (their variants for this family)."""
    allowed = get_profile().methods
    return [s.for_family(FAMILY) for s in METHODS.values() if s.supports(FAMILY) and (allowed is None or s.name in allowed)]


def method_choices() -> list[tuple[str, str]]:
    return [(s.label, s.name) for s in lm_methods()]


def domain_choices(model: str) -> tuple[list[str], str | None, list[str]]:
    """(every domain, the suggested forget domain, the suggested retain domains), read without loading weights."""
    names = concept_choices(model)
    roles: dict[str, str] = {}
    try:
        _, path, _ = resolve(model)
        if isinstance(path, Path):
            roles = {n: d.get("role", "") for n, d in read_twin(path).get("domains", {}).items()}
    except UnlearningError:
        pass
    forget = next((n for n in names if roles.get(n) == "forget"), names[0] if names else None)
    retain = [n for n in names if roles.get(n) == "retain" and n != forget] or [n for n in names if n != forget][:1]
    return names, forget, retain


def default_prompts(model: str) -> str:
    """The twin's demo prompts (twin.json), one per line."""
    try:
        _, path, _ = resolve(model)
    except UnlearningError:
        return ""
    prompts = read_twin(path).get("prompts", {}) if isinstance(path, Path) else {}
    return "\n".join(p for ps in prompts.values() for p in ps)


# ---- the run ------------------------------------------------------------------------------------

@dataclass
class LMOutputs:
    """What one streamed update sets; None leaves a component as it is."""

    status: str | None = None
    loss: pd.DataFrame | None = None
    continuations: pd.DataFrame | None = None
    accuracy: pd.DataFrame | None = None
    timings: str | None = None
    download: str | None = None
    folder: str | None = None


def parse_request(model: str, method: str, forget: str | None, retain: list[str] | str | None, prompts: str | None,
                  questions: float | None, seed: float | None, device: str | None, settings: dict[str, Any]) -> RunRequest:
    def whole(value, name: str) -> int | None:
        if value in (None, ""):
            return None
        number = float(value)
        if not math.isfinite(number) or number != int(number):
            raise InputError(f"{name} must be a whole number, got {value}.")
        return int(number)

    if not forget:
        raise InputError("pick the domain to forget.")
    keep = [retain] if isinstance(retain, str) else list(retain or [])
    return RunRequest(model=model, method=method, forget=[forget], preserve=keep or None, settings=settings,
                      seed=whole(seed, "seed") or 0, device=device or "auto", questions=whole(questions, "questions") or None,
                      prompts=[line.strip() for line in (prompts or "").splitlines() if line.strip()] or None)


def continuation_frame(state) -> pd.DataFrame:
    rows = [[r["prompt"], r["greedy"]["original"], r["greedy"]["unlearned"], r["sampled"]["original"], r["sampled"]["unlearned"]]
            for r in state.continuations]
    return pd.DataFrame(rows, columns=CONTINUATION_COLUMNS)


def accuracy_frame(metrics: dict, total: int) -> pd.DataFrame:
    """One row per domain, then the forget / retain summaries with their 95 % intervals, then perplexity."""
    rows = []
    for domain, d in metrics.get("per_domain", {}).items():
        rows.append([domain, d["group"], f"{d['n']}", f"{d['original']:.3f}", f"{d['unlearned']:.3f}", ""])
    for key, label in (("forget_rate", "forget-domain accuracy (↓)"), ("retain_accuracy", "retain-domain accuracy (↑)")):
        e = metrics.get(key)
        if e:
            lo, hi = e["unlearned_ci95"]
            rows.append([label, key, f"{e['n']}", f"{e['original']:.3f}", f"{e['unlearned']:.3f} [{lo:.2f}, {hi:.2f}]",
                         f"{e['chance']:.2f}"])
    p = metrics.get("perplexity")
    if p:
        rows.append([f"retain-text perplexity (↓), {p['n_texts']} texts", "perplexity", "", f"{p['original']:.2f}",
                     f"{p['unlearned']:.2f}", ""])
    frame = pd.DataFrame(rows, columns=ACCURACY_COLUMNS)
    frame.attrs["scored"] = f"{metrics.get('samples', {}).get('done', 0)} / {total}"
    return frame


def timings_markdown(metrics: dict) -> str:
    t = metrics.get("timings", {})
    ev = t.get("eval_s", {})
    unlearn = t.get("unlearn_s")
    return (f"**Timings** · unlearning {unlearn:.1f} s" if unlearn is not None else "**Timings**") + \
           f" · scoring and continuations: original {ev.get('original', 0):.1f} s, unlearned {ev.get('unlearned', 0):.1f} s " \
           f"({t.get('questions', 0)} questions, {t.get('continuations', 0)} prompts each)"


def lm_stream(request: RunRequest, cancel: threading.Event | None = None, owner: str | None = None) -> Iterator[LMOutputs]:
    """Prepare, unlearn and compare, yielding UI updates; errors become a status message."""
    try:
        yield LMOutputs(status="Checking the request and loading the model…", loss=LOSS_EMPTY)
        run = prepare(request)
        profile = get_profile()
        device = f"{run.adapter.device} ({str(run.adapter.dtype).replace('torch.', '')})"
        head = (f"**{run.spec.label}**{' + UAM' if getattr(run.settings, 'uam', False) else ''} on **{run.model_id}**, "
                f"forgetting **{', '.join(run.task.forget)}**, keeping **{', '.join(run.task.retain)}** · device {device}")
        folder = new_run_folder(profile.runs.dir, run.model_id, run.spec.name)
        last = 0.0
        for event in execute(run, out_dir=folder, cancel=cancel, owner=owner):
            now = time.perf_counter()
            if event.kind == "train":
                s = event.step
                if now - last >= UPDATE_EVERY_S or s.step == s.total:
                    last = now
                    yield LMOutputs(status=f"{head}  \nUnlearning: step {s.step} / {s.total}, loss {s.loss:.4f}",
                                    loss=loss_frame(event.loss_log))
            elif event.kind == "edit":
                yield LMOutputs(status=f"{head}  \nUnlearning done in {event.edit.timings['unlearn_s']:.1f} s "
                                f"({event.edit.summary()['changed_values']:,} weights changed). Comparing both models…",
                                loss=loss_frame(event.loss_log))
            else:
                st = event.state
                m = st.metrics
                out = LMOutputs(continuations=continuation_frame(st), accuracy=accuracy_frame(m, run.plan.total),
                                timings=timings_markdown(m))
                if event.kind == "compare":
                    out.status = (f"{head}  \nScoring held-out questions: {st.scored} / {run.plan.total} "
                                  "(the same questions and prompts for both models)…")
                else:
                    f, r = m.get("forget_rate", {}), m.get("retain_accuracy", {})
                    summary = (f"forget-domain accuracy {f['original']:.2f} → {f['unlearned']:.2f}, retain-domain accuracy "
                               f"{r['original']:.2f} → {r['unlearned']:.2f} (chance {f['chance']:.2f})" if f and r else "")
                    out.status = f"{head}  \n**Done.** {summary}. Run folder: `{event.folder}`"
                    out.download, out.folder = str(zip_run(event.folder)), str(event.folder)
                    prune_runs(profile.runs.dir, profile.runs.keep, profile.runs.max_bytes)
                yield out
    except UnlearningError as exc:
        yield LMOutputs(status=f"**Could not run:** {exc}")


# on a ZeroGPU Space the GPU work runs in `spaces.GPU` (decorated at import, as ZeroGPU requires); elsewhere unchanged
lm_stream_gpu = on_gpu(request_duration)(lm_stream)


def export_delta(run_folder: str | None) -> tuple[str | None, str]:
    """The last run's edit as ``new - base`` safetensors (``export.export_delta``), inside its run folder."""
    from ..export import export_delta as write_delta

    out, problem = export_from_run(run_folder, "delta.safetensors", write_delta)
    if out is None:
        return None, problem
    return str(out), f"Written to `{out}`: new - base of the changed tensors (apply with `unlearning.export.apply_delta`)."


# ---- layout ---------------------------------------------------------------------------------------

def build_tab(viewer=None) -> None:
    """Lay out and wire the Language model tab (call inside a ``gr.Tabs`` of a ``gr.Blocks``); ``viewer``: the app's
    State with this browser's id (run folders are recorded as theirs)."""
    from .unlearn import export_model

    models = model_choices()
    if not models:  # a hosted profile without a language model
        return
    model0 = models[0][1]
    domains, forget0, retain0 = domain_choices(model0)
    methods = method_choices()
    names = [name for _, name in methods]
    method0 = "rmu" if "rmu" in names else (names[0] if names else None)  # the paper's method first
    specs = lm_methods()
    controls = setting_controls(model0, specs=specs)
    with gr.Tab("Language model"):
        gr.Markdown(INTRO)
        with gr.Row():
            model = gr.Dropdown(models, value=model0, allow_custom_value=True, label="model (or a hub id / local folder)", scale=2)
            method = gr.Dropdown(methods, value=method0, label="method", scale=2)
            forget = gr.Dropdown(domains, value=forget0, allow_custom_value=True, label="forget domain")
            retain = gr.Dropdown(domains, value=retain0, multiselect=True, allow_custom_value=True, label="retain domain(s)")
        with gr.Row():
            prompts = gr.Textbox(default_prompts(model0), lines=3, label="prompts (one per line)", scale=3,
                                 info="continued by both models: greedy, and sampled with the same random numbers")
            with gr.Column(scale=1):
                questions = gr.Number(None, precision=0, label="questions per domain (empty: all held-out)")
                seed = gr.Number(0, precision=0, label="seed", info="RMU's random direction, every batch, the sampling")
                device = gr.Dropdown(["auto", "cpu", "cuda"], value="auto", label="device")
        with gr.Row():
            run_btn = gr.Button("Unlearn the domain", variant="primary")  # not "Unlearn": the image tab's button has that name
            cancel_btn = gr.Button("Cancel", variant="stop")
        setting_inputs: list = []
        groups = {}
        with gr.Accordion("Method settings (paper defaults; values tuned for the twin)", open=False):
            for spec in specs:
                with gr.Group(visible=spec.name == method0) as group:
                    setting_inputs += [setting_component(c) for c in controls if c.method == spec.name]
                groups[spec.name] = group
        status = gr.Markdown()
        continuations = gr.Dataframe(headers=CONTINUATION_COLUMNS, wrap=True, label="the same prompts through both models")
        with gr.Row():
            accuracy = gr.Dataframe(headers=ACCURACY_COLUMNS, label="held-out questions, scored as they go", scale=3)
            with gr.Column(scale=2):
                loss_plot = gr.LinePlot(None, x="step", y="loss", color="series", label="loss", height=220)
                timings = gr.Markdown()
        with gr.Row():
            download = gr.File(label="run folder (zip)")
            export_btn = gr.Button("Export the full model folder")
            delta_btn = gr.Button("Export the delta (safetensors)")
            export_file = gr.File(label="export")
        export_status = gr.Markdown()
        folder_state = gr.State(None)

        def on_model(m):
            names, f, r = domain_choices(m)
            tuned = setting_controls(m, specs=specs)
            return (gr.update(choices=names, value=f), gr.update(choices=names, value=r), default_prompts(m),
                    *(gr.update(value=c.value, info=c.info) for c in tuned))

        model.change(on_model, model, [forget, retain, prompts, *setting_inputs], api_visibility="private")
        method.change(lambda name: [gr.update(visible=n == name) for n in groups], method, list(groups.values()),
                      api_visibility="private")

        def on_run(model, method, forget_domain, retain_domains, prompts, questions, seed, device, browser, request: gr.Request,
                   **named):
            cancel = threading.Event()

            try:
                chosen = {c.name: named[c.api_name] for c in controls if c.method == method and c.api_name in named}
                req = parse_request(model, method, forget_domain, retain_domains, prompts, questions, seed, device, chosen)
            except (InputError, ValueError, TypeError) as exc:
                yield {status: f"**Could not run:** {exc}"}
                return
            owner = viewer_of(browser, request)
            stream = lm_stream_gpu(req, owner=owner) if zero_gpu_active() else lm_stream(req, cancel=cancel, owner=owner)
            try:
                for out in stream:
                    update = {}
                    if out.loss is not None:
                        update[loss_plot] = None if out.loss.empty else out.loss
                    for comp, value in ((status, out.status), (continuations, out.continuations), (accuracy, out.accuracy),
                                        (timings, out.timings), (download, out.download), (folder_state, out.folder)):
                        if value is not None:
                            update[comp] = value
                    yield update
            finally:
                cancel.set()

        viewer_input = [viewer] if viewer is not None else [gr.State(None)]
        event = run_btn.click(on_run, [model, method, forget, retain, prompts, questions, seed, device, *viewer_input],
                              [status, loss_plot, continuations, accuracy, timings, download, folder_state],
                              inputs_kwargs={c.api_name: comp for c, comp in zip(controls, setting_inputs, strict=True)},
                              api_name="unlearn_lm", concurrency_id="gpu")
        cancel_btn.click(None, None, None, cancels=[event])
        export_btn.click(export_model, folder_state, [export_file, export_status], api_visibility="private")
        delta_btn.click(export_delta, folder_state, [export_file, export_status], api_visibility="private")

