"""The "Runs" tab: earlier runs read back from their run folders, one reopened, two compared side by side.

Handlers are plain functions of plain values (testable without a browser); :func:`build_runs_tab`
lays out the tab and wires it, called once from ``app.py`` inside its ``gr.Tabs()``.

Only folders directly under the profile's ``runs.dir`` that hold a ``run.json`` are listed (never a symbolic
link), and a run is reopened by its folder *name* from that list, never by a path a client sends.

On a hosted profile each visitor (``viewer``: a per-browser id, else the Gradio session) sees only their own
runs and the runs their owners shared (:func:`share_run`); a run that is not visible is answered exactly like
one that does not exist. On the local profile (one user, their own machine) every run is listed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ..atomic import write_text_atomic, zip_dir
from ..errors import InputError
from ..hosting.profile import get_profile
from ..run_folder import SHARED_MARK, hold, owner_tag
from .report import METRIC_HEADERS, metrics_rows

log = logging.getLogger(__name__)

RUN_HEADERS = ["run", "created", "model", "method", "forgot", "forget rate", "retain accuracy", "unlearning (s)"]


@dataclass
class RunSummary:
    name: str  # the folder's name under runs.dir
    card: dict  # run.json
    metrics: dict  # metrics.json ({} if absent)
    shared: bool = False  # its owner shared it with every visitor

    def visible_to(self, viewer: str | None, private: bool) -> bool:
        """Whether ``viewer`` may see this run: always on the local profile; on a hosted one, its owner, or anyone once shared."""
        if not private or self.shared:
            return True
        owner = self.card.get("owner")
        return bool(owner) and owner == owner_tag(viewer)

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
    if not (isinstance(card, dict) and isinstance(metrics, dict)):
        return None
    return RunSummary(folder.name, card, metrics, shared=(folder / SHARED_MARK).is_file())


def _private(private: bool | None) -> bool:
    return get_profile().hosted if private is None else private


def list_runs(root: Path | None = None, viewer: str | None = None, private: bool | None = None) -> list[RunSummary]:
    """Finished runs under ``root`` (default: the profile's runs.dir) that ``viewer`` may see, newest first.
    ``private`` (default: whether a hosted profile is in force) limits the list to the viewer's own and shared runs."""
    root = _root(root)
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir()
               if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and (p / "run.json").is_file()]
    folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    private = _private(private)
    return [s for s in map(_read, folders) if s is not None and s.visible_to(viewer, private)]


def find_run(name: str | None, root: Path | None = None, viewer: str | None = None, private: bool | None = None) -> RunSummary:
    """The listed run called ``name`` that ``viewer`` may see (InputError if there is none: a name, not a path,
    picks a run; another visitor's private run is answered like a missing one)."""
    if not name:
        raise InputError("pick a run from the list first.")
    for summary in list_runs(root, viewer, private):
        if summary.name == name:
            return summary
    raise InputError(f"no run called '{name}' here (it may have been deleted to keep within the profile's limits); "
                     "press Refresh.")


def runs_table(root: Path | None = None, viewer: str | None = None, private: bool | None = None) -> tuple[list[list[str]], list[str]]:
    """(table rows, run names for the pickers) of the runs ``viewer`` may see."""
    runs = list_runs(root, viewer, private)
    return [r.row() for r in runs], [r.name for r in runs]


def share_run(name: str | None, root: Path | None = None, viewer: str | None = None) -> str:
    """Share one of the viewer's own runs with every visitor of this instance; returns a status line."""
    try:
        summary = find_run(name, root, viewer)
        if get_profile().hosted and summary.card.get("owner") != owner_tag(viewer):
            raise InputError("only the run's owner can share it.")
        write_text_atomic(_root(root) / summary.name / SHARED_MARK, "")
    except InputError as exc:
        return f"**Could not share:** {exc}"
    return f"`{summary.name}` is now listed for every visitor of this instance."


