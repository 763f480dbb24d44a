"""Grad-CAM explanations for one MRI slice, from one forward and one backward pass.

pytorch-grad-cam runs a forward pass, and a backward pass for gradient-based methods, for every
method. Here one forward pass records the target layer's activations and their gradient, and
each method turns them into a map with its own ``get_cam_image``, followed by the two scalings that
``BaseCAM.forward`` applies. EigenCAM and EigenGradCAM use ``first_component_projection``, a thin
SVD that gives the library's map without its full SVD. ``library_cam_maps`` computes the same maps
with the library's usual one-call-per-method API, so tests can check that both paths agree.

ScoreCAM runs one extra forward pass per channel of the target layer. It is available on request
for narrow layers only and is never part of ``DEFAULT_METHODS``. ``excluded_methods`` returns, for
a given model, each method that cannot be used and the reason.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from pytorch_grad_cam import (
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from .classifier import BrainTumorClassifier
from .preprocessing import square_grayscale

__all__ = [
    "CAM_METHODS",
    "DEFAULT_METHODS",
    "PER_CHANNEL_METHODS",
    "MAX_PER_CHANNEL_PASSES",
    "EXCLUDED_METHODS",
    "FAITHFULNESS_NAME",
    "CamCapture",
    "CamResult",
    "available_methods",
    "excluded_methods",
    "first_component_projection",
    "capture_activations_and_gradients",
    "cam_maps_from_capture",
    "compute_cam_maps",
    "library_cam_maps",
    "default_target_layer",
    "cam_to_original_geometry",
    "grayscale_slice",
    "overlay_cam",
    "explain_image",
    "read_faithfulness",
    "order_by_faithfulness",
]

logger = logging.getLogger(__name__)

# Display name -> pytorch-grad-cam class, for the methods that need only the shared pass.
CAM_METHODS: dict[str, type[BaseCAM]] = {
    "GradCAM": GradCAM,
    "GradCAM++": GradCAMPlusPlus,
    "XGradCAM": XGradCAM,
    "LayerCAM": LayerCAM,
    "HiResCAM": HiResCAM,
    "GradCAMElementWise": GradCAMElementWise,
    "EigenCAM": EigenCAM,
    "EigenGradCAM": EigenGradCAM,
}
DEFAULT_METHODS: tuple[str, ...] = tuple(CAM_METHODS)

# ScoreCAM scores each channel of the target layer with a forward pass of the input masked by
# that channel (pytorch-grad-cam 1.5.7 batches 16 masked inputs per pass). Its cost therefore grows
# with the layer's width, and on its own it costs many times more than all of DEFAULT_METHODS,
# which share one pass.
PER_CHANNEL_METHODS: dict[str, type[BaseCAM]] = {"ScoreCAM": ScoreCAM}
# 256 covers BrainCancerNet's last stage (256 channels; 256 passes at 192 px are about 240 GFLOP,
# counted with torch.utils.flop_counter) and rules out ResNet50's layer4 (2048 channels, about
# 5,400 GFLOP at 128 px). NOTE: the limit is a cost estimate, not a timing on the app's hardware.
MAX_PER_CHANNEL_PASSES = 256

# Methods never offered, whatever the model, with the reason.
EXCLUDED_METHODS: dict[str, str] = {
    "AblationCAM": (
        "needs one extra forward pass per channel of the target layer, like ScoreCAM, and "
        "pytorch-grad-cam 1.5.7 swaps the target layer inside the model while it runs without "
        "restoring it when a pass fails, which is unsafe for a model shared by every request"
    ),
}

# The file that train.faithfulness writes into a model folder.
FAITHFULNESS_NAME = "faithfulness.json"
# The entry of faithfulness.json with the scores of a map spread evenly or at random, not a method.
CHANCE_BASELINE_KEY = "chance_baseline"


@dataclass(frozen=True)
class CamCapture:
    """Target-layer activations and gradients for one image and one target class."""

    input_tensor: torch.Tensor  # 1 x C x H x W, the normalized model input
    activations: np.ndarray  # 1 x channels x h x w, float32
    gradients: np.ndarray  # same shape: gradient of the target class logit
    logits: np.ndarray  # num_classes
    target_class: int


@dataclass(frozen=True)
class CamResult:
    """One method's explanation, mapped back onto the original image."""

    method: str
    label: str
    cam: np.ndarray  # H x W float32 in [0, 1], same geometry as the uploaded image
    overlay: np.ndarray  # H x W x 3 uint8 RGB: colormapped CAM over the grayscale slice
    caption: str

    def overlay_image(self) -> Image.Image:
        """Return the overlay as a PIL RGB image."""
        return Image.fromarray(self.overlay, mode="RGB")


