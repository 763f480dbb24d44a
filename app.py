"""Start the brain tumor classifier demo.

    python app.py [--model HUB_ID_OR_FOLDER] [--share] [--host 127.0.0.1] [--port N] [--examples-dir DIR]
                  [--cache-max-age SECONDS]

The models come from, in this order: ``--model`` (repeatable), the ``BRAIN_TUMOR_MODEL``
environment variable, the ``models`` list of ``space/app_config.json`` (written by
``python -m train.space`` for a Space), and otherwise every random-split run folder under
``space/models/``, with the best one by ``reports/comparison.json`` selected first.

The server binds 127.0.0.1 unless ``--host`` or the ``GRADIO_SERVER_NAME`` environment
variable names another address (Hugging Face Spaces sets it to 0.0.0.0). Importing this
module loads no model and starts nothing.

Uploads and rendered overlays go to a cache folder of this process, made inside Gradio's
(``$GRADIO_TEMP_DIR``, else ``gradio`` under the system temporary folder). Each upload is
deleted shortly after it has been read (``space.ui.UPLOAD_DELETE_DELAY_S``), and its decoded
slice is kept in memory, so that a model switch can classify it again, until ``--cache-max-age``
seconds after its last use (256 MiB for all users together). Overlays, and uploads that were
never read, are deleted once they are ``--cache-max-age`` seconds old. The folder is deleted when
the server stops on Ctrl+C or SIGTERM, but not when the process is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import gradio as gr

from brain_tumor_classifier.predictor import Predictor
from space.model_choice import discover_run_folders, rank_run_folders, read_comparison
from space.ui import CONCURRENCY_LIMIT, DEFAULT_CACHE_MAX_AGE_S, MAX_QUEUE_SIZE, build_demo, launch_options

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent
MODELS_DIR = REPO_ROOT / "space" / "models"
DEFAULT_MODEL = MODELS_DIR / "braincancernet"
COMPARISON_REPORT = REPO_ROOT / "reports" / "comparison.json"
APP_CONFIG = REPO_ROOT / "space" / "app_config.json"
DEFAULT_EXAMPLES_DIR = REPO_ROOT / "space" / "examples"
MODEL_ENV_VAR = "BRAIN_TUMOR_MODEL"
CACHE_ENV_VAR = "GRADIO_TEMP_DIR"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line. ``model`` stays None unless ``--model`` is given."""
    parser = argparse.ArgumentParser(description="Serve the brain tumor MRI classifier with Grad-CAM overlays.")
    parser.add_argument(
        "--model",
        action="append",
        metavar="HUB_ID_OR_FOLDER",
        help=f"Model folder written by save_pretrained, or a Hub repository id. Repeat the option to "
        f"offer several models, the first selected at start. Default: ${MODEL_ENV_VAR}, else the models "
        f"listed in {APP_CONFIG.relative_to(REPO_ROOT)}, else the random-split run folders under "
        f"{MODELS_DIR.relative_to(REPO_ROOT)}, best first by {COMPARISON_REPORT.relative_to(REPO_ROOT)}.",
    )
    parser.add_argument("--share", action="store_true", help="Also publish the demo through a public Gradio share link.")
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="Address to bind. Default: $GRADIO_SERVER_NAME, else 127.0.0.1 (this machine only).",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="TCP port. Default: $GRADIO_SERVER_PORT, else the first free port from 7860.",
    )
    parser.add_argument(
        "--examples-dir",
        type=Path,
        default=DEFAULT_EXAMPLES_DIR if DEFAULT_EXAMPLES_DIR.is_dir() else None,
        help="Folder of example slices shown under the upload box. Default: space/examples if it exists.",
    )
    parser.add_argument(
        "--concurrency-limit",
        type=_positive_int,
        default=CONCURRENCY_LIMIT,
        help=f"Requests processed at the same time, all models together. Default: {CONCURRENCY_LIMIT}.",
    )
    parser.add_argument(
        "--max-queue-size",
        type=_positive_int,
        default=MAX_QUEUE_SIZE,
        help=f"Requests that may wait for a free slot. Further requests are rejected with a busy message. Default: {MAX_QUEUE_SIZE}.",
    )
    parser.add_argument(
        "--cache-max-age",
        type=_positive_int,
        default=DEFAULT_CACHE_MAX_AGE_S,
        metavar="SECONDS",
        help="Age in seconds at which Gradio deletes a cached overlay or an upload that was never read (it "
        "checks at the same interval, so a file stays between one and two times this long), and time after "
        "its last use at which a decoded upload is dropped from memory. Uploads that were read are deleted "
        f"10 s later. Default: {DEFAULT_CACHE_MAX_AGE_S}.",
    )
    return parser.parse_args(argv)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def configured_models(config_path: Path = APP_CONFIG) -> list[str]:
    """Return the ``models`` list of the app config file, or an empty list when there is no file.

    Raises ValueError when the file exists but is not JSON with a list of strings under ``models``.
    """
    if not config_path.is_file():
        return []
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not valid JSON ({error}). Fix it or delete it.") from error
    models = config.get("models") if isinstance(config, dict) else None
    if not isinstance(models, list) or not models or not all(isinstance(model, str) and model for model in models):
        raise ValueError(
            f"{config_path} needs a non-empty 'models' list of Hub repository ids or folders, "
            f'such as {{"models": ["ORG/NAME"]}}. Fix it or delete it.'
        )
    return models


