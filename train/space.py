"""Assemble a folder that deploys the app as a Hugging Face Space.

    python -m train.space --model-id ORG/NAME [--model-dir RUN_DIR ...] --output-dir DIR [--examples-dir DIR]

The folder contains ``app.py``, the ``space`` package, a copy of the ``brain_tumor_classifier``
package, ``requirements.txt`` and a ``README.md`` whose metadata lists the Hub models.
``space/app_config.json`` names the models the app loads, in the order of the options, the first
selected at start. A ``--model-id`` model is downloaded from the Hub when the Space starts. A
``--model-dir`` run folder is copied into ``space/models/`` with the files that ``train.push``
would publish (everything except ``checkpoints/`` and hidden files), so the Space needs no Hub
access. Nothing else of the repository's ``space/models/`` is copied.

``--output-dir`` may be an existing clone of the Space repository. Files this command writes
are replaced, the two package folders are replaced whole (so deleted modules do not linger),
and everything else in the folder, such as ``.git``, is left alone. Upload the folder with
``hf upload spaces/ORG/SPACE DIR . --repo-type space``. ``python -m train.space_check`` installs
the folder's requirements into a new virtual environment, starts the app and classifies one slice.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence, Union

from huggingface_hub import SpaceCard
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from space.model_choice import EXPORT_FILES
from train.push import list_export_files

__all__ = ["ModelSource", "SpaceAssemblyError", "assemble_space", "main"]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO_ROOT / "brain_tumor_classifier"
SPACE_DIR = REPO_ROOT / "space"
APP_FILE = REPO_ROOT / "app.py"
CARD_TEMPLATE = SPACE_DIR / "README.md"
REQUIREMENTS = SPACE_DIR / "requirements.txt"
# The name app.py reads its model list from (app.APP_CONFIG), relative to the folder root.
APP_CONFIG_NAME = Path("space") / "app_config.json"
# Folder of the bundled run folders, relative to the folder root. app.py also offers its exports
# when there is no app_config.json.
BUNDLED_MODELS_DIR = Path("space") / "models"
EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")


# A Hub repository id (str) or a run folder to copy into the Space (os.PathLike).
ModelSource = Union[str, os.PathLike]


class SpaceAssemblyError(Exception):
    """Error that stops the assembly. Its message names the problem and the fix."""


def check_model_ids(model_ids: Sequence[str]) -> list[str]:
    """Return the ids unchanged, raising SpaceAssemblyError unless each is a Hub id of the form ORG/NAME."""
    for model_id in model_ids:
        try:
            validate_repo_id(model_id)
        except HFValidationError as error:
            raise SpaceAssemblyError(f"Invalid --model-id {model_id!r}: {error}") from error
        if "/" not in model_id:
            raise SpaceAssemblyError(f"Invalid --model-id {model_id!r}: give it as ORG/NAME or USER/NAME.")
    if len(set(model_ids)) != len(model_ids):
        raise SpaceAssemblyError(f"--model-id names a model twice: {list(model_ids)}. Give each model once.")
    return list(model_ids)


def _check_output_dir(output_dir: Path) -> None:
    resolved = output_dir.resolve()
    if resolved == REPO_ROOT or REPO_ROOT.is_relative_to(resolved):
        # The package folders of the output are replaced whole, which here would delete the sources.
        raise SpaceAssemblyError(
            f"--output-dir {output_dir} is this repository or contains it. Choose a folder outside it, "
            "such as ../brain-tumor-space."
        )
    if resolved.is_relative_to(PACKAGE_DIR) or resolved.is_relative_to(SPACE_DIR):
        raise SpaceAssemblyError(
            f"--output-dir {output_dir} is inside a folder that is copied into the Space. Choose a folder "
            "outside brain_tumor_classifier/ and space/."
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise SpaceAssemblyError(f"--output-dir {output_dir} exists and is not a folder. Choose another path.")


def _replace_tree(source: Path, destination: Path, *, ignore) -> None:
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(source, destination, ignore=ignore)


def _space_package_ignore(folder: str, names: list[str]) -> list[str]:
    # Only the space package's Python modules are deployed: the run folders, examples, card
    # template and requirements of the repository's space/ folder are not.
    if Path(folder).resolve() != SPACE_DIR:
        return [name for name in names if name == "__pycache__"]
    return [name for name in names if not name.endswith(".py")]


def check_model_dirs(model_dirs: Sequence[Path]) -> list[Path]:
    """Return the folders unchanged, raising SpaceAssemblyError unless each is a complete export with its own name."""
    for model_dir in model_dirs:
        if not model_dir.is_dir():
            raise SpaceAssemblyError(
                f"--model-dir {model_dir} is not a folder. Pass a run folder written by python -m train."
            )
        missing = [name for name in EXPORT_FILES if not (model_dir / name).is_file()]
        if missing:
            raise SpaceAssemblyError(
                f"--model-dir {model_dir} is not a complete export: it lacks {', '.join(missing)}. "
                "Pass a run folder written by python -m train, or a folder written by save_pretrained."
            )
    names = [model_dir.resolve().name for model_dir in model_dirs]
    if len(set(names)) != len(names):
        raise SpaceAssemblyError(
            f"--model-dir folders share a name: {names}. Each is copied to space/models/NAME, so rename one."
        )
    return list(model_dirs)


def _copy_model_dir(model_dir: Path, destination: Path) -> None:
    # The same files that python -m train.push uploads to a model repository, so a bundled model
    # and a pushed one carry the same card, calibration and out-of-scope statistics.
    for relative in list_export_files(model_dir):
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(model_dir / relative, target)


def render_card(model_ids: Sequence[str]) -> str:
    """Return the Space's README.md: the template in space/README.md with its ``models`` list set to the Hub ids."""
    card = SpaceCard.load(CARD_TEMPLATE)
    card.data.models = list(model_ids)
    return str(card)


