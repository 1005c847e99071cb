"""The benchmark protocol: every method x every concept x seeds, in the field's own columns (UnlearnCanvas).

    python -m unlearning bench protocol --model MODEL --methods LIST|all --concepts LIST|FILE|all [--seeds N [--first-seed K]]
        [--out DIR] [--jobs J] [--set method.key=value ...] [--executor local|ray [--address ADDR]]

One unlearning run per (method, concept, seed), each from the same base model with the method's settings for
that model (paper defaults with the twin-tuned values over them; never tuned per concept). Each run is then
sampled on the *grid* of its concept set, the same prompts and initial noise for every run:

    shapes-sd  "a {colour} {shape}" for the 8 shapes x 8 colours; shapes are UnlearnCanvas's objects,
               colours its styles (k images per prompt)
    digits     the 10 class labels (k images each); one domain, so no CRA
    real SD    a concept list from a file ("object: dog", "style: Van Gogh"; UnlearnCanvas's prompt
               "An {object} image in {style} style." when both kinds are given), or UnlearnCanvas's own
               concepts read from the user's classifier folder

The original model's grid is made once per seed (it does not depend on the concept) and gives every concept
its "original" row. The columns of a row (forgotten concept c of kind K; K' the other kind), UnlearnCanvas's:

    UA    unlearning accuracy: share of the grid images whose prompt names c that the evaluator no longer
          assigns to c (head of kind K)
    IRA   in-domain retain accuracy: the kind-K head's accuracy on images whose prompt names another concept
          of kind K
    CRA   cross-domain retain accuracy: the kind-K' head's accuracy on every grid image, the forgotten
          concept's included (as UnlearnCanvas's evaluation script counts it); absent with one kind
    FID   evaluator-FID of the images of prompts without c against real images of those prompts (the twin's
          evaluator features, not Inception; None where the model has no real data)
    time  wall-clock of the method (s); peak memory during it (bytes: the process's resident-set high-water
          mark on CPU, reset before the run; torch.cuda.max_memory_allocated on GPU); storage: bytes of the
          edit's changed tensors

Summary per method: the mean over concepts and seeds with a 95 % Student-t interval (unlearning.metrics.stats)
and the worst concept (lowest mean UA). Outputs in DIR: protocol.json, protocol.csv (UnlearnCanvas's column
order), heatmap.png (method x concept UA), and cells/ (the resumable cell store, unlearning.benchmarks.cells).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..errors import InputError, UnlearningError
from .cells import CellKey, CellStore, settings_hash
from .protocol_results import ORIGINAL, summarise

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1  # part of every cell's key: bump it when the scoring changes
KINDS = ("object", "style")  # UnlearnCanvas's two domains (shapes-sd: shapes, colours)
UNLEARNCANVAS_TEMPLATE = "An {object} image in {style} style."  # its prompt
ROW_KEYS = ("method", "concept", "seed", "ua", "ira", "cra", "fid", "unlearn_s", "peak_mem_bytes", "edit_bytes")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


# ---- concept sets and the sampling grid ------------------------------------------------------------------------

@dataclass(frozen=True)
class ConceptSet:
    """The concepts of a benchmark, by kind, and the prompt of one grid cell.

    ``template`` names the kinds in braces; ``{a}`` is the article of the word after it ("an orange star")."""

    name: str
    kinds: tuple[tuple[str, tuple[str, ...]], ...]  # ((kind, concepts), ...), objects first
    template: str
    twin: bool = False  # the twin's own vocabulary: runs keep the app's default retain set

    @property
    def by_kind(self) -> dict[str, tuple[str, ...]]:
        return dict(self.kinds)

    def concepts(self) -> list[str]:
        return [c for _, names in self.kinds for c in names]

    def kind_of(self, concept: str) -> str:
        for kind, names in self.kinds:
            if concept in names:
                return kind
        raise InputError(f"'{concept}' is not in the {self.name} concept set; it has: {', '.join(self.concepts())}.")

    def grid(self) -> list[dict[str, str]]:
        """Every combination of one concept per kind, in a fixed order."""
        cells: list[dict[str, str]] = [{}]
        for kind, names in self.kinds:
            cells = [{**cell, kind: name} for cell in cells for name in names]
        return cells

    def prompt(self, cell: dict[str, str]) -> str:
        text = self.template.format(**{k: v.replace("_", " ") for k, v in cell.items()}, a="{a}")
        while "{a}" in text:  # the article agrees with the word after it
            head, _, tail = text.partition("{a}")
            text = head + _article(tail.strip()) + tail
        return " ".join(text.split())

    def select(self, wanted: str | Sequence[str] | None) -> list[str]:
        """'all' (or nothing) -> every concept; else the named ones, each checked."""
        if wanted is None or (isinstance(wanted, str) and wanted.strip().lower() in ("", "all")):
            return self.concepts()
        names = [w.strip() for w in (wanted.split(",") if isinstance(wanted, str) else wanted) if w.strip()]
        for name in names:
            self.kind_of(name)
        return list(dict.fromkeys(names))


def twin_concept_set(adapter) -> ConceptSet | None:
    """The concept set a twin's own vocabulary defines (None for a model without one, e.g. real SD)."""
    if adapter.family == "class-conditional":
        return ConceptSet("digits" if adapter.twin.get("dataset") == "sklearn-digits" else "classes",
                          (("object", tuple(adapter.concepts())),), "{object}", twin=True)
    vocabulary = getattr(adapter, "vocabulary", {})
    if vocabulary.get("objects") and vocabulary.get("attributes"):
        return ConceptSet(adapter.twin.get("name", "vocabulary"),
                          (("object", tuple(vocabulary["objects"])), ("style", tuple(vocabulary["attributes"]))),
                          "{a} {style} {object}", twin=True)
    return None


