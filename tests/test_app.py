"""The Gradio app end to end: a real server on 127.0.0.1, called through gradio_client."""

import ast
import importlib
import json
import os
import signal
import socket
import threading
import time
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import gradio as gr
import pytest
import torch
from gradio.processing_utils import encode_pil_to_bytes
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError
from huggingface_hub import SpaceCard

import app
from brain_tumor_classifier import BrainTumorClassifier
from brain_tumor_classifier.explain import DEFAULT_METHODS
from brain_tumor_classifier.image_io import load_upload
from brain_tumor_classifier.predictor import Predictor
from space import ui
from space.client import client_temp_folder as client_temp_folder_of
from space.model_choice import discover_run_folders, rank_run_folders, read_comparison
from space.ui import DISCLAIMER, build_demo, example_images, launch_options
from train import space as space_builder


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(demo: gr.Blocks) -> Iterator[str]:
    """Launch ``demo`` on 127.0.0.1 in the background and close it on exit, also after a failure."""
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module", autouse=True)
def client_temp_folder(tmp_path_factory) -> Iterator[Path]:
    """Make this module's folder Python's temp folder while its gradio_client clients run.

    gradio_client 2.7 fetches each output file through a new folder in the temp folder and leaves
    that folder behind empty. ``mktemp`` fixes pytest's own base folder before the switch.
    """
    with client_temp_folder_of(tmp_path_factory.mktemp("client-temp")) as folder:
        yield folder


def _client(url: str, downloads: Path) -> Client:
    # httpx's default 5 s timeout for uploads and queue requests is too short on a busy 2-core machine.
    return Client(url, verbose=False, download_files=str(downloads), httpx_kwargs={"timeout": 120})


@pytest.fixture(scope="module")
def predictor(tiny_model_dir) -> Predictor:
    return Predictor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def client(predictor, tmp_path_factory) -> Iterator[Client]:
    downloads = tmp_path_factory.mktemp("client-downloads")
    with serving(build_demo(predictor)) as url:
        yield _client(url, downloads)


class _StaticPredictor(Predictor):
    """A Predictor whose predictions carry fixed extra fields, as a newer Prediction would."""

    def __init__(self, base: Predictor, **extra) -> None:
        super().__init__(base.classifier, name=base.name, methods=base.methods)
        self.extra = extra

    def predict(self, image, *, explain: bool = True):
        prediction = super().predict(image, explain=explain)
        return types.SimpleNamespace(**{**vars(prediction), **self.extra})


def _write_run_folder(parent: Path, name: str, *, split: str | None, model: str | None = None) -> Path:
    # Discovery only checks that the export files exist, so empty files stand in for them.
    folder = parent / name
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    if split is not None:
        config = {"model": model or name.removesuffix("-group"), "split": split}
        (folder / "train_config.json").write_text(json.dumps(config))
    return folder


def _comparison(path: Path, accuracies: dict[tuple[str, str], float]) -> Path:
    results = [
        {"model": model, "split": split, "run_dir": f"space/models/{model}", "metrics": {"accuracy": accuracy}}
        for (model, split), accuracy in accuracies.items()
    ]
    path.write_text(json.dumps({"command": "python -m train.compare", "results": results}))
    return path


# Serving predictions ----------------------------------------------------------------------------


def test_server_returns_label_and_gallery(client, predictor, slice_png):
    label, gallery, model_line, notes = client.predict(handle_file(str(slice_png)), api_name="/predict")

    assert label["label"] in predictor.label_names
    assert {item["label"] for item in label["confidences"]} == set(predictor.label_names)
    assert len(gallery) >= 5
    assert len(gallery) == len(DEFAULT_METHODS)
    for item in gallery:
        assert Path(item["image"]).is_file()
        assert label["label"] in item["caption"]
    assert model_line.startswith(f"Answer from model **{predictor.name}**")
    assert "Warning" not in notes


