"""Check an assembled Space folder the way a Space runs it: in a new virtual environment that has
only the folder's own requirements.

    python -m train.space_check --space-dir DIR --venv-dir NEW_DIR --image SLICE [--timeout-s 1800]

The check creates a virtual environment in ``--venv-dir`` (a new or empty folder, kept
afterwards), runs ``pip install -r requirements.txt`` inside the Space folder, starts
``python app.py`` there on 127.0.0.1 and a free port, and classifies ``--image`` through
gradio_client's ``/predict`` call. It prints a JSON summary with the seconds each step took and
the predicted label. The logs of pip and of the app are written to ``space-check-pip.log`` and
``space-check-app.log`` in ``--venv-dir``.

The app inherits this process's environment without ``PYTHONPATH``, ``PYTHONHOME`` and
``VIRTUAL_ENV``, so it imports the Space folder's copies of the packages, never the checkout's.
Set ``HF_HUB_OFFLINE=1`` for a folder whose models are all bundled, to prove that it needs no Hub
access. Where an index of requirements.txt cannot be reached, pip retries 5 times for each
package it looks up before it falls back to the other indexes. ``PIP_RETRIES=0`` removes those retries.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

__all__ = ["SpaceCheckError", "SpaceCheckResult", "check_space", "main"]

logger = logging.getLogger(__name__)

PIP_LOG_NAME = "space-check-pip.log"
APP_LOG_NAME = "space-check-app.log"
# Variables that would make the new environment import the checkout's packages or the
# interpreter of another environment.
CLEARED_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
DEFAULT_TIMEOUT_S = 1800.0
LOG_TAIL_LINES = 40


class SpaceCheckError(Exception):
    """A step of the check failed. The message names the step and ends with the tail of its log."""


@dataclass
class SpaceCheckResult:
    """Timings in seconds and the app's prediction for one slice."""

    space_dir: str
    venv_dir: str
    pip_version: str
    seconds: dict[str, float] = field(default_factory=dict)
    label: str = ""
    confidences: dict[str, float] = field(default_factory=dict)
    model_line: str = ""
    gallery_images: int = 0


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.is_file():
        return "(no log written)"
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def _child_environment(venv_dir: Path, **variables: str) -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items() if name not in CLEARED_VARIABLES}
    environment["PATH"] = os.pathsep.join([str(venv_dir / "bin"), environment.get("PATH", "")])
    # The check must not send usage analytics. An explicit setting in the environment wins.
    environment.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    environment.update(variables)
    return environment


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _check_folders(space_dir: Path, venv_dir: Path, image: Path) -> None:
    for name in ("app.py", "requirements.txt"):
        if not (space_dir / name).is_file():
            raise SpaceCheckError(
                f"--space-dir {space_dir} has no {name}. Assemble the folder with python -m train.space first."
            )
    if venv_dir.exists() and (not venv_dir.is_dir() or any(venv_dir.iterdir())):
        raise SpaceCheckError(
            f"--venv-dir {venv_dir} exists and is not an empty folder. Pass a new folder, so the check "
            "starts from a fresh virtual environment."
        )
    if not image.is_file():
        raise SpaceCheckError(f"--image {image} was not found. Pass an MRI slice file (PNG, JPEG, TIFF or DICOM).")


def create_venv(venv_dir: Path) -> Path:
    """Create a virtual environment with pip in ``venv_dir`` and return its Python interpreter."""
    # Run from a venv, ``-m venv`` bases the new environment on the base interpreter, not on this one.
    subprocess.run([sys.executable, "-m", "venv", str(venv_dir)], check=True)
    return venv_dir / "bin" / "python"


