"""Faithfulness of each Grad-CAM method: whether its map points at the tumor, on a run's recorded test split.

Score a finished run and write ``faithfulness.json`` into its folder with::

    python -m train.faithfulness --run-dir RUN_DIR

Each test slice that has a box in ``tumor_boxes.csv`` is explained for its predicted class, and
each method's map gets three scores, averaged over the slices:

- ``pointing_game``: 1 when the map's maximum lies inside the tumor box, else 0. The map is
  compared with the box at the slice's original size.
- ``energy_pointing``: the share of the map's total value that lies inside the box (the
  energy-based pointing game). A map that is zero everywhere scores 0.
- ``road``: the change in the predicted class's probability after the most relevant pixels of
  the model's input (20%, or the share ``--road-fraction`` sets) are replaced by
  pytorch-grad-cam's ``NoisyLinearImputer`` (ROAD, removing the most relevant pixels first).
  Lower values (larger drops) mean a more faithful map.

Beside the methods, the file has two entries that are not method names, so the gallery's
``order_by_faithfulness`` never looks them up:

- ``chance_baseline``: ``box_area_share``, the mean share of the image area inside the tumor box
  over the scored slices. A map that is constant over the image gets this energy pointing, and
  a map whose maximum lies at a uniformly random pixel gets this pointing game in expectation.
  ``road_random_map``, the mean ROAD change when a uniformly random map chooses the removed
  pixels (the same share as for the methods). A method's ROAD shows faithfulness only by as much
  as it lies below this value.
- ``settings``: the command, the ROAD fraction, the seed and how many test slices there were
  and how many of them had a box.

``brain_tumor_classifier.predictor.Predictor`` orders its gallery by ``energy_pointing`` when the
model folder contains this file.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam.metrics.perturbation_confidence import PerturbationConfidenceMetric
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from tqdm.auto import tqdm

from brain_tumor_classifier import BrainTumorClassifier
from brain_tumor_classifier.explain import (
    CHANCE_BASELINE_KEY,
    DEFAULT_METHODS,
    FAITHFULNESS_NAME,
    available_methods,
    cam_maps_from_capture,
    cam_to_original_geometry,
    capture_activations_and_gradients,
)

from .boxes import BOXES_NAME, Box, box_mask, read_boxes
from .data import MANIFEST_NAME, load_labeled_images, read_manifest_split

logger = logging.getLogger(__name__)

DEFAULT_ROAD_FRACTION = 0.2
SCORE_KEYS = ("pointing_game", "energy_pointing", "road")
# The other entry of faithfulness.json that is not a method, beside CHANCE_BASELINE_KEY.
SETTINGS_KEY = "settings"
# Not a Grad-CAM method name, so it never collides with one in the ROAD batch.
RANDOM_MAP_NAME = "random map"


# The two pointing scores ---------------------------------------------------------------------


def box_area_share(mask: np.ndarray) -> float:
    """Return the share of the image's pixels inside the box mask, which is a uniform map's energy pointing."""
    return float(np.mean(mask, dtype=np.float64))


def pointing_hit(cam: np.ndarray, mask: np.ndarray) -> bool:
    """Return whether the map's maximum lies inside ``mask``.

    NOTE: with several pixels at the maximum, the first in row-major order decides.
    """
    if cam.shape != mask.shape:
        raise ValueError(f"The map {cam.shape} and the box mask {mask.shape} must have the same shape.")
    return bool(mask.flat[int(np.argmax(cam))])


def energy_inside(cam: np.ndarray, mask: np.ndarray) -> float:
    """Return the share of the map's total value inside ``mask``, or 0 for an all-zero map."""
    if cam.shape != mask.shape:
        raise ValueError(f"The map {cam.shape} and the box mask {mask.shape} must have the same shape.")
    total = float(np.sum(cam, dtype=np.float64))
    if total <= 0:
        return 0.0
    return float(np.sum(cam[mask], dtype=np.float64)) / total


# ROAD ----------------------------------------------------------------------------------------


class _RemoveTopFraction:
    """A perturbation for pytorch-grad-cam's ``PerturbationConfidenceMetric``: impute the top pixels.

    pytorch-grad-cam's ``RemoveMostRelevantFirst`` removes the pixels at or above a percentile of
    the map. When more than that share of the map is zero, the percentile is 0 and every pixel is
    removed. Ranking the pixels removes exactly ``fraction`` of them instead. Ties are broken in
    row-major order.
    """

    def __init__(self, fraction: float, imputer: NoisyLinearImputer) -> None:
        self.fraction = fraction
        self.imputer = imputer

    def __call__(self, input_tensor: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
        values = cam.numpy().ravel()
        removed = np.argsort(-values, kind="stable")[: int(round(self.fraction * values.size))]
        keep = np.ones(values.size, dtype=np.float32)
        keep[removed] = 0.0
        return self.imputer(input_tensor, torch.from_numpy(keep.reshape(cam.shape)))


class _ClassProbability:
    """A pytorch-grad-cam target: one class's temperature-scaled softmax probability."""

    def __init__(self, category: int, temperature: float) -> None:
        self.category = category
        self.temperature = temperature

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model_output.float() / self.temperature, dim=-1)[..., self.category]


