"""The Zero123 tab: unlearn an object in a novel-view model and see the views around it, before and after.

Functions here are plain Python (tested directly and through gradio_client); :func:`build_tab` lays out the
Gradio components and wires them, called from app.py inside the app's Tabs.
"""

from __future__ import annotations

import math
import threading

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from .. import novel_view as nv
from ..datasets import render3d as r3d
from ..errors import UnlearningError
from ..hosting.zerogpu import on_gpu

OBJECTS = [f"{c} {s}" for s in r3d.SHAPES for c in r3d.COLOURS]
DEFAULT_FORGET, DEFAULT_OVERRIDE = "blue pyramid", "blue cube"
DEFAULT_REMAIN = ["red sphere", "green cylinder", "orange torus"]
TILE = 96  # display size of a view tile (the twin renders 32 px; nearest-neighbour upscaling keeps pixels honest)
METRIC_COLUMNS = ["views", "model", "compared with", "SSIM ↑", "PSNR dB ↑", "LPIPS ↓", "evaluator: shape share"]
SAMPLING_COLUMNS = ["skip (of 32)", "s / view", "speedup (measured)", "paper", "UNet view-steps", "SSIM ↑", "PSNR dB ↑", "evaluator-FID ↓"]

INTRO = """**Unlearning an object in a novel-view model (Zero123).** Conditioned on a view of the *forget* object,
the unlearned model should draw the *override* object's views at the same camera pose, while views of the *remain*
objects stay as they were (Wang, Ye, Wang, NeurIPS 2025; losses of Score Forgetting Distillation). The expensive part,
generating the model's own views at every training angle, is accelerated by **dynamic timestep skipping**: a few
reference azimuths run the full 32-step trajectory, every other view starts part-way from a blend of the two most
similar references. The speedup is measured in the same run (with and without skipping), beside the paper's
(unlearning 1.22-1.32x; sampling 1.43 / 1.71 / 2.12x at skip 8 / 12 / 16). The embedded *shapes-3d* model is a tiny
Zero123 trained here on rendered objects, so every view has a ground-truth render to compare with."""


def _to_pil(img) -> Image.Image:
    arr = (img.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8) if hasattr(img, "permute") else img
    return Image.fromarray(arr).resize((TILE, TILE), Image.Resampling.NEAREST)


def gallery_items(result: dict, inputs: dict) -> list[tuple[Image.Image, str]]:
    """Rows: each input's original views, then its unlearned views; the first column is the input view."""
    items = []
    for label, pair in result["grids"].items():
        for which in ("original", "unlearned"):
            items.append((_to_pil(inputs[label]), f"{label}: {result['labels'][label]} (input view) · {which}"))
            for az, img in zip(result["view_azimuths"], pair[which], strict=True):
                items.append((_to_pil(img), f"{label} · {which} · Δazimuth {az:+.0f}°"))
    return items


