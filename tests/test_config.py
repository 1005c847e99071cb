"""Profiles: the local one (nothing named), the repo's own hosted file, and the errors a typo in it must raise."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from unlearning.errors import InputError
from unlearning.hosting import profile as config
from unlearning.hosting.profile import ENV_VAR, SPACE_ENV_VAR, HostProfile, get_profile, load_profile

REPO_FILE = Path(__file__).resolve().parents[1] / "spaces_config.yaml"


@pytest.fixture(autouse=True)
def _no_profile_env(monkeypatch: pytest.MonkeyPatch):
    """Each test starts without $UNLEARNING_CONFIG or $SPACE_ID and with an empty get_profile() cache."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv(SPACE_ENV_VAR, raising=False)
    get_profile.cache_clear()
    yield
    get_profile.cache_clear()


def write(tmp_path: Path, text: str, name: str = "profile.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_nothing_named_is_the_local_profile_although_the_repo_has_a_hosted_file():
    assert REPO_FILE.is_file()
    profile = load_profile()
    assert profile == HostProfile()
    assert profile.source is None and not profile.hosted
    assert profile.allow_local_models is True  # the user's own machine: their folders are models
    assert "**local**" in profile.describe()
    assert profile.models == ()  # every embedded twin, hub ids and folders
    assert profile.methods is None  # every registered method
    assert profile.limits.max_iterations == 5000
    assert profile.limits.max_upload_bytes == 10 * 1024 * 1024
    assert profile.queue.concurrency == 1
    assert profile.runs.keep == 50
    assert profile.hub_export is False


def test_env_var_none_reads_no_file(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "none")
    assert load_profile() == HostProfile()
    assert load_profile().source is None


def test_env_var_none_wins_even_on_a_space(monkeypatch):
    monkeypatch.setenv(SPACE_ENV_VAR, "someone/a-space")
    monkeypatch.setenv(ENV_VAR, "none")
    assert not load_profile().hosted


def test_on_a_space_the_repos_own_file_is_in_force(monkeypatch):
    monkeypatch.setenv(SPACE_ENV_VAR, "someone/a-space")
    profile = load_profile()
    assert profile.source == REPO_FILE and profile.hosted
    assert profile.allow_local_models is False  # the file does not say: a hosted profile's default
    assert "**hosted**" in profile.describe() and "spaces_config.yaml" in profile.describe()


def test_a_space_whose_profile_file_is_missing_refuses_to_start(tmp_path, monkeypatch):
    monkeypatch.setenv(SPACE_ENV_VAR, "someone/a-space")
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent.yaml")
    with pytest.raises(InputError, match="does not exist"):  # never a silent fall back to the unrestricted local profile
        load_profile()


def test_the_repos_own_file_loads_and_is_no_looser_than_local():
    profile = load_profile(REPO_FILE)
    assert profile.source == REPO_FILE
    assert {"digits", "shapes-sd"} <= set(profile.models)
    local = HostProfile().limits
    for f in dataclasses.fields(local):
        hosted = getattr(profile.limits, f.name)
        assert 0 < hosted <= getattr(local, f.name), f"limits.{f.name} = {hosted} is above the local default"
    assert profile.hub_export is False


def test_empty_file_gives_defaults(tmp_path):
    path = write(tmp_path, "# everything commented out\n")
    profile = load_profile(path)
    assert profile == dataclasses.replace(HostProfile(), allow_local_models=False)  # a file's own default for folders
    assert profile.source == path.resolve()
    assert load_profile(write(tmp_path, "allow_local_models: true\n")).allow_local_models is True


def test_values_are_read(tmp_path):
    path = write(
        tmp_path,
        "models: [digits, shapes-sd]\nmethods: [uce, scapre]\nlimits:\n  max_samples: 8\n"
        "queue:\n  max_size: 3\nruns:\n  dir: my-runs\n  keep: 2\ngpu_duration:\n  uce: 0.25\nhub_export: true\n",
    )
    profile = load_profile(path)
    assert profile.models == ("digits", "shapes-sd")
    assert profile.methods == ("uce", "scapre")
    assert profile.limits.max_samples == 8
    assert profile.limits.max_iterations == 5000  # untouched keys keep their default
    assert profile.queue.max_size == 3
    assert profile.runs.dir == (tmp_path / "my-runs").resolve()  # relative to the file, not the cwd
    assert profile.runs.keep == 2
    assert profile.gpu_duration == {"uce": 0.25}
    assert profile.hub_export is True


def test_methods_all_means_every_method(tmp_path):
    assert load_profile(write(tmp_path, "methods: all\n")).methods is None
    with pytest.raises(InputError, match=r"'methods'.*empty list"):
        load_profile(write(tmp_path, "methods: []\n"))


def test_unknown_top_level_key_is_named(tmp_path):
    path = write(tmp_path, "limitz:\n  max_iterations: 10\n")
    with pytest.raises(InputError) as caught:
        load_profile(path)
    message = str(caught.value)
    assert "unknown key 'limitz'" in message
    assert "valid: models, methods, default_method, limits, queue, runs, gpu_duration, zerogpu, hub_export, allow_local_models" in message
    assert "source" not in message  # not a YAML key
    assert str(path) in message


def test_unknown_nested_key_is_named_with_its_dotted_path(tmp_path):
    path = write(tmp_path, "limits:\n  max_step: 10\n")
    with pytest.raises(InputError) as caught:
        load_profile(path)
    message = str(caught.value)
    assert "unknown key 'limits.max_step'" in message
    assert "max_iterations" in message and "max_upload_bytes" in message


def test_errors_in_the_default_file_start_with_its_name(tmp_path, monkeypatch):
    path = write(tmp_path, "queue:\n  concurency: 2\n", name="spaces_config.yaml")
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", path.resolve())
    monkeypatch.setenv(SPACE_ENV_VAR, "someone/a-space")
    with pytest.raises(InputError, match=r"^spaces_config\.yaml: unknown key 'queue\.concurency'.*concurrency"):
        load_profile()


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("limits:\n  max_iterations: '500'\n", "limits.max_iterations", "positive integer"),
        ("limits:\n  max_samples: 10e6\n", "limits.max_samples", "positive integer"),  # YAML 1.1: a string
        ("limits:\n  max_concepts: true\n", "limits.max_concepts", "positive integer"),  # bool is not an int
        ("queue:\n  concurrency: 1.5\n", "queue.concurrency", "positive integer"),
        ("limits:\n  max_inference_steps:\n", "limits.max_inference_steps", "positive integer"),
        ("hub_export: 'yes'\n", "hub_export", "true or false"),
        ("hub_export: 1\n", "hub_export", "true or false"),
        ("models: [digits, '']\n", "models[1]", "non-empty string"),
        ("models: {digits: 1}\n", "models", "list of names"),
        ("gpu_duration:\n  uce: fast\n", "gpu_duration.uce", "positive number"),
        ("gpu_duration: [uce]\n", "gpu_duration", "mapping"),
        ("runs:\n  dir: 3\n", "runs.dir", "directory path"),
        ("limits: 5\n", "limits", "mapping"),
    ],
)
def test_wrong_type_is_named(tmp_path, text, key, expected):
    with pytest.raises(InputError) as caught:
        load_profile(write(tmp_path, text))
    assert f"'{key}'" in str(caught.value)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("limits:\n  max_iterations: 0\n", "limits.max_iterations"),
        ("queue:\n  max_size: -1\n", "queue.max_size"),
        ("runs:\n  keep: 0\n", "runs.keep"),
        ("gpu_duration:\n  esd: 0\n", "gpu_duration.esd"),
    ],
)
def test_non_positive_limit_is_named(tmp_path, text, key):
    with pytest.raises(InputError, match=rf"'{key}' must be a positive"):
        load_profile(write(tmp_path, text))


