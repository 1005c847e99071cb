"""unlearning-lab: the Gradio app. Layout and wiring only; the work is in ``unlearning.ui``.

    python app.py [--share] [--server-name 0.0.0.0] [--port 7860]
"""

from __future__ import annotations

import argparse
import logging
import threading
import uuid
from pathlib import Path

import gradio as gr

from unlearning.devices import DEVICE_CHOICES
from unlearning.hosting.profile import get_profile, install_log_redaction, use_profile
from unlearning.hosting.zerogpu import on_gpu, request_duration, zero_gpu_active
from unlearning.methods import METHODS, methods_for
from unlearning.threads import configure_threads
from unlearning.ui import attack as ui_attack
from unlearning.ui import benchmark as ui_benchmark
from unlearning.ui import lm as ui_lm
from unlearning.ui import relearn as ui_relearn
from unlearning.ui import unlearn as ui
from unlearning.ui import zero123 as ui_zero123
from unlearning.ui.report import METRIC_HEADERS
from unlearning.ui.runs import build_runs_tab, viewer_of

DEFAULT_MODEL = "digits"
DEFAULT_METHOD = "esd"
DEFAULT_FORGET = "3"
# Tiny images are upscaled by the browser: keep the pixels crisp instead of blurring them.
CSS = "img { image-rendering: pixelated; }"

# The GPU work of one request. On a ZeroGPU Space this is `spaces.GPU(duration=<estimate from the
# request>)`; elsewhere (no `spaces` package) it is ui.run_stream itself. Decorated at import, as ZeroGPU requires.
run_stream = on_gpu(request_duration)(ui.run_stream)
zero123_stream = on_gpu(ui_zero123.gpu_duration)(ui.run_stream)  # the Zero123 tab's runs: skip3d's own duration estimate


