"""Grad-CAM explanations for one MRI slice, from one forward and one backward pass.

pytorch-grad-cam runs a forward and a backward pass for every method. Here the
activations and gradients of the target layer are captured once, and each method
turns them into a map with its own ``get_cam_image``, followed by the library's
``scale_cam_image`` and ``aggregate_multi_layers``. ``library_cam_maps`` computes
the same maps with the library's usual one-call-per-method API, so tests can check
that both paths agree.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

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
    XGradCAM,
)
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import scale_cam_image, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from .classifier import BrainTumorClassifier
from .preprocessing import square_grayscale

__all__ = [
    "CAM_METHODS",
    "DEFAULT_METHODS",
    "CamCapture",
    "CamResult",
    "capture_activations_and_gradients",
    "cam_maps_from_capture",
    "compute_cam_maps",
    "library_cam_maps",
    "default_target_layer",
    "cam_to_original_geometry",
    "grayscale_slice",
    "overlay_cam",
    "explain_image",
]

logger = logging.getLogger(__name__)

# Display name -> pytorch-grad-cam class. ScoreCAM and AblationCAM are left out because they
# need one forward pass per channel of the target layer (2048 for ResNet50).
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


# Shared forward and backward pass ------------------------------------------------------------


@contextmanager
def _hooks_on(model: nn.Module, layer: nn.Module) -> Iterator[ActivationsAndGradients]:
    hooks = ActivationsAndGradients(model, [layer], reshape_transform=None)
    try:
        yield hooks
    finally:
        hooks.release()


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


def _check_inputs(model: nn.Module, input_tensor: torch.Tensor, methods: Sequence[str] = ()) -> None:
    if input_tensor.ndim != 4 or input_tensor.shape[0] != 1:
        raise ValueError(f"Expected one image as a 1 x C x H x W tensor, got shape {tuple(input_tensor.shape)}.")
    if model.training:
        raise ValueError(
            "The model is in training mode, so dropout and batch norm would change the maps: call model.eval() first."
        )
    unknown = [name for name in methods if name not in CAM_METHODS]
    if unknown:
        raise ValueError(f"Unknown CAM methods {unknown}: choose from {list(CAM_METHODS)}.")


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
    """Run one forward and one backward pass and record the target layer's activations and gradients.

    ``target_class`` defaults to the predicted class. The hooks are removed before returning,
    also when the pass fails. Parameter gradients are cleared afterwards.
    """
    model = _timm_model(model)
    _check_inputs(model, input_tensor)
    layer = target_layer if target_layer is not None else default_target_layer(model)
    device = next(model.parameters()).device

    # A caller inside torch.inference_mode() would otherwise get no graph to backpropagate through.
    # The clone turns a possible inference tensor into one that autograd may save.
    with torch.inference_mode(False), torch.enable_grad(), _hooks_on(model, layer) as hooks:
        model_input = input_tensor.clone().to(device)
        logits = hooks(model_input)
        if target_class is None:
            target = int(logits[0].argmax())
        else:
            target = _check_class(target_class, logits.shape[1])
        model.zero_grad(set_to_none=True)
        ClassifierOutputTarget(target)(logits[0]).backward()
        model.zero_grad(set_to_none=True)
        if not hooks.gradients:
            raise RuntimeError(
                f"No gradient reached {type(layer).__name__}: the target layer must be on the path "
                "from the input to the logits, with parameters that require gradients."
            )
        activations = hooks.activations[0].numpy()
        gradients = hooks.gradients[0].numpy()

    return CamCapture(
        input_tensor=model_input.detach(),
        activations=activations,
        gradients=gradients,
        logits=logits[0].detach().cpu().numpy(),
        target_class=target,
    )


def cam_maps_from_capture(
    capture: CamCapture,
    model: nn.Module,
    *,
    target_layer: nn.Module | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
) -> dict[str, np.ndarray]:
    """Turn one capture into an input-sized map in [0, 1] per method, using each method's own code.

    The steps after ``get_cam_image`` are those ``BaseCAM.forward`` runs for a single target
    layer in pytorch-grad-cam 1.5.7. The tests compare the result with ``library_cam_maps``.
    """
    model = _timm_model(model)
    _check_inputs(model, capture.input_tensor, methods)
    layer = target_layer if target_layer is not None else default_target_layer(model)
    targets = [ClassifierOutputTarget(capture.target_class)]
    maps = {}
    for name in methods:
        with _cam_method(CAM_METHODS[name], model, layer) as method:
            cam = method.get_cam_image(
                capture.input_tensor, layer, targets, capture.activations, capture.gradients, eigen_smooth=False
            )
            target_size = method.get_target_width_height(capture.input_tensor)
            per_layer = [scale_cam_image(np.maximum(cam, 0), target_size)[:, None, :]]
            maps[name] = method.aggregate_multi_layers(per_layer)[0]
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
    _check_inputs(_timm_model(model), input_tensor, methods)
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

    Each method runs its own forward and backward pass. This is the reference for tests, not
    something the app runs.
    """
    model = _timm_model(model)
    _check_inputs(model, input_tensor, methods)
    layer = target_layer if target_layer is not None else default_target_layer(model)
    maps = {}
    with torch.inference_mode(False), torch.enable_grad():
        model_input = input_tensor.clone()
        for name in methods:
            with CAM_METHODS[name](model=model, target_layers=[layer]) as cam:
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