def tile_pair(result_state: dict | None, index: int):
    """The (original, unlearned) pair for a clicked tile, for the ImageSlider; None for input-view tiles."""
    if not result_state:
        return None
    per_row = 1 + len(result_state["view_azimuths"])
    row, col = divmod(int(index), per_row)
    labels = list(result_state["grids"])
    if col == 0 or row // 2 >= len(labels):
        return None
    pair = result_state["grids"][labels[row // 2]]
    return (pair["original"][col - 1], pair["unlearned"][col - 1])


def metrics_frame(result: dict) -> pd.DataFrame:
    return pd.DataFrame(nv.summary_rows(result), columns=METRIC_COLUMNS)


def sampling_frame(result: dict) -> pd.DataFrame:
    def f(v, d=3):
        return "—" if v is None else f"{v:.{d}f}"

    rows = [[r["skip"], f(r["seconds_per_view"], 4), f(r["speedup"], 2) + "x", f"{r['paper_speedup']:.2f}x" if r["paper_speedup"] else "—",
             r["unet_evals"], f(r.get("ssim")), f(r.get("psnr"), 2), f(r.get("evaluator_fid"), 2)] for r in result["sampling"]]
    return pd.DataFrame(rows, columns=SAMPLING_COLUMNS)


def timings_markdown(result: dict) -> str:
    t = result["timings"]
    lines = [f"**Unlearning** with skipping: {t['unlearn_s_skipping']:.1f} s (trajectories {t['trajectory_s_skipping']:.1f} s, "
             f"{t['unet_evals_skipping']} UNet view-steps)."]
    if "unlearn_s_plain" in t:
        paper = f"; paper at this skip: {t['paper_speedup']:.2f}x" if t.get("paper_speedup") else ""
        lines.append(f"Without skipping, same seed: {t['unlearn_s_plain']:.1f} s (trajectories {t['trajectory_s_plain']:.1f} s, "
                     f"{t['unet_evals_plain']} view-steps). **Measured speedup {t['speedup']:.2f}x**{paper}.")
    else:
        lines.append("Tick “also run without skipping” to measure the speedup in the same run.")
    if result["lpips"] != "available":
        lines.append(f"LPIPS unavailable: {result['lpips']}.")
    if result["notes"]:
        lines.append("Input notes: " + "; ".join(result["notes"]) + ".")
    return "\n\n".join(lines)


LOSS_COLUMNS = {"step": "int64", "value": "float64", "curve": "object"}


def loss_frame(result: dict | None) -> pd.DataFrame:
    """The fake-score loss and the forget gap (mean |teacher's override view - G's forget view|, should fall) per
    step; the generator's surrogate loss is left out: its scale says nothing (it is a gradient carrier)."""
    rows = []
    for e in (result or {}).get("loss_log", []):
        rows.append({"step": e["step"], "value": e["fake_loss"], "curve": "fake-score loss"})
        if math.isfinite(e.get("forget_gap", float("nan"))):
            rows.append({"step": e["step"], "value": e["forget_gap"], "curve": "forget gap (teacher's override view vs G)"})
    return pd.DataFrame(rows, columns=list(LOSS_COLUMNS)).astype(LOSS_COLUMNS)


def run_tab(model, forget, forget_image, override, override_image, remain, target, polar, seed, skipping, n_ref, skip,
            dynamic, epochs, compare_plain, cancel: threading.Event | None = None, progress=None):
    """Validate, run :func:`novel_view.run`, and shape the outputs. Raises UnlearningError with a message to show."""
    settings = {"skipping": bool(skipping), "n_ref": int(n_ref), "skip": int(skip), "dynamic": bool(dynamic), "epochs": int(epochs),
                "target": target}
    result = nv.run(model, forget=forget_image or forget, override=override_image or override, remain=list(remain or []),
                    settings=settings, input_polar=float(polar), seed=int(seed), compare_plain=bool(compare_plain),
                    on_progress=progress, cancel=cancel)
    state = {"view_azimuths": result["view_azimuths"],
             "grids": {k: {w: [_to_pil(im) for im in v[w]] for w in ("original", "unlearned")} for k, v in result["grids"].items()}}
    return result, gallery_items(result, result["input_views"]), state


def gpu_duration(model, forget, forget_image, override, override_image, remain, target, polar, seed, skipping, n_ref, skip,
                 dynamic, epochs, compare_plain, *args, **kwargs) -> int:
    """ZeroGPU seconds for a Zero123 request: UNet image-steps of the trajectories (both variants when the plain
    run is compared), the training steps, the grids and the sampling table, at the profile's per-step cost."""
    from ..hosting.profile import get_profile
    from ..methods.skip3d import TUNED, training_azimuths

    z = get_profile().zerogpu
    try:
        views = len(training_azimuths(float(TUNED.get(str(model), {}).get("azimuth_step", 10.0)))) * (1 + len(remain or []))
        per_epoch = views * 32 * 2 * 1.5  # trajectories with guidance + the two networks' steps
        steps = int(epochs) * per_epoch * (2 if compare_plain else 1) + views * 32 * 2 * 4 + 16 * 32 * 2 * (1 + len(remain or []))
    except (TypeError, ValueError):
        return math.ceil(z.max_duration)
    return math.ceil(min(z.max_duration, z.margin * (z.overhead_s + steps * z.sample_step_s)))


@on_gpu(gpu_duration)
def run_outputs(model, forget, forget_image, override, override_image, remain, target, polar, seed, skipping, n_ref, skip, dynamic,
                epochs, compare_plain, progress=None):
    """The tab's outputs as plain CPU data (PIL images, data frames, markdown): what may cross a ZeroGPU boundary."""
    result, items, st = run_tab(model, forget, forget_image, override, override_image, remain, target, polar, seed, skipping,
                                n_ref, skip, dynamic, epochs, compare_plain, progress=progress)
    return ("Done: forget views should now look like the override; remain rows should match their originals.",
            items, tile_pair(st, 1), metrics_frame(result), sampling_frame(result), timings_markdown(result), loss_frame(result), st)


def build_tab() -> None:
    """Lay out and wire the Zero123 tab (call inside a ``gr.Tabs`` of a ``gr.Blocks``)."""
    with gr.Tab("Zero123: novel views"):
        gr.Markdown(INTRO)
        with gr.Row():
            model = gr.Dropdown([("shapes-3d (embedded tiny Zero123)", "shapes-3d"), *[(f"{h} (hub)", h) for h in nv.HUB_MODELS]],
                                value="shapes-3d", allow_custom_value=True, label="model (or a folder of Zero123's layout)", scale=2)
            seed = gr.Number(0, precision=0, label="seed", scale=1)
            polar = gr.Slider(r3d.POLAR_RANGE[0], r3d.POLAR_RANGE[1], value=75, step=5, label="input view polar angle (90 = level)",
                              scale=2)
        with gr.Row():
            forget = gr.Dropdown(OBJECTS, value=DEFAULT_FORGET, label="forget object")
            override = gr.Dropdown(OBJECTS, value=DEFAULT_OVERRIDE, label="override object (drawn instead)")
            remain = gr.Dropdown(OBJECTS, value=DEFAULT_REMAIN, multiselect=True, label="remain objects (must stay as they were)")
            target = gr.Radio(["override", "background"], value="override", label="forget views become")
        with gr.Accordion("or upload the input views (real Zero123: objects on a white background)", open=False), gr.Row():
            forget_image = gr.Image(type="filepath", label="forget view (replaces the forget object)", height=160)
            override_image = gr.Image(type="filepath", label="override view", height=160)
        demo = sorted((nv.MODELS["shapes-3d"] / "demo").glob("*.png"))
        if demo:
            gr.Examples([[str(p)] for p in demo], inputs=[forget_image], label="demo input views (64 px renders; the twin resizes them to 32)")
        with gr.Accordion("settings: timestep skipping and training", open=False), gr.Row():
            skipping = gr.Checkbox(True, label="dynamic timestep skipping")
            compare_plain = gr.Checkbox(True, label="also run without skipping (measures the speedup; doubles the time)")
            n_ref = gr.Dropdown([3, 4, 8], value=4, label="reference azimuths")
            skip = gr.Slider(0, 24, value=12, step=4, label="steps skipped (of 32)")
            dynamic = gr.Checkbox(False, label="near/far rule (16 within 20°, else 8)")
            epochs = gr.Number(4, precision=0, label="epochs")
        with gr.Row():
            run_btn = gr.Button("Run", variant="primary")
            cancel_btn = gr.Button("Cancel")
        status = gr.Markdown()
        gallery = gr.Gallery(label="views around the object: original row above unlearned row (first column: the input view); "
                             "click a tile to compare", columns=9, object_fit="contain", height="auto", preview=False,
                             allow_preview=False)
        with gr.Row():
            slider = gr.ImageSlider(label="original | unlearned", type="pil", max_height=320, scale=1)
            with gr.Column(scale=2):
                metrics = gr.Dataframe(label="views vs ground-truth renders (forget views should move towards the override)",
                                       headers=METRIC_COLUMNS, wrap=True)
                sampling = gr.Dataframe(label="sampling with skipping (unlearned model, every training view of every input)", headers=SAMPLING_COLUMNS)
        timings = gr.Markdown()
        losses = gr.LinePlot(loss_frame(None), x="step", y="value", color="curve", label="training curves", height=220)
        state = gr.State(None)

        def on_run(m, f, fi, o, oi, r, tg, p, sd, sk, nr, k, dy, ep, cp, progress=gr.Progress()):  # noqa: B008 (Gradio idiom)
            try:
                return run_outputs(m, f, fi, o, oi, r, tg, p, sd, sk, nr, k, dy, ep, cp,
                                   progress=lambda stage, frac: progress(frac, desc=stage))
            except UnlearningError as exc:
                gr.Warning(str(exc))
                return (f"**Could not run:** {exc}", gr.update(), None, gr.update(), gr.update(), gr.update(), gr.update(), None)

        event = run_btn.click(on_run, [model, forget, forget_image, override, override_image, remain, target, polar, seed, skipping,
                                        n_ref, skip, dynamic, epochs, compare_plain],
                              [status, gallery, slider, metrics, sampling, timings, losses, state],
                              api_name="zero123", concurrency_id="gpu")
        cancel_btn.click(None, None, None, cancels=[event])

        def on_select(st, evt: gr.SelectData):
            return tile_pair(st, evt.index)

        gallery.select(on_select, state, slider, api_visibility="private")