def read_concept_file(path: str | Path) -> ConceptSet:
    """A concept list: one per line, optionally 'object: NAME' / 'style: NAME' (bare names are objects),
    '#' comments, and an optional 'template: ...' line naming {object} / {style}."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the concept file '{path}': {exc}") from None
    kinds: dict[str, list[str]] = {}
    template = None
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        head, sep, rest = line.partition(":")
        if sep and head.strip().lower() == "template":
            template = rest.strip()
            continue
        kind, name = (head.strip().lower(), rest.strip()) if sep and head.strip().lower() in KINDS else ("object", line)
        if sep and head.strip().lower() not in KINDS and head.strip().lower() != "template":
            raise InputError(f"{path}:{number}: '{head.strip()}' is not a kind; write 'object: NAME', 'style: NAME' or a bare name.")
        if not name:
            raise InputError(f"{path}:{number}: the concept is empty.")
        kinds.setdefault(kind, [])
        if name not in kinds[kind]:
            kinds[kind].append(name)
    if not kinds:
        raise InputError(f"the concept file '{path}' names no concepts; write one per line.")
    if template is None:
        template = UNLEARNCANVAS_TEMPLATE if len(kinds) == 2 else ("a photo of {object}" if "object" in kinds else
                                                                    "a painting in {style} style")
    missing = [k for k in kinds if "{" + k + "}" not in template]
    if missing:
        raise InputError(f"the template '{template}' does not name {{{missing[0]}}}; every kind in the file must appear in it.")
    return ConceptSet(path.stem, tuple((k, tuple(kinds[k])) for k in KINDS if k in kinds), template)


def classifier_concept_set(classifier) -> ConceptSet:
    """UnlearnCanvas-style concepts read from a classifier's heads named 'object' and 'style'."""
    heads = dict(classifier.head_classes())
    kinds = tuple((k, tuple(heads[k])) for k in KINDS if k in heads)
    if not kinds:
        raise InputError(f"the classifier's heads are {', '.join(heads) or 'none'}; name them 'object' and / or 'style' "
                         "(or give the concepts with --concepts FILE).")
    return ConceptSet("classifier", kinds, UNLEARNCANVAS_TEMPLATE if len(kinds) == 2 else "{" + kinds[0][0] + "}")


@dataclass(frozen=True)
class GridPlan:
    """What every run is sampled on: the concept set's grid, k images per prompt, one sampler."""

    concept_set: ConceptSet
    samples_per_prompt: int
    num_inference_steps: int
    guidance_scale: float
    sampler: str = "ddim"
    batch_size: int = 32
    fid_real_per_prompt: int = 8  # real images per retained prompt for evaluator-FID (digits: its whole split)

    def sampling_seeds(self, seed: int) -> list[int]:
        """Seeds of the grid's images for protocol seed ``seed``: the same for every method and the original."""
        n = len(self.concept_set.grid()) * self.samples_per_prompt
        return [seed * 1_000_003 + i for i in range(n)]

    def cells(self) -> list[dict[str, str]]:
        """One entry per image: its grid cell (prompt i repeated k times)."""
        return [cell for cell in self.concept_set.grid() for _ in range(self.samples_per_prompt)]

    def context(self) -> dict:
        """What goes into every cell key besides the method's settings."""
        return {"protocol": PROTOCOL_VERSION, **asdict(self)}


# ---- recognising concepts in the grid's images ----------------------------------------------------------------

class Judge:
    """Says, per kind, whether each image still shows its prompt's concept of that kind."""

    name = ""

    def hits(self, images: torch.Tensor, targets: Sequence[str], kind: str) -> torch.Tensor:  # (B,) bool
        raise NotImplementedError


