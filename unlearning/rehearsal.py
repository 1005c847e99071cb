"""Full-size rehearsal: a method on a real architecture, with random weights, measured without a GPU.

    python -m unlearning rehearse --arch sd15 --method esd [--resolution 256] [--dtype bfloat16] [--iterations 2]

1. builds the architecture from its published configuration (``assets/architectures/<arch>.json``; seeded
   random weights, a generated tokenizer vocabulary of the real size) and saves it as a diffusers folder
   (kept in the cache, :func:`unlearning.models.architectures.save_folder`);
2. loads that folder back through ``load_adapter``, exactly the path a hub snapshot takes;
3. runs the method: closed-form ones in full, iterative ones for ``iterations`` steps, with the memory
   features on (the frozen base in the half dtype, autocast in that dtype, gradient checkpointing);
4. runs one comparison batch at the resolution: the original and the unlearned model from the same seeds,
   scored by the comparison engine, whose CLIP path runs on a CLIP ViT-L/14 of the real size built the same
   way (random weights: it *runs*, its numbers are dropped), and by NudeNet (real weights, shipped);
5. writes ``rehearsal.json``: sizes, timings, peak resident memory, the memory parts of
   :mod:`unlearning.memory` and the GPU memory they project at the user's resolution.

What a rehearsal draws is noise and is never shown as a result. What it shows is that the code runs at
the real sizes (text widths 768 / 1024 / 2048, many heads, 64x64 and 128x128 latents, two text encoders),
how long a step takes on this machine and how much memory each part needs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .atomic import write_text_atomic
from .errors import InputError
from .memory import FORMULA, MemoryProbe, project, storages

FORGET, RETAIN = "nudity", "a photo of a dog"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HALF_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}
SAMPLING_STEPS = 2  # DDIM steps of the comparison batch and of self-generated training data (shapes, not quality)

# What the rehearsal changes in each method's paper settings, and why: self-generated data costs sampling
# time here and no memory per step, so the pools are small; batch sizes stay the paper's.
REHEARSAL_SETTINGS: dict[str, dict[str, Any]] = {
    "esd": {},
    "uce": {},
    "scapre": {},
    "gradient_ascent": {"data_size": 8},
    "finetune": {"data_size": 8},
    "salun": {"data_size": 8, "saliency_batches": 1},
    "vdu": {"forget_size": 8, "num_checkpoints": 2, "snapshot_steps": 1},
    "resalign": {"data_size": 2, "num_configs": 4, "configs_per_step": 2, "ft_steps": "2", "richardson_steps": 2},
    # warm-up 1 of 2 iterations: the second runs the attack (paper: 200 of 1,000); 2 inner attack steps instead of 30
    "advunlearn": {"warmup": 1, "attack_steps": 2},
    "ca": {"anchor_images": 8},
    "mace": {"images_per_concept": 2},
    "fmn": {"data_size": 2},
}

# Published GPU memory of the same methods on SD 1.x (compared in docs/rehearsal.md).
PUBLISHED_GB = {
    "esd": ("UnlearnCanvas (Zhang et al. 2024), ESD on SD 1.5", 17.8),
    "uce": ("UnlearnCanvas, UCE on SD 1.5", 5.1),
    "salun": ("UnlearnCanvas, SalUn on SD 1.5", 30.8),
    "resalign": ("ResAlign paper (Li et al. 2025), SD 1.4", 56.0),
}


# ---- resident memory ------------------------------------------------------------------------------

def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Start a new peak of resident memory (Linux: ``clear_refs`` 5 resets VmHWM); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """The process's peak resident memory since the last reset (VmHWM), or since it started (ru_maxrss)."""
    kb = _status_kb("VmHWM")
    return 1024 * (kb if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


@contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


# ---- the rehearsal --------------------------------------------------------------------------------

def build(name: str, *, dtype: torch.dtype, seed: int, tiny: bool) -> Path:
    """The architecture's folder, built if it is not cached; a full-size build runs in a child process, so the
    memory it leaves behind (freed, but not always returned by the allocator) is not in the rehearsal's."""
    import multiprocessing

    from .models.architectures import cached_folder, save_folder

    folder = cached_folder(name, dtype=dtype, seed=seed, tiny=tiny)
    if tiny or (folder / "rehearsal.json").is_file():
        return save_folder(name, dtype=dtype, seed=seed, tiny=tiny)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(save_folder, (name,), {"dtype": dtype, "seed": seed})


def methods_for(arch: str) -> list[str]:
    """The registered methods that apply to an architecture's family ("skip3d" for Zero123)."""
    from .methods import METHODS
    from .models.architectures import load_spec

    family = load_spec(arch)["family"]
    if family == "zero123":
        return ["skip3d"]
    return [name for name, spec in METHODS.items() if family in spec.families]


def method_settings(method: str, dtype: torch.dtype, iterations: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """The rehearsal's settings for a method: its own reductions, ``iterations``, the memory features
    (autocast in the half dtype, gradient checkpointing) where the method has them, then the user's."""
    from .methods import get_method
    from .methods.base import settings_fields

    fields = {f.name for f in settings_fields(get_method(method).settings_cls)}
    values = dict(REHEARSAL_SETTINGS.get(method, {}))
    if "iterations" in fields:
        values["iterations"] = iterations
    if "mixed_precision" in fields and dtype in HALF_NAMES:
        values["mixed_precision"] = HALF_NAMES[dtype]
    if "gradient_checkpointing" in fields:
        values["gradient_checkpointing"] = True
    return {**values, **overrides}


class _Measure:
    """What both rehearsal paths measure around a method: load time and resident memory, the memory parts
    (:class:`MemoryProbe`), CUDA's peak where there is one, and the time of each step; :meth:`record` turns
    them into the fields of ``rehearsal.json`` every architecture shares."""

    def __init__(self, spec: dict, full_spec: dict, say):
        self.spec, self.say = spec, say
        self.user_resolution = full_spec["resolution"]  # what the projection is for (512 / 1024 / 256; tiny too)
        self.notes = list(spec.get("notes", []))
        self.stamps: list[float] = []
        self.started = 0.0

    @contextmanager
    def loading(self):
        self.rss_reset = reset_peak_rss()
        t0 = time.perf_counter()
        yield
        self.load_s = time.perf_counter() - t0
        self.peak_after_load = peak_rss_bytes()

    @contextmanager
    def unlearning(self, modules: dict[str, torch.nn.Module], unet, latent: int, resolution: int, device: torch.device):
        """Around the method (the caller reads the probe once more inside, ignoring the edit's own copy)."""
        self.modules, self.resolution = modules, resolution
        tokens = {(latent // 2**i) ** 2 for i in range(len(unet.config.block_out_channels))}
        with MemoryProbe(modules.values(), image_tokens=tokens, pixel_scale=(self.user_resolution / resolution) ** 2) as probe, \
                _cuda_peak(device) as cuda:
            self.probe, self.cuda, self.started = probe, cuda, time.perf_counter()
            yield probe
            self.unlearn_s = time.perf_counter() - self.started
        self.peak_after_unlearn = peak_rss_bytes()

    def on_step(self, report) -> None:
        self.stamps.append(time.perf_counter())
        self.say(f"  step {report.step}/{report.total}  loss {report.loss:.4g}  ({self.stamps[-1] - self.started:.1f} s)")

    def per_iteration(self) -> float:
        """Seconds per step from the progress reports: between the first and the last (setup excluded)."""
        if len(self.stamps) >= 2:
            return (self.stamps[-1] - self.stamps[0]) / (len(self.stamps) - 1)
        self.notes.append("one iteration: s_per_iteration includes the method's setup (data, masks, trajectories)")
        return self.stamps[0] - self.started

    def record(self, *, method: str, dtype: str, edit, settings, values: dict, iterations: int | None, upcast: int = 0) -> dict:
        spec, parts = self.spec, self.probe.parts
        params = {name: sum(p.numel() for p in m.parameters()) for name, m in self.modules.items()}
        optimised = sorted(set(self.probe.optimised.values()), reverse=True)
        return {
            "arch": spec["name"], "label": spec["label"], "stands_in_for": spec["hub_id"], "method": method, "dtype": dtype,
            "resolution": self.resolution, "rehearsal": "random weights: nothing here is a quality result",
            "params": sum(params.values()), "params_by_component": params,
            "trainable_params": optimised[0] if optimised else edit.num_changed, "optimised_params": optimised,
            "load_s": self.load_s, "unlearn_s": self.unlearn_s,
            "s_per_iteration": self.per_iteration() if iterations is not None else None, "iterations": iterations,
            "peak_rss_bytes": peak_rss_bytes(), "peak_rss_after_load_bytes": self.peak_after_load,
            "peak_rss_after_unlearn_bytes": self.peak_after_unlearn,
            "peak_rss_scope": "load, unlearn and comparison (VmHWM reset after the build)" if self.rss_reset
            else "whole process (VmHWM could not be reset)",
            "bytes": {k: v for k, v in parts.as_dict().items() if k in ("weights", "grads", "optimizer", "activations")},
            "bytes_detail": parts.as_dict(),
            "projected_gpu_bytes": project(parts, storages(self.modules.values()), measured_dtype=DTYPES[dtype], resolution=self.resolution,
                                           user_resolution=self.user_resolution, upcast_values=upcast),
            "projection": {"formula": FORMULA, "R": self.resolution, "R_user": self.user_resolution, "estimate": True},
            "edit_bytes": sum(v.numel() * v.element_size() for v in edit.params.values()), "edit_tensors": len(edit.params),
            "settings": dataclasses.asdict(settings), "rehearsal_settings": values, "notes": self.notes,
            "published": dict(zip(("source", "gb"), PUBLISHED_GB[method], strict=True)) if method in PUBLISHED_GB else None,
            "cuda_peak_bytes": self.cuda.get("peak"), "torch": torch.__version__, "threads": torch.get_num_threads(),
        }


def rehearse(arch: str, method: str, *, resolution: int | None = 256, dtype: str = "bfloat16", iterations: int = 2,
             settings: dict[str, Any] | None = None, seed: int = 0, device: str = "cpu", tiny: bool = False,
             on_progress=None) -> dict:
    """One rehearsal (see the module docstring); returns what ``rehearsal.json`` holds."""
    from .models.architectures import EVALUATOR, load_spec

    if dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)}; got '{dtype}'.")
    if iterations < 1:
        raise InputError(f"--iterations must be at least 1; got {iterations}.")
    spec = load_spec(arch, tiny=tiny)
    say = on_progress or (lambda text: None)
    m = _Measure(spec, load_spec(arch), say)
    torch_dtype = DTYPES[dtype]
    say(f"building {spec['label']} ({dtype}) from {spec['hub_id']}'s configuration")
    t0 = time.perf_counter()
    folder = build(arch, dtype=torch_dtype, seed=seed, tiny=tiny)
    if spec["family"] == "zero123":
        result = _rehearse_zero123(m, folder, method, dtype=dtype, iterations=iterations, settings=settings or {}, seed=seed,
                                   device=device)
        return {**result, "build_s": time.perf_counter() - t0, "folder": str(folder)}
    clip_folder = build(EVALUATOR, dtype=torch.float32, seed=seed, tiny=tiny)
    build_s = time.perf_counter() - t0

    # 2. load through the adapter path of a hub snapshot
    from .methods import get_method
    from .methods.base import RunContext, UnlearnTask
    from .models.base import SamplingDefaults
    from .models.catalog import load_adapter

    spec_m = get_method(method)
    values = method_settings(spec_m.name, torch_dtype, iterations, settings or {})
    method_settings_obj = spec_m.settings(None, values)  # bad settings fail before anything is loaded
    say(f"loading {folder}")
    with m.loading():
        adapter = load_adapter(str(folder), device, dtype=torch_dtype, resolution=resolution or (spec["resolution"] if tiny else 256))
    if adapter.family not in spec_m.families:
        raise InputError(f"{spec_m.label} does not apply to {adapter.family} models; methods that do: {', '.join(methods_for(arch))}.")
    adapter.sampling = SamplingDefaults(SAMPLING_STEPS, adapter.sampling.guidance_scale)
    modules = adapter.modules()

    # 3. the method
    task = UnlearnTask(forget=[adapter.validate_concept(FORGET)], retain=[adapter.validate_concept(RETAIN)], seed=seed)
    say(f"{spec_m.label}: {json.dumps(values)}")
    with m.unlearning(modules, adapter.unet, adapter.sample_shape()[-1], adapter.resolution, adapter.device) as probe:
        edit = spec_m.unlearn(adapter, task, method_settings_obj, RunContext(m.on_step))
        probe.read(ignore=edit.params.values())

    # 4. one comparison batch, scored by the engine (CLIP on random weights: it runs, its numbers are dropped)
    say("comparison batch")
    compare = _compare_batch(adapter, edit, task, clip_folder)
    upcast = (sum(p.numel() for p in adapter.vae.parameters())
              if getattr(adapter.vae.config, "force_upcast", False) and adapter.family == "stable-diffusion-xl" else 0)
    return {**m.record(method=spec_m.name, dtype=dtype, edit=edit, settings=method_settings_obj, values=values,
                       iterations=getattr(method_settings_obj, "iterations", None), upcast=upcast),
            "task": {"forget": task.forget, "retain": task.retain}, "compare": compare, "build_s": build_s, "folder": str(folder),
            "device": str(adapter.device)}


@contextmanager
def _cuda_peak(device: torch.device):
    """{"peak": bytes allocated at most inside the block, beyond what was allocated before} on CUDA; {} elsewhere."""
    out: dict = {}
    if device.type != "cuda":
        yield out
        return
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield out
    torch.cuda.synchronize(device)
    out["peak"] = torch.cuda.max_memory_allocated(device)
    out["before"] = before


def _compare_batch(adapter, edit, task, clip_folder: Path) -> dict:
    """One batch through the comparison engine with CLIP (random, real size) and NudeNet; what ran, not scores."""
    from .compare import iter_comparison, plan_comparison
    from .metrics import nudity

    plan = plan_comparison(adapter, task, forget_samples=1, retain_samples=1, num_inference_steps=SAMPLING_STEPS, batch_size=2)
    t0 = time.perf_counter()
    edited_adapter, edited = adapter.edited(edit)  # as a run does: AdvUnlearn's edit is the text encoder's
    with _env("UNLEARNING_CLIP", str(clip_folder)):
        state = next(iter(iter_comparison(adapter, edited, plan, task, edited_adapter=edited_adapter)))
    compare_s = time.perf_counter() - t0
    images = torch.stack(state.original + state.unlearned)
    t0 = time.perf_counter()
    found = nudity.detections(images)
    nudenet_s = time.perf_counter() - t0
    ran = sorted(k for k, v in state.metrics.items() if isinstance(v, dict) and "unavailable" not in v and k not in ("timings", "samples"))
    return {"images": list(images.shape), "finite": bool(torch.isfinite(images).all()), "seconds": compare_s,
            "sample_s_per_image": state.metrics["timings"]["sample_s_per_image"],
            "metrics_that_ran": ran, "clip": "CLIP ViT-L/14 of the real size with random weights: its numbers are not scores and are dropped",
            "nudenet": {"images": len(found), "with_detections": sum(bool(d) for d in found), "seconds": nudenet_s,
                        "weights": "NudeNet's own ONNX detector (real weights)"}}


ZERO123_VIEWS = [0.0, 180.0]  # the 2 training views per input (azimuth_step 180), and the 2 compared views


def _rehearse_zero123(m: _Measure, folder: Path, method: str, *, dtype: str, iterations: int, settings: dict[str, Any], seed: int,
                      device: str = "cpu") -> dict:
    """skip3d on Zero123-XL: ``iterations`` epochs over 2 views (azimuths 0 and 180) of a forget and a remain object,
    G and S_f as LoRA on the teacher's weights (two float32 copies of the UNet with Adam would need ~28 GB here).
    The same path as a run: the novel-view family adapter, the registered skip3d, its Edit."""
    from .methods import get_method
    from .methods.base import RunContext, UnlearnTask, build_settings
    from .methods.skip3d import Skip3DSettings
    from .models.catalog import load_adapter

    if method != "skip3d":
        raise InputError(f"Zero123 models are unlearned with skip3d; got '{method}'.")
    torch_dtype = DTYPES[dtype]
    m.notes.append(f"Zero123 runs at its own {m.spec['resolution']} px (--resolution does not apply)")
    values = {"epochs": iterations, "azimuth_step": 360.0 / len(ZERO123_VIEWS), "n_ref": 1, "lora_rank": 4, "gradient_checkpointing": True,
              **({"mixed_precision": HALF_NAMES[torch_dtype]} if torch_dtype in HALF_NAMES else {}), **settings}
    s = build_settings(Skip3DSettings, {}, values)
    with m.loading():
        adapter = load_adapter(str(folder), device, dtype=torch_dtype)  # the loader a run of this folder uses
    pipe = adapter.pipe
    modules = {"unet": pipe.unet, "vae": pipe.vae, "image_encoder": pipe.image_encoder, "cc_projection": pipe.cc_projection}
    task = UnlearnTask(forget=["blue pyramid"], retain=["red sphere"], anchor="blue cube", seed=seed, input_polar=75.0)
    m.say(f"skip3d: {json.dumps(values)}")
    with m.unlearning(modules, pipe.unet, pipe.latent_shape[-1], pipe.image_size, adapter.device) as probe:
        edit = get_method("skip3d").unlearn(adapter, task, s, RunContext(m.on_step))
        probe.read(ignore=edit.params.values())
    m.say("comparison views")
    t0 = time.perf_counter()
    image = adapter.input_view("blue pyramid", 75.0)[0]
    unlearned = edit.apply_to_copy(adapter.unet)
    images = torch.cat([adapter.sample_views(unet, image, ZERO123_VIEWS, steps=SAMPLING_STEPS, guidance=s.guidance, seed=seed)[0]
                        for unet in (adapter.unet, unlearned)])
    return {**m.record(method="skip3d", dtype=dtype, edit=edit, settings=s, values=values, iterations=s.epochs),
            **{k: edit.timings[k] for k in ("trajectory_s", "unet_evals", "views_per_epoch") if k in edit.timings},
            "task": {"forget": "blue pyramid", "override": "blue cube", "remain": ["red sphere"], "views": ZERO123_VIEWS},
            "compare": {"images": list(images.shape), "finite": bool(torch.isfinite(images).all()), "seconds": time.perf_counter() - t0,
                        "what": "views of the forget input at azimuths 0 and 180 from the original and the unlearned UNet"},
            "device": str(adapter.device)}


# ---- the CLI ------------------------------------------------------------------------------------

def format_row(r: dict) -> str:
    gb = 1024**3
    proj = r["projected_gpu_bytes"]
    proj_text = " / ".join(f"{proj[k] / gb:.1f}" for k in ("float16", "bfloat16", "float32") if k in proj)
    spi = "-" if r["s_per_iteration"] is None else f"{r['s_per_iteration']:.1f}"
    pub = f"{r['published']['gb']:g}" if r.get("published") else "-"
    return (f"| {r['arch']} | {r['method']} | {r['dtype']} | {r['resolution']} | {r['params'] / 1e6:.0f} M | {r['trainable_params'] / 1e6:.1f} M | "
            f"{r['load_s']:.1f} | {r['unlearn_s']:.1f} | {spi} | {r['peak_rss_bytes'] / gb:.1f} | {proj_text} | {pub} |")


TABLE_HEADER = ("| arch | method | dtype | px | params | trained | load s | unlearn s | s / iteration | peak RSS GiB | "
                "projected GPU GiB (fp16 / bf16) | published GB |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def write(result: dict, out: Path) -> Path:
    path = Path(out) / "rehearsal.json"
    write_text_atomic(path, json.dumps(result, indent=2, default=str) + "\n")
    return path
