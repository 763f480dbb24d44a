"""Start the brain tumor classifier demo.

    python app.py [--model HUB_ID_OR_FOLDER] [--share] [--host 127.0.0.1] [--port N] [--examples-dir DIR]

The server binds 127.0.0.1 unless ``--host`` or the ``GRADIO_SERVER_NAME`` environment
variable names another address (Hugging Face Spaces sets it to 0.0.0.0). Importing this
module loads no model and starts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

import gradio as gr

from brain_tumor_classifier.predictor import Predictor
from space.ui import build_demo

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_MODEL = REPO_ROOT / "space" / "models" / "braincancernet"
DEFAULT_EXAMPLES_DIR = REPO_ROOT / "space" / "examples"
MODEL_ENV_VAR = "BRAIN_TUMOR_MODEL"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line. Defaults come from environment variables where noted."""
    parser = argparse.ArgumentParser(description="Serve the brain tumor MRI classifier with Grad-CAM overlays.")
    parser.add_argument(
        "--model",
        action="append",
        metavar="HUB_ID_OR_FOLDER",
        help=f"Model folder written by save_pretrained, or a Hub repository id. Repeat the option to "
        f"offer several models. Default: ${MODEL_ENV_VAR}, else {DEFAULT_MODEL.relative_to(REPO_ROOT)}.",
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
    args = parser.parse_args(argv)
    if not args.model:
        args.model = [os.environ.get(MODEL_ENV_VAR) or str(DEFAULT_MODEL)]
    return args


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
    """Load the models named in ``args`` and build the interface, without launching it."""
    return build_demo(load_predictors(args.model), examples_dir=args.examples_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the server and block until it stops. Returns the process exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request Gradio makes to itself at INFO level.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        demo = create_demo(args)
    except (OSError, ValueError) as error:
        # Missing folders, incomplete exports and mismatched weights are user errors with
        # messages that name the fix, so they are printed without a traceback.
        logger.debug("Startup failed", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        return 2
    logger.info("Starting the demo on %s", args.host)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
