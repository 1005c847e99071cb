"""The "Runs" tab: earlier runs read back from their run folders, one reopened, two compared side by side.

Handlers are plain functions of plain values (testable without a browser); :func:`build_runs_tab`
lays out the tab and wires it, called once from ``app.py`` inside its ``gr.Tabs()``.

Only folders directly under the profile's ``runs.dir`` that hold a ``run.json`` are listed, and a run
is reopened by its folder *name* from that list, never by a path a client sends.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .config import get_profile
from .errors import InputError
from .report import METRIC_HEADERS, metrics_rows

log = logging.getLogger(__name__)

RUN_HEADERS = ["run", "created", "model", "method", "forgot", "forget rate", "retain accuracy", "unlearning (s)"]


@dataclass
class RunSummary:
    name: str  # the folder's name under runs.dir
    card: dict  # run.json
    metrics: dict  # metrics.json ({} if absent)

    def row(self) -> list[str]:
        request, fr, ra = self.card.get("request", {}), self.metrics.get("forget_rate", {}), self.metrics.get("retain_accuracy", {})

        def change(entry: dict) -> str:
            return f"{entry['original']:.2f} → {entry['unlearned']:.2f}" if "original" in entry and "unlearned" in entry else ""

        unlearn_s = self.metrics.get("timings", {}).get("unlearn_s")
        return [self.name, str(self.card.get("created", "")).replace("T", " ").removesuffix("+00:00"),
                str(request.get("model", "")), str(self.card.get("method", {}).get("name", "")),
                ", ".join(self.card.get("task", {}).get("forget", [])), change(fr), change(ra),
                "" if unlearn_s is None else f"{unlearn_s:.1f}"]


def _root(root: Path | None) -> Path:
    return Path(root) if root is not None else get_profile().runs.dir


def _read(folder: Path) -> RunSummary | None:
    try:
        card = json.loads((folder / "run.json").read_text())
        metrics_file = folder / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("skipping unreadable run folder %s: %s", folder, exc)
        return None
    return RunSummary(folder.name, card, metrics) if isinstance(card, dict) and isinstance(metrics, dict) else None


def list_runs(root: Path | None = None) -> list[RunSummary]:
    """Finished runs under ``root`` (default: the profile's runs.dir), newest first."""
    root = _root(root)
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "run.json").is_file()]
    folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [s for s in map(_read, folders) if s is not None]


def find_run(name: str | None, root: Path | None = None) -> RunSummary:
    """The listed run called ``name`` (InputError if there is none: a name, not a path, picks a run)."""
    if not name:
        raise InputError("pick a run from the list first.")
    for summary in list_runs(root):
        if summary.name == name:
            return summary
    raise InputError(f"no run called '{name}' here (it may have been deleted to keep within the profile's limits); "
                     "press Refresh.")


def runs_table(root: Path | None = None) -> tuple[list[list[str]], list[str]]:
    """(table rows, run names for the pickers)."""
    runs = list_runs(root)
    return [r.row() for r in runs], [r.name for r in runs]


def run_view(name: str | None, root: Path | None = None) -> tuple[str, str | None, str | None, list[list[str]]]:
    """(a Markdown summary, forget grid PNG, retain grid PNG, metrics table rows) of one run."""
    try:
        summary = find_run(name, root)
    except InputError as exc:
        return f"**Could not open:** {exc}", None, None, []
    card, folder = summary.card, _root(root) / summary.name
    settings = ", ".join(f"{k}={v}" for k, v in card.get("settings", {}).items())
    seeds = card.get("comparison", {})
    text = (f"**{card.get('method', {}).get('label', '')}** on **{card.get('request', {}).get('model', '')}**, forgetting "
            f"**{', '.join(card.get('task', {}).get('forget', []))}** · {summary.row()[1]}  \n"
            f"settings: {settings or 'defaults'}  \n"
            f"sampling: {seeds.get('num_inference_steps', '?')} steps, guidance {seeds.get('guidance_scale', '?')}  \n"
            f"reproduce: `{card.get('reproduce', '')}`  \nfolder: `{folder}`")
    grids = [folder / "images" / f"{g}_grid.png" for g in ("forget", "retain")]
    forget, retain = (str(p) if p.is_file() else None for p in grids)
    return text, forget, retain, metrics_rows(summary.metrics)


def compare_table(name_a: str | None, name_b: str | None, root: Path | None = None) -> list[list[str]]:
    """Rows metric | run A (unlearned) | run B (unlearned) | what it compares, for metrics either run has."""
    runs = [find_run(n, root) for n in (name_a, name_b)]
    tables = [{row[0]: row for row in metrics_rows(r.metrics)} for r in runs]
    names = list(dict.fromkeys([*tables[0], *tables[1]]))
    unlearned, compares = METRIC_HEADERS.index("unlearned"), METRIC_HEADERS.index("what it compares")
    out = []
    for metric in names:
        a, b = tables[0].get(metric), tables[1].get(metric)
        out.append([metric, a[unlearned] if a else "", b[unlearned] if b else "", (a or b)[compares]])
    return out


def compare_view(name_a: str | None, name_b: str | None, root: Path | None = None):
    """(status, A's view, B's view, side-by-side table): each view is (summary, forget grid, retain grid)."""
    if not name_a or not name_b:
        return "Pick two runs to compare.", ("", None, None), ("", None, None), []
    try:
        table = compare_table(name_a, name_b, root)
    except InputError as exc:
        return f"**Could not compare:** {exc}", ("", None, None), ("", None, None), []
    views = [run_view(n, root)[:3] for n in (name_a, name_b)]
    same_model = find_run(name_a, root).card.get("request", {}).get("model") == find_run(name_b, root).card.get("request", {}).get("model")
    note = "" if same_model else "  \n*The two runs use different models: their numbers are not comparable one to one.*"
    return f"**A** `{name_a}` vs **B** `{name_b}`{note}", views[0], views[1], table