def _copy_examples(examples_dir: Path, destination: Path) -> list[Path]:
    if not examples_dir.is_dir():
        raise SpaceAssemblyError(f"--examples-dir {examples_dir} is not a folder. Pass a folder of example slices.")
    paths = sorted(path for path in examples_dir.iterdir() if path.suffix.lower() in EXAMPLE_SUFFIXES)
    if not paths:
        raise SpaceAssemblyError(
            f"--examples-dir {examples_dir} has no image files ({', '.join(EXAMPLE_SUFFIXES)}). "
            "Pass a folder of example slices, or leave the option out."
        )
    destination.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(path, destination / path.name)) for path in paths]


def assemble_space(
    models: Sequence[ModelSource], output_dir: str | Path, *, examples_dir: str | Path | None = None
) -> list[Path]:
    """Write the Space folder for ``models`` (the first is the default) and return the paths written.

    A ``str`` in ``models`` is a Hub repository id, and a path (``os.PathLike``) is a run folder
    to copy into the Space.
    """
    if not models:
        raise SpaceAssemblyError("Give at least one --model-id ORG/NAME or --model-dir RUN_DIR.")
    model_ids = check_model_ids([model for model in models if isinstance(model, str)])
    model_dirs = check_model_dirs([Path(model) for model in models if not isinstance(model, str)])
    output_dir = Path(output_dir)
    _check_output_dir(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    # Code: the entry point and the two packages it imports.
    shutil.copy2(APP_FILE, output_dir / "app.py")
    _replace_tree(PACKAGE_DIR, output_dir / "brain_tumor_classifier", ignore=shutil.ignore_patterns("__pycache__"))
    _replace_tree(SPACE_DIR, output_dir / "space", ignore=_space_package_ignore)
    written = [output_dir / "app.py", output_dir / "brain_tumor_classifier", output_dir / "space"]

    # Weights of bundled models. The space package was replaced above, so no old model lingers.
    for model_dir in model_dirs:
        destination = output_dir / BUNDLED_MODELS_DIR / model_dir.resolve().name
        _copy_model_dir(model_dir, destination)
        written.append(destination)

    # Configuration: which models the app loads, the card with its metadata, and the packages.
    # NOTE: bundled models are listed by paths relative to the folder root, which app.py resolves
    # against the working directory, so the app must be started from inside the folder (a Space is).
    sources = [model if isinstance(model, str) else (BUNDLED_MODELS_DIR / Path(model).resolve().name).as_posix()
               for model in models]
    app_config = output_dir / APP_CONFIG_NAME
    app_config.write_text(json.dumps({"models": sources}, indent=2) + "\n", encoding="utf-8")
    card = output_dir / "README.md"
    card.write_text(render_card(model_ids), encoding="utf-8")
    requirements = output_dir / "requirements.txt"
    shutil.copy2(REQUIREMENTS, requirements)
    written += [app_config, card, requirements]

    if examples_dir is not None:
        written += _copy_examples(Path(examples_dir), output_dir / "space" / "examples")
    logger.info("Assembled the Space for %s in %s", ", ".join(sources), output_dir)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.space",
        description="Assemble a Hugging Face Space folder that serves models from the Hub or bundled run folders.",
    )
    # Both options append to one list, so the command line's order sets the menu order and the default.
    parser.add_argument(
        "--model-id",
        dest="models",
        action="append",
        metavar="ORG/NAME",
        help="Hub repository of a model made by python -m train.push, downloaded when the Space starts. "
        "Repeat the option to offer several; the first model given by either option is selected at start.",
    )
    parser.add_argument(
        "--model-dir",
        dest="models",
        action="append",
        type=Path,
        metavar="RUN_DIR",
        help="Run folder to copy into the Space's space/models/ (without checkpoints/), for a Space that "
        "ships its weights and needs no Hub access. Repeatable, and may be mixed with --model-id.",
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="Folder to write, or a clone of the Space repository.")
    parser.add_argument(
        "--examples-dir", type=Path, default=None, help="Folder of example slices to copy into the Space (optional)."
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if not args.models:
        parser.error("give at least one --model-id ORG/NAME or --model-dir RUN_DIR")
    try:
        assemble_space(args.models, args.output_dir, examples_dir=args.examples_dir)
    except SpaceAssemblyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote the Space folder {args.output_dir}. Try it with: cd {args.output_dir} && python app.py")
    print(
        f"Check it in a new virtual environment with: python -m train.space_check --space-dir {args.output_dir} "
        "--venv-dir NEW_DIR --image SLICE"
    )
    print(f"Publish it with: hf upload spaces/ORG/SPACE {args.output_dir} . --repo-type space")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
