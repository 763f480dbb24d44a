"""Temperature scaling and an out-of-scope detector for a finished run, fitted on its recorded splits.

Calibrate a run folder written by ``python -m train`` with::

    python -m train.calibrate --run-dir space/models/braincancernet

The command stores ``temperature`` and ``ood_threshold`` in the run's ``config.json``, writes the
detector's feature statistics to ``ood_statistics.safetensors`` and leaves ``model.safetensors``
untouched. It also writes ``calibration.json``, with the expected calibration error (ECE) on the
test split before and after scaling, the false-alarm rate on the test split and the detection
rate on generated and bundled non-MRI images, and ``reliability_diagram.png``.

It first decides whether the model averages each slice with its left-right mirror
(``test_time_flip`` in ``config.json``): with ``--test-time-flip auto``, the default, it scores
the validation split both ways and keeps the averaging only where it wins by the rule the
training loop picks epochs with (higher accuracy, then lower loss). The temperature and the
detector are then fitted on the outputs of the chosen mode.

The out-of-scope score is the squared Mahalanobis distance from an image's pooled pre-logit
features to the nearest class mean, with one Ledoit-Wolf shrunk covariance shared by the classes.
This is the final-layer score of Lee et al., "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks" (NeurIPS 2018), without their input
perturbation and multi-layer ensemble. The means and covariance come from the training split,
and the threshold is set so that at most ``FALSE_ALARM_RATE`` of validation slices score above it.

The energy score ``-logsumexp(logits)`` was tried first, because it needs nothing beyond the
logits. On the BrainCancerNet export of commit dbd2d79 it flagged 1 of the 43 images that
``non_mri_images`` builds, at a 1% validation false-alarm rate, because noise, text and photos
drive the logits higher than real slices do. The Mahalanobis score flagged all 43 with a 1.7% false-alarm rate
on the test split (460 slices, one CPU run). ``calibration.json`` reports both scores for every
run, so the comparison stays visible. The cost is a statistics file of ``num_features`` squared
floats: 256 KiB for BrainCancerNet and 16 MiB for ResNet50.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp
from sklearn.covariance import LedoitWolf

from brain_tumor_classifier import BrainTumorClassifier
from brain_tumor_classifier.classifier import CONFIG_NAME, OOD_STATISTICS_NAME, WEIGHTS_NAME
from brain_tumor_classifier.preprocessing import normalize, square_grayscale

from .data import MANIFEST_NAME, LabeledImages, decode_pixels, load_labeled_images, read_manifest_split

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

logger = logging.getLogger(__name__)

CALIBRATION_NAME = "calibration.json"
RELIABILITY_DIAGRAM_NAME = "reliability_diagram.png"
# Share of in-distribution validation slices that the threshold flags as out of scope.
FALSE_ALARM_RATE = 0.01
ECE_BINS = 15
# The temperature search runs over log(T) within these bounds. A fit at a bound is logged,
# because it means the validation logits carry almost no calibration signal.
TEMPERATURE_BOUNDS = (0.05, 20.0)


# Features and logits ----------------------------------------------------------------------


@torch.inference_mode()
def pixel_outputs(
    classifier: BrainTumorClassifier, pixels: np.ndarray, *, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Return pooled features ``N x num_features`` and raw logits ``N x num_labels`` for uint8 slices ``N x H x W``.

    The batches are prepared exactly as ``train.evaluate.predict_pixels`` prepares them.
    """
    classifier.eval()
    device = next(classifier.parameters()).device
    features, logits = [], []
    for start in range(0, len(pixels), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(pixels[start : start + batch_size])).unsqueeze(1).to(device)
        inputs = normalize(batch, classifier.mean, classifier.std).contiguous(memory_format=torch.channels_last)
        batch_features, batch_logits = classifier.features_and_logits(inputs)
        features.append(batch_features.cpu().numpy())
        logits.append(batch_logits.cpu().numpy())
    return np.concatenate(features), np.concatenate(logits)


def out_of_scope_scores(classifier: BrainTumorClassifier, features: np.ndarray) -> np.ndarray:
    """Return the classifier's out-of-scope score for each row of pooled features."""
    return classifier.out_of_scope_score(torch.from_numpy(np.asarray(features, dtype=np.float32))).numpy()


