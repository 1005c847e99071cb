"""The command line: a user's mistake is one ``error:`` line and exit status 2, never a traceback.

Runs ``unlearning.cli.main`` in-process (fast), and once as ``python -m unlearning`` in a
subprocess to prove what a shell sees. Always on the untrained ``tiny_model``, with a profile
written here, so neither the real twin nor the repository's spaces_config.yaml matters.
"""

from __future__ import annotations

import json
import numbers
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unlearning.cli import main
from unlearning.hosting.profile import ENV_VAR, get_profile

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_ITERATIONS = 300
TINY = ["--set", "iterations=2", "--set", "ddim_steps=4", "--set", "batch_size=1",
        "--forget-samples", "2", "--retain-samples", "1", "--steps", "3", "--device", "cpu"]


@pytest.fixture()
def profile_file(tmp_path, monkeypatch) -> Path:
    """A hosted profile with known limits, read by get_profile() for the duration of a test (it allows local folders:
    the tests run the tiny model from one)."""
    path = tmp_path / "profile.yaml"
    path.write_text(f"models: [digits]\nmethods: all\nlimits: {{max_iterations: {MAX_ITERATIONS}, max_concepts: 16}}\n"
                    "allow_local_models: true\n")
    monkeypatch.setenv(ENV_VAR, str(path))
    get_profile.cache_clear()
    yield path
    get_profile.cache_clear()


def run_args(model: Path | str, out: Path, *extra: str, forget: str = "3") -> list[str]:
    return ["run", "--model", str(model), "--forget", forget, "--out", str(out), *TINY, *extra]