class ClassifierJudge(Judge):
    """An ImageClassifier (a twin's evaluator, or the user's folder in the same layout): the head holding the
    target's name decides; a classifier without heads is one head over ``class_names``."""

    def __init__(self, classifier, class_names: Sequence[str] | None = None, name: str = "evaluator"):
        self.classifier = classifier
        self.heads = classifier.head_classes() or [("class", list(class_names or classifier.config.class_names or []))]
        self.name = name

    @torch.no_grad()
    def hits(self, images: torch.Tensor, targets: Sequence[str], kind: str) -> torch.Tensor:
        logits = self.classifier.head_logits(images.to(self.classifier.device)) if self.classifier.config.heads else \
            {"class": self.classifier(images.to(self.classifier.device))}
        out = torch.zeros(len(targets), dtype=torch.bool)
        for head, names in self.heads:
            pred = logits[head].argmax(1).cpu()
            for i, target in enumerate(targets):
                if target in names:
                    out[i] = bool(pred[i] == names.index(target))
        return out


class ClipJudge(Judge):
    """CLIP zero-shot among the concepts of the same kind (real SD without a classifier)."""

    def __init__(self, concept_set: ConceptSet):
        self.by_kind = concept_set.by_kind
        self.name = "CLIP zero-shot among the concepts of the same kind"

    def hits(self, images: torch.Tensor, targets: Sequence[str], kind: str) -> torch.Tensor:
        from ..metrics.clip import zero_shot_hits

        return zero_shot_hits(images, list(targets), alternatives=list(self.by_kind[kind]))


def load_classifier(folder: str | Path, device: torch.device):
    """The user's classifier folder (ImageClassifier layout: config.json + safetensors weights)."""
    from ..models.evaluator import ImageClassifier

    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise InputError(f"'{folder}' holds no classifier (config.json + diffusion_pytorch_model.safetensors, as the twins' "
                         "evaluator/ folders); give such a folder.")
    try:
        model = ImageClassifier.from_pretrained(str(folder), use_safetensors=True).to(device).eval()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"could not load the classifier in '{folder}': {exc}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def make_judge(adapter, concept_set: ConceptSet, classifier: str | None) -> Judge:
    if classifier:
        return ClassifierJudge(load_classifier(classifier, adapter.device), name=f"classifier {Path(classifier).name}")
    evaluator = getattr(adapter, "evaluator", None)
    if evaluator is not None and (evaluator.config.heads or adapter.family == "class-conditional"):
        return ClassifierJudge(evaluator, adapter.concepts(), name="the twin's evaluator")
    from ..metrics.clip import clip_status

    status = clip_status()
    if not status.available:
        raise InputError(f"nothing can score this model's images: give a classifier folder (--classifier DIR) or CLIP weights "
                         f"({status.reason}; {status.how_to_enable}).")
    return ClipJudge(concept_set)


# ---- the arithmetic of a row ----------------------------------------------------------------------------------

def grid_hits(plan: GridPlan, judge: Judge, images: torch.Tensor) -> list[dict]:
    """Per grid prompt: its cell, its image count and, per kind, how many images the judge recognised."""
    cells = plan.cells()
    hits = {kind: judge.hits(images, [c[kind] for c in cells], kind) for kind in plan.concept_set.by_kind}
    k = plan.samples_per_prompt
    return [{"cell": cell, "n": k, "hits": {kind: int(h[g * k : (g + 1) * k].sum()) for kind, h in hits.items()}}
            for g, cell in enumerate(plan.concept_set.grid())]


def row_scores(grid: list[dict], concept: str, kind: str) -> dict:
    """UA, IRA, CRA of forgetting ``concept`` (of ``kind``) from per-prompt hit counts (see the module docstring)."""
    def share(entries, counted_kind, miss=False):
        n = sum(e["n"] for e in entries)
        if n == 0:
            return None
        k = sum(e["hits"][counted_kind] for e in entries)
        return (n - k) / n if miss else k / n

    target = [e for e in grid if e["cell"][kind] == concept]
    others = [e for e in grid if e["cell"][kind] != concept]
    other_kinds = [k for k in grid[0]["cell"] if k != kind]
    return {"ua": share(target, kind, miss=True), "ira": share(others, kind),
            "cra": share(grid, other_kinds[0]) if other_kinds else None,
            "n_forget": sum(e["n"] for e in target), "n_retain": sum(e["n"] for e in others)}


_REAL: dict = {}  # real image sets drawn for evaluator-FID, per (model, retained prompts): the same for every method


