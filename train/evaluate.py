"""Test-set evaluation of a run folder: metrics, confusion matrix and inference timing.

Re-evaluate a finished run on its recorded test split with::

    python -m train.evaluate --run-dir space/models/braincancernet
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from brain_tumor_classifier import BrainTumorClassifier
from brain_tumor_classifier.preprocessing import normalize

from .data import MANIFEST_NAME, decode_pixels, load_labeled_images, read_manifest_split
from .hardware import cpu_model_name
from .plots import plot_confusion_matrix

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.json"


@torch.inference_mode()
def predict_pixels(classifier: BrainTumorClassifier, pixels: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """Return softmax probabilities (temperature-scaled) for decoded uint8 slices ``N x H x W``."""
    classifier.eval()
    device = next(classifier.parameters()).device
    outputs = []
    for start in range(0, len(pixels), batch_size):
        batch = torch.from_numpy(pixels[start : start + batch_size]).unsqueeze(1).to(device)
        inputs = normalize(batch, classifier.mean, classifier.std).contiguous(memory_format=torch.channels_last)
        logits = classifier(inputs).float() / classifier.temperature
        outputs.append(torch.softmax(logits, dim=1).cpu().numpy())
    return np.concatenate(outputs)


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, label_names: list[str]) -> dict:
    """Compute overall and per-class accuracy, precision, recall, F1, ROC AUC and the confusion matrix."""
    predictions = probabilities.argmax(axis=1)
    class_ids = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=class_ids, zero_division=0
    )
    per_class = {}
    for class_id, name in enumerate(label_names):
        is_class = labels == class_id
        has_both = 0 < is_class.sum() < len(labels)
        per_class[name] = {
            "precision": float(precision[class_id]),
            "recall": float(recall[class_id]),
            "f1": float(f1[class_id]),
            "support": int(support[class_id]),
            # One-vs-rest AUC needs both positives and negatives among the labels.
            "roc_auc": float(roc_auc_score(is_class, probabilities[:, class_id])) if has_both else None,
        }
    return {
        "num_images": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predictions)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predictions)),
        "macro_f1": float(np.mean(f1)),
        "per_class": per_class,
        "confusion_matrix": {
            "labels": label_names,
            "matrix": confusion_matrix(labels, predictions, labels=class_ids).tolist(),
        },
    }


@torch.inference_mode()
def measure_inference(classifier: BrainTumorClassifier, *, batch_size: int = 64, repeats: int = 20) -> dict:
    """Time batch-1 latency (median) and batched throughput on random inputs of the model's size."""
    classifier.eval()
    size = classifier.input_size
    single = torch.randn(1, classifier.in_chans, size, size).contiguous(memory_format=torch.channels_last)
    batch = torch.randn(batch_size, classifier.in_chans, size, size).contiguous(memory_format=torch.channels_last)
    for _ in range(3):
        classifier(single)
    latencies = []
    for _ in range(repeats):
        start = time.perf_counter()
        classifier(single)
        latencies.append(time.perf_counter() - start)
    classifier(batch)
    start = time.perf_counter()
    for _ in range(3):
        classifier(batch)
    batched_seconds = (time.perf_counter() - start) / 3
    return {
        "batch_1_latency_ms": round(float(np.median(latencies)) * 1000, 2),
        "batched_images_per_second": round(batch_size / batched_seconds, 1),
        "batch_size": batch_size,
        "device": "cpu",
        "cpu": cpu_model_name(),
        "threads": torch.get_num_threads(),
        # With test-time flipping each call also scores the mirror image, as the app does.
        "test_time_flip": classifier.test_time_flip,
    }


def write_evaluation(run_dir: Path, metrics: dict) -> None:
    """Write metrics.json, confusion_matrix.json and confusion_matrix.png into the run folder."""
    (run_dir / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n")
    (run_dir / "confusion_matrix.json").write_text(json.dumps(metrics["confusion_matrix"], indent=2) + "\n")
    plot_confusion_matrix(
        np.asarray(metrics["confusion_matrix"]["matrix"]),
        metrics["confusion_matrix"]["labels"],
        run_dir / "confusion_matrix.png",
        title=f"Test split ({metrics['num_images']} slices), accuracy {metrics['accuracy']:.2%}",
    )


@dataclass
class RunScores:
    """A run's exported model scored on one recorded split."""

    metrics: dict
    labels: np.ndarray
    probabilities: np.ndarray
    classifier: BrainTumorClassifier


def evaluate_run(run_dir: Path, *, dataset: str | None = None, split: str = "test") -> dict:
    """Evaluate a run folder's exported model on the split recorded in its manifest."""
    return score_run(run_dir, dataset=dataset, split=split).metrics


def score_run(run_dir: Path, *, dataset: str | None = None, split: str = "test") -> RunScores:
    """Score a run folder's exported model on a recorded split, keeping per-image probabilities."""
    run_dir = Path(run_dir)
    manifest_path = run_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} is missing: {run_dir} is not a run folder written by train.")
    manifest = json.loads(manifest_path.read_text())
    source = dataset or manifest["source"]
    classifier = BrainTumorClassifier.from_pretrained(str(run_dir))
    classifier.to(memory_format=torch.channels_last)
    images = load_labeled_images(source)
    if images.label_names != classifier.label_names:
        raise ValueError(
            f"The dataset's classes {images.label_names} differ from the model's {classifier.label_names}."
        )
    rows = read_manifest_split(manifest_path, images, split)
    pixels = decode_pixels(images, classifier.input_size)[rows]
    probabilities = predict_pixels(classifier, pixels)
    metrics = {"split": split, "split_kind": manifest.get("kind", "random")}
    metrics.update(classification_metrics(images.labels[rows], probabilities, classifier.label_names))
    metrics["inference"] = measure_inference(classifier)
    metrics["evaluate_command"] = f"python -m train.evaluate --run-dir {shlex.quote(str(run_dir))}"
    return RunScores(metrics, images.labels[rows], probabilities, classifier)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description="Re-evaluate a run folder on the test split recorded in its split_manifest.json.",
    )
    parser.add_argument("--run-dir", required=True, type=Path, help="Run folder written by python -m train.")
    parser.add_argument(
        "--dataset", default=None, help="Dataset folder or Hub id (default: the source recorded in the manifest)."
    )
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"], help="Split to score.")
    parser.add_argument(
        "--write",
        action="store_true",
        help="Replace the run folder's metrics.json and confusion matrix with this evaluation "
        "(by default they are only compared with it).",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        metrics = evaluate_run(args.run_dir, dataset=args.dataset, split=args.split)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = {key: metrics[key] for key in ("split", "num_images", "accuracy", "macro_f1")}
    recorded_path = args.run_dir / METRICS_NAME
    if args.split == "test" and recorded_path.is_file():
        recorded = json.loads(recorded_path.read_text())
        summary["matches_recorded_accuracy"] = recorded.get("accuracy") == metrics["accuracy"]
    if args.write and args.split == "test":
        write_evaluation(args.run_dir, metrics)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
