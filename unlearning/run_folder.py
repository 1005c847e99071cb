"""Run folders: everything needed to look at, share and reproduce one run.

    run.json          the run card: request, every setting, seeds, model, versions, timings
    metrics.json      the metrics table's numbers
    edit.safetensors  the changed parameters only (see unlearning.edit)
    loss.json         the loss log
    images/           forget_grid.png, retain_grid.png, original/*.png, unlearned/*.png; for a novel-view model the
                      grids are multi-view (per input and seed: the input view, then its views around the object;
                      original row above unlearned row) and inputs/*.png holds the input views
                      (a family with its own comparison view writes its files instead: for language models
                      continuations.json and questions.json, per scored question whether each model got it right)

A folder is built beside its destination and renamed into place, so a reader never sees half a run.

Ownership (hosted profiles): run.json's ``owner`` is a hash of the browser (or session) id that made the run
(None from the CLI); an empty file ``shared`` in the folder means its owner shared it with every visitor.
Retention (:func:`prune_runs`) never deletes a run that is *held*: open in someone's browser, being exported or
downloaded, or under a relearning test (:func:`hold`, renewed on every use, forgotten after ``HOLD_S``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import torch
from PIL import Image

from .atomic import atomic_dir, zip_dir
from .compare import ComparisonState
from .edit import Edit
from .errors import InputError
from .images import pair_grid, to_pil
from .models.novel_view import concept_label

RUN_FILES = ("run.json", "metrics.json", "edit.safetensors", "loss.json", "images")
SHARED_MARK = "shared"  # an empty file: the run's owner shared it with every visitor of a hosted instance
HOLD_S = 3600.0  # a run opened, exported or downloaded is kept at least this long after its last use


def owner_tag(viewer: str | None) -> str | None:
    """What run.json stores of the browser / session id that made a run: a hash, never the id itself."""
    return hashlib.sha256(viewer.encode()).hexdigest()[:24] if viewer else None


_holds: dict[str, float] = {}  # resolved folder path -> monotonic time its hold ends
_holds_lock = threading.Lock()


def hold(folder: Path, seconds: float = HOLD_S) -> None:
    """Keep ``folder`` out of retention for ``seconds`` from now (someone has it open or is downloading it)."""
    with _holds_lock:
        _holds[str(Path(folder).resolve())] = time.monotonic() + seconds


def held() -> set[str]:
    """Resolved paths of the run folders that retention must not delete now."""
    now = time.monotonic()
    with _holds_lock:
        for key in [k for k, end in _holds.items() if end <= now]:
            del _holds[key]
        return set(_holds)


def check_writable(out: Path) -> None:
    """Refuse early: an output folder we could not write, or one holding something other than a run."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"output '{out}' is a file; give a folder.")
    if out.exists() and any(out.iterdir()) and not (out / "run.json").exists():
        raise InputError(f"output folder '{out}' is not empty and holds no earlier run; choose an empty or new folder.")
    # write_run_folder builds the run beside `out`, creating missing parents: probe the nearest one that exists.
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"output folder '{out}' cannot be written: '{parent}' is a file, not a folder; choose another folder (--out).")
    try:  # os.access says yes to root everywhere, and knows nothing of /proc or full disks: try it
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise InputError(f"output folder '{out}' is not writable ({exc.strerror or exc}); choose another folder (--out).") from None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "diffusers", "transformers", "accelerate", "gradio", "torchmetrics", "lpips", "safetensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    try:
        root = Path(__file__).resolve().parents[1]
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            out["unlearning_lab_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def run_card(run, edit: Edit, state: ComparisonState, owner: str | None = None) -> dict:
    """Every setting needed to reproduce the run (``run`` is a PreparedRun); ``owner``: the browser / session id
    that made it (stored hashed; None from the CLI)."""
    return {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "owner": owner_tag(owner),
        "request": dataclasses.asdict(run.request),
        "model": run.adapter.describe(),
        "method": {"name": run.spec.name, "label": run.spec.label, "citation": run.spec.citation},
        "settings": dataclasses.asdict(run.settings),
        "task": dataclasses.asdict(run.task),
        "comparison": run.view.card(run.plan) if getattr(run, "view", None) is not None else {
            "num_inference_steps": run.plan.num_inference_steps,
            "guidance_scale": run.plan.guidance_scale,
            "sampler": "DDIM, eta = 0, initial noise drawn on CPU per seed",
            "seeds": run.plan.seeds,
            **({"input_polar": run.plan.input_polar, "azimuths": sorted(set(run.plan.azimuths))} if run.plan.azimuths else {}),
        },
        "edit": edit.summary(),
        "timings": state.metrics.get("timings", {}),
        "versions": versions(),
        "reproduce": reproduce_command(run),
    }


def reproduce_command(run) -> str:
    """The CLI line that repeats a run (``run`` is a PreparedRun): its concepts, seed, every setting."""
    task, request = run.task, run.request
    parts = ["python -m unlearning run", f"--model {shlex.quote(str(request.model))}", f"--method {run.spec.name}",
             f"--forget {shlex.quote(','.join(task.forget))}"]
    if task.anchor is not None:
        parts.append(f"--anchor {shlex.quote(task.anchor)}")
    if request.preserve:
        parts.append(f"--preserve {shlex.quote(','.join(task.retain))}")
    if task.input_polar is not None:
        parts.append(f"--input-polar {task.input_polar:g}")
    if request.sampling_skips:
        parts.append(f"--sampling-skips {','.join(map(str, request.sampling_skips))}")
    parts.append(f"--seed {task.seed}")
    parts += [f"--set {shlex.quote(f'{k}={v}')}" for k, v in dataclasses.asdict(run.settings).items()]
    return " ".join(parts)


def write_run_folder(out: Path, run, edit: Edit, state: ComparisonState, owner: str | None = None) -> Path:
    out = Path(out)
    check_writable(out)
    with atomic_dir(out, replace=True) as tmp:  # replaces an earlier run in the same folder
        (tmp / "run.json").write_text(json.dumps(run_card(run, edit, state, owner), indent=2, default=str) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(state.metrics, indent=2, default=str) + "\n")
        (tmp / "loss.json").write_text(json.dumps(edit.loss_log) + "\n")
        edit.save(tmp / "edit.safetensors")
        if getattr(run, "view", None) is not None:  # a family with its own view writes its own files
            run.view.write(tmp, run.plan, state)
            return out
        images = tmp / "images"
        for group in ("forget", "retain", "prompt"):
            grid = group_grid(run, state, group)
            if grid is not None:
                images.mkdir(exist_ok=True)
                grid.save(images / f"{group}_grid.png")
        index = []  # what each image pair is: images/index.json
        for i, (group, prompt, seed) in enumerate(run.plan.items):
            view = f"_az{run.plan.azimuths[i]:03.0f}" if run.plan.azimuths else ""
            name = f"{i:03d}_{group}_{_safe(prompt)}_seed{seed}{view}.png"
            entry = {"group": group, "prompt": prompt, "target": run.plan.target(i), "seed": seed, "file": name}
            if run.plan.azimuths:
                entry["azimuth"] = run.plan.azimuths[i]
            index.append(entry)
            for which in ("original", "unlearned"):
                (images / which).mkdir(parents=True, exist_ok=True)
                to_pil(getattr(state, which)[i]).save(images / which / name)
        if run.plan.azimuths:
            (images / "inputs").mkdir()
            inputs = {}
            for concept in dict.fromkeys([*run.task.forget, *run.task.retain, *filter(None, [run.task.anchor])]):
                inputs[concept] = f"inputs/{_safe(concept_label(concept))}.png"
                to_pil(input_view(run, concept)).save(images / inputs[concept])
            for entry in index:
                entry["input"] = inputs[entry["prompt"]]  # a view plan's prompt is its input concept
        (images / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return out


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)[:60]


def input_view(run, concept: str):
    """A novel-view run's input view of a concept, (3, H, W) in [0, 1]."""
    return run.adapter.input_view(concept, run.task.input_polar)[0][0]


def group_grid(run, state: ComparisonState, group: str) -> Image.Image | None:
    """The pair grid of one group ("forget" | "retain" | "prompt"), as the UI shows it and the run folder saves it.

    Forget samples and the user's own prompts: up to 8 per row. Retained samples: one column per concept,
    one row pair per seed. None while the group has no samples yet.
    """
    idx = state.indices(group)
    if not idx:
        return None
    if run.plan.azimuths:
        return view_grid(run, state, idx)
    if group != "retain":
        order, columns = idx, min(8, len(idx))
    else:
        items, plan = run.plan.items, run.plan
        order = sorted(idx, key=lambda i: (plan.seeds[f"retain:{items[i][1]}"].index(items[i][2]),
                                           run.task.retain.index(plan.target(i))))
        columns = len(run.task.retain)
    return pair_grid([state.original[i] for i in order], [state.unlearned[i] for i in order], columns)


def view_grid(run, state: ComparisonState, idx: list[int]) -> Image.Image:
    """A multi-view grid of a view plan's items ``idx``: per (input, seed) a block whose first column is the input
    view and the others its views around the object, original row above unlearned row."""
    blocks: dict[tuple[str, int], list[int]] = {}
    for i in idx:
        blocks.setdefault((run.plan.items[i][1], run.plan.items[i][2]), []).append(i)
    columns = 1 + max(len(b) for b in blocks.values())
    original, unlearned = [], []
    for (concept, _), items in blocks.items():
        pad = [torch.ones_like(state.original[items[0]])] * (columns - 1 - len(items))  # a block still being generated
        inputs = state.extra.setdefault("input_views", {})
        inp = inputs[concept] = inputs[concept] if concept in inputs else input_view(run, concept)
        original += [inp, *(state.original[i] for i in items), *pad]
        unlearned += [inp, *(state.unlearned[i] for i in items), *pad]
    return pair_grid(original, unlearned, columns)


def zip_run(folder: Path) -> Path:
    """A zip of the run folder next to it (for the UI's download button); the run is held while it is fetched."""
    hold(folder)
    return zip_dir(folder, Path(folder).with_suffix(".zip"))


def new_run_folder(root: Path, model: str, method: str) -> Path:
    """A fresh, unique folder name under ``root`` (not created: write_run_folder makes it)."""
    import uuid

    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    safe_model = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(model).name)[:40]
    return Path(root) / f"{stamp}-{safe_model}-{method}-{uuid.uuid4().hex[:6]}"