def retained_fid(adapter, plan: GridPlan, images: torch.Tensor, concept: str, kind: str) -> float | None:
    """Evaluator-FID of the images of prompts without ``concept`` against real images of those prompts."""
    evaluator = getattr(adapter, "evaluator", None)
    if evaluator is None:
        return None
    from ..metrics import evaluator_fid

    cells = plan.cells()
    keep = [i for i, c in enumerate(cells) if c[kind] != concept]
    targets = tuple(" ".join(c[k] for k in ("style", "object") if k in c) for c in plan.concept_set.grid() if c[kind] != concept)
    cache_key = (adapter.source, targets, plan.fid_real_per_prompt)
    if cache_key not in _REAL:  # the same real set for every method forgetting this concept
        if len(_REAL) >= 32:
            _REAL.pop(next(iter(_REAL)))
        _REAL[cache_key] = adapter.reference_images(list(targets), n_per=plan.fid_real_per_prompt, seed=12345)
    real = _REAL[cache_key]
    if real is None or len(keep) < 2 or len(real) < 2:
        return None
    return evaluator_fid(evaluator, real, images[keep])


# ---- one cell ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CellJob:
    """Everything a worker needs to run one cell; plain data, so it crosses processes and Ray tasks."""

    model: str
    device: str
    method: str  # a registered method, or ORIGINAL (the unedited model's grid: every concept's original row)
    concept: str  # "*" for ORIGINAL
    seed: int
    overrides: dict
    plan: GridPlan
    classifier: str | None = None
    keep_edit: bool = True
    edit_file: str | None = None  # an edit already in the store: measured again, not unlearned again
    edit: object | None = None  # the same, loaded (what a Ray task on another machine gets)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux: "5" resets the process's resident-set high-water mark (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")


def _peak_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports kB
    except (ImportError, OSError):
        return None


def prepare_cell(job: CellJob):
    """(prepared run, resolved settings dict) of a cell, validated like an app run; the ORIGINAL job has no run.

    The twins' own concept sets keep the app's default retain set (the other concepts of the same kind), so a cell
    is the very run another benchmark (or the app) makes for that concept; other sets preserve the concepts of the
    same kind named in the set."""
    from ..runner import RunRequest, prepare

    if job.method == ORIGINAL:
        return None, {}
    kind = job.plan.concept_set.kind_of(job.concept)
    preserve = None if job.plan.concept_set.twin else [c for c in job.plan.concept_set.by_kind[kind] if c != job.concept]
    request = RunRequest(model=job.model, method=job.method, forget=[job.concept], preserve=preserve, settings=dict(job.overrides),
                         seed=job.seed, device=job.device, forget_samples=1, retain_samples=1)
    run = prepare(request)
    return run, asdict(run.settings)


def unlearn_cell(run, device: torch.device) -> tuple[dict, object | None]:
    """Run the method; (cell record, Edit). A method error (e.g. a diverged loss) is the cell's result, stored."""
    from ..methods.base import RunContext

    _reset_peak(device)
    t0 = time.perf_counter()
    try:
        edit = run.spec.unlearn(run.adapter, run.task, run.settings, RunContext())
    except UnlearningError as exc:
        return {"status": "failed", "error": str(exc), "unlearn_s": time.perf_counter() - t0}, None
    return {"status": "done", "unlearn_s": time.perf_counter() - t0, "peak_mem_bytes": _peak_bytes(device),
            "edit_bytes": edit_bytes(edit), "last_step": edit.loss_log[-1] if edit.loss_log else None}, edit


def edit_bytes(edit) -> int:
    """Storage of an edit: bytes of its changed tensors."""
    return sum(t.numel() * t.element_size() for t in edit.params.values())


def measure_grid(adapter, plan: GridPlan, judge: Judge, unet, seed: int, concept: str) -> dict:
    """Sample the grid with ``unet`` and score it: the grid's hit counts, and the row's scores (every concept's FID
    for the original, ``concept == "*"``)."""
    from ..compare import ComparisonPlan, generate_plan

    seeds = plan.sampling_seeds(seed)
    comparison = ComparisonPlan(items=[("grid", plan.concept_set.prompt(c), s) for c, s in zip(plan.cells(), seeds, strict=True)],
                                num_inference_steps=plan.num_inference_steps, guidance_scale=plan.guidance_scale,
                                batch_size=plan.batch_size, sampler=plan.sampler)
    images, sample_s = generate_plan(adapter, unet, comparison)
    images = torch.stack(images)
    record = {"judge": judge.name, "sample_s": sample_s, "grid": grid_hits(plan, judge, images)}
    if concept == "*":
        record["fid"] = {c: retained_fid(adapter, plan, images, c, plan.concept_set.kind_of(c)) for c in plan.concept_set.concepts()}
    else:
        kind = plan.concept_set.kind_of(concept)
        record.update(row_scores(record["grid"], concept, kind), kind=kind, fid=retained_fid(adapter, plan, images, concept, kind))
    return record


