"""Model cards rendered from a fake run folder: a tiny random model plus hand-written JSON files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, ModelCardData
from PIL import Image

from brain_tumor_classifier import BrainTumorClassifier
from model_card import render_model_card, write_model_card
from model_card.render import EXAMPLE_IMAGE_NAME, count_parameters
from run_folders import LABELS, make_run_folder

CALIBRATION = {
    "temperature": 0.5699684507910576,
    "ood_threshold": 473.89117431640625,
    "false_alarm_target": 0.01,
    "validation": {"num_images": 460, "nll_before": 0.1389, "nll_after": 0.0893, "false_alarm_rate": 0.0087},
    "test": {
        "num_images": 460,
        "ece_bins": 15,
        "ece_before": 0.06676763412402305,
        "ece_after": 0.024749598473940034,
        "nll_before": 0.16233163235749223,
        "nll_after": 0.1259413641977119,
        "false_alarm_rate": 0.006521739130434782,
    },
    "non_mri": {
        "categories": {
            "noise": {"source": "generated noise", "count": 10, "detected": 10, "detection_rate": 1.0},
            "photo": {"source": "a bundled photo", "count": 7, "detected": 6, "detection_rate": 6 / 7},
        },
        "count": 17,
        "detection_rate": 16 / 17,
        "other_mri": {"source": "a sagittal head MRI", "score": 812.345, "flagged": True},
    },
    "calibrate_command": "python -m train.calibrate --run-dir runs/braincancernet",
}
FAITHFULNESS = {
    "GradCAM": {"pointing_game": 0.5, "energy_pointing": 0.1234, "road": -0.0456, "num_images": 460},
    "EigenCAM": {"pointing_game": 0.25, "energy_pointing": 0.2345, "road": -0.0123, "num_images": 460},
    "chance_baseline": {"box_area_share": 0.0612, "road_random_map": -0.0101, "num_images": 460},
    "settings": {
        "road_fraction": 0.2,
        "seed": 0,
        "test_slices": 460,
        "test_slices_with_box": 460,
        "command": "python -m train.faithfulness --run-dir runs/braincancernet",
    },
}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run_folder(tmp_path / "run")


@pytest.fixture
def measured_run_dir(run_dir: Path) -> Path:
    """The fake run folder plus calibration.json, reliability_diagram.png and faithfulness.json."""
    (run_dir / "calibration.json").write_text(json.dumps(CALIBRATION, indent=2) + "\n")
    (run_dir / "faithfulness.json").write_text(json.dumps(FAITHFULNESS, indent=2) + "\n")
    Image.new("L", (8, 8)).save(run_dir / "reliability_diagram.png")
    return run_dir


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def metric_values(card: ModelCard, split_kind: str = "random") -> dict[str, float]:
    return {
        result.metric_type: result.metric_value
        for result in card.data.eval_results
        if result.dataset_config == split_kind
    }


def python_snippet(card: ModelCard) -> str:
    section = card.text.split("## How to get started", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_card_metrics_equal_metrics_json(run_dir: Path) -> None:
    metrics = read_json(run_dir / "metrics.json")
    card = render_model_card(run_dir)
    values = metric_values(card)
    assert values["accuracy"] == metrics["accuracy"]
    assert values["balanced_accuracy"] == metrics["balanced_accuracy"]
    assert values["f1"] == metrics["macro_f1"]
    assert all(result.dataset_split == "test" for result in card.data.eval_results)


def test_card_text_numbers_come_from_files(run_dir: Path) -> None:
    metrics = read_json(run_dir / "metrics.json")
    text = render_model_card(run_dir).text
    assert f"{metrics['accuracy']:.2%}" == "97.17%"
    assert "97.17% accuracy" in text
    assert "| test (random split by slice) | 460 | 0.9717 | 0.9651 | 0.9671 |" in text
    assert "| `glioma` | 0.9810 | 0.9813 | 0.9811 | 0.9978 | 214 |" in text
    assert "| `meningioma` | 0.9434 | 0.9434 | 0.9434 | n/a | 106 |" in text, "a missing ROC AUC shows as n/a"
    assert "| **meningioma** | 3 | 100 | 3 |" in text
    assert "3.21 ms per single slice" in text
    assert "812.5 slices per second in batches of 64" in text
    assert f"{count_parameters(run_dir / 'model.safetensors'):,} parameters" in text


def test_card_names_inference_cpu_and_mirror(run_dir: Path) -> None:
    metrics = read_json(run_dir / "metrics.json")
    metrics["inference"].update(cpu="Example CPU 9000", test_time_flip=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    text = render_model_card(run_dir).text
    assert "Measured during evaluation on Example CPU 9000 with 2 threads" in text
    assert "Both figures include scoring each slice's mirror image" in text


def test_card_without_inference_cpu_names_device(run_dir: Path) -> None:
    text = render_model_card(run_dir).text
    assert "Measured during evaluation on cpu with 2 threads" in text
    assert "mirror image, as the app does" not in text


def test_card_names_commands(run_dir: Path) -> None:
    text = render_model_card(run_dir).text
    train_config = read_json(run_dir / "train_config.json")
    metrics = read_json(run_dir / "metrics.json")
    assert f"```bash\n{train_config['command']}\n```" in text
    assert f"```bash\n{metrics['evaluate_command']}\n```" in text


def test_card_training_section_from_files(run_dir: Path) -> None:
    text = render_model_card(run_dir).text
    assert "| `lr` | `0.002` |" in text
    assert "| `mixed_precision` | `bf16` |" in text
    assert "| `warmup_epochs` | `0.5` |" in text
    assert "epoch 2,\nthe best epoch recorded in `history.json`, with validation accuracy 0.8761" in text
    assert "1 h 02 min (3725.4 s)" in text
    assert "AMD EPYC test CPU, 2 threads" in text
    assert "- train: 7\n- validation: 1\n- test: 2" in text
    assert "![Training and validation loss and accuracy per epoch](training_curves.png)" in text
    assert "![Confusion matrix on the test split](confusion_matrix.png)" in text


def test_card_states_limits_and_citations(run_dir: Path) -> None:
    text = render_model_card(run_dir).text
    first_paragraph = text.strip().split("\n\n")[1]
    assert "Research use only" in first_paragraph
    assert "not be used to diagnose" in first_paragraph
    assert "2005 and 2010" in text
    assert 'no "no tumor" class' in text
    assert "random by slice" in text
    assert "Scanner and protocol shift" in text
    for doi in ("10.6084/m9.figshare.1512427.v5", "10.1371/journal.pone.0140381", "10.1371/journal.pone.0157112"):
        assert doi in text


def test_card_metadata_fields(run_dir: Path) -> None:
    data = render_model_card(run_dir, repo_id="example-org/brain-tumor-test").data
    assert data.license == "cc-by-4.0"
    assert data.pipeline_tag == "image-classification"
    assert data.library_name == "brain-tumor-classifier"
    assert {"medical", "mri", "brain-tumor", "timm", "braincancernet"} <= set(data.tags)
    assert data.metrics == ["accuracy", "f1"]
    assert data.model_name == "example-org/brain-tumor-test"
    assert data.datasets is None, "a local dataset folder is no Hub dataset id"


def test_card_metadata_names_hub_dataset(run_dir: Path) -> None:
    config = read_json(run_dir / "train_config.json")
    config["dataset"] = "example-org/brain-tumor-mri"
    (run_dir / "train_config.json").write_text(json.dumps(config))
    card = render_model_card(run_dir)
    assert card.data.datasets == ["example-org/brain-tumor-mri"]
    assert {result.dataset_type for result in card.data.eval_results} == {"example-org/brain-tumor-mri"}


def test_card_yaml_round_trips(run_dir: Path) -> None:
    card = render_model_card(run_dir, repo_id="example-org/brain-tumor-test")
    parsed = ModelCard(str(card))
    assert parsed.data.to_dict() == card.data.to_dict()
    assert parsed.data.eval_results == card.data.eval_results
    rebuilt = ModelCardData(**card.data.to_dict())
    assert rebuilt.to_dict() == card.data.to_dict()
    assert str(parsed) == str(card)


def test_write_round_trips_through_load(run_dir: Path) -> None:
    path = write_model_card(run_dir)
    assert path == run_dir / "README.md"
    loaded = ModelCard.load(path)
    assert loaded.data.to_dict() == render_model_card(run_dir).data.to_dict()
    assert path.read_text().endswith("```\n")


def test_render_is_deterministic(run_dir: Path) -> None:
    first = str(render_model_card(run_dir, repo_id="example-org/brain-tumor-test"))
    second = str(render_model_card(run_dir, repo_id="example-org/brain-tumor-test"))
    assert first == second
    write_model_card(run_dir)
    written = (run_dir / "README.md").read_bytes()
    write_model_card(run_dir)
    assert (run_dir / "README.md").read_bytes() == written


def test_snippet_runs_with_local_folder(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snippet = python_snippet(render_model_card(run_dir))
    assert f'from_pretrained("{run_dir}")' in snippet
    monkeypatch.chdir(tmp_path)
    Image.new("L", (48, 40), color=90).save(tmp_path / EXAMPLE_IMAGE_NAME)
    namespace: dict = {}
    exec(compile(snippet, "model_card_snippet", "exec"), namespace)
    probabilities = namespace["probs"]
    assert probabilities.shape == (1, 3)
    assert float(probabilities.sum()) == pytest.approx(1.0, abs=1e-5)
    assert namespace["model"].label_names == LABELS


def test_snippet_names_repo_id(run_dir: Path) -> None:
    snippet = python_snippet(render_model_card(run_dir, repo_id="example-org/brain-tumor-test"))
    assert 'BrainTumorClassifier.from_pretrained("example-org/brain-tumor-test")' in snippet


def test_extra_split_results_reported(run_dir: Path, tmp_path: Path) -> None:
    patient_metrics = read_json(run_dir / "metrics.json")
    patient_metrics.update(
        split_kind="patient", num_images=401, accuracy=0.8827930174563591, balanced_accuracy=0.87, macro_f1=0.8712,
        evaluate_command="python -m train.evaluate --run-dir runs/patient",
    )
    extra_path = tmp_path / "patient_metrics.json"
    extra_path.write_text(json.dumps(patient_metrics))
    card = render_model_card(run_dir, extra_metrics=[extra_path])
    assert metric_values(card, "patient") == {"accuracy": 0.8827930174563591, "balanced_accuracy": 0.87, "f1": 0.8712}
    assert metric_values(card, "random")["accuracy"] == 0.9717391304347826
    assert len(card.data.to_dict()["model-index"][0]["results"]) == 2
    assert "| test (patient split) | 401 | 0.8828 | 0.8700 | 0.8712 |" in card.text
    assert "python -m train.evaluate --run-dir runs/patient" in card.text
    assert "also lists the other splits" in card.text
    assert ModelCard(str(card)).data.eval_results == card.data.eval_results


def test_metrics_group_file_reported(run_dir: Path) -> None:
    group_entry = dict(read_json(run_dir / "metrics.json"), split_kind="patient", accuracy=0.9)
    (run_dir / "metrics_group.json").write_text(json.dumps([group_entry]))
    assert metric_values(render_model_card(run_dir), "patient")["accuracy"] == 0.9


def test_duplicate_split_results_rejected(run_dir: Path) -> None:
    (run_dir / "metrics_group.json").write_text(json.dumps([read_json(run_dir / "metrics.json")]))
    with pytest.raises(ValueError, match="one per split and kind"):
        render_model_card(run_dir)


def test_missing_run_file_named(run_dir: Path) -> None:
    (run_dir / "history.json").unlink()
    with pytest.raises(FileNotFoundError, match="history.json"):
        render_model_card(run_dir)


def test_incomplete_metrics_named(run_dir: Path) -> None:
    metrics = read_json(run_dir / "metrics.json")
    del metrics["macro_f1"]
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match="macro_f1"):
        render_model_card(run_dir)


def test_parameter_count_skips_batch_norm_buffers(run_dir: Path) -> None:
    model = BrainTumorClassifier.from_pretrained(str(run_dir))
    assert count_parameters(run_dir / "model.safetensors") == sum(p.numel() for p in model.parameters())


def test_card_without_measurements_says_so(run_dir: Path) -> None:
    text = render_model_card(run_dir).text
    assert "## Calibration and out-of-scope detection" not in text
    assert "## Grad-CAM faithfulness" not in text
    assert "frequencies was not measured for this card" in text


def test_card_calibration_equals_file(measured_run_dir: Path) -> None:
    text = render_model_card(measured_run_dir).text
    section = text.split("## Calibration and out-of-scope detection", 1)[1].split("\n## ", 1)[0]
    assert f"```bash\n{CALIBRATION['calibrate_command']}\n```" in section
    assert "| softmax temperature (fitted on 460 validation slices) | 0.5700 |" in section
    assert "| ECE before scaling (460 test slices, 15 bins) | 0.0668 |" in section
    assert "| ECE after scaling | 0.0247 |" in section
    assert "| out-of-scope threshold (in `config.json`) | 473.8912 |" in section
    assert "| test MRI slices flagged as out of scope (3 of 460) | 0.0065 |" in section
    assert "| non-MRI images flagged as out of scope (16 of 17) | 0.9412 |" in section
    assert "| `photo` | 7 | 6 | a bundled photo |" in section
    assert "set\nto flag 1% of the validation slices" in section
    assert "it flags 0.87% of them." in section
    assert "The temperature is below 1, so it sharpens the probabilities." in section
    assert (
        "Not counted above: one MRI from another source scored 812.3 (threshold 473.9) and was flagged. "
        "Source: a sagittal head MRI." in section
    )
    assert "![Reliability diagrams on the test split before and after temperature scaling](reliability_diagram.png)" in section
    assert "frequencies was not measured for this card" not in text
    assert "tested\n  on non-MRI images only" in text


def test_card_faithfulness_equals_file(measured_run_dir: Path) -> None:
    text = render_model_card(measured_run_dir).text
    section = text.split("## Grad-CAM faithfulness", 1)[1].split("\n## ", 1)[0]
    assert f"```bash\n{FAITHFULNESS['settings']['command']}\n```" in section
    assert "tumor boxes on all 460 test slices (`faithfulness.json`)" in section
    assert "most relevant 20% of the input pixels are imputed" in section
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert rows == [
        "| method | pointing game | energy pointing | ROAD |",
        "| --- | --- | --- | --- |",
        "| EigenCAM | 0.2500 | 0.2345 | -0.0123 |",
        "| GradCAM | 0.5000 | 0.1234 | -0.0456 |",
        "| chance (box area share, random map) | 0.0612 | 0.0612 | -0.0101 |",
    ]


def test_card_with_measurements_round_trips(measured_run_dir: Path) -> None:
    card = render_model_card(measured_run_dir, repo_id="example-org/brain-tumor-test")
    assert ModelCard(str(card)).data.to_dict() == card.data.to_dict()
    assert str(render_model_card(measured_run_dir, repo_id="example-org/brain-tumor-test")) == str(card)


def test_card_names_partial_faithfulness_scope(measured_run_dir: Path) -> None:
    faithfulness = json.loads(json.dumps(FAITHFULNESS))
    faithfulness["chance_baseline"]["num_images"] = 230
    (measured_run_dir / "faithfulness.json").write_text(json.dumps(faithfulness))
    text = render_model_card(measured_run_dir).text
    assert "tumor boxes on 230 of the 460 test slices" in text


REPO_ROOT = Path(__file__).resolve().parents[1]
RANDOM_SPLIT_RUNS = ["braincancernet", "resnet50"]


@pytest.mark.parametrize("name", RANDOM_SPLIT_RUNS)
def test_real_run_card_and_snippet(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Render the card of a real run folder and run its snippet against that folder.

    ResNet50's run folders are too large to commit, so its case runs only where the folder was
    trained or downloaded.
    """
    run_dir = REPO_ROOT / "space" / "models" / name
    if not (run_dir / "metrics.json").is_file():
        pytest.skip(f"{run_dir} is not on this machine (ResNet50 run folders are not committed)")
    metrics = read_json(run_dir / "metrics.json")
    card = render_model_card(run_dir)
    values = metric_values(card)
    assert values["accuracy"] == metrics["accuracy"]
    assert values["f1"] == metrics["macro_f1"]

    snippet = python_snippet(card)
    assert f'from_pretrained("{run_dir}")' in snippet
    monkeypatch.chdir(tmp_path)
    Image.new("L", (300, 280), color=90).save(tmp_path / EXAMPLE_IMAGE_NAME)
    namespace: dict = {}
    exec(compile(snippet, "model_card_snippet", "exec"), namespace)
    assert namespace["probs"].shape == (1, 3)
    assert namespace["model"].label_names == LABELS


