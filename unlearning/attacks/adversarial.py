"""The adversarial attacks by name, and one attack on a finished run from request to folder.

    ATTACKS                     name -> AttackSpec (settings class with the paper's defaults, twin-tuned values)
    prepare_attack(run, kind)   checks everything and loads the model: every bad input fails here, before any work
    execute_attack(prepared)    runs it; write_attack_folder() puts attack.json, the adversarial prompt or
                                embedding (safetensors) and the three image rows in ``<run>/attack-<kind>``

The CLI (``python -m unlearning attack``), the app's Attack panel and the robustness bench all go through here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..edit import Edit
from ..errors import InputError
from ..methods.base import RunContext, UnlearnTask, build_settings, settings_fields
from ..models.base import FamilyAdapter
from . import inversion, prompts, unlearndiffatk
from .base import AttackItem, AttackResult, Judge, Victim, check_attack_out, check_family, forget_items, make_judge


@dataclass(frozen=True)
class AttackSpec:
    name: str
    label: str
    summary: str
    citation: str
    settings_cls: type
    attack: Callable[..., AttackResult]
    tuned: dict[str, dict[str, Any]] = field(default_factory=dict)
    families: tuple[str, ...] = ("class-conditional", "stable-diffusion")

    def settings(self, model_id: str | None, overrides: dict[str, Any] | None = None) -> Any:
        """The paper's defaults, the twin's tuned values over them, then the user's overrides (validated)."""
        return build_settings(self.settings_cls, self.tuned.get(model_id or "", {}), overrides or {})

    def describe(self, model_id: str | None = None) -> list[dict[str, Any]]:
        tuned = self.tuned.get(model_id or "", {})
        return [{"name": f.name, "paper": f.default, "value": tuned.get(f.name, f.default), "tuned": f.name in tuned,
                 **{k: v for k, v in f.metadata.items() if v is not None}} for f in settings_fields(self.settings_cls)]


ATTACKS: dict[str, AttackSpec] = {
    spec.name: spec for spec in [
        AttackSpec(
            name="unlearndiffatk", label="UnlearnDiffAtk (adversarial prompt)",
            summary="Finds a few tokens to put before the prompt so that the unlearned model denoises the original "
            "model's image of the concept well; white-box, the victim is its own classifier.",
            citation="Zhang et al., To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still Easy to "
            "Generate Unsafe Images ... For Now, ECCV 2024",
            settings_cls=unlearndiffatk.UnlearnDiffAtkSettings, attack=unlearndiffatk.attack, tuned=unlearndiffatk.TUNED,
        ),
        AttackSpec(
            name="inversion", label="Concept inversion (textual inversion)",
            summary="Learns one new word embedding from images of the concept on the unlearned model, then asks for "
            "'a picture of <word>'.",
            citation="Pham et al., Circumventing Concept Erasure Methods for Text-to-Image Generative Models, ICLR 2024",
            settings_cls=inversion.InversionSettings, attack=inversion.attack, tuned=inversion.TUNED,
        ),
        AttackSpec(
            name="prompts", label="Prompt-set replay (I2P / Ring-A-Bell / P4D files)",
            summary="Generates a published prompt file (prompt, seed, guidance) with the unlearned model and judges every "
            "image (the model's evaluator, CLIP zero-shot, or NudeNet for nudity).",
            citation="Schramowski et al. (I2P), CVPR 2023; Tsai et al. (Ring-A-Bell), ICLR 2024; Chin et al. (P4D), ICML 2024",
            settings_cls=prompts.PromptReplaySettings, attack=prompts.attack, tuned=prompts.TUNED,
            families=("stable-diffusion",),
        ),
    ]
}


def get_attack(name: str) -> AttackSpec:
    key = (name or "").strip().lower().replace("-", "")
    if key not in ATTACKS:
        raise InputError(f"unknown attack '{name}'; available: {', '.join(ATTACKS)}.")
    return ATTACKS[key]


@dataclass
class PreparedAttack:
    spec: AttackSpec
    settings: Any
    adapter: FamilyAdapter
    edit: Edit
    task: UnlearnTask
    items: list[AttackItem]
    judge: Judge
    out: Path | None
    run: dict  # what attack.json records about the attacked run
    files: dict[str, str] = field(default_factory=dict)  # extra files for the attack folder (the built-in prompt set)
    kwargs: dict = field(default_factory=dict)  # attack-specific arguments (prompt replay: truncated prompt count)


def default_out(run_folder: Path, kind: str) -> Path:
    return Path(run_folder) / f"attack-{kind}"