def test_server_reports_bad_upload(client, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("plain text")

    with pytest.raises(AppError, match="'notes.png'"):
        client.predict(handle_file(str(not_an_image)), api_name="/predict")


def test_server_reports_missing_image(client):
    with pytest.raises(AppError, match="No image was given"):
        client.predict(None, api_name="/predict")


def test_server_offers_several_models(tiny_model_dir, slice_png, tmp_path):
    predictors = {
        "first": Predictor.from_pretrained(tiny_model_dir, name="first"),
        "second": Predictor.from_pretrained(tiny_model_dir, name="second"),
    }
    with serving(build_demo(predictors, default_model="second")) as url:
        client = _client(url, tmp_path)
        _, _, default_line, _ = client.predict(handle_file(str(slice_png)), api_name="/predict")
        _, _, chosen_line, _ = client.predict(handle_file(str(slice_png)), "first", api_name="/predict")
        with pytest.raises(AppError, match="Unknown model 'third'"):
            client.predict(handle_file(str(slice_png)), "third", api_name="/predict")

    assert "**second**" in default_line
    assert "**first**" in chosen_line


def test_unknown_default_model_is_rejected(predictor):
    with pytest.raises(ValueError, match="default_model 'absent' is not one of the models"):
        build_demo(predictor, default_model="absent")


# Warnings and notices -----------------------------------------------------------------------------


def test_warning_replaces_tumor_type(predictor, slice_png, tmp_path):
    warned = _StaticPredictor(
        predictor, out_of_scope=True, warning="This does not look like an MRI slice.", notices=["Used frame 1 of 3."]
    )
    with serving(build_demo(warned)) as url:
        client = _client(url, tmp_path)
        label, gallery, model_line, notes = client.predict(handle_file(str(slice_png)), api_name="/predict")

    assert label["label"] == ui.WITHHELD_LABEL
    assert not label.get("confidences")
    assert gallery == []
    assert "This does not look like an MRI slice." in notes
    assert "Used frame 1 of 3." in notes
    assert model_line.startswith(f"Answer from model **{predictor.name}**")


def test_out_of_scope_without_text_warns(predictor, slice_png):
    handler = ui._make_handler({predictor.name: _StaticPredictor(predictor, out_of_scope=True, warning=None)})
    # Outside a request, gr.Warning falls back to a Python warning.
    with pytest.warns(UserWarning, match="does not look like the MRI slices"):
        label, gallery, _, notes = handler({"path": str(slice_png)}, predictor.name)

    assert label == ui.WITHHELD_LABEL
    assert gallery == []
    assert ui.OUT_OF_SCOPE_WARNING in notes


def test_notices_shown_beside_probabilities(predictor, slice_png):
    handler = ui._make_handler({predictor.name: _StaticPredictor(predictor, notices=["Converted RGB to grayscale."])})
    label, gallery, _, notes = handler({"path": str(slice_png)}, predictor.name)

    assert set(label) == set(predictor.label_names)
    assert len(gallery) == len(DEFAULT_METHODS)
    assert "Converted RGB to grayscale." in notes
    assert "Warning" not in notes


def test_model_switch_without_slice_clears_answer(predictor):
    switch = ui._make_model_switch_handler({predictor.name: predictor})
    label, gallery, model_line, notes = switch(None, None, predictor.name)

    assert label is None
    assert gallery == []
    assert model_line.startswith(f"Selected model: **{predictor.name}**")
    assert notes == ""


def test_model_switch_classifies_file_box_upload(predictor, slice_png):
    switch = ui._make_model_switch_handler({predictor.name: predictor})
    label, gallery, model_line, _ = switch(None, {"path": str(slice_png)}, predictor.name)

    assert set(label) == set(predictor.label_names)
    assert len(gallery) == len(predictor.methods)
    assert model_line.startswith(f"Answer from model **{predictor.name}**")


def test_classify_button_uses_either_box(predictor, slice_png):
    classify = ui._make_page_handler({predictor.name: predictor})
    from_image_box = classify({"path": str(slice_png)}, None, predictor.name)
    from_file_box = classify(None, {"path": str(slice_png)}, predictor.name)

    assert from_image_box[0] == from_file_box[0]


def test_gallery_files_differ_per_request(predictor, slice_png):
    # Gradio names a gallery file after a hash of its encoded bytes.
    prediction = predictor.predict(str(slice_png))
    first, second = (ui._gallery(prediction)[0][0] for _ in range(2))

    assert encode_pil_to_bytes(first, ui.GALLERY_FORMAT) != encode_pil_to_bytes(second, ui.GALLERY_FORMAT)
    assert first.tobytes() == second.tobytes(), "the pixels must stay the same"


# Uploads deleted once read ------------------------------------------------------------------------


def _cached_upload(cache: Path, source: Path, folder: str = "0f3a") -> Path:
    # Gradio stores each upload in a folder of its own inside its cache.
    path = cache / folder / source.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(source.read_bytes())
    return path


def _upload_store(cache: Path, *, kept: set[str] = frozenset(), **options) -> ui._UploadStore:
    # Gradio's upload route adds each upload's path to upload_file_set.
    uploaded = {str(path) for path in cache.rglob("*") if path.is_file()}
    uploads = ui._UploadStore(**{"delete_delay_s": 0, **options})
    uploads.demo = types.SimpleNamespace(
        GRADIO_CACHE=str(cache), upload_file_set=uploaded, blocks={0: types.SimpleNamespace(keep_in_cache=kept)}
    )
    return uploads


def test_upload_deleted_slice_kept(predictor, slice_png, tmp_path):
    cache = tmp_path / "cache"
    upload = _cached_upload(cache, slice_png)
    uploads = _upload_store(cache)
    classify = ui._make_handler({predictor.name: predictor}, uploads)
    switch = ui._make_model_switch_handler({predictor.name: predictor}, uploads)

    first = classify({"path": str(upload)}, predictor.name)

    assert not upload.exists(), "the upload must be deleted once read"
    # A model switch classifies the kept slice again.
    again = switch({"path": str(upload)}, None, predictor.name)
    assert again[0] == first[0]
    # The same file uploaded again is classified from the kept slice, and deleted too.
    _cached_upload(cache, slice_png)
    classify({"path": str(upload)}, predictor.name)
    assert not upload.exists()


def test_expired_upload_needs_new_upload(predictor, slice_png, tmp_path):
    cache = tmp_path / "cache"
    upload = _cached_upload(cache, slice_png)
    uploads = _upload_store(cache, max_age_s=0)
    classify = ui._make_page_handler({predictor.name: predictor}, uploads)
    classify({"path": str(upload)}, None, predictor.name)
    time.sleep(0.01)
    uploads.drop_expired()

    with pytest.raises(gr.Error) as raised:
        classify({"path": str(upload)}, None, predictor.name)
    assert raised.value.message == ui.UPLOAD_GONE_MESSAGE


def test_decoded_uploads_stay_under_budget(slice_png, tmp_path):
    cache = tmp_path / "cache"
    paths = [str(_cached_upload(cache, slice_png, folder=f"{index:02d}")) for index in range(18)]
    one_slice = ui._image_bytes(load_upload(slice_png))
    uploads = _upload_store(cache, max_bytes=16 * one_slice)
    too_small = _upload_store(cache, max_bytes=16 * one_slice - 1)

    for path in paths[:17]:
        uploads.read(path)
    too_small.read(paths[17])

    assert uploads._use(uploads._decoded, paths[0]) is None, "the oldest slice must go first"
    assert uploads._use(uploads._decoded, paths[16]) is not None
    assert too_small._use(too_small._decoded, paths[17]) is None, "a slice over max_bytes / 16 must not be kept"


def test_bad_upload_same_message_twice(predictor, tmp_path):
    cache = tmp_path / "cache"
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    upload = _cached_upload(cache, bad)
    classify = ui._make_page_handler({predictor.name: predictor}, _upload_store(cache))

    messages = []
    for _ in range(2):
        with pytest.raises(gr.Error) as raised:
            classify({"path": str(upload)}, None, predictor.name)
        messages.append(raised.value.message)

    assert not upload.exists()
    assert "'notes.png'" in messages[0]
    assert messages[1] == messages[0]


def test_store_spares_non_uploads(predictor, slice_png, tmp_path):
    cache = tmp_path / "cache"
    example = _cached_upload(cache, slice_png)
    uploads = _upload_store(cache, kept={str(example)})
    # An overlay, or any other file in the cache that did not come through the upload route.
    overlay = _cached_upload(cache, slice_png, folder="5e77")
    classify = ui._make_handler({predictor.name: predictor}, uploads)

    for path in (example, overlay, slice_png):
        classify({"path": str(path)}, predictor.name)

    assert example.is_file(), "files Gradio keeps in its cache, such as examples, must stay"
    assert overlay.is_file(), "only files from the upload route may be deleted"
    assert slice_png.is_file(), "files outside Gradio's cache must stay"


def test_store_spares_newer_upload(slice_png, tmp_path):
    cache = tmp_path / "cache"
    upload = _cached_upload(cache, slice_png)
    uploads = _upload_store(cache, delete_delay_s=0.5)
    uploads.read(str(upload))

    # The same bytes uploaded again replace the file under the same path before the timer fires.
    replacement = upload.with_name("replacement")
    replacement.write_bytes(slice_png.read_bytes())
    os.replace(replacement, upload)
    time.sleep(1.0)

    assert upload.is_file(), "the timer of the first read must not delete a newer upload"


def test_store_waits_before_deleting(tmp_path, slice_png):
    cache = tmp_path / "cache"
    upload = _cached_upload(cache, slice_png)
    uploads = _upload_store(cache, delete_delay_s=0.5)

    uploads.read(str(upload))

    assert upload.is_file(), "the browser may still be loading the preview"
    deadline = time.monotonic() + 30
    while upload.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not upload.exists()


# Queue and upload limits -----------------------------------------------------------------------------


def test_demo_queue_is_bounded(predictor):
    demo = build_demo(predictor)

    assert demo._queue.max_size == ui.MAX_QUEUE_SIZE
    assert demo._queue.default_concurrency_limit == ui.CONCURRENCY_LIMIT


def test_api_outputs_have_names(predictor):
    demo = build_demo(predictor)

    returns = demo.get_api_info()["named_endpoints"]["/predict"]["returns"]

    assert [output["label"] for output in returns] == [
        "Class probabilities",
        "Grad-CAM overlays for the top class",
        "Model",
        "Notes",
    ]


def test_api_parameters_match_readme(predictor):
    demo = build_demo(predictor)
    parameters = demo.get_api_info()["named_endpoints"]["/predict"]["parameters"]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()

    names = [parameter["parameter_name"] for parameter in parameters]
    assert names == ["image", "model_name"]
    assert 'api_name="/predict"' in readme
    for name in names:
        assert f"`{name}`" in readme, f"the README's API section does not name the parameter {name}"


class _BlockingPredictor(Predictor):
    """A Predictor whose predictions wait until the test releases them."""

    def __init__(self, base: Predictor) -> None:
        super().__init__(base.classifier, name=base.name, methods=())
        self.started = threading.Event()
        self.release = threading.Event()

    def predict(self, image, *, explain: bool = True):
        self.started.set()
        if not self.release.wait(timeout=60):
            raise TimeoutError("the test never released the prediction")
        return super().predict(image, explain=False)


def test_full_queue_rejects_request(predictor, slice_png, tmp_path):
    blocking = _BlockingPredictor(predictor)
    demo = build_demo(blocking, concurrency_limit=1, max_queue_size=1)
    with serving(demo) as url:
        client = _client(url, tmp_path)
        try:
            running = client.submit(handle_file(str(slice_png)), api_name="/predict")
            assert blocking.started.wait(timeout=60), "the first request never started"
            waiting = client.submit(handle_file(str(slice_png)), api_name="/predict")
            # The second request needs a moment to reach the queue before the third is sent.
            for _ in range(100):
                if len(demo._queue) == 1:
                    break
                threading.Event().wait(0.1)
            assert len(demo._queue) == 1, "the second request never reached the queue"

            with pytest.raises(QueueError, match="Queue is full"):
                client.predict(handle_file(str(slice_png)), api_name="/predict")
        finally:
            blocking.release.set()
        assert running.result(timeout=60)[2].startswith("Answer from model")
        assert waiting.result(timeout=60)[2].startswith("Answer from model")


def test_upload_limit_from_image_io():
    try:
        from brain_tumor_classifier import image_io
    except ModuleNotFoundError:
        image_io = None
    expected = getattr(image_io, "MAX_FILE_SIZE_BYTES", getattr(image_io, "MAX_FILE_BYTES", 20 * 1024 * 1024))

    assert ui.MAX_UPLOAD_BYTES == expected
    assert launch_options() == {"max_file_size": expected, "run_history": False}


def test_main_launches_with_upload_limit(tiny_model_dir, monkeypatch):
    launched = {}

    def record_launch(self, **kwargs):
        launched.update(kwargs)

    monkeypatch.setattr(gr.Blocks, "launch", record_launch)
    sigterm_handler = signal.getsignal(signal.SIGTERM)
    status = app.main(["--model", str(tiny_model_dir), "--port", "7999"])

    assert status == 0
    assert signal.getsignal(signal.SIGTERM) is sigterm_handler, "main must restore the SIGTERM handler"
    assert launched["max_file_size"] == ui.MAX_UPLOAD_BYTES
    assert launched["run_history"] is False
    assert launched["server_name"] == "127.0.0.1"
    assert launched["server_port"] == 7999


# The page ----------------------------------------------------------------------------------------------


def test_demo_shows_disclaimer_and_deletes_uploads(predictor):
    demo = build_demo(predictor)
    markdown = [block.value for block in demo.blocks.values() if isinstance(block, gr.Markdown)]

    assert any("Research use only, not for diagnosis" in text for text in markdown)
    assert DISCLAIMER in markdown
    assert demo.delete_cache is not None


def _markdown_with_id(demo: gr.Blocks, elem_id: str) -> str:
    return next(block.value for block in demo.blocks.values() if isinstance(block, gr.Markdown) and block.elem_id == elem_id)


def test_gallery_note_explains_energy_pointing(predictor):
    scores = {"GradCAM": {"energy_pointing": 0.09}, "chance_baseline": {"box_area_share": 0.0252}}
    scored = Predictor(predictor.classifier, name="scored", methods=("GradCAM",), faithfulness=scores)

    note = _markdown_with_id(build_demo(scored), "gallery-note")

    assert "energy pointing" in note
    assert "2.5%" in note
    assert "not on this one" in note


def test_gallery_note_without_scores_is_plain(predictor):
    note = _markdown_with_id(build_demo(predictor), "gallery-note")

    assert note.startswith("Each overlay shows where one Grad-CAM method")
    assert "energy pointing" not in note


def test_examples_come_from_folder(tmp_path, slice_image, predictor):
    for name in ("b.png", "a.jpg"):
        slice_image.save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an example")

    assert example_images(tmp_path) == [str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]
    assert example_images(None) == []
    assert isinstance(build_demo(predictor, examples_dir=tmp_path), gr.Blocks)


def test_missing_examples_folder_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="Examples folder .* was not found"):
        example_images(tmp_path / "absent")


