"""``python -m train.push`` against a stub of the Hub API on 127.0.0.1.

The real Hub cannot be reached from the test machines, so the stub records what huggingface_hub
sends and returns the smallest valid responses. Its preupload response marks every file as
``regular``, so huggingface_hub sends each file base64-encoded inside the NDJSON commit body
(no LFS or Xet upload), and the test can compare the committed files with the run folder.
"""

from __future__ import annotations

import base64
import json
import re
import os
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from huggingface_hub import constants

from model_card import write_model_card
from train.push import list_export_files, main

from run_folders import make_run_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "example-org/brain-tumor-test"
TOKEN = "hf_stub_token_for_tests"
COMMIT_OID = "0123456789abcdef0123456789abcdef01234567"


# A stub of the Hub endpoints that HfApi.create_repo, create_branch and create_commit call ------


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)

    def ndjson(self) -> list[dict]:
        return [json.loads(line) for line in self.body.decode().splitlines() if line.strip()]


@dataclass
class HubStub:
    url: str
    requests: list[RecordedRequest] = field(default_factory=list)
    # Route name ("create", "branch", "validate", "preupload", "commit") -> HTTP status to fail with.
    failures: dict[str, int] = field(default_factory=dict)

    def routed(self, route: str) -> list[RecordedRequest]:
        return [request for request in self.requests if route_of(request.path) == route]


ROUTES = {
    "create": re.compile(r"^/api/repos/create$"),
    "validate": re.compile(r"^/api/validate-yaml$"),
    "preupload": re.compile(r"^/api/models/[^/]+/[^/]+/preupload/[^/]+$"),
    "branch": re.compile(r"^/api/models/[^/]+/[^/]+/branch/[^/]+$"),
    "commit": re.compile(r"^/api/models/[^/]+/[^/]+/commit/[^/]+$"),
}


def route_of(path: str) -> str | None:
    path = path.split("?", 1)[0]
    return next((name for name, pattern in ROUTES.items() if pattern.match(path)), None)


def stub_response(stub: HubStub, route: str | None, request: RecordedRequest) -> tuple[int, dict]:
    """Return the status and JSON body the Hub would send for a recorded request."""
    if route is None:
        return 404, {"error": f"The stub has no route for {request.method} {request.path}"}
    if route in stub.failures:
        return stub.failures[route], {"error": f"Stubbed failure of {route}", "errors": [{"message": "stub error"}]}
    if route == "create":
        body = request.json()
        return 200, {"url": f"{stub.url}/{body['organization']}/{body['name']}"}
    if route == "validate":
        return 200, {"errors": [], "warnings": []}
    if route == "preupload":
        # "regular" makes huggingface_hub send the file inline, base64-encoded in the commit body.
        files = [
            {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False} for item in request.json()["files"]
        ]
        return 200, {"files": files}
    if route == "branch":
        return 200, {}
    return 200, {"commitUrl": f"{stub.url}/{REPO_ID}/commit/{COMMIT_OID}", "commitOid": COMMIT_OID, "success": True}


