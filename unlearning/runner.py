"""One unlearning run from request to results; shared by the UI and the CLI, so the two cannot drift.

    RunRequest -> prepare() checks everything and loads the model (errors before any work)
               -> execute() yields events: training steps, comparison batches, the finished run
               -> run_to_folder(): execute() with the run folder's lifecycle (where it goes, zip, retention)
    run folder -> relearn_run(): the relearning test of a finished run (limits, fine-tune, report, relearn.json)

``execute`` runs the method in a worker thread so training progress can be streamed, and stops the
method when the consumer stops listening (a cancelled UI event closes the generator).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_text_atomic
from .attacks.relearn import RelearnSettings, relearn, relearn_report, relearn_settings
from .compare import ComparisonPlan, ComparisonState, ComparisonView, iter_comparison, plan_comparison, view_for
from .edit import Edit
from .errors import InputError, UnlearningError
from .hosting.profile import HostProfile, get_profile
from .methods import METHODS, MethodSpec, get_method
from .methods.base import RunContext, StepReport, UnlearnTask
from .models.base import SAMPLERS, FamilyAdapter
from .models.catalog import FAMILY_OPTIONS, load_adapter, resolve
from .run_folder import check_writable, hold, new_run_folder, prune_runs, write_run_folder, zip_run

log = logging.getLogger(__name__)


@dataclass
class RunRequest:
    model: str = "digits"
    method: str = "esd"
    forget: list[str] = field(default_factory=lambda: ["3"])
    anchor: str | None = None  # map the forget concept to this one (None: erase to the null condition)
    preserve: list[str] | None = None  # concepts to keep; None: every concept not forgotten
    settings: dict[str, Any] = field(default_factory=dict)  # overrides of the method's settings
    seed: int = 0
    device: str = "auto"
    forget_samples: int = 16  # comparison images of the forget concept(s)
    retain_samples: int = 4  # comparison images per retained concept
    num_inference_steps: int | None = None  # sampling steps (None: the model's default)
    guidance_scale: float | None = None
    sampler: str = "ddim"  # "ddim" or "dpm-solver" (diffusers' DDIMScheduler / DPMSolverMultistepScheduler)
    prompts: list[str] | None = None  # extra prompts of the user's, compared side by side (not scored)
    input_polar: float | None = None  # novel-view models: polar angle of the input views (degrees, 90 = level; None: 75)
    sampling_skips: list[int] | None = None  # novel-view models: also time sampling at these skips, e.g. [0, 8, 12, 16]
    prompts: list[str] | None = None  # extra prompts of the user's, compared side by side (not scored); language
    # models: the prompts both models continue (None: the model's demo prompts)
    questions: int | None = None  # language models: held-out questions scored per domain (None: all)


@dataclass
class PreparedRun:
    request: RunRequest
    model_id: str
    adapter: FamilyAdapter
    spec: MethodSpec
    settings: Any
    task: UnlearnTask
    plan: ComparisonPlan | Any  # the view's plan for a family with a view
    view: ComparisonView | None = None  # the family's comparison view (None: images from seeds, compare.py)


@dataclass
class RunEvent:
    kind: str  # "train" | "edit" | "compare" | "done"
    step: StepReport | None = None
    loss_log: list[dict] = field(default_factory=list)
    edit: Edit | None = None
    state: ComparisonState | Any = None  # the view's state for a family with a view
    folder: Path | None = None
    archive: Path | None = None  # "done" from run_to_folder(archive=True): the zip of the folder


def _concepts(values: list[str] | str | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = values.split(",")
    return [str(v).strip() for v in values]


def anchor_methods() -> list[str]:
    """Names of the registered methods that map a forgotten concept to an anchor."""
    return [name for name, spec in METHODS.items() if spec.uses_anchor]


def parse_forget(adapter: FamilyAdapter, entries: list[str]) -> tuple[list[str], dict[str, str]]:
    """Validated forget concepts and their per-concept anchors, from entries like "star" or "star -> circle"."""
    if not entries or any(not e for e in entries):
        examples = ", ".join(adapter.concepts()[:3]) or "a word or phrase"
        raise InputError(f"the concept to forget is empty: give at least one concept, e.g. {examples}.")
    forget, anchors = [], {}
    for entry in entries:
        concept, sep, target = entry.partition("->")
        concept = adapter.validate_concept(concept)
        if sep:
            if not target.strip():
                raise InputError(f"'{entry}': the anchor after '->' is empty; write 'concept -> anchor' or just the concept.")
            target = adapter.validate_concept(target)
            if target == concept:
                raise InputError(f"'{entry}' maps a concept to itself; pick a different anchor.")
            anchors[concept] = target
        forget.append(concept)
    if bad := sorted(set(anchors.values()) & set(forget)):
        raise InputError(f"{', '.join(bad)} is used as an anchor and also forgotten; pick another anchor.")
    return forget, anchors


def prepare(request: RunRequest, profile: HostProfile | None = None) -> PreparedRun:
    """Validate the whole request against the hosted profile and the model; load the model."""
    profile = profile or get_profile()
    limits = profile.limits
    model_id, _, _ = resolve(request.model, profile)  # refuses what the profile does not offer
    spec = get_method(request.method)
    if profile.methods and spec.name not in profile.methods:
        raise InputError(f"method '{spec.name}' is not allowed here; allowed: {', '.join(profile.methods)}.")
    adapter = load_adapter(request.model, request.device)
    spec = spec.for_family(adapter.family)  # the method as written for this family (InputError if it has none)
    view = view_for(adapter.family)

    forget, anchors = parse_forget(adapter, _concepts(request.forget))
    if len(set(forget)) != len(forget):
        raise InputError(f"a concept is listed twice in the forget list: {', '.join(forget)}.")
    if len(forget) > limits.max_concepts:
        raise InputError(f"{len(forget)} concepts to forget; this instance allows at most {limits.max_concepts}.")
    preserve = _concepts(request.preserve)
    if any(not c for c in preserve):
        raise InputError("an entry of the preserve list is empty; remove it or type a concept.")
    retain = [adapter.validate_concept(c) for c in preserve] if preserve else adapter.default_retain(forget)
    if both := sorted(set(retain) & set(forget)):
        raise InputError(f"{', '.join(both)} is both forgotten and preserved; choose one.")
    if len(set(retain)) != len(retain):
        raise InputError(f"a concept is listed twice in the preserve list: {', '.join(retain)}.")
    if not retain:
        raise InputError("nothing would be left to keep: forgetting every concept leaves no retained concept to check. "
                         "Forget fewer concepts.")
    anchor = None
    if request.anchor not in (None, ""):
        anchor = adapter.validate_concept(request.anchor)
        if anchor in forget:
            raise InputError(f"the anchor '{anchor}' is also being forgotten; pick another anchor.")
    if anchors and not spec.uses_anchor:
        raise InputError(f"{spec.label} does not use anchors; remove the '->' part or pick a method that "
                         f"maps a concept to another: {', '.join(anchor_methods())}.")

    settings = spec.settings(model_id, request.settings)
    views = view is None and adapter.comparison_azimuths() is not None  # a novel-view model: concepts are input views
    if not views and (request.input_polar is not None or request.sampling_skips):
        raise InputError("an input polar angle and sampling skips are for novel-view (Zero123) models; this is a "
                         f"{adapter.family} model.")
    input_polar = adapter.check_polar(request.input_polar) if views else None
    skips = sorted({int(k) for k in request.sampling_skips or []})
    if skips and not (skips[0] >= 0 and skips[-1] < (request.num_inference_steps or adapter.sampling.num_inference_steps)):
        raise InputError(f"sampling skips must be between 0 and the sampling steps minus 1; got {', '.join(map(str, skips))}.")
    iterations = getattr(settings, "iterations", None)
    if iterations is not None and iterations > limits.max_iterations:
        raise InputError(f"iterations = {iterations} is more than this instance allows ({limits.max_iterations}).")
    task = UnlearnTask(forget=forget, retain=retain, anchor=anchor, seed=int(request.seed), anchors=anchors)
    if view is not None:
        return PreparedRun(request, model_id, adapter, spec, settings, task, view.plan(adapter, task, request, limits), view)
    steps = request.num_inference_steps
    if steps is not None and not 1 <= steps <= limits.max_inference_steps:
        raise InputError(f"sampling steps must be between 1 and {limits.max_inference_steps}; got {steps}.")
    if request.guidance_scale is not None and not 0 <= request.guidance_scale <= 50:
        raise InputError(f"guidance scale must be between 0 and 50; got {request.guidance_scale}.")
    prompts = [adapter.validate_concept(p) for p in _concepts(request.prompts) if p] if request.prompts else []
    if prompts and "prompts" not in FAMILY_OPTIONS.get(adapter.family, frozenset()):
        raise InputError("extra prompts need a text-to-image model; this model only knows its classes.")

    if request.sampler not in SAMPLERS:
        raise InputError(f"unknown sampler '{request.sampler}'; choose one of {', '.join(SAMPLERS)}.")
    if request.forget_samples < 1 or request.retain_samples < 1:
        raise InputError("the number of comparison samples must be at least 1.")
    task = UnlearnTask(forget=forget, retain=retain, anchor=anchor, seed=int(request.seed), anchors=anchors, input_polar=input_polar)
    if spec.check_task is not None:
        spec.check_task(task, settings)
    plan = plan_comparison(adapter, task, forget_samples=request.forget_samples, retain_samples=request.retain_samples,
                           seed=int(request.seed), num_inference_steps=steps, guidance_scale=request.guidance_scale,
                           sampler=request.sampler, prompts=prompts, sampling_skips=skips,
                           skip_refs=getattr(settings, "n_ref", 4))
    if len(plan.items) > limits.max_samples:
        raise InputError(f"this run would generate {len(plan.items)} comparison pairs; this instance allows {limits.max_samples}.")
    return PreparedRun(request, model_id, adapter, spec, settings, task, plan)


_SENTINEL = object()


def execute(run: PreparedRun, out_dir: Path | None = None, cancel: threading.Event | None = None,
            owner: str | None = None) -> Iterator[RunEvent]:
    """Unlearn, then compare; yields events as they happen. Closing the generator cancels the run.
    ``owner``: the browser / session id the run belongs to (recorded hashed in the run card)."""
    if out_dir is not None:
        check_writable(out_dir)  # fail before spending minutes on training
    cancel = cancel or threading.Event()
    events: queue.Queue = queue.Queue()
    result: dict[str, Any] = {}
    loss_log: list[dict] = []

    def on_step(report: StepReport) -> None:
        events.put(report)

    def work() -> None:
        try:
            result["edit"] = run.spec.unlearn(run.adapter, run.task, run.settings, RunContext(on_step, cancel))
        except BaseException as exc:  # handed to the consumer thread and re-raised there
            result["error"] = exc
        finally:
            events.put(_SENTINEL)

    worker = threading.Thread(target=work, name=f"unlearn-{run.spec.name}", daemon=True)
    worker.start()
    try:
        while (item := events.get()) is not _SENTINEL:
            loss_log.append({"step": item.step, "loss": item.loss, **item.extra})
            yield RunEvent("train", step=item, loss_log=loss_log)
        worker.join()
        if "error" in result:
            raise result["error"]
        edit: Edit = result["edit"]
        yield RunEvent("edit", edit=edit, loss_log=loss_log)
        unlearn_s = edit.timings.get("unlearn_s")
        if run.view is not None:
            states = run.view.iterate(run.adapter, edit, run.plan, run.task, unlearn_s)
        else:
            edited_adapter, edited = run.adapter.edited(edit)
            states = iter_comparison(run.adapter, edited, run.plan, run.task, unlearn_s, edit.timings, edited_adapter=edited_adapter)
        state = None
        for state in states:
            if cancel.is_set():
                raise UnlearningError("the run was cancelled.")
            yield RunEvent("compare", state=state, edit=edit, loss_log=loss_log)
        folder = write_run_folder(out_dir, run, edit, state, owner) if out_dir is not None else None
        yield RunEvent("done", state=state, edit=edit, loss_log=loss_log, folder=folder)
    finally:
        cancel.set()  # stops the worker at its next step if the consumer went away
        worker.join(timeout=30)


def request_dict(request: RunRequest) -> dict:
    return dataclasses.asdict(request)


def read_request(folder: Path) -> RunRequest:
    """The RunRequest recorded in a finished run folder's run.json (InputError if there is none)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"no run folder at '{folder}'; give a folder written by 'python -m unlearning run --out'.")
    card_path = folder / "run.json"
    if not card_path.is_file():
        raise InputError(f"'{folder}' holds no run.json; give a folder written by 'python -m unlearning run --out'.")
    try:
        card = json.loads(card_path.read_text())
        fields = {f.name for f in dataclasses.fields(RunRequest)}
        return RunRequest(**{k: v for k, v in card["request"].items() if k in fields})
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"'{card_path}' is not a readable run card ({exc}).") from None