def run_view(name: str | None, root: Path | None = None, viewer: str | None = None
             ) -> tuple[str, str | None, str | None, list[list[str]]]:
    """(a Markdown summary, forget grid PNG, retain grid PNG, metrics table rows) of one run."""
    try:
        summary = find_run(name, root, viewer)
    except InputError as exc:
        return f"**Could not open:** {exc}", None, None, []
    card, folder = summary.card, _root(root) / summary.name
    hold(folder)  # open in a browser: retention keeps it
    settings = ", ".join(f"{k}={v}" for k, v in card.get("settings", {}).items())
    seeds = card.get("comparison", {})
    if seeds.get("view") == "text":  # a language model: questions and prompts instead of sampled images
        compared = (f"questions: {', '.join(f'{d} {n}' for d, n in seeds.get('questions_per_domain', {}).items())} "
                    f"({seeds.get('question_format', '')} format); {len(seeds.get('prompts', []))} prompts continued")
    else:
        compared = f"sampling: {seeds.get('num_inference_steps', '?')} steps, guidance {seeds.get('guidance_scale', '?')}"
    text = (f"**{card.get('method', {}).get('label', '')}** on **{card.get('request', {}).get('model', '')}**, forgetting "
            f"**{', '.join(card.get('task', {}).get('forget', []))}** · {summary.row()[1]}  \n"
            f"settings: {settings or 'defaults'}  \n"
            f"{compared}  \n"
            f"reproduce: `{card.get('reproduce', '')}`  \nfolder: `{folder}`")
    grids = [folder / "images" / f"{g}_grid.png" for g in ("forget", "retain")]
    forget, retain = (str(p) if p.is_file() else None for p in grids)
    return text, forget, retain, metrics_rows(summary.metrics)


def compare_table(name_a: str | None, name_b: str | None, root: Path | None = None, viewer: str | None = None) -> list[list[str]]:
    """Rows metric | run A (unlearned) | run B (unlearned) | what it compares, for metrics either run has."""
    runs = [find_run(n, root, viewer) for n in (name_a, name_b)]
    tables = [{row[0]: row for row in metrics_rows(r.metrics)} for r in runs]
    names = list(dict.fromkeys([*tables[0], *tables[1]]))
    unlearned, compares = METRIC_HEADERS.index("unlearned"), METRIC_HEADERS.index("what it compares")
    out = []
    for metric in names:
        a, b = tables[0].get(metric), tables[1].get(metric)
        out.append([metric, a[unlearned] if a else "", b[unlearned] if b else "", (a or b)[compares]])
    return out


def compare_view(name_a: str | None, name_b: str | None, root: Path | None = None, viewer: str | None = None):
    """(status, A's view, B's view, side-by-side table): each view is (summary, forget grid, retain grid)."""
    if not name_a or not name_b:
        return "Pick two runs to compare.", ("", None, None), ("", None, None), []
    try:
        table = compare_table(name_a, name_b, root, viewer)
        models = [find_run(n, root, viewer).card.get("request", {}).get("model") for n in (name_a, name_b)]
    except InputError as exc:
        return f"**Could not compare:** {exc}", ("", None, None), ("", None, None), []
    views = [run_view(n, root, viewer)[:3] for n in (name_a, name_b)]
    same_model = models[0] == models[1]
    note = "" if same_model else "  \n*The two runs use different models: their numbers are not comparable one to one.*"
    return f"**A** `{name_a}` vs **B** `{name_b}`{note}", views[0], views[1], table


ZIP_LIMIT_BYTES = 200_000_000  # larger bundles (real SD: gigabytes) stay on disk, not offered as a download


def export_run(name: str | None, root: Path | None = None, viewer: str | None = None) -> tuple[str | None, str]:
    """Export one listed run as a bundle (model/, delta, LoRA where possible, model card) inside its folder;
    returns (a zip of it when small enough, a status line)."""
    from ..export import export_bundle

    try:
        summary = find_run(name, root, viewer)
        folder = _root(root) / summary.name
        hold(folder)  # being exported and downloaded: retention keeps it
        out = folder / "export"
        if out.is_symlink():
            raise InputError("this run's export folder is a link; it is not written through.")
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
        zip_dir(out, archive)
    return str(archive), where


