"""Upload decoding: one generated file per case, checked through load_upload and Predictor.predict."""

from __future__ import annotations

import io
import logging
import re

import numpy as np
import pytest
from PIL import Image

from brain_tumor_classifier import image_io
from brain_tumor_classifier.image_io import InvalidImageError, LoadedImage, load_upload
from brain_tumor_classifier.predictor import InvalidImageError as PredictorInvalidImageError
from brain_tumor_classifier.predictor import Predictor
from brain_tumor_classifier.preprocessing import square_grayscale

from upload_cases import (
    CASES,
    GRADIENT_16_BIT,
    PATIENT_ID,
    Case,
    _gray,
    dicom_monochrome2_window,
    gif_animated,
    pdf_document,
    png_16_bit,
)



def _params():
    return [pytest.param(case, id=case.file_name, marks=case.marks) for case in CASES]


def _check_loaded(case: Case, loaded: LoadedImage) -> None:
    image = loaded.image
    if case.mode is not None:
        assert image.mode == case.mode
    else:
        assert image.mode in ("L", "RGB")
    if case.size is not None:
        assert image.size == case.size
    if case.check is not None:
        case.check(image)
    if case.notice is None:
        assert loaded.notices == []
    else:
        assert any(re.search(case.notice, notice) for notice in loaded.notices), loaded.notices
    for notice in loaded.notices:
        assert "Doe" not in notice, "notices must not contain the patient name"
        assert PATIENT_ID not in notice, "notices must not contain the patient id"


# load_upload -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _params())
def test_load_upload_from_path(case, tmp_path):
    path = tmp_path / case.file_name
    path.write_bytes(case.build())
    if case.error:
        with pytest.raises(InvalidImageError, match=case.error) as raised:
            load_upload(path)
        assert "Doe" not in str(raised.value)
    else:
        _check_loaded(case, load_upload(path))


@pytest.mark.parametrize("case", _params())
def test_load_upload_from_bytes(case):
    if case.error:
        with pytest.raises(InvalidImageError, match=case.error):
            load_upload(case.build(), name=case.file_name)
    else:
        _check_loaded(case, load_upload(case.build(), name=case.file_name))


def test_bytes_without_name_are_called_the_upload():
    with pytest.raises(InvalidImageError, match=r"^The upload is a PDF document, not an image\. Export"):
        load_upload(pdf_document())


def test_missing_file_is_rejected(tmp_path):
    with pytest.raises(InvalidImageError, match=r"Image file 'absent\.png' was not found\. Check the path"):
        load_upload(tmp_path / "absent.png")


def test_file_over_size_limit_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(image_io, "MAX_FILE_SIZE_BYTES", 2 * 2**20)
    path = tmp_path / "big.tif"
    path.write_bytes(b"\0" * (3 * 2**20))

    with pytest.raises(InvalidImageError, match=r"'big\.tif' is 3\.0 MiB, above the 2 MiB limit for uploads\. Upload"):
        load_upload(path)
    with pytest.raises(InvalidImageError, match=r"^The upload is 3\.0 MiB, above the 2 MiB limit"):
        load_upload(path.read_bytes())


def test_wrong_type_is_rejected():
    with pytest.raises(InvalidImageError, match="Expected a PIL image, image bytes or an image file path, got list"):
        load_upload([1, 2, 3])


def test_pil_input_follows_same_rules():
    sixteen_bit = Image.fromarray(GRADIENT_16_BIT)
    rgba = Image.new("RGBA", (4, 4), (255, 255, 255, 0))

    assert load_upload(sixteen_bit).image.mode == "L"
    assert np.asarray(load_upload(rgba).image).max() == 0
    with pytest.raises(InvalidImageError, match=r"The image has 8000 x 7000 = 56 MP, above the limit"):
        load_upload(Image.new("1", (8000, 7000)))


def test_pil_animation_keeps_its_frame():
    animation = Image.open(io.BytesIO(gif_animated()))
    animation.seek(2)
    loaded = load_upload(animation)

    assert abs(_gray(loaded.image.convert("L"))[8, 8] - 200) <= 2
    assert animation.tell() == 2, "the caller's image stays at the frame it was on"


def test_16_bit_upload_matches_training_decode():
    # Training decodes files with square_grayscale directly, so an upload must give the same pixels.
    raw = Image.open(io.BytesIO(png_16_bit()))
    loaded = load_upload(png_16_bit()).image

    assert np.array_equal(square_grayscale(loaded, 32), square_grayscale(raw, 32))


def test_invalid_image_error_has_one_class():
    assert PredictorInvalidImageError is InvalidImageError
    assert issubclass(InvalidImageError, ValueError)


def test_dicom_reading_skips_patient_elements(caplog):
    with caplog.at_level(logging.DEBUG):
        loaded = load_upload(dicom_monochrome2_window(), name="scan.dcm")

    assert loaded.image.mode == "L"
    assert "Doe" not in caplog.text
    assert PATIENT_ID not in caplog.text
    assert "PatientName" not in image_io._DICOM_TAGS


# Predictor.predict -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor(tiny_model_dir) -> Predictor:
    return Predictor.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("case", _params())
def test_predictor_applies_upload_rules(case, predictor, tmp_path, caplog):
    path = tmp_path / case.file_name
    path.write_bytes(case.build())
    with caplog.at_level(logging.DEBUG, logger="brain_tumor_classifier"):
        if case.error:
            with pytest.raises(InvalidImageError, match=case.error):
                predictor.predict(path, explain=False)
        else:
            prediction = predictor.predict(path, explain=False)
            assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
            assert prediction.out_of_scope is False, "the tiny model has no out-of-scope threshold"
            assert prediction.warning is None
            assert prediction.notices == load_upload(path).notices
            if case.notice:
                assert any(re.search(case.notice, notice) for notice in prediction.notices), prediction.notices

    assert "Doe" not in caplog.text
    assert case.file_name not in caplog.text, "file names can contain patient names and must not be logged"