def energy_scores(logits: np.ndarray) -> np.ndarray:
    """Return the energy score ``-logsumexp(logits)`` per row, the baseline reported beside the detector."""
    return -logsumexp(np.asarray(logits, dtype=np.float64), axis=1)


@dataclass
class SplitOutputs:
    """Pooled features, raw logits and true labels of one recorded split."""

    features: np.ndarray
    logits: np.ndarray
    labels: np.ndarray


@dataclass
class LoadedRun:
    """A run's exported model, without its stored calibration, and the dataset's slices decoded at its input size."""

    classifier: BrainTumorClassifier
    images: LabeledImages
    pixels: np.ndarray
    manifest_path: Path


def load_run(run_dir: Path, *, dataset: str | None = None, test_time_flip: bool = False) -> LoadedRun:
    """Load a run's exported model and decode the dataset that its manifest names.

    ``test_time_flip`` sets the loaded model's averaging with mirrored slices.
    """
    run_dir = Path(run_dir)
    manifest_path = run_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} is missing: {run_dir} is not a run folder written by train.")
    manifest = json.loads(manifest_path.read_text())
    # Load without the stored calibration, so a rerun starts from the raw model and does not need
    # the statistics file of an earlier run.
    classifier = BrainTumorClassifier.from_pretrained(
        str(run_dir), temperature=1.0, ood_threshold=None, test_time_flip=test_time_flip
    )
    classifier.to(memory_format=torch.channels_last)
    images = load_labeled_images(dataset or manifest["source"])
    if images.label_names != classifier.label_names:
        raise ValueError(
            f"The dataset's classes {images.label_names} differ from the model's {classifier.label_names}."
        )
    return LoadedRun(classifier, images, decode_pixels(images, classifier.input_size), manifest_path)


def score_split(run: LoadedRun, split: str, *, batch_size: int = 64) -> SplitOutputs:
    """Compute features and logits of one recorded split with the loaded model as it is set now."""
    rows = read_manifest_split(run.manifest_path, run.images, split)
    if not rows:
        raise ValueError(f"The {split} split in {run.manifest_path} is empty, so the run cannot be calibrated.")
    features, logits = pixel_outputs(run.classifier, run.pixels[rows], batch_size=batch_size)
    return SplitOutputs(features, logits, run.images.labels[rows])


def score_splits(
    run_dir: Path,
    *,
    dataset: str | None = None,
    splits: tuple[str, ...] = ("train", "validation", "test"),
    batch_size: int = 64,
    test_time_flip: bool = False,
) -> tuple[BrainTumorClassifier, dict[str, SplitOutputs]]:
    """Load a run's exported model and compute features and logits on the splits recorded in its manifest.

    ``test_time_flip`` sets the loaded model's averaging with mirrored slices.
    """
    run = load_run(run_dir, dataset=dataset, test_time_flip=test_time_flip)
    return run.classifier, {split: score_split(run, split, batch_size=batch_size) for split in splits}


FLIP_MODES = ("auto", "on", "off")


def choose_test_time_flip(plain: SplitOutputs, mirrored: SplitOutputs) -> dict:
    """Compare validation outputs without and with mirror averaging, and pick by accuracy, then by loss.

    Returns the choice and the figures it rests on. A tie on both keeps the single pass, which
    costs half as much.
    """
    figures = {}
    for name, outputs in (("single", plain), ("mirror_average", mirrored)):
        figures[name] = {
            "accuracy": float((outputs.logits.argmax(axis=1) == outputs.labels).mean()),
            "nll": negative_log_likelihood(outputs.logits, outputs.labels, 1.0),
        }
    single, averaged = figures["single"], figures["mirror_average"]
    chosen = (averaged["accuracy"], -averaged["nll"]) > (single["accuracy"], -single["nll"])
    return {"test_time_flip": chosen, "validation": figures, "num_images": int(len(plain.labels))}


