"""Faithfulness scores: pointing math on known boxes, the command on a tiny run, and the gallery order."""

import json
import logging
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import model_card.render
import train.report
from brain_tumor_classifier.explain import DEFAULT_METHODS, FAITHFULNESS_NAME, order_by_faithfulness, read_faithfulness
from brain_tumor_classifier.predictor import Predictor
from train.__main__ import main as train_main
from train.boxes import Box, box_mask, read_boxes
from train.faithfulness import (
    CHANCE_BASELINE_KEY,
    SETTINGS_KEY,
    _RemoveTopFraction,
    box_area_share,
    energy_inside,
    main as faithfulness_main,
    method_scores,
    pointing_hit,
    spread_rows,
)
from train.report import faithfulness_lines, plot_faithfulness

from conftest import BLOB_SLICE_HEIGHT, BLOB_SLICE_WIDTH, write_boxed_imagefolder

# pytorch-grad-cam 1.5.7's NoisyLinearImputer calls np.argwhere on a torch tensor, which numpy 2
# reports as deprecated once per imputed image.
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")

CLASSES = ("glioma", "meningioma", "pituitary")
SLICE_WIDTH, SLICE_HEIGHT = BLOB_SLICE_WIDTH, BLOB_SLICE_HEIGHT


@pytest.fixture(scope="module")
def boxed_imagefolder(tmp_path_factory):
    """Write 10 non-square slices per class, each with a bright 10 x 10 blob, and a box CSV around the blobs."""
    root = tmp_path_factory.mktemp("boxed-imagefolder")
    write_boxed_imagefolder(root, seed=0)
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


def test_box_area_share_known_box():
    # On a 40 x 20 image, 6 rows and 20 columns lie inside the box.
    mask = box_mask(Box(0.5, 0.25, 0.5, 0.3), width=40, height=20)

    assert box_area_share(mask) == pytest.approx(120 / 800)


def test_uniform_map_scores_box_area_share():
    mask = box_mask(Box(0.3, 0.6, 0.2, 0.5), width=50, height=30)

    assert energy_inside(np.ones((30, 50), np.float32), mask) == pytest.approx(box_area_share(mask))


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

    assert list(scores) == [*DEFAULT_METHODS, CHANCE_BASELINE_KEY, SETTINGS_KEY]
    for method, values in method_scores(scores).items():
        assert set(values) == {"pointing_game", "energy_pointing", "road", "num_images"}, method
        assert values["num_images"] == 3, method
        assert 0.0 <= values["pointing_game"] <= 1.0, method
        assert 0.0 <= values["energy_pointing"] <= 1.0, method
        assert -1.0 <= values["road"] <= 1.0, method


def test_command_writes_chance_and_settings(scored_run):
    scores = json.loads((scored_run / FAITHFULNESS_NAME).read_text())
    manifest = json.loads((scored_run / "split_manifest.json").read_text())

    # Every generated box is 10 x 10 px on a 48 x 40 slice.
    chance = scores[CHANCE_BASELINE_KEY]
    assert chance["box_area_share"] == round(100 / (48 * 40), 4)
    assert chance["num_images"] == 3
    assert -1.0 <= chance["road_random_map"] <= 1.0
    settings = scores[SETTINGS_KEY]
    assert settings["command"] == f"python -m train.faithfulness --run-dir {scored_run} --limit 3"
    assert settings["road_fraction"] == 0.2
    assert settings["seed"] == 0
    assert settings["test_slices"] == len(manifest["splits"]["test"])
    assert settings["test_slices_with_box"] == settings["test_slices"]


def test_chance_baseline_averages_box_shares(trained_run, tmp_path):
    # One box size per class: 10 x 10 px, 20 x 10 px and the whole 48 x 40 px slice.
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns(FAITHFULNESS_NAME))
    share_of_class = {"glioma": 100 / 1920, "meningioma": 200 / 1920, "pituitary": 1.0}
    box_of_class = {
        "glioma": (12 / 48, 12 / 40, 10 / 48, 10 / 40),
        "meningioma": (36 / 48, 12 / 40, 20 / 48, 10 / 40),
        "pituitary": (0.5, 0.5, 1.0, 1.0),
    }
    test_entries = json.loads((run_dir / "split_manifest.json").read_text())["splits"]["test"]
    lines = ["file_name,x_center,y_center,width,height"]
    for label, box in box_of_class.items():
        lines += [f"{label}/{label}_{index}.png," + ",".join(map(str, box)) for index in range(10)]
    (tmp_path / "boxes.csv").write_text("\n".join(lines) + "\n")

    exit_code = faithfulness_main(["--run-dir", str(run_dir), "--boxes", str(tmp_path / "boxes.csv")])

    assert exit_code == 0
    chance = json.loads((run_dir / FAITHFULNESS_NAME).read_text())[CHANCE_BASELINE_KEY]
    expected = np.mean([share_of_class[entry["label"]] for entry in test_entries])
    assert chance["num_images"] == len(test_entries)
    assert chance["box_area_share"] == round(expected, 4)


