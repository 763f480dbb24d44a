"""Faithfulness scores: pointing math on known boxes, the command on a tiny run, and the gallery order."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from brain_tumor_classifier.explain import DEFAULT_METHODS, FAITHFULNESS_NAME
from brain_tumor_classifier.predictor import Predictor
from train.__main__ import main as train_main
from train.faithfulness import (
    Box,
    _RemoveTopFraction,
    box_mask,
    energy_inside,
    main as faithfulness_main,
    pointing_hit,
    read_boxes,
    spread_rows,
)

from conftest import BLOB_CENTERS, BLOB_SLICE_HEIGHT, BLOB_SLICE_WIDTH, write_blob_imagefolder

# pytorch-grad-cam 1.5.7's NoisyLinearImputer calls np.argwhere on a torch tensor, which numpy 2
# reports as deprecated once per imputed image.
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")

CLASSES = ("glioma", "meningioma", "pituitary")
SLICE_WIDTH, SLICE_HEIGHT = BLOB_SLICE_WIDTH, BLOB_SLICE_HEIGHT


@pytest.fixture(scope="module")
def boxed_imagefolder(tmp_path_factory):
    """Write 10 non-square slices per class, each with a bright 10 x 10 blob, and a box CSV around the blobs."""
    root = tmp_path_factory.mktemp("boxed-imagefolder")
    lines = ["file_name,x_center,y_center,width,height"]
    for file_name in write_blob_imagefolder(root, seed=0):
        x, y = BLOB_CENTERS[file_name.split("/")[0]]
        box = (x / SLICE_WIDTH, y / SLICE_HEIGHT, 10 / SLICE_WIDTH, 10 / SLICE_HEIGHT)
        lines.append(f"{file_name}," + ",".join(str(value) for value in box))
    (root / "tumor_boxes.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def trained_run(boxed_imagefolder, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    exit_code = train_main(
        ["--dataset", str(boxed_imagefolder), "--output-dir", str(run_dir), "--epochs", "1",
         "--image-size", "32", "--batch-size", "8", "--eval-batch-size", "8"]
    )
    assert exit_code == 0, "training the tiny run failed"
    return run_dir


@pytest.fixture(scope="module")
def scored_run(trained_run):
    exit_code = faithfulness_main(["--run-dir", str(trained_run), "--limit", "3"])
    assert exit_code == 0, "python -m train.faithfulness failed on the tiny run"
    return trained_run


# Pointing math ---------------------------------------------------------------------------------


def test_box_mask_covers_pixel_centers_inside():
    # On a 40 x 20 image, x spans [10, 30] px and y spans [2, 8] px.
    mask = box_mask(Box(x_center=0.5, y_center=0.25, width=0.5, height=0.3), width=40, height=20)

    assert mask.shape == (20, 40)
    rows, columns = np.nonzero(mask)
    assert (rows.min(), rows.max()) == (2, 7)
    assert (columns.min(), columns.max()) == (10, 29)
    assert mask.sum() == 6 * 20


def test_pointing_hit_inside_and_outside():
    mask = box_mask(Box(0.5, 0.25, 0.5, 0.3), width=40, height=20)
    cam = np.zeros((20, 40), np.float32)

    cam[5, 15] = 1.0
    assert pointing_hit(cam, mask)

    cam[15, 35] = 2.0
    assert not pointing_hit(cam, mask)


def test_energy_inside_known_share():
    mask = box_mask(Box(0.5, 0.25, 0.5, 0.3), width=40, height=20)
    cam = np.where(mask, 1.0, 0.5).astype(np.float32)

    # 120 pixels of 1.0 inside, 680 pixels of 0.5 outside.
    assert energy_inside(cam, mask) == pytest.approx(120 / (120 + 340))


def test_energy_of_zero_map_is_zero():
    mask = box_mask(Box(0.5, 0.5, 0.2, 0.2), width=10, height=10)

    assert energy_inside(np.zeros((10, 10), np.float32), mask) == 0.0


def test_pointing_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        pointing_hit(np.zeros((4, 5)), np.zeros((5, 4), bool))


def test_road_removes_exact_share_of_sparse_map():
    # A map that is zero on 95% of its pixels: a percentile threshold would remove all of them.
    cam = np.zeros((10, 10), np.float32)
    cam.flat[:5] = np.linspace(1.0, 0.2, 5)
    perturbation = _RemoveTopFraction(0.2, imputer=lambda image, keep: keep)

    keep = perturbation(torch.zeros(1, 10, 10), torch.from_numpy(cam)).numpy()

    assert keep.shape == (10, 10)
    assert int((keep == 0).sum()) == 20
    assert (keep.flat[:5] == 0).all(), "the five nonzero pixels must be removed first"


def test_read_boxes_rejects_missing_column(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("file_name,x_center,y_center,width\na.png,0.5,0.5,0.1\n")

    with pytest.raises(ValueError, match=r"no column \['height'\]"):
        read_boxes(path)


def test_spread_rows_samples_whole_split():
    assert spread_rows(range(10), 3) == [0, 4, 9]
    assert spread_rows([5, 6], None) == [5, 6]


# The command on a tiny run ------------------------------------------------------------------------


def test_command_writes_scores_per_method(scored_run):
    scores = json.loads((scored_run / FAITHFULNESS_NAME).read_text())

    assert list(scores) == list(DEFAULT_METHODS)
    for method, values in scores.items():
        assert set(values) == {"pointing_game", "energy_pointing", "road", "num_images"}, method
        assert values["num_images"] == 3, method
        assert 0.0 <= values["pointing_game"] <= 1.0, method
        assert 0.0 <= values["energy_pointing"] <= 1.0, method
        assert -1.0 <= values["road"] <= 1.0, method


def test_command_reports_missing_boxes(trained_run, tmp_path, capsys):
    exit_code = faithfulness_main(["--run-dir", str(trained_run), "--boxes", str(tmp_path / "none.csv")])

    assert exit_code == 2
    assert "none.csv was not found" in capsys.readouterr().err


# Gallery order ---------------------------------------------------------------------------------------


def test_gallery_follows_measured_order(scored_run, slice_image):
    scores = json.loads((scored_run / FAITHFULNESS_NAME).read_text())
    expected = sorted(DEFAULT_METHODS, key=lambda method: -scores[method]["energy_pointing"])

    gallery = Predictor.from_pretrained(scored_run).predict(slice_image).gallery

    assert [result.method for result in gallery] == expected


def test_gallery_order_and_captions_from_file(trained_run, tmp_path, slice_image):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((trained_run / name).read_bytes())
    written = {"GradCAM": 0.25, "EigenCAM": 0.9, "LayerCAM": 0.5}
    (folder / FAITHFULNESS_NAME).write_text(json.dumps({m: {"energy_pointing": v} for m, v in written.items()}))

    gallery = Predictor.from_pretrained(folder).predict(slice_image).gallery

    methods = [result.method for result in gallery]
    assert methods[:3] == ["EigenCAM", "LayerCAM", "GradCAM"]
    assert methods[3:] == [method for method in DEFAULT_METHODS if method not in written]
    assert gallery[0].caption.endswith("· energy pointing 90%")
    assert "pointing" not in gallery[3].caption


def test_damaged_file_keeps_default_order(trained_run, tmp_path, slice_image, caplog):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((trained_run / name).read_bytes())
    (folder / FAITHFULNESS_NAME).write_text("[1, 2")

    with caplog.at_level(logging.WARNING):
        predictor = Predictor.from_pretrained(folder)

    assert predictor.methods == DEFAULT_METHODS
    assert "Ignoring" in caplog.text


def test_predictor_explains_requested_class(trained_run, slice_image):
    prediction = Predictor.from_pretrained(trained_run).predict(slice_image, target_class="pituitary")

    assert {result.label for result in prediction.gallery} == {"pituitary"}
    with pytest.raises(ValueError, match=r"Unknown target_class 'astrocytoma'"):
        Predictor.from_pretrained(trained_run).predict(slice_image, target_class="astrocytoma")