def push_run(name: str | None, repo_id: str, root: Path | None = None, viewer: str | None = None) -> str:
    """Push a run's exported bundle to the Hub (only where the hosted profile allows it)."""
    from ..export import push_to_hub

    try:
        summary = find_run(name, root, viewer)
        out = _root(root) / summary.name / "export"
        if not out.is_dir():
            raise InputError("export the run first (the button above), then push it.")
        url = push_to_hub(out, (repo_id or "").strip(), allowed=get_profile().hub_export)
    except InputError as exc:
        return f"**Could not push:** {exc}"
    return f"Pushed to {url}"


def viewer_of(browser_id: str | None, request=None) -> str | None:
    """Who is asking: the browser's own id (kept in its localStorage), else the Gradio session (an API client)."""
    if browser_id:
        return str(browser_id)
    return getattr(request, "session_hash", None)


def build_runs_tab(browser_id) -> None:
    """The tab's layout and wiring; call inside ``gr.Tabs()``. ``browser_id``: the app's ``gr.BrowserState``
    holding this browser's id (a hosted profile shows each visitor only their own and shared runs)."""

    profile = get_profile()
    private = profile.hosted
    rows, names = ([], []) if private else runs_table()  # hosted: filled in for each visitor when the tab opens
    with gr.Tab("Runs") as tab:
        whose = ("your own runs in this browser and the runs others shared" if private
                 else "every run of this instance (the local profile: one user)")
        gr.Markdown(f"Earlier runs: {whose}, read from the run folders, newest first. "
                    f"At most {profile.runs.keep} are kept; older ones are deleted, never one that is open or being downloaded.")
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
        with gr.Row(visible=private):
            share_btn = gr.Button("Share this run with every visitor", scale=0)
            share_status = gr.Markdown("")
        hub_allowed = profile.hub_export
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

    def on_refresh(bid, request: gr.Request):
        rows, names = runs_table(viewer=viewer_of(bid, request))
        first = names[0] if names else None
        return (rows, gr.update(choices=names, value=first), gr.update(choices=names),
                gr.update(choices=names))

    def on_open(name, bid, request: gr.Request):
        return run_view(name, viewer=viewer_of(bid, request))

    def on_export(name, bid, request: gr.Request):
        return export_run(name, viewer=viewer_of(bid, request))

    def on_share(name, bid, request: gr.Request):
        return share_run(name, viewer=viewer_of(bid, request))

    def on_push(name, repo_id, bid, request: gr.Request):
        return push_run(name, repo_id, viewer=viewer_of(bid, request))

    def on_compare(run_a, run_b, bid, request: gr.Request):  # the API's parameter names: run_a, run_b
        status, va, vb, rows = compare_view(run_a, run_b, viewer=viewer_of(bid, request))
        return status, *va, *vb, rows

    listing = [table, pick, pick_a, pick_b]
    export_btn.click(on_export, [pick, browser_id], [export_file, export_status], api_name="runs_export")
    share_btn.click(on_share, [pick, browser_id], share_status, api_name="runs_share")
    push_btn.click(on_push, [pick, repo, browser_id], export_status, api_visibility="public" if hub_allowed else "private")
    refresh.click(on_refresh, browser_id, listing, api_name="runs_list")
    tab.select(on_refresh, browser_id, listing, api_visibility="private")
    pick.change(on_open, [pick, browser_id], [summary, forget, retain, metrics], api_name="runs_open")
    compare_btn.click(on_compare, [pick_a, pick_b, browser_id], [compare_status, a_text, a_forget, a_retain, b_text, b_forget,
                                                                 b_retain, compare_metrics], api_name="runs_compare")
