"""Train (or reuse) both architectures on the same splits and write ``reports/comparison.md``.

    python -m train.compare --dataset ../shared/data/brain-tumor-mri --output-dir reports

Each (model, split) pair gets a run folder under ``--runs-dir``. A folder whose
``train_config.json`` already matches the recipe and that contains ``metrics.json`` is reused
unless ``--retrain`` is given, so the report can be regenerated without training again. A run
trained here is then calibrated, re-evaluated as deployed and scored with Grad-CAM, as the
README's commands after training do, so that the report shows every run the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brain_tumor_classifier.explain import read_faithfulness
from model_card.render import METRICS_GROUP_NAME, write_model_card

from .boxes import BOXES_NAME
from .calibrate import CALIBRATION_NAME, calibrate_run
from .config import TrainConfig
from .evaluate import RunScores, evaluate_run, score_run, write_evaluation
from .faithfulness import measure_faithfulness, write_faithfulness
from .leakage import leakage_audit
from .recipes import RECIPES
from .report import update_readme_results, write_report
from .training import run_training

logger = logging.getLogger(__name__)

SPLITS = ("random", "group")
BOOTSTRAP_SAMPLES = 2000


@dataclass
class RunResult:
    """Everything the report shows for one (model, split) pair."""

    model: str
    split: str
    run_dir: Path
    scores: RunScores
    history: dict
    train_config: dict
    intervals: dict
    weights_megabytes: float
    num_parameters: int
    # The run folder's faithfulness.json and calibration.json, or None where the folder has none.
    faithfulness: dict | None = None
    calibration: dict | None = None


def run_dir_for(runs_dir: Path, model: str, split: str) -> Path:
    """Return the run folder of a pair: ``MODEL`` for the random split, ``MODEL-group`` otherwise."""
    return runs_dir / (model if split == "random" else f"{model}-{split}")


def recipe_config(model: str, split: str, dataset: str, run_dir: Path) -> TrainConfig:
    return TrainConfig(model=model, dataset=dataset, output_dir=str(run_dir), split=split, **RECIPES[model])


def matches_recipe(run_dir: Path, config: TrainConfig) -> bool:
    """Tell whether a finished run used this recipe, so its results can be reused."""
    config_path = run_dir / "train_config.json"
    if not (run_dir / "metrics.json").is_file() or not config_path.is_file():
        return False
    recorded = json.loads(config_path.read_text())
    expected = config.to_dict()
    # Before 'auto' existed, a run without --mixed-precision trained in float32.
    defaults = {**TrainConfig().to_dict(), "mixed_precision": "no"}
    keys = ["model", "split", "seed", "group_column", *RECIPES[config.model]]
    if expected["mixed_precision"] == "auto" and "mixed_precision" in keys:
        # 'auto' leaves the precision to the hardware, so a run in either precision fits the recipe.
        keys.remove("mixed_precision")
    # A key missing from an older train_config.json had its default value then.
    return all(recorded.get(key, defaults[key]) == expected[key] for key in keys)


def train_or_reuse(config: TrainConfig, *, retrain: bool) -> bool:
    """Train the run unless a matching one exists, and return whether it trained."""
    run_dir = Path(config.output_dir)
    if not retrain and matches_recipe(run_dir, config):
        logger.info("Reusing %s (its train_config.json matches the recipe)", run_dir)
        return False
    command = ["python", "-m", "train", "--model", config.model, "--dataset", config.dataset,
               "--output-dir", str(run_dir), "--split", config.split]
    for key, value in RECIPES[config.model].items():
        command += ["--" + key.replace("_", "-"), str(value)]
    logger.info("Training %s on the %s split into %s", config.model, config.split, run_dir)
    run_training(TrainConfig(**{**config.to_dict(), "command": shlex.join(command)}))
    return True


def finish_new_run(run_dir: Path, *, faithfulness: bool) -> None:
    """Calibrate a run trained here, re-evaluate it as deployed, and score its Grad-CAM maps."""
    logger.info("Calibrating %s (python -m train.calibrate)", run_dir)
    calibrate_run(run_dir)
    # Calibration may turn on mirror averaging, which changes the test figures.
    write_evaluation(run_dir, evaluate_run(run_dir))
    if not faithfulness:
        return
    train_config = json.loads((run_dir / "train_config.json").read_text())
    boxes = Path(train_config.get("boxes") or Path(train_config["dataset"]) / BOXES_NAME)
    if not boxes.is_file():
        logger.warning("No Grad-CAM faithfulness scores for %s, because %s was not found", run_dir, boxes)
        return
    logger.info("Scoring the Grad-CAM methods of %s against %s (python -m train.faithfulness)", run_dir, boxes)
    scores = measure_faithfulness(run_dir, boxes=boxes, progress=True)
    command = ["python", "-m", "train.faithfulness", "--run-dir", str(run_dir), "--boxes", str(boxes)]
    write_faithfulness(run_dir, scores, command=shlex.join(command))


def summary_metrics(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> dict[str, float]:
    """Return accuracy, balanced accuracy and macro F1 as ``classification_metrics`` computes them.

    The bootstrap needs only these three, and computing them from one confusion matrix is far
    faster than scikit-learn's per-call checks and the ROC AUCs that ``classification_metrics``
    adds. Balanced accuracy averages the recall of the classes present in ``labels``. Macro F1
    averages all classes, a class without any true or predicted slice counting as 0.
    """
    counts = np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)
    true_positives = np.diag(counts).astype(np.float64)
    support = counts.sum(axis=1)
    predicted = counts.sum(axis=0)
    present = support > 0
    f1_denominator = support + predicted
    f1 = np.divide(2 * true_positives, f1_denominator, out=np.zeros(num_classes), where=f1_denominator > 0)
    return {
        "accuracy": float(true_positives.sum() / len(labels)),
        "balanced_accuracy": float(np.mean(true_positives[present] / support[present])),
        "macro_f1": float(np.mean(f1)),
    }


def bootstrap_intervals(
    labels: np.ndarray, probabilities: np.ndarray, label_names: list[str], *, seed: int = 0
) -> dict[str, list[float]]:
    """Return 95% percentile intervals of accuracy, balanced accuracy and macro F1 over resampled test images."""
    rng = np.random.default_rng(seed)
    predictions = probabilities.argmax(axis=1)
    samples = {"accuracy": [], "balanced_accuracy": [], "macro_f1": []}
    for _ in range(BOOTSTRAP_SAMPLES):
        rows = rng.integers(0, len(labels), len(labels))
        metrics = summary_metrics(labels[rows], predictions[rows], len(label_names))
        for key in samples:
            samples[key].append(metrics[key])
    return {key: np.percentile(values, [2.5, 97.5]).round(4).tolist() for key, values in samples.items()}


def paired_difference(first: RunResult, second: RunResult, *, seed: int = 0) -> dict:
    """Bootstrap the accuracy difference of two models scored on the same test images."""
    correct_first = first.scores.probabilities.argmax(1) == first.scores.labels
    correct_second = second.scores.probabilities.argmax(1) == second.scores.labels
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(BOOTSTRAP_SAMPLES):
        rows = rng.integers(0, len(correct_first), len(correct_first))
        differences.append(correct_first[rows].mean() - correct_second[rows].mean())
    return {
        "difference": float(correct_first.mean() - correct_second.mean()),
        "interval": np.percentile(differences, [2.5, 97.5]).round(4).tolist(),
    }


def collect_result(model: str, split: str, run_dir: Path) -> RunResult:
    scores = score_run(run_dir)
    weights = run_dir / "model.safetensors"
    return RunResult(
        model=model,
        split=split,
        run_dir=run_dir,
        scores=scores,
        history=json.loads((run_dir / "history.json").read_text()),
        train_config=json.loads((run_dir / "train_config.json").read_text()),
        intervals=bootstrap_intervals(scores.labels, scores.probabilities, scores.classifier.label_names),
        weights_megabytes=weights.stat().st_size / 1e6,
        num_parameters=sum(parameter.numel() for parameter in scores.classifier.parameters()),
        faithfulness=read_faithfulness(run_dir),
        calibration=read_calibration(run_dir),
    )


def read_calibration(run_dir: Path) -> dict | None:
    """Read the run folder's calibration.json, or return None when the folder has none."""
    path = run_dir / CALIBRATION_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}). Write it again with python -m train.calibrate.") from error


