"""Figures written into run folders and reports (matplotlib, non-interactive backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_confusion_matrix(matrix: np.ndarray, label_names: list[str], path: Path, *, title: str) -> None:
    """Save a confusion matrix (rows: true class, columns: predicted class) with counts in each cell."""
    figure, axes = plt.subplots(figsize=(4.8, 4.2), dpi=120)
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(label_names)), label_names, rotation=30, ha="right")
    axes.set_yticks(range(len(label_names)), label_names)
    axes.set_xlabel("Predicted class")
    axes.set_ylabel("True class")
    axes.set_title(title, fontsize=9)
    threshold = matrix.max() / 2 if matrix.size else 0
    for row in range(matrix.shape[0]):
        for column in range(matrix.shape[1]):
            color = "white" if matrix[row, column] > threshold else "black"
            axes.text(column, row, str(matrix[row, column]), ha="center", va="center", color=color)
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)


def plot_training_curves(epochs: list[dict], path: Path, *, title: str) -> None:
    """Save loss and accuracy per epoch for the training and validation splits."""
    numbers = [entry["epoch"] for entry in epochs]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=120)
    loss_axes.plot(numbers, [entry["train_loss"] for entry in epochs], label="train")
    loss_axes.plot(numbers, [entry["val_loss"] for entry in epochs], label="validation")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("cross-entropy loss")
    loss_axes.legend()
    accuracy_axes.plot(numbers, [entry["train_accuracy"] for entry in epochs], label="train")
    accuracy_axes.plot(numbers, [entry["val_accuracy"] for entry in epochs], label="validation")
    accuracy_axes.set_xlabel("epoch")
    accuracy_axes.set_ylabel("accuracy")
    accuracy_axes.legend()
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)