# Temperature and threshold -----------------------------------------------------------------


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Return the mean cross-entropy of ``softmax(logits / temperature)`` against ``labels``."""
    log_probabilities = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-log_probabilities[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Find the temperature that minimizes the negative log-likelihood, by a bounded search over log(T).

    The result is deterministic for the same logits, so a stored temperature can be reproduced.
    """
    low, high = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    result = minimize_scalar(
        lambda log_temperature: negative_log_likelihood(logits, labels, float(np.exp(log_temperature))),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-6},
    )
    temperature = float(np.exp(result.x))
    if min(abs(result.x - low), abs(result.x - high)) < 1e-3:
        logger.warning(
            "The fitted temperature %.3f is at the search bound %s. Check that the validation split is "
            "large enough and labeled correctly.",
            temperature,
            TEMPERATURE_BOUNDS,
        )
    return temperature


def fit_ood_statistics(features: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the class means ``num_classes x D`` and the shared precision matrix ``D x D`` of training features.

    The covariance of the class-centered features is shrunk with Ledoit-Wolf, so it stays
    invertible when there are fewer training slices than feature dimensions.
    """
    features = np.asarray(features, dtype=np.float64)
    absent = [index for index in range(num_classes) if not (labels == index).any()]
    if absent:
        raise ValueError(f"The training split has no slices of classes {absent}, so their means are undefined.")
    class_means = np.stack([features[labels == index].mean(axis=0) for index in range(num_classes)])
    centered = features - class_means[labels]
    precision = LedoitWolf(assume_centered=True).fit(centered).precision_
    return class_means, precision


def out_of_scope_threshold(scores: np.ndarray, *, false_alarm_rate: float = FALSE_ALARM_RATE) -> float:
    """Return the score above which at most ``false_alarm_rate`` of the in-distribution ``scores`` lie.

    The threshold is one of the scores (the ``1 - false_alarm_rate`` quantile, rounded up), so
    a validation split of fewer than ``1 / false_alarm_rate`` slices gets its maximum score and
    flags none of them.

    NOTE: the rate holds on the scores it was set on and is only an estimate for new slices. Set
    at 1% on 460 validation slices, the bundled BrainCancerNet flags 9 of 460 test slices (1.96%
    in its calibration.json).
    """
    if not 0 < false_alarm_rate < 1:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}.")
    return float(np.quantile(np.asarray(scores, dtype=np.float64), 1.0 - false_alarm_rate, method="higher"))


# Calibration error -------------------------------------------------------------------------


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, *, bins: int = ECE_BINS) -> dict:
    """Group predictions into equal-width confidence bins ``(k/bins, (k+1)/bins]``.

    Returns per-bin counts, mean confidence and accuracy (None for empty bins) and the bin edges.
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    # ceil(c * bins) - 1 puts a confidence that sits exactly on an edge into the lower bin.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts, mean_confidence, accuracy = [], [], []
    for bin_index in range(bins):
        members = index == bin_index
        counts.append(int(members.sum()))
        mean_confidence.append(float(confidence[members].mean()) if members.any() else None)
        accuracy.append(float(correct[members].mean()) if members.any() else None)
    return {
        "edges": np.linspace(0.0, 1.0, bins + 1).tolist(),
        "counts": counts,
        "confidence": mean_confidence,
        "accuracy": accuracy,
    }


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, *, bins: int = ECE_BINS) -> float:
    """Return the ECE: the count-weighted mean gap between accuracy and confidence over the bins."""
    table = reliability_bins(probabilities, labels, bins=bins)
    total = sum(table["counts"])
    gaps = [
        count * abs(accuracy - confidence)
        for count, accuracy, confidence in zip(table["counts"], table["accuracy"], table["confidence"])
        if count
    ]
    return float(sum(gaps) / total)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Return ``softmax(logits / temperature)`` row by row, in float64."""
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1))


# Non-MRI images ----------------------------------------------------------------------------

NON_MRI_SOURCES = {
    "noise": "generated: uniform, Gaussian, salt-and-pepper and color noise, 256 x 256",
    "flat": "generated: single-value images (black, white, three grays, red)",
    "text": "generated: words rendered with Pillow's default font, dark on light and light on dark",
    "pattern": "generated: checkerboards, stripes and linear gradients",
    "natural_texture": (
        "generated fractal (1/f) noise, plus elevation maps from matplotlib's bundled sample data "
        "(jacksboro_fault_dem.npz, topobathy.npz)"
    ),
    "photo": "matplotlib's bundled photo grace_hopper.jpg: whole, four crops, grayscale and mirrored",
}
OTHER_MRI_SOURCE = (
    "matplotlib's bundled sample s1045.ima.gz, a 256 x 256 16-bit sagittal head MRI from another source; "
    "reported for information, not counted as a detection or a false alarm"
)


def non_mri_images(*, seed: int = 0) -> dict[str, list[Image.Image]]:
    """Build the non-MRI test images, by category. ``NON_MRI_SOURCES`` describes each category.

    Categories whose matplotlib sample files are missing are left out of the result.
    """
    rng = np.random.default_rng(seed)
    size = 256
    noise = [Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L") for _ in range(4)]
    noise += [
        Image.fromarray(np.clip(rng.normal(mean, 40, (size, size)), 0, 255).astype(np.uint8), mode="L")
        for mean in (64, 128)
    ]
    noise += [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB") for _ in range(2)]
    salt = rng.choice(np.array([0, 255], dtype=np.uint8), size=(2, size, size), p=[0.9, 0.1])
    noise += [Image.fromarray(array, mode="L") for array in salt]

    flat = [Image.new("L", (size, size), value) for value in (0, 255, 64, 128, 192)]
    flat.append(Image.new("RGB", (size, size), (200, 30, 30)))

    categories = {
        "noise": noise,
        "flat": flat,
        "text": _text_images(size),
        "pattern": _pattern_images(size),
        "natural_texture": [_fractal_noise(rng, size) for _ in range(4)] + _elevation_maps(),
    }
    photos = _photo_images()
    if photos:
        categories["photo"] = photos
    return categories


def _text_images(size: int) -> list[Image.Image]:
    lines = ["Patient report", "Lorem ipsum dolor", "MRI BRAIN T1 AX", "0123456789", "Glioma?", "Page 1 of 3"]
    images = []
    for index, line in enumerate(lines):
        dark_on_light = index % 2 == 0
        image = Image.new("L", (size, size), 245 if dark_on_light else 10)
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default(size=18 + 4 * index)
        for row in range(0, size, 40 + 4 * index):
            draw.text((8, row), line, fill=20 if dark_on_light else 235, font=font)
        images.append(image)
    return images


def _pattern_images(size: int) -> list[Image.Image]:
    y, x = np.mgrid[0:size, 0:size]
    arrays = [
        ((x // 16 + y // 16) % 2) * 255,
        ((x // 48 + y // 48) % 2) * 255,
        (x // 12 % 2) * 255,
        (y // 24 % 2) * 200,
        x * 255 / (size - 1),
        (x + y) * 255 / (2 * size - 2),
    ]
    return [Image.fromarray(np.asarray(array, dtype=np.uint8), mode="L") for array in arrays]


def _fractal_noise(rng: np.random.Generator, size: int) -> Image.Image:
    # White noise shaped to a 1/f amplitude spectrum looks like clouds or terrain.
    frequency = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size)))
    frequency[0, 0] = 1.0
    spectrum = np.fft.fft2(rng.normal(size=(size, size))) / frequency
    return Image.fromarray(_stretch(np.real(np.fft.ifft2(spectrum))), mode="L")


def _stretch(array: np.ndarray) -> np.ndarray:
    array = np.nan_to_num(np.asarray(array, dtype=np.float64), nan=float(np.nanmin(array)))
    low, high = array.min(), array.max()
    return ((array - low) / (high - low) * 255 if high > low else np.zeros_like(array)).astype(np.uint8)


def _sample_path(name: str) -> Path | None:
    from matplotlib import cbook

    try:
        path = Path(cbook.get_sample_data(name, asfileobj=False))
    except (OSError, ValueError):
        return None
    return path if path.is_file() else None


def _elevation_maps() -> list[Image.Image]:
    images = []
    for name, key in (("jacksboro_fault_dem.npz", "elevation"), ("topobathy.npz", "topo")):
        path = _sample_path(name)
        if path is None:
            continue
        with np.load(path) as data:
            elevation = _stretch(data[key])
        images.append(Image.fromarray(elevation, mode="L"))
        images.append(Image.fromarray(255 - elevation, mode="L"))
    return images


def _photo_images() -> list[Image.Image]:
    path = _sample_path("grace_hopper.jpg")
    if path is None:
        return []
    with Image.open(path) as opened:
        photo = opened.convert("RGB")
    width, height = photo.size
    crops = [
        photo.crop((left, top, left + width // 2, top + height // 2))
        for left in (0, width // 2)
        for top in (0, height // 2)
    ]
    return [photo, *crops, photo.convert("L"), photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]


def other_mri_image() -> Image.Image | None:
    """Return matplotlib's bundled sagittal head MRI as an 8-bit image, or None if it is missing."""
    path = _sample_path("s1045.ima.gz")
    if path is None:
        return None
    with gzip.open(path) as file:
        # 256 x 256 unsigned 16-bit samples, little endian, as matplotlib's own example reads them.
        pixels = np.frombuffer(file.read(), dtype="<u2").reshape(256, 256)
    return Image.fromarray(_stretch(pixels), mode="L")