def attach_other_splits(results: list[RunResult]) -> None:
    """Give each run folder its model's results on the other splits, and re-render its card with them."""
    for result in results:
        others = [
            {key: value for key, value in other.scores.metrics.items()}
            for other in results
            if other.model == result.model and other.split != result.split
        ]
        (result.run_dir / METRICS_GROUP_NAME).write_text(json.dumps(others, indent=2) + "\n")
        write_model_card(result.run_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.compare",
        description="Train or reuse ResNet50 and BrainCancerNet on random and group-aware splits and compare them.",
    )
    parser.add_argument("--dataset", required=True, help="Imagefolder path or Hub dataset id.")
    parser.add_argument("--output-dir", type=Path, default=Path("reports"), help="Where comparison.md and its figures go.")
    parser.add_argument("--runs-dir", type=Path, default=Path("space/models"), help="Parent folder of the run folders.")
    parser.add_argument("--models", nargs="+", default=list(RECIPES), choices=list(RECIPES), help="Architectures.")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS), help="Split kinds.")
    parser.add_argument("--retrain", action="store_true", help="Train again even where a matching run exists.")
    parser.add_argument(
        "--skip-faithfulness",
        action="store_true",
        help="Do not score the Grad-CAM methods of runs trained here (about 15 minutes per run on a 2-core CPU).",
    )
    parser.add_argument(
        "--readme", type=Path, default=Path(__file__).resolve().parents[1] / "README.md",
        help="README whose comparison block is rewritten (only if it has the block's markers).",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        results = []
        for split in args.splits:
            for model in args.models:
                run_dir = run_dir_for(args.runs_dir, model, split)
                if train_or_reuse(recipe_config(model, split, args.dataset, run_dir), retrain=args.retrain):
                    finish_new_run(run_dir, faithfulness=not args.skip_faithfulness)
                results.append(collect_result(model, split, run_dir))
        audits = {
            split: leakage_audit(run_dir_for(args.runs_dir, args.models[0], split), dataset=args.dataset)
            for split in args.splits
        }
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    differences = {}
    for split in args.splits:
        pair = [result for result in results if result.split == split]
        if len(pair) == 2:
            differences[split] = paired_difference(pair[0], pair[1])
    command = shlex.join(["python", "-m", "train.compare", *(sys.argv[1:] if argv is None else argv)])
    report = write_report(args.output_dir, results, differences, audits, command=command)
    print(f"Wrote {report}")
    attach_other_splits(results)
    if args.readme is not None and update_readme_results(args.readme, results, command=command):
        print(f"Updated the results table in {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
