"""The leakage audit on a generated imagefolder in which two test slices copy training slices."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from brain_tumor_classifier import BrainTumorClassifier
from train.leakage import leakage_audit
from train.leakage import main as leakage_main
from train.report import leakage_accuracy_rows

CLASSES = ("glioma", "meningioma", "pituitary")
PER_CLASS = 6
# Slice index -> split. Index 5 of the first two classes is replaced by a copy of index 0.
SPLIT_OF_INDEX = {0: "train", 1: "train", 2: "train", 3: "validation", 4: "test", 5: "test"}
COPIED = {"glioma/glioma_5.png", "meningioma/meningioma_5.png"}


@pytest.fixture(scope="module")
def leaky_run(tmp_path_factory) -> Path:
    """Write an imagefolder, a split manifest and a tiny model, with two test slices copied from train."""
    data = tmp_path_factory.mktemp("leaky-data")
    rng = np.random.default_rng(3)
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for name in CLASSES:
        (data / name).mkdir()
        for index in range(PER_CLASS):
            # Smooth random patterns: unlike one another at the audit's thumbnail size.
            coarse = rng.integers(0, 256, size=(6, 6)).astype(np.uint8)
            Image.fromarray(coarse, mode="L").resize((48, 48), Image.Resampling.BILINEAR).save(
                data / name / f"{name}_{index}.png"
            )
            splits[SPLIT_OF_INDEX[index]].append({"file": f"{name}/{name}_{index}.png", "label": name})
    for copy in COPIED:
        folder, _ = copy.split("/")
        shutil.copy(data / folder / f"{folder}_0.png", data / copy)

    run_dir = tmp_path_factory.mktemp("leaky-run")
    manifest = {"source": str(data), "seed": 0, "kind": "random", "label_names": list(CLASSES), "splits": splits}
    (run_dir / "split_manifest.json").write_text(json.dumps(manifest))
    torch.manual_seed(0)
    BrainTumorClassifier(input_size=32, label_names=list(CLASSES)).save_pretrained(run_dir)
    return run_dir


def test_audit_finds_copied_test_slices(leaky_run):
    audit = leakage_audit(leaky_run)

    duplicated = {test_file for _, test_file, _ in audit["pairs"]}
    assert duplicated == COPIED
    assert audit["test_images_with_duplicate"] == 2
    assert audit["test_images"] == 2 * len(CLASSES)
    assert all(correlation >= 0.999 for _, _, correlation in audit["pairs"])


def test_command_splits_accuracy_by_duplicates(leaky_run, tmp_path, capsys):
    exit_code = leakage_main(["--run-dir", str(leaky_run), "--output-dir", str(tmp_path), "--accuracy"])

    assert exit_code == 0
    summary = json.loads((tmp_path / "leakage.json").read_text())
    parts = summary["accuracy"]
    assert parts["with_duplicate"]["test_images"] == 2
    assert parts["without_duplicate"]["test_images"] == 4
    assert parts["all"]["test_images"] == 6
    assert all(0.0 <= part["accuracy"] <= 1.0 for part in parts.values())
    assert (tmp_path / "leakage_pairs.png").is_file()
    assert "slices with a near-duplicate" in capsys.readouterr().out


def test_command_without_manifest_gives_error(tmp_path, capsys):
    exit_code = leakage_main(["--run-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")])

    assert exit_code == 2
    assert "split_manifest.json is missing" in capsys.readouterr().err


def test_report_rows_split_by_duplicates():
    audit = {"pairs": [("glioma/a.png", "glioma/t1.png", 0.99)], "test_file_ids": ["glioma/t1.png", "glioma/t2.png"]}
    # Right on the duplicated slice and wrong on the other one.
    scores = SimpleNamespace(probabilities=np.array([[0.9, 0.1], [0.8, 0.2]]), labels=np.array([0, 1]))
    results = [
        SimpleNamespace(model="braincancernet", split="random", scores=scores),
        SimpleNamespace(model="resnet50", split="group", scores=scores),
    ]

    rows = leakage_accuracy_rows(results, {"random": audit})

    assert "| braincancernet | random | 100.00% of 1 | 0.00% of 1 |" in rows
    assert not any(row.startswith("| resnet50") for row in rows), "a split without an audit gets no row"

