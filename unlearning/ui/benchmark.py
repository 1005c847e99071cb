"""The Benchmark tab: every method x every concept (the protocol of ``python -m unlearning bench protocol``).

Pick a model, methods and concepts; the summary table and the method x concept UA heatmap fill in as each cell
finishes (cells already in the results folder are reused, so a stopped benchmark continues where it stopped).
An existing results folder can be opened to show its table. Only on a local launch: a hosted profile neither
runs hours of cells for a visitor nor reads a folder of the server's disk.

Functions here are plain Python (tested directly); :func:`build_tab` lays out and wires the components.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import pandas as pd

from ..benchmarks import protocol as P
from ..benchmarks.cells import safe_name
from ..benchmarks.protocol_results import SUMMARY_HEADERS, heatmap_image, load_results, summary_rows
from ..errors import InputError, UnlearningError
from ..hosting.profile import get_profile
from ..methods import METHODS
from ..models.catalog import CATALOG, concept_choices

INTRO = """**Every method on every concept** (UnlearnCanvas's protocol on the embedded models): one unlearning run per
(method, concept, seed), each scored on the same grid of prompts and seeds: **UA** (share of the forgotten concept's
images the evaluator no longer assigns to it), **IRA** (accuracy on the other concepts of its kind), **CRA** (accuracy
on the other kind: colours when a shape is forgotten; none on digits), evaluator-FID of the retained images, the
method's time, peak memory and the size of its edit; mean [95 % interval] over concepts and seeds, and each
method's worst concept. Cells are stored in the results folder as they finish: run again to continue. On a CPU a
full table takes hours (the command line, `python -m unlearning bench protocol`, can spread it over processes
or a Ray cluster)."""

HOSTED_NOTE = ("The benchmark runs on a local launch only (`python app.py` on your machine, or `python -m unlearning bench "
               "protocol`): a hosted instance does not run hours of cells for a visitor nor read its disk.")


def default_folder(model: str) -> str:
    return str(Path("bench/results") / f"protocol-{safe_name(model or 'model')}")


def method_choices() -> list[str]:
    return list(METHODS)


def summary_frame(result: dict | None) -> pd.DataFrame:
    return pd.DataFrame(summary_rows(result) if result else [], columns=SUMMARY_HEADERS)


def _status(result: dict, done: int | None = None, total: int | None = None, eta_s: float | None = None) -> str:
    proto = result["protocol"]
    head = (f"**{result['model']}**: {len(proto['methods'])} method(s) x {len(proto['concepts'])} concept(s) x "
            f"{len(proto['seeds'])} seed(s); scored by {proto['judge']} on {proto['samples_per_prompt']} image(s) per prompt.")
    if done is not None:
        eta = "" if eta_s is None else f", about {eta_s / 60:.0f} min left"
        head += f" Cells: {done} / {total}{eta}."
    if result["missing"] and done is None:
        head += f" {len(result['missing'])} cell(s) not measured yet."
    if result["failed"]:
        head += f" {len(result['failed'])} cell(s) failed (the method's error is stored with the cell)."
    return head


def open_results(folder: str) -> tuple[str, pd.DataFrame, object]:
    """(status, table, heatmap) of an existing results folder."""
    if get_profile().hosted:
        return HOSTED_NOTE, summary_frame(None), None
    try:
        result = load_results(Path((folder or "").strip()))
    except UnlearningError as exc:
        return f"**Could not open:** {exc}", summary_frame(None), None
    return _status(result), summary_frame(result), heatmap_image(result)


def run_stream(model: str, methods: list[str], concepts: list[str], seeds: float, samples: float, folder: str,
               cancel: threading.Event | None = None) -> Iterator[tuple[str, pd.DataFrame, object]]:
    """Run (or continue) a protocol, yielding (status, table, heatmap) after every finished cell; the results
    folder gets protocol.json / .csv / heatmap.png at the end (and the cells as they finish)."""
    if get_profile().hosted:
        yield HOSTED_NOTE, summary_frame(None), None
        return
    cancel = cancel or threading.Event()
    try:
        if not methods:
            raise InputError("pick at least one method.")
        config = P.ProtocolConfig(model=model, methods=list(methods), concepts=list(concepts) if concepts else "all",
                                  seeds=int(seeds or 1), out=Path((folder or default_folder(model)).strip()),
                                  samples_per_prompt=int(samples) if samples else None)
        protocol = P.resolve_protocol(config)
    except (UnlearningError, ValueError, TypeError) as exc:
        yield f"**Could not start:** {exc}", summary_frame(None), None
        return
    events: queue.Queue = queue.Queue()
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["result"] = P.run_protocol(protocol, on_progress=events.put, quiet=True, cancel=cancel)
        except BaseException as exc:  # handed to the consumer and shown there
            outcome["error"] = exc
        finally:
            events.put(None)

    worker = threading.Thread(target=work, name="protocol", daemon=True)
    worker.start()
    try:
        while (progress := events.get()) is not None:
            result = P.collect(protocol)
            yield _status(result, progress.done, progress.total, progress.eta_s), summary_frame(result), heatmap_image(result)
        worker.join()
        if "error" in outcome:
            error = outcome["error"]
            if not isinstance(error, UnlearningError):
                raise error
            yield f"**Stopped:** {error}", summary_frame(P.collect(protocol)), None
            return
        from ..benchmarks.protocol_results import write_outputs

        result = outcome["result"]
        paths = write_outputs(result, config.out)
        yield (_status(result) + f" Written to `{paths['json']}` (+ protocol.csv, heatmap.png)."), summary_frame(result), \
            heatmap_image(result)
    finally:
        cancel.set()  # a cancelled event stops after the cell in progress
        worker.join(timeout=1)


def build_tab() -> None:
    """Lay out and wire the Benchmark tab (call inside a ``gr.Tabs`` of a ``gr.Blocks``)."""
    hosted = get_profile().hosted
    model0 = "shapes-sd"
    with gr.Tab("Benchmark: every concept"):
        gr.Markdown(INTRO + ("\n\n" + HOSTED_NOTE if hosted else ""))
        with gr.Row():
            model = gr.Dropdown([(e.label, e.id) for e in CATALOG.values()], value=model0, allow_custom_value=True,
                                label="model", scale=1)
            methods = gr.CheckboxGroup(method_choices(), value=["uce", "scapre"], label="methods",
                                       info="closed-form methods take seconds per cell; trained ones (ESD, SalUn, ...) minutes",
                                       scale=3)
        with gr.Row():
            concepts = gr.Dropdown(concept_choices(model0), value=[], multiselect=True, label="concepts (empty: all)", scale=3)
            seeds = gr.Number(1, precision=0, minimum=1, maximum=10, label="seeds", scale=1)
            samples = gr.Number(None, precision=0, minimum=1, label="images per prompt (empty: 4 with two kinds, 16 with one)",
                                scale=1)
        with gr.Row():
            folder = gr.Textbox(default_folder(model0), label="results folder (cells are reused from it)", scale=3)
            run_btn = gr.Button("Run / continue", variant="primary", scale=1, interactive=not hosted)
            cancel_btn = gr.Button("Stop after this cell", scale=1, interactive=not hosted)
            open_btn = gr.Button("Open results folder", scale=1, interactive=not hosted)
        status = gr.Markdown()
        table = gr.Dataframe(summary_frame(None), label="per method: mean [95 % interval] over concepts and seeds", wrap=True,
                             interactive=False)
        heatmap = gr.Image(label="UA per method and concept (higher = more forgotten)", type="pil", format="png",
                           interactive=False)

        def on_model(m):
            return gr.update(choices=concept_choices(m), value=[]), default_folder(m)

        model.change(on_model, model, [concepts, folder], api_visibility="private")
        event = run_btn.click(run_stream, [model, methods, concepts, seeds, samples, folder], [status, table, heatmap],
                              concurrency_id="gpu", api_visibility="private")
        cancel_btn.click(None, None, None, cancels=[event])
        open_btn.click(open_results, folder, [status, table, heatmap], api_visibility="private")
