"""Handlers behind the Gradio app. ``app.py`` lays out components and wires them to these.

Every handler is a plain function of plain values, so it can be tested without a browser.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .config import get_profile
from .errors import UnlearningError
from .images import side_by_side
from .methods import METHODS, get_method
from .methods.base import settings_fields
from .models.catalog import CATALOG, load_adapter, resolve
from .report import metrics_rows
from .run import RunRequest, execute, prepare
from .runs import group_grid, new_run_folder, prune_runs, zip_run

log = logging.getLogger(__name__)

ERASE = "(none: erase)"
UPDATE_EVERY_S = 0.4  # at most this often a streamed update reaches the browser

INTRO = """
**Machine unlearning** removes one concept from a trained generative model (here: one digit from a
model that draws handwritten digits) while keeping everything else it can do. Pick a concept and a
method, press **Unlearn**, and compare: every image pair below comes from the *same seed and the
same starting noise* through the original (top row) and the unlearned model (bottom row), so any
difference is the edit and nothing else. A separate classifier (the *evaluator*) scores how often
the forgotten concept still appears and whether the others are still drawn correctly.
"""

LOSS_EMPTY = pd.DataFrame({"step": pd.Series([], dtype=float), "loss": pd.Series([], dtype=float), "series": pd.Series([], dtype=str)})


# ---- choices --------------------------------------------------------------------------------------

def model_choices() -> list[tuple[str, str]]:
    allowed = get_profile().models
    return [(e.label, e.id) for e in CATALOG.values() if not allowed or e.id in allowed]


def method_choices() -> list[tuple[str, str]]:
    allowed = get_profile().methods
    return [(s.label, s.name) for s in METHODS.values() if allowed is None or s.name in allowed]


def concept_choices(model: str) -> list[str]:
    try:
        model_id, path, family = resolve(model)
    except UnlearningError:
        return []
    if model_id in CATALOG and family == "class-conditional":
        import json

        meta = json.loads((path / "label_encoder" / "config.json").read_text())
        return list(meta.get("class_names") or [str(i) for i in range(meta["num_classes"])])
    return load_adapter(model, "cpu").concepts()


def model_markdown(model: str) -> str:
    entry = CATALOG.get(model)
    return entry.description if entry else ""


def sampling_defaults(model: str) -> tuple[int, float]:
    """The model's default (sampling steps, guidance scale), to pre-fill the form.

    Gradio 6 shows a ``gr.Number(None)`` as 0 and sends 0, so "leave it empty for the default" would
    silently ask for 0 steps / guidance 0; the form shows the real defaults instead. Reads the same
    ``twin.json`` the adapter reads, without loading the model.
    """
    from .models.base import SamplingDefaults, read_twin

    try:
        _, path, _ = resolve(model)
        defaults = SamplingDefaults.from_twin(read_twin(path))
    except (UnlearningError, OSError, ValueError):
        defaults = SamplingDefaults()
    return int(defaults.num_inference_steps), float(defaults.guidance_scale)


def method_markdown(method: str) -> str:
    spec = get_method(method)
    return f"{spec.summary}  \n*{spec.citation}*"


@dataclass(frozen=True)
class SettingControl:
    """One generated control: which method and field it sets."""

    method: str
    name: str
    kind: str  # "number" | "int" | "choice" | "bool"
    value: Any
    label: str
    info: str
    choices: tuple | None = None


def setting_controls(model_id: str) -> list[SettingControl]:
    """Controls for every method's settings, built from the settings dataclasses."""
    out = []
    for spec in METHODS.values():
        fields = {f.name: f for f in settings_fields(spec.settings_cls)}
        for row in spec.describe(model_id):
            f = fields[row["name"]]
            kind = "choice" if row.get("choices") else {"bool": "bool", "int": "int"}.get(row["type"], "number")
            paper = f"paper: {row['paper']}" + (f"; tuned for {model_id}" if row["tuned"] else "")
            out.append(SettingControl(spec.name, f.name, kind, row["value"], f.name, f"{row['help']} ({paper})", row.get("choices")))
    return out


# ---- the run ------------------------------------------------------------------------------------

@dataclass
class Outputs:
    """What one streamed update sets; None leaves a component as it is."""

    status: str | None = None
    loss: pd.DataFrame | None = None
    forget_grid: Any = None
    retain_grid: Any = None
    metrics: list[list[str]] | None = None
    pairs: dict | None = None  # pair label -> (original PIL, unlearned PIL)
    download: str | None = None
    extras: dict = field(default_factory=dict)


def loss_frame(loss_log: list[dict]) -> pd.DataFrame:
    rows = [{"step": e["step"], "loss": e["loss"], "series": "loss"} for e in loss_log]
    for key in ("forget_loss", "retain_loss", "remap_loss", "relabel_loss", "stability"):
        rows += [{"step": e["step"], "loss": e[key], "series": key.replace("_", " ")} for e in loss_log if key in e]
    return pd.DataFrame(rows) if rows else LOSS_EMPTY