# Choosing the models -----------------------------------------------------------------------------------


def test_discovery_offers_random_split_runs(tmp_path):
    _write_run_folder(tmp_path, "braincancernet", split="random")
    _write_run_folder(tmp_path, "braincancernet-group", split="group")
    _write_run_folder(tmp_path, "resnet50", split="random")
    _write_run_folder(tmp_path, "resnet50-group", split="group")
    _write_run_folder(tmp_path, "hand-copied", split=None)
    _write_run_folder(tmp_path, "hand-copied-group", split=None)
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.json").write_text("{}")

    names = [folder.name for folder in discover_run_folders(tmp_path)]

    assert names == ["braincancernet", "hand-copied", "resnet50"]
    assert discover_run_folders(tmp_path / "absent") == []


def test_ranking_without_report_prefers_braincancernet(tmp_path):
    folders = [_write_run_folder(tmp_path, name, split="random") for name in ("alexnet", "braincancernet", "resnet50")]

    ranked = rank_run_folders(folders, read_comparison(tmp_path / "no-report.json"))

    assert [folder.name for folder in ranked] == ["braincancernet", "alexnet", "resnet50"]


def test_ranking_uses_group_split_accuracy(tmp_path):
    folders = [_write_run_folder(tmp_path, name, split="random") for name in ("braincancernet", "resnet50")]
    # ResNet50 wins on the random split but loses on the group split, which decides.
    report = _comparison(
        tmp_path / "comparison.json",
        {
            ("braincancernet", "random"): 0.95,
            ("resnet50", "random"): 0.97,
            ("braincancernet", "group"): 0.90,
            ("resnet50", "group"): 0.85,
        },
    )

    ranked = rank_run_folders(folders, read_comparison(report))

    assert [folder.name for folder in ranked] == ["braincancernet", "resnet50"]


