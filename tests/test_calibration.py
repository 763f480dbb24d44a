"""Temperature scaling and the out-of-scope threshold: fitting, storing, reproducing and using them."""

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from brain_tumor_classifier import BrainTumorClassifier
from brain_tumor_classifier.classifier import OOD_STATISTICS_NAME
from brain_tumor_classifier.predictor import OUT_OF_SCOPE_WARNING, Predictor
from train.__main__ import main as train_main
from train.calibrate import (
    CALIBRATION_NAME,
    ECE_BINS,
    FALSE_ALARM_RATE,
    RELIABILITY_DIAGRAM_NAME,
    SplitOutputs,
    choose_test_time_flip,
    energy_scores,
    expected_calibration_error,
    file_sha256,
    fit_ood_statistics,
    fit_temperature,
    main as calibrate_main,
    non_mri_images,
    out_of_scope_scores,
    out_of_scope_threshold,
    score_splits,
    softmax,
)
from train.compare import read_calibration
from train.report import calibration_lines, calibration_summary

from conftest import write_blob_imagefolder

CLASSES = ("glioma", "meningioma", "pituitary")
NUM_FEATURES = 256  # BrainCancerNet's pooled feature width


def _with_statistics(classifier: BrainTumorClassifier, *, threshold: float) -> BrainTumorClassifier:
    """Give a classifier class means at the origin and an identity precision, so its score is the squared norm."""
    classifier.set_ood_statistics(torch.zeros(len(CLASSES), NUM_FEATURES), torch.eye(NUM_FEATURES))
    classifier.ood_threshold = threshold
    return classifier


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    """Train one epoch at 32 px on 30 generated slices and calibrate the run. Returns the run folder and its weights hash."""
    root = tmp_path_factory.mktemp("imagefolder")
    write_blob_imagefolder(root, seed=1)
    run_dir = tmp_path_factory.mktemp("run")
    exit_code = train_main(
        ["--dataset", str(root), "--output-dir", str(run_dir), "--epochs", "1",
         "--image-size", "32", "--batch-size", "8", "--eval-batch-size", "8"]
    )
    assert exit_code == 0, "the tiny training run failed"
    weights_hash = file_sha256(run_dir / "model.safetensors")
    assert calibrate_main(["--run-dir", str(run_dir)]) == 0
    return run_dir, weights_hash


def _overconfident_logits(true_temperature: float, *, count: int = 20000, seed: int = 0):
    """Return logits ``true_temperature`` times too sharp, with labels drawn from the calibrated softmax."""
    rng = np.random.default_rng(seed)
    calibrated = rng.normal(scale=1.5, size=(count, 3))
    probabilities = softmax(calibrated)
    labels = np.array([rng.choice(3, p=row) for row in probabilities])
    return calibrated * true_temperature, labels


# Fitting -----------------------------------------------------------------------------------


def test_fit_temperature_recovers_known_scale():
    logits, labels = _overconfident_logits(3.0)
    temperature = fit_temperature(logits, labels)

    assert temperature > 0
    assert temperature == pytest.approx(3.0, rel=0.05)


def test_scaling_lowers_ece_when_overconfident():
    logits, labels = _overconfident_logits(3.0, seed=1)
    temperature = fit_temperature(logits, labels)
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits, temperature), labels)

    assert after <= before
    assert after < 0.02, f"ECE after scaling is {after:.4f}"


def test_ece_of_hand_computed_case():
    # Both predictions have confidence 0.9 (one bin) and one of the two is right: |0.5 - 0.9| = 0.4.
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1]])

    assert expected_calibration_error(probabilities, np.array([0, 1]), bins=ECE_BINS) == pytest.approx(0.4)


def test_threshold_flags_about_one_percent():
    scores = np.random.default_rng(2).normal(size=10000)
    threshold = out_of_scope_threshold(scores)

    assert (scores > threshold).mean() == pytest.approx(FALSE_ALARM_RATE, abs=0.001)


def test_energy_baseline_is_negative_logsumexp():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])

    assert energy_scores(logits) == pytest.approx(-np.log(np.exp(logits).sum(axis=1)))


