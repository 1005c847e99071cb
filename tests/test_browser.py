"""The app in a real browser: Debian's chromium driven by Playwright clicks the real controls.

A fast ESD run set through the form (accordions opened, numbers typed), then a screenshot of the
whole page to ``test-artifacts/app_after_run.png`` for a person to look at; and a bad input that
must show "Could not run" with a message. Skipped where chromium or playwright is missing.
"""

from __future__ import annotations

import re
import time

import pytest
from apphelpers import FAST_COMPARE, FAST_ESD, RUN_TIMEOUT_S, launched_app

from unlearning.ui import unlearn as ui

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
UI_TIMEOUT_MS = 60_000  # page load and a refused request
RUN_TIMEOUT_MS = RUN_TIMEOUT_S * 1000

# the form's labels (app.py) for the fast settings
FAST_FORM = {
    **{name: FAST_ESD[name] for name in ("iterations", "ddim_steps", "batch_size")},
    "samples of the forgotten concept": FAST_COMPARE["forget_samples"],
    "samples per retained concept": FAST_COMPARE["retain_samples"],
    "sampling steps": FAST_COMPARE["steps"],
}


@pytest.fixture(scope="module")
def app_url():
    with launched_app() as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(app_url, wait_until="domcontentloaded")
    unlearn_button(page).wait_for()
    try:
        yield page
    finally:
        context.close()


def unlearn_button(page):
    return page.get_by_role("button", name="Unlearn", exact=True)


def open_accordions(page):
    page.get_by_text("Method settings").click()
    page.get_by_text("Comparison and device").click()
    page.get_by_label("iterations", exact=True).wait_for()


def set_number(page, label: str, value) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Tab")  # blur: the component takes the value


def image_block(page, label_start: str):
    """The gr.Image block whose label starts with ``label_start``."""
    label = page.get_by_test_id("block-label").filter(has_text=label_start)
    return label.locator("xpath=ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' block ')][1]")


def error_toasts(page):
    return page.get_by_test_id("toast-body").filter(has_text=re.compile("error", re.IGNORECASE))


def test_fast_run_in_the_browser(page, artifacts_dir):
    from playwright.sync_api import expect

    open_accordions(page)
    # the form starts at the model's real sampling defaults (Gradio 6 would show an empty Number as 0)
    steps0, _ = ui.sampling_defaults("digits")
    expect(page.get_by_label("sampling steps", exact=True)).to_have_value(str(steps0))
    for label, value in FAST_FORM.items():
        set_number(page, label, value)

    unlearn_button(page).click()
    expect(page.get_by_text("Done.", exact=True)).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(page.get_by_role("gridcell").filter(has_text="forget rate").first).to_be_visible()
    for label in ("forgotten concept: original above", "retained concepts: original above"):
        img = image_block(page, label).locator("img")
        expect(img).to_have_count(1)
        expect(img).to_have_attribute("src", re.compile(r"/gradio_api/file=.+\.png"))
        expect(img).to_be_visible()
        assert img.evaluate("e => e.complete && e.naturalWidth > 0"), f"{label}: image not rendered"
    expect(page.get_by_text("Run folder:")).to_be_visible()
    expect(page.locator("#loss-plot")).to_be_visible()  # a trained method draws its loss
    expect(error_toasts(page)).to_have_count(0)
    assert not page.get_by_text("Could not run").is_visible()

    shot = artifacts_dir / "app_after_run.png"
    shot.unlink(missing_ok=True)
    page.wait_for_timeout(500)  # let the plot and images settle
    page.screenshot(path=str(shot), full_page=True)
    assert shot.is_file() and shot.stat().st_size > 50_000, shot
    from PIL import Image

    with Image.open(shot) as im:
        assert im.width >= 1280 and im.height > 1500, im.size  # the whole page, not the viewport