def test_command_reports_missing_boxes(trained_run, tmp_path, capsys):
    exit_code = faithfulness_main(["--run-dir", str(trained_run), "--boxes", str(tmp_path / "none.csv")])

    assert exit_code == 2
    assert "none.csv was not found" in capsys.readouterr().err


# Gallery order ---------------------------------------------------------------------------------------


def test_reader_orders_methods_only(scored_run):
    scores = read_faithfulness(scored_run)

    order, notes = order_by_faithfulness(DEFAULT_METHODS, scores)

    assert sorted(order) == sorted(DEFAULT_METHODS)
    assert set(notes) == set(DEFAULT_METHODS)


def test_readers_use_written_keys():
    # The report and the card name the non-method entries without importing this module.
    assert (train.report.CHANCE_BASELINE_KEY, train.report.FAITHFULNESS_SETTINGS_KEY) == (CHANCE_BASELINE_KEY, SETTINGS_KEY)
    assert (model_card.render.CHANCE_BASELINE_KEY, model_card.render.FAITHFULNESS_SETTINGS_KEY) == (
        CHANCE_BASELINE_KEY,
        SETTINGS_KEY,
    )


# Report section --------------------------------------------------------------------------------------


def test_report_section_equals_file(scored_run):
    scores = json.loads((scored_run / FAITHFULNESS_NAME).read_text())
    run = SimpleNamespace(model="braincancernet", split="random", run_dir=scored_run, faithfulness=scores)
    unscored = SimpleNamespace(model="resnet50", split="group", run_dir=scored_run, faithfulness=None)

    text = "\n".join(faithfulness_lines([run, unscored]))

    assert "## Grad-CAM faithfulness" in text
    assert "### braincancernet, random split" in text
    assert f"written by `{scores[SETTINGS_KEY]['command']}`" in text
    assert f"3 of {scores[SETTINGS_KEY]['test_slices']} test slices" in text
    chance = scores[CHANCE_BASELINE_KEY]["box_area_share"]
    for method, values in method_scores(scores).items():
        row = (
            f"| {method} | {100 * values['pointing_game']:.2f}% | {100 * values['energy_pointing']:.2f}% "
            f"| {values['energy_pointing'] / chance:.2f}x | {values['road']:+.4f} |"
        )
        assert row in text, method
    road = scores[CHANCE_BASELINE_KEY]["road_random_map"]
    assert (
        f"| chance (box area share, random map) | {100 * chance:.2f}% | {100 * chance:.2f}% | 1.00x | {road:+.4f} |"
        in text
    )
    assert "Not measured (no `faithfulness.json` in the run folder): resnet50 (group)." in text


def test_report_rows_follow_energy_pointing(scored_run):
    scores = json.loads((scored_run / FAITHFULNESS_NAME).read_text())
    run = SimpleNamespace(model="braincancernet", split="random", run_dir=scored_run, faithfulness=scores)

    table = [line for line in faithfulness_lines([run]) if line.startswith("| ")]
    rows = table[2:]  # after the header and the separator

    names = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    expected = sorted(method_scores(scores), key=lambda method: -scores[method]["energy_pointing"])
    assert names == [*expected, "chance (box area share, random map)"]


def test_report_plot_written(scored_run, tmp_path):
    scores = json.loads((scored_run / FAITHFULNESS_NAME).read_text())
    runs = [
        SimpleNamespace(model=model, split="random", run_dir=scored_run, faithfulness=scores)
        for model in ("braincancernet", "resnet50")
    ]

    assert plot_faithfulness(runs, tmp_path / "faithfulness.png")
    assert Image.open(tmp_path / "faithfulness.png").size[0] > 0
    assert not plot_faithfulness([SimpleNamespace(faithfulness=None)], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


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
