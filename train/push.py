"""Publish a finished run folder to the Hugging Face Hub as one commit.

    python -m train.push --run-dir runs/braincancernet --repo-id ORG/NAME [--private] [--revision BRANCH]

The folder is checked before anything is sent. Every file in it is uploaded except
``checkpoints/`` (resumable training state) and hidden files. If ``README.md`` is the card that
``model_card`` rendered for the local folder, it is re-rendered so that the published card and
its get-started snippet name the repository. A README.md edited by hand is uploaded unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import sys
from pathlib import Path
from typing import Iterator

import httpx2
from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.errors import HFValidationError, HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id

from model_card import render_model_card

__all__ = ["PushError", "check_export", "list_export_files", "push_run", "main"]

logger = logging.getLogger(__name__)

REQUIRED_FILES = ("model.safetensors", "config.json", "README.md")
REQUIRED_CONFIG_KEYS = ("architecture", "label_names")
# Accelerate's resumable state (optimizer, RNG, last epoch) is for resuming only and is never published.
EXCLUDED_FOLDERS = ("checkpoints",)
SNIPPET_LOCATION_PATTERN = re.compile(r'from_pretrained\(("(?:[^"\\]|\\.)*")\)')


class PushError(Exception):
    """Error that stops a push. Its message is one line that names the problem and the fix."""


# Checking the folder --------------------------------------------------------------------------


def check_export(run_dir: Path) -> dict:
    """Return the run's config.json, raising PushError unless the folder is a complete export."""
    if not run_dir.is_dir():
        raise PushError(f"{run_dir} is not a folder. Pass the run folder written by python -m train.")
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise PushError(
            f"{run_dir} is not a complete export: it lacks {', '.join(missing)}. Finish the run with "
            "python -m train (or render README.md with python -m model_card --run-dir DIR)."
        )
    try:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise PushError(f"{run_dir / 'config.json'} is not valid JSON ({error}).") from error
    missing_keys = [key for key in REQUIRED_CONFIG_KEYS if not isinstance(config, dict) or key not in config]
    if missing_keys:
        raise PushError(
            f"{run_dir / 'config.json'} lacks {', '.join(missing_keys)}. Re-export the model with save_pretrained."
        )
    return config


def list_export_files(run_dir: Path) -> list[str]:
    """Return the POSIX paths, relative to ``run_dir``, of the files to publish, sorted."""
    paths = []
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if relative.parts[0] in EXCLUDED_FOLDERS or any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file():
            paths.append(relative.as_posix())
    return paths


def read_optional_json(path: Path) -> dict:
    """Return the JSON object in ``path``, or an empty dict when the file does not exist."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise PushError(f"{path} is not valid JSON ({error}).") from error


# Building the commit --------------------------------------------------------------------------


def card_for_repo(run_dir: Path, repo_id: str) -> bytes | None:
    """Return README.md re-rendered for ``repo_id``, or None to upload the file as it is.

    README.md counts as a generated card when rendering the run folder again, for the local
    folder or for the repository its snippet names, gives the same text. A card edited by hand,
    or a folder the renderer cannot read, keeps README.md as it is.
    """
    text = (run_dir / "README.md").read_text(encoding="utf-8")
    match = SNIPPET_LOCATION_PATTERN.search(text)
    if match is None:
        return None
    try:
        location = json.loads(match.group(1))
        # The card may have been rendered under another spelling of the folder's path, so the
        # local render gets the snippet line of the file before the two are compared.
        local_card = str(render_model_card(run_dir))
        local_snippet = f"from_pretrained({json.dumps(str(run_dir))})"
        candidates = [local_card.replace(local_snippet, match.group(0))]
        if "/" in location and not Path(location).is_dir():
            candidates.append(str(render_model_card(run_dir, repo_id=location)))
        if text not in candidates:
            logger.info("README.md differs from the generated card, so it is uploaded as it is")
            return None
        return str(render_model_card(run_dir, repo_id=repo_id)).encode("utf-8")
    except (FileNotFoundError, ValueError) as error:
        logger.info("Uploading README.md as it is, because the run folder cannot be rendered again: %s", error)
        return None


def build_operations(run_dir: Path, files: list[str], readme: bytes | None) -> list[CommitOperationAdd]:
    """Return one addition per file, with ``readme`` as README.md's content when given."""
    operations = []
    for name in files:
        content = readme if name == "README.md" and readme is not None else str(run_dir / name)
        operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=content))
    return operations


def default_commit_message(config: dict, metrics: dict) -> str:
    """Name the architecture and, when metrics.json exists, the test accuracy and split kind."""
    message = f"Upload {config['architecture']} brain tumor MRI classifier"
    if "accuracy" in metrics:
        split = metrics.get("split", "test")
        message += f" ({split} accuracy {metrics['accuracy']:.2%}, {metrics.get('split_kind', 'random')} split)"
    return message


