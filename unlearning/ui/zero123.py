"""The Zero123 tab: unlearn an object in a novel-view model and see the views around it, before and after.

It is a view of the shared run path: the form becomes a :class:`~unlearning.runner.RunRequest` (method skip3d,
forget object, override = anchor, remain objects = preserved concepts), :func:`unlearning.ui.unlearn.run_stream`
prepares, unlearns, compares and writes the run folder exactly as for the Unlearn tab (so the run appears in the
Runs tab and exports like any other), and the finished run is shown from its run folder. The settings controls are
generated from ``Skip3DSettings`` by the same machinery as the Unlearn tab's. Uploaded input views are checked by
:func:`unlearning.images.stage_upload` (our message for a file that is not an image, too large, ...).

Functions here are plain Python (tested directly and through gradio_client); :func:`build_tab` lays out the
components and wires them, called from app.py inside the app's Tabs.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from PIL import Image

from ..datasets import render3d as r3d
from ..errors import InputError, UnlearningError
from ..images import stage_upload
from ..models.catalog import CATALOG
from ..runner import RunRequest
from . import unlearn as ui
from .report import METRIC_HEADERS

FAMILIES = ("novel-view",)
METHOD = "skip3d"
OBJECTS = [o.name for o in r3d.all_objects()]
DEFAULT_FORGET, DEFAULT_OVERRIDE = "blue pyramid", "blue cube"
DEFAULT_REMAIN = ["red sphere", "green cylinder", "orange torus"]
SAMPLING_SKIPS = [0, 8, 12, 16]  # the paper's sampling table (skip of 32 steps)
TILE = 96  # display size of a view tile (the twin renders 32 px; nearest-neighbour upscaling keeps pixels honest)
SAMPLING_COLUMNS = ["skip (of 32)", "s / view", "speedup (measured)", "paper", "UNet view-steps", "SSIM ↑", "PSNR dB ↑", "evaluator-FID ↓"]

INTRO = """**Unlearning an object in a novel-view model (Zero123).** Conditioned on a view of the *forget* object,
the unlearned model should draw the *override* object's views at the same camera pose, while views of the *remain*
objects stay as they were (Wang, Ye, Wang, NeurIPS 2025; losses of Score Forgetting Distillation). The expensive part,
generating the model's own views at every training angle, is accelerated by **dynamic timestep skipping**: a few
reference azimuths run the full 32-step trajectory, every other view starts part-way from a blend of the two most
similar references. Tick *also run without skipping* to measure the speedup in the same run, beside the paper's
(unlearning 1.22-1.32x; sampling 1.43 / 1.71 / 2.12x at skip 8 / 12 / 16). The embedded *shapes-3d* model is a tiny
Zero123 trained here on rendered objects, so every view has a ground-truth render to compare with. Each run is a run
folder like the Unlearn tab's: it is listed in the Runs tab and exports in Zero123's own layout."""


def model_choices() -> list[tuple[str, str]]:
    return ui.model_choices(FAMILIES)


def setting_controls(model_id: str) -> list[ui.SettingControl]:
    """skip3d's settings controls (generated from ``Skip3DSettings``; values tuned for the model where measured)."""
    return ui.setting_controls(model_id, FAMILIES)


def upload_preview(path: str | None) -> tuple[Image.Image | None, str]:
    """(a preview of an uploaded input view, a status line): the upload is checked as a run would check it."""
    if not path:
        return None, ""
    from ..images import load_upload

    try:
        image, notes = load_upload(path)
    except InputError as exc:
        return None, f"**Could not use the upload:** {exc}"
    return image, ("Upload: " + " ".join(notes)) if notes else ""


def build_request(model: str, forget: str, forget_image: str | None, override: str, override_image: str | None,
                  remain: list[str] | None, input_polar: float, seed: float, time_sampling: bool,
                  settings: dict[str, Any]) -> tuple[RunRequest, list[str]]:
    """The tab's form as a RunRequest (uploads staged: checked and saved under a name a run may read), and notes
    on what was done to the uploads. InputError for a bad upload or number."""
    notes: list[str] = []

    def concept(name: str | None, upload: str | None, role: str) -> str:
        if upload:
            path, why = stage_upload(upload)
            notes.extend(f"{role} image: {w}" for w in why)
            return str(path)
        return name or ""

    if seed is None or not math.isfinite(float(seed)) or float(seed) != int(float(seed)):
        raise InputError(f"seed must be a whole number, got {seed}.")
    request = RunRequest(
        model=model, method=METHOD, forget=[concept(forget, forget_image, "forget")],
        anchor=concept(override, override_image, "override") if settings.get("target", "override") == "override" else None,
        preserve=list(remain or []), settings=settings, seed=int(float(seed)), input_polar=float(input_polar),
        forget_samples=8, retain_samples=8,  # one seed: every input seen from the comparison's 8 azimuths
        sampling_skips=list(SAMPLING_SKIPS) if time_sampling else None,
    )
    return request, notes


