"""Novel-view (Zero123) runs: load a model, unlearn an object with skip3d, compare views, measure speed.

One call, :func:`run`, does what the Zero123 tab and ``python -m unlearning zero123`` show:

1. the forget / override / remain input views (twin objects rendered at the input pose, or the user's images);
2. skip3d unlearning with timestep skipping, and (``compare_plain``) the same method without skipping on the
   same seed, timed in the same process, so the speedup is a measured ratio;
3. multi-view grids: original and unlearned model, same initial noise, azimuths around the object;
4. metrics against ground-truth renders (twin objects only; uploads have no ground truth): forget views vs the
   **override object's** renders (success = closer to the override) and vs the forget object's own; remain
   views vs their own renders; SSIM, PSNR, LPIPS (or why it is unavailable), evaluator shape accuracy and
   evaluator-FID of the pooled views;
5. sampling seconds per view at skip 0 / 8 / 12 / 16 (of 32) with the quality of each.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_dir
from .datasets import render3d as r3d
from .errors import InputError
from .hosting.profile import check_model_allowed, get_profile
from .methods.base import RunContext, build_settings
from .methods.skip3d import TUNED, Skip3DSettings, ViewTask, sample_views, training_azimuths, unlearn_views
from .metrics.fid import evaluator_fid
from .metrics.image import MetricUnavailable, lpips_per_pair, lpips_status, psnr_per_pair, ssim_per_pair
from .models.catalog import ASSETS, hub_availability, hub_snapshot, is_hub_id
from .models.zero123 import Zero123, load_image

MODELS = {"shapes-3d": ASSETS / "shapes-3d"}
HUB_MODELS = ("kxic/zero123-165000", "kxic/zero123-xl")
PAPER_SPEEDUPS = {"unlearning": {12: 1.22, 16: 1.32}, "sampling": {8: 1.43, 12: 1.71, 16: 2.12}}
VIEW_AZIMUTHS = [float(a) for a in range(0, 360, 45)]
SAMPLING_SKIPS = (0, 8, 12, 16)

_cache: dict[str, Zero123] = {}
_lock = threading.Lock()


def resolve(model: str) -> tuple[str, Path | str]:
    text = (model or "").strip()
    if not text:
        raise InputError(f"no Zero123 model given; pick {', '.join(MODELS)} or a folder / hub id of Zero123's layout.")
    check_model_allowed(text, list(MODELS), is_hub_id)  # a hosted profile: before anything looks at the disk
    if text in MODELS:
        if not (MODELS[text] / "model_index.json").is_file():
            raise InputError(f"the embedded model '{text}' is missing from {MODELS[text]}; retrain it with "
                             "`python -m unlearning.embedded.shapes3d train`.")
        return text, MODELS[text]
    path = Path(text).expanduser()
    if get_profile().allow_local_models and path.exists():
        index = path / "model_index.json"
        if not index.is_file():
            raise InputError(f"'{text}' has no model_index.json: point at a Zero123 folder (vae, image_encoder, unet, cc_projection, ...).")
        meta = json.loads(index.read_text())
        if "cc_projection" not in meta:
            raise InputError(f"'{text}' holds a {meta.get('_class_name', 'unknown')} model, not Zero123 (no cc_projection).")
        return str(path.resolve()), path.resolve()
    if text.count("/") == 1 and is_hub_id(text):
        snapshot = hub_snapshot(text)
        if snapshot is not None:  # the cached snapshot loads like a folder, without the network
            return text, snapshot
        ok, why = hub_availability(text)
        if not ok:
            raise InputError(f"'{text}' is {why}")
        return text, text
    raise InputError(f"unknown Zero123 model '{text}': not {', '.join(MODELS)}, not a folder, not a hub id (owner/name).")


def load(model: str) -> tuple[str, Zero123]:
    """(model id, the cached pipeline). fp16 on CUDA, fp32 on CPU; the cached weights are never changed."""
    model_id, where = resolve(model)
    with _lock:
        if model_id not in _cache:
            cuda = torch.cuda.is_available()
            pipe = Zero123.from_pretrained(where, dtype=torch.float16 if cuda else torch.float32)
            if cuda:
                for m in (pipe.vae, pipe.image_encoder, pipe.unet, pipe.cc_projection):
                    m.to("cuda")
            _cache[model_id] = pipe
        return model_id, _cache[model_id]


def object_from_name(name: str) -> r3d.Object3D:
    """"blue pyramid" -> Object3D; a clear error listing the choices otherwise."""
    words = (name or "").strip().lower().split()
    if len(words) != 2:
        raise InputError(f"'{name}' is not an object of the twin: write '<colour> <shape>', e.g. 'blue pyramid'; colours "
                         f"{', '.join(r3d.COLOURS)}, shapes {', '.join(r3d.SHAPES)}.")
    try:
        return r3d.Object3D(words[1], words[0])
    except ValueError as exc:
        raise InputError(f"'{name}': {exc}.") from None


@dataclass
class Inputs:
    forget: torch.Tensor
    override: torch.Tensor
    remain: list[torch.Tensor]
    objects: dict = field(default_factory=dict)  # role -> Object3D (twin objects only: ground truth exists)
    notes: list[str] = field(default_factory=list)


def make_inputs(model: Zero123, *, forget, override, remain, input_polar: float, target: str = "override") -> Inputs:
    """Each of forget / override / remain items is a twin object name ("blue pyramid") or an image (path, PIL, array)."""
    size = model.image_size
    lo, hi = r3d.POLAR_RANGE
    if not lo <= input_polar <= hi:
        raise InputError(f"input polar angle {input_polar:g} is outside the supported {lo:g}-{hi:g} degrees (90 = level with the object).")
    objects: dict = {}
    notes: list[str] = []

    def one(item, role: str):
        if item is None or (isinstance(item, str) and not item.strip()):
            raise InputError(f"no {role} object given: pick an object or upload an image.")
        if isinstance(item, str) and not Path(item).exists():
            obj = object_from_name(item)
            objects.setdefault(role, []).append(obj)
            return torch.from_numpy(r3d.render(obj, input_polar, 0.0, size=size)).permute(2, 0, 1)[None].float() / 255.0
        image, why = load_image(item, size)
        notes.extend(f"{role} image: {w}" for w in why)
        return image

    f = one(forget, "forget")
    if target == "background":
        o = torch.ones_like(f)
        notes.append("target 'background': forget views are steered to a blank white view")
    else:
        o = one(override, "override")
        if torch.equal(f, o):
            raise InputError("the override is the same as the forget object: pick a different override (e.g. a cube for a pyramid).")
    remain = list(remain or [])
    if not remain:
        raise InputError("the remain set is empty: pick at least one object whose views must stay as they were.")
    rs = [one(item, "remain") for item in remain]
    if any(torch.equal(f, r) for r in rs):
        raise InputError("the forget object is also in the remain set; remove it from one of them.")
    return Inputs(f, o, rs, objects, notes)


def ground_truth(obj: r3d.Object3D, polar: float, azimuths, size: int) -> torch.Tensor:
    views = np.stack([r3d.render(obj, polar, a, size=size) for a in azimuths])
    return torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255.0


def _pair_metrics(gen: torch.Tensor, ref: torch.Tensor) -> dict:
    out = {"ssim": float(np.mean(ssim_per_pair(gen, ref))), "psnr": float(np.mean(psnr_per_pair(gen, ref)))}
    try:
        out["lpips"] = float(np.mean(lpips_per_pair(gen, ref)))
    except MetricUnavailable:
        out["lpips"] = None
    return out


def load_evaluator(model_id: str):
    from .models.evaluator import ImageClassifier

    folder = MODELS.get(model_id) or Path(model_id)
    if not (folder / "evaluator" / "config.json").is_file():  # real Zero123: no evaluator, no evaluator scores
        return None
    return ImageClassifier.from_pretrained(folder / "evaluator").float().eval()


def _compare(pipe: Zero123, unet, inputs: Inputs, s: Skip3DSettings, *, seed: int, input_polar: float, view_azimuths,
             evaluator) -> dict:
    """Multi-view grids of the original and ``unet`` (same noise) and their metrics against ground truth."""
    # multi-view grids, original vs unlearned, same noise (plain trajectories: no skipping at display time)
    size = pipe.image_size
    rows = [("forget", inputs.forget)] + [(f"remain {i + 1}", r) for i, r in enumerate(inputs.remain)]
    grids, labels = {}, {}
    for label, image in rows:
        orig, _ = sample_views(pipe, pipe.unet, image, view_azimuths, steps=s.steps, guidance=s.guidance, seed=seed)
        new, _ = sample_views(pipe, unet, image, view_azimuths, steps=s.steps, guidance=s.guidance, seed=seed)
        grids[label] = {"original": orig, "unlearned": new}
    objs = inputs.objects
    for label, _ in rows:
        role = "forget" if label == "forget" else "remain"
        labels[label] = objs[role][0 if role == "forget" else int(label.split()[1]) - 1].name if role in objs else "uploaded image"

    metrics = []
    has_truth = "forget" in objs and "remain" in objs and len(objs["remain"]) == len(inputs.remain)
    if has_truth:
        truth = {"forget": ground_truth(objs["forget"][0], input_polar, view_azimuths, size)}
        for i, o in enumerate(objs["remain"]):
            truth[f"remain {i + 1}"] = ground_truth(o, input_polar, view_azimuths, size)
        override_truth = ground_truth(objs["override"][0], input_polar, view_azimuths, size) if "override" in objs else None
        for label, _ in rows:
            for which in ("original", "unlearned"):
                views = grids[label][which]
                if label == "forget":
                    if override_truth is not None:
                        metrics.append({"views": label, "model": which, "against": f"override ({objs['override'][0].name})",
                                        **_pair_metrics(views, override_truth), **_shape_rate(evaluator, views, objs["override"][0])})
                    metrics.append({"views": label, "model": which, "against": f"own ({objs['forget'][0].name})",
                                    **_pair_metrics(views, truth[label]), **_shape_rate(evaluator, views, objs["forget"][0])})
                else:
                    obj = objs["remain"][int(label.split()[1]) - 1]
                    metrics.append({"views": label, "model": which, "against": f"own ({obj.name})", **_pair_metrics(views, truth[label]),
                                    **_shape_rate(evaluator, views, obj)})
    else:
        for label, _ in rows:
            metrics.append({"views": label, "model": "unlearned", "against": "original model's views (no ground truth for uploads)",
                            **_pair_metrics(grids[label]["unlearned"], grids[label]["original"])})

    return {"grids": grids, "labels": labels, "metrics": metrics, "rows": rows, "evaluator": evaluator, "has_truth": has_truth}


def compare_views(result: dict, unet) -> dict:
    """The same comparison for another unlearned UNet of a finished run (e.g. the run without skipping)."""
    ctx = result["context"]
    return _compare(ctx["pipe"], unet, ctx["inputs"], ctx["settings"], seed=result["seed"], input_polar=result["input_polar"],
                    view_azimuths=result["view_azimuths"], evaluator=ctx["evaluator"])


def run(model: str, *, forget, override, remain, settings: dict | None = None, input_polar: float = 75.0, seed: int = 0,
        compare_plain: bool = True, sampling_skips=SAMPLING_SKIPS, view_azimuths=VIEW_AZIMUTHS,
        on_progress=None, cancel: threading.Event | None = None) -> dict:
    """The whole comparison (see the module docstring). ``on_progress(stage, fraction)`` is optional."""
    model_id, pipe = load(model)
    s = build_settings(Skip3DSettings, TUNED.get(model_id, {}), settings or {})
    inputs = make_inputs(pipe, forget=forget, override=override, remain=remain, input_polar=input_polar, target=s.target)
    progress = on_progress or (lambda stage, frac: None)
    task = ViewTask(inputs.forget, inputs.override, inputs.remain, input_polar=input_polar, seed=seed)
    runs = {}
    variants = [("skipping", True)] + ([("plain", False)] if compare_plain and s.skipping else [])
    for i, (name, skipping) in enumerate(variants):
        def report(step_report, name=name, i=i):
            progress(f"unlearning ({name})", (i + step_report.step / step_report.total) / (len(variants) + 1))

        vs = build_settings(Skip3DSettings, TUNED.get(model_id, {}), {**(settings or {}), "skipping": skipping})
        runs[name] = unlearn_views(pipe, task, vs, RunContext(on_step=report, cancel=cancel))
    main = runs["skipping"]
    progress("comparing views", len(variants) / (len(variants) + 1))

    compared = _compare(pipe, main.unet, inputs, s, seed=seed, input_polar=input_polar, view_azimuths=view_azimuths,
                        evaluator=load_evaluator(model_id))
    grids, labels, metrics, rows = compared["grids"], compared["labels"], compared["metrics"], compared["rows"]
    objs, evaluator, has_truth, size = inputs.objects, compared["evaluator"], compared["has_truth"], pipe.image_size

    # sampling speed and quality at each skip, on the unlearned model, all inputs, the training grid of azimuths
    progress("timing sampling", len(variants) / (len(variants) + 0.5))
    sampling = []
    grid_az = training_azimuths(s.azimuth_step)  # the views the method trains on
    targets = None
    if has_truth:
        target_objs = [objs["override"][0] if "override" in objs else None] + objs["remain"]
        targets = [ground_truth(o, input_polar, grid_az, size) if o is not None else torch.ones(len(grid_az), 3, size, size)
                   for o in target_objs]
    for skip in sampling_skips:
        if skip >= s.steps:
            continue
        seconds, evals, pooled = 0.0, 0, []
        for image in [inputs.forget, *inputs.remain]:
            views, info = sample_views(pipe, main.unet, image, grid_az, steps=s.steps, guidance=s.guidance, seed=seed, skip=skip,
                                       n_ref=s.n_ref)
            seconds += info["seconds"]
            evals += info["unet_evals"]
            pooled.append(views)
        row = {"skip": skip, "seconds_per_view": seconds / (len(pooled) * len(grid_az)), "unet_evals": evals}
        if targets is not None:
            gen, ref = torch.cat(pooled), torch.cat(targets)
            row.update(_pair_metrics(gen, ref))
            if evaluator is not None:
                row["evaluator_fid"] = evaluator_fid(evaluator, ref, gen)
        sampling.append(row)
    base = next((r for r in sampling if r["skip"] == 0), None)
    for row in sampling:
        row["speedup"] = base["seconds_per_view"] / row["seconds_per_view"] if base else None
        row["paper_speedup"] = PAPER_SPEEDUPS["sampling"].get(row["skip"])

    timings = {"unlearn_s_skipping": main.timings["unlearn_s"], "trajectory_s_skipping": main.timings["trajectory_s"],
               "unet_evals_skipping": main.timings["unet_evals"]}
    if "plain" in runs:
        timings.update(unlearn_s_plain=runs["plain"].timings["unlearn_s"], trajectory_s_plain=runs["plain"].timings["trajectory_s"],
                       unet_evals_plain=runs["plain"].timings["unet_evals"],
                       speedup=runs["plain"].timings["unlearn_s"] / main.timings["unlearn_s"])
        timings["paper_speedup"] = PAPER_SPEEDUPS["unlearning"].get(s.skip)
    progress("done", 1.0)
    return {
        "model": model_id, "settings": main.settings, "seed": seed, "input_polar": input_polar, "view_azimuths": list(view_azimuths),
        "labels": labels, "grids": grids, "input_views": {label: image[0] for label, image in rows}, "metrics": metrics, "sampling": sampling, "timings": timings, "notes": inputs.notes,
        "lpips": lpips_status().reason if not lpips_status().available else "available", "loss_log": main.log, "unet": main.unet,
        "plain_unet": runs["plain"].unet if "plain" in runs else None,
        "context": {"pipe": pipe, "inputs": inputs, "settings": s, "evaluator": evaluator},
    }


def _shape_rate(evaluator, views: torch.Tensor, obj: r3d.Object3D) -> dict:
    """Share of views the evaluator classifies as ``obj``'s shape."""
    if evaluator is None:
        return {}
    with torch.no_grad():
        pred = evaluator.head_logits(views)["shape"].argmax(1)
    return {"shape_rate": float((pred == r3d.SHAPES.index(obj.shape)).float().mean())}


