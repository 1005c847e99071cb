"""Shared test setup: skip `gpu` / `browser` tests where the machine lacks them, and a folder for screenshots."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")


def _cuda_available() -> bool:
    import torch  # only imported when a gpu-marked test was collected

    return torch.cuda.is_available()


def _browser_missing() -> str | None:
    """Why browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (Debian: apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright Python package is not installed (pip install -r requirements.txt)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False")
        for item in gpu_items:
            item.add_marker(skip)
    browser_items = [item for item in items if item.get_closest_marker("browser")]
    why = _browser_missing() if browser_items else None
    if why:
        skip = pytest.mark.skip(reason=f"needs a browser: {why}")
        for item in browser_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """``<repo>/test-artifacts``, created: screenshots and other files a person may want to look at."""
    path = REPO_ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete but *untrained* digits-layout model folder (8 steps; a few seconds on a CPU).

    Its pictures are noise: use it for plumbing (loading, sampling, runs, files, errors), never for
    quality. Load it with ``load_adapter(str(tiny_model), "cpu")`` or pass it as ``--model``.
    """
    from unlearning.embedded.digits import train_twin

    folder = tmp_path_factory.mktemp("tiny-model") / "digits-tiny"
    train_twin(folder, minutes=1, max_steps=8, batch_size=16, seed=0, evaluator_epochs=1)
    return folder
