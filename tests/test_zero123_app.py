"""The Zero123 tab through the app's HTTP API (gradio_client): one fast skip3d run on the shapes-3d twin that
lands as a run folder the Runs tab lists, and bad uploads answered with our own message; cancellation at the
runner (the tab's Cancel closes the same generator; the browser test clicks it)."""

from __future__ import annotations

import json
import threading
import time
import zipfile

import pytest
from apphelpers import RUN_TIMEOUT_S, Z_DOWNLOAD, Z_GALLERY, Z_METRICS, Z_STATUS, launched_app, zero123_args
from PIL import Image

from unlearning.runner import RunRequest, execute, prepare
from unlearning.ui import runs as ui_runs

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def client():
    with launched_app() as url:
        yield gradio_client.Client(url, verbose=False)


def zero123(client, *args):
    return client.submit(*args, api_name="/zero123").result(timeout=RUN_TIMEOUT_S)


def test_a_zero123_run_through_the_api_is_a_run_folder_the_runs_tab_lists(client):
    out = zero123(client, *zero123_args())
    assert str(out[Z_STATUS]).startswith("**skip3d") and "**Done:** forget views" in out[Z_STATUS], out[Z_STATUS]
    assert len(out[Z_GALLERY]) == 2 * 2 * 9  # 2 inputs x (original, unlearned) rows x (input view + 8 views)
    labels = [row[0] for row in out[Z_METRICS]["data"]]
    assert any(label.startswith("forget (blue pyramid) vs override (blue cube): SSIM") for label in labels), labels
    with zipfile.ZipFile(out[Z_DOWNLOAD]) as zf:
        card = json.loads(zf.read("run.json"))
        assert {"metrics.json", "edit.safetensors", "images/forget_grid.png", "images/index.json"} <= set(zf.namelist())
    assert card["method"]["name"] == "skip3d" and card["request"]["anchor"] == "blue cube" and card["settings"]["epochs"] == 1
    names = ui_runs.runs_table()[1]
    assert any(n.endswith(card_name(out[Z_DOWNLOAD])) for n in names)


def card_name(download: str) -> str:
    return download.rsplit("/", 1)[-1].removesuffix(".zip")


@pytest.mark.parametrize(("kind", "message"), [("text", "is not an image"), ("huge", "pixels")])
def test_a_bad_upload_is_answered_with_our_message(client, tmp_path, kind, message):
    """gr.File hands the file to the handler (a gr.Image would decode it first and answer a bare 'error')."""
    from unlearning.hosting.profile import get_profile

    bad = tmp_path / "view.png"
    if kind == "text":
        bad.write_text("this is text, not a picture")
    else:
        side = int(get_profile().limits.max_image_pixels ** 0.5) + 1
        Image.new("RGB", (side, side), "white").save(bad)
    out = zero123(client, *zero123_args(forget_image=gradio_client.handle_file(str(bad))))
    assert str(out[Z_STATUS]).startswith("**Could not run:**") and message in out[Z_STATUS], out[Z_STATUS]


def test_an_uploaded_view_is_staged_and_becomes_the_forget_concept(client, tmp_path):
    from unlearning.datasets import render3d as r3d

    view = tmp_path / "pyramid.png"
    Image.fromarray(r3d.render(r3d.Object3D("pyramid", "blue"), 75.0, 0.0, size=48)).convert("RGBA").save(view)
    out = zero123(client, *zero123_args(forget_image=gradio_client.handle_file(str(view)), settings={"epochs": 1}))
    assert "**Done:**" in out[Z_STATUS], out[Z_STATUS]
    with zipfile.ZipFile(out[Z_DOWNLOAD]) as zf:
        forget = json.loads(zf.read("run.json"))["task"]["forget"][0]
    assert "/.uploads/" in forget and forget.endswith(".png")  # the staged copy, not the client's path


def test_closing_the_run_stops_skip3d_promptly():
    """What the tab's Cancel does: the event's generator is closed, execute sets the cancel event and the method
    stops at its next denoising step."""
    run = prepare(RunRequest(model="shapes-3d", method="skip3d", forget=["blue pyramid"], anchor="blue cube",
                             preserve=["red sphere"], settings={"epochs": 200}, forget_samples=8, retain_samples=8))
    events = execute(run)
    first = next(e for e in events if e.kind == "train")
    assert first.step.step < first.step.total  # mid-training
    t0 = time.perf_counter()
    events.close()
    assert time.perf_counter() - t0 < 10  # the worker noticed within a few UNet calls
    assert not any(t.name == "unlearn-skip3d" and t.is_alive() for t in threading.enumerate())