def build_demo() -> gr.Blocks:
    profile = get_profile()
    models = ui.model_choices()
    model0 = DEFAULT_MODEL if any(v == DEFAULT_MODEL for _, v in models) else models[0][1]
    concepts = ui.concept_choices(model0)
    methods = ui.method_choices()
    if profile.default_method and not any(v == profile.default_method for _, v in methods):
        from unlearning.errors import InputError

        raise InputError(f"{profile.source or 'profile'}: 'default_method' is '{profile.default_method}', which is not an "
                         f"offered method ({', '.join(v for _, v in methods)}).")
    wanted = profile.default_method or DEFAULT_METHOD  # a hosted GPU profile opens on a closed-form method
    view0 = ui.form_view(model0)  # what applies to the first model: the rest of the form is hidden until it applies
    method0 = view0.method(wanted) or methods[0][1]
    controls = ui.setting_controls(model0)
    steps0, guidance0 = ui.sampling_defaults(model0)

    with gr.Blocks(title="unlearning-lab") as demo:
        gr.Markdown("# unlearning-lab\n" + ui.INTRO)
        gr.Markdown(profile.describe(), elem_id="profile-line")
        # who is asking: an id kept in this browser's localStorage (hosted profiles show each visitor their own runs);
        # copied into a State on load, so the API (gradio_client) does not see it as a parameter
        browser_store = gr.BrowserState(None, storage_key="unlearning-lab-browser")
        viewer = gr.State(None)
        pairs_state = gr.State({})
        folder_state = gr.State(None)  # the last finished run's folder (for the model export)
        with gr.Tabs():
            with gr.Tab("Unlearn"):  # noqa: SIM117 (Gradio layout reads best nested)
                with gr.Row():
                    # ---- left: what to do
                    with gr.Column(scale=1, min_width=320):
                        model = gr.Dropdown(models, value=model0, label="Model", allow_custom_value=True,
                                            info="an embedded twin, a hub id (owner/name) or a local folder")
                        model_info = gr.Markdown(ui.model_markdown(model0))
                        forget = gr.Dropdown(concepts, value=DEFAULT_FORGET if DEFAULT_FORGET in concepts else concepts[:1],
                                             multiselect=True, allow_custom_value=True, label="Concept(s) to forget",
                                             info="pick or type (Enter adds one); 'star -> circle' maps a concept to an anchor")
                        anchor = gr.Dropdown([ui.ERASE, *concepts], value=ui.ERASE, label="Anchor (draw this instead)",
                                             allow_custom_value=True, info=ui.anchor_info(), visible=ui.uses_anchor(method0))
                        preserve = gr.Dropdown(concepts, value=[], multiselect=True, allow_custom_value=True,
                                               label="Concepts to preserve (optional)",
                                               info="empty: every other concept of the same kind (other shapes, other digits)")
                        own_prompts = gr.Textbox("", lines=2, label="Your own prompts (optional)",
                                                 placeholder="one per line, e.g. a red star on a white background",
                                                 info="shown side by side with the same seeds; not scored",
                                                 visible="prompts" in view0.options)
                        method = gr.Dropdown(view0.methods, value=method0, label="Method")
                        method_info = gr.Markdown(ui.method_markdown(method0))
                        # above the settings accordions, so the button is on screen when the page opens
                        with gr.Row():
                            run_btn = gr.Button("Unlearn", variant="primary")
                            cancel_btn = gr.Button("Cancel", variant="stop")
                        setting_inputs: list[gr.components.Component] = []
                        groups = {}
                        with gr.Accordion("Method settings (paper defaults; values tuned for the twin)", open=False):
                            for spec in methods_for(ui.TAB_FAMILIES):
                                with gr.Group(visible=spec.name == method0) as group:
                                    for c in (c for c in controls if c.method == spec.name):
                                        setting_inputs.append(ui.setting_component(c, view0.family))
                                groups[spec.name] = group
                        with gr.Accordion("Comparison and device", open=False):
                            seed = gr.Number(0, label="seed", precision=0, info="first seed; the same seeds feed both models")
                            forget_samples = gr.Number(16, label="samples of the forgotten concept", precision=0)
                            retain_samples = gr.Number(4, label="samples per retained concept", precision=0)
                            # pre-filled with the model's defaults: Gradio 6 shows and sends an empty Number as 0
                            steps = gr.Number(steps0, label="sampling steps", precision=0,
                                              info=f"the model's default is {steps0}; at most {profile.limits.max_inference_steps}")
                            guidance = gr.Number(guidance0, label="guidance scale", visible="guidance" in view0.options,
                                                 info=f"classifier-free guidance; the model's default is {guidance0:g}")
                            sampler = gr.Dropdown([("DDIM (eta 0)", "ddim"), ("DPM-Solver++ (multistep)", "dpm-solver")],
                                                  value="ddim", label="sampler", visible="sampler" in view0.options,
                                                  info="diffusers scheduler for the comparison images, built from the model's own config")
                            device = gr.Dropdown(list(DEVICE_CHOICES), value="auto", label="device",
                                                 info="auto = CUDA when present, else CPU")

                    # ---- right: what happened
                    with gr.Column(scale=2):
                        status = gr.Markdown("Press **Unlearn** to start. On the embedded digits model a run takes "
                                             "well under a minute on a laptop CPU.")
                        loss_plot = gr.LinePlot(None, x="step", y="loss", color="series", title="Loss during unlearning",
                                                height=220, elem_id="loss-plot")
                        gr.Markdown("**Forgotten concept**: each pair of rows is original (top) and unlearned (bottom), "
                                    "same seed per column.")
                        forget_grid = gr.Image(label="forgotten concept: original above, unlearned below", format="png",
                                               type="pil", interactive=False)
                        gr.Markdown("**Retained concepts**: one column per concept; pairs of rows per seed, "
                                    "original above unlearned.")
                        retain_grid = gr.Image(label="retained concepts: original above, unlearned below", format="png",
                                               type="pil", interactive=False)
                        # shown by a run that has prompts of the user's own (text-to-image models)
                        prompt_grid = gr.Image(label="your prompts: original above, unlearned below", format="png",
                                               type="pil", interactive=False, visible=False)
                        metrics = gr.Dataframe(headers=METRIC_HEADERS, label="Metrics (computed on raw images)", wrap=True,
                                               interactive=False,
                                               column_widths=["17%", "14%", "14%", "33%", "6%", "16%"], max_height=1400)
                        with gr.Row():
                            pair = gr.Dropdown([], label="Look at one pair", info="drag the slider: original | unlearned")
                            slider = gr.ImageSlider(label="original | unlearned", format="png", type="pil", max_height=320)
                        download = gr.File(label="Download this run (run card, metrics, images, edit.safetensors)")
                        with gr.Row():
                            export_btn = gr.Button("Export the unlearned model (full diffusers folder)", scale=1)
                            export_status = gr.Markdown("")
                        export_file = gr.File(label="Unlearned model (zip of the diffusers folder)")
                        with gr.Row():
                            relearn_btn = gr.Button("Relearning test: fine-tune the unlearned model as a downstream user would", scale=1)
                            relearn_out = gr.Markdown("Does the concept come back when a user fine-tunes the unlearned model "
                                                      "on other concepts? (ResAlign's test; paper settings, twin-tuned where measured)")
                        relearn_shots = gr.Number(0, label="Images of the forgotten concept the fine-tuner also has", precision=0,
                                                  minimum=0, maximum=10_000,
                                                  info="0 = benign fine-tune (ResAlign's test); k > 0 = few-shot relearning, a stronger attack")
                        relearn_table = gr.Markdown("")
                        relearn_history = gr.State([])
                        with gr.Accordion("Attack: does the concept come back under an adversarial prompt?", open=True):
                            ui_attack.build_panel(folder_state)

            with gr.Tab("Scaling: many concepts at once"):
                gr.Markdown(ui.SCALING_INTRO)
                stored = ui.scaling_stored()
                with gr.Row():
                    scaling_forget = gr.LinePlot(ui.scaling_frame(stored, "forget rate"), x="concepts", y="value", color="method",
                                                 title="Forget rate of the erased concepts (lower is better)", height=260)
                    scaling_retain = gr.LinePlot(ui.scaling_frame(stored, "retain accuracy"), x="concepts", y="value",
                                                 color="method", title="Retain accuracy of preserved concepts (higher is better)",
                                                 height=260)
                scaling_table = gr.Markdown(ui.scaling_markdown(stored))
                with gr.Row():
                    scaling_counts = gr.Textbox(ui.scaling_default_counts(), label="numbers of concepts to erase", scale=2)
                    scaling_methods = gr.CheckboxGroup([m for m in ui.SCALING_METHODS if m in dict(methods).values()] or ["uce"],
                                                       value=["speed", "uce", "scapre"], label="methods", scale=2,
                                                       info="MACE and ESD-x train (minutes on a CPU); ESD-x runs up to 16 concepts")
                    scaling_btn = gr.Button("Run the scaling benchmark", scale=1)

            ui_zero123.build_tab(zero123_stream, viewer, zero_gpu_active())  # novel-view unlearning (unlearning/ui/zero123.py)

            ui_lm.build_tab(viewer)  # language models: RMU / gradient ascent, with or without UAM (unlearning/ui/lm.py)

            ui_benchmark.build_tab()  # every method x every concept (unlearning/ui/benchmark.py)

            build_runs_tab(viewer)  # earlier runs: reopen one, compare two (unlearning/ui/runs.py)

            with gr.Tab("Methods and metrics"):
                gr.Markdown(methods_markdown())

        # ---- wiring
        def on_model(m, current_method):
            names = ui.concept_choices(m)
            st, g = ui.sampling_defaults(m)
            view = ui.form_view(m)  # what applies to this model; the rest is hidden
            tuned = ui.setting_controls(m)  # same order as `controls`; values tuned for this model where known
            prompts = "prompts" in view.options
            return (gr.update(choices=names, value=names[:1]), gr.update(choices=[ui.ERASE, *names], value=ui.ERASE),
                    gr.update(choices=names, value=[]), ui.model_markdown(m),
                    gr.update(value=st, info=f"the model's default is {st}; at most {profile.limits.max_inference_steps}"),
                    gr.update(value=g, info=f"classifier-free guidance; the model's default is {g:g}",
                              visible="guidance" in view.options),
                    gr.update(visible="sampler" in view.options),
                    gr.update(visible=True) if prompts else gr.update(visible=False, value=""),
                    gr.update(choices=view.methods, value=view.method(current_method)),
                    *(gr.update(value=c.value, info=c.info, visible=c.applies_to(view.family)) for c in tuned))

        model.change(on_model, [model, method],
                     [forget, anchor, preserve, model_info, steps, guidance, sampler, own_prompts, method, *setting_inputs],
                     api_visibility="private")

        def on_method(name):
            return [ui.method_markdown(name), gr.update(visible=ui.uses_anchor(name))] + [gr.update(visible=n == name) for n in groups]

        method.change(on_method, method, [method_info, anchor, *groups.values()], api_visibility="private")

        # /unlearn in the API ("Use via API", gradio_client): the form's fields by name, then every method's settings
        # as <method>_<setting> (e.g. esd_iterations); only the chosen method's are used. The browser id is a State.
        run_inputs = [model, forget, anchor, method, seed, forget_samples, retain_samples, steps, guidance, device, preserve,
                      sampler, own_prompts, viewer]
        setting_kwargs = {c.api_name: comp for c, comp in zip(controls, setting_inputs, strict=True)}
        run_outputs = [status, loss_plot, forget_grid, retain_grid, metrics, pairs_state, pair, slider, download, prompt_grid,
                       folder_state]

        def on_run(model, forget, anchor, method, seed, forget_samples, retain_samples, sampling_steps, guidance_scale, device,
                   preserve, sampler, own_prompts, viewer_id, request: gr.Request,
                   progress=gr.Progress(), **settings):  # noqa: B008 (Gradio idiom)
            cancel = threading.Event()
            owner = viewer_of(viewer_id, request)
            try:
                chosen = {c.name: settings[c.api_name] for c in controls if c.method == method and c.api_name in settings}
                run_request = ui.parse_request(model, forget, anchor, method, seed, forget_samples, retain_samples, sampling_steps,
                                               guidance_scale, device, chosen, preserve=preserve, sampler=sampler,
                                               prompts=own_prompts)
            except Exception as exc:  # bad numbers from the form
                yield {status: f"**Could not run:** {exc}"}
                return
            # the own-prompt grid is shown only for a run that has prompts of the user's own
            yield {prompt_grid: gr.update(visible=bool(run_request.prompts), value=None)}
            try:
                # ZeroGPU runs the function in a worker process: hand it only picklable CPU values
                stream = (run_stream(run_request, progress=progress, owner=owner) if zero_gpu_active()
                          else run_stream(run_request, cancel=cancel, progress=progress, owner=owner))
                for out in stream:
                    update = {}
                    if out.loss is not None:  # no curve (yet, or ever: a closed form): the plot is hidden, not an empty box
                        update[loss_plot] = (gr.update(value=None, visible=False) if out.loss.empty
                                             else gr.update(value=out.loss, visible=True))
                    for comp, value in ((status, out.status), (forget_grid, out.forget_grid),
                                        (retain_grid, out.retain_grid), (metrics, out.metrics), (download, out.download),
                                        (prompt_grid, out.prompt_grid)):
                        if value is not None:
                            update[comp] = value
                    if out.download is not None:
                        update[folder_state] = str(Path(out.download).with_suffix(""))
                    if out.pairs is not None:
                        update[pairs_state] = out.pairs
                        first = next(iter(out.pairs), None)
                        update[pair] = gr.update(choices=list(out.pairs), value=first)
                        update[slider] = out.pairs[first] if first else None
                    yield update
            finally:
                cancel.set()  # a cancelled or closed event stops the method at its next step

        relearn_btn.click(ui_relearn.relearn_with_table, [folder_state, relearn_history, relearn_shots], [relearn_out, relearn_history, relearn_table],
                          concurrency_id="gpu", api_visibility="private")
        export_btn.click(ui.export_model, folder_state, [export_file, export_status], api_visibility="private")
        scaling_btn.click(ui.scaling_stream, [scaling_counts, scaling_methods],
                          [scaling_forget, scaling_retain, scaling_table], concurrency_id="gpu", api_visibility="private")

        run_event = run_btn.click(on_run, run_inputs, run_outputs, inputs_kwargs=setting_kwargs, api_name="unlearn",
                                  concurrency_id="gpu")

        def on_load(stored):
            bid = stored or uuid.uuid4().hex
            return bid, bid

        demo.load(on_load, browser_store, [browser_store, viewer], api_visibility="private")
        cancel_btn.click(None, None, None, cancels=[run_event])
        # .input, not .change: the run itself sets the first pair; a second identical image would race in the cache
        pair.input(lambda key, pairs: pairs.get(key) if key else None, [pair, pairs_state], slider, api_visibility="private")
    return demo