def prune_runs(root: Path, keep: int, max_bytes: int | None = None) -> list[Path]:
    """Delete the oldest run folders (and their zips) beyond ``keep`` folders or ``max_bytes`` in all;
    the newest run and every held run (:func:`hold`) are always kept. Returns the deleted folders."""
    root = Path(root)
    if not root.is_dir():
        return []
    keep_now = held()
    runs = sorted((p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and (p / "run.json").exists()),
                  key=lambda p: p.stat().st_mtime)
    candidates = [p for p in runs[:-1] if str(p.resolve()) not in keep_now]  # oldest first; never the newest or a held one
    doomed = candidates[: max(0, len(runs) - keep)]
    if max_bytes is not None:
        sizes = {p: _run_bytes(p) for p in runs}
        total = sum(sizes.values()) - sum(sizes[p] for p in doomed)
        for folder in candidates[len(doomed):]:
            if total <= max_bytes:
                break
            doomed.append(folder)
            total -= sizes[folder]
    for old in doomed:
        shutil.rmtree(old, ignore_errors=True)
        old.with_suffix(".zip").unlink(missing_ok=True)
    return doomed


def _run_bytes(folder: Path) -> int:
    """Bytes of a run folder and its zip."""
    zipped = folder.with_suffix(".zip")
    files = [f for f in folder.rglob("*") if f.is_file()] + ([zipped] if zipped.is_file() else [])
    return sum(f.stat().st_size for f in files)
