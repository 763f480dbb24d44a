"""The app in a real browser: headless Chromium, driven by Playwright, against a server on 127.0.0.1.

Needs Debian's chromium (``apt-get install -y chromium``) and ``pip install playwright``, and is
skipped with that reason when either is missing. Screenshots go to ``$BROWSER_ARTIFACTS_DIR``,
else to a pytest temporary folder. The page may reach only the test's own server: every request
to another host is aborted and makes the test fail.
"""

import json
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Iterator

import pytest
import torch

import app
from brain_tumor_classifier import BrainTumorClassifier
from brain_tumor_classifier.explain import DEFAULT_METHODS
from space.ui import build_demo, launch_options
from upload_cases import dicom_monochrome2_window

CHROMIUM = Path(os.environ.get("CHROMIUM_EXECUTABLE", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Generous, because the 2-core CI machine may be busy: a page load there took about 7 s.
TIMEOUT_MS = 120_000

sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright for Python (pip install playwright)")
if not CHROMIUM.is_file():
    pytest.skip(f"needs Chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _save_tiny_model(folder: Path, *, seed: int, split: str) -> None:
    torch.manual_seed(seed)
    BrainTumorClassifier(architecture="braincancernet", input_size=64).save_pretrained(folder)
    (folder / "train_config.json").write_text(json.dumps({"model": folder.name, "split": split}))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """Run folders as under space/models: two random-split runs and one group-split run."""
    folder = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_model_dir, folder / "tiny-first")
    (folder / "tiny-first" / "train_config.json").write_text(json.dumps({"model": "tiny-first", "split": "random"}))
    _save_tiny_model(folder / "tiny-second", seed=1, split="random")
    _save_tiny_model(folder / "tiny-second-group", seed=2, split="group")
    return folder


@pytest.fixture(scope="module")
def server_url(models_dir, tmp_path_factory) -> Iterator[str]:
    """The app on 127.0.0.1, with its models found and ranked the way app.py does it."""
    # tiny-second wins the comparison, so it must be selected at start.
    report = tmp_path_factory.mktemp("reports") / "comparison.json"
    results = [
        {"model": "tiny-first", "split": "group", "metrics": {"accuracy": 0.5}},
        {"model": "tiny-second", "split": "group", "metrics": {"accuracy": 0.6}},
    ]
    report.write_text(json.dumps({"results": results}))
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(app.MODEL_ENV_VAR, raising=False)
        sources = app.model_sources(
            app.parse_args([]),
            config_path=models_dir / "no-config.json",
            models_dir=models_dir,
            comparison_path=report,
        )
    predictors = app.load_predictors(sources)
    demo = build_demo(predictors, default_model=next(iter(predictors)))

    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser() -> Iterator["sync_api.Browser"]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def artifacts_dir(tmp_path_factory) -> Path:
    folder = os.environ.get("BROWSER_ARTIFACTS_DIR")
    if not folder:
        return tmp_path_factory.mktemp("browser-artifacts")
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def page(browser, server_url) -> Iterator["sync_api.Page"]:
    """A fresh page on the app, with every request to another host aborted and recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    outside_requests = []

    def keep_local(route):
        if route.request.url.startswith(server_url):
            route.continue_()
        else:
            outside_requests.append(route.request.url)
            route.abort()

    page.route("**/*", keep_local)
    page.goto(server_url + "/")
    page.wait_for_selector("#slice input[type=file]", state="attached")
    try:
        yield page
    finally:
        context.close()
    assert outside_requests == [], f"the page tried to reach other hosts: {outside_requests}"


def _upload(page, path: Path) -> None:
    page.locator("#slice input[type=file]").set_input_files(str(path))


def _wait_for_answer(page, model_name: str) -> None:
    answer = re.compile(rf"Answer from model {re.escape(model_name)} \(")
    page.locator("#model-line").filter(has_text=answer).wait_for()


def _wait_for_gallery(page, count: int) -> None:
    # After a new prediction the gallery swaps its image sources, so an image counts as shown only
    # once the browser has decoded its new source.
    page.wait_for_function(
        """count => {
            const images = [...document.querySelectorAll('#gallery img')];
            return images.length === count && images.every(image => image.complete && image.naturalWidth > 0);
        }""",
        arg=count,
    )


def test_upload_shows_label_and_gallery(page, slice_png, artifacts_dir):
    assert page.locator("#model input").input_value() == "tiny-second"

    _upload(page, slice_png)
    _wait_for_answer(page, "tiny-second")
    _wait_for_gallery(page, len(DEFAULT_METHODS))
    page.screenshot(path=str(artifacts_dir / "upload.png"), full_page=True)

    label = page.locator("[data-testid=label-output-value]").inner_text().strip()
    assert label in ("glioma", "meningioma", "pituitary")
    images = page.locator("#gallery img")
    assert images.count() == len(DEFAULT_METHODS)
    loaded = images.evaluate_all("images => images.map(image => image.complete && image.naturalWidth > 0)")
    assert all(loaded), f"gallery images not shown: {loaded}"
    gallery_text = page.locator("#gallery").inner_text()
    for method in DEFAULT_METHODS:
        assert method in gallery_text, f"no gallery caption names {method}"
    # The server deletes the upload shortly after reading it, so the preview must have loaded by then.
    preview = page.locator("#slice img").first
    assert preview.evaluate("image => image.complete && image.naturalWidth > 0"), "the uploaded slice is not shown"


def test_switch_model_classifies_again(page, slice_png, artifacts_dir):
    _upload(page, slice_png)
    _wait_for_answer(page, "tiny-second")

    page.locator("#model input").click()
    options = page.locator("[data-testid=dropdown-option]")
    options.first.wait_for()
    # Each option's text starts with the check mark of the selected option, hidden or not.
    names = sorted(text.replace("✓", "").strip() for text in options.all_inner_texts())
    assert names == ["tiny-first", "tiny-second"]
    joins = []
    page.on("request", lambda request: joins.append(request.url) if "queue/join" in request.url else None)
    options.filter(has_text="tiny-first").click()
    _wait_for_answer(page, "tiny-first")
    _wait_for_gallery(page, len(DEFAULT_METHODS))
    page.wait_for_timeout(2_000)
    page.screenshot(path=str(artifacts_dir / "switch-model.png"), full_page=True)

    assert len(joins) == 1, f"one menu choice must classify once, got {len(joins)} requests"

    assert page.locator("#model input").input_value() == "tiny-first"
    captions = page.locator("#gallery").inner_text()
    top_class = page.locator("[data-testid=label-output-value]").inner_text().strip()
    assert captions.count(top_class) >= len(DEFAULT_METHODS), "gallery captions do not name the new top class"

    # The upload's file was deleted after the first prediction, so this uses the slice the server kept.
    with page.expect_response(lambda response: "queue/join" in response.url):
        page.locator("#classify").click()
    page.wait_for_timeout(3_000)
    assert page.locator("[data-testid=toast-body]").count() == 0, page.locator("[data-testid=toast-body]").all_inner_texts()
    _wait_for_gallery(page, len(DEFAULT_METHODS))


def test_clearing_slice_clears_result(page, slice_png, artifacts_dir):
    _upload(page, slice_png)
    _wait_for_answer(page, "tiny-second")
    _wait_for_gallery(page, len(DEFAULT_METHODS))

    page.locator("#slice button[aria-label='Remove Image']").click()
    page.locator("#model-line").filter(has_text="Selected model: tiny-second").wait_for()
    page.screenshot(path=str(artifacts_dir / "cleared.png"), full_page=True)

    assert page.locator("#gallery img").count() == 0
    assert page.locator("[data-testid=label-output-value]").count() == 0


def test_dicom_file_box_classifies(page, tmp_path, artifacts_dir):
    dicom_path = tmp_path / "slice.dcm"
    dicom_path.write_bytes(dicom_monochrome2_window())

    page.locator("#slice-file input[type=file]").set_input_files(str(dicom_path))
    _wait_for_answer(page, "tiny-second")
    _wait_for_gallery(page, len(DEFAULT_METHODS))
    page.screenshot(path=str(artifacts_dir / "dicom-file.png"), full_page=True)

    label = page.locator("[data-testid=label-output-value]").inner_text().strip()
    assert label in ("glioma", "meningioma", "pituitary")


def test_bad_file_shows_message(page, tmp_path, artifacts_dir):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("plain text, not a PNG")

    _upload(page, not_an_image)
    toast = page.locator("[data-testid=toast-body]").filter(has_text="notes.png")
    toast.first.wait_for()
    page.screenshot(path=str(artifacts_dir / "bad-file.png"), full_page=True)

    assert "notes.png" in toast.first.inner_text()
    assert page.locator("#gallery img").count() == 0
    # The badge belongs on the result boxes. On the model line it covered the model's name.
    assert page.locator("#model-line .error").count() == 0
    assert page.locator("#model-line").inner_text().startswith("Selected model: tiny-second")
    # Gradio closes pop-ups after 10 s by default. The message must stay until the user closes it.
    page.wait_for_timeout(12_000)
    assert toast.first.is_visible(), "the error message closed before the user could read it"
