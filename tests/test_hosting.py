"""Local use is unrestricted, hosted use is safe.

- Locally (no profile named, not on a Space) a hub id in the local Hugging Face cache runs with no environment
  variable of ours: tested with a cache laid out as huggingface_hub writes it, holding the shapes-sd twin.
- On a hosted profile: a local path is refused with the same words whether it exists or not (no probing of the
  server's disk); each visitor sees only their own runs until the owner shares one; retention never deletes a
  held run; zips never carry a link; the Hugging Face token never reaches a log, an error or a run folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from unlearning import novel_view
from unlearning.atomic import zip_dir
from unlearning.cli import main
from unlearning.errors import InputError
from unlearning.hosting.profile import ENV_VAR, SPACE_ENV_VAR, get_profile, install_log_redaction
from unlearning.models.catalog import ASSETS, resolve
from unlearning.run_folder import hold, prune_runs
from unlearning.runner import RunRequest, execute, prepare
from unlearning.ui import runs as ui_runs

REPO_ROOT = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "hf_FAKEtokenNeverToBeSeen0123456789"
TINY_ESD = {"iterations": 1, "ddim_steps": 2, "batch_size": 1}


@pytest.fixture()
def hosted(tmp_path, monkeypatch) -> Path:
    """A hosted profile in force (a file named through $UNLEARNING_CONFIG); its runs go to tmp_path/runs."""
    path = tmp_path / "hosted.yaml"
    path.write_text(f"models: [digits, shapes-sd]\nruns: {{dir: {tmp_path / 'runs'}}}\nhub_export: true\n")
    monkeypatch.setenv(ENV_VAR, str(path))
    monkeypatch.delenv(SPACE_ENV_VAR, raising=False)
    get_profile.cache_clear()
    yield path
    get_profile.cache_clear()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, SPACE_ENV_VAR, "HF_HUB_OFFLINE", "HF_TOKEN")}
    return {**env, "PYTHONPATH": str(REPO_ROOT), **extra}


def hub_cache_with(folder: Path, cache: Path, repo: str) -> Path:
    """``cache/models--owner--name`` as huggingface_hub lays it out: files in blobs/ named by their hash,
    snapshots/<commit>/ made of links to them, refs/main naming the commit."""
    root = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    snapshot = root / "snapshots" / commit
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot


# ---- local: a cached hub id needs nothing ---------------------------------------------------------------------

def test_a_cached_hub_id_runs_locally_without_any_variable_of_ours(tmp_path):
    cache = tmp_path / "hf-cache"
    snapshot = hub_cache_with(ASSETS / "shapes-sd", cache, "someone/shapes-twin")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "unlearning", "run", "--model", "someone/shapes-twin", "--method", "uce", "--forget", "star",
           "--out", str(out), "--forget-samples", "2", "--retain-samples", "1", "--steps", "2", "--device", "cpu"]
    # HF_HUB_CACHE only says where this test's cache is (a user's is ~/.cache/huggingface); no offline switch, no profile
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=clean_env(HF_HUB_CACHE=str(cache)))
    assert done.returncode == 0, done.stderr
    card = json.loads((out / "run.json").read_text())
    assert card["request"]["model"] == "someone/shapes-twin"
    assert Path(card["model"]["source"]) == snapshot  # loaded from the snapshot folder, exactly like a local folder
    assert (out / "edit.safetensors").is_file()


# ---- hosted: no probing of the server's disk --------------------------------------------------------------------

def test_a_hosted_profile_refuses_local_paths_without_saying_whether_they_exist(hosted, tmp_path, capsys):
    (tmp_path / "a-file.txt").write_text("secret")
    probes = ["/etc", "/no/such/folder", str(tmp_path / "a-file.txt"), str(ASSETS / "digits"), "./assets/digits", "~/"]
    answers = []
    for probe in probes:
        assert main(["run", "--model", probe, "--forget", "3", "--out", str(tmp_path / "out")]) == 2
        answers.append(capsys.readouterr().err.strip().replace(probe, "<model>"))
    assert len(set(answers)) == 1, answers  # one answer whatever the path: exists, is a file, is a model folder, or not
    assert "not offered here" in answers[0] and "does not load folders" in answers[0]
    assert "model_index" not in answers[0] and "is a file" not in answers[0]
    assert not (tmp_path / "out").exists()
    # the same gate in front of the novel-view models
    zero123 = set()
    for probe in probes:
        with pytest.raises(InputError) as caught:
            novel_view.resolve(probe)
        zero123.add(str(caught.value).replace(probe, "<model>"))
    assert len(zero123) == 1, zero123


def test_a_hosted_profile_refuses_hub_ids_it_does_not_offer_and_keeps_its_twins(hosted):
    with pytest.raises(InputError, match="not offered here; choose one of: digits, shapes-sd"):
        resolve("CompVis/stable-diffusion-v1-4")
    assert resolve("digits")[0] == "digits"


def test_the_cli_profile_option_puts_a_hosted_profile_in_force(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(SPACE_ENV_VAR, raising=False)
    before = os.environ.pop(ENV_VAR, None)
    get_profile.cache_clear()
    try:
        code = main(["--profile", str(REPO_ROOT / "spaces_config.yaml"), "run", "--model", "/etc", "--forget", "3",
                     "--out", str(tmp_path / "out")])
        assert code == 2 and "not offered here" in capsys.readouterr().err
    finally:  # --profile sets the variable for the process: put it back as it was
        os.environ.pop(ENV_VAR, None)
        if before is not None:
            os.environ[ENV_VAR] = before
        get_profile.cache_clear()


# ---- hosted: each visitor's runs are their own ------------------------------------------------------------------

def tiny_run(folder: Path, owner: str | None, seed: int = 0) -> Path:
    run = prepare(RunRequest(model="digits", method="esd", forget=["3"], settings=TINY_ESD, seed=seed, forget_samples=1,
                             retain_samples=1, num_inference_steps=1, preserve=["4"]))
    list(execute(run, out_dir=folder, owner=owner))
    return folder


def test_visitors_see_only_their_own_runs_until_one_is_shared(hosted, tmp_path):
    root = get_profile().runs.dir
    tiny_run(root / "alice-run", "alice-browser-id")
    tiny_run(root / "bob-run", "bob-browser-id", seed=1)
    card = json.loads((root / "alice-run" / "run.json").read_text())
    assert card["owner"] and "alice-browser-id" not in json.dumps(card)  # stored hashed

    assert ui_runs.runs_table(viewer="alice-browser-id")[1] == ["alice-run"]
    assert ui_runs.runs_table(viewer="bob-browser-id")[1] == ["bob-run"]
    assert ui_runs.runs_table(viewer=None)[1] == []  # an anonymous caller sees nothing private
    # another visitor's run is answered exactly like one that does not exist
    other = ui_runs.run_view("bob-run", viewer="alice-browser-id")[0].replace("bob-run", "<name>")
    missing = ui_runs.run_view("nobody-run", viewer="alice-browser-id")[0].replace("nobody-run", "<name>")
    assert other == missing and other.startswith("**Could not open:**")
    assert ui_runs.export_run("bob-run", viewer="alice-browser-id")[0] is None
    assert ui_runs.share_run("bob-run", viewer="alice-browser-id").startswith("**Could not share:**")

    assert "now listed" in ui_runs.share_run("bob-run", viewer="bob-browser-id")
    assert ui_runs.runs_table(viewer="alice-browser-id")[1] == ["bob-run", "alice-run"]
    assert ui_runs.run_view("bob-run", viewer="alice-browser-id")[1] is not None  # its forget grid
    # the local profile (one user, their own machine) lists every run
    assert ui_runs.runs_table(root, private=False)[1] == ["bob-run", "alice-run"]


def test_retention_keeps_held_runs_and_deletes_the_oldest_others(tmp_path):
    root = tmp_path / "runs"
    names = ["oldest", "middle", "newer", "newest"]
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True)
        (root / name / "run.json").write_text("{}")
        os.utime(root / name, (time.time() - 100 + i, time.time() - 100 + i))
    hold(root / "oldest")  # open in someone's browser
    deleted = prune_runs(root, keep=2)
    assert [p.name for p in deleted] == ["middle", "newer"]
    assert sorted(p.name for p in root.iterdir()) == ["newest", "oldest"]


def test_a_zip_never_carries_a_link_or_a_path_outside_the_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("do not ship")
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    (run / "images" / "a.png").write_bytes(b"png")
    (run / "leak.txt").symlink_to(outside / "secret.txt")
    (run / "leak-dir").symlink_to(outside)
    archive = zip_dir(run, tmp_path / "run.zip")
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        assert sorted(names) == ["images/a.png", "run.json"]
        assert all(not n.startswith("/") and ".." not in Path(n).parts for n in names)
        assert b"do not ship" not in b"".join(zf.read(n) for n in names)


def test_symlinked_run_folders_are_not_listed(tmp_path):
    root = tmp_path / "runs"
    elsewhere = tmp_path / "elsewhere" / "planted"
    elsewhere.mkdir(parents=True)
    (elsewhere / "run.json").write_text("{}")
    root.mkdir()
    (root / "planted").symlink_to(elsewhere)
    assert ui_runs.runs_table(root, private=False)[1] == []


# ---- the Hugging Face token -------------------------------------------------------------------------------------

def test_the_hub_token_never_reaches_a_log_an_error_or_a_run_folder(tmp_path):
    hosted_file = tmp_path / "hosted.yaml"
    hosted_file.write_text("models: [digits]\nhub_export: true\n")
    run = tmp_path / "run"
    tiny = ["--set", "iterations=1", "--set", "ddim_steps=2", "--set", "batch_size=1", "--forget-samples", "1",
            "--retain-samples", "1", "--steps", "1", "--preserve", "4"]
    env = clean_env(HF_TOKEN=FAKE_TOKEN, HF_ENDPOINT="http://127.0.0.1:9")  # a closed port: the push fails at once
    base = [sys.executable, "-m", "unlearning", "-v", "--profile", str(hosted_file)]
    first = subprocess.run([*base, "run", "--model", "digits", "--forget", "3", "--out", str(run), *tiny],
                           capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    push = subprocess.run([*base, "export", "--run", str(run), "--out", str(tmp_path / "bundle"), "--format", "bundle",
                           "--push-to-hub", "someone/model"], capture_output=True, text=True, timeout=300, env=env)
    assert push.returncode != 0 and "error:" in push.stderr  # the push was attempted and failed
    for text in (first.stdout, first.stderr, push.stdout, push.stderr):
        assert FAKE_TOKEN not in text
    for file in [*run.rglob("*"), *(tmp_path / "bundle").rglob("*")]:
        if file.is_file():
            assert FAKE_TOKEN.encode() not in file.read_bytes(), file


def test_the_log_filter_redacts_the_token(monkeypatch, caplog):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    handler = logging.StreamHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        install_log_redaction()
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "token is %s", (FAKE_TOKEN,), None)
        for f in handler.filters:
            f.filter(record)
        assert FAKE_TOKEN not in record.getMessage() and "***" in record.getMessage()
    finally:
        root.removeHandler(handler)