def test_card_reports_mirror_averaging(measured_run_dir: Path) -> None:
    calibration = read_json(measured_run_dir / "calibration.json")
    calibration["test_time_flip"] = {
        "mode": "auto",
        "test_time_flip": True,
        "validation": {"single": {"accuracy": 0.9848, "nll": 0.14}, "mirror_average": {"accuracy": 0.9870, "nll": 0.13}},
        "num_images": 460,
    }
    (measured_run_dir / "calibration.json").write_text(json.dumps(calibration))
    config = read_json(measured_run_dir / "config.json")
    config["test_time_flip"] = True
    (measured_run_dir / "config.json").write_text(json.dumps(config))

    text = render_model_card(measured_run_dir).text

    assert "| average with the mirror image (`test_time_flip` in `config.json`) | yes |" in text
    assert "| validation accuracy, single pass | 0.9848 |" in text
    assert "| validation accuracy, averaged with the mirror image | 0.9870 |" in text
    assert "averaged (`test_time_flip` in `config.json`), which doubles the compute" in text
    assert "first chose whether to average each slice with its mirror image" in text


def test_card_without_mirror_averaging_omits_it(measured_run_dir: Path) -> None:
    text = render_model_card(measured_run_dir).text

    assert "with the mirror image" not in text
    assert "average each slice with its mirror image" not in text
    assert "`test_time_flip`" not in text


def test_card_states_box_training(measured_run_dir: Path) -> None:
    plain = render_model_card(measured_run_dir).text
    config_path = measured_run_dir / "train_config.json"
    train_config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**train_config, "box_loss_weight": 0.5}) + "\n")
    boxed = render_model_card(measured_run_dir).text

    assert "tumor bounding boxes (`--box-loss-weight 0.5`)" in boxed
    assert "are not an independent check of the maps" in boxed
    assert "--box-loss-weight" not in plain
    assert "independent check" not in plain
