"""Render a run folder's model card (``README.md``) from the files the run wrote.

Every number in the card is read from the run folder: ``metrics.json`` (test results),
``train_config.json`` (command and hyperparameters), ``history.json`` (epochs, time,
hardware), ``config.json`` (labels, input size) and the header of ``model.safetensors``
(parameter count), plus ``calibration.json`` (``python -m train.calibrate``) and
``faithfulness.json`` (``python -m train.faithfulness``) where the folder has them. Nothing
depends on the clock, so the same folder renders to the same bytes.

Render or re-render the card of a run folder with::

    python -m model_card --run-dir runs/braincancernet [--repo-id ORG/NAME]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from brain_tumor_classifier import BrainTumorClassifier
from brain_tumor_classifier.explain import read_faithfulness

__all__ = ["CARD_NAME", "RunFiles", "load_run", "build_card_data", "render_model_card", "write_model_card"]

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
TEMPLATE_PATH = Path(__file__).with_name("template.md")
METRICS_NAME = "metrics.json"
# Optional: a JSON list of further results in the metrics.json format, such as a patient-level split.
METRICS_GROUP_NAME = "metrics_group.json"
# Optional files of python -m train.calibrate and python -m train.faithfulness.
CALIBRATION_NAME = "calibration.json"
RELIABILITY_DIAGRAM_NAME = "reliability_diagram.png"
# The entries of faithfulness.json that are not methods.
CHANCE_BASELINE_KEY = "chance_baseline"
FAITHFULNESS_SETTINGS_KEY = "settings"
REQUIRED_RUN_FILES = ("config.json", "model.safetensors", METRICS_NAME, "train_config.json", "history.json")
REQUIRED_METRICS_KEYS = ("split", "split_kind", "num_images", "accuracy", "balanced_accuracy", "macro_f1")
# The image that the get-started snippet opens. Tests create it before running the snippet.
EXAMPLE_IMAGE_NAME = "slice.png"
# A Hub id has the form namespace/name. hub_dataset_id also checks for a local folder of that form.
BATCH_NORM_BUFFER_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class RunFiles:
    """The parsed contents of a run folder that the card is built from."""

    run_dir: Path
    config: dict
    train_config: dict
    history: dict
    results: list[dict]  # metrics.json first, then any further split results
    split_sizes: dict[str, int]
    num_parameters: int
    has_confusion_image: bool
    has_curves_image: bool
    calibration: dict | None = None
    faithfulness: dict | None = None
    has_reliability_image: bool = False


# Reading the run folder ----------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}.") from error


def _check_metrics(metrics: Any, source: Path) -> dict:
    if not isinstance(metrics, dict):
        raise ValueError(f"{source} must contain a JSON object of metrics, got {type(metrics).__name__}.")
    missing = [key for key in REQUIRED_METRICS_KEYS if key not in metrics]
    if missing:
        raise ValueError(f"{source} lacks the keys {missing}. Write it with python -m train.evaluate.")
    return metrics


def _read_results(run_dir: Path, extra_metrics: Sequence[Path]) -> list[dict]:
    """Read metrics.json, then metrics_group.json (if present), then each extra metrics file."""
    results = [_check_metrics(_read_json(run_dir / METRICS_NAME), run_dir / METRICS_NAME)]
    group_path = run_dir / METRICS_GROUP_NAME
    if group_path.is_file():
        group = _read_json(group_path)
        if not isinstance(group, list):
            raise ValueError(f"{group_path} must contain a JSON list of metrics objects.")
        results += [_check_metrics(item, group_path) for item in group]
    results += [_check_metrics(_read_json(Path(path)), Path(path)) for path in extra_metrics]

    seen: set[tuple[str, str]] = set()
    for result in results:
        key = (result["split"], result["split_kind"])
        if key in seen:
            raise ValueError(
                f"Two results are for the {key[0]} split of kind {key[1]!r}. Keep one per split and kind."
            )
        seen.add(key)
    return results


def count_parameters(weights_path: Path) -> int:
    """Count the parameters in a safetensors file from its header, without loading the tensors.

    Batch-norm buffers (running statistics and step counts) are stored beside the weights but are
    not parameters, so they are left out.
    """
    with weights_path.open("rb") as file:
        (header_size,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(header_size))
    return sum(
        math.prod(entry["shape"])
        for name, entry in header.items()
        if name != "__metadata__" and not name.endswith(BATCH_NORM_BUFFER_SUFFIXES)
    )


def _split_sizes(run_dir: Path) -> dict[str, int]:
    manifest_path = run_dir / "split_manifest.json"
    if not manifest_path.is_file():
        return {}
    splits = _read_json(manifest_path).get("splits", {})
    return {name: len(entries) for name, entries in splits.items()}


def load_run(run_dir: Path, *, extra_metrics: Sequence[Path] = ()) -> RunFiles:
    """Read everything the card needs from a run folder, raising FileNotFoundError for a missing file."""
    run_dir = Path(run_dir)
    missing = [name for name in REQUIRED_RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{run_dir} lacks {', '.join(missing)}: a model card needs a finished run folder written by "
            "python -m train (or python -m train.evaluate for metrics.json)."
        )
    config = _read_json(run_dir / "config.json")
    if not isinstance(config, dict) or "architecture" not in config or "label_names" not in config:
        raise ValueError(
            f"{run_dir / 'config.json'} lacks 'architecture' or 'label_names'. Write it with save_pretrained."
        )
    return RunFiles(
        run_dir=run_dir,
        config=config,
        train_config=_read_json(run_dir / "train_config.json"),
        history=_read_json(run_dir / "history.json"),
        results=_read_results(run_dir, extra_metrics),
        split_sizes=_split_sizes(run_dir),
        num_parameters=count_parameters(run_dir / "model.safetensors"),
        has_confusion_image=(run_dir / "confusion_matrix.png").is_file(),
        has_curves_image=(run_dir / "training_curves.png").is_file(),
        calibration=_read_json(run_dir / CALIBRATION_NAME) if (run_dir / CALIBRATION_NAME).is_file() else None,
        faithfulness=read_faithfulness(run_dir),
        has_reliability_image=(run_dir / RELIABILITY_DIAGRAM_NAME).is_file(),
    )


# Metadata (YAML header) -----------------------------------------------------------------------


def hub_dataset_id(dataset: str) -> str | None:
    """Return ``dataset`` if it names a Hub dataset, or None for a local folder.

    The rule matches how ``train.data`` loads its source: an existing folder is an imagefolder,
    anything else is passed to ``datasets.load_dataset`` as a Hub id.
    """
    if HUB_ID_PATTERN.match(dataset) and not Path(dataset).is_dir():
        return dataset
    return None


def describe_split_kind(kind: str) -> str:
    """Return the card's wording for a split kind, e.g. ``random`` -> ``random split by slice``."""
    return "random split by slice" if kind == "random" else f"{kind} split"