def prepare_attack(run_folder: str | Path, kind: str, *, prompts_file: str | Path | None = None,
                   overrides: dict[str, Any] | None = None, out: str | Path | None = None, device: str | None = None,
                   profile=None, write: bool = True) -> PreparedAttack:
    """Check the request and load the model; every problem is one InputError, raised before anything is written."""
    from ..hosting.profile import get_profile
    from ..models.catalog import resolve
    from ..runner import prepare, read_request

    profile = profile or get_profile()
    folder = Path(run_folder)
    request = read_request(folder)  # "not a run folder" fails here
    spec = get_attack(kind)
    if prompts_file is not None and spec.name != "prompts":
        raise InputError(f"--prompts is for the prompts attack; the {spec.name} attack makes its own prompts.")
    model_id, _, _ = resolve(request.model)
    settings = spec.settings(model_id, overrides)  # unknown settings, absurd iteration counts: here
    limits = profile.limits
    if settings.optimiser_steps() > limits.max_iterations:
        raise InputError(f"this attack would take {settings.optimiser_steps()} optimiser steps per prompt; this instance "
                         f"allows {limits.max_iterations}.")
    if settings.num_inference_steps > limits.max_inference_steps:
        raise InputError(f"num_inference_steps = {settings.num_inference_steps}; this instance allows {limits.max_inference_steps}.")
    n = getattr(settings, "samples", 0)
    if n > limits.max_samples:
        raise InputError(f"samples = {n}; this instance allows {limits.max_samples} images per comparison.")
    if prompts_file is not None and Path(prompts_file).is_file() and Path(prompts_file).stat().st_size > limits.max_upload_bytes:
        raise InputError(f"the prompt file is {Path(prompts_file).stat().st_size:,} bytes; this instance accepts "
                         f"{limits.max_upload_bytes:,}.")
    rows = prompts.read_prompt_file(prompts_file, settings.max_prompts) if prompts_file is not None else None
    target = Path(out) if out is not None else default_out(folder, spec.name)
    if write:
        check_attack_out(target)
    edit = Edit.load(folder / "edit.safetensors")
    if device:
        request.device = device
    run = prepare(request, profile)
    adapter, task = run.adapter, run.task
    check_family(adapter, spec.name, spec.families)
    files, kwargs = {}, {}
    if spec.name == "prompts":
        if rows is None:
            rows = prompts.twin_prompt_set(adapter, task.forget[0], settings.twin_prompts, settings.seed)
            files["prompts.csv"] = prompts.prompt_file_text(rows)
        if len(rows) > limits.max_samples:
            raise InputError(f"the prompt file has {len(rows)} rows; this instance allows {limits.max_samples} "
                             "(set max_prompts to replay the first rows).")
        items, kwargs["truncated"] = prompts.rows_to_items(adapter, rows, task, settings.guidance_scale)
    else:
        items = forget_items(adapter, task, settings.samples, int(request.seed), settings.guidance_scale)
    judge = make_judge(adapter, items, getattr(settings, "nudenet_threshold", 0.45))
    info = {"folder": str(folder), "method": run.spec.name, "model": model_id, "forget": task.forget,
            "edit_method": edit.method, "prompts_file": str(prompts_file) if prompts_file else None}
    return PreparedAttack(spec, settings, adapter, edit, task, items, judge, target if write else None, info, files, kwargs)


def execute_attack(prepared: PreparedAttack, ctx: RunContext | None = None) -> tuple[AttackResult, Path | None]:
    """Run a prepared attack; write its folder when it has one. Returns (result, folder)."""
    from .base import write_attack_folder

    victim = Victim.of(prepared.adapter, prepared.edit)
    result = prepared.spec.attack(victim, prepared.items, prepared.judge, prepared.settings, ctx, **prepared.kwargs)
    folder = None
    if prepared.out is not None:
        folder = write_attack_folder(prepared.out, result, prepared.run, prepared.files)
    return result, folder


def format_attack(result: AttackResult) -> str:
    """attack.json's headline as a few lines of text (the CLI prints it)."""
    s = result.summary()

    def pct(v: float, ci: list[float]) -> str:
        return f"{100 * v:5.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"

    lines = [f"{result.kind}: n = {s['n']} prompts, judged by {s['judge'].get('judge')}",
             f"  ASR before the attack : {pct(s['asr_before'], s['asr_before_ci95'])}",
             f"  ASR after the attack  : {pct(s['asr_after'], s['asr_after_ci95'])}   (attacked images alone: "
             f"{100 * s['asr_attacked_only']:.1f}%)",
             f"  cost: {s['attack_s']:.1f} s, {s['iterations']} optimiser steps"]
    if "original_rate" in s:
        lines.append(f"  original model on these prompts: {100 * s['original_rate']:.1f}%")
    return "\n".join(lines)