def test_not_a_mapping_and_not_yaml(tmp_path):
    with pytest.raises(InputError, match="mapping"):
        load_profile(write(tmp_path, "- digits\n"))
    with pytest.raises(InputError, match="cannot be read as YAML"):
        load_profile(write(tmp_path, "limits: [unclosed\n"))


def test_a_key_given_twice_is_an_error(tmp_path):
    with pytest.raises(InputError, match="'limits' is given twice"):
        load_profile(write(tmp_path, "limits:\n  max_samples: 8\nlimits:\n  max_concepts: 2\n"))


def test_env_var_overrides_the_default_path(tmp_path, monkeypatch):
    path = write(tmp_path, "limits:\n  max_iterations: 7\n")
    monkeypatch.setenv(ENV_VAR, str(path))
    assert load_profile().limits.max_iterations == 7
    assert get_profile().limits.max_iterations == 7
    assert get_profile() is get_profile()  # cached
    assert load_profile(REPO_FILE).source == REPO_FILE  # an explicit argument beats the variable


def test_a_named_file_that_is_missing_is_an_error(tmp_path, monkeypatch):
    missing = tmp_path / "typo.yaml"
    monkeypatch.setenv(ENV_VAR, str(missing))
    with pytest.raises(InputError, match=rf"'{re.escape(str(missing))}' \(\${ENV_VAR}\) does not exist"):
        load_profile()
    with pytest.raises(InputError, match="does not exist"):
        load_profile(missing)