def build_eval_results(run: RunFiles) -> list[EvalResult]:
    """Turn each test result into accuracy, balanced accuracy and macro F1 entries of ``model-index``."""
    dataset_id = hub_dataset_id(str(run.train_config.get("dataset", "")))
    eval_results = []
    for result in run.results:
        # The split kind goes into dataset_config because model-index groups results by task,
        # dataset, config, split and revision, so test splits of different kinds stay apart.
        dataset = {
            "task_type": "image-classification",
            "task_name": "Brain tumor type classification",
            "dataset_type": dataset_id or "imagefolder",
            "dataset_name": f"Brain tumor MRI (figshare 1512427), {describe_split_kind(result['split_kind'])}",
            "dataset_config": result["split_kind"],
            "dataset_split": result["split"],
        }
        eval_results += [
            EvalResult(**dataset, metric_type="accuracy", metric_name="Accuracy", metric_value=result["accuracy"]),
            EvalResult(
                **dataset,
                metric_type="balanced_accuracy",
                metric_name="Balanced accuracy",
                metric_value=result["balanced_accuracy"],
            ),
            EvalResult(
                **dataset,
                metric_type="f1",
                metric_name="Macro F1",
                metric_args={"average": "macro"},
                metric_value=result["macro_f1"],
            ),
        ]
    return eval_results