def road_scores(
    classifier: BrainTumorClassifier,
    input_tensor: torch.Tensor,
    maps: dict[str, np.ndarray],
    target_class: int,
    *,
    fraction: float = DEFAULT_ROAD_FRACTION,
) -> dict[str, float]:
    """Return, per method, the change in ``target_class``'s probability after ROAD removes its top pixels.

    ``maps`` are input-sized maps of ``input_tensor`` (1 x C x H x W). All methods' imputed
    inputs go through the model as one batch.
    """
    names = list(maps)
    batch = input_tensor.repeat(len(names), 1, 1, 1)
    cams = np.stack([maps[name] for name in names]).astype(np.float32)
    targets = [_ClassProbability(target_class, classifier.temperature)] * len(names)
    metric = PerturbationConfidenceMetric(_RemoveTopFraction(fraction, NoisyLinearImputer()))
    changes = metric(batch, cams, targets, classifier.model)
    return {name: float(change) for name, change in zip(names, changes)}


# Scoring a run -------------------------------------------------------------------------------


def spread_rows(rows: Sequence[int], limit: int | None) -> list[int]:
    """Pick ``limit`` rows spread evenly over ``rows``, so that every class folder is sampled."""
    rows = list(rows)
    if limit is None or limit >= len(rows):
        return rows
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}.")
    positions = np.linspace(0, len(rows) - 1, num=limit).round().astype(int)
    return [rows[position] for position in positions]


class ImageScores(NamedTuple):
    """The scores of one slice: per method, and ROAD for a uniformly random map."""

    methods: dict[str, dict[str, float]]
    road_random_map: float


def score_image(
    classifier: BrainTumorClassifier,
    image: Image.Image,
    box: Box,
    *,
    methods: Sequence[str],
    road_fraction: float,
    rng: np.random.Generator,
) -> ImageScores:
    """Score every method's map of the predicted class on one slice, and ROAD for a map drawn from ``rng``."""
    input_tensor = classifier.preprocess([image])
    capture = capture_activations_and_gradients(classifier.model, input_tensor)
    maps = cam_maps_from_capture(capture, classifier.model, methods=methods)
    mask = box_mask(box, image.width, image.height)
    random_map = rng.random(capture.input_tensor.shape[-2:], dtype=np.float32)
    road = road_scores(
        classifier,
        capture.input_tensor,
        {**maps, RANDOM_MAP_NAME: random_map},
        capture.target_class,
        fraction=road_fraction,
    )
    scores = {}
    for name, input_map in maps.items():
        cam = cam_to_original_geometry(input_map, image.size)
        scores[name] = {
            "pointing_game": float(pointing_hit(cam, mask)),
            "energy_pointing": energy_inside(cam, mask),
            "road": road[name],
        }
    return ImageScores(methods=scores, road_random_map=road[RANDOM_MAP_NAME])