def commit_description(metrics: dict, train_config: dict) -> str:
    """List the commands that produced the model and its metrics, for the commit's description."""
    lines = []
    if train_config.get("command"):
        lines.append(f"Trained with: {train_config['command']}")
    if metrics.get("evaluate_command"):
        lines.append(f"Evaluated with: {metrics['evaluate_command']}")
    return "\n".join(lines)


# Talking to the Hub ---------------------------------------------------------------------------


def resolve_token() -> str:
    """Return the token from HF_TOKEN or the saved login, raising PushError when there is none."""
    token = get_token()
    if not token:
        raise PushError(
            "No Hugging Face token found: set HF_TOKEN to a token with write access, or run `hf auth login`."
        )
    return token


def describe_http_error(error: HfHubHTTPError, repo_id: str) -> str:
    """Turn an HTTP error from the Hub into a one-line message with the likely fix."""
    status = error.response.status_code if error.response is not None else None
    # The server's message can span several lines, so it is joined into one.
    server_message = " ".join((error.server_message or str(error)).split())
    if status == 401:
        return f"The Hub rejected the token (401: {server_message}). Check HF_TOKEN or run `hf auth login`."
    if status == 403:
        return f"The token has no write access to {repo_id} (403: {server_message}). Use a token with write access."
    return f"The Hub request failed ({status}: {server_message})."


@contextlib.contextmanager
def hub_errors(endpoint: str, repo_id: str) -> Iterator[None]:
    """Convert offline mode, network failures and HTTP errors into one-line PushErrors."""
    try:
        yield
    except OfflineModeIsEnabled as error:
        raise PushError("HF_HUB_OFFLINE is set, so nothing can be uploaded. Unset it to push.") from error
    except httpx2.TransportError as error:
        # huggingface_hub 2.4 sends its requests with httpx2, whose connection errors and
        # timeouts all derive from TransportError.
        raise PushError(
            f"Cannot reach {endpoint} ({type(error).__name__}: {error}). Check the network connection or HF_ENDPOINT."
        ) from error
    except HfHubHTTPError as error:
        raise PushError(describe_http_error(error, repo_id)) from error
    except ValueError as error:
        # create_commit raises ValueError, with one line per problem, when the Hub rejects README.md's metadata.
        raise PushError(" ".join(str(error).split())) from error


def push_run(
    run_dir: Path,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Upload a run folder (without ``checkpoints/``) to ``repo_id`` in one commit and return the commit URL.

    The repository is created if needed, and so is the branch ``revision``. ``endpoint`` defaults
    to HF_ENDPOINT, or https://huggingface.co when that is unset.
    """
    run_dir = Path(run_dir)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PushError(f"Invalid --repo-id {repo_id!r}: {error}") from error
    if "/" not in repo_id:
        raise PushError(f"Invalid --repo-id {repo_id!r}: give it as ORG/NAME or USER/NAME.")
    config = check_export(run_dir)
    metrics = read_optional_json(run_dir / "metrics.json")
    train_config = read_optional_json(run_dir / "train_config.json")
    token = resolve_token()
    endpoint = endpoint or constants.ENDPOINT

    files = list_export_files(run_dir)
    operations = build_operations(run_dir, files, card_for_repo(run_dir, repo_id))
    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(endpoint, repo_id):
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or default_commit_message(config, metrics),
            commit_description=commit_description(metrics, train_config),
            revision=revision,
        )
    logger.info("Pushed %d files from %s to %s", len(files), run_dir, commit.commit_url)
    return commit.commit_url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.push",
        description="Upload a run folder (model, config, card, metrics and figures, without checkpoints/) to the Hub.",
    )
    parser.add_argument("--run-dir", required=True, type=Path, help="Run folder written by python -m train.")
    parser.add_argument("--repo-id", required=True, help="Hub model repository as ORG/NAME, created if missing.")
    parser.add_argument(
        "--private",
        action="store_true",
        help="Create the repository as private (an existing one keeps its visibility).",
    )
    parser.add_argument("--revision", default=None, help="Branch to commit to, created if missing (default: main).")
    parser.add_argument("--commit-message", default=None, help="Commit title (default: architecture and accuracy).")
    parser.add_argument(
        "--endpoint", default=None, help="Hub address (default: HF_ENDPOINT, or https://huggingface.co)."
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        url = push_run(
            args.run_dir,
            args.repo_id,
            private=True if args.private else None,
            revision=args.revision,
            commit_message=args.commit_message,
            endpoint=args.endpoint,
        )
    except PushError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
