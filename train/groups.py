"""Group-aware splitting and leakage checks for datasets of several slices per patient.

Without a patient column, groups come from image similarity: slices are compared as small
standardized thumbnails (24 x 24, Pearson correlation). Two slices join one group when

* they are near-duplicates (correlation >= ``duplicate_threshold``, nearest neighbour), or
* their file names carry consecutive sequence numbers, they have the same label and they
  look alike (correlation >= ``neighbour_threshold``), as neighbouring slices of one scan do.

NOTE: this approximates patients, it does not recover them. On the 3,064-slice figshare
copy it yields about 400 groups where the original release had 233 patients, so some
patients still span several groups.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

THUMBNAIL_SIZE = 24
# Slices are decoded at this size before the thumbnails are taken, whatever the model's input
# size, so that every architecture trained on a dataset gets the same groups and the same split.
GROUPING_DECODE_SIZE = 192
DUPLICATE_THRESHOLD = 0.97
NEIGHBOUR_THRESHOLD = 0.7


def thumbnails(pixels: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """Return unit-norm, zero-mean thumbnail vectors (``N x size*size``) whose dot products are correlations."""
    pooled = F.adaptive_avg_pool2d(torch.from_numpy(pixels).float().unsqueeze(1), size).flatten(1).numpy()
    pooled = pooled - pooled.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.maximum(norms, 1e-6)


def sequence_numbers(file_ids: Sequence[str]) -> np.ndarray | None:
    """Return the integer in each file name (``glioma/1842.jpg`` -> 1842), or None if any name has none."""
    numbers = []
    for file_id in file_ids:
        match = re.fullmatch(r"(\d+)", file_id.rsplit("/", 1)[-1].rsplit(".", 1)[0])
        if match is None:
            return None
        numbers.append(int(match.group(1)))
    return np.asarray(numbers) if len(set(numbers)) == len(numbers) else None


def similarity_groups(
    pixels: np.ndarray,
    labels: np.ndarray,
    *,
    numbers: np.ndarray | None = None,
    duplicate_threshold: float = DUPLICATE_THRESHOLD,
    neighbour_threshold: float = NEIGHBOUR_THRESHOLD,
) -> np.ndarray:
    """Assign a group id to every slice from near-duplicates and similar consecutively numbered slices."""
    vectors = thumbnails(pixels)
    correlation = vectors @ vectors.T
    np.fill_diagonal(correlation, -1.0)
    count = len(pixels)

    nearest = correlation.argmax(axis=1)
    is_duplicate = correlation[np.arange(count), nearest] >= duplicate_threshold
    rows = [np.flatnonzero(is_duplicate)]
    columns = [nearest[is_duplicate]]

    if numbers is not None:
        order = np.argsort(numbers)
        first, second = order[:-1], order[1:]
        adjacent = (
            (numbers[second] - numbers[first] == 1)
            & (labels[first] == labels[second])
            & (correlation[first, second] >= neighbour_threshold)
        )
        rows.append(first[adjacent])
        columns.append(second[adjacent])

    rows_all, columns_all = np.concatenate(rows), np.concatenate(columns)
    graph = coo_matrix((np.ones(len(rows_all)), (rows_all, columns_all)), shape=(count, count))
    _, group_ids = connected_components(graph, directed=False)
    return group_ids


def group_split(
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    seed: int,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> dict[str, list[int]]:
    """Split rows so that no group has rows in two parts, keeping class shares close to the whole."""
    indices = np.arange(len(labels))
    test_folds = max(2, round(1 / test_fraction))
    group_count = len(np.unique(groups))
    if group_count < 2 * test_folds:
        raise ValueError(
            f"A group-aware split with test_fraction={test_fraction} needs at least {2 * test_folds} groups, "
            f"but the data form only {group_count}. Use --split random, or a dataset with more patients."
        )
    rest, test = next(
        StratifiedGroupKFold(n_splits=test_folds, shuffle=True, random_state=seed).split(indices, labels, groups)
    )
    validation_folds = max(2, round((1 - test_fraction) / validation_fraction))
    train_part, validation_part = next(
        StratifiedGroupKFold(n_splits=validation_folds, shuffle=True, random_state=seed).split(
            rest, labels[rest], groups[rest]
        )
    )
    return {
        "train": sorted(rest[train_part].tolist()),
        "validation": sorted(rest[validation_part].tolist()),
        "test": sorted(test.tolist()),
    }


def near_duplicate_pairs(
    pixels: np.ndarray, rows_a: Sequence[int], rows_b: Sequence[int], *, threshold: float = DUPLICATE_THRESHOLD
) -> list[tuple[int, int, float]]:
    """List (row in a, row in b, correlation) for every pair across the two sets at or above ``threshold``."""
    rows_a, rows_b = np.asarray(rows_a), np.asarray(rows_b)
    if len(rows_a) == 0 or len(rows_b) == 0:
        return []
    vectors = thumbnails(pixels)
    correlation = vectors[rows_a] @ vectors[rows_b].T
    hits = np.argwhere(correlation >= threshold)
    pairs = [(int(rows_a[i]), int(rows_b[j]), float(correlation[i, j])) for i, j in hits]
    return sorted(pairs, key=lambda pair: -pair[2])