def test_ranking_falls_back_to_random_split(tmp_path):
    folders = [_write_run_folder(tmp_path, name, split="random") for name in ("braincancernet", "resnet50", "vit")]
    report = _comparison(tmp_path / "comparison.json", {("braincancernet", "random"): 0.95, ("resnet50", "random"): 0.97})

    ranked = rank_run_folders(folders, read_comparison(report))

    assert [folder.name for folder in ranked] == ["resnet50", "braincancernet", "vit"]


def test_unreadable_report_is_ignored(tmp_path):
    broken = tmp_path / "comparison.json"
    broken.write_text("{not json")
    without_results = tmp_path / "other.json"
    without_results.write_text(json.dumps({"command": "x"}))

    assert read_comparison(broken) == []
    assert read_comparison(without_results) == []


def test_model_sources_precedence(tmp_path, monkeypatch):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    for name in ("braincancernet", "resnet50"):
        _write_run_folder(models_dir, name, split="random")
    report = _comparison(tmp_path / "comparison.json", {("resnet50", "group"): 0.9, ("braincancernet", "group"): 0.8})
    config = tmp_path / "app_config.json"
    places = {"config_path": config, "models_dir": models_dir, "comparison_path": report}
    monkeypatch.delenv(app.MODEL_ENV_VAR, raising=False)

    discovered = app.model_sources(app.parse_args([]), **places)
    config.write_text(json.dumps({"models": ["org/from-config", "org/second"]}))
    from_config = app.model_sources(app.parse_args([]), **places)
    monkeypatch.setenv(app.MODEL_ENV_VAR, "org/from-environment")
    from_environment = app.model_sources(app.parse_args([]), **places)
    from_flag = app.model_sources(app.parse_args(["--model", "org/flag"]), **places)

    assert discovered == [str(models_dir / "resnet50"), str(models_dir / "braincancernet")]
    assert from_config == ["org/from-config", "org/second"]
    assert from_environment == ["org/from-environment"]
    assert from_flag == ["org/flag"]


