"""Choice of the bundled run folders the app offers, and of the one it selects first.

A run folder under ``space/models/`` contains an export (``config.json`` and ``model.safetensors``)
and the ``train_config.json`` of the run that made it. The menu offers the runs trained on the
random split. Runs on the group-aware split hold out whole groups of similar slices, so they
score lower and exist only to estimate how well the recipe generalizes. The comparison report
(``reports/comparison.json``, written by ``python -m train.compare``) decides the default.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

__all__ = ["EXPORT_FILES", "FALLBACK_DEFAULT", "discover_run_folders", "rank_run_folders", "read_comparison"]

logger = logging.getLogger(__name__)

EXPORT_FILES = ("config.json", "model.safetensors")
# Selected first when no comparison report ranks the models.
FALLBACK_DEFAULT = "braincancernet"
# The split whose test accuracy ranks the models, then the split used when it is missing.
RANKING_SPLITS = ("group", "random")


def _train_config(folder: Path) -> dict:
    path = folder / "train_config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("Ignoring unreadable %s (%s)", path, error)
        return {}
    return config if isinstance(config, dict) else {}


def _is_random_split_run(folder: Path) -> bool:
    split = _train_config(folder).get("split")
    if split is not None:
        return split == "random"
    # A folder without train_config.json (an export copied by hand) is offered unless its name
    # follows train.compare's naming for group-split runs.
    return not folder.name.endswith("-group")


def discover_run_folders(models_dir: str | Path) -> list[Path]:
    """List the complete exports under ``models_dir`` that were trained on the random split, sorted by name.

    Returns an empty list when ``models_dir`` does not exist.
    """
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    folders = []
    for folder in sorted(path for path in models_dir.iterdir() if path.is_dir()):
        if not all((folder / name).is_file() for name in EXPORT_FILES):
            continue
        if _is_random_split_run(folder):
            folders.append(folder)
        else:
            logger.debug("Not offering %s, because it was trained on another split", folder)
    return folders


def read_comparison(path: str | Path) -> list[dict]:
    """Return the ``results`` list of a comparison report, or an empty list when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("Ignoring the comparison report %s, which cannot be read (%s)", path, error)
        return []
    results = report.get("results") if isinstance(report, dict) else None
    if not isinstance(results, list):
        logger.warning("Ignoring the comparison report %s, which has no 'results' list", path)
        return []
    return [result for result in results if isinstance(result, dict)]


def _accuracy(results: Sequence[dict], model: str, split: str) -> float | None:
    for result in results:
        metrics = result.get("metrics")
        if result.get("model") == model and result.get("split") == split and isinstance(metrics, dict):
            accuracy = metrics.get("accuracy")
            if isinstance(accuracy, (int, float)):
                return float(accuracy)
    return None


def model_score(folder: Path, results: Sequence[dict]) -> float | None:
    """Return the test accuracy that ranks ``folder``: its model's group-split accuracy, else random-split.

    The model is the ``model`` recorded in the folder's ``train_config.json``, else the folder
    name. Returns None when the report has neither.
    """
    model = _train_config(folder).get("model") or folder.name
    for split in RANKING_SPLITS:
        accuracy = _accuracy(results, model, split)
        if accuracy is not None:
            return accuracy
    return None


def rank_run_folders(folders: Sequence[Path], results: Sequence[dict]) -> list[Path]:
    """Order run folders best first, so the first one is the app's default model.

    With scores from ``results``, folders are sorted by score (highest first), and unscored folders
    follow by name. Without any score, the folder named ``FALLBACK_DEFAULT`` comes first.
    """
    scores = {folder: model_score(folder, results) for folder in folders}
    if any(score is not None for score in scores.values()):
        ranked = sorted(folders, key=lambda folder: (scores[folder] is None, -(scores[folder] or 0.0), folder.name))
    else:
        ranked = sorted(folders, key=lambda folder: (folder.name != FALLBACK_DEFAULT, folder.name))
    for folder in ranked:
        score = scores[folder]
        logger.info("Offering %s (ranking accuracy %s)", folder, "unknown" if score is None else f"{score:.4f}")
    return ranked