# Target layers -------------------------------------------------------------------------------


def _timm_model(model: nn.Module) -> nn.Module:
    return model.model if isinstance(model, BrainTumorClassifier) else model


def default_target_layer(model: nn.Module) -> nn.Module:
    """Return the last stage of ``forward_features``, the layer Grad-CAM usually explains.

    ResNets use ``layer4[-1]`` and BrainCancerNet uses ``stages[-1]``. Other timm models fall
    back to the module named by the last entry of ``feature_info``.
    """
    model = _timm_model(model)
    if hasattr(model, "layer4"):
        return model.layer4[-1]
    if hasattr(model, "stages"):
        return model.stages[-1]
    feature_info = getattr(model, "feature_info", None)
    if feature_info:
        return model.get_submodule(feature_info[-1]["module"])
    raise ValueError(
        f"No default Grad-CAM target layer for {type(model).__name__}: pass target_layer, "
        "for example the last block that forward_features runs."
    )


def _output_channels(layer: nn.Module) -> int | None:
    """Return the channel count of the last convolution or batch norm in ``layer``, if it has one."""
    channels = None
    for module in layer.modules():
        if isinstance(module, nn.Conv2d):
            channels = module.out_channels
        elif isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
    return channels


# Which methods a model can use ---------------------------------------------------------------


def excluded_methods(model: nn.Module, *, target_layer: nn.Module | None = None) -> dict[str, str]:
    """Return each method that cannot explain ``model`` at ``target_layer``, with the reason.

    The result contains ``EXCLUDED_METHODS`` and every per-channel method whose number of extra
    forward passes exceeds ``MAX_PER_CHANNEL_PASSES``.
    """
    layer = target_layer if target_layer is not None else default_target_layer(model)
    channels = _output_channels(layer)
    excluded = dict(EXCLUDED_METHODS)
    for name in PER_CHANNEL_METHODS:
        if channels is None:
            excluded[name] = (
                f"needs one extra forward pass per channel of the target layer, and the channel count "
                f"of {type(layer).__name__} is unknown because it contains no Conv2d or BatchNorm2d"
            )
        elif channels > MAX_PER_CHANNEL_PASSES:
            excluded[name] = (
                f"needs {channels} extra forward passes, one per channel of the target layer, "
                f"more than the limit of {MAX_PER_CHANNEL_PASSES}"
            )
    return excluded


def available_methods(model: nn.Module, *, target_layer: nn.Module | None = None) -> tuple[str, ...]:
    """Return every method name that ``explain_image`` accepts for ``model``, defaults first."""
    excluded = excluded_methods(model, target_layer=target_layer)
    return DEFAULT_METHODS + tuple(name for name in PER_CHANNEL_METHODS if name not in excluded)


def _check_methods(model: nn.Module, layer: nn.Module, methods: Sequence[str]) -> None:
    excluded = excluded_methods(model, target_layer=layer)
    for name in methods:
        if name in excluded:
            raise ValueError(f"{name} is not available for this model: it {excluded[name]}.")
    known = {**CAM_METHODS, **PER_CHANNEL_METHODS}
    unknown = [name for name in methods if name not in known]
    if unknown:
        raise ValueError(f"Unknown CAM methods {unknown}: choose from {list(known)}.")


# EigenCAM without the full SVD ---------------------------------------------------------------


def first_component_projection(activation_batch: np.ndarray) -> np.ndarray:
    """Project each sample's activations on their first principal component, as EigenCAM does.

    Takes a B x C x h x w array and returns B x h x w float32. The result matches
    ``pytorch_grad_cam.utils.svd_on_activations.get_2d_projection`` (1.5.7), sign included.

    The library calls ``np.linalg.svd(..., full_matrices=True)`` on the (h*w) x C matrix of
    centered activations. That builds a C x C matrix of right singular vectors (2048 x 2048 for
    ResNet50) and uses one row of it. The thin SVD below runs the same LAPACK driver (gesdd) on the
    same float32 matrix without building that matrix, and its first row differs only by rounding.
    The sign of a singular vector is arbitrary, and the clipping at 0 that follows keeps one side
    of the projection, so a flipped sign gives the complementary map. The library has no sign rule
    of its own. Its sign is the one the LAPACK build returns, which differs between builds (see
    https://github.com/jacobgil/pytorch-grad-cam/issues/315). An eigenvector of the small Gram
    matrix or ``torch.svd_lowrank`` gives the same component with a sign of its own, so neither can
    reproduce the library's map.

    NOTE: the tests check the match with numpy's OpenBLAS build only.
    """
    activation_batch = np.asarray(activation_batch)
    batch = np.where(np.isnan(activation_batch), 0, activation_batch)
    projections = []
    for sample in batch:
        pixels = sample.reshape(sample.shape[0], -1).T  # one row per spatial position
        centered = pixels - pixels.mean(axis=0)
        _, _, right_vectors = np.linalg.svd(centered, full_matrices=False)
        projections.append((centered @ right_vectors[0]).reshape(sample.shape[1:]))
    return np.asarray(projections, dtype=np.float32)