def test_empty_models_dir_falls_back_to_default(tmp_path, monkeypatch):
    monkeypatch.delenv(app.MODEL_ENV_VAR, raising=False)
    sources = app.model_sources(
        app.parse_args([]),
        config_path=tmp_path / "absent.json",
        models_dir=tmp_path,
        comparison_path=tmp_path / "absent-report.json",
    )

    assert sources == [str(app.DEFAULT_MODEL)]


@pytest.mark.parametrize("content", ["{not json", '{"models": []}', '{"models": "org/name"}', "[]"])
def test_invalid_app_config_is_reported(tmp_path, content):
    config = tmp_path / "app_config.json"
    config.write_text(content)

    with pytest.raises(ValueError, match="app_config.json"):
        app.configured_models(config)


def test_create_demo_selects_first_source(tiny_model_dir, tmp_path):
    torch.manual_seed(1)
    second = tmp_path / "second"
    BrainTumorClassifier(architecture="braincancernet", input_size=64).save_pretrained(second)
    demo = app.create_demo(app.parse_args(["--model", str(second), "--model", str(tiny_model_dir)]))
    dropdown = next(block for block in demo.blocks.values() if isinstance(block, gr.Dropdown))

    assert dropdown.value == "second"
    assert [choice[0] for choice in dropdown.choices] == ["second", tiny_model_dir.name]