def install_requirements(python: Path, space_dir: Path, log_path: Path, timeout_s: float) -> None:
    """Run ``pip install -r requirements.txt`` in ``space_dir`` with ``python``, writing pip's output to ``log_path``."""
    command = [str(python), "-m", "pip", "install", "-r", "requirements.txt"]
    with log_path.open("w", encoding="utf-8") as log:
        try:
            completed = subprocess.run(
                command,
                cwd=space_dir,
                env=_child_environment(python.parent.parent),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired as error:
            raise SpaceCheckError(
                f"pip install timed out after {timeout_s:.0f} s. Last lines of {log_path}:\n{_log_tail(log_path)}"
            ) from error
    if completed.returncode != 0:
        raise SpaceCheckError(
            f"pip install -r requirements.txt failed with exit status {completed.returncode}. "
            f"Last lines of {log_path}:\n{_log_tail(log_path)}"
        )


def _wait_until_serving(process: subprocess.Popen, url: str, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SpaceCheckError(
                f"python app.py exited with status {process.returncode} before it served {url}. "
                f"Last lines of {log_path}:\n{_log_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise SpaceCheckError(
        f"python app.py did not serve {url} within {timeout_s:.0f} s. Last lines of {log_path}:\n{_log_tail(log_path)}"
    )


@contextmanager
def run_app(python: Path, space_dir: Path, log_path: Path, timeout_s: float) -> Iterator[str]:
    """Start ``python app.py`` in ``space_dir`` on 127.0.0.1, yield its URL once it serves, and stop it on exit."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    environment = _child_environment(
        python.parent.parent, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port)
    )
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [str(python), "app.py"], cwd=space_dir, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
        logger.info("Started python app.py (process %d) for %s", process.pid, url)
        try:
            _wait_until_serving(process, url, log_path, timeout_s)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                logger.warning("python app.py (process %d) ignored SIGTERM for 30 s, killing it", process.pid)
                process.kill()
                process.wait()
            logger.info("Stopped python app.py (process %d)", process.pid)


def classify(url: str, image: Path, timeout_s: float) -> tuple[dict, list, str]:
    """Send ``image`` to the app's ``/predict`` endpoint and return the label, the gallery and the model line."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, httpx_kwargs={"timeout": timeout_s})
    label, gallery, model_line, _notes = client.predict(handle_file(str(image)), api_name="/predict")
    return label, gallery, model_line


def _pip_version(python: Path) -> str:
    completed = subprocess.run(
        [str(python), "-m", "pip", "--version"], capture_output=True, text=True, check=True
    )
    return completed.stdout.split()[1]


def check_space(
    space_dir: str | Path, venv_dir: str | Path, image: str | Path, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> SpaceCheckResult:
    """Install the Space folder into a new virtual environment, start it and classify ``image``.

    ``timeout_s`` limits each step: the install, the start and the first prediction. Raises
    SpaceCheckError when a step fails or times out.
    """
    space_dir, venv_dir, image = Path(space_dir).resolve(), Path(venv_dir).resolve(), Path(image).resolve()
    _check_folders(space_dir, venv_dir, image)
    result = SpaceCheckResult(space_dir=str(space_dir), venv_dir=str(venv_dir), pip_version="")

    started = time.perf_counter()
    python = create_venv(venv_dir)
    result.pip_version = _pip_version(python)
    result.seconds["venv"] = round(time.perf_counter() - started, 1)
    logger.info("Created %s in %.1f s with pip %s", venv_dir, result.seconds["venv"], result.pip_version)

    started = time.perf_counter()
    install_requirements(python, space_dir, venv_dir / PIP_LOG_NAME, timeout_s)
    result.seconds["install"] = round(time.perf_counter() - started, 1)
    logger.info("Installed requirements.txt in %.1f s", result.seconds["install"])

    started = time.perf_counter()
    with run_app(python, space_dir, venv_dir / APP_LOG_NAME, timeout_s) as url:
        result.seconds["start"] = round(time.perf_counter() - started, 1)
        logger.info("The app served %s after %.1f s", url, result.seconds["start"])

        started = time.perf_counter()
        label, gallery, model_line = classify(url, image, timeout_s)
        result.seconds["first_prediction"] = round(time.perf_counter() - started, 1)

    result.label = label["label"]
    result.confidences = {item["label"]: item["confidence"] for item in label.get("confidences", [])}
    result.model_line = model_line
    result.gallery_images = len(gallery)
    logger.info("The app predicted %s in %.1f s", result.label, result.seconds["first_prediction"])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.space_check",
        description="Install a Space folder into a new virtual environment, start its app and classify one slice.",
    )
    parser.add_argument("--space-dir", type=Path, required=True, help="Folder written by python -m train.space.")
    parser.add_argument(
        "--venv-dir",
        type=Path,
        required=True,
        help="New or empty folder for the virtual environment (about 6 GB with the CUDA build of torch), kept afterwards.",
    )
    parser.add_argument("--image", type=Path, required=True, help="MRI slice to classify (PNG, JPEG, TIFF or DICOM).")
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"Time limit in seconds for each step: the install, the start and the first prediction. Default: {DEFAULT_TIMEOUT_S:.0f}.",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # gradio_client's httpx logs every request at INFO level.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    try:
        result = check_space(args.space_dir, args.venv_dir, args.image, timeout_s=args.timeout_s)
    except SpaceCheckError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
