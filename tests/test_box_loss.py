"""Training with tumor boxes as an auxiliary target: masks, their augmentation, and the run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.torch
import torch

from train.__main__ import main as train_main
from train.augment import augment_batch
from train.boxes import Box, read_boxes, square_box_mask
from train.config import TrainConfig, check_augmentation

from conftest import write_boxed_imagefolder


@pytest.fixture(scope="module")
def boxed_folder(tmp_path_factory):
    """Ten 48 x 40 slices per class with a bright blob, and tumor_boxes.csv around the blobs."""
    root = tmp_path_factory.mktemp("boxed")
    write_boxed_imagefolder(root, seed=1)
    return root


def test_square_box_mask_follows_the_padding():
    # A 48 x 40 slice is padded by 4 rows above and below to 48 x 48.
    mask = square_box_mask(Box(x_center=0.5, y_center=0.5, width=0.25, height=0.25), 48, 40, size=48)
    rows, columns = np.nonzero(mask)
    assert (columns.min(), columns.max()) == (18, 29)
    assert (rows.min(), rows.max()) == (19, 28)


def test_augmented_mask_follows_slice():
    pixels = torch.zeros(4, 1, 32, 32, dtype=torch.uint8)
    pixels[:, :, 4:12, 20:28] = 200
    masks = (pixels > 0).to(torch.uint8) * 255
    generator = torch.Generator().manual_seed(0)
    moved, moved_masks = augment_batch(
        pixels, masks=masks, max_rotation_degrees=30, intensity_jitter=0.5, generator=generator
    )
    assert moved_masks.shape == masks.shape
    # No contrast or brightness change: interpolation keeps the values within [0, 255].
    assert float(moved_masks.max()) <= 255.01
    assert float(moved_masks.min()) >= -0.01
    # The blob's brightest pixels lie inside the moved box.
    for image, mask in zip(moved, moved_masks):
        assert mask[image >= image.max() - 1e-3].min() > 127


def test_masks_keep_random_stream():
    pixels = torch.randint(0, 255, (3, 1, 16, 16), dtype=torch.uint8)
    plain = augment_batch(pixels, generator=torch.Generator().manual_seed(5))
    with_masks, _ = augment_batch(pixels, masks=torch.zeros_like(pixels), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(plain, with_masks)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"box_loss_weight": -1.0}, "Invalid --box-loss-weight -1"),
        ({"box_loss_weight": 1.0, "mixup_alpha": 0.2}, "cannot be combined with mixup"),
    ],
)
def test_config_rejects_bad_box_options(options, message):
    with pytest.raises(ValueError, match=message):
        check_augmentation(TrainConfig(**options))


@pytest.mark.parametrize("model", ["braincancernet", "resnet50"])
def test_box_loss_run_exports_plain_model(boxed_folder, tmp_path, model):
    run_dir = tmp_path / "run"
    exit_code = train_main(
        # At 64 px the last feature map has 2 x 2 cells, so the box loss has cells to choose from.
        ["--model", model, "--dataset", str(boxed_folder), "--output-dir", str(run_dir), "--epochs", "2",
         "--image-size", "64", "--batch-size", "8", "--eval-batch-size", "8", "--box-loss-weight", "1.0"]
    )
    assert exit_code == 0
    epochs = json.loads((run_dir / "history.json").read_text())["epochs"]
    assert all(record["train_box_loss"] > 0 for record in epochs)
    weights = safetensors.torch.load_file(str(run_dir / "model.safetensors"))
    assert not any("conv.weight" == name or name.startswith("box") for name in weights)
    recorded = json.loads((run_dir / "train_config.json").read_text())
    assert recorded["box_loss_weight"] == 1.0
    # The file actually read is recorded, not the empty default that stands for it.
    assert recorded["boxes"] == str(boxed_folder / "tumor_boxes.csv")


def test_box_loss_run_names_missing_csv(boxed_folder, tmp_path, capsys):
    exit_code = train_main(
        ["--dataset", str(boxed_folder), "--output-dir", str(tmp_path / "run"), "--epochs", "1", "--image-size", "32",
         "--batch-size", "8", "--box-loss-weight", "1.0", "--boxes", str(tmp_path / "none.csv")]
    )
    assert exit_code != 0
    error = capsys.readouterr().err
    assert "The --boxes file" in error
    assert "none.csv was not found" in error
    # The run stopped before writing anything.
    assert not (tmp_path / "run").exists()


def test_box_loss_run_rejects_bad_csv_first(boxed_folder, tmp_path, capsys):
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("file_name,x_center,y_center,width,height\nglioma/glioma_0.png,1.5,0.5,0.2,0.2\n")
    exit_code = train_main(
        ["--dataset", str(boxed_folder), "--output-dir", str(tmp_path / "run"), "--epochs", "1", "--image-size", "32",
         "--batch-size", "8", "--box-loss-weight", "1.0", "--boxes", str(boxes)]
    )
    assert exit_code != 0
    assert "line 2: invalid box" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_boxes_without_box_loss_rejected():
    with pytest.raises(ValueError, match="is read only for the box loss: add --box-loss-weight"):
        check_augmentation(TrainConfig(boxes="boxes.csv"))


def test_single_cell_box_loss_warns(boxed_folder, tmp_path, caplog):
    # At 32 px the last feature map is 1 x 1, where a softmax over cells is always 1.
    exit_code = train_main(
        ["--dataset", str(boxed_folder), "--output-dir", str(tmp_path / "run"), "--epochs", "1", "--image-size", "32",
         "--batch-size", "8", "--eval-batch-size", "8", "--box-loss-weight", "1.0"]
    )
    assert exit_code == 0
    assert caplog.text.count("The last feature map has a single cell") == 1


def test_box_loss_run_names_missing_dataset_csv(tmp_path, capsys):
    folder = tmp_path / "data"
    write_boxed_imagefolder(folder, seed=2)
    (folder / "tumor_boxes.csv").unlink()
    exit_code = train_main(
        ["--dataset", str(folder), "--output-dir", str(tmp_path / "run"), "--epochs", "1", "--image-size", "32",
         "--batch-size", "8", "--box-loss-weight", "1.0"]
    )
    assert exit_code != 0
    error = capsys.readouterr().err
    assert f"{folder / 'tumor_boxes.csv'} was not found" in error
    assert "pass --boxes" in error


@pytest.mark.parametrize("row", ["glioma/1.png,1.5,0.3,0.2,0.2", "glioma/1.png,0.5,0.5,0.0,0.2"])
def test_read_boxes_rejects_out_of_range(tmp_path, row):
    path = tmp_path / "boxes.csv"
    path.write_text("file_name,x_center,y_center,width,height\n" + row + "\n")

    with pytest.raises(ValueError, match="line 2: invalid box"):
        read_boxes(path)