def build_card_data(run: RunFiles, *, repo_id: str | None = None) -> ModelCardData:
    """Build the YAML metadata: license, library, task, tags, dataset, metrics and ``model-index``."""
    # The license, library, task and base tags are the ones the classifier's save_pretrained uses.
    # _hub_mixin_info is where PyTorchModelHubMixin (huggingface_hub 2.4) keeps the class arguments.
    mixin_data = BrainTumorClassifier._hub_mixin_info.model_card_data
    architecture = run.config["architecture"]
    dataset_id = hub_dataset_id(str(run.train_config.get("dataset", "")))
    return ModelCardData(
        license=mixin_data.license,
        library_name=mixin_data.library_name,
        pipeline_tag=mixin_data.pipeline_tag,
        tags=sorted(set(mixin_data.tags or []) | {"timm", architecture}),
        datasets=[dataset_id] if dataset_id else None,
        metrics=["accuracy", "f1"],
        model_name=repo_id or f"brain-tumor-mri-{architecture}",
        eval_results=build_eval_results(run),
    )


# Text (Markdown body) -------------------------------------------------------------------------


def format_cell(value: Any) -> str:
    """Format a metric for a table: 4 decimals for floats, "n/a" for a missing value."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Return a Markdown table with each cell formatted by ``format_cell``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(format_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def format_duration(seconds: float) -> str:
    """Format seconds as hours and minutes, keeping the exact seconds, e.g. ``1 h 02 min (3725.4 s)``."""
    minutes = round(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    rounded = f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"
    return f"{rounded} ({seconds} s)"


def _results_table(results: list[dict]) -> str:
    rows = [
        [
            f"{result['split']} ({describe_split_kind(result['split_kind'])})",
            result["num_images"],
            result["accuracy"],
            result["balanced_accuracy"],
            result["macro_f1"],
        ]
        for result in results
    ]
    return markdown_table(["split", "slices", "accuracy", "balanced accuracy", "macro F1"], rows)


def _per_class_table(metrics: dict) -> str:
    rows = [
        [f"`{name}`", scores["precision"], scores["recall"], scores["f1"], scores.get("roc_auc"), scores["support"]]
        for name, scores in metrics.get("per_class", {}).items()
    ]
    return markdown_table(["class", "precision", "recall", "F1", "ROC AUC (one vs. rest)", "slices"], rows)


def _confusion_table(metrics: dict) -> str:
    matrix = metrics.get("confusion_matrix", {})
    labels = matrix.get("labels", [])
    rows = [[f"**{label}**", *counts] for label, counts in zip(labels, matrix.get("matrix", []))]
    return markdown_table(["true \\ predicted", *labels], rows)


def _hyperparameter_table(train_config: dict) -> str:
    rows = [
        [f"`{key}`", f"`{value if isinstance(value, str) else json.dumps(value)}`"]
        for key, value in train_config.items()
        if key != "command"
    ]
    return markdown_table(["option", "value"], rows)


def _mirror_rows(choice: dict | None) -> list[list]:
    """Rows on the mirror-averaging choice; none for a calibration.json written before the choice existed."""
    if not choice:
        return []
    rows = [["average with the mirror image (`test_time_flip` in `config.json`)",
             "yes" if choice["test_time_flip"] else "no"]]
    validation = choice.get("validation")
    if validation:
        rows += [
            ["validation accuracy, single pass", validation["single"]["accuracy"]],
            ["validation accuracy, averaged with the mirror image", validation["mirror_average"]["accuracy"]],
        ]
    return rows


def _calibration_table(calibration: dict) -> str:
    validation, test, non_mri = calibration["validation"], calibration["test"], calibration["non_mri"]
    false_alarms = round(test["false_alarm_rate"] * test["num_images"])
    detected = sum(category["detected"] for category in non_mri["categories"].values())
    rows = [
        *_mirror_rows(calibration.get("test_time_flip")),
        [f"softmax temperature (fitted on {validation['num_images']} validation slices)", calibration["temperature"]],
        [f"ECE before scaling ({test['num_images']} test slices, {test['ece_bins']} bins)", test["ece_before"]],
        ["ECE after scaling", test["ece_after"]],
        ["negative log-likelihood before scaling", test["nll_before"]],
        ["negative log-likelihood after scaling", test["nll_after"]],
        ["out-of-scope threshold (in `config.json`)", calibration["ood_threshold"]],
        [f"test MRI slices flagged as out of scope ({false_alarms} of {test['num_images']})",
         test["false_alarm_rate"]],
        [f"non-MRI images flagged as out of scope ({detected} of {non_mri['count']})", non_mri["detection_rate"]],
    ]
    return markdown_table(["quantity", "value"], rows)


def _non_mri_table(non_mri: dict) -> str:
    rows = [
        [f"`{name}`", category["count"], category["detected"], category["source"]]
        for name, category in non_mri["categories"].items()
    ]
    return markdown_table(["category", "images", "flagged", "source"], rows)


def _faithfulness_table(faithfulness: dict) -> str:
    methods = {
        name: values
        for name, values in faithfulness.items()
        if name not in (CHANCE_BASELINE_KEY, FAITHFULNESS_SETTINGS_KEY)
    }
    rows = [
        [name, values["pointing_game"], values["energy_pointing"], values["road"]]
        for name, values in sorted(methods.items(), key=lambda item: -item[1]["energy_pointing"])
    ]
    chance = faithfulness.get(CHANCE_BASELINE_KEY)
    if chance:
        rows.append([
            "chance (box area share, random map)",
            chance["box_area_share"],
            chance["box_area_share"],
            chance.get("road_random_map"),
        ])
    return markdown_table(["method", "pointing game", "energy pointing", "ROAD"], rows)


def _faithfulness_context(faithfulness: dict | None) -> dict:
    if not faithfulness:
        return {"faithfulness_table": None}
    settings = faithfulness.get(FAITHFULNESS_SETTINGS_KEY, {})
    chance = faithfulness.get(CHANCE_BASELINE_KEY, {})
    # Files written before the chance baseline existed keep the slice count in each method's entry.
    num_images = chance.get("num_images") or next(iter(faithfulness.values())).get("num_images")
    test_slices = settings.get("test_slices")
    if test_slices is None:
        scope = f"{num_images} test slices"
    elif num_images == test_slices:
        scope = f"all {test_slices} test slices"
    else:
        scope = f"{num_images} of the {test_slices} test slices"
    road_fraction = settings.get("road_fraction")
    return {
        "faithfulness_table": _faithfulness_table(faithfulness),
        "faithfulness_command": settings.get("command"),
        "faithfulness_scope": scope,
        "faithfulness_road_pixels": "input pixels" if road_fraction is None else f"{road_fraction:.0%} of the input pixels",
        "faithfulness_has_chance": bool(chance),
    }


def _other_mri_sentence(other_mri: dict, threshold: float) -> str:
    outcome = "flagged" if other_mri["flagged"] else "not flagged"
    return (
        f"Not counted above: one MRI from another source scored {other_mri['score']:.1f} "
        f"(threshold {threshold:.1f}) and was {outcome}. Source: {other_mri['source']}."
    )


def _best_epoch(history: dict) -> dict:
    best = history.get("best_epoch")
    return next((entry for entry in history.get("epochs", []) if entry.get("epoch") == best), {})


def build_template_context(run: RunFiles, *, repo_id: str | None = None) -> dict:
    """Collect the values the template fills in, already formatted as text."""
    config, metrics, history = run.config, run.results[0], run.history
    best = _best_epoch(history)
    location = repo_id or str(run.run_dir)
    return {
        "title": repo_id or f"Brain tumor MRI classifier ({config['architecture']})",
        "repo_id": repo_id,
        "architecture": config["architecture"],
        "num_parameters": f"{run.num_parameters:,}",
        "label_names": config["label_names"],
        "num_labels": len(config["label_names"]),
        "in_chans": config.get("in_chans", 1),
        "input_size": config.get("input_size"),
        "mean": config.get("mean"),
        "std": config.get("std"),
        "temperature": config.get("temperature", 1.0),
        "test_time_flip": config.get("test_time_flip", False),
        "metrics": metrics,
        "split_description": describe_split_kind(metrics["split_kind"]),
        "accuracy_percent": f"{metrics['accuracy']:.2%}",
        "macro_f1": format_cell(metrics["macro_f1"]),
        "other_results": run.results[1:],
        "results_table": _results_table(run.results),
        "per_class_table": _per_class_table(metrics),
        "confusion_table": _confusion_table(metrics),
        "inference": metrics.get("inference"),
        "train_config": run.train_config,
        "hyperparameter_table": _hyperparameter_table(run.train_config),
        "split_sizes": run.split_sizes,
        "epochs_run": len(history.get("epochs", [])),
        "best_epoch": history.get("best_epoch"),
        "best_val_accuracy": format_cell(best.get("val_accuracy")),
        "best_val_loss": format_cell(best.get("val_loss")),
        "training_time": format_duration(history["training_seconds"]) if "training_seconds" in history else None,
        "hardware": history.get("hardware"),
        "has_confusion_image": run.has_confusion_image,
        "has_curves_image": run.has_curves_image,
        # json.dumps gives a double-quoted string that is also a valid Python literal.
        "model_location_literal": json.dumps(location),
        "example_image_literal": json.dumps(EXAMPLE_IMAGE_NAME),
        "calibration": run.calibration,
        "calibration_table": _calibration_table(run.calibration) if run.calibration else None,
        "non_mri_table": _non_mri_table(run.calibration["non_mri"]) if run.calibration else None,
        "has_reliability_image": run.has_reliability_image,
        "other_mri_sentence": (
            _other_mri_sentence(run.calibration["non_mri"]["other_mri"], run.calibration["ood_threshold"])
            if run.calibration and run.calibration["non_mri"].get("other_mri")
            else None
        ),
        **_faithfulness_context(run.faithfulness),
    }


# Public API -----------------------------------------------------------------------------------


def render_model_card(
    run_dir: Path, *, repo_id: str | None = None, extra_metrics: Sequence[Path] = ()
) -> ModelCard:
    """Render the model card of a run folder.

    ``repo_id`` names the Hub repository in the title, ``model-index`` and the get-started
    snippet. Without it, the snippet loads the local ``run_dir`` as given. ``extra_metrics``
    lists further metrics.json-format files (e.g. a patient-level split) to report beside
    ``metrics.json`` and any ``metrics_group.json`` in the folder.
    """
    run = load_run(Path(run_dir), extra_metrics=extra_metrics)
    card_data = build_card_data(run, repo_id=repo_id)
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE_PATH), **build_template_context(run, repo_id=repo_id)
    )


def write_model_card(run_dir: Path, *, repo_id: str | None = None) -> Path:
    """Render the card of ``run_dir`` into ``run_dir/README.md`` and return that path."""
    path = Path(run_dir) / CARD_NAME
    render_model_card(Path(run_dir), repo_id=repo_id).save(path)
    logger.info("Wrote the model card %s", path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_card", description="Write README.md (the model card) into a run folder."
    )
    parser.add_argument("--run-dir", required=True, type=Path, help="Run folder written by python -m train.")
    parser.add_argument("--repo-id", default=None, help="Hub repository (ORG/NAME) the card should name.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        print(write_model_card(args.run_dir, repo_id=args.repo_id))
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
