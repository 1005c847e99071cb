"""The app's Benchmark tab (unlearning/ui/benchmark.py): its handlers as plain functions, on the untrained tiny model.

The table and the heatmap fill in after every cell; a results folder opens again; a hosted profile runs nothing and
reads no folder; the tab builds inside the app."""

from __future__ import annotations

import pytest

from unlearning.hosting.profile import ENV_VAR, get_profile
from unlearning.ui import benchmark as tab


def test_run_streams_table_and_heatmap_then_opens_again(tiny_model, tmp_path):
    folder = str(tmp_path / "results")
    updates = list(tab.run_stream(str(tiny_model), ["uce"], ["3", "4"], 1, 1, folder))
    # the first report (nothing new yet), then one per cell: the original's grid and two uce cells, then the files
    assert len(updates) == 5
    status, table, heatmap = updates[-1]
    assert "Written to" in status and list(table["method"]) == ["original", "uce"]
    assert heatmap.size[0] > 50
    assert "Cells: 3 / 3" in updates[-2][0]
    status, table, heatmap = tab.open_results(folder)
    assert list(table["method"]) == ["original", "uce"] and heatmap is not None
    assert "Could not open" in tab.open_results(str(tmp_path / "nothing"))[0]
    assert "Could not start" in next(tab.run_stream(str(tiny_model), [], [], 1, 1, folder))[0]
    assert "not in the digits concept set" in next(tab.run_stream(str(tiny_model), ["uce"], ["x"], 1, 1, folder))[0]


@pytest.fixture()
def hosted(tmp_path, monkeypatch):
    path = tmp_path / "profile.yaml"
    path.write_text("models: [digits]\nmethods: all\n")
    monkeypatch.setenv(ENV_VAR, str(path))
    get_profile.cache_clear()
    yield
    get_profile.cache_clear()


def test_hosted_profile_runs_nothing(hosted, tmp_path):
    assert next(tab.run_stream("digits", ["uce"], [], 1, 1, str(tmp_path)))[0] == tab.HOSTED_NOTE
    assert tab.open_results(str(tmp_path))[0] == tab.HOSTED_NOTE


def test_tab_builds():
    import gradio as gr

    with gr.Blocks(), gr.Tabs():
        tab.build_tab()