def model_sources(
    args: argparse.Namespace,
    *,
    config_path: Path = APP_CONFIG,
    models_dir: Path = MODELS_DIR,
    comparison_path: Path = COMPARISON_REPORT,
) -> list[str]:
    """Return the model sources to load, the default first, following the order of precedence in the module docstring."""
    if args.model:
        return list(args.model)
    from_environment = os.environ.get(MODEL_ENV_VAR)
    if from_environment:
        return [from_environment]
    from_config = configured_models(config_path)
    if from_config:
        return from_config
    folders = rank_run_folders(discover_run_folders(models_dir), read_comparison(comparison_path))
    if folders:
        return [str(folder) for folder in folders]
    # Nothing to offer: loading the default folder fails with a message that names it.
    return [str(DEFAULT_MODEL)]


def load_predictors(sources: Sequence[str]) -> dict[str, Predictor]:
    """Load one predictor per model source, keyed by a name that is unique in the model menu."""
    predictors: dict[str, Predictor] = {}
    for source in sources:
        predictor = Predictor.from_pretrained(source)
        if predictor.name in predictors:
            predictor.name = source
        predictors[predictor.name] = predictor
    return predictors


def create_demo(args: argparse.Namespace) -> gr.Blocks:
    """Load the models that ``args`` and the defaults name, and build the interface without launching it."""
    predictors = load_predictors(model_sources(args))
    # load_predictors keeps the order of the sources, so the first model is the default.
    return build_demo(
        predictors,
        default_model=next(iter(predictors)),
        examples_dir=args.examples_dir,
        concurrency_limit=args.concurrency_limit,
        max_queue_size=args.max_queue_size,
        cache_max_age_s=args.cache_max_age,
    )


@contextlib.contextmanager
def private_cache_folder() -> Iterator[Path]:
    """Point Gradio's cache at a new folder inside its usual one, and delete that folder on exit.

    Gradio deletes its cached files itself only when its server thread shuts down within the
    5 s that ``gradio.http_server.Server.close`` waits for it (Gradio 6.31), and an open browser
    tab keeps that shutdown waiting longer. A folder of its own lets this process delete its
    uploads in any case.
    """
    previous = os.environ.get(CACHE_ENV_VAR)
    root = Path(previous or Path(tempfile.gettempdir()) / "gradio")
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="brain-tumor-demo-", dir=root))
    os.environ[CACHE_ENV_VAR] = str(folder)
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop(CACHE_ENV_VAR, None)
        else:
            os.environ[CACHE_ENV_VAR] = previous
        shutil.rmtree(folder, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    # Gradio then logs "Keyboard interruption", so this line records the actual cause.
    logger.info("Received %s: stopping the demo", signal.Signals(signum).name)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Start the server and block until it stops. Returns the process exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request Gradio makes to itself at INFO level.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with private_cache_folder() as cache_folder:
        logger.info("Uploads and overlays go to %s, which is deleted when the demo stops", cache_folder)
        try:
            demo = create_demo(args)
        except (OSError, ValueError) as error:
            # Missing folders, incomplete exports and mismatched weights are user errors with
            # messages that name the fix, so they are printed without a traceback.
            logger.debug("Startup failed", exc_info=True)
            print(f"error: {error}", file=sys.stderr)
            return 2
        logger.info("Starting the demo on %s", args.host)
        # launch() blocks until a KeyboardInterrupt and then closes the server. SIGTERM (sent by
        # `docker stop` and most process managers) would end the process without deleting the
        # cache folder, so it is turned into a KeyboardInterrupt while the server runs.
        previous_handler = signal.signal(signal.SIGTERM, _interrupt)
        try:
            demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_options())
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
    logger.info("Stopped the demo")
    return 0


if __name__ == "__main__":
    sys.exit(main())
