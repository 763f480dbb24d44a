"""Leakage audit: near-duplicate slices across the train and test parts of a recorded split.

    python -m train.leakage --run-dir space/models/braincancernet --output-dir reports/leakage
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .data import MANIFEST_NAME, decode_pixels, load_labeled_images, read_manifest_split
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
        "pixels": pixels,
        "file_ids": images.file_ids,
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
    args = parser.parse_args(argv)
    try:
        audit = leakage_audit(args.run_dir, dataset=args.dataset, threshold=args.threshold)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    summary = {key: audit[key] for key in ("threshold", "test_images", "test_images_with_duplicate", "pairs")}
    (args.output_dir / "leakage.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_leakage_pairs(audit, args.output_dir / "leakage_pairs.png")
    print(
        f"{audit['test_images_with_duplicate']} of {audit['test_images']} test slices have a near-duplicate "
        f"in train ({len(audit['pairs'])} pairs at r >= {args.threshold}); details in {args.output_dir}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
