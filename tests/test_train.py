"""Training end to end on a tiny generated imagefolder, through the real datasets + Accelerate path."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image

from brain_tumor_classifier import BrainTumorClassifier
from train import compare, hardware, training
from train.compare import matches_recipe, recipe_config
from train.hardware import cpu_has_native_bf16 as real_cpu_has_native_bf16
from train.__main__ import main as train_main
from train.data import load_labeled_images, read_manifest_split, stratified_split
from train.evaluate import main as evaluate_main

from conftest import write_blob_imagefolder

CLASSES = ("glioma", "meningioma", "pituitary")


@pytest.fixture(scope="module")
def tiny_imagefolder(tmp_path_factory):
    """Write 10 generated slices per class, each class with a bright square in its own place."""
    root = tmp_path_factory.mktemp("imagefolder")
    write_blob_imagefolder(root, seed=0)
    return root


@pytest.fixture(scope="module")
def trained_run(tiny_imagefolder, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    exit_code = train_main(
        ["--dataset", str(tiny_imagefolder), "--output-dir", str(run_dir), "--epochs", "1",
         "--image-size", "32", "--batch-size", "8", "--eval-batch-size", "8"]
    )
    assert exit_code == 0
    return run_dir


def test_run_folder_contains_export_and_reports(trained_run):
    for name in ("model.safetensors", "config.json", "README.md", "metrics.json", "confusion_matrix.png",
                 "confusion_matrix.json", "training_curves.png", "history.json", "train_config.json",
                 "split_manifest.json"):
        assert (trained_run / name).is_file(), f"{name} missing from the run folder"


def test_history_records_resolved_precision(trained_run):
    history = json.loads((trained_run / "history.json").read_text())

    # conftest makes --mixed-precision auto resolve to float32.
    assert history["mixed_precision"] == "no"
    assert history["hardware"].endswith("mixed precision no")


def test_run_folder_loads_with_from_pretrained(trained_run):
    model = BrainTumorClassifier.from_pretrained(str(trained_run))
    probabilities = model.predict_proba([Image.new("L", (50, 40), 10)])

    assert model.label_names == list(CLASSES)
    assert probabilities.shape == (1, 3)
    assert abs(float(probabilities.sum()) - 1.0) < 1e-5


def test_manifest_splits_are_disjoint_and_complete(trained_run):
    manifest = json.loads((trained_run / "split_manifest.json").read_text())
    parts = {name: {entry["file"] for entry in entries} for name, entries in manifest["splits"].items()}

    assert set(parts) == {"train", "validation", "test"}
    assert not parts["train"] & parts["test"]
    assert not parts["train"] & parts["validation"]
    assert not parts["validation"] & parts["test"]
    assert sum(len(files) for files in parts.values()) == 30


def test_evaluate_command_reproduces_test_metrics(trained_run, tiny_imagefolder, capsys):
    recorded = json.loads((trained_run / "metrics.json").read_text())
    exit_code = evaluate_main(["--run-dir", str(trained_run)])
    printed = json.loads(capsys.readouterr().out)

    assert exit_code == 0
    assert printed["accuracy"] == recorded["accuracy"]
    assert printed["matches_recorded_accuracy"] is True
    assert printed["num_images"] == recorded["num_images"]
    # The card names the CPU and states whether the timing includes the mirror pass.
    assert recorded["inference"]["cpu"]
    assert recorded["inference"]["test_time_flip"] is False


def test_resume_continues_from_last_checkpoint(trained_run, tiny_imagefolder):
    exit_code = train_main(
        ["--dataset", str(tiny_imagefolder), "--output-dir", str(trained_run), "--epochs", "2",
         "--image-size", "32", "--batch-size", "8", "--eval-batch-size", "8", "--resume"]
    )
    history = json.loads((trained_run / "history.json").read_text())

    assert exit_code == 0
    assert [entry["epoch"] for entry in history["epochs"]] == [1, 2]


def test_resume_records_precision_change(trained_run, tiny_imagefolder, tmp_path, caplog, fresh_accelerator_state):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    first_epochs = len(json.loads((run / "history.json").read_text())["epochs"])

    with caplog.at_level(logging.WARNING, logger="train.training"):
        exit_code = train_main(
            ["--dataset", str(tiny_imagefolder), "--output-dir", str(run), "--epochs", str(first_epochs + 1),
             "--image-size", "32", "--batch-size", "8", "--eval-batch-size", "8", "--resume",
             "--mixed-precision", "bf16"]
        )
    epochs = json.loads((run / "history.json").read_text())["epochs"]

    assert exit_code == 0
    assert {entry["mixed_precision"] for entry in epochs[:-1]} == {"no"}
    assert epochs[-1]["mixed_precision"] == "bf16"
    assert "Resuming in mixed precision bf16 after epochs trained in no" in caplog.text


def test_stratified_split_is_reproducible_and_balanced():
    labels = np.repeat([0, 1, 2], [100, 50, 70])
    first = stratified_split(labels, seed=3)
    second = stratified_split(labels, seed=3)

    assert first == second
    assert len(first["test"]) == 33
    assert np.bincount(labels[first["test"]]).tolist() == [15, 8, 10]


def test_manifest_rejects_a_different_dataset(trained_run, tmp_path):
    other = tmp_path / "other"
    for name in CLASSES:
        (other / name).mkdir(parents=True)
        Image.new("L", (8, 8)).save(other / name / "unrelated.png")

    with pytest.raises(ValueError, match="files missing"):
        read_manifest_split(trained_run / "split_manifest.json", load_labeled_images(str(other)), "test")


def test_unknown_model_is_rejected_with_choices(tiny_imagefolder, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_main(["--model", "vgg", "--dataset", str(tiny_imagefolder), "--output-dir", str(tmp_path)])

    assert "braincancernet" in capsys.readouterr().err


def test_mixup_and_cutmix_train_with_soft_targets(tiny_imagefolder, tmp_path):
    exit_code = train_main(
        ["--dataset", str(tiny_imagefolder), "--output-dir", str(tmp_path), "--epochs", "1",
         "--image-size", "32", "--batch-size", "8", "--eval-batch-size", "8",
         "--mixup-alpha", "0.2", "--cutmix-alpha", "1.0", "--mix-prob", "1.0"]
    )
    history = json.loads((tmp_path / "history.json").read_text())
    recorded = json.loads((tmp_path / "train_config.json").read_text())

    assert exit_code == 0
    assert np.isfinite(history["epochs"][0]["train_loss"])
    assert (recorded["mixup_alpha"], recorded["cutmix_alpha"]) == (0.2, 1.0)


def test_augmentation_options_reach_batches(tiny_imagefolder, tmp_path, monkeypatch):
    seen = []
    original = training.augment_batch

    def recording_augment(pixels, **options):
        seen.append(options)
        return original(pixels, **options)

    monkeypatch.setattr(training, "augment_batch", recording_augment)
    exit_code = train_main(
        ["--dataset", str(tiny_imagefolder), "--output-dir", str(tmp_path), "--epochs", "1",
         "--image-size", "32", "--batch-size", "8", "--eval-batch-size", "8",
         "--rotation-degrees", "25", "--scale-jitter", "0.2", "--translation", "0.1", "--intensity-jitter", "0.2"]
    )

    assert exit_code == 0
    assert seen and all(
        options == {"max_rotation_degrees": 25.0, "scale_range": (0.8, 1.2), "max_translation": 0.1,
                    "intensity_jitter": 0.2}
        for options in seen
    )
    assert json.loads((tmp_path / "train_config.json").read_text())["rotation_degrees"] == 25.0


@pytest.mark.parametrize("flag, value", [("--scale-jitter", "1.5"), ("--rotation-degrees", "-5")])
def test_augmentation_out_of_range_is_rejected(tiny_imagefolder, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit):
        train_main(["--dataset", str(tiny_imagefolder), "--output-dir", str(tmp_path), flag, value])

    error = capsys.readouterr().err
    assert f"Invalid {flag} {value}" in error
    assert "use a value between" in error


@pytest.fixture
def fresh_accelerator_state():
    """Forget Accelerate's process-wide state, which keeps the first run's mixed precision."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_run_scores_test_in_float32(tiny_imagefolder, tmp_path, monkeypatch, fresh_accelerator_state):
    # The app and train.evaluate run the export in float32, so the recorded test metrics must too.
    conv_output_dtypes = []
    score = training.predict_pixels

    def recording_score(classifier, pixels, **options):
        first_conv = next(module for module in classifier.modules() if isinstance(module, torch.nn.Conv2d))
        hook = first_conv.register_forward_hook(lambda module, inputs, output: conv_output_dtypes.append(output.dtype))
        try:
            return score(classifier, pixels, **options)
        finally:
            hook.remove()

    monkeypatch.setattr(training, "predict_pixels", recording_score)
    exit_code = train_main(
        ["--dataset", str(tiny_imagefolder), "--output-dir", str(tmp_path), "--epochs", "1",
         "--image-size", "32", "--batch-size", "8", "--eval-batch-size", "8", "--mixed-precision", "bf16"]
    )

    assert exit_code == 0
    assert conv_output_dtypes
    assert set(conv_output_dtypes) == {torch.float32}


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "no")])
def test_auto_precision_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
    assert hardware.resolve_mixed_precision("auto", torch.device("cpu")) == expected
    assert hardware.resolve_mixed_precision("no", torch.device("cpu")) == "no"