def test_cache_max_age_reaches_demo(tiny_model_dir):
    default = app.create_demo(app.parse_args(["--model", str(tiny_model_dir)]))
    short = app.create_demo(app.parse_args(["--model", str(tiny_model_dir), "--cache-max-age", "30"]))

    assert default.delete_cache == (ui.DEFAULT_CACHE_MAX_AGE_S, ui.DEFAULT_CACHE_MAX_AGE_S)
    assert short.delete_cache == (30, 30)


def test_queue_options_reach_demo(tiny_model_dir):
    args = app.parse_args(["--model", str(tiny_model_dir), "--concurrency-limit", "3", "--max-queue-size", "5"])
    demo = app.create_demo(args)

    assert demo._queue.default_concurrency_limit == 3
    assert demo._queue.max_size == 5


@pytest.mark.parametrize("option", ["--concurrency-limit", "--max-queue-size", "--cache-max-age"])
def test_queue_options_must_be_positive(option, capsys):
    with pytest.raises(SystemExit):
        app.parse_args([option, "0"])

    assert "expected a positive integer, got 0" in capsys.readouterr().err


def test_parse_args_defaults(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    args = app.parse_args([])

    assert args.host == "127.0.0.1"
    assert args.model is None
    assert args.share is False
    assert args.concurrency_limit == ui.CONCURRENCY_LIMIT
    assert args.max_queue_size == ui.MAX_QUEUE_SIZE


def test_missing_model_folder_exits_cleanly(tmp_path, capsys):
    status = app.main(["--model", str(tmp_path / "no-such-model")])
    stderr = capsys.readouterr().err

    assert status == 2
    assert "no-such-model was not found" in stderr
    assert "Traceback" not in stderr


def test_import_loads_nothing(tmp_path, monkeypatch):
    # Re-running the module with model loading and launching made to fail proves the import does neither.
    def forbidden(*args, **kwargs):
        raise AssertionError("importing app must not load a model or start a server")

    monkeypatch.setenv(app.MODEL_ENV_VAR, str(tmp_path / "absent"))
    monkeypatch.setattr(Predictor, "from_pretrained", forbidden)
    monkeypatch.setattr(gr.Blocks, "launch", forbidden)

    importlib.reload(app)


# The Space folder ---------------------------------------------------------------------------------------


def test_space_folder_has_app_files(tmp_path):
    output = tmp_path / "space-repo"
    (output / ".git").mkdir(parents=True)
    (output / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    model_ids = ["example-org/brain-tumor-braincancernet", "example-org/brain-tumor-resnet50"]

    space_builder.assemble_space(model_ids, output)

    for name in ("app.py", "README.md", "requirements.txt", "space/__init__.py", "space/ui.py",
                 "space/model_choice.py", "brain_tumor_classifier/__init__.py", "brain_tumor_classifier/predictor.py"):
        assert (output / name).is_file(), f"{name} is missing from the Space folder"
    assert not (output / "space" / "models").exists()
    assert (output / ".git" / "HEAD").is_file(), "assembling must leave other files in the folder alone"
    ast.parse((output / "app.py").read_text(encoding="utf-8"), filename="app.py")
    assert json.loads((output / "space" / "app_config.json").read_text()) == {"models": model_ids}


def test_space_card_metadata(tmp_path):
    space_builder.assemble_space(["example-org/brain-tumor-braincancernet"], tmp_path)
    card = SpaceCard.load(tmp_path / "README.md")

    assert card.data.models == ["example-org/brain-tumor-braincancernet"]
    assert card.data.sdk == "gradio"
    assert card.data.sdk_version == gr.__version__
    assert card.data.app_file == "app.py"
    assert card.data.license == "mit"
    assert len(card.data.short_description) <= 60
    assert card.data.pinned is False
    assert "Research use only, not for diagnosis" in card.text


def test_space_requirements_cover_imports(tmp_path):
    space_builder.assemble_space(["example-org/brain-tumor-braincancernet"], tmp_path)
    requirements = (tmp_path / "requirements.txt").read_text()
    names = {line.split("==")[0].lower() for line in requirements.splitlines() if line and line[0].isalpha()}

    for package in ("torch", "torchvision", "timm", "gradio", "huggingface_hub", "safetensors", "grad-cam",
                    "pillow", "numpy", "opencv-python-headless"):
        assert package in names, f"{package} is missing from the Space's requirements.txt"


def test_space_model_config_drives_app(tmp_path, monkeypatch):
    space_builder.assemble_space(["example-org/brain-tumor-braincancernet"], tmp_path)
    monkeypatch.delenv(app.MODEL_ENV_VAR, raising=False)

    sources = app.model_sources(
        app.parse_args([]), config_path=tmp_path / "space" / "app_config.json", models_dir=tmp_path / "absent"
    )

    assert sources == ["example-org/brain-tumor-braincancernet"]


@pytest.mark.parametrize("model_id", ["no-namespace", "bad id/with space"])
def test_space_rejects_bad_model_id(tmp_path, model_id):
    with pytest.raises(space_builder.SpaceAssemblyError, match="Invalid --model-id"):
        space_builder.assemble_space([model_id], tmp_path)


def test_space_refuses_repository_as_output():
    with pytest.raises(space_builder.SpaceAssemblyError, match="is this repository"):
        space_builder.assemble_space(["example-org/model"], space_builder.REPO_ROOT)
