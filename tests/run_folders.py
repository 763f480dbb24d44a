"""A fake run folder in the format ``python -m train`` writes, shared by the model card and push tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from brain_tumor_classifier import BrainTumorClassifier

LABELS = ["glioma", "meningioma", "pituitary"]


def make_run_folder(run_dir: Path) -> Path:
    """Write a run folder in the format python -m train writes, with made-up numbers."""
    torch.manual_seed(0)
    BrainTumorClassifier(input_size=32).save_pretrained(run_dir)

    metrics = {
        "split": "test",
        "split_kind": "random",
        "num_images": 460,
        "accuracy": 0.9717391304347826,
        "balanced_accuracy": 0.9650793650793651,
        "macro_f1": 0.9671052631578947,
        "per_class": {
            "glioma": {"precision": 0.981, "recall": 0.9813, "f1": 0.9811, "support": 214, "roc_auc": 0.9978},
            "meningioma": {"precision": 0.9434, "recall": 0.9434, "f1": 0.9434, "support": 106, "roc_auc": None},
            "pituitary": {"precision": 0.9786, "recall": 0.9786, "f1": 0.9786, "support": 140, "roc_auc": 0.9991},
        },
        "confusion_matrix": {"labels": LABELS, "matrix": [[210, 4, 0], [3, 100, 3], [1, 2, 137]]},
        "inference": {
            "batch_1_latency_ms": 3.21,
            "batched_images_per_second": 812.5,
            "batch_size": 64,
            "device": "cpu",
            "threads": 2,
        },
        "evaluate_command": f"python -m train.evaluate --run-dir {run_dir}",
    }
    train_config = {
        "model": "braincancernet",
        "dataset": "/data/brain-tumor-mri",
        "output_dir": str(run_dir),
        "image_size": 32,
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.002,
        "weight_decay": 0.05,
        "warmup_epochs": 0.5,
        "label_smoothing": 0.1,
        "mixed_precision": "bf16",
        "seed": 7,
        "split": "random",
        "command": f"python -m train --dataset /data/brain-tumor-mri --output-dir {run_dir} --epochs 2 --seed 7",
    }
    history = {
        "epochs": [
            {"epoch": 1, "train_loss": 1.02, "train_accuracy": 0.51, "val_loss": 0.93, "val_accuracy": 0.62,
             "lr": 0.002, "seconds": 61.5},
            {"epoch": 2, "train_loss": 0.71, "train_accuracy": 0.83, "val_loss": 0.58, "val_accuracy": 0.8761,
             "lr": 0.0, "seconds": 60.25},
        ],
        "best_epoch": 2,
        "training_seconds": 3725.4,
        "hardware": "AMD EPYC test CPU, 2 threads",
    }
    manifest = {
        "source": "/data/brain-tumor-mri",
        "seed": 7,
        "kind": "random",
        "label_names": LABELS,
        "splits": {
            "train": [{"file": f"glioma/{i}.jpg", "label": "glioma"} for i in range(7)],
            "validation": [{"file": "glioma/7.jpg", "label": "glioma"}],
            "test": [{"file": "pituitary/8.jpg", "label": "pituitary"}, {"file": "glioma/9.jpg", "label": "glioma"}],
        },
    }

    for name, content in {
        "metrics.json": metrics,
        "confusion_matrix.json": metrics["confusion_matrix"],
        "train_config.json": train_config,
        "history.json": history,
        "split_manifest.json": manifest,
    }.items():
        (run_dir / name).write_text(json.dumps(content, indent=2) + "\n")
    Image.new("L", (8, 8)).save(run_dir / "confusion_matrix.png")
    Image.new("L", (8, 8)).save(run_dir / "training_curves.png")
    return run_dir