def run_cell(job: CellJob) -> tuple[dict | None, dict | None, object | None]:
    """One cell: unlearn (unless ORIGINAL, or the edit is given), then sample and score the grid.

    Returns (cell record or None when nothing new was unlearned, measurement or None when unlearning failed,
    the new Edit to keep or None). Never writes: the caller stores, so Ray tasks on other machines work alike."""
    from ..edit import Edit
    from ..models.catalog import load_adapter

    adapter = load_adapter(job.model, job.device)
    run, settings = prepare_cell(job)
    judge = make_judge(adapter, job.plan.concept_set, job.classifier)
    where = {"device": str(adapter.device), "threads": torch.get_num_threads(), "settings": settings}
    cell, edit, new_edit = None, None, None
    if run is not None:
        edit = job.edit or (Edit.load(job.edit_file) if job.edit_file else None)
        if edit is None:
            cell, edit = unlearn_cell(run, adapter.device)
            cell.update(where)
            if edit is None:
                return cell, None, None
            new_edit = edit if job.keep_edit else None
    # the whole edit, as a run applies it: AdvUnlearn's is the text encoder's (or the digits' label encoder's)
    model, unet = adapter.edited(edit)
    measure = measure_grid(model, job.plan, judge, unet, job.seed, job.concept)
    return cell, {**measure, **where}, new_edit


def job_key(job: CellJob, model_id: str) -> CellKey:
    """The key of a job's cell (resolves the method's settings for the model, as the run will)."""
    from ..methods import get_method

    settings = {} if job.method == ORIGINAL else asdict(get_method(job.method).settings(model_id, dict(job.overrides)))
    return CellStore.key(model_id, job.method, job.concept, job.seed, settings)


# ---- executors -------------------------------------------------------------------------------------------------

def _set_threads(n: int) -> None:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)


def total_threads() -> int:
    return int(os.environ.get("UNLEARNING_THREADS") or torch.get_num_threads())


def run_cell_by_value(job: CellJob) -> tuple:
    """run_cell in a worker process, its result packed by ``pack_result``."""
    return pack_result(run_cell(job))


def pack_result(result: tuple) -> tuple:
    """run_cell's (cell, measure, edit) with the edit's tensors as safetensors bytes, to cross a process boundary by
    value. As tensors, torch's pickler hands each one to the parent as a shared-memory file descriptor; a long run
    (126 shapes-sd cells, VDU's whole-UNet edits among them) ran out of them and broke the pool ('received 0 items
    of ancdata')."""
    from safetensors.torch import save

    cell, measure, edit = result
    if edit is None:
        return cell, measure, None, None
    return cell, measure, replace(edit, params={}), save({n: t.contiguous() for n, t in edit.params.items()})


def unpack_result(packed: tuple) -> tuple:
    """``pack_result``'s inverse: (cell, measure, edit)."""
    from safetensors.torch import load

    cell, measure, edit, tensors = packed
    return cell, measure, (None if edit is None else replace(edit, params=load(tensors)))