ZIP_LIMIT_BYTES = 200_000_000  # larger bundles (real SD: gigabytes) stay on disk, not offered as a download


def export_run(name: str | None, root: Path | None = None) -> tuple[str | None, str]:
    """Export one listed run as a bundle (model/, delta, LoRA where possible, model card) inside its folder;
    returns (a zip of it when small enough, a status line)."""
    import shutil

    from .export import export_bundle

    try:
        summary = find_run(name, root)
        folder = _root(root) / summary.name
        out = folder / "export"
        notes = ["already exported."]
        if not (out / "README.md").is_file():
            out, notes = export_bundle(folder, out)
    except InputError as exc:
        return None, f"**Could not export:** {exc}"
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    where = f"Written to `{out}` ({size / 1e6:.1f} MB): model/, delta.safetensors, README.md, run.json. {' '.join(notes)}"
    if size > ZIP_LIMIT_BYTES:
        return None, where + " Too large to download here."
    archive = folder / "export.zip"
    if not archive.is_file():
        archive = Path(shutil.make_archive(str(folder / ".export-partial"), "zip", root_dir=out)).replace(archive)
    return str(archive), where


def push_run(name: str | None, repo_id: str, root: Path | None = None) -> str:
    """Push a run's exported bundle to the Hub (only where the hosted profile allows it)."""
    from .export import push_to_hub

    try:
        summary = find_run(name, root)
        out = _root(root) / summary.name / "export"
        if not out.is_dir():
            raise InputError("export the run first (the button above), then push it.")
        url = push_to_hub(out, (repo_id or "").strip(), allowed=get_profile().hub_export)
    except InputError as exc:
        return f"**Could not push:** {exc}"
    return f"Pushed to {url}"


def build_runs_tab() -> None:
    """The tab's layout and wiring; call inside ``gr.Tabs()``."""
    import gradio as gr

    rows, names = runs_table()
    with gr.Tab("Runs"):
        gr.Markdown("Earlier runs of this instance (every user's), read from the run folders, newest first. "
                    f"At most {get_profile().runs.keep} are kept; older ones are deleted.")
        with gr.Row():
            refresh = gr.Button("Refresh", scale=0)
            pick = gr.Dropdown(names, value=names[0] if names else None, label="Reopen a run", scale=3)
        table = gr.Dataframe(rows, headers=RUN_HEADERS, interactive=False, wrap=True, max_height=300)
        summary = gr.Markdown("")
        with gr.Row():
            # labels unlike the Unlearn tab's, so a page search by label finds one image
            forget = gr.Image(label="this run: forgotten concept (original | unlearned rows)", format="png", interactive=False)
            retain = gr.Image(label="this run: retained concepts (original | unlearned rows)", format="png", interactive=False)
        metrics = gr.Dataframe(headers=METRIC_HEADERS, interactive=False, wrap=True, label="Metrics of this run")
        with gr.Row():
            export_btn = gr.Button("Export this run: full model, delta, LoRA (Stable Diffusion), model card", scale=2)
            export_file = gr.File(label="exported bundle (zip)", scale=2)
        export_status = gr.Markdown("")
        hub_allowed = get_profile().hub_export
        with gr.Row(visible=hub_allowed):
            repo = gr.Textbox(label="Hub repo (owner/name)", placeholder="you/model-without-star", scale=3,
                              info="uses the HF_TOKEN of the machine running the app")
            push_btn = gr.Button("Push the export to the Hugging Face Hub", scale=1)
        gr.Markdown("### Compare two runs side by side")
        with gr.Row():
            pick_a = gr.Dropdown(names, value=names[0] if names else None, label="run A")
            pick_b = gr.Dropdown(names, value=names[1] if len(names) > 1 else None, label="run B")
            compare_btn = gr.Button("Compare", scale=0)
        compare_status = gr.Markdown("")
        with gr.Row():
            with gr.Column():
                a_text, a_forget, a_retain = (gr.Markdown(""), gr.Image(label="A: forgotten concept", format="png", interactive=False),
                                              gr.Image(label="A: retained concepts", format="png", interactive=False))
            with gr.Column():
                b_text, b_forget, b_retain = (gr.Markdown(""), gr.Image(label="B: forgotten concept", format="png", interactive=False),
                                              gr.Image(label="B: retained concepts", format="png", interactive=False))
        compare_metrics = gr.Dataframe(headers=["metric", "A (unlearned)", "B (unlearned)", "what it compares"],
                                       interactive=False, wrap=True, label="A vs B")

    def on_refresh():
        rows, names = runs_table()
        first = names[0] if names else None
        return (rows, gr.update(choices=names, value=first), gr.update(choices=names),
                gr.update(choices=names))

    def on_compare(a, b):
        status, va, vb, rows = compare_view(a, b)
        return status, *va, *vb, rows

    export_btn.click(export_run, pick, [export_file, export_status], api_name="runs_export")
    push_btn.click(push_run, [pick, repo], export_status, api_visibility="public" if hub_allowed else "private")
    refresh.click(on_refresh, None, [table, pick, pick_a, pick_b], api_name="runs_list")
    pick.change(run_view, pick, [summary, forget, retain, metrics], api_name="runs_open")
    compare_btn.click(on_compare, [pick_a, pick_b], [compare_status, a_text, a_forget, a_retain, b_text, b_forget, b_retain,
                                                     compare_metrics], api_name="runs_compare")