# The array each EigenCAM variant projects, as in pytorch-grad-cam 1.5.7's eigen_cam.py and eigen_grad_cam.py.
_PROJECTED_ARRAYS = {
    "EigenCAM": lambda capture: capture.activations,
    "EigenGradCAM": lambda capture: capture.gradients * capture.activations,
}


# Shared forward and backward pass ------------------------------------------------------------


@contextmanager
def _outputs_of(layer: nn.Module) -> Iterator[list[torch.Tensor]]:
    outputs: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, args, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


@contextmanager
def _cam_method(method_class: type[BaseCAM], model: nn.Module, layer: nn.Module) -> Iterator[BaseCAM]:
    method = method_class(model=model, target_layers=[layer])
    try:
        yield method
    finally:
        # Calling __exit__ without the error releases the hooks the constructor registered.
        # Using the object as the context manager itself would hide an IndexError raised in
        # the block, because BaseCAM.__exit__ returns True for it (pytorch-grad-cam 1.5.7).
        method.__exit__(None, None, None)


def _check_inputs(model: nn.Module, input_tensor: torch.Tensor) -> None:
    if input_tensor.ndim != 4 or input_tensor.shape[0] != 1:
        raise ValueError(f"Expected one image as a 1 x C x H x W tensor, got shape {tuple(input_tensor.shape)}.")
    if model.training:
        raise ValueError(
            "The model is in training mode, so dropout and batch norm would change the maps: call model.eval() first."
        )


def _check_class(target_class: int, num_classes: int) -> int:
    if not 0 <= target_class < num_classes:
        raise ValueError(f"target_class must be in [0, {num_classes - 1}], got {target_class}.")
    return int(target_class)


def capture_activations_and_gradients(
    model: nn.Module,
    input_tensor: torch.Tensor,
    *,
    target_class: int | None = None,
    target_layer: nn.Module | None = None,
) -> CamCapture:
    """Run one forward pass and record the target layer's activations and their gradient.

    ``target_class`` defaults to the predicted class. The gradient is that of the class logit
    with respect to the layer's output. ``torch.autograd.grad`` computes it through the layers
    after the target layer only. pytorch-grad-cam instead calls ``backward()``, which runs back
    to the input and fills every parameter's ``.grad``, and this function leaves ``.grad``
    untouched. The hook is removed before returning, also when the pass fails.
    """
    model = _timm_model(model)
    _check_inputs(model, input_tensor)
    layer = target_layer if target_layer is not None else default_target_layer(model)
    device = next(model.parameters()).device

    # A caller inside torch.inference_mode() would otherwise get no graph to differentiate.
    # The clone turns a possible inference tensor into one that autograd may save.
    with torch.inference_mode(False), torch.enable_grad(), _outputs_of(layer) as outputs:
        model_input = input_tensor.clone().to(device)
        logits = model(model_input)
        if not outputs:
            raise RuntimeError(f"The target layer {type(layer).__name__} did not run in the model's forward pass.")
        if target_class is None:
            target = int(logits[0].argmax())
        else:
            target = _check_class(target_class, logits.shape[1])
        # A layer that runs more than once contributes its first output, as in pytorch-grad-cam.
        activation = outputs[0]
        gradient = None
        if activation.requires_grad:
            score = ClassifierOutputTarget(target)(logits[0])
            (gradient,) = torch.autograd.grad(score, activation, allow_unused=True)
        if gradient is None:
            raise RuntimeError(
                f"No gradient reached {type(layer).__name__}: the target layer must be on the path "
                "from the input to the logits, with parameters that require gradients."
            )

    return CamCapture(
        input_tensor=model_input.detach(),
        activations=activation.detach().cpu().numpy(),
        gradients=gradient.cpu().numpy(),
        logits=logits[0].detach().cpu().numpy(),
        target_class=target,
    )