def execute_local(jobs: Sequence[CellJob], workers: int = 1) -> Iterator[tuple[int, tuple]]:
    """Run cells in this process (workers = 1) or in ``workers`` spawned processes with the threads split between
    them; yields (index into ``jobs``, run_cell's result) as each finishes."""
    if workers <= 1:
        for i, job in enumerate(jobs):
            yield i, run_cell(job)
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    threads = max(1, total_threads() // workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_set_threads, initargs=(threads,))
    try:
        futures = {pool.submit(run_cell_by_value, job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            index = futures.pop(future)  # the result is not kept once the consumer has stored it
            yield index, unpack_result(future.result())
    finally:  # a consumer that stops early (cancel, error) drops the cells not yet started
        pool.shutdown(wait=True, cancel_futures=True)


def execute_ray(jobs: Sequence[CellJob], address: str | None = None, threads_per_task: int = 1) -> Iterator[tuple[int, tuple]]:
    """Each cell a Ray task (one GPU each where the cluster has GPUs), gathered as they finish.

    Without ``address`` a local Ray instance is started on this machine (and stopped at the end); with one, the
    cluster's workers need this package importable (installed, or on their PYTHONPATH) and the model reachable."""
    from ..edit import Edit

    try:
        import ray
    except ImportError:
        raise InputError("--executor ray needs the 'ray' package (pip install 'ray[default]').") from None
    started_here = not ray.is_initialized()
    pending: dict = {}
    if started_here:
        repo = str(Path(__file__).resolve().parents[2])
        env = {"PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p),
               "OMP_NUM_THREADS": str(threads_per_task), "MKL_NUM_THREADS": str(threads_per_task)}
        kwargs = {"address": address} if address else {"num_cpus": max(1, total_threads()), "include_dashboard": False}
        ray.init(runtime_env={"env_vars": env}, log_to_driver=False, logging_level=logging.WARNING, **kwargs)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        task = ray.remote(num_cpus=threads_per_task, num_gpus=1 if gpus else 0, max_retries=0)(_ray_cell)
        for i, job in enumerate(jobs):  # a stored edit travels with its task: the worker may not see this disk
            edit = Edit.load(job.edit_file) if job.edit_file else None
            pending[task.remote(replace(job, edit=edit, edit_file=None), threads_per_task)] = i
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                yield pending.pop(ref), ray.get(ref)
    finally:
        for ref in pending:  # a consumer that stops early drops the cells not yet finished
            ray.cancel(ref)
        if started_here:
            ray.shutdown()


def _ray_cell(job: CellJob, threads: int):
    _set_threads(threads)
    if job.device == "auto":  # a GPU task sees its own GPU as cuda:0
        job = replace(job, device="cuda" if torch.cuda.is_available() else "cpu")
    return run_cell(job)


# ---- the protocol ----------------------------------------------------------------------------------------------

@dataclass
class ProtocolConfig:
    model: str = "shapes-sd"
    methods: str | Sequence[str] = "all"
    concepts: str | Sequence[str] = "all"  # 'all', a list, or (real SD) a concept file
    seeds: int = 1
    first_seed: int = 0  # seeds first_seed .. first_seed + seeds - 1 (more seeds later, in another folder or machine)
    out: Path = Path("bench/results/protocol")
    jobs: int = 1
    overrides: dict[str, dict] = field(default_factory=dict)  # method -> {setting: value}
    executor: str = "local"  # "local" or "ray"
    address: str | None = None  # Ray cluster address (None: a local instance)
    device: str = "auto"
    samples_per_prompt: int | None = None  # None: 4 for two kinds (64 prompts), 16 for one
    num_inference_steps: int | None = None  # None: the model's default
    guidance_scale: float | None = None
    sampler: str = "ddim"
    classifier: str | None = None  # the user's classifier folder (real SD)
    keep_edits: bool = True  # store every cell's edit beside its record (for attacks that reuse the cells)


@dataclass
class Protocol:
    """A resolved protocol: what to run and where its cells live."""

    config: ProtocolConfig
    model_id: str
    family: str
    plan: GridPlan
    methods: list[str]
    concepts: list[str]
    seeds: list[int]
    store: CellStore
    judge: str

    @property
    def measure(self) -> str:
        """The file name of this protocol's measurement in each cell (its sampling plan and judge hashed)."""
        return "protocol-" + settings_hash(self.model_id, "protocol", {**self.plan.context(), "judge": self.judge,
                                                                      "classifier": self.config.classifier})

    def cell_keys(self) -> list[CellKey]:
        return [job_key(job, self.model_id) for job in self.jobs()]

    def stored(self, key: CellKey) -> tuple[dict | None, dict | None]:
        """(cell.json, this protocol's measurement) of a cell, each None when missing."""
        return self.store.get(key), self.store.get_measure(key, self.measure)

    def jobs(self) -> list[CellJob]:
        """The original's job per seed first, then every (method, concept, seed), in table order."""
        c = self.config
        make = lambda m, concept, s: CellJob(c.model, c.device, m, concept, s, dict(c.overrides.get(m, {})), self.plan,  # noqa: E731
                                             c.classifier, c.keep_edits)
        return [make(ORIGINAL, "*", s) for s in self.seeds] + [
            make(m, concept, s) for m in self.methods for concept in self.concepts for s in self.seeds]


def applicable_methods(family: str) -> list[str]:
    from ..methods import METHODS

    return [name for name, spec in METHODS.items() if family in spec.families]


def resolve_protocol(config: ProtocolConfig) -> Protocol:
    """Check everything (model, methods, concepts, settings, the judge) before any cell runs."""
    from ..methods import get_method
    from ..models.catalog import load_adapter, resolve

    if config.seeds < 1:
        raise InputError("--seeds must be at least 1.")
    if config.first_seed < 0:
        raise InputError("--first-seed must be 0 or more.")
    if config.jobs < 1:
        raise InputError("--jobs must be at least 1.")
    if config.executor not in ("local", "ray"):
        raise InputError(f"unknown executor '{config.executor}'; use local or ray.")
    model_id, _, family = resolve(config.model)
    adapter = load_adapter(config.model, config.device)
    concepts_arg = config.concepts
    if isinstance(concepts_arg, str) and concepts_arg.strip().lower() not in ("", "all") and Path(concepts_arg).expanduser().is_file():
        concept_set, wanted = read_concept_file(Path(concepts_arg).expanduser()), "all"
    else:
        concept_set, wanted = twin_concept_set(adapter), concepts_arg
        if concept_set is None and config.classifier:
            concept_set = classifier_concept_set(load_classifier(config.classifier, adapter.device))
        if concept_set is None:
            raise InputError(f"'{config.model}' has no concept vocabulary: give the concepts as a file (--concepts FILE, one per "
                             "line, 'object: NAME' / 'style: NAME') or a classifier folder with 'object' / 'style' heads "
                             "(--classifier DIR).")
    concepts = concept_set.select(wanted)
    for concept in concept_set.concepts():
        adapter.validate_concept(concept)
    judge = make_judge(adapter, concept_set, config.classifier)
    allowed = applicable_methods(family)
    methods_arg = config.methods
    if isinstance(methods_arg, str) and methods_arg.strip().lower() in ("", "all"):
        methods = allowed
    else:
        names = [m.strip() for m in (methods_arg.split(",") if isinstance(methods_arg, str) else methods_arg) if m.strip()]
        methods = [get_method(m).name for m in names]
        if bad := [m for m in methods if m not in allowed]:
            raise InputError(f"{', '.join(bad)} cannot run on {family} models; applicable: {', '.join(allowed)}.")
    if unknown := sorted(set(config.overrides) - set(methods)):
        raise InputError(f"--set names method(s) {', '.join(unknown)} that are not in this protocol ({', '.join(methods)}).")
    for m in methods:
        get_method(m).settings(model_id, dict(config.overrides.get(m, {})))  # unknown / bad settings fail now
    two_kinds = len(concept_set.kinds) > 1
    k = (4 if two_kinds else 16) if config.samples_per_prompt is None else int(config.samples_per_prompt)
    if k < 1:
        raise InputError("--samples-per-prompt must be at least 1.")
    from ..models.base import SAMPLERS

    if config.sampler not in SAMPLERS:
        raise InputError(f"unknown sampler '{config.sampler}'; choose one of {', '.join(SAMPLERS)}.")
    plan = GridPlan(concept_set, k, config.num_inference_steps or adapter.sampling.num_inference_steps,
                    adapter.sampling.guidance_scale if config.guidance_scale is None else float(config.guidance_scale),
                    config.sampler)
    return Protocol(config, model_id, family, plan, methods, concepts, list(range(config.first_seed, config.first_seed + config.seeds)),
                    CellStore(Path(config.out) / "cells"), judge.name)


@dataclass
class Progress:
    done: int  # cells finished (stored before this run included)
    total: int
    job: CellJob | None  # the cell that just finished (None: the first report)
    record: dict | None
    elapsed_s: float
    eta_s: float | None


def run_protocol(protocol: Protocol, on_progress: Callable[[Progress], None] | None = None, quiet: bool = False,
                 cancel: threading.Event | None = None) -> dict:
    """Run every missing cell (stored ones are reused), storing each as it finishes; returns the results.

    A cell whose edit is stored (by an earlier protocol, or another benchmark's run of the same settings) is only
    sampled and scored again. On a terminal a progress bar with the ETA (tqdm); otherwise one line per cell (unless
    ``quiet``). Setting ``cancel`` stops after the cells in progress (they are stored); a rerun continues there."""
    from tqdm import tqdm

    jobs, keys = protocol.jobs(), protocol.cell_keys()
    todo = []
    for job, key in zip(jobs, keys, strict=True):
        cell, measure = protocol.stored(key)
        if (cell or {}).get("status") == "failed" or measure is not None:
            continue  # a method's failure is its result; a measured cell is done
        edit_file = protocol.store.edit_path(key)
        todo.append((replace(job, edit_file=str(edit_file) if edit_file.is_file() else None), key))
    done0 = len(jobs) - len(todo)
    config = protocol.config
    started = time.perf_counter()
    bar = tqdm(total=len(jobs), initial=done0, desc="protocol", unit="cell", file=sys.stderr, dynamic_ncols=True) \
        if not quiet and sys.stderr.isatty() else None
    if not quiet and bar is None:
        print(f"protocol: {done0} of {len(jobs)} cells already stored, {len(todo)} to run", file=sys.stderr, flush=True)
    if on_progress:
        on_progress(Progress(done0, len(jobs), None, None, 0.0, None))
    pending = [job for job, _ in todo]
    if config.executor == "ray":
        stream = execute_ray(pending, config.address, threads_per_task=max(1, total_threads() // max(1, config.jobs)))
    else:
        stream = execute_local(pending, config.jobs)
    for finished, (index, (cell, measure, edit)) in enumerate(stream, 1):
        job, key = todo[index]
        if cell is None and job.method != ORIGINAL and protocol.store.get(key) is None:  # an edit stored without its cell.json
            cell = reused_cell(protocol.store.load_edit(key), measure)
        if cell is not None:
            protocol.store.put(key, cell, edit)
        if measure is not None:
            protocol.store.put_measure(key, protocol.measure, measure)
        elapsed = time.perf_counter() - started
        eta = elapsed / finished * (len(todo) - finished)
        where = f"{job.method} / {job.concept} / seed {job.seed}"
        if bar is not None:
            bar.set_postfix_str(where, refresh=False)
            bar.update(1)
        elif not quiet:
            status = "failed: " + cell["error"] if cell and cell.get("status") == "failed" else "done"
            scores = "".join(f", {m.upper()} {measure[m]:.2f}" for m in ("ua", "ira", "cra") if measure and measure.get(m) is not None)
            print(f"  [{done0 + finished}/{len(jobs)}] {where}: {status}{scores}"
                  f"  ({elapsed / 60:.1f} min, ETA {eta / 60:.1f} min)", file=sys.stderr, flush=True)
        if on_progress:
            on_progress(Progress(done0 + finished, len(jobs), job, {**(cell or {}), **(measure or {})}, elapsed, eta))
        if cancel is not None and cancel.is_set():
            stream.close()
            break
    if bar is not None:
        bar.close()
    return collect(protocol, elapsed_s=time.perf_counter() - started)


def reused_cell(edit, measure: dict) -> dict:
    """cell.json for an edit found without one (made by another benchmark's run): its own recorded unlearning time,
    its size; the peak memory was not measured."""
    return {"status": "done", "unlearn_s": (edit.timings or {}).get("unlearn_s"), "peak_mem_bytes": None,
            "edit_bytes": edit_bytes(edit), "last_step": edit.loss_log[-1] if edit.loss_log else None,
            "device": measure.get("device"), "threads": None, "settings": measure.get("settings"), "reused": True}


# ---- results: rows, summary, files -------------------------------------------------------------------------------

def collect(protocol: Protocol, elapsed_s: float | None = None) -> dict:
    """protocol.json's content from the cells stored so far (missing cells are listed, not guessed)."""
    rows, failed, missing = [], [], []
    originals: dict[int, dict] = {}
    for job, key in zip(protocol.jobs(), protocol.cell_keys(), strict=True):
        cell, measure = protocol.stored(key)
        if (cell or {}).get("status") == "failed":
            failed.append({"method": job.method, "concept": job.concept, "seed": job.seed, "error": cell.get("error")})
        elif measure is None or (job.method != ORIGINAL and cell is None):
            missing.append({"method": job.method, "concept": job.concept, "seed": job.seed})
        elif job.method == ORIGINAL:
            originals[job.seed] = measure
        else:
            rows.append({**cell, **measure, "method": job.method, "concept": job.concept, "seed": job.seed})
    kind_of = protocol.plan.concept_set.kind_of
    original_rows = []
    for seed, record in sorted(originals.items()):
        for concept in protocol.concepts:
            scores = row_scores(record["grid"], concept, kind_of(concept))
            original_rows.append({"method": ORIGINAL, "concept": concept, "seed": seed, **scores, "fid": record["fid"].get(concept),
                                  "unlearn_s": None, "peak_mem_bytes": None, "edit_bytes": None, "kind": kind_of(concept)})
    return {
        "model": protocol.model_id,
        "rows": [{k: r.get(k) for k in ROW_KEYS} for r in rows],
        "summary": summarise(rows),
        "original": {"rows": [{k: r.get(k) for k in ROW_KEYS} for r in original_rows], "summary": summarise(original_rows)},
        "by_kind": {kind: summarise([r for r in rows if kind_of(r["concept"]) == kind])
                    for kind in protocol.plan.concept_set.by_kind},
        "failed": failed,
        "missing": missing,
        "protocol": {
            "version": PROTOCOL_VERSION, "methods": protocol.methods, "concepts": protocol.concepts, "seeds": protocol.seeds,
            "concept_set": protocol.plan.concept_set.name, "kinds": protocol.plan.concept_set.by_kind,
            "template": protocol.plan.concept_set.template, "samples_per_prompt": protocol.plan.samples_per_prompt,
            "num_inference_steps": protocol.plan.num_inference_steps, "guidance_scale": protocol.plan.guidance_scale,
            "sampler": protocol.plan.sampler, "judge": protocol.judge, "executor": protocol.config.executor,
            "jobs": protocol.config.jobs,
            "settings": {m: next((r["settings"] for r in rows if r["method"] == m), None) for m in protocol.methods},
            "cell_seconds_total": sum((r.get("unlearn_s") or 0) + (r.get("sample_s") or 0) for r in rows),
            "elapsed_s": elapsed_s,
            "cra": "kind-K' head accuracy on every grid image (forgotten concept's included), as UnlearnCanvas counts it",
            "memory": "peak resident set of the process during unlearning (CPU) / torch.cuda.max_memory_allocated (GPU)",
        },
    }
