"""Grad-CAM from one shared pass: agreement with pytorch-grad-cam, hook hygiene and overlays."""

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

from brain_tumor_classifier import BrainTumorClassifier, square_grayscale
from brain_tumor_classifier.explain import (
    DEFAULT_METHODS,
    EXCLUDED_METHODS,
    MAX_PER_CHANNEL_PASSES,
    available_methods,
    cam_to_original_geometry,
    capture_activations_and_gradients,
    compute_cam_maps,
    default_target_layer,
    excluded_methods,
    explain_image,
    first_component_projection,
    grayscale_slice,
    library_cam_maps,
    order_by_faithfulness,
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


def test_scorecam_matches_library(slice_image):
    classifier = _tiny_classifier("braincancernet")
    input_tensor = classifier.preprocess([slice_image])

    shared = compute_cam_maps(classifier.model, input_tensor, target_class=1, methods=["ScoreCAM"])
    reference = library_cam_maps(classifier.model, input_tensor, target_class=1, methods=["ScoreCAM"])

    assert np.ptp(reference["ScoreCAM"]) > 0.5, "ScoreCAM: reference map is flat, the comparison proves nothing"
    difference = float(np.abs(shared["ScoreCAM"] - reference["ScoreCAM"]).max())
    assert difference <= 1e-5, f"ScoreCAM: shared-pass map differs from the library map by {difference}"


@pytest.mark.parametrize(
    "shape",
    [(1, 256, 6, 6), (1, 2048, 4, 4), (1, 2048, 2, 2), (1, 64, 16, 16), (3, 32, 5, 7)],
    ids=["braincancernet-192", "resnet50-128", "resnet50-64", "more-positions-than-channels", "batch-of-3"],
)
def test_projection_matches_library_with_sign(shape):
    rng = np.random.default_rng(sum(shape))
    # Rectified, unevenly scaled channels resemble post-ReLU activations.
    activations = (np.maximum(rng.standard_normal(shape), 0) * rng.random((1, shape[1], 1, 1))).astype(np.float32)

    fast = first_component_projection(activations)
    reference = get_2d_projection(activations)

    assert fast.dtype == np.float32
    assert fast.shape == reference.shape
    # Comparing signed values (not absolute ones) checks that the sign of the component matches.
    difference = float(np.abs(fast - reference).max())
    assert difference <= 1e-5 * float(np.abs(reference).max()), f"projection differs by {difference}"


def test_projection_sets_nan_to_zero_like_library():
    activations = np.random.default_rng(1).random((1, 16, 3, 3)).astype(np.float32)
    activations[0, 2, 1, 1] = np.nan

    fast = first_component_projection(activations)

    assert np.isfinite(fast).all()
    assert np.allclose(fast, get_2d_projection(activations), atol=1e-6)
    assert np.isnan(activations[0, 2, 1, 1]), "the caller's array was modified"


def test_capture_leaves_parameter_gradients_alone(slice_image):
    classifier = _tiny_classifier("braincancernet")
    capture = capture_activations_and_gradients(classifier.model, classifier.preprocess([slice_image]))

    assert capture.gradients.shape == capture.activations.shape
    assert np.abs(capture.gradients).max() > 0
    assert all(parameter.grad is None for parameter in classifier.model.parameters())


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
    with pytest.raises(ValueError, match=r"Unknown CAM methods \['NoSuchCAM'\]: choose from \['GradCAM'"):
        compute_cam_maps(classifier.model, classifier.preprocess([slice_image]), methods=["NoSuchCAM"])


def test_scorecam_excluded_for_wide_layer(slice_image):
    resnet = _tiny_classifier("resnet50")
    reasons = excluded_methods(resnet.model)

    assert "2048 extra forward passes" in reasons["ScoreCAM"]
    assert "ScoreCAM" not in available_methods(resnet.model)
    with pytest.raises(ValueError, match="ScoreCAM is not available for this model: it needs 2048 extra"):
        explain_image(resnet, slice_image, methods=["GradCAM", "ScoreCAM"])


def test_scorecam_offered_for_narrow_layer():
    braincancernet = _tiny_classifier("braincancernet").model

    assert "ScoreCAM" not in excluded_methods(braincancernet)
    assert available_methods(braincancernet) == (*DEFAULT_METHODS, "ScoreCAM")
    assert braincancernet.num_features <= MAX_PER_CHANNEL_PASSES


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_ablationcam_always_excluded(architecture):
    reasons = excluded_methods(_tiny_classifier(architecture).model)

    assert reasons["AblationCAM"] == EXCLUDED_METHODS["AblationCAM"]
    assert "AblationCAM" not in DEFAULT_METHODS


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


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_class_can_be_explained(architecture, slice_image):
    classifier = _tiny_classifier(architecture)
    maps = {}
    for index, label in enumerate(classifier.label_names):
        results = explain_image(classifier, slice_image, target_class=index, methods=["GradCAM", "LayerCAM"])
        assert [result.label for result in results] == [label, label]
        assert all(label in result.caption for result in results)
        maps[label] = results[0].cam

    # Gradient-based maps depend on the class, so at least two classes must differ.
    first, *others = maps.values()
    assert any(np.abs(first - other).max() > 1e-3 for other in others), "every class gave the same GradCAM map"


def test_caption_notes_are_appended(slice_image):
    classifier = _tiny_classifier("braincancernet")
    results = explain_image(
        classifier, slice_image, methods=["GradCAM", "EigenCAM"], caption_notes={"GradCAM": "energy pointing 87%"}
    )

    assert results[0].caption.endswith(" · energy pointing 87%")
    assert "pointing" not in results[1].caption


def test_faithfulness_order_and_notes():
    scores = {
        "GradCAM": {"energy_pointing": 0.41},
        "LayerCAM": {"energy_pointing": 0.87},
        "EigenCAM": {"energy_pointing": float("nan")},
        "HiResCAM": {"pointing_game": 0.9},
    }
    order, notes = order_by_faithfulness(["GradCAM", "HiResCAM", "LayerCAM", "EigenCAM"], scores)

    assert order == ["LayerCAM", "GradCAM", "HiResCAM", "EigenCAM"]
    assert notes == {"LayerCAM": "energy pointing 87%", "GradCAM": "energy pointing 41%"}


def test_overlay_matches_library_blend():
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, size=(40, 30), dtype=np.uint8)
    cam = rng.random((40, 30)).astype(np.float32)

    ours = overlay_cam(gray, cam, image_weight=0.4).astype(int)
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32) / 255
    library = show_cam_on_image(rgb, cam, use_rgb=True, colormap=cv2.COLORMAP_JET, image_weight=0.4).astype(int)

    assert np.abs(ours - library).max() <= 1


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


def test_caption_quotes_mirror_averaged_probability(slice_image):
    # A bright band on the left makes the slice unlike its mirror image.
    pixels = np.array(slice_image)
    pixels[:, :20] = 255
    slice_image = Image.fromarray(pixels)
    classifier = _tiny_classifier("braincancernet")
    single_logits = classifier(classifier.preprocess([slice_image]))
    classifier.test_time_flip = True
    averaged_logits = classifier(classifier.preprocess([slice_image]))
    target = int(averaged_logits.argmax())
    # A random model's two passes differ little, so pick a temperature that shows the difference
    # in a caption's whole percent.
    for temperature in (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001):
        averaged = torch.softmax(averaged_logits / temperature, dim=1)[0, target]
        single = torch.softmax(single_logits / temperature, dim=1)[0, target]
        if f"{averaged:.0%}" != f"{single:.0%}":
            break
    else:
        pytest.fail("no temperature tells the single pass from the mirror average on this slice")
    classifier.temperature = temperature

    results = explain_image(classifier, slice_image, target_class=target, methods=["GradCAM"])

    assert results[0].caption.endswith(f"{averaged:.0%}")
