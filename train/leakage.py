"""Leakage audit: near-duplicate slices across the train and test parts of a recorded split.

    python -m train.leakage --run-dir space/models/braincancernet --output-dir reports/leakage [--accuracy]

With ``--accuracy`` the run's model is also scored on its test split, and the accuracy is
reported apart for test slices with and without a near-duplicate in train. The gap shows how
much the split's leakage lifts the overall figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .data import MANIFEST_NAME, decode_pixels, load_labeled_images, read_manifest_split
from .evaluate import score_run
from .groups import DUPLICATE_THRESHOLD, GROUPING_DECODE_SIZE, near_duplicate_pairs


def leakage_audit(run_dir: Path, *, dataset: str | None = None, threshold: float = DUPLICATE_THRESHOLD) -> dict:
    """Return the near-duplicate train/test pairs of a run's split, with the decoded slices for plotting."""
    manifest_path = Path(run_dir) / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} is missing: pass a run folder written by python -m train.")
    source = dataset or json.loads(manifest_path.read_text())["source"]
    images = load_labeled_images(source)
    pixels = decode_pixels(images, GROUPING_DECODE_SIZE)
    train_rows = read_manifest_split(manifest_path, images, "train")
    test_rows = read_manifest_split(manifest_path, images, "test")
    pairs = near_duplicate_pairs(pixels, train_rows, test_rows, threshold=threshold)
    return {
        "threshold": threshold,
        "pairs": [(images.file_ids[a], images.file_ids[b], round(c, 4)) for a, b, c in pairs],
        "test_images_with_duplicate": len({b for _, b, _ in pairs}),
        "test_images": len(test_rows),
        "test_file_ids": [images.file_ids[row] for row in test_rows],
        "pixels": pixels,
        "file_ids": images.file_ids,
    }


def accuracy_by_leakage(run_dir: Path, audit: dict, *, dataset: str | None = None) -> dict:
    """Score the run's model on its test split and return the accuracy with and without a near-duplicate in train."""
    scores = score_run(run_dir, dataset=dataset)
    return split_accuracy(scores.probabilities.argmax(axis=1) == scores.labels, audit)


def split_accuracy(correct: np.ndarray, audit: dict) -> dict:
    """Return the accuracy over all test slices and apart for those with and without a near-duplicate in train.

    ``correct`` has one entry per test slice, in the audit's ``test_file_ids`` order (the
    manifest's order, which ``score_run`` also follows).
    """
    duplicated = {test_file for _, test_file, _ in audit["pairs"]}
    has_duplicate = np.array([file_id in duplicated for file_id in audit["test_file_ids"]], dtype=bool)
    if len(has_duplicate) != len(correct):
        raise ValueError(
            f"The audit lists {len(has_duplicate)} test slices, but the run scored {len(correct)}. "
            "Pass the --dataset the run was trained on."
        )

    def part(mask: np.ndarray) -> dict:
        count = int(mask.sum())
        return {"test_images": count, "accuracy": float(correct[mask].mean()) if count else None}

    return {
        "all": part(np.ones_like(has_duplicate)),
        "with_duplicate": part(has_duplicate),
        "without_duplicate": part(~has_duplicate),
    }


def main(argv: list[str] | None = None) -> int:
    from .report import plot_leakage_pairs

    parser = argparse.ArgumentParser(
        prog="python -m train.leakage",
        description="List near-duplicate slices found across the train and test parts of a run's split.",
    )
    parser.add_argument("--run-dir", required=True, type=Path, help="Run folder with a split_manifest.json.")
    parser.add_argument("--dataset", help="Dataset folder or Hub id (default: the manifest's source).")
    parser.add_argument("--threshold", type=float, default=DUPLICATE_THRESHOLD,
                        help="Thumbnail correlation at or above which two slices count as near-duplicates.")
    parser.add_argument("--output-dir", type=Path, default=Path("reports/leakage"),
                        help="Where leakage.json and leakage_pairs.png go.")
    parser.add_argument("--accuracy", action="store_true",
                        help="Also score the run's model on its test split, apart for slices with and without "
                             "a near-duplicate in train (about a minute on 2 CPU cores for 460 slices).")
    args = parser.parse_args(argv)
    try:
        audit = leakage_audit(args.run_dir, dataset=args.dataset, threshold=args.threshold)
        accuracy = accuracy_by_leakage(args.run_dir, audit, dataset=args.dataset) if args.accuracy else None
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    summary = {key: audit[key] for key in ("threshold", "test_images", "test_images_with_duplicate", "pairs")}
    if accuracy is not None:
        summary["accuracy"] = accuracy
    (args.output_dir / "leakage.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_leakage_pairs(audit, args.output_dir / "leakage_pairs.png")
    print(
        f"{audit['test_images_with_duplicate']} of {audit['test_images']} test slices have a near-duplicate "
        f"in train ({len(audit['pairs'])} pairs at r >= {args.threshold}); details in {args.output_dir}"
    )
    if accuracy is not None:
        for name, text in (("with_duplicate", "with a near-duplicate"), ("without_duplicate", "without one")):
            part = accuracy[name]
            value = "n/a" if part["accuracy"] is None else f"{part['accuracy']:.2%}"
            print(f"test accuracy on the {part['test_images']} slices {text}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