def detection_rates(
    classifier: BrainTumorClassifier, threshold: float, *, energy_threshold: float, batch_size: int = 64
) -> dict:
    """Score the non-MRI images and report, per category, how many the detector and the energy baseline flag."""
    categories = {}
    totals = {"count": 0, "detected": 0, "energy_detected": 0}
    for name, images in non_mri_images().items():
        pixels = np.stack([square_grayscale(image, classifier.input_size) for image in images])
        features, logits = pixel_outputs(classifier, pixels, batch_size=batch_size)
        scores = out_of_scope_scores(classifier, features)
        detected = int((scores > threshold).sum())
        energy_detected = int((energy_scores(logits) > energy_threshold).sum())
        categories[name] = {
            "source": NON_MRI_SOURCES[name],
            "count": len(images),
            "detected": detected,
            "detection_rate": detected / len(images),
            "min_score": float(scores.min()),
            "median_score": float(np.median(scores)),
            "energy_baseline_detected": energy_detected,
        }
        totals["count"] += len(images)
        totals["detected"] += detected
        totals["energy_detected"] += energy_detected
    report = {
        "categories": categories,
        "count": totals["count"],
        "detection_rate": totals["detected"] / totals["count"],
        "energy_baseline_detection_rate": totals["energy_detected"] / totals["count"],
    }
    other = other_mri_image()
    if other is not None:
        features, _ = pixel_outputs(classifier, np.stack([square_grayscale(other, classifier.input_size)]))
        score = float(out_of_scope_scores(classifier, features)[0])
        report["other_mri"] = {"source": OTHER_MRI_SOURCE, "score": score, "flagged": score > threshold}
    return report