def test_fit_ood_statistics_recovers_class_means():
    rng = np.random.default_rng(3)
    true_means = rng.normal(scale=5.0, size=(3, 8))
    labels = np.repeat([0, 1, 2], 400)
    features = true_means[labels] + rng.normal(size=(1200, 8))
    means, precision = fit_ood_statistics(features, labels, 3)

    assert means == pytest.approx(true_means, abs=0.2)
    assert np.allclose(precision, precision.T)
    assert np.all(np.linalg.eigvalsh(precision) > 0), "the precision matrix must be positive definite"
    assert np.diag(precision) == pytest.approx(np.ones(8), abs=0.2), "unit within-class variance"


def test_fit_ood_statistics_rejects_missing_class():
    with pytest.raises(ValueError, match=r"no slices of classes \[2\]"):
        fit_ood_statistics(np.zeros((4, 8)), np.array([0, 0, 1, 1]), 3)


def test_score_is_distance_to_nearest_class_mean():
    classifier = BrainTumorClassifier(input_size=32)
    means = torch.zeros(3, NUM_FEATURES)
    means[1, 0] = 10.0
    classifier.set_ood_statistics(means, torch.eye(NUM_FEATURES))
    features = torch.zeros(2, NUM_FEATURES)
    features[0, 0] = 9.0  # 1 from class 1, 9 from the others
    features[1, 1] = 3.0  # 3 from classes 0 and 2

    assert classifier.out_of_scope_score(features).tolist() == pytest.approx([1.0, 9.0])


def test_features_and_logits_match_forward():
    classifier = BrainTumorClassifier(input_size=32).eval()
    pixels = torch.randn(2, 1, 32, 32)
    features, logits = classifier.features_and_logits(pixels)

    assert features.shape == (2, NUM_FEATURES)
    assert torch.allclose(logits, classifier(pixels), atol=1e-6)


def test_non_mri_images_cover_each_category():
    categories = non_mri_images()

    assert {"noise", "flat", "text", "pattern", "natural_texture", "photo"} <= set(categories)
    for name, images in categories.items():
        assert images, f"category {name} is empty"
        assert all(image.mode in ("L", "RGB") for image in images), name


# The classifier and the predictor ----------------------------------------------------------


def test_classifier_saves_and_loads_calibration(tmp_path):
    classifier = _with_statistics(BrainTumorClassifier(input_size=32, temperature=1.7), threshold=2.5)
    classifier.save_pretrained(tmp_path)
    loaded = BrainTumorClassifier.from_pretrained(str(tmp_path))

    assert loaded.temperature == 1.7
    assert loaded.ood_threshold == 2.5
    assert torch.equal(loaded.ood_precision, torch.eye(NUM_FEATURES))


def test_missing_statistics_file_is_reported(tmp_path):
    _with_statistics(BrainTumorClassifier(input_size=32), threshold=2.5).save_pretrained(tmp_path)
    (tmp_path / OOD_STATISTICS_NAME).unlink()

    with pytest.raises(FileNotFoundError, match=r"ood_statistics\.safetensors is missing: config\.json sets ood_threshold"):
        BrainTumorClassifier.from_pretrained(str(tmp_path))


def test_threshold_without_statistics_is_not_saved(tmp_path):
    with pytest.raises(ValueError, match="out-of-scope statistics are not"):
        BrainTumorClassifier(input_size=32, ood_threshold=2.5).save_pretrained(tmp_path)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_classifier_rejects_non_finite_threshold(bad):
    with pytest.raises(ValueError, match="ood_threshold must be a finite number or None"):
        BrainTumorClassifier(input_size=32, ood_threshold=bad)


def test_uncalibrated_classifier_never_flags():
    classifier = BrainTumorClassifier(input_size=32)

    assert classifier.ood_threshold is None
    assert not classifier.is_out_of_scope(torch.full((2, NUM_FEATURES), 1e6)).any()


def test_predictor_warns_above_threshold(tiny_model_dir, slice_image):
    classifier = _with_statistics(BrainTumorClassifier.from_pretrained(str(tiny_model_dir)), threshold=-1.0)
    prediction = Predictor(classifier, name="tiny").predict(slice_image, explain=False)

    assert prediction.out_of_scope is True
    assert prediction.warning == OUT_OF_SCOPE_WARNING


