"""The UI-free predictor: loading, predictions with galleries, and clear rejection of bad input."""

import logging

import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image

from brain_tumor_classifier import BrainTumorClassifier
from brain_tumor_classifier.explain import DEFAULT_METHODS
from brain_tumor_classifier.predictor import (
    InvalidImageError,
    ModelSourceError,
    Predictor,
    is_hub_repo_id,
)


@pytest.fixture(scope="module")
def predictor(tiny_model_dir) -> Predictor:
    return Predictor.from_pretrained(tiny_model_dir)


def test_predict_returns_probabilities_and_gallery(predictor, slice_png, slice_image):
    prediction = predictor.predict(slice_png)

    assert list(prediction.probabilities) == ["glioma", "meningioma", "pituitary"]
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert prediction.top_label == max(prediction.probabilities, key=prediction.probabilities.get)
    assert prediction.model_name == predictor.name
    assert [result.method for result in prediction.gallery] == list(DEFAULT_METHODS)
    for result in prediction.gallery:
        assert result.label == prediction.top_label
        assert result.overlay.shape == (slice_image.height, slice_image.width, 3)


def test_model_name_defaults_to_folder_name(predictor, tiny_model_dir):
    assert predictor.name == tiny_model_dir.name
    assert predictor.architecture == "braincancernet"


def test_path_and_pil_give_same_probabilities(predictor, slice_png, slice_image):
    from_path = predictor.predict(slice_png, explain=False)
    from_pil = predictor.predict(slice_image, explain=False)

    assert from_path.probabilities == pytest.approx(from_pil.probabilities, abs=1e-6)
    assert from_path.gallery == []


def _write_bad_files(folder, slice_png):
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("this is text, not an image")
    data = slice_png.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "name, message, reason",
    [
        ("missing.png", r"'missing\.png' was not found\. Check the path", "file not found"),
        ("empty.png", r"'empty\.png' is empty \(0 bytes\)\. Upload the slice again", "empty file"),
        ("notes.png", r"'notes\.png' is not an image file that Pillow can read\. Upload the slice", "not an image"),
        ("truncated.png", r"'truncated\.png' is damaged or truncated .* Export the slice again", "damaged image"),
    ],
)
def test_bad_file_is_rejected(predictor, tmp_path, slice_png, name, message, reason):
    _write_bad_files(tmp_path, slice_png)
    with pytest.raises(InvalidImageError, match=message) as caught:
        predictor.predict(tmp_path / name)
    # The reason is what servers log, so it must not repeat the file name.
    assert caught.value.reason == reason


def test_missing_image_is_rejected(predictor):
    with pytest.raises(InvalidImageError, match="No image was given. Upload an MRI slice"):
        predictor.predict(None)


def test_wrong_type_is_rejected(predictor):
    with pytest.raises(InvalidImageError, match="Expected a PIL image or an image file path, got ndarray"):
        predictor.predict(np.zeros((8, 8), np.uint8))


def test_invalid_image_error_is_value_error():
    assert issubclass(InvalidImageError, ValueError)


def test_rgb_and_16_bit_images_are_accepted(predictor):
    rgb = Image.new("RGB", (40, 30), (120, 60, 30))
    sixteen_bit = Image.fromarray(np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50)

    for image in (rgb, sixteen_bit):
        prediction = predictor.predict(image, explain=False)
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_decoding_notices_reach_prediction(predictor, tmp_path, slice_image):
    path = tmp_path / "animation.gif"
    slice_image.save(path, save_all=True, append_images=[Image.new("L", slice_image.size, 0)], duration=100)

    prediction = predictor.predict(path, explain=False)

    assert prediction.notices == ["'animation.gif' is a GIF file with 2 frames. Only the first frame was used."]


def test_plain_slice_has_no_notices(predictor, slice_png):
    assert predictor.predict(slice_png, explain=False).notices == []


def test_out_of_scope_image_gets_no_gallery(tiny_model_dir, slice_image):
    classifier = BrainTumorClassifier.from_pretrained(str(tiny_model_dir))
    # Class means at the origin and an identity precision make every score positive, so a
    # threshold of -1 flags every image.
    num_features = classifier.model.num_features
    classifier.set_ood_statistics(torch.zeros(len(classifier.label_names), num_features), torch.eye(num_features))
    classifier.ood_threshold = -1.0

    prediction = Predictor(classifier, name="tiny").predict(slice_image)

    assert prediction.out_of_scope is True
    assert prediction.gallery == []
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_logs_carry_no_file_names(predictor, tmp_path, slice_image, caplog):
    # Upload names can contain patient names, so they must not reach the logs.
    path = tmp_path / "doe-john-1970.png"
    slice_image.save(path)
    with caplog.at_level(logging.DEBUG, logger="brain_tumor_classifier"):
        predictor.predict(path)

    assert caplog.records, "the predictor logged nothing"
    assert "doe-john" not in caplog.text


def test_unknown_method_is_rejected(tiny_model_dir):
    with pytest.raises(ValueError, match=r"Unknown CAM methods \['ScoreCAM'\]"):
        Predictor.from_pretrained(tiny_model_dir, methods=["GradCAM", "ScoreCAM"])


def test_missing_model_folder_is_reported(tmp_path):
    with pytest.raises(ModelSourceError, match=r"Model folder .*no-such-model was not found"):
        Predictor.from_pretrained(tmp_path / "no-such-model")


def test_folder_without_config_is_reported(tmp_path):
    with pytest.raises(ModelSourceError, match="has no config.json"):
        Predictor.from_pretrained(tmp_path)


def test_unreachable_hub_model_is_reported():
    # In offline mode any uncached repository is unreachable, and the test sends no request.
    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE=1 so that no request leaves the machine")
    with pytest.raises(ModelSourceError, match="Loading model example-org/no-such-model failed"):
        Predictor.from_pretrained("example-org/no-such-model")


@pytest.mark.parametrize(
    "source, expected",
    [
        ("org/model", True),
        ("model-name", True),
        ("space/models/braincancernet", False),
        ("/abs/folder", False),
        ("./folder", False),
        ("~/folder", False),
    ],
)
def test_hub_repo_id_form(source, expected):
    assert is_hub_repo_id(source) is expected


def test_real_slice_prediction(predictor, real_slice_path):
    prediction = predictor.predict(real_slice_path)

    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert len(prediction.gallery) == len(DEFAULT_METHODS)
    assert prediction.gallery[0].overlay.shape == (512, 512, 3)


def test_captions_quote_shown_probability(tiny_model_dir, slice_image):
    classifier = BrainTumorClassifier.from_pretrained(str(tiny_model_dir), test_time_flip=True)
    # A bright band on the left makes the slice unlike its mirror image.
    pixels = np.array(slice_image)
    pixels[:, :20] = 255

    prediction = Predictor(classifier, name="mirror").predict(Image.fromarray(pixels))

    top_probability = prediction.probabilities[prediction.top_label]
    assert prediction.gallery
    for result in prediction.gallery:
        assert result.caption.endswith(f"{prediction.top_label} {top_probability:.0%}")