def assert_one_error_line(stderr: str, *fragments: str) -> str:
    """Exactly one ``error:`` line, the last thing printed, naming the problem; no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert lines[-1] == errors[0], f"something was printed after the error:\n{stderr}"
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def not_empty_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "busy"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    return folder


def a_regular_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


# (id, argv after the common part, fragments the error line must contain). {model} is the tiny model.
MISTAKES = [
    ("unknown model", ["--model", "no-such-model"], ["unknown model 'no-such-model'"]),
    ("unknown method", ["--method", "nope"], ["unknown method 'nope'", "esd", "uce", "scapre"]),
    ("unknown sampler", ["--sampler", "euler"], ["unknown sampler 'euler'", "ddim", "dpm-solver"]),
    ("empty anchor", ["--forget", "3->"], ["the anchor after '->' is empty"]),
    ("anchor forgotten too", ["--forget", "3->4,4"], ["4 is used as an anchor and also forgotten"]),
    ("concept not in the model", ["--forget", "42"], ["'42' is not a class of this model"]),
    ("empty concept", ["--forget", ""], ["the concept to forget is empty"]),
    ("blank concept", ["--forget", "  "], ["the concept to forget is empty"]),
    ("forget all ten", ["--forget", ",".join(map(str, range(10)))], ["nothing would be left to keep"]),
    ("iterations zero", ["--set", "iterations=0"], ["setting 'iterations' must be >= 1; got 0"]),
    ("iterations above the limit", ["--set", "iterations=999999"],
     [f"iterations = 999999 is more than this instance allows ({MAX_ITERATIONS})"]),
    ("negative lr", ["--set", "lr=-1"], ["setting 'lr' must be > 0"]),
    ("nan lr", ["--set", "lr=nan"], ["setting 'lr' must be a finite number"]),
    ("text for a number", ["--set", "iterations=abc"], ["setting 'iterations' must be a whole number, got 'abc'"]),
    ("unknown setting", ["--set", "nosuchkey=1"], ["unknown setting(s) nosuchkey", "iterations", "lr"]),
    ("set without a value", ["--set", "novalue"], ["--set takes key=value, got 'novalue'"]),
    ("bad variant", ["--set", "variant=z"], ["setting 'variant' must be one of x, u, a"]),
]


@pytest.mark.parametrize(("extra", "fragments"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_one_error_line_and_status_2(tiny_model, tmp_path, profile_file, capsys, extra, fragments):
    out = tmp_path / "out"
    assert main(run_args(tiny_model, out, *extra)) == 2  # later options win over the common ones
    captured = capsys.readouterr()
    assert_one_error_line(captured.err, *fragments)
    assert captured.out == ""
    assert not out.exists(), "a refused run wrote its output folder"


def test_an_output_folder_holding_something_else_is_refused(tiny_model, tmp_path, profile_file, capsys):
    folder = not_empty_folder(tmp_path)
    assert main(run_args(tiny_model, folder)) == 2
    assert_one_error_line(capsys.readouterr().err, f"output folder '{folder}' is not empty and holds no earlier run")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_an_output_that_is_a_file_is_refused(tiny_model, tmp_path, profile_file, capsys):
    path = a_regular_file(tmp_path)
    assert main(run_args(tiny_model, path)) == 2
    assert_one_error_line(capsys.readouterr().err, f"output '{path}' is a file")
    assert path.read_text() == "not a folder"


# Tests run as root, where chmod does not stop writes: an output *inside a regular file* (or under
# /proc) is what cannot be written here.
@pytest.mark.parametrize("where", ["under a file", "under /proc"])
def test_an_output_folder_that_cannot_be_created_is_refused(tiny_model, tmp_path, profile_file, capsys, where):
    out = a_regular_file(tmp_path) / "sub" if where == "under a file" else Path("/proc/unlearning-lab-test/out")
    code = main(run_args(tiny_model, out, "--preserve", "4,5"))
    captured = capsys.readouterr()
    assert code == 2
    assert_one_error_line(captured.err, f"'{out}'", "writ")  # "not writable" / "cannot be written"
    assert "step 1/" not in captured.err, "the run trained before finding out it could not write its results"


def test_the_shell_sees_one_error_line_and_status_2(tiny_model, tmp_path, profile_file):
    env = {**os.environ, ENV_VAR: str(profile_file), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "unlearning", *run_args(tiny_model, tmp_path / "out", forget="42")],
                          check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == proc.stderr.strip().splitlines()[0], f"more than one line:\n{proc.stderr}"
    assert_one_error_line(proc.stderr, "'42' is not a class of this model")
    assert proc.stdout == ""


def test_a_tiny_run_writes_the_run_folder(tiny_model, tmp_path, profile_file, capsys):
    out = tmp_path / "runs" / "first"
    keep = ["--preserve", "4,5"]  # two retained digits, not nine: a third of the sampling
    assert main(run_args(tiny_model, out, *keep)) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "error:" not in captured.err
    assert f"run written to {out}" in captured.err

    assert {"run.json", "metrics.json", "edit.safetensors", "loss.json", "images"} <= {p.name for p in out.iterdir()}
    card = json.loads((out / "run.json").read_text())
    assert card["method"]["name"] == "esd"
    assert card["settings"]["iterations"] == 2 and card["settings"]["ddim_steps"] == 4
    assert card["task"]["forget"] == ["3"] and card["task"]["retain"] == ["4", "5"]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("original", "unlearned"):
        assert isinstance(metrics["forget_rate"][key], numbers.Real)
        assert isinstance(metrics["retain_accuracy"][key], numbers.Real)
    assert isinstance(metrics["pul"], numbers.Real)
    timings = metrics["timings"]
    assert isinstance(timings["unlearn_s"], numbers.Real) and timings["unlearn_s"] > 0
    for key in ("original", "unlearned"):
        assert isinstance(timings["sample_s_per_image"][key], numbers.Real)
    assert len(json.loads((out / "loss.json").read_text())) == 2
    images = out / "images"
    assert (images / "forget_grid.png").is_file() and (images / "retain_grid.png").is_file()
    assert len(list((images / "original").glob("*.png"))) == len(list((images / "unlearned").glob("*.png"))) == 2 + 2
    summary = json.loads(captured.out)  # stdout is the metrics summary, as JSON
    assert summary["pul"] == metrics["pul"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "a temporary folder was left behind"

    # the unlearned model as a full folder: it loads with the same adapter and carries the edit
    exported = tmp_path / "exported"
    assert main(["export", "--run", str(out), "--out", str(exported)]) == 0
    capsys.readouterr()
    from safetensors.torch import load_file

    from unlearning.models.catalog import load_adapter

    edit = load_file(str(out / "edit.safetensors"))
    unet = load_adapter(str(exported), "cpu").unet.state_dict()
    assert edit and all(torch.equal(unet[n], v) for n, v in edit.items())
    assert main(["export", "--run", str(out), "--out", str(exported)]) == 2  # never overwrites
    assert_one_error_line(capsys.readouterr().err, "not an empty folder")
    # the delta and the LoRA: a class-conditional model has no LoRA form, and says so
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "d.safetensors"), "--format", "delta"]) == 0
    assert (tmp_path / "d.safetensors").is_file()
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "l.safetensors"), "--format", "lora"]) == 2
    assert_one_error_line(capsys.readouterr().err, "for Stable Diffusion models")

    # a second run into the same folder replaces the first (it holds a run.json)
    assert main(run_args(tiny_model, out, *keep, "--set", "iterations=1")) == 0
    capsys.readouterr()
    assert json.loads((out / "run.json").read_text())["settings"]["iterations"] == 1
    assert [p.name for p in out.parent.iterdir()] == ["first"]


def test_methods_lists_every_method_and_its_settings(capsys):
    assert main(["methods"]) == 0  # --model defaults to digits: its tuned values, no model loaded
    out = capsys.readouterr().out
    for name in ("esd", "gradient_ascent", "finetune"):
        assert f"\n{name}: " in f"\n{out}"
    for setting in ("--set variant=<str>", "--set iterations=<int>", "--set lr=<float>", "--set retain_weight=<float>",
                    "--set remap_forget=<bool>", "one of x, u, a"):
        assert setting in out
    from unlearning.methods import METHODS

    tuned = METHODS["esd"].tuned["digits"]["iterations"]
    assert f"(tuned for digits: {tuned})" in out  # ESD's iterations on the twin, from the registry


def test_an_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["export", "--run", "/nonexistent/run", "--out", "/tmp/x"], "no run folder at '/nonexistent/run'"),
        (["export", "--run", "/nonexistent/run", "--out", "/tmp/x", "--format", "delta", "--push-to-hub", "me/x"],
         "use it with --format bundle"),
        (["bench", "scaling", "--counts", "0,2"], "--counts must be between 1 and 32"),
        (["bench", "scaling", "--counts", "a,b"], "--counts takes whole numbers"),
    ],
)
def test_export_and_bench_mistakes(capsys, argv, fragment):
    assert main(argv) == 2
    assert_one_error_line(capsys.readouterr().err, fragment)
