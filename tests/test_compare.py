"""The comparison command end to end on tiny data, and the metrics its bootstrap computes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import write_blob_imagefolder, write_boxed_imagefolder
from train import compare
from train.evaluate import classification_metrics

LABEL_NAMES = ["glioma", "meningioma", "pituitary"]


# scikit-learn warns when a resample has predictions of a class that none of its labels has.
@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("size", [3, 8, 40])
def test_summary_metrics_match_sklearn(size):
    # Small resamples often miss a class, which is where the two could disagree.
    rng = np.random.default_rng(size)
    for _ in range(60):
        labels = rng.integers(0, 3, size)
        probabilities = rng.dirichlet(np.ones(3), size)
        expected = classification_metrics(labels, probabilities, LABEL_NAMES)

        fast = compare.summary_metrics(labels, probabilities.argmax(axis=1), 3)

        for key in ("accuracy", "balanced_accuracy", "macro_f1"):
            assert fast[key] == pytest.approx(expected[key]), key


def test_compare_writes_leakage_accuracy(tmp_path, monkeypatch):
    # The whole comparison on a tiny generated dataset: both architectures, one epoch. The blob
    # slices form too few similarity groups for a group-aware split, so only the random one runs.
    data = tmp_path / "data"
    write_blob_imagefolder(data, seed=5, per_class=12)
    tiny = {"image_size": 32, "epochs": 1, "batch_size": 8, "mixed_precision": "auto"}
    for model in list(compare.RECIPES):
        monkeypatch.setitem(compare.RECIPES, model, tiny)
    readme = tmp_path / "README.md"
    readme.write_text("No results block here.\n")

    exit_code = compare.main(["--dataset", str(data), "--output-dir", str(tmp_path / "reports"),
                              "--runs-dir", str(tmp_path / "runs"), "--readme", str(readme), "--splits", "random"])

    assert exit_code == 0
    report = (tmp_path / "reports" / "comparison.md").read_text()
    assert "| with a near-duplicate | without |" in report
    for model in compare.RECIPES:
        assert f"| {model} | random | " in report
        # Each run trained here was calibrated and re-evaluated as deployed.
        run_dir = tmp_path / "runs" / model
        calibration = json.loads((run_dir / "calibration.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["inference"]["test_time_flip"] == calibration["test_time_flip"]["test_time_flip"]
        # The blob folder has no tumor_boxes.csv, so there is nothing to score Grad-CAM against.
        assert not (run_dir / "faithfulness.json").exists()


# pytorch-grad-cam 1.5.7's ROAD imputer calls np.argwhere on a torch tensor, which numpy 2 reports
# as deprecated once per imputed image.
@pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")
def test_compare_scores_new_run_with_boxes(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_boxed_imagefolder(data, seed=6, per_class=12)
    monkeypatch.setitem(compare.RECIPES, "braincancernet", {"image_size": 32, "epochs": 1, "batch_size": 8})
    arguments = ["--dataset", str(data), "--output-dir", str(tmp_path / "reports"), "--runs-dir",
                 str(tmp_path / "runs"), "--readme", str(tmp_path / "none.md"), "--splits", "random",
                 "--models", "braincancernet"]

    assert compare.main(arguments) == 0
    faithfulness = json.loads((tmp_path / "runs" / "braincancernet" / "faithfulness.json").read_text())
    assert "--boxes" in faithfulness["settings"]["command"]

    # A second call reuses the run and leaves its files alone.
    (tmp_path / "runs" / "braincancernet" / "faithfulness.json").unlink()
    assert compare.main(arguments) == 0
    assert not (tmp_path / "runs" / "braincancernet" / "faithfulness.json").exists()