def test_bad_input_in_the_browser(page):
    from playwright.sync_api import expect

    open_accordions(page)
    set_number(page, "iterations", 0)
    unlearn_button(page).click()
    status = page.get_by_text("Could not run")
    expect(status).to_be_visible()
    # the message is the rest of the status paragraph
    paragraph = page.locator("p", has=page.locator("strong", has_text="Could not run"))
    expect(paragraph).to_contain_text("'iterations' must be >= 1")

    # an empty forget list: remove the selected digit with the dropdown's clear button
    set_number(page, "iterations", FAST_ESD["iterations"])
    page.get_by_title("Clear").first.click()
    unlearn_button(page).click()
    expect(paragraph).to_contain_text("the concept to forget is empty")
    expect(error_toasts(page)).to_have_count(0)


def pick(page, label: str, option: str) -> None:
    """Choose ``option`` in the single-select dropdown labelled ``label``."""
    box = page.get_by_label(label, exact=True)
    box.click()
    page.get_by_role("option", name=option, exact=True).click()


def test_attack_panel_after_a_run(page, artifacts_dir):
    """A fast digits run, then the Attack panel: UnlearnDiffAtk with a tiny budget typed into its settings box fills
    the loss curve, the three image rows and the ASR table; prompt replay on a digits run says why it cannot run.
    ESD runs long enough here to erase the digit: on the 3-iteration run every prompt already shows it and there is
    nothing to attack (no curve)."""
    from playwright.sync_api import expect

    open_accordions(page)
    for label, value in {**FAST_FORM, "iterations": 150}.items():
        set_number(page, label, value)
    unlearn_button(page).click()
    expect(page.get_by_text("Done.", exact=True)).to_be_visible(timeout=RUN_TIMEOUT_MS)

    settings = page.get_by_role("textbox", name="attack settings")  # its accessible name includes the info line
    settings.fill("samples=2, timesteps=2, iterations=3, num_inference_steps=3")
    settings.press("Tab")
    page.get_by_role("button", name="Attack the unlearned model").click()
    expect(page.get_by_text("Rows: original, unlearned, unlearned under attack", exact=False)).to_be_visible(timeout=RUN_TIMEOUT_MS)
    img = image_block(page, "attack: original (top)").locator("img")
    expect(img).to_have_attribute("src", re.compile(r"/gradio_api/file=.+attack_grid\.png"))
    assert img.evaluate("e => e.complete && e.naturalWidth > 0"), "attack grid not rendered"
    expect(page.get_by_role("cell", name="UnlearnDiffAtk (adversarial prompt)")).to_be_visible()
    expect(page.get_by_text("Attack loss")).to_be_visible()
    expect(page.get_by_text("Nothing to optimise", exact=False)).to_have_count(0)  # the erasure left something to attack
    expect(error_toasts(page)).to_have_count(0)
    page.wait_for_timeout(800)  # let the loss curve draw
    shot = artifacts_dir / "attack_panel.png"
    shot.unlink(missing_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.is_file() and shot.stat().st_size > 50_000

    pick(page, "attack", "Prompt-set replay (I2P / Ring-A-Bell / P4D files)")
    page.get_by_role("button", name="Attack the unlearned model").click()
    expect(page.get_by_text("does not support class-conditional models", exact=False)).to_be_visible()
    expect(page.get_by_role("cell", name="UnlearnDiffAtk (adversarial prompt)")).to_be_visible()  # the table keeps its row


def test_text_to_image_run_in_the_browser(page, artifacts_dir):
    """shapes-sd, UCE, two concepts typed into the forget box (one with an anchor), a screenshot."""
    from playwright.sync_api import expect

    pick(page, "Model", "shapes-sd (embedded Stable Diffusion)")
    expect(page.get_by_text("tiny Stable Diffusion", exact=False).first).to_be_visible()
    pick(page, "Method", "UCE (closed-form cross-attention edit)")
    forget = page.get_by_label("Concept(s) to forget", exact=True)
    page.get_by_title("Clear").first.click()  # the model change pre-selected its first concept
    for concept in ("star -> circle", "heart"):
        forget.click()
        forget.fill(concept)
        forget.press("Enter")
    page.get_by_text("Comparison and device").click()
    for label, value in {"samples of the forgotten concept": 8, "samples per retained concept": 1, "sampling steps": 10}.items():
        set_number(page, label, value)
    unlearn_button(page).click()
    expect(page.get_by_text("Done.", exact=True)).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(page.get_by_text("forgetting star, heart", exact=False).first).to_be_visible()
    expect(page.locator("#loss-plot")).to_be_hidden()  # a closed form has no loss curve: no empty box in its place
    img = image_block(page, "forgotten concept: original above").locator("img")
    expect(img).to_have_attribute("src", re.compile(r"/gradio_api/file=.+\.png"))
    page.get_by_role("button", name="Export the unlearned model (full diffusers folder)").click()
    # saving and zipping the 20 MB folder takes ~8 s on a loaded 2-core machine (main too): more than expect's 5 s
    expect(page.get_by_text("StableDiffusionPipeline.from_pretrained", exact=False)).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(error_toasts(page)).to_have_count(0)
    shot = artifacts_dir / "app_after_t2i_run.png"
    shot.unlink(missing_ok=True)
    page.wait_for_timeout(500)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.is_file() and shot.stat().st_size > 50_000, shot


def test_the_form_shows_what_applies_to_the_model_and_method(page):
    """Digits (class labels): no own-prompt box or grid; the anchor only for methods that map a concept; UCE's
    EOS-token switch only for a text-to-image model."""
    from playwright.sync_api import expect

    own_prompts = page.get_by_role("textbox", name=re.compile(r"^Your own prompts \(optional\)"))  # label + its info
    anchor = page.get_by_label("Anchor (draw this instead)", exact=True)
    eos = page.get_by_label("include_last_token", exact=True).filter(visible=True)  # UCE's and ScaPre's: the one shown
    expect(anchor).to_be_visible()
    expect(own_prompts).to_be_hidden()
    expect(page.get_by_test_id("block-label").filter(has_text="your prompts: original above")).to_be_hidden()
    pick(page, "Method", "Gradient ascent (NegGrad / NegGrad+)")
    expect(anchor).to_be_hidden()
    pick(page, "Model", "shapes-sd (embedded Stable Diffusion)")
    expect(own_prompts).to_be_visible()
    pick(page, "Method", "UCE (closed-form cross-attention edit)")
    expect(anchor).to_be_visible()
    page.get_by_text("Method settings").click()
    expect(eos).to_be_visible()
    pick(page, "Model", "digits (embedded)")
    expect(eos).to_be_hidden()
    expect(own_prompts).to_be_hidden()
    expect(error_toasts(page)).to_have_count(0)


def test_scaling_tab_shows_the_stored_curve(page, artifacts_dir):
    """The committed scaling results (bench/results/scaling.json) as two line plots and a table."""
    from playwright.sync_api import expect

    from unlearning.benchmarks.scaling import load_results

    page.get_by_role("tab", name="Scaling: many concepts at once").click()
    if load_results() is None:
        expect(page.get_by_text("No scaling results yet", exact=False)).to_be_visible()
        return
    expect(page.get_by_role("columnheader", name="retain accuracy")).to_be_visible()
    expect(page.get_by_text("Forget rate of the erased concepts", exact=False)).to_be_visible()
    page.wait_for_timeout(1000)  # let the plots draw
    shot = artifacts_dir / "scaling_tab.png"
    shot.unlink(missing_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.is_file() and shot.stat().st_size > 20_000


def test_zero123_tab_generated_controls_cancel_and_multi_view_grid(page, artifacts_dir):
    """The Zero123 tab's skip3d controls are generated from Skip3DSettings (twin-tuned values shown); Cancel stops a
    long run at once (the method's thread ends); a fast run then shows the multi-view grid and its metrics; a bad
    input (forget = override) shows a message instead of crashing."""
    import threading

    from playwright.sync_api import expect

    from unlearning.methods import get_method
    from unlearning.methods.base import settings_fields

    page.get_by_role("tab", name="Zero123: novel views").click()
    tab = page.locator("#zero123-tab")
    tab.get_by_text("skip3d settings").click()
    for f in settings_fields(get_method("skip3d").settings_cls):  # one control per field, labelled by the field
        expect(tab.get_by_label(f.metadata.get("label") or f.name, exact=True)).to_have_count(1)
    expect(tab.get_by_label("azimuth_step", exact=True)).to_have_value("45")  # tuned for shapes-3d (paper: 10)
    expect(tab.get_by_label("lr_gen", exact=True)).to_have_value("0.0002")
    tab.get_by_label("time sampling at skip 0 / 8 / 12 / 16 (the sampling table)").uncheck()

    set_number(tab, "epochs", 200)
    tab.get_by_role("button", name="Run", exact=True).click()
    # the status line (case-sensitive: the progress bar says "unlearning: step" too)
    expect(tab.get_by_text(re.compile("Unlearning: step")).first).to_be_visible(timeout=RUN_TIMEOUT_MS)
    tab.get_by_role("button", name="Cancel", exact=True).click()
    deadline = time.monotonic() + 20
    while any(t.name == "unlearn-skip3d" and t.is_alive() for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the cancelled skip3d run is still training"
        time.sleep(0.2)

    for label, value in (("epochs", 1), ("azimuth_step", 90), ("steps", 8), ("skip", 4)):
        set_number(tab, label, value)
    tab.get_by_role("button", name="Run", exact=True).click()
    expect(tab.get_by_text("Done: forget views", exact=False).first).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(tab.get_by_role("gridcell").filter(has_text="override (blue cube)").first).to_be_visible()
    # not measured: the plain run was off (case-sensitive: the setting's help says "report the measured speedup")
    expect(tab.get_by_text(re.compile("Measured speedup"))).to_have_count(0)
    tiles = tab.locator("[data-testid='gallery'] button.thumbnail-item, .grid-wrap button")
    expect(tiles.first).to_be_visible()
    assert tiles.count() >= 2 * 9
    tiles.nth(3).click()
    expect(error_toasts(page)).to_have_count(0)
    page.wait_for_timeout(800)
    shot = artifacts_dir / "zero123_tab.png"
    shot.unlink(missing_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.is_file() and shot.stat().st_size > 50_000

    pick(page, "override object (drawn instead)", "blue pyramid")
    tab.get_by_role("button", name="Run", exact=True).click()
    expect(tab.get_by_text("is also being forgotten", exact=False).first).to_be_visible()

def test_language_model_tab_runs_rmu_and_refuses_a_bad_layer(page, artifacts_dir):
    """facts-lm, RMU with the twin's tuned settings, 8 questions per domain: the continuations and the accuracy table
    fill in and the run finishes; then a layer the model does not have shows a message instead of crashing."""
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Language model").click()
    tab = page.get_by_role("tabpanel").filter(has=page.get_by_role("button", name="Unlearn the domain"))
    set_number(tab, "questions per domain (empty: all held-out)", 8)
    tab.get_by_role("button", name="Unlearn the domain").click()
    expect(tab.get_by_text("Done.", exact=False)).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(tab.get_by_text("forgetting hazard, keeping general", exact=False).first).to_be_visible()
    expect(tab.get_by_role("gridcell").filter(has_text="forget-domain accuracy").first).to_be_visible()
    expect(tab.get_by_role("gridcell").filter(has_text="stailide is made from").first).to_be_visible()  # a demo prompt
    expect(tab.get_by_text("Timings", exact=False).first).to_be_visible()
    expect(error_toasts(page)).to_have_count(0)
    page.wait_for_timeout(800)  # let the loss plot draw
    shot = artifacts_dir / "language_model_tab.png"
    shot.unlink(missing_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.is_file() and shot.stat().st_size > 50_000

    tab.get_by_text("Method settings (paper defaults", exact=False).click()
    layer = tab.get_by_label("layer", exact=True)
    layer.fill("99")
    layer.press("Tab")
    tab.get_by_role("button", name="Unlearn the domain").click()
    expect(tab.get_by_text("layer 99 does not exist", exact=False).first).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(tab.get_by_text("Could not run", exact=False).first).to_be_visible()
