"""Loading labeled slices through ``datasets``, splitting them reproducibly, and decoding them once."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import datasets
import numpy as np
from sklearn.model_selection import train_test_split

from brain_tumor_classifier.preprocessing import square_grayscale

logger = logging.getLogger(__name__)

MANIFEST_NAME = "split_manifest.json"
SPLIT_NAMES = ("train", "validation", "test")
HUB_DATASET_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


@dataclass
class LabeledImages:
    """A dataset of images with class labels, plus a stable identifier for each row."""

    dataset: datasets.Dataset
    image_column: str
    label_column: str
    label_names: list[str]
    file_ids: list[str]

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.dataset[self.label_column], dtype=np.int64)


def load_labeled_images(source: str, *, split: str = "train", cache_dir: str | None = None) -> LabeledImages:
    """Load a local ``imagefolder`` directory or a Hub dataset id and find its image and label columns."""
    if Path(source).is_dir():
        dataset = datasets.load_dataset("imagefolder", data_dir=source, split=split, cache_dir=cache_dir)
    elif not HUB_DATASET_ID.fullmatch(source) or source.startswith("."):
        # Only a name of the form ORG/NAME is looked up on the Hub, so a mistyped folder fails here.
        raise FileNotFoundError(
            f"Dataset folder {source!r} was not found. Pass an existing imagefolder path "
            "(one subfolder per class) or a Hub dataset id of the form ORG/NAME."
        )
    else:
        try:
            dataset = datasets.load_dataset(source, split=split, cache_dir=cache_dir)
        except (FileNotFoundError, ConnectionError) as error:
            raise FileNotFoundError(
                f"Dataset {source!r} is not a local folder, and loading it from the Hub failed "
                f"({type(error).__name__}). Check the id and the network, or pass an imagefolder path."
            ) from error

    image_column = _find_column(dataset, datasets.Image, "image")
    label_column = _find_column(dataset, datasets.ClassLabel, "label")
    label_names = list(dataset.features[label_column].names)
    file_ids = _file_ids(dataset, image_column, source)
    logger.info("Loaded %d images in %d classes from %s", len(dataset), len(label_names), source)
    return LabeledImages(dataset, image_column, label_column, label_names, file_ids)


def _find_column(dataset: datasets.Dataset, feature_type: type, kind: str) -> str:
    for name, feature in dataset.features.items():
        if isinstance(feature, feature_type):
            return name
    raise ValueError(
        f"The dataset has no {kind} column of type {feature_type.__name__}. Its columns are "
        f"{dict(dataset.features)}. Use an imagefolder (one subfolder per class) or a dataset "
        f"with an Image column and a ClassLabel column."
    )


def _file_ids(dataset: datasets.Dataset, image_column: str, source: str) -> list[str]:
    """Return each row's path relative to ``source`` when known, else its row index."""
    undecoded = dataset.cast_column(image_column, datasets.Image(decode=False))
    root = Path(source).resolve() if Path(source).is_dir() else None
    file_ids = []
    for index, item in enumerate(undecoded[image_column]):
        path = item.get("path") if isinstance(item, dict) else None
        if path and root is not None:
            try:
                path = Path(path).resolve().relative_to(root).as_posix()
            except ValueError:
                pass
        file_ids.append(path if path else f"row-{index}")
    if len(set(file_ids)) != len(file_ids):
        file_ids = [f"row-{index}" for index in range(len(dataset))]
    return file_ids


def stratified_split(
    labels: Sequence[int], *, seed: int, validation_fraction: float = 0.15, test_fraction: float = 0.15
) -> dict[str, list[int]]:
    """Split row indices into train/validation/test, stratified by label, reproducibly for a seed."""
    if not 0 < validation_fraction < 1 or not 0 < test_fraction < 1 or validation_fraction + test_fraction >= 1:
        raise ValueError(
            f"validation_fraction={validation_fraction} and test_fraction={test_fraction} must each be "
            "in (0, 1) and sum to less than 1."
        )
    indices = np.arange(len(labels))
    labels = np.asarray(labels)
    rest, test = train_test_split(indices, test_size=test_fraction, stratify=labels, random_state=seed)
    relative_validation = validation_fraction / (1 - test_fraction)
    train, validation = train_test_split(
        rest, test_size=relative_validation, stratify=labels[rest], random_state=seed
    )
    return {"train": sorted(train.tolist()), "validation": sorted(validation.tolist()), "test": sorted(test.tolist())}


def write_manifest(
    path: Path,
    images: LabeledImages,
    splits: dict[str, list[int]],
    *,
    source: str,
    seed: int,
    kind: str,
    groups: np.ndarray | None = None,
) -> None:
    """Write which files went into each part of the split, with their labels (and groups, if any)."""
    labels = images.labels

    def entry(row: int) -> dict:
        item = {"file": images.file_ids[row], "label": images.label_names[labels[row]]}
        if groups is not None:
            item["group"] = str(groups[row])
        return item

    manifest = {
        "source": source,
        "seed": seed,
        "kind": kind,
        "label_names": images.label_names,
        "splits": {name: [entry(row) for row in rows] for name, rows in splits.items()},
    }
    path.write_text(json.dumps(manifest, indent=1) + "\n")


def read_manifest_split(path: Path, images: LabeledImages, split: str) -> list[int]:
    """Find the rows of ``images`` listed in a manifest's ``split``, checking each recorded label."""
    manifest = json.loads(Path(path).read_text())
    if split not in manifest["splits"]:
        raise ValueError(f"Split {split!r} is not in {path}, which has {sorted(manifest['splits'])}.")
    row_of = {file_id: row for row, file_id in enumerate(images.file_ids)}
    labels = images.labels
    rows, missing, relabeled = [], [], []
    for entry in manifest["splits"][split]:
        row = row_of.get(entry["file"])
        if row is None:
            missing.append(entry["file"])
        elif images.label_names[labels[row]] != entry["label"]:
            relabeled.append(entry["file"])
        else:
            rows.append(row)
    if missing or relabeled:
        raise ValueError(
            f"The dataset does not match {path}: {len(missing)} files missing (e.g. {missing[:3]}), "
            f"{len(relabeled)} with another label (e.g. {relabeled[:3]}). "
            f"Point --dataset at the data the run was trained on ({manifest['source']})."
        )
    return rows


def decode_pixels(images: LabeledImages, size: int, *, num_proc: int | None = None) -> np.ndarray:
    """Decode every image once into a ``N x size x size`` uint8 array.

    ``datasets`` caches the decoded result by fingerprint, so later runs at the same size
    skip decoding entirely.
    """
    features = datasets.Features({"pixels": datasets.Array2D(shape=(size, size), dtype="uint8")})

    def to_pixels(batch: dict) -> dict:
        return {"pixels": [square_grayscale(image, size) for image in batch[images.image_column]]}

    decoded = images.dataset.map(
        to_pixels,
        batched=True,
        batch_size=64,
        features=features,
        remove_columns=images.dataset.column_names,
        num_proc=num_proc,
        desc=f"Decoding slices at {size} px",
    )
    return np.asarray(decoded.with_format("numpy")["pixels"], dtype=np.uint8)
