"""Grad-CAM from one shared pass: agreement with pytorch-grad-cam, hook hygiene and overlays."""

import numpy as np
import pytest
import torch
from PIL import Image

from brain_tumor_classifier import BrainTumorClassifier, square_grayscale
from brain_tumor_classifier.explain import (
    DEFAULT_METHODS,
    cam_to_original_geometry,
    compute_cam_maps,
    default_target_layer,
    explain_image,
    grayscale_slice,
    library_cam_maps,
    overlay_cam,
)

ARCHITECTURES = ["braincancernet", "resnet50"]


def _tiny_classifier(architecture: str) -> BrainTumorClassifier:
    torch.manual_seed(0)
    return BrainTumorClassifier(architecture=architecture, input_size=64).eval()


def _hook_count(module: torch.nn.Module) -> int:
    return sum(len(sub._forward_hooks) + len(sub._backward_hooks) for sub in module.modules())


@pytest.fixture(scope="module", params=ARCHITECTURES)
def classifier(request) -> BrainTumorClassifier:
    return _tiny_classifier(request.param)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_shared_pass_matches_library(architecture, slice_image):
    classifier = _tiny_classifier(architecture)
    input_tensor = classifier.preprocess([slice_image])

    shared = compute_cam_maps(classifier.model, input_tensor, target_class=0)
    reference = library_cam_maps(classifier.model, input_tensor, target_class=0)

    assert list(shared) == list(DEFAULT_METHODS)
    for method in DEFAULT_METHODS:
        assert shared[method].shape == (64, 64), method
        # A constant map would make the comparison below pass for any weighting.
        assert np.ptp(reference[method]) > 0.5, f"{method}: reference map is flat, the comparison proves nothing"
        difference = float(np.abs(shared[method] - reference[method]).max())
        assert difference <= 1e-5, f"{method}: shared-pass map differs from the library map by {difference}"


def test_default_target_layer_is_last_stage():
    resnet = _tiny_classifier("resnet50").model
    braincancernet = _tiny_classifier("braincancernet").model

    assert default_target_layer(resnet) is resnet.layer4[-1]
    assert default_target_layer(braincancernet) is braincancernet.stages[-1]


def test_hooks_released_after_success(classifier, slice_image):
    before = _hook_count(classifier.model)
    compute_cam_maps(classifier.model, classifier.preprocess([slice_image]))

    assert _hook_count(classifier.model) == before


def test_hooks_released_after_error(classifier, slice_image):
    before = _hook_count(classifier.model)
    # The class index is checked after the forward pass, inside the hooked block.
    with pytest.raises(ValueError, match=r"target_class must be in \[0, 2\], got 7"):
        compute_cam_maps(classifier.model, classifier.preprocess([slice_image]), target_class=7)

    assert _hook_count(classifier.model) == before


def test_training_mode_is_rejected(slice_image):
    classifier = _tiny_classifier("braincancernet").train()
    with pytest.raises(ValueError, match="training mode"):
        compute_cam_maps(classifier.model, classifier.preprocess([slice_image]))


def test_unknown_method_lists_choices(classifier, slice_image):
    with pytest.raises(ValueError, match=r"Unknown CAM methods \['ScoreCAM'\]: choose from \['GradCAM'"):
        compute_cam_maps(classifier.model, classifier.preprocess([slice_image]), methods=["ScoreCAM"])


def test_works_inside_inference_mode(classifier, slice_image):
    with torch.inference_mode():
        input_tensor = classifier.preprocess([slice_image])
        maps = compute_cam_maps(classifier.model, input_tensor, methods=["GradCAM"])

    assert np.isfinite(maps["GradCAM"]).all()


def test_cam_geometry_undoes_padding():
    # Running a two-way ramp through the model's padding and resizing, then mapping it back,
    # must recover the ramp: a wrong offset, flip or transpose would show as a large error.
    width, height = 90, 50
    y, x = np.mgrid[0:height, 0:width]
    ramp = (0.7 * x / (width - 1) + 0.3 * y / (height - 1)).astype(np.float32)
    image = Image.fromarray((ramp * 255).round().astype(np.uint8), mode="L")
    input_map = square_grayscale(image, 64).astype(np.float32) / 255

    recovered = cam_to_original_geometry(input_map, image.size)

    assert recovered.shape == (height, width)
    interior = np.s_[2:-2, 2:-2]
    error = np.abs(recovered[interior] - ramp[interior])
    assert error.max() < 0.05, f"mapped-back map differs from the original by up to {error.max():.3f}"


def test_grayscale_slice_keeps_original_pixels(slice_image):
    assert np.array_equal(grayscale_slice(slice_image), np.asarray(slice_image))


def test_grayscale_slice_converts_rgb():
    rgb = Image.new("RGB", (30, 20), (200, 100, 50))
    gray = grayscale_slice(rgb)

    assert gray.shape == (20, 30)
    assert gray.dtype == np.uint8


def test_overlay_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="same height and width"):
        overlay_cam(np.zeros((10, 20), np.uint8), np.zeros((20, 10), np.float32))


def test_explain_image_overlays_nonsquare(classifier, slice_image):
    width, height = slice_image.size
    results = explain_image(classifier, slice_image)

    assert [result.method for result in results] == list(DEFAULT_METHODS)
    for result in results:
        assert result.cam.shape == (height, width), result.method
        assert result.cam.dtype == np.float32, result.method
        assert np.isfinite(result.cam).all(), result.method
        assert result.cam.min() >= 0.0, result.method
        assert result.cam.max() <= 1.0, result.method
        assert result.overlay.shape == (height, width, 3), result.method
        assert result.overlay.dtype == np.uint8, result.method
        assert np.ptp(result.overlay) > 0, f"{result.method}: overlay is one flat color"
        assert result.method in result.caption
        assert result.label in result.caption
        assert result.overlay_image().size == (width, height)


def test_explain_image_uses_requested_class(slice_image):
    classifier = _tiny_classifier("braincancernet")
    results = explain_image(classifier, slice_image, target_class=2, methods=["GradCAM", "EigenCAM"])

    assert [result.label for result in results] == ["pituitary", "pituitary"]


def test_overlay_without_caption_keeps_slice_visible(slice_image):
    gray = np.asarray(slice_image)
    overlay = overlay_cam(gray, np.zeros(gray.shape, np.float32), image_weight=0.5)

    # With a zero map the colormap is uniform, so brighter slice pixels stay brighter.
    bright, dark = np.unravel_index(gray.argmax(), gray.shape), np.unravel_index(gray.argmin(), gray.shape)
    assert overlay[bright].sum() > overlay[dark].sum()


def test_real_slice_overlays(real_slice_path):
    classifier = _tiny_classifier("braincancernet")
    with Image.open(real_slice_path) as opened:
        image = opened.crop((0, 64, 512, 448))  # 512 x 384, not square

    results = explain_image(classifier, image)

    assert len(results) == len(DEFAULT_METHODS)
    for result in results:
        assert result.overlay.shape == (384, 512, 3), result.method
        assert np.isfinite(result.cam).all(), result.method
