"""The bundled BrainCancerNet on real slices from its recorded test split."""

import json
from pathlib import Path

import numpy as np
import pytest

from brain_tumor_classifier.predictor import Predictor

from conftest import DATA_DIR

BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "space" / "models" / "braincancernet"
# The first slices of each class in the recorded test split. The model is about 96% accurate there,
# so one miss per class is tolerated, while a broken pipeline would miss most of them.
SLICES_PER_CLASS = 5
MIN_CORRECT_PER_CLASS = 4


@pytest.fixture(scope="module")
def bundled_predictor() -> Predictor:
    if not (BUNDLED_MODEL / "model.safetensors").is_file():
        pytest.skip(f"the bundled model is missing at {BUNDLED_MODEL}")
    return Predictor.from_pretrained(BUNDLED_MODEL)


def test_slices_from_each_class(bundled_predictor):
    if not DATA_DIR.is_dir():
        pytest.skip(f"needs the brain tumor MRI data set at {DATA_DIR}, which is not present")
    manifest = json.loads((BUNDLED_MODEL / "split_manifest.json").read_text())
    for label in bundled_predictor.label_names:
        entries = [entry for entry in manifest["splits"]["test"] if entry["label"] == label][:SLICES_PER_CLASS]
        predicted = {entry["file"]: bundled_predictor.predict(DATA_DIR / entry["file"]) for entry in entries}
        misses = {name: prediction.top_label for name, prediction in predicted.items() if prediction.top_label != label}

        assert len(entries) - len(misses) >= MIN_CORRECT_PER_CLASS, f"{label} slices misclassified: {misses}"
        for name, prediction in predicted.items():
            check_gallery(name, prediction)


def check_gallery(name, prediction):
    assert len(prediction.gallery) >= 5, f"{name} got {len(prediction.gallery)} gallery images"
    for result in prediction.gallery:
        assert np.isfinite(result.cam).all(), f"{result.method} map of {name} is not finite"
        assert result.cam.max() > result.cam.min(), f"{result.method} map of {name} is constant"
        assert result.overlay.shape == (512, 512, 3)