def parse_request(model: str, forget: list[str] | str | None, anchor: str | None, method: str, seed: float | None,
                  forget_samples: float | None, retain_samples: float | None, steps: float | None,
                  guidance: float | None, device: str, settings: dict[str, Any]) -> RunRequest:
    def whole(value, name: str) -> int | None:
        if value is None:
            return None
        number = float(value)
        if not math.isfinite(number) or number != int(number):  # int(nan) / int(inf) would raise a bare ValueError
            from .errors import InputError

            raise InputError(f"{name} must be a whole number, got {value}.")
        return int(number)

    forget_list = [forget] if isinstance(forget, str) else list(forget or [])
    return RunRequest(
        model=model, method=method, forget=forget_list, anchor=None if anchor in (None, "", ERASE) else anchor,
        settings=settings, seed=whole(seed, "seed") or 0, device=device or "auto",
        forget_samples=whole(forget_samples, "forget samples") or 16, retain_samples=whole(retain_samples, "retain samples") or 4,
        num_inference_steps=whole(steps, "sampling steps"), guidance_scale=guidance,
    )


def run_stream(request: RunRequest, cancel: threading.Event | None = None, progress=None) -> Iterator[Outputs]:
    """Prepare, unlearn and compare, yielding UI updates; errors become a status message."""
    try:
        yield Outputs(status="Checking the request and loading the model…", loss=LOSS_EMPTY, metrics=[], pairs={})
        run = prepare(request)
        profile = get_profile()
        device = f"{run.adapter.device} ({str(run.adapter.dtype).replace('torch.', '')})"
        head = f"**{run.spec.label}** on **{run.model_id}**, forgetting **{', '.join(run.task.forget)}** · device {device}"
        folder = new_run_folder(profile.runs.dir, run.model_id, run.spec.name)
        last = 0.0
        shown = (0, 0)  # forget / retain samples in the grids already sent
        for event in execute(run, out_dir=folder, cancel=cancel):
            now = time.perf_counter()
            if event.kind == "train":
                s = event.step
                if progress is not None:
                    progress((s.step, s.total), desc=f"unlearning: step {s.step}/{s.total}")
                if now - last >= UPDATE_EVERY_S or s.step == s.total:
                    last = now
                    yield Outputs(status=f"{head}  \nUnlearning: step {s.step} / {s.total}, loss {s.loss:.4f}", loss=loss_frame(event.loss_log))
            elif event.kind == "edit":
                yield Outputs(status=f"{head}  \nUnlearning done in {event.edit.timings['unlearn_s']:.1f} s "
                              f"({event.edit.summary()['changed_values']:,} weights changed). Sampling both models…",
                              loss=loss_frame(event.loss_log))
            elif event.kind in ("compare", "done"):
                st = event.state
                if progress is not None and event.kind == "compare":
                    progress((len(st.original), len(st.plan.items)), desc="sampling original and unlearned")
                out = Outputs(metrics=metrics_rows(st.metrics))
                # Send a grid only when it changed: Gradio caches images by content, and re-sending an
                # identical one rewrites the file the browser may be downloading at that moment.
                counts = (len(st.indices("forget")), len(st.indices("retain")))
                forget_grid, retain_grid = grids(run, st, changed=(counts[0] != shown[0], counts[1] != shown[1]))
                out.forget_grid, out.retain_grid, shown = forget_grid, retain_grid, counts
                if event.kind == "compare":
                    out.status = f"{head}  \nSampling: {len(st.original)} / {len(st.plan.items)} pairs (same seeds for both models)…"
                else:
                    # The final grids come from the run folder: the same pictures under another file name,
                    # so Gradio's cache never rewrites a file the browser is still downloading.
                    out.forget_grid = str(event.folder / "images" / "forget_grid.png")
                    out.retain_grid = str(event.folder / "images" / "retain_grid.png")
                    out.pairs = pair_images(st)
                    out.download = str(zip_run(event.folder))
                    m = st.metrics
                    fr = m.get("forget_rate", {})
                    summary = (f"forget rate {fr['original']:.2f} → {fr['unlearned']:.2f}" if "original" in fr else "")
                    out.status = f"{head}  \n**Done.** {summary}. Run folder: `{event.folder}`"
                    prune_runs(profile.runs.dir, profile.runs.keep)
                yield out
    except UnlearningError as exc:
        yield Outputs(status=f"**Could not run:** {exc}")
    except Exception as exc:  # a bug: say so plainly, keep the traceback in the log
        log.exception("run failed")
        yield Outputs(status=f"**Internal error** ({type(exc).__name__}: {exc}). This is a bug; the base model is unchanged.")


def grids(run, state, changed: tuple[bool, bool] = (True, True)) -> tuple[Any, Any]:
    """(forget grid, retain grid) as PIL images; None for a group that is empty or not ``changed``."""
    return tuple(group_grid(run, state, g) if c else None for g, c in zip(("forget", "retain"), changed, strict=True))


def pair_images(state) -> dict:
    return {
        f"{group} · {concept} · seed {seed}": side_by_side(state.original[i], state.unlearned[i])
        for i, (group, concept, seed) in enumerate(state.plan.items)
    }


def settings_from_controls(method: str, controls: list[SettingControl], values: list[Any]) -> dict[str, Any]:
    """The selected method's settings from the generated controls' values."""
    return {c.name: v for c, v in zip(controls, values, strict=True) if c.method == method}