# ---- the finished run, read back from its run folder -------------------------------------------------------

def _tile(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB").resize((TILE, TILE), Image.Resampling.NEAREST)


def view_rows(folder: Path) -> list[dict]:
    """The multi-view rows of a finished novel-view run: per (input, seed) its input view and the original and
    unlearned views around the object (file paths), from images/index.json."""
    index = json.loads((folder / "images" / "index.json").read_text())
    rows: dict[tuple[str, int], dict] = {}
    for e in index:
        row = rows.setdefault((e["prompt"], e["seed"]), {"group": e["group"], "concept": e["prompt"], "seed": e["seed"],
                                                         "input": str(folder / "images" / e["input"]), "azimuths": [],
                                                         "original": [], "unlearned": []})
        row["azimuths"].append(e["azimuth"])
        for which in ("original", "unlearned"):
            row[which].append(str(folder / "images" / which / e["file"]))
    return list(rows.values())


def gallery_items(rows: list[dict]) -> list[tuple[Image.Image, str]]:
    """Rows of tiles: each input's original views, then its unlearned views; the first column is the input view."""
    from ..models.novel_view import concept_label

    items = []
    for r in rows:
        label = f"{'forget' if r['group'] == 'forget' else 'remain'}: {concept_label(r['concept'])}, seed {r['seed']}"
        for which in ("original", "unlearned"):
            items.append((_tile(Path(r["input"])), f"{label} (input view) · {which}"))
            items += [(_tile(Path(p)), f"{label} · {which} · Δazimuth {az:+.0f}°") for az, p in zip(r["azimuths"], r[which], strict=True)]
    return items


def tile_pair(rows: list[dict] | None, index: int):
    """The (original, unlearned) pair of a clicked tile, for the ImageSlider; None for input-view tiles."""
    if not rows:
        return None
    per_row = 1 + len(rows[0]["azimuths"])
    row, col = divmod(int(index), per_row)
    if col == 0 or row // 2 >= len(rows):
        return None
    r = rows[row // 2]
    return (_tile(Path(r["original"][col - 1])), _tile(Path(r["unlearned"][col - 1])))


def sampling_frame(metrics: dict) -> pd.DataFrame:
    def f(v, d=3):
        return "—" if v is None else f"{v:.{d}f}"

    rows = [[r["skip"], f(r["seconds_per_view"], 4), f(r["speedup"], 2) + "x", f"{r['paper_speedup']:.2f}x" if r["paper_speedup"] else "—",
             r["unet_evals"], f(r.get("ssim")), f(r.get("psnr"), 2), f(r.get("evaluator_fid"), 2)] for r in metrics.get("sampling", [])]
    return pd.DataFrame(rows, columns=SAMPLING_COLUMNS)


def timings_markdown(metrics: dict, notes: list[str] = ()) -> str:
    t = metrics.get("timings", {})
    m = t.get("method", {})
    lines = []
    if m:
        lines.append(f"**Unlearning**{' with skipping' if m.get('speedup') else ''}: {m['unlearn_s']:.1f} s (trajectories "
                     f"{m['trajectory_s']:.1f} s, {m['unet_evals']} UNet view-steps).")
    if "speedup" in m:
        paper = f"; paper at this skip: {m['paper_speedup']:.2f}x" if m.get("paper_speedup") else ""
        lines.append(f"Without skipping, same seed: {m['plain_unlearn_s']:.1f} s (trajectories {m['plain_trajectory_s']:.1f} s, "
                     f"{m['plain_unet_evals']} view-steps). **Measured speedup {m['speedup']:.2f}x**{paper}.")
    elif m:
        lines.append("Tick “also run without skipping” to measure the speedup in the same run.")
    lpips = metrics.get("ground_truth", {}).get("lpips")
    if lpips and lpips != "available":
        lines.append(f"LPIPS unavailable: {lpips}.")
    if notes:
        lines.append("Input notes: " + " ".join(notes))
    return "\n\n".join(lines)


def run_view(folder: Path, notes: list[str] = ()) -> dict:
    """What the tab shows of a finished run folder: gallery tiles, their rows (for the slider), the metrics
    table rows, the sampling table, the timings."""
    from .report import metrics_rows

    metrics = json.loads((folder / "metrics.json").read_text())
    rows = view_rows(folder)
    return {"rows": rows, "gallery": gallery_items(rows), "metrics": metrics_rows(metrics), "sampling": sampling_frame(metrics),
            "timings": timings_markdown(metrics, notes), "slider": tile_pair(rows, 1)}


def zero123_stream(request: RunRequest, stream: Callable[..., Iterator[ui.Outputs]] = ui.run_stream,
                   cancel: threading.Event | None = None, progress=None, owner: str | None = None,
                   notes: list[str] = ()) -> Iterator[dict[str, Any]]:
    """The shared run (``stream``: ``run_stream``, wrapped for ZeroGPU by the app) as this tab's updates: status, loss
    curves and the multi-view grids while it runs, then everything read back from the run folder. Keys: status, loss,
    forget_grid, remain_grid, metrics, and at the end gallery, rows, slider, sampling, timings, download, folder."""
    kwargs = {"progress": progress, "owner": owner} | ({"cancel": cancel} if cancel is not None else {})
    for out in stream(request, **kwargs):
        update: dict[str, Any] = {}
        for key, value in (("status", out.status), ("loss", out.loss), ("forget_grid", out.forget_grid),
                           ("remain_grid", out.retain_grid), ("metrics", out.metrics)):
            if value is not None:
                update[key] = value
        if out.download is not None:
            folder = Path(out.download).with_suffix("")
            update.update(run_view(folder, notes), download=out.download, folder=str(folder))
            update["status"] = str(update.get("status", "")).replace("**Done.**", "**Done:** forget views should now look like the "
                                                                      "override; remain rows should match their originals.")
        yield update


def gpu_duration(request: RunRequest, *args, **kwargs) -> int:
    """ZeroGPU seconds for a Zero123 request: UNet image-steps of the trajectories (both variants when the plain
    run is measured), the training steps, the comparison and the sampling table, at the profile's per-step cost."""
    from ..hosting.profile import get_profile
    from ..methods import get_method
    from ..models.view_sampling import azimuth_grid

    z = get_profile().zerogpu
    try:
        model_id = request.model if request.model in CATALOG else None
        s = get_method(METHOD).settings(model_id, request.settings)
        inputs = 1 + len(request.preserve or [])
        views = len(azimuth_grid(s.azimuth_step)) * inputs
        per_epoch = views * s.steps * 2 * 1.5  # trajectories with guidance + the two networks' steps
        compare = inputs * 8 * s.steps * 2 * (2 + len(request.sampling_skips or []))
        steps = s.epochs * per_epoch * (2 if s.measure_speedup else 1) + compare
    except (UnlearningError, TypeError, ValueError):
        return math.ceil(z.max_duration)
    return math.ceil(min(z.max_duration, z.margin * (z.overhead_s + steps * z.sample_step_s)))


# ---- layout and wiring ---------------------------------------------------------------------------------------

def build_tab(stream: Callable[..., Iterator[ui.Outputs]], viewer, zero_gpu: bool = False) -> None:
    """Lay out and wire the Zero123 tab (call inside a ``gr.Tabs`` of a ``gr.Blocks``). ``stream``: the app's
    ``run_stream`` for this tab (ZeroGPU-wrapped where needed); ``viewer``: the State holding the browser's id."""
    from .runs import viewer_of

    choices = model_choices()
    model0 = "shapes-3d" if any(v == "shapes-3d" for _, v in choices) else (choices[0][1] if choices else "shapes-3d")
    controls = setting_controls(model0)
    with gr.Tab("Zero123: novel views", elem_id="zero123-tab"):
        gr.Markdown(INTRO)
        with gr.Row():
            model = gr.Dropdown(choices, value=model0, allow_custom_value=True, label="model (or a folder of Zero123's layout)", scale=2)
            seed = gr.Number(0, precision=0, label="seed", scale=1)
            polar = gr.Slider(r3d.POLAR_RANGE[0], r3d.POLAR_RANGE[1], value=75, step=5, label="input view polar angle (90 = level)",
                              scale=2)
        with gr.Row():
            forget = gr.Dropdown(OBJECTS, value=DEFAULT_FORGET, label="forget object")
            override = gr.Dropdown(OBJECTS, value=DEFAULT_OVERRIDE, label="override object (drawn instead)")
            remain = gr.Dropdown(OBJECTS, value=DEFAULT_REMAIN, multiselect=True, label="remain objects (must stay as they were)")
        with gr.Accordion("or upload the input views (real Zero123: objects on a white background)", open=False), gr.Row():
            forget_image = gr.File(file_types=["image"], type="filepath", label="forget view (replaces the forget object)", height=120)
            forget_preview = gr.Image(label="forget view as the model will see it", interactive=False, height=160)
            override_image = gr.File(file_types=["image"], type="filepath", label="override view", height=120)
            override_preview = gr.Image(label="override view as the model will see it", interactive=False, height=160)
        demo = sorted((CATALOG["shapes-3d"].path / "demo").glob("*.png"))
        if demo:
            gr.Examples([[str(p)] for p in demo], inputs=[forget_image],
                        label="demo input views (64 px renders; the twin resizes them to 32)")
        with gr.Accordion("skip3d settings: timestep skipping and training (paper defaults; values tuned for the twin)", open=False):
            time_sampling = gr.Checkbox(True, label="time sampling at skip 0 / 8 / 12 / 16 (the sampling table)")
            setting_inputs = [ui.setting_component(c) for c in controls]
        with gr.Row():
            run_btn = gr.Button("Run", variant="primary")
            cancel_btn = gr.Button("Cancel", variant="stop")
        status = gr.Markdown()
        losses = gr.LinePlot(None, x="step", y="loss", color="series", title="training curves", height=220)
        with gr.Row():
            forget_grid = gr.Image(label="forget object: input view, then views around it (original row above unlearned row)",
                                   format="png", type="pil", interactive=False)
            remain_grid = gr.Image(label="remain objects: input view, then views around it (original row above unlearned row)",
                                   format="png", type="pil", interactive=False)
        gallery = gr.Gallery(label="views around the object: original row above unlearned row (first column: the input view); "
                             "click a tile to compare", columns=9, object_fit="contain", height="auto", preview=False,
                             allow_preview=False)
        with gr.Row():
            slider = gr.ImageSlider(label="original | unlearned", type="pil", max_height=320, scale=1)
            with gr.Column(scale=2):
                metrics = gr.Dataframe(label="metrics: views vs ground-truth renders (forget views should move towards the override)",
                                       headers=METRIC_HEADERS, wrap=True, interactive=False)
                sampling = gr.Dataframe(label="sampling with skipping (unlearned model, every input seen from 8 azimuths)",
                                        headers=SAMPLING_COLUMNS, interactive=False)
        timings = gr.Markdown()
        download = gr.File(label="Download this run (run card, metrics, multi-view images, edit.safetensors)")
        with gr.Row():
            export_btn = gr.Button("Export the unlearned model (Zero123 folder layout)", scale=1)
            export_status = gr.Markdown("")
        export_file = gr.File(label="Unlearned model (zip of the Zero123 folder)")
        rows_state = gr.State(None)
        folder_state = gr.State(None)

        outputs = {"status": status, "loss": losses, "forget_grid": forget_grid, "remain_grid": remain_grid, "metrics": metrics,
                   "gallery": gallery, "slider": slider, "sampling": sampling, "timings": timings, "download": download,
                   "rows": rows_state, "folder": folder_state}

        def on_run(model_source, forget_object, forget_upload, override_object, override_upload, remain_objects, input_polar,
                   first_seed, time_sampling_table, browser, request: gr.Request, progress=gr.Progress(), **named):  # noqa: B008
            cancel = threading.Event()
            try:
                settings = {c.name: named[c.api_name] for c in controls if c.api_name in named}  # the API's skip3d_<setting>
                run_request, notes = build_request(model_source, forget_object, forget_upload, override_object, override_upload,
                                                   remain_objects, input_polar, first_seed, time_sampling_table, settings)
            except UnlearningError as exc:
                yield {status: f"**Could not run:** {exc}"}
                return
            try:
                for update in zero123_stream(run_request, stream, cancel=None if zero_gpu else cancel,
                                             progress=progress, owner=viewer_of(browser, request), notes=notes):
                    if "loss" in update and update["loss"].empty:
                        update["loss"] = None  # an empty frame would break the plot's colour scale
                    yield {outputs[k]: v for k, v in update.items()}
            finally:
                cancel.set()  # a cancelled or closed event stops the method at its next step

        def on_model(m):
            tuned = setting_controls(m)  # same order as `controls`
            return [gr.update(value=c.value, info=c.info) for c in tuned]

        model.change(on_model, model, setting_inputs, api_visibility="private")
        for upload, preview in ((forget_image, forget_preview), (override_image, override_preview)):
            upload.change(upload_preview, upload, [preview, status], api_visibility="private")
        event = run_btn.click(on_run, [model, forget, forget_image, override, override_image, remain, polar, seed, time_sampling,
                                       viewer], list(outputs.values()),
                               inputs_kwargs={c.api_name: comp for c, comp in zip(controls, setting_inputs, strict=True)},
                               api_name="zero123", concurrency_id="gpu")
        cancel_btn.click(None, None, None, cancels=[event])
        export_btn.click(ui.export_model, folder_state, [export_file, export_status], api_visibility="private")

        def on_select(rows, evt: gr.SelectData):
            return tile_pair(rows, evt.index)

        gallery.select(on_select, rows_state, slider, api_visibility="private")