def test_warning_names_size_of_tiny_image(tiny_model_dir):
    classifier = _with_statistics(BrainTumorClassifier.from_pretrained(str(tiny_model_dir)), threshold=-1.0)
    prediction = Predictor(classifier, name="tiny").predict(Image.new("L", (1, 1), 128), explain=False)

    assert prediction.warning.startswith(OUT_OF_SCOPE_WARNING)
    assert "only 1 x 1 pixels" in prediction.warning


def test_predictor_uses_temperature(tiny_model_dir, slice_image):
    plain = Predictor.from_pretrained(tiny_model_dir).predict(slice_image, explain=False)
    classifier = BrainTumorClassifier.from_pretrained(str(tiny_model_dir))
    classifier.temperature = 1000.0
    flattened = Predictor(classifier, name="tiny").predict(slice_image, explain=False)

    assert max(flattened.probabilities.values()) < max(plain.probabilities.values())
    assert max(flattened.probabilities.values()) == pytest.approx(1 / 3, abs=0.01)
    assert flattened.out_of_scope is False


# Calibrating a run folder ------------------------------------------------------------------


def test_calibration_keeps_weights_byte_identical(calibrated_run):
    run_dir, weights_hash = calibrated_run

    assert file_sha256(run_dir / "model.safetensors") == weights_hash


def test_calibration_writes_config_and_reports(calibrated_run):
    run_dir, _ = calibrated_run
    config = json.loads((run_dir / "config.json").read_text())
    report = json.loads((run_dir / CALIBRATION_NAME).read_text())

    assert config["temperature"] > 0
    assert math.isfinite(config["ood_threshold"])
    assert report["temperature"] == config["temperature"]
    assert report["ood_threshold"] == config["ood_threshold"]
    assert report["test_time_flip"]["test_time_flip"] == config["test_time_flip"]
    assert set(report["test_time_flip"]["validation"]) == {"single", "mirror_average"}
    assert (run_dir / OOD_STATISTICS_NAME).is_file()
    assert 0 <= report["energy_baseline"]["non_mri_detection_rate"] <= 1
    assert report["test"]["ece_bins"] == ECE_BINS
    assert 0 <= report["test"]["false_alarm_rate"] <= 1
    assert set(report["non_mri"]["categories"]) >= {"noise", "flat", "text", "photo"}
    assert (run_dir / RELIABILITY_DIAGRAM_NAME).stat().st_size > 0


def test_stored_values_are_reproduced(calibrated_run):
    run_dir, _ = calibrated_run
    config = json.loads((run_dir / "config.json").read_text())
    stored = safetensors.torch.load_file(str(run_dir / OOD_STATISTICS_NAME))
    classifier, scored = score_splits(
        run_dir, splits=("train", "validation"), test_time_flip=config["test_time_flip"]
    )
    train, validation = scored["train"], scored["validation"]
    means, precision = fit_ood_statistics(train.features, train.labels, len(CLASSES))
    classifier.set_ood_statistics(torch.from_numpy(means), torch.from_numpy(precision))

    assert fit_temperature(validation.logits, validation.labels) == pytest.approx(config["temperature"], rel=1e-6)
    assert torch.allclose(classifier.ood_class_means, stored["class_means"], rtol=1e-5, atol=1e-6)
    assert torch.allclose(classifier.ood_precision, stored["precision"], rtol=1e-4, atol=1e-4)
    assert out_of_scope_threshold(out_of_scope_scores(classifier, validation.features)) == pytest.approx(
        config["ood_threshold"], rel=1e-5
    )


def test_calibrated_run_loads_into_predictor(calibrated_run):
    run_dir, _ = calibrated_run
    config = json.loads((run_dir / "config.json").read_text())
    predictor = Predictor.from_pretrained(run_dir)
    prediction = predictor.predict(Image.new("L", (48, 40), 0), explain=False)

    assert predictor.classifier.temperature == config["temperature"]
    assert predictor.classifier.ood_threshold == config["ood_threshold"]
    assert isinstance(prediction.out_of_scope, bool)
    assert (prediction.warning is not None) == prediction.out_of_scope


def test_calibrate_rejects_folder_without_manifest(tmp_path, capsys):
    assert calibrate_main(["--run-dir", str(tmp_path)]) == 2
    assert "split_manifest.json is missing" in capsys.readouterr().err


# Report section ------------------------------------------------------------------------------