def load_run(folder: Path) -> tuple[PreparedRun, Edit]:
    """(PreparedRun, Edit) of a finished run folder, its request re-validated as a new one."""
    request = read_request(folder)
    return prepare(request), Edit.load(Path(folder) / "edit.safetensors")


# ---- the run folder's lifecycle -----------------------------------------------------------------

def run_to_folder(run: PreparedRun, out: Path | None = None, *, cancel: threading.Event | None = None,
                  owner: str | None = None, archive: bool = False, profile: HostProfile | None = None) -> Iterator[RunEvent]:
    """:func:`execute` with its run folder, for the CLI and the app alike.

    ``out``: the folder to write (the CLI's ``--out``); None: a new folder under the profile's ``runs.dir`` (the app).
    When the run is done its folder is written (atomically), zipped beside it when ``archive`` (``RunEvent.archive``;
    the run is held while the zip is fetched), and, for a run under ``runs.dir``, the oldest runs beyond the profile's
    caps are deleted (never this one, never a held one). A folder the user named is never pruned around.
    """
    profile = profile or get_profile()
    managed = out is None
    folder = new_run_folder(profile.runs.dir, run.model_id, run.spec.name) if managed else Path(out)
    for event in execute(run, out_dir=folder, cancel=cancel, owner=owner):
        if event.kind == "done":
            if archive:
                event.archive = zip_run(event.folder)
            if managed:
                prune_runs(profile.runs.dir, profile.runs.keep, profile.runs.max_bytes)
        yield event