def make_handler(stub: HubStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.respond()

        def do_GET(self) -> None:
            self.respond()

        def respond(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            headers = {name.lower(): value for name, value in self.headers.items()}
            request = RecordedRequest(self.command, self.path, headers, self.rfile.read(length))
            stub.requests.append(request)
            status, body = stub_response(stub, route_of(self.path), request)
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass  # The requests are recorded, so the server log would only clutter pytest's output.

    return Handler


@contextmanager
def hub_stub(failures: dict[str, int] | None = None) -> Iterator[HubStub]:
    """Serve the stub on a free port of 127.0.0.1 and shut it down on exit."""
    stub = HubStub(url="", failures=failures or {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(stub))
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# A fake run folder -------------------------------------------------------------------------


def make_publishable_run_folder(run_dir: Path) -> Path:
    """Write a fake run folder with its card, plus files that must never be published."""
    make_run_folder(run_dir)
    write_model_card(run_dir)

    # Resumable training state and hidden files must never be published.
    (run_dir / "checkpoints" / "last").mkdir(parents=True)
    (run_dir / "checkpoints" / "last" / "optimizer.bin").write_bytes(b"optimizer state")
    (run_dir / "checkpoints" / "best_model.safetensors").write_bytes(b"weights")
    (run_dir / ".DS_Store").write_bytes(b"finder")
    return run_dir


EXPORT_FILES = {
    "README.md",
    "config.json",
    "confusion_matrix.json",
    "confusion_matrix.png",
    "history.json",
    "metrics.json",
    "model.safetensors",
    "split_manifest.json",
    "train_config.json",
    "training_curves.png",
}


@pytest.fixture(autouse=True)
def hub_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Allow requests (the suite may run with HF_HUB_OFFLINE=1) and give a test token, no saved login."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_publishable_run_folder(tmp_path / "run")


def push(run_dir: Path, stub_url: str, *extra: str) -> int:
    return main(["--run-dir", str(run_dir), "--repo-id", REPO_ID, "--endpoint", stub_url, *extra])


def committed_files(commit: RecordedRequest) -> dict[str, bytes]:
    return {
        item["value"]["path"]: base64.b64decode(item["value"]["content"])
        for item in commit.ndjson()
        if item["key"] == "file"
    }


# Tests ---------------------------------------------------------------------------------------


def test_push_commits_export_files_once(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with hub_stub() as stub:
        assert push(run_dir, stub.url) == 0
    assert capsys.readouterr().out.strip() == f"{stub.url}/{REPO_ID}/commit/{COMMIT_OID}"
    commits = stub.routed("commit")
    assert len(commits) == 1, "the whole export must go up in one commit"
    assert commits[0].path == f"/api/models/{REPO_ID}/commit/main"
    files = committed_files(commits[0])
    assert set(files) == EXPORT_FILES
    for name in EXPORT_FILES - {"README.md"}:
        assert files[name] == (run_dir / name).read_bytes(), f"{name} differs from the run folder"
    keys = {item["key"] for item in commits[0].ndjson()}
    assert keys == {"header", "file"}, "small files go inline, with no LFS entries"


def test_push_never_sends_checkpoints(run_dir: Path) -> None:
    with hub_stub() as stub:
        assert push(run_dir, stub.url) == 0
    paths = [item["path"] for request in stub.routed("preupload") for item in request.json()["files"]]
    assert sorted(paths) == sorted(EXPORT_FILES)
    assert not any(path.startswith("checkpoints/") for path in committed_files(stub.routed("commit")[0]))


def test_push_message_names_architecture_accuracy(run_dir: Path) -> None:
    with hub_stub() as stub:
        assert push(run_dir, stub.url) == 0
    header = stub.routed("commit")[0].ndjson()[0]
    assert header["key"] == "header"
    assert header["value"]["summary"] == (
        "Upload braincancernet brain tumor MRI classifier (test accuracy 97.17%, random split)"
    )
    assert f"--run-dir {run_dir}" in header["value"]["description"]


def test_push_custom_commit_message(run_dir: Path) -> None:
    with hub_stub() as stub:
        assert push(run_dir, stub.url, "--commit-message", "Retrain with seed 7") == 0
    assert stub.routed("commit")[0].ndjson()[0]["value"]["summary"] == "Retrain with seed 7"


def test_push_creates_repo_with_token(run_dir: Path) -> None:
    with hub_stub() as stub:
        assert push(run_dir, stub.url, "--private") == 0
    create = stub.routed("create")
    assert len(create) == 1
    assert create[0].json()["organization"] == "example-org"
    assert create[0].json()["name"] == "brain-tumor-test"
    assert create[0].json()["visibility"] == "private"
    assert all(request.headers.get("authorization") == f"Bearer {TOKEN}" for request in stub.requests)
    assert [route_of(request.path) for request in stub.requests] == ["create", "validate", "preupload", "commit"]


def test_push_revision_creates_branch(run_dir: Path) -> None:
    with hub_stub() as stub:
        assert push(run_dir, stub.url, "--revision", "seed-7") == 0
    assert [request.path for request in stub.routed("branch")] == [f"/api/models/{REPO_ID}/branch/seed-7"]
    assert stub.routed("commit")[0].path == f"/api/models/{REPO_ID}/commit/seed-7"


def test_push_card_names_repo(run_dir: Path) -> None:
    with hub_stub() as stub:
        assert push(run_dir, stub.url) == 0
    card = committed_files(stub.routed("commit")[0])["README.md"].decode()
    assert f'BrainTumorClassifier.from_pretrained("{REPO_ID}")' in card
    assert f"name: {REPO_ID}" in card
    assert "from_pretrained(" + json.dumps(str(run_dir)) + ")" in (run_dir / "README.md").read_text(), (
        "the local card must stay untouched"
    )


def test_push_keeps_edited_card(run_dir: Path) -> None:
    edited = (run_dir / "README.md").read_text() + "\nA note added by hand.\n"
    (run_dir / "README.md").write_text(edited)
    with hub_stub() as stub:
        assert push(run_dir, stub.url) == 0
    assert committed_files(stub.routed("commit")[0])["README.md"].decode() == edited


def test_push_card_from_relative_path_replaced(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_model_card(Path(run_dir.name))
    assert 'from_pretrained("run")' in (run_dir / "README.md").read_text()
    with hub_stub() as stub:
        assert push(run_dir, stub.url) == 0
    card = committed_files(stub.routed("commit")[0])["README.md"].decode()
    assert f'BrainTumorClassifier.from_pretrained("{REPO_ID}")' in card


def test_push_cli_honors_hf_endpoint(run_dir: Path) -> None:
    with hub_stub() as stub:
        unset = {"HF_HUB_OFFLINE", "HF_OIDC_RESOURCE", "HUGGING_FACE_HUB_TOKEN"}
        environment = {key: value for key, value in os.environ.items() if key not in unset}
        environment.update(HF_ENDPOINT=stub.url, HF_TOKEN=TOKEN, PYTHONPATH=str(REPO_ROOT))
        completed = subprocess.run(
            [sys.executable, "-m", "train.push", "--run-dir", str(run_dir), "--repo-id", REPO_ID],
            cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600,
        )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == f"{stub.url}/{REPO_ID}/commit/{COMMIT_OID}"
    assert len(stub.routed("commit")) == 1


def test_list_export_files_skips_checkpoints(run_dir: Path) -> None:
    assert set(list_export_files(run_dir)) == EXPORT_FILES


def assert_one_line_error(capsys: pytest.CaptureFixture[str], expected: str) -> None:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, f"expected one line, got: {error}"
    assert error.startswith("error: ")
    assert expected in error
    assert "Traceback" not in error


def test_push_without_token_fails_clearly(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HF_TOKEN")
    with hub_stub() as stub:
        assert push(run_dir, stub.url) == 2
    assert_one_line_error(capsys, "No Hugging Face token found")
    assert stub.requests == [], "nothing may be sent without a token"


@pytest.mark.parametrize("missing", ["model.safetensors", "config.json", "README.md"])
def test_push_incomplete_folder_fails_clearly(
    run_dir: Path, missing: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (run_dir / missing).unlink()
    with hub_stub() as stub:
        assert push(run_dir, stub.url) == 2
    assert_one_line_error(capsys, f"not a complete export: it lacks {missing}.")
    assert stub.requests == [], "an incomplete folder must be caught before anything is uploaded"


def test_push_config_without_labels_fails(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    del config["label_names"]
    (run_dir / "config.json").write_text(json.dumps(config))
    with hub_stub() as stub:
        assert push(run_dir, stub.url) == 2
    assert_one_line_error(capsys, "lacks label_names")
    assert stub.requests == []


def test_push_unreachable_hub_fails_clearly(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A port that was free a moment ago refuses connections, like a Hub that cannot be reached.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    assert push(run_dir, closed_url) == 2
    assert_one_line_error(capsys, f"Cannot reach {closed_url}")


def test_push_rejected_token_fails_clearly(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with hub_stub(failures={"create": 401}) as stub:
        assert push(run_dir, stub.url) == 2
    assert_one_line_error(capsys, "The Hub rejected the token (401")
    assert stub.routed("commit") == []


def test_push_rejected_metadata_fails_clearly(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with hub_stub(failures={"validate": 400}) as stub:
        assert push(run_dir, stub.url) == 2
    assert_one_line_error(capsys, "Invalid metadata in README.md")
    assert stub.routed("commit") == []


def test_push_offline_mode_fails_clearly(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with hub_stub() as stub:
        assert push(run_dir, stub.url) == 2
    assert_one_line_error(capsys, "HF_HUB_OFFLINE is set")
    assert stub.requests == []


def test_push_invalid_repo_id_fails(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with hub_stub() as stub:
        assert main(["--run-dir", str(run_dir), "--repo-id", "no-namespace", "--endpoint", stub.url]) == 2
    assert_one_line_error(capsys, "give it as ORG/NAME")
    assert stub.requests == []