def methods_markdown() -> str:
    lines = ["## Methods", ""]
    for spec in METHODS.values():
        lines.append(f"**{spec.label}** (`{spec.name}`): {spec.summary}  \n*{spec.citation}*\n")
    lines += [
        "## Metrics",
        "",
        "- **forget rate**: share of samples of the forgotten concept that the evaluator still classifies as it "
        "(lower is better after unlearning), with a 95% Wilson interval over the sample count.",
        "- **PUL**: percentage of unlearning, 100 × (before − after) / before.",
        "- **retain accuracy**: share of samples of the other concepts that the evaluator classifies correctly.",
        "- **SSIM / PSNR**: unlearned vs original image on the retained concepts (same seed): how intact they stayed.",
        "- **LPIPS**: needs AlexNet's pretrained weights; shown as *unavailable* (with how to enable it) when they "
        "are not cached. Never computed with random weights.",
        "- **CLIP score** (open-vocabulary models such as real Stable Diffusion, where CLIP weights are cached): how well "
        "the retained prompts' images match their prompts, original vs unlearned; also what recognises concepts there.",
        "- **evaluator-FID**: Fréchet distance between generated and real images on the *evaluator's* features "
        "(not Inception FID; biased upward at small sample counts — compare the two columns, not to published FIDs).",
        "- **timings**: measured wall-clock of the unlearning and seconds per sampled image for each model.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="unlearning-lab app")
    parser.add_argument("--share", action="store_true", help="create a public Gradio link")
    parser.add_argument("--server-name", default=None, help="e.g. 0.0.0.0 to listen on all interfaces")
    parser.add_argument("--port", type=int, default=None, help="default 7860 (or GRADIO_SERVER_PORT)")
    parser.add_argument("--profile", default=None, metavar="FILE",
                        help="a hosted profile (YAML) to enforce, e.g. spaces_config.yaml; 'none': the local profile. "
                        "Default: local, except on a Hugging Face Space (SPACE_ID set) or with $UNLEARNING_CONFIG")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: $UNLEARNING_THREADS, $OMP_NUM_THREADS, else one per core); "
                        "give 1 when something else runs torch on the same cores")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    configure_threads(explicit=args.threads)
    install_log_redaction()  # the Hugging Face token never reaches a log
    use_profile(args.profile)
    profile = get_profile()
    print(profile.describe().replace("**", "").replace("`", ""), flush=True)
    demo = build_demo()
    demo.queue(max_size=profile.queue.max_size, default_concurrency_limit=profile.queue.concurrency)
    # Gradio refuses larger uploads itself; unlearning.images.load_upload checks pixels, format and mode
    demo.launch(share=args.share, server_name=args.server_name, server_port=args.port, css=CSS,
                max_file_size=profile.limits.max_upload_bytes)


if __name__ == "__main__":
    main()
