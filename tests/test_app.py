"""The Gradio app end to end: a real server on 127.0.0.1, called through gradio_client."""

import importlib
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import gradio as gr
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import app
from brain_tumor_classifier.explain import DEFAULT_METHODS
from brain_tumor_classifier.predictor import Predictor
from space.ui import DISCLAIMER, build_demo, example_images


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(demo: gr.Blocks) -> Iterator[str]:
    """Launch ``demo`` on 127.0.0.1 in the background and close it on exit, also after a failure."""
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def predictor(tiny_model_dir) -> Predictor:
    return Predictor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def client(predictor, tmp_path_factory) -> Iterator[Client]:
    downloads = tmp_path_factory.mktemp("client-downloads")
    with serving(build_demo(predictor)) as url:
        yield Client(url, verbose=False, download_files=str(downloads))


def test_server_returns_label_and_gallery(client, predictor, slice_png):
    label, gallery, model_line = client.predict(handle_file(str(slice_png)), api_name="/predict")

    assert label["label"] in predictor.label_names
    assert {item["label"] for item in label["confidences"]} == set(predictor.label_names)
    assert len(gallery) >= 5
    assert len(gallery) == len(DEFAULT_METHODS)
    for item in gallery:
        assert Path(item["image"]).is_file()
        assert label["label"] in item["caption"]
    assert model_line.startswith(f"Answer from model **{predictor.name}**")


def test_server_reports_bad_upload(client, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("plain text")

    with pytest.raises(AppError, match="'notes.png' is not an image file that Pillow can read"):
        client.predict(handle_file(str(not_an_image)), api_name="/predict")


def test_server_reports_missing_image(client):
    with pytest.raises(AppError, match="No image was given"):
        client.predict(None, api_name="/predict")


def test_server_offers_several_models(tiny_model_dir, slice_png, tmp_path):
    predictors = {
        "first": Predictor.from_pretrained(tiny_model_dir, name="first"),
        "second": Predictor.from_pretrained(tiny_model_dir, name="second"),
    }
    with serving(build_demo(predictors)) as url:
        client = Client(url, verbose=False, download_files=str(tmp_path))
        _, _, model_line = client.predict(handle_file(str(slice_png)), "second", api_name="/predict")
        with pytest.raises(AppError, match="Unknown model 'third'"):
            client.predict(handle_file(str(slice_png)), "third", api_name="/predict")

    assert "**second**" in model_line


def test_demo_shows_disclaimer_and_deletes_uploads(predictor):
    demo = build_demo(predictor)
    markdown = [block.value for block in demo.blocks.values() if isinstance(block, gr.Markdown)]

    assert any("Research use only, not for diagnosis" in text for text in markdown)
    assert DISCLAIMER in markdown
    assert demo.delete_cache is not None


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


def test_parse_args_defaults(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv(app.MODEL_ENV_VAR, raising=False)
    args = app.parse_args([])

    assert args.host == "127.0.0.1"
    assert args.model == [str(app.DEFAULT_MODEL)]
    assert args.share is False


def test_model_from_environment(monkeypatch):
    monkeypatch.setenv(app.MODEL_ENV_VAR, "example-org/brain-model")

    assert app.parse_args([]).model == ["example-org/brain-model"]
    assert app.parse_args(["--model", "other"]).model == ["other"]


def test_create_demo_from_arguments(tiny_model_dir):
    args = app.parse_args(["--model", str(tiny_model_dir), "--model", str(tiny_model_dir)])
    demo = app.create_demo(args)

    assert isinstance(demo, gr.Blocks)


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