# ---- the relearning test of a finished run --------------------------------------------------------

@dataclass
class RelearnEvent:
    kind: str  # "finetune" (checked; the fine-tune starts) | "score" (sampling the three models) | "done"
    run: PreparedRun
    settings: RelearnSettings
    record: dict | None = None  # "done": what relearn.json holds


def relearn_run(folder: Path, overrides: dict | None = None, *, device: str | None = None, ctx: RunContext | None = None,
                profile: HostProfile | None = None) -> Iterator[RelearnEvent]:
    """The relearning test of a finished run folder (ResAlign's threat model), for the CLI and the app alike.

    1. read the run's request, build the attack's settings (paper defaults, twin-tuned values, ``overrides``) and check
       them against the profile's limits, load the edit and re-prepare the run: every mistake before any work;
    2. fine-tune the unlearned model as a downstream user would (:func:`unlearning.attacks.relearn.relearn`);
    3. score original / after unlearning / after the fine-tune on the run's own seeds, write ``relearn.json``.
    """
    folder = Path(folder)
    profile = profile or get_profile()
    # 1. everything checked before any work
    request = read_request(folder)
    if device:
        request.device = device
    model_id, _, _ = resolve(request.model, profile)
    settings = relearn_settings(model_id, overrides)
    if settings.steps > profile.limits.max_iterations:
        raise InputError(f"steps = {settings.steps} is more than this instance allows ({profile.limits.max_iterations}).")
    edit = Edit.load(folder / "edit.safetensors")
    run = prepare(request, profile)
    hold(folder)  # under test: retention keeps it
    # 2. the downstream fine-tune
    yield RelearnEvent("finetune", run, settings)
    result = relearn(run.adapter, edit, run.task, settings, ctx or RunContext())
    # 3. three models, the run's seeds
    yield RelearnEvent("score", run, settings)
    report = relearn_report(run.adapter, run.task, edit, result.edit, request.forget_samples, request.seed,
                            retain_samples=request.retain_samples, num_inference_steps=request.num_inference_steps,
                            guidance_scale=request.guidance_scale)
    record = {"run": str(folder), "method": run.spec.name, "model": run.model_id, "forget": run.task.forget,
              "benign": result.benign, "settings": dataclasses.asdict(settings), "report": report,
              "loss_log": result.loss_log, "timings": result.timings}
    write_text_atomic(folder / "relearn.json", json.dumps(record, indent=2, default=str) + "\n")
    yield RelearnEvent("done", run, settings, record)