def test_profile_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        HostProfile().limits.max_iterations = 1  # type: ignore[misc]


# ---- the hosted-profile keys added for Spaces: retention bytes, ZeroGPU, default method -----------------

ZEROGPU_FILE = REPO_FILE.with_name("spaces_config.zerogpu.yaml")


def test_zerogpu_profile_loads_and_defaults_to_a_closed_form_method():
    from unlearning.methods import METHODS

    profile = load_profile(ZEROGPU_FILE)
    assert profile.default_method in ("uce", "scapre")
    assert set(profile.methods) <= {"uce", "scapre"}, "only closed-form methods fit ZeroGPU's short windows"
    assert set(profile.methods) <= set(METHODS)
    assert set(profile.gpu_duration) <= set(METHODS)
    assert profile.zerogpu.max_duration <= 300


def test_new_keys_are_read(tmp_path):
    profile = load_profile(write(tmp_path, "methods: [uce, esd]\ndefault_method: uce\nruns:\n  max_bytes: 1000\n"
                                           "zerogpu:\n  max_duration: 60\n  margin: 2\n  sample_step_s: 0.01\n"))
    assert profile.default_method == "uce"
    assert profile.runs.max_bytes == 1000
    assert (profile.zerogpu.max_duration, profile.zerogpu.margin, profile.zerogpu.sample_step_s) == (60.0, 2.0, 0.01)
    assert profile.zerogpu.overhead_s == HostProfile().zerogpu.overhead_s  # unspecified: the default


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("zerogpu:\n  max_duraton: 60\n", "zerogpu.max_duraton", "did you mean 'max_duration'"),
        ("zerogpu:\n  margin: 0.5\n", "zerogpu.margin", ">= 1"),
        ("zerogpu:\n  sample_step_s: -1\n", "zerogpu.sample_step_s", "positive number of seconds"),
        ("runs:\n  max_bytes: 0\n", "runs.max_bytes", "positive integer"),
        ("default_method: 3\n", "default_method", "method name"),
        ("methods: [esd]\ndefault_method: uce\n", "default_method", "which 'methods' does not allow"),
    ],
)
def test_bad_new_keys_are_named(tmp_path, text, key, expected):
    with pytest.raises(InputError) as info:
        load_profile(write(tmp_path, text))
    assert f"'{key}'" in str(info.value) and expected in str(info.value), str(info.value)


def test_retention_by_bytes_deletes_oldest_first_and_keeps_the_newest(tmp_path):
    import os

    from unlearning.run_folder import prune_runs

    folders = []
    for i in range(4):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        (folder / "run.json").write_text("{}")
        (folder / "edit.safetensors").write_bytes(b"x" * 1000)
        os.utime(folder, (1000 + i, 1000 + i))
        folders.append(folder)
    (tmp_path / "run1.zip").write_bytes(b"z" * 10)
    deleted = prune_runs(tmp_path, keep=10, max_bytes=2100)  # each run ~1002 bytes: two fit
    assert deleted == folders[:2]
    assert not (tmp_path / "run1.zip").exists()
    assert [f.exists() for f in folders] == [False, False, True, True]
    assert prune_runs(tmp_path, keep=10, max_bytes=1) == [folders[2]]  # the newest survives any cap
    assert folders[3].exists()


def test_space_readme_front_matter_matches_the_repository():
    import yaml

    text = (REPO_FILE.parent / "docs" / "space" / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    pins = dict(line.split("==") for line in (REPO_FILE.parent / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.lstrip().startswith("#"))
    assert front["sdk"] == "gradio" and front["sdk_version"] == pins["gradio"].strip()
    assert (REPO_FILE.parent / front["app_file"]).is_file()
    assert isinstance(front["python_version"], str) and front["python_version"].startswith("3.")
    assert {"suggested_hardware", "license", "models"} <= set(front)
    hub_models = {m for m in load_profile(ZEROGPU_FILE).models if "/" in m}
    assert hub_models <= set(front["models"]), "the ZeroGPU profile offers a model the Space card does not list"