def cam_to_original_geometry(cam: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Map a CAM of the square model input onto an image of ``image_size`` (width, height).

    The map is resized to the padded square and the padding is cut away again.
    """
    width, height = image_size
    side = max(width, height)
    left, top, right, bottom = _content_box(width, height)
    square = cv2.resize(np.asarray(cam, dtype=np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    return np.clip(square[top:bottom, left:right], 0.0, 1.0)


def grayscale_slice(image: Image.Image) -> np.ndarray:
    """Return the slice as an H x W uint8 array at its original size, converted as for the model."""
    width, height = image.size
    left, top, right, bottom = _content_box(width, height)
    return square_grayscale(image, max(width, height))[top:bottom, left:right]


def _draw_caption(overlay: np.ndarray, caption: str) -> np.ndarray:
    canvas = Image.fromarray(overlay, mode="RGB")
    font_size = int(np.clip(canvas.height // 18, 10, 28))
    font = ImageFont.load_default(size=font_size)
    draw = ImageDraw.Draw(canvas)
    margin = max(2, font_size // 4)
    left, top, right, bottom = draw.textbbox((margin, margin), caption, font=font)
    draw.rectangle((0, 0, right + margin, bottom + margin), fill=(0, 0, 0))
    draw.text((margin, margin), caption, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def overlay_cam(
    gray: np.ndarray,
    cam: np.ndarray,
    caption: str | None = None,
    *,
    image_weight: float = 0.5,
    colormap: int = cv2.COLORMAP_JET,
) -> np.ndarray:
    """Blend a colormapped CAM over a grayscale slice of the same size, with an optional caption.

    Returns an H x W x 3 uint8 RGB array. The caption is drawn in the top-left corner,
    which is background in most MRI slices.
    """
    if gray.shape != cam.shape:
        raise ValueError(f"The slice {gray.shape} and the CAM {cam.shape} must have the same height and width.")
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32) / 255.0
    overlay = show_cam_on_image(rgb, cam, use_rgb=True, colormap=colormap, image_weight=image_weight)
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
) -> list[CamResult]:
    """Explain one slice with every method in ``methods``, from a single forward and backward pass.

    ``target_class`` defaults to the predicted class. Each result contains the map and the
    overlay at the image's original width and height, and a caption that names the method,
    the class and its probability.
    """
    input_tensor = classifier.preprocess([image])
    capture = capture_activations_and_gradients(
        classifier.model, input_tensor, target_class=target_class, target_layer=target_layer
    )
    maps = cam_maps_from_capture(capture, classifier.model, target_layer=target_layer, methods=methods)

    label = classifier.label_names[capture.target_class]
    probabilities = torch.softmax(torch.from_numpy(capture.logits).float() / classifier.temperature, dim=0)
    probability = float(probabilities[capture.target_class])
    gray = grayscale_slice(image)

    results = []
    for name, input_map in maps.items():
        cam = cam_to_original_geometry(input_map, image.size)
        caption = f"{name}: {label} ({probability:.0%})"
        overlay = overlay_cam(gray, cam, caption if draw_caption else None)
        results.append(CamResult(method=name, label=label, cam=cam, overlay=overlay, caption=caption))
    logger.debug("Computed %d CAM maps for class %r", len(results), label)
    return results