@functools.lru_cache(maxsize=None)
def _array_method(name: str) -> BaseCAM:
    # In pytorch-grad-cam 1.5.7 the gradient-based methods compute their map from the arrays given
    # to get_cam_image alone and never read self.model. One object per method, built once on a
    # one-parameter stand-in, skips what BaseCAM.__init__ does to the real model at every call: a
    # model.eval() over all its modules and two hooks. The tests compare every map with the library.
    stand_in = nn.Linear(1, 1)
    method = CAM_METHODS[name](model=stand_in, target_layers=[stand_in])
    method.activations_and_grads.release()
    return method


def _scaled_map(cam: np.ndarray, width: int, height: int) -> np.ndarray:
    # BaseCAM.forward with one target layer (pytorch-grad-cam 1.5.7): clip at 0, scale to [0, 1]
    # and resize to the input, then average over the single layer and scale again.
    per_layer = scale_cam_image(np.maximum(cam, 0), (width, height))
    return scale_cam_image(np.maximum(per_layer, 0))[0]


def cam_maps_from_capture(
    capture: CamCapture,
    model: nn.Module,
    *,
    target_layer: nn.Module | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
) -> dict[str, np.ndarray]:
    """Turn one capture into an input-sized map in [0, 1] per method.

    Gradient-based methods and ScoreCAM run their own ``get_cam_image`` on the captured arrays,
    and the EigenCAM variants use ``first_component_projection``. The tests compare the result
    with ``library_cam_maps``.
    """
    model = _timm_model(model)
    _check_inputs(model, capture.input_tensor)
    layer = target_layer if target_layer is not None else default_target_layer(model)
    _check_methods(model, layer, methods)
    height, width = capture.input_tensor.shape[-2:]
    targets = [ClassifierOutputTarget(capture.target_class)]
    maps = {}
    for name in methods:
        if name in _PROJECTED_ARRAYS:
            cam = first_component_projection(_PROJECTED_ARRAYS[name](capture))
        elif name in CAM_METHODS:
            cam = _array_method(name).get_cam_image(
                capture.input_tensor, layer, targets, capture.activations, capture.gradients, eigen_smooth=False
            )
        else:
            # ScoreCAM runs the real model on masked inputs, so it is built on it for this call only.
            with _cam_method(PER_CHANNEL_METHODS[name], model, layer) as method:
                cam = method.get_cam_image(
                    capture.input_tensor, layer, targets, capture.activations, capture.gradients, eigen_smooth=False
                )
        maps[name] = _scaled_map(cam, width, height)
    return maps


def compute_cam_maps(
    model: nn.Module,
    input_tensor: torch.Tensor,
    target_class: int | None = None,
    *,
    target_layer: nn.Module | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
) -> dict[str, np.ndarray]:
    """Compute every method's input-sized map in [0, 1] from one shared forward and backward pass."""
    model = _timm_model(model)
    _check_inputs(model, input_tensor)
    _check_methods(model, target_layer if target_layer is not None else default_target_layer(model), methods)
    capture = capture_activations_and_gradients(
        model, input_tensor, target_class=target_class, target_layer=target_layer
    )
    return cam_maps_from_capture(capture, model, target_layer=target_layer, methods=methods)


def library_cam_maps(
    model: nn.Module,
    input_tensor: torch.Tensor,
    target_class: int,
    *,
    target_layer: nn.Module | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
) -> dict[str, np.ndarray]:
    """Compute the same maps as ``compute_cam_maps`` with pytorch-grad-cam's usual per-method call.

    Each method runs its own forward pass (and backward pass), and EigenCAM its full SVD. This
    is the reference for tests and benchmarks, not something the app runs.
    """
    model = _timm_model(model)
    _check_inputs(model, input_tensor)
    layer = target_layer if target_layer is not None else default_target_layer(model)
    _check_methods(model, layer, methods)
    maps = {}
    with torch.inference_mode(False), torch.enable_grad():
        model_input = input_tensor.clone()
        for name in methods:
            method_class = CAM_METHODS.get(name) or PER_CHANNEL_METHODS[name]
            with _cam_method(method_class, model, layer) as cam:
                maps[name] = cam(model_input, targets=[ClassifierOutputTarget(target_class)])[0]
    return maps