def test_report_section_equals_file(calibrated_run):
    run_dir, _ = calibrated_run
    report = read_calibration(run_dir)
    test, non_mri = report["test"], report["non_mri"]
    runs = [
        SimpleNamespace(model="braincancernet", split="random", run_dir=run_dir, calibration=report),
        SimpleNamespace(model="resnet50", split="group", run_dir=run_dir, calibration=None),
    ]

    text = "\n".join(calibration_lines(runs))

    false_alarms = round(test["false_alarm_rate"] * test["num_images"])
    detected = sum(category["detected"] for category in non_mri["categories"].values())
    flip = report["test_time_flip"]
    mirror = (
        f"{'yes' if flip['test_time_flip'] else 'no'} "
        f"(validation {100 * flip['validation']['single']['accuracy']:.2f}% single, "
        f"{100 * flip['validation']['mirror_average']['accuracy']:.2f}% averaged)"
    )
    row = (
        f"| braincancernet | random | {mirror} | {report['temperature']:.4f} | {test['ece_before']:.4f} "
        f"| {test['ece_after']:.4f} "
        f"| {100 * test['false_alarm_rate']:.2f}% ({false_alarms} of {test['num_images']}) "
        f"| {100 * non_mri['detection_rate']:.2f}% ({detected} of {non_mri['count']}) "
        f"| `python -m train.calibrate --run-dir {run_dir}` |"
    )
    assert "## Calibration and out-of-scope detection" in text
    assert row in text
    assert f"ECE uses {ECE_BINS} equal-width confidence bins." in text
    assert "Not calibrated (no `calibration.json` in the run folder): resnet50 (group)." in text
    assert f"(reliability_{run_dir.name}.png)" in text


def test_report_summary_equals_file(calibrated_run):
    run_dir, _ = calibrated_run
    report = read_calibration(run_dir)

    summary = calibration_summary(report)

    assert summary["temperature"] == report["temperature"]
    assert summary["test_time_flip"] == report["test_time_flip"]["test_time_flip"]
    assert summary["ece_before"] == report["test"]["ece_before"]
    assert summary["ece_after"] == report["test"]["ece_after"]
    assert summary["test_false_alarm_rate"] == report["test"]["false_alarm_rate"]
    assert summary["non_mri_detection_rate"] == report["non_mri"]["detection_rate"]
    assert calibration_summary(None) is None


def test_read_calibration_rejects_damaged_file(tmp_path):
    assert read_calibration(tmp_path) is None
    (tmp_path / CALIBRATION_NAME).write_text("{")

    with pytest.raises(ValueError, match="python -m train.calibrate"):
        read_calibration(tmp_path)


def _outputs(logits, labels):
    logits = np.asarray(logits, dtype=np.float64)
    return SplitOutputs(np.zeros((len(logits), 1)), logits, np.asarray(labels))


def test_flip_choice_accuracy_then_loss():
    labels = [0, 1, 1]
    single = _outputs([[2, 0, 0], [0, 2, 0], [2, 0, 0]], labels)
    better = _outputs([[2, 0, 0], [0, 2, 0], [0, 1, 0]], labels)
    same_accuracy_lower_loss = _outputs([[4, 0, 0], [0, 4, 0], [1, 0.5, 0]], labels)

    assert choose_test_time_flip(single, better)["test_time_flip"] is True
    assert choose_test_time_flip(better, single)["test_time_flip"] is False
    # A full tie keeps the single pass, which costs half as much.
    assert choose_test_time_flip(single, single)["test_time_flip"] is False
    # Equal accuracy: the lower validation loss decides.
    assert choose_test_time_flip(same_accuracy_lower_loss, single)["test_time_flip"] is False
    assert choose_test_time_flip(single, same_accuracy_lower_loss)["test_time_flip"] is True


def test_calibrate_forces_mirror_averaging(calibrated_run, tmp_path):
    run_dir = tmp_path / "forced"
    shutil.copytree(calibrated_run[0], run_dir)

    assert calibrate_main(["--run-dir", str(run_dir), "--test-time-flip", "on"]) == 0
    report = json.loads((run_dir / CALIBRATION_NAME).read_text())
    assert json.loads((run_dir / "config.json").read_text())["test_time_flip"] is True
    assert report["test_time_flip"]["mode"] == "on"
    assert report["calibrate_command"].endswith("--test-time-flip on")
    assert BrainTumorClassifier.from_pretrained(str(run_dir)).test_time_flip
