"""Every case of the upload table, sent through gradio_client to ``python app.py`` with the bundled model.

The module starts the app once, as a subprocess on 127.0.0.1 and a free port, with Gradio's cache
in a temporary folder and the server's stdout and stderr in a log file. Each upload must come back
with a tumor type, the out-of-scope warning, or its specific error message. The privacy tests then
read the cache folder, the log and the page config. The last test stops the server.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from brain_tumor_classifier.image_io import InvalidImageError, load_upload
from brain_tumor_classifier.predictor import OUT_OF_SCOPE_WARNING, Prediction, Predictor
from space import ui

from upload_cases import (
    CASES,
    PATIENT_ID,
    PATIENT_NAME,
    SLICE_VARIANTS,
    dicom_invalid_window,
    dicom_monochrome2_window,
    dicom_multi_frame,
    dicom_truncated,
    dicom_without_pixels,
    dicom_without_preamble,
    full_range,
    out_of_scope_images,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_MODEL = REPO_ROOT / "space" / "models" / "braincancernet"
# Short, so the deletion test waits at most about twice this. Each request here reads its upload
# within a few seconds of sending it, well inside this age.
CACHE_MAX_AGE_S = 10
# A cold start (first import of torch and gradio) took 214 s on a 2-core machine that was also training a model.
START_TIMEOUT_S = 420
REQUEST_TIMEOUT_S = 120
NOTICE_PREFIX = "ℹ️ "
PATIENT_BIRTH_DATE = "19700101"


@dataclass
class Server:
    """The app running as a subprocess, with the folders and the log file it writes."""

    url: str
    process: subprocess.Popen
    log_path: Path
    cache_dir: Path
    work_dir: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def cached_files(self) -> list[Path]:
        return sorted(path for path in self.cache_dir.rglob("*") if path.is_file())

    def stop(self) -> int:
        """Send SIGTERM, as ``docker stop`` does, and return the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"python app.py exited with status {server.process.returncode}:\n{server.log()[-3000:]}")
        try:
            if httpx.get(server.url + "config", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    server.stop()
    pytest.fail(f"python app.py did not serve {server.url} within {START_TIMEOUT_S} s:\n{server.log()[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    if not (BUNDLED_MODEL / "model.safetensors").is_file():
        pytest.skip(f"the bundled model is missing at {BUNDLED_MODEL}")
    root = tmp_path_factory.mktemp("server")
    cache_dir, work_dir = root / "gradio-cache", root / "work"
    cache_dir.mkdir()
    work_dir.mkdir()
    port = _free_port()
    # Unbuffered output keeps the log file complete when a test reads it.
    environment = {**os.environ, "GRADIO_TEMP_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, str(REPO_ROOT / "app.py"),
        "--model", str(BUNDLED_MODEL),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--cache-max-age", str(CACHE_MAX_AGE_S),
    ]
    log_path = root / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=work_dir, env=environment, stdout=log_file, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}/", process, log_path, cache_dir, work_dir)
    try:
        _wait_until_serving(server)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(server) -> Client:
    # download_files=False: the tests count the gallery's overlays but never fetch them.
    return Client(server.url, verbose=False, download_files=False, httpx_kwargs={"timeout": REQUEST_TIMEOUT_S})


@pytest.fixture(scope="module")
def local_predictor() -> Predictor:
    """The bundled model in the test process, to compare the server's predictions with."""
    return Predictor.from_pretrained(BUNDLED_MODEL)


def _classify(client: Client, path: Path) -> tuple[dict, list, str, str]:
    return client.predict(handle_file(str(path)), api_name="/predict")


def _local_error(path: Path) -> str:
    try:
        load_upload(path)
    except InvalidImageError as error:
        return str(error)
    raise AssertionError(f"{path.name} was expected to be rejected, but it decoded")


def _notices_in(notes: str) -> list[str]:
    return [part.removeprefix(NOTICE_PREFIX) for part in notes.split("\n\n") if part.startswith(NOTICE_PREFIX)]


def _confidences(label: dict) -> dict[str, float]:
    return {item["label"]: item["confidence"] for item in label["confidences"]}


def _assert_no_patient_data(text: str) -> None:
    assert PATIENT_NAME not in text
    assert "Doe" not in text
    assert PATIENT_ID not in text
    assert PATIENT_BIRTH_DATE not in text


def _assert_withheld(label: dict, gallery: list, notes: str) -> None:
    assert label["label"] == ui.WITHHELD_LABEL
    assert not label.get("confidences"), "an out-of-scope image must get no class probabilities"
    assert gallery == [], "an out-of-scope image must get no Grad-CAM overlays"
    assert OUT_OF_SCOPE_WARNING in notes
    assert notes.startswith("### ⚠️ Warning")


# The upload table --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [pytest.param(case, id=case.file_name, marks=case.marks) for case in CASES])
def test_generated_upload(case, client, tmp_path):
    # The generated files are test patterns, not MRI slices, and the bundled model's out-of-scope
    # check flags every one that decodes (with its current calibration, the lowest score among them
    # is 764 and the threshold 474). So each must come back with the warning and its decoding
    # notices. test_real_slice_variant covers the path that ends in a tumor type.
    path = tmp_path / case.file_name
    path.write_bytes(case.build())

    if case.error:
        expected = _local_error(path)
        with pytest.raises(AppError) as raised:
            _classify(client, path)
        message = raised.value.message
        assert message == expected, "the server must return the decoder's message unchanged"
        assert re.search(case.error, message)
        _assert_no_patient_data(message)
        return

    label, gallery, model_line, notes = _classify(client, path)

    _assert_withheld(label, gallery, notes)
    assert _notices_in(notes) == load_upload(path).notices
    if case.notice:
        assert re.search(case.notice, notes), notes
    else:
        assert NOTICE_PREFIX not in notes
    assert model_line.startswith("Answer from model **braincancernet**")
    _assert_no_patient_data(notes)


def test_oversized_file_is_rejected(server, client, tmp_path):
    path = tmp_path / "oversized.png"
    path.write_bytes(b"\0" * (ui.MAX_UPLOAD_BYTES + 1))

    # gradio_client reads the limit from the server's config and rejects the file before uploading it.
    with pytest.raises(ValueError, match=rf"exceeds the maximum file size of {ui.MAX_UPLOAD_BYTES} bytes"):
        _classify(client, path)
    # A client that skips that check meets the server's own limit at the upload route.
    with path.open("rb") as file:
        response = httpx.post(
            server.url + "gradio_api/upload", files=[("files", (path.name, file))], timeout=REQUEST_TIMEOUT_S
        )

    assert response.status_code == 413
    assert f"File size exceeded maximum allowed size of {ui.MAX_UPLOAD_BYTES} bytes" in response.text
    assert not [cached for cached in server.cached_files() if cached.name == path.name], "the rejected file was kept"


def test_missing_image_is_rejected(client):
    with pytest.raises(AppError) as raised:
        client.predict(None, api_name="/predict")

    assert raised.value.message == "No image was given. Upload an MRI slice as a PNG, JPEG, TIFF or DICOM file."


@pytest.mark.parametrize("file_name", list(out_of_scope_images()))
def test_non_mri_image_gets_warning(file_name, client, tmp_path):
    image = out_of_scope_images()[file_name]
    if image is None:
        pytest.skip(f"{file_name} needs matplotlib's bundled sample photo grace_hopper.jpg, which is not installed")
    path = tmp_path / file_name
    image.save(path)

    label, gallery, _, notes = _classify(client, path)

    _assert_withheld(label, gallery, notes)
    assert NOTICE_PREFIX not in notes


# A real slice ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_range_slice(real_slice_path) -> Image.Image:
    with Image.open(real_slice_path) as opened:
        return full_range(opened)


@pytest.fixture(scope="module")
def slice_reference(full_range_slice, local_predictor) -> Prediction:
    reference = local_predictor.predict(full_range_slice, explain=False)
    assert not reference.out_of_scope, "the reference slice must be in scope, or the variants test nothing"
    return reference


def test_real_slice(client, real_slice_path, local_predictor):
    expected = local_predictor.predict(real_slice_path, explain=False)

    label, gallery, model_line, notes = _classify(client, real_slice_path)

    assert not expected.out_of_scope
    assert label["label"] == expected.top_label
    assert _confidences(label) == pytest.approx(expected.probabilities, abs=1e-5)
    assert len(gallery) == len(local_predictor.methods)
    assert all(expected.top_label in item["caption"] for item in gallery)
    assert model_line.startswith("Answer from model **braincancernet**")
    assert notes == ""


@pytest.mark.parametrize("variant", [pytest.param(variant, id=variant.file_name) for variant in SLICE_VARIANTS])
def test_real_slice_variant(variant, client, full_range_slice, slice_reference, local_predictor, tmp_path):
    path = tmp_path / variant.file_name
    path.write_bytes(variant.build(full_range_slice))

    label, gallery, _, notes = _classify(client, path)

    assert label["label"] == slice_reference.top_label
    if variant.exact:
        # A lossless variant decodes to the slice's pixels, so any difference is a decoding error.
        assert _confidences(label) == pytest.approx(slice_reference.probabilities, abs=1e-5)
    assert len(gallery) == len(local_predictor.methods)
    if variant.notice:
        assert len(_notices_in(notes)) == 1, notes
        assert re.search(variant.notice, notes), notes
    else:
        assert notes == ""
    _assert_no_patient_data(notes)


# Privacy -------------------------------------------------------------------------------------------


def test_run_history_is_off(server):
    config = httpx.get(server.url + "config", timeout=REQUEST_TIMEOUT_S).json()
    runs_page = httpx.get(server.url + "gradio_api/runs", timeout=REQUEST_TIMEOUT_S)

    assert config["run_history"] is False
    assert "runs" not in config["footer_links"]
    assert runs_page.status_code == 404


def test_flagging_is_off(server, client, tmp_path):
    path = tmp_path / "flagging-check.png"
    Image.new("L", (32, 32), 90).save(path)
    _classify(client, path)
    config = httpx.get(server.url + "config", timeout=REQUEST_TIMEOUT_S).json()
    labels = [str(component.get("props", {}).get("value")) for component in config["components"]]

    assert not [label for label in labels if "Flag" in label], "the page must have no Flag button"
    assert not [path for path in server.work_dir.rglob("*") if "flagged" in path.name]
    assert not [path for path in server.cache_dir.rglob("*") if "flagged" in path.name]


def test_log_has_no_patient_data(server, client, tmp_path):
    # File names can contain patient names, so every upload here carries one.
    uploads = {
        "doe-jane-window.dcm": dicom_monochrome2_window,
        "doe-jane-bad-window.dcm": dicom_invalid_window,
        "doe-jane-frames.dcm": dicom_multi_frame,
        "doe-jane-acr-nema": dicom_without_preamble,
        "doe-jane-truncated.dcm": dicom_truncated,
        "doe-jane-no-pixels.dcm": dicom_without_pixels,
    }
    log_before = server.log()
    outcomes = []
    for name, build in uploads.items():
        path = tmp_path / name
        path.write_bytes(build())
        try:
            _classify(client, path)
            outcomes.append("classified")
        except AppError:
            outcomes.append("rejected")
    new_log = server.log()[len(log_before):]

    assert outcomes == ["classified"] * 4 + ["rejected"] * 2
    assert new_log.count("braincancernet: ") == 4, "the log must record each classification, or it was not captured"
    assert new_log.count("Rejected an invalid image (") == 2, "each rejection must be logged with its reason"
    assert "Rejected an invalid image (DICOM without pixel data)" in new_log
    log = server.log()
    _assert_no_patient_data(log)
    assert "doe-jane" not in log.lower(), "upload file names must not be logged"
    assert "DICM" not in log, "DICOM bytes must not be logged"
    assert "iVBORw0KGgo" not in log, "base64 PNG data must not be logged"
    assert "Traceback" not in log


def _upload_only(server: Server, path: Path) -> None:
    # Sends the file to Gradio's upload route without requesting a prediction, as a browser does
    # when its user closes the page between the upload and the request.
    with path.open("rb") as file:
        response = httpx.post(server.url + "gradio_api/upload", files={"files": (path.name, file)}, timeout=60)
    response.raise_for_status()


def test_upload_deleted_after_prediction(server, client, tmp_path):
    path = tmp_path / "deletion-check.dcm"
    path.write_bytes(dicom_monochrome2_window())
    _classify(client, path)

    def still_cached() -> list[Path]:
        return [cached for cached in server.cached_files() if cached.name == path.name]

    deadline = time.monotonic() + ui.UPLOAD_DELETE_DELAY_S + 20
    while still_cached() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert still_cached() == [], "an upload must be deleted shortly after it has been read"


def test_unread_upload_deleted_after_max_age(server, tmp_path):
    path = tmp_path / "never-classified.png"
    Image.new("L", (32, 32), 90).save(path)
    _upload_only(server, path)
    assert [cached for cached in server.cached_files() if cached.name == path.name], "the upload was not cached"

    # Gradio checks every CACHE_MAX_AGE_S seconds and deletes files older than that.
    deadline = time.monotonic() + 2 * CACHE_MAX_AGE_S + 30
    while server.cached_files() and time.monotonic() < deadline:
        time.sleep(1)
    assert server.cached_files() == [], "uploads and overlays must be deleted once older than the maximum age"


def _hold_heartbeat(url: str, opened: threading.Event) -> None:
    # An open browser tab keeps this stream open, which delays Gradio's own shutdown.
    try:
        with httpx.stream("GET", url + "gradio_api/heartbeat/stop-check", timeout=120) as response:
            opened.set()
            for _ in response.iter_bytes():
                pass
    except httpx.HTTPError:
        pass


def test_stop_deletes_cache(server, client, tmp_path):
    # Stops the module's server, so it must stay the last test of the module.
    path = tmp_path / "shutdown-check.png"
    Image.new("L", (32, 32), 90).save(path)
    _upload_only(server, path)
    assert [cached for cached in server.cached_files() if cached.name == path.name], "the upload was not cached"
    opened = threading.Event()
    threading.Thread(target=_hold_heartbeat, args=(server.url, opened), daemon=True).start()
    assert opened.wait(timeout=30), "the heartbeat stream did not open"

    status = server.stop()

    assert status == 0, server.log()[-3000:]
    assert server.cached_files() == [], "stopping the server with SIGTERM must delete its cached files"
    assert "Received SIGTERM: stopping the demo" in server.log()
    assert "Stopped the demo" in server.log()