def measure_faithfulness(
    run_dir: str | Path,
    *,
    dataset: str | None = None,
    boxes: str | Path | None = None,
    limit: int | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    road_fraction: float = DEFAULT_ROAD_FRACTION,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, dict]:
    """Score each method on the run's recorded test split and return the contents of faithfulness.json.

    The result maps each method to its average scores and adds the ``chance_baseline`` and
    ``settings`` entries (without the command, which ``write_faithfulness`` adds).
    """
    run_dir = Path(run_dir)
    manifest_path = run_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{manifest_path} is missing: {run_dir} is not a run folder written by python -m train."
        )
    if not 0 < road_fraction < 1:
        raise ValueError(f"road_fraction must be in (0, 1), got {road_fraction}.")
    source = dataset or json.loads(manifest_path.read_text())["source"]
    if boxes is None:
        if not Path(source).is_dir():
            raise ValueError(
                f"The dataset {source!r} is not a local folder, so pass --boxes with the path of {BOXES_NAME}."
            )
        boxes = Path(source) / BOXES_NAME
    box_of = read_boxes(boxes)

    classifier = BrainTumorClassifier.from_pretrained(str(run_dir))
    choices = available_methods(classifier.model)
    unavailable = [name for name in methods if name not in choices]
    if unavailable:
        raise ValueError(f"Methods {unavailable} cannot explain this model: choose from {list(choices)}.")
    images = load_labeled_images(source)
    if images.label_names != classifier.label_names:
        raise ValueError(
            f"The dataset's classes {images.label_names} differ from the model's {classifier.label_names}."
        )
    rows = read_manifest_split(manifest_path, images, "test")
    with_box = [row for row in rows if images.file_ids[row] in box_of]
    if len(with_box) < len(rows):
        skipped = len(rows) - len(with_box)
        logger.warning("%d of %d test slices have no box in %s and are skipped", skipped, len(rows), boxes)
    selected = spread_rows(with_box, limit)
    if not selected:
        raise ValueError(
            f"No test slice of {run_dir} has a box in {boxes}: check that its file_name column "
            "matches the dataset's paths."
        )

    # The ROAD imputer adds Gaussian noise, so a fixed seed makes the scores repeatable.
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    totals = {name: dict.fromkeys(SCORE_KEYS, 0.0) for name in methods}
    area_share_total, road_random_total = 0.0, 0.0
    for row in tqdm(selected, desc="Scoring Grad-CAM methods", unit="slice", disable=not progress):
        image = images.dataset[row][images.image_column]
        box = box_of[images.file_ids[row]]
        scores = score_image(classifier, image, box, methods=methods, road_fraction=road_fraction, rng=rng)
        for name, values in scores.methods.items():
            for key, value in values.items():
                totals[name][key] += value
        area_share_total += box_area_share(box_mask(box, image.width, image.height))
        road_random_total += scores.road_random_map
    count = len(selected)
    result: dict[str, dict] = {
        name: {**{key: round(value / count, 4) for key, value in sums.items()}, "num_images": count}
        for name, sums in totals.items()
    }
    result[CHANCE_BASELINE_KEY] = {
        "box_area_share": round(area_share_total / count, 4),
        "road_random_map": round(road_random_total / count, 4),
        "num_images": count,
    }
    result[SETTINGS_KEY] = {
        "road_fraction": road_fraction,
        "seed": seed,
        "test_slices": len(rows),
        "test_slices_with_box": len(with_box),
    }
    return result


def method_scores(scores: dict[str, dict]) -> dict[str, dict]:
    """Return only the per-method entries of the contents of faithfulness.json."""
    return {name: values for name, values in scores.items() if name not in (CHANCE_BASELINE_KEY, SETTINGS_KEY)}


def write_faithfulness(run_dir: str | Path, scores: dict[str, dict], *, command: str | None = None) -> Path:
    """Write the scores as ``faithfulness.json`` into the run folder and return its path.

    ``command``, when given, is stored as ``settings.command``.
    """
    if command is not None:
        scores = {**scores, SETTINGS_KEY: {**scores.get(SETTINGS_KEY, {}), "command": command}}
    path = Path(run_dir) / FAITHFULNESS_NAME
    path.write_text(json.dumps(scores, indent=2) + "\n")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.faithfulness",
        description=(
            "Score each Grad-CAM method against the tumor boxes of a run's test split and write faithfulness.json."
        ),
    )
    parser.add_argument("--run-dir", required=True, type=Path, help="Run folder written by python -m train.")
    parser.add_argument(
        "--dataset", default=None, help="Dataset folder or Hub id (default: the source recorded in the manifest)."
    )
    parser.add_argument(
        "--boxes", default=None, type=Path, help=f"CSV of tumor boxes (default: {BOXES_NAME} in the dataset folder)."
    )
    parser.add_argument(
        "--limit", default=None, type=int, help="Score at most this many test slices, spread evenly over the split."
    )
    parser.add_argument(
        "--methods", nargs="+", default=list(DEFAULT_METHODS), help="Methods to score (default: the gallery's methods)."
    )
    parser.add_argument(
        "--road-fraction",
        default=DEFAULT_ROAD_FRACTION,
        type=float,
        help="Share of the input pixels, most relevant first, that ROAD replaces (default: %(default)s).",
    )
    parser.add_argument("--seed", default=0, type=int, help="Seed of the ROAD imputation noise and of the random map.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        scores = measure_faithfulness(
            args.run_dir,
            dataset=args.dataset,
            boxes=args.boxes,
            limit=args.limit,
            methods=args.methods,
            road_fraction=args.road_fraction,
            seed=args.seed,
            progress=True,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    arguments = sys.argv[1:] if argv is None else argv
    path = write_faithfulness(
        args.run_dir, scores, command=shlex.join(["python", "-m", "train.faithfulness", *arguments])
    )
    print(f"{'method':20s} {'pointing':>9s} {'energy':>7s} {'road':>7s}")
    for name, values in sorted(method_scores(scores).items(), key=lambda item: -item[1]["energy_pointing"]):
        print(f"{name:20s} {values['pointing_game']:9.1%} {values['energy_pointing']:7.1%} {values['road']:+7.3f}")
    chance = scores[CHANCE_BASELINE_KEY]
    share, road = chance["box_area_share"], chance["road_random_map"]
    print(f"{'chance (random map)':20s} {share:9.1%} {share:7.1%} {road:+7.3f}")
    print(f"Wrote {path} ({chance['num_images']} slices)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