# Overlays on the original image --------------------------------------------------------------


def _content_box(width: int, height: int) -> tuple[int, int, int, int]:
    """Locate the original pixels inside the padded square that preprocessing builds.

    Padding a white image with the project's own ``square_grayscale`` finds the box without
    repeating its arithmetic, so the two cannot drift apart.
    """
    marker = square_grayscale(Image.new("L", (width, height), 255), max(width, height))
    return Image.fromarray(marker).getbbox()


def _crop_to_content(cam: np.ndarray, side: int, box: tuple[int, int, int, int]) -> np.ndarray:
    left, top, right, bottom = box
    square = cv2.resize(np.asarray(cam, dtype=np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    return np.clip(square[top:bottom, left:right], 0.0, 1.0)


def cam_to_original_geometry(cam: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Map a CAM of the square model input onto an image of ``image_size`` (width, height).

    The map is resized to the padded square and the padding is cut away again.
    """
    width, height = image_size
    return _crop_to_content(cam, max(width, height), _content_box(width, height))


def grayscale_slice(image: Image.Image) -> np.ndarray:
    """Return the slice as an H x W uint8 array at its original size, converted as for the model."""
    width, height = image.size
    left, top, right, bottom = _content_box(width, height)
    return square_grayscale(image, max(width, height))[top:bottom, left:right]


@functools.lru_cache(maxsize=32)
def _caption_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Loading the font takes longer than drawing the caption, and a gallery draws one per method.
    return ImageFont.load_default(size=size)


def _draw_caption(overlay: np.ndarray, caption: str) -> np.ndarray:
    # Only the caption's strip goes through PIL, which keeps a gallery of large slices cheap.
    height, width = overlay.shape[:2]
    font_size = int(np.clip(height // 18, 10, 28))
    font = _caption_font(font_size)
    margin = max(2, font_size // 4)
    _, _, text_right, text_bottom = font.getbbox(caption)
    # A long caption gets a smaller font so that it fits the width, down to 10 px.
    while text_right + 2 * margin > width and font_size > 10:
        font_size = max(10, min(font_size - 1, int(font_size * (width - 2 * margin) / text_right)))
        font = _caption_font(font_size)
        margin = max(2, font_size // 4)
        _, _, text_right, text_bottom = font.getbbox(caption)
    strip_width = min(width, text_right + 2 * margin + 1)
    strip_height = min(height, text_bottom + 2 * margin + 1)
    strip = Image.new("RGB", (strip_width, strip_height), (0, 0, 0))
    ImageDraw.Draw(strip).text((margin, margin), caption, fill=(255, 255, 255), font=font)
    overlay[:strip_height, :strip_width] = np.asarray(strip)
    return overlay


def overlay_cam(
    gray: np.ndarray,
    cam: np.ndarray,
    caption: str | None = None,
    *,
    image_weight: float = 0.5,
    colormap: int = cv2.COLORMAP_JET,
) -> np.ndarray:
    """Blend a colormapped CAM over a grayscale slice of the same size, with an optional caption.

    Returns an H x W x 3 uint8 RGB array. The blend is that of pytorch-grad-cam's
    ``show_cam_on_image`` (1.5.7): ``image_weight`` times the slice plus the rest times the
    colormap, stretched so that the brightest value is 255. It may differ from it by one gray level
    because the stretch rounds instead of truncating. The caption is drawn in the top-left corner,
    which is background in most MRI slices.
    """
    if gray.shape != cam.shape:
        raise ValueError(f"The slice {gray.shape} and the CAM {cam.shape} must have the same height and width.")
    if not 0.0 <= image_weight <= 1.0:
        raise ValueError(f"image_weight must be in [0, 1], got {image_weight}.")
    heatmap = cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * np.clip(cam, 0.0, 1.0)), colormap), cv2.COLOR_BGR2RGB)
    slice_rgb = cv2.cvtColor(np.ascontiguousarray(gray, dtype=np.uint8), cv2.COLOR_GRAY2RGB)
    # cv2 blends the uint8 images in one pass. show_cam_on_image makes float copies of the whole
    # image, which took about half of explain_image's time for a 512 x 512 slice (cProfile,
    # BrainCancerNet at 192 px, one CPU thread).
    blended = cv2.addWeighted(heatmap, 1.0 - image_weight, slice_rgb, image_weight, 0.0, dtype=cv2.CV_32F)
    peak = float(blended.max())
    overlay = cv2.convertScaleAbs(blended, alpha=255.0 / peak) if peak > 0 else np.zeros_like(heatmap)
    return _draw_caption(overlay, caption) if caption else overlay


# Gallery --------------------------------------------------------------------------------------


def explain_image(
    classifier: BrainTumorClassifier,
    image: Image.Image,
    *,
    target_class: int | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    target_layer: nn.Module | None = None,
    draw_caption: bool = True,
    caption_notes: Mapping[str, str] | None = None,
    probabilities: Sequence[float] | None = None,
) -> list[CamResult]:
    """Explain one slice with every method in ``methods``, from a single forward and backward pass.

    ``target_class`` defaults to the predicted class. Any other class index shows what in the
    slice speaks for that class, so a user can ask why the model did not pick it. Each result contains the
    map and the overlay at the image's original width and height, and a caption that names the
    method, the class and its probability, followed by ``caption_notes[method]`` when given.
    ``probabilities`` are the calibrated class probabilities the caller has already computed for
    this slice. Without them, the caption's probability is computed here.
    """
    input_tensor = classifier.preprocess([image])
    capture = capture_activations_and_gradients(
        classifier.model, input_tensor, target_class=target_class, target_layer=target_layer
    )
    if probabilities is None:
        probabilities = _caption_probabilities(classifier, input_tensor, capture.logits)
    maps = cam_maps_from_capture(capture, classifier.model, target_layer=target_layer, methods=methods)

    label = classifier.label_names[capture.target_class]
    probability = float(probabilities[capture.target_class])
    gray = grayscale_slice(image)
    # The padding box is the same for every method, so it is computed once per image.
    side, box = max(image.size), _content_box(*image.size)
    notes = caption_notes or {}

    results = []
    for name, input_map in maps.items():
        cam = _crop_to_content(input_map, side, box)
        caption = f"{name} · {label} {probability:.0%}"
        if notes.get(name):
            caption += f" · {notes[name]}"
        overlay = overlay_cam(gray, cam, caption if draw_caption else None)
        results.append(CamResult(method=name, label=label, cam=cam, overlay=overlay, caption=caption))
    logger.debug("Computed %d CAM maps for class %r", len(results), label)
    return results


def _caption_probabilities(
    classifier: BrainTumorClassifier, input_tensor: torch.Tensor, logits: np.ndarray
) -> torch.Tensor:
    """Return the calibrated probabilities that ``predict_proba`` gives, from the explained pass's logits.

    The maps explain the unmirrored pass. A classifier that averages each slice with its mirror
    image needs one more pass, on the mirror alone, for the caption to match its output.
    """
    scores = torch.from_numpy(logits).float()
    if classifier.test_time_flip:
        with torch.no_grad():
            scores = (scores + classifier.model(input_tensor.flip(-1))[0].float()) / 2
    return classifier.calibrated_probabilities(scores[None])[0]


# Gallery order from measured faithfulness ----------------------------------------------------


def read_faithfulness(folder: str | Path) -> dict[str, dict[str, float]] | None:
    """Read ``faithfulness.json`` from a model folder, or return None when the folder has none.

    Raises ``ValueError`` when the file exists but is not a JSON object of per-method objects.
    """
    path = Path(folder) / FAITHFULNESS_NAME
    if not path.is_file():
        return None
    try:
        scores = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}). Write it again with python -m train.faithfulness."
        ) from error
    if not isinstance(scores, dict) or not all(isinstance(value, dict) for value in scores.values()):
        raise ValueError(
            f"{path} must map each method name to an object of scores, as python -m train.faithfulness writes it."
        )
    return scores


def order_by_faithfulness(
    methods: Sequence[str], scores: Mapping[str, Mapping[str, float]], *, key: str = "energy_pointing"
) -> tuple[list[str], dict[str, str]]:
    """Sort ``methods`` by the measured ``key`` (highest first) and return a caption note per method.

    Methods without a finite score keep their relative order after the measured ones and get no
    note. The note is the score as a percentage, for example ``"energy pointing 87%"``.
    """

    def score_of(name: str) -> float | None:
        value = scores.get(name, {}).get(key)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    measured = sorted((name for name in methods if score_of(name) is not None), key=score_of, reverse=True)
    unmeasured = [name for name in methods if score_of(name) is None]
    label = key.replace("_", " ")
    notes = {name: f"{label} {score_of(name):.0%}" for name in measured}
    return measured + unmeasured, notes