# Run folder --------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """Return the SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def store_calibration(run_dir: Path, classifier: BrainTumorClassifier, *, temperature: float, ood_threshold: float) -> None:
    """Write the classifier's out-of-scope statistics file and put the fitted values into the run's config.json.

    Besides both arguments, config.json gets the classifier's ``test_time_flip``.
    config.json keeps its other keys and the layout that ``save_pretrained`` writes (sorted keys,
    two-space indent).
    """
    classifier.save_ood_statistics(run_dir)
    config_path = Path(run_dir) / CONFIG_NAME
    config = json.loads(config_path.read_text())
    config["temperature"] = temperature
    config["ood_threshold"] = ood_threshold
    config["test_time_flip"] = classifier.test_time_flip
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def plot_reliability_diagram(
    before: dict, after: dict, path: Path, *, panel_titles: tuple[str, str], title: str
) -> None:
    """Save side-by-side reliability diagrams (accuracy against confidence per bin) before and after scaling.

    ``before`` and ``after`` are tables from ``reliability_bins``.
    """
    figure, axes_pair = plt.subplots(1, 2, figsize=(9, 4.2), dpi=120, sharey=True)
    for axes, table, panel_title in zip(axes_pair, (before, after), panel_titles):
        edges = np.asarray(table["edges"])
        width = edges[1] - edges[0]
        filled = [index for index, count in enumerate(table["counts"]) if count]
        accuracy = [table["accuracy"][index] for index in filled]
        confidence = [table["confidence"][index] for index in filled]
        axes.bar(edges[filled], accuracy, width=width, align="edge", color="tab:blue", alpha=0.8,
                 edgecolor="black", label="accuracy")
        # The hatched bar spans from accuracy to mean confidence, above or below the accuracy bar.
        axes.bar(edges[filled], np.abs(np.subtract(confidence, accuracy)), bottom=np.minimum(confidence, accuracy),
                 width=width, align="edge", facecolor="none", edgecolor="tab:red", hatch="//",
                 label="gap to mean confidence")
        # The number of slices in each bin, above its bars, shows which gaps rest on few slices.
        for index, bar_top in zip(filled, np.maximum(confidence, accuracy)):
            axes.text(edges[index] + width / 2, min(bar_top + 0.01, 0.97), str(table["counts"][index]),
                      ha="center", va="bottom", fontsize=6)
        axes.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel("confidence (top-class probability)")
        axes.set_title(panel_title, fontsize=9)
    axes_pair[0].set_ylabel("accuracy")
    axes_pair[0].legend(loc="upper left", fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)