def test_emulated_bf16_request_warns(monkeypatch, caplog):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="train.hardware"):
        assert hardware.resolve_mixed_precision("bf16", torch.device("cpu")) == "bf16"
    assert "--mixed-precision auto or no" in caplog.text


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [(True, False, True), (False, True, True), (False, False, False)])
def test_native_bf16_from_torch_checks(monkeypatch, avx512_bf16, amx, expected):
    # raising=False: a PyTorch build without these private checks gets them for the test.
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    # conftest replaces hardware.cpu_has_native_bf16 for the session, so this calls the original.
    assert real_cpu_has_native_bf16() is expected


@pytest.mark.parametrize(("flags", "expected"), [("fma avx avx2", False), ("avx2 avx512f avx512_bf16", True),
                                                 ("avx2 amx_bf16 amx_tile", True)])
def test_native_bf16_from_cpu_flags(monkeypatch, tmp_path, flags, expected):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\n")

    assert real_cpu_has_native_bf16(cpuinfo) is expected


def test_auto_precision_skips_emulated_gpu(monkeypatch):
    # PyTorch counts bf16 as supported on pre-Ampere GPUs unless emulation is excluded.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert hardware.resolve_mixed_precision("auto", torch.device("cuda")) == "no"


@pytest.mark.parametrize("recorded_precision", ["bf16", "no"])
def test_auto_recipe_reuses_any_precision(tmp_path, recorded_precision):
    config = recipe_config("braincancernet", "random", "data", tmp_path)
    assert config.mixed_precision == "auto"
    recorded = {**config.to_dict(), "mixed_precision": recorded_precision}
    (tmp_path / "train_config.json").write_text(json.dumps(recorded))
    (tmp_path / "metrics.json").write_text("{}")
    assert matches_recipe(tmp_path, config)

    (tmp_path / "train_config.json").write_text(json.dumps({**recorded, "image_size": 64}))
    assert not matches_recipe(tmp_path, config)


def test_recipe_without_precision_matches(tmp_path, monkeypatch):
    monkeypatch.setitem(compare.RECIPES, "braincancernet", {"image_size": 64, "epochs": 2})
    config = recipe_config("braincancernet", "random", "data", tmp_path)
    (tmp_path / "train_config.json").write_text(json.dumps(config.to_dict()))
    (tmp_path / "metrics.json").write_text("{}")

    assert matches_recipe(tmp_path, config)
