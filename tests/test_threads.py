"""Thread counts are chosen deliberately at the entry points (unlearning/threads.py): the user's choice wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unlearning import threads
from unlearning.errors import InputError
from unlearning.threads import configure_threads, requested_threads, threads_per_job


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in threads.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(before)  # the rest of the suite keeps its count


def test_the_users_choice_wins_in_order(clean_env):
    assert requested_threads() == (None, "")
    clean_env.setenv("OMP_NUM_THREADS", "3")
    assert requested_threads() == (3, "OMP_NUM_THREADS")
    clean_env.setenv("UNLEARNING_THREADS", "2")
    assert requested_threads() == (2, "UNLEARNING_THREADS")
    assert requested_threads(5) == (5, "--threads")


def test_jobs_split_the_threads(clean_env):
    clean_env.setenv("OMP_NUM_THREADS", "8")
    assert [threads_per_job(j) for j in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    clean_env.delenv("OMP_NUM_THREADS")
    assert threads_per_job(1) == min(threads._TORCH_DEFAULT, threads.available_cores())


def test_configure_sets_torch_and_records_the_total(clean_env):
    assert configure_threads(explicit=1) == 1 and torch.get_num_threads() == 1
    assert threads.os.environ["UNLEARNING_THREADS"] == "1"  # the entry point's choice, for what it starts later
    clean_env.delenv("UNLEARNING_THREADS")
    clean_env.setenv("OMP_NUM_THREADS", "4")
    assert configure_threads(jobs=2) == 2 and torch.get_num_threads() == 2
    assert threads.os.environ["UNLEARNING_THREADS"] == "4"  # what a worker split divides


@pytest.mark.parametrize(("var", "value"), [("OMP_NUM_THREADS", "many"), ("UNLEARNING_THREADS", "0")])
def test_a_bad_value_is_one_clear_error(clean_env, var, value):
    clean_env.setenv(var, value)
    with pytest.raises(InputError, match=var):
        requested_threads()
    with pytest.raises(InputError, match="--jobs"):
        threads_per_job(0, explicit=1)


def test_cli_applies_threads_before_the_command():
    code = "import torch; from unlearning.cli import main; main(['--threads', '1', 'methods']); print('threads', torch.get_num_threads())"
    env = {k: v for k, v in os.environ.items() if k not in threads.ENV_VARS}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.strip().endswith("threads 1"), out.stderr