def calibrate_run(
    run_dir: Path, *, dataset: str | None = None, batch_size: int = 64, test_time_flip: str = "auto"
) -> dict:
    """Choose mirror averaging, fit the temperature and the out-of-scope detector, evaluate on test, write the results.

    ``test_time_flip`` is ``"auto"`` (choose on validation), ``"on"`` or ``"off"``.
    """
    if test_time_flip not in FLIP_MODES:
        raise ValueError(f"Invalid test_time_flip {test_time_flip!r}: use one of {', '.join(FLIP_MODES)}.")
    run_dir = Path(run_dir)
    run = load_run(run_dir, dataset=dataset, test_time_flip=test_time_flip == "on")
    classifier = run.classifier
    flip_choice = {"mode": test_time_flip, "test_time_flip": test_time_flip == "on"}
    if test_time_flip == "auto":
        # Only the validation split is scored both ways. The other splits use the chosen mode.
        single = score_split(run, "validation", batch_size=batch_size)
        classifier.test_time_flip = True
        mirrored = score_split(run, "validation", batch_size=batch_size)
        flip_choice.update(choose_test_time_flip(single, mirrored))
        classifier.test_time_flip = flip_choice["test_time_flip"]
        validation = mirrored if classifier.test_time_flip else single
        logger.info(
            "Validation accuracy %.2f%% single, %.2f%% with mirror averaging: test_time_flip=%s",
            100 * flip_choice["validation"]["single"]["accuracy"],
            100 * flip_choice["validation"]["mirror_average"]["accuracy"],
            flip_choice["test_time_flip"],
        )
    else:
        validation = score_split(run, "validation", batch_size=batch_size)
    train = score_split(run, "train", batch_size=batch_size)
    test = score_split(run, "test", batch_size=batch_size)
    weights_path = run_dir / WEIGHTS_NAME
    weights_before = file_sha256(weights_path)

    # Fit: feature statistics on train, temperature and thresholds on validation.
    temperature = fit_temperature(validation.logits, validation.labels)
    class_means, precision = fit_ood_statistics(train.features, train.labels, len(classifier.label_names))
    classifier.set_ood_statistics(torch.from_numpy(class_means), torch.from_numpy(precision))
    validation_scores = out_of_scope_scores(classifier, validation.features)
    threshold = out_of_scope_threshold(validation_scores)
    energy_threshold = out_of_scope_threshold(energy_scores(validation.logits))

    # Evaluate on test and on non-MRI images.
    before = softmax(test.logits)
    after = softmax(test.logits, temperature)
    before_bins = reliability_bins(before, test.labels)
    after_bins = reliability_bins(after, test.labels)
    test_scores = out_of_scope_scores(classifier, test.features)
    non_mri = detection_rates(classifier, threshold, energy_threshold=energy_threshold, batch_size=batch_size)
    report = {
        "test_time_flip": flip_choice,
        "temperature": temperature,
        "ood_threshold": threshold,
        "ood_score": (
            "squared Mahalanobis distance from the pooled features to the nearest class mean, with the "
            "Ledoit-Wolf covariance of the class-centered training features; scores above ood_threshold "
            f"are out of scope. Statistics: {OOD_STATISTICS_NAME}"
        ),
        "false_alarm_target": FALSE_ALARM_RATE,
        "validation": {
            "num_images": int(len(validation.labels)),
            "nll_before": negative_log_likelihood(validation.logits, validation.labels, 1.0),
            "nll_after": negative_log_likelihood(validation.logits, validation.labels, temperature),
            "false_alarm_rate": float((validation_scores > threshold).mean()),
        },
        "test": {
            "num_images": int(len(test.labels)),
            "accuracy": float((before.argmax(axis=1) == test.labels).mean()),
            "ece_bins": ECE_BINS,
            "ece_before": expected_calibration_error(before, test.labels),
            "ece_after": expected_calibration_error(after, test.labels),
            "nll_before": negative_log_likelihood(test.logits, test.labels, 1.0),
            "nll_after": negative_log_likelihood(test.logits, test.labels, temperature),
            "false_alarm_rate": float((test_scores > threshold).mean()),
            "reliability_before": before_bins,
            "reliability_after": after_bins,
        },
        "non_mri": non_mri,
        "energy_baseline": {
            "score": "-logsumexp(raw logits), thresholded on validation at the same false-alarm target",
            "threshold": energy_threshold,
            "test_false_alarm_rate": float((energy_scores(test.logits) > energy_threshold).mean()),
            "non_mri_detection_rate": non_mri["energy_baseline_detection_rate"],
        },
        "num_train_images": int(len(train.labels)),
        "weights_sha256": weights_before,
        "calibrate_command": f"python -m train.calibrate --run-dir {shlex.quote(str(run_dir))}"
        + ("" if test_time_flip == "auto" else f" --test-time-flip {test_time_flip}"),
    }

    # Write the results; the weights file must not change.
    store_calibration(run_dir, classifier, temperature=temperature, ood_threshold=threshold)
    if file_sha256(weights_path) != weights_before:
        raise RuntimeError(f"{weights_path} changed during calibration. Restore it from version control.")
    (run_dir / CALIBRATION_NAME).write_text(json.dumps(report, indent=2) + "\n")
    plot_reliability_diagram(
        before_bins,
        after_bins,
        run_dir / RELIABILITY_DIAGRAM_NAME,
        panel_titles=(
            f"Before temperature scaling: ECE {report['test']['ece_before']:.4f}",
            f"After, T = {temperature:.3f}: ECE {report['test']['ece_after']:.4f}",
        ),
        title=f"Test split ({len(test.labels)} slices), {ECE_BINS} confidence bins",
    )
    logger.info(
        "Temperature %.4f, test ECE %.4f -> %.4f, out-of-scope threshold %.4f (test false alarms %.2f%%, "
        "non-MRI detection %.1f%%)",
        temperature,
        report["test"]["ece_before"],
        report["test"]["ece_after"],
        threshold,
        100 * report["test"]["false_alarm_rate"],
        100 * report["non_mri"]["detection_rate"],
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.calibrate",
        description=(
            "Fit temperature scaling and an out-of-scope detector on a run's recorded splits, store them in "
            "its config.json and ood_statistics.safetensors, and write calibration.json and "
            "reliability_diagram.png."
        ),
    )
    parser.add_argument("--run-dir", required=True, type=Path, help="Run folder written by python -m train.")
    parser.add_argument(
        "--dataset", default=None, help="Dataset folder or Hub id (default: the source recorded in the manifest)."
    )
    parser.add_argument("--batch-size", type=int, default=64, help="Slices per forward pass.")
    parser.add_argument(
        "--test-time-flip",
        choices=FLIP_MODES,
        default="auto",
        help="Average each slice with its left-right mirror: 'auto' decides on the validation split "
        "(higher accuracy, then lower loss), 'on' and 'off' force it (default: auto).",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = calibrate_run(
            args.run_dir, dataset=args.dataset, batch_size=args.batch_size, test_time_flip=args.test_time_flip
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = {
        "test_time_flip": report["test_time_flip"]["test_time_flip"],
        "temperature": report["temperature"],
        "ood_threshold": report["ood_threshold"],
        "ece_before": report["test"]["ece_before"],
        "ece_after": report["test"]["ece_after"],
        "test_false_alarm_rate": report["test"]["false_alarm_rate"],
        "non_mri_detection_rate": report["non_mri"]["detection_rate"],
        "energy_baseline_non_mri_detection_rate": report["energy_baseline"]["non_mri_detection_rate"],
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
