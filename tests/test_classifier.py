"""Save/load round trips and strict loading of the Hub classifier."""

import json
import types

import pytest
import timm
import torch
from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

from brain_tumor_classifier import BrainTumorClassifier, WeightsMismatchError
from brain_tumor_classifier import classifier as classifier_module


@pytest.mark.parametrize("architecture", ["braincancernet", "resnet50"])
def test_round_trip_gives_identical_outputs(tmp_path, architecture):
    torch.manual_seed(0)
    model = BrainTumorClassifier(architecture=architecture, input_size=32, mean=[0.2], std=[0.3]).eval()
    model.save_pretrained(tmp_path)
    loaded = BrainTumorClassifier.from_pretrained(str(tmp_path))

    inputs = torch.randn(2, 1, 32, 32)
    assert torch.equal(model(inputs), loaded(inputs))
    assert loaded.label_names == ["glioma", "meningioma", "pituitary"]
    assert loaded.mean == [0.2]
    assert not loaded.training


def test_export_contains_weights_config_and_timm_keys(tmp_path):
    BrainTumorClassifier(architecture="resnet50", input_size=32).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())

    assert (tmp_path / "model.safetensors").is_file()
    assert config["architecture"] == "resnet50"
    assert config["num_classes"] == 3
    assert config["pretrained_cfg"]["input_size"] == [1, 32, 32]


def test_resnet50_export_loads_with_timm(tmp_path):
    torch.manual_seed(0)
    model = BrainTumorClassifier(architecture="resnet50", input_size=32).eval()
    model.save_pretrained(tmp_path)
    timm_model = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()

    inputs = torch.randn(1, 1, 32, 32)
    assert torch.equal(model(inputs), timm_model(inputs))
    assert timm_model.pretrained_cfg["label_names"] == model.label_names


def test_class_count_mismatch_is_rejected(tmp_path):
    BrainTumorClassifier(architecture="braincancernet", input_size=32).save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    config["label_names"] = ["glioma", "meningioma"]
    config_path.write_text(json.dumps(config))

    with pytest.raises(WeightsMismatchError, match=r"fc\.weight: file \(3, 256\), model \(2, 256\)"):
        BrainTumorClassifier.from_pretrained(str(tmp_path))


def test_missing_weights_file_is_reported(tmp_path):
    BrainTumorClassifier(architecture="braincancernet", input_size=32).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()

    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        BrainTumorClassifier.from_pretrained(str(tmp_path))


def _raise(error: Exception):
    def download(**options):
        raise error

    return download


def test_file_missing_from_hub_repo_is_reported(monkeypatch):
    # huggingface_hub reads the response's headers and request, so a stand-in response carries both.
    response = types.SimpleNamespace(headers={}, status_code=404, request=None)
    monkeypatch.setattr(classifier_module, "hf_hub_download", _raise(RemoteEntryNotFoundError("404", response=response)))

    with pytest.raises(FileNotFoundError, match=r"^owner/model has no model\.safetensors: the export is not complete"):
        classifier_module._export_file("owner/model", "model.safetensors", "the export is not complete.", {})


def test_offline_cache_miss_keeps_hub_error(monkeypatch):
    cache_miss = LocalEntryNotFoundError("Cannot find the requested files in the local cache.")
    monkeypatch.setattr(classifier_module, "hf_hub_download", _raise(cache_miss))

    with pytest.raises(LocalEntryNotFoundError, match="local cache"):
        classifier_module._export_file("owner/model", "model.safetensors", "the export is not complete.", {})


def test_folder_without_config_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="no usable config.json"):
        BrainTumorClassifier.from_pretrained(str(tmp_path))


def test_non_strict_loading_is_refused(tmp_path):
    BrainTumorClassifier(architecture="braincancernet", input_size=32).save_pretrained(tmp_path)

    with pytest.raises(ValueError, match="loads strictly"):
        BrainTumorClassifier.from_pretrained(str(tmp_path), strict=False)


def test_timm_registry_builds_both_architectures():
    for name in ("braincancernet", "resnet50"):
        model = timm.create_model(name, pretrained=False, num_classes=3, in_chans=1)
        assert model.num_classes == 3


def test_mirror_average_in_eval_only():
    torch.manual_seed(0)
    model = BrainTumorClassifier(input_size=32, test_time_flip=True)
    inputs = torch.randn(3, 1, 32, 32)

    model.eval()
    expected = (model.model(inputs) + model.model(inputs.flip(-1))) / 2
    assert torch.allclose(model(inputs), expected, atol=1e-5)
    # Averaging over both mirror images makes the output the same for a slice and its mirror.
    assert torch.allclose(model(inputs), model(inputs.flip(-1)), atol=1e-5)
    features, logits = model.features_and_logits(inputs)
    mirrored_features, _ = model.features_and_logits(inputs.flip(-1))
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(features, mirrored_features, atol=1e-5)

    model.train()
    assert torch.equal(model(inputs), model.model(inputs))


def test_mirror_average_round_trip(tmp_path):
    BrainTumorClassifier(input_size=32, test_time_flip=True).save_pretrained(tmp_path)

    assert json.loads((tmp_path / "config.json").read_text())["test_time_flip"] is True
    assert BrainTumorClassifier.from_pretrained(str(tmp_path)).test_time_flip