def summary_rows(result: dict) -> list[list]:
    """Metrics as table rows for the UI / CLI."""
    def f(v, digits=3):
        return "—" if v is None else f"{v:.{digits}f}"

    return [[m["views"], m["model"], m["against"], f(m["ssim"]), f(m["psnr"], 2), f(m.get("lpips")) if m.get("lpips") is not None
             else "unavailable", f(m.get("shape_rate"), 2) if "shape_rate" in m else "—"] for m in result["metrics"]]



def grid_image(result: dict):
    """One PNG-able image: per input, the input view then its views; original row above unlearned row."""
    from PIL import Image

    rows = []
    for label, pair in result["grids"].items():
        inp = result["input_views"][label]
        for which in ("original", "unlearned"):
            rows.append(torch.cat([inp, *pair[which]], 2))
    grid = torch.cat(rows, 1)
    return Image.fromarray((grid.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8))


def write_result(result: dict, out: Path, *, save_model: bool = False) -> Path:
    """result.json + views.png (+ model/ in Zero123's layout with the unlearned UNet), written to a temp folder
    beside ``out`` and renamed into place, so a failed write leaves nothing half-done."""
    with atomic_dir(out) as tmp:  # refuses a non-empty folder
        keep = {k: result[k] for k in ("model", "settings", "seed", "input_polar", "view_azimuths", "labels", "metrics", "sampling",
                                       "timings", "notes", "lpips", "loss_log")}
        (tmp / "result.json").write_text(json.dumps(keep, indent=2) + "\n")
        grid_image(result).save(tmp / "views.png")
        if save_model:
            _, pipe = load(result["model"])
            edited = Zero123(vae=pipe.vae, image_encoder=pipe.image_encoder, feature_extractor=pipe.feature_extractor,
                             unet=result["unet"], scheduler=pipe.scheduler, cc_projection=pipe.cc_projection)
            edited.save_pretrained(tmp / "model", extra_index={"_unlearning_edit": "skip3d"})
    return out
