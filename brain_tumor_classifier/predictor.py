"""Predictions with Grad-CAM galleries for single slices, without any UI dependency.

``Predictor`` loads a ``BrainTumorClassifier`` once and validates each input image before
inference. The Gradio app and the tests both call it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

from PIL import Image, UnidentifiedImageError

from .classifier import BrainTumorClassifier
from .explain import CAM_METHODS, DEFAULT_METHODS, CamResult, explain_image

__all__ = ["InvalidImageError", "ModelSourceError", "Prediction", "Predictor", "load_image", "is_hub_repo_id"]

logger = logging.getLogger(__name__)

ImageInput = Union[Image.Image, str, os.PathLike]

# A Hub repository id is "name" or "namespace/name", made of letters, digits, "-", "_" and ".".
_HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class InvalidImageError(ValueError):
    """The input is missing, unreadable or not an image the model can use."""


class ModelSourceError(FileNotFoundError):
    """The model folder or Hub repository cannot provide a complete export."""


@dataclass(frozen=True)
class Prediction:
    """Class probabilities for one slice and the Grad-CAM gallery for its top class."""

    probabilities: dict[str, float]
    top_label: str
    model_name: str
    gallery: list[CamResult] = field(default_factory=list)


def is_hub_repo_id(source: str) -> bool:
    """Return whether ``source`` has the form of a Hub repository id rather than a folder path."""
    return bool(_HUB_REPO_ID.match(source)) and not source.startswith(".")


def load_image(image: ImageInput | None) -> Image.Image:
    """Return a fully decoded PIL image, raising ``InvalidImageError`` that names the problem and the fix."""
    if image is None:
        raise InvalidImageError("No image was given. Upload an MRI slice as a PNG, JPEG or TIFF file.")
    if isinstance(image, Image.Image):
        return _checked_size(image)
    if not isinstance(image, (str, os.PathLike)):
        raise InvalidImageError(
            f"Expected a PIL image or an image file path, got {type(image).__name__}. "
            "Pass the slice as a PIL image or a path."
        )
    return _checked_size(_read_image_file(Path(image)))


def _read_image_file(path: Path) -> Image.Image:
    # Messages name the file but show none of its content. They go back to the user who sent
    # the file, and the predictor never logs them.
    name = path.name
    if not path.is_file():
        raise InvalidImageError(f"Image file {name!r} was not found. Check the path and upload the file again.")
    if path.stat().st_size == 0:
        raise InvalidImageError(f"Image file {name!r} is empty (0 bytes). Upload the slice again.")
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()
    except UnidentifiedImageError as error:
        raise InvalidImageError(
            f"{name!r} is not an image file that Pillow can read. Upload the slice as a PNG, JPEG or TIFF file."
        ) from error
    except Image.DecompressionBombError as error:
        raise InvalidImageError(
            f"{name!r} has too many pixels to decode safely. Downscale the slice to a few thousand pixels per side."
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        # Pillow raises these for truncated or corrupt files after the header was recognized.
        raise InvalidImageError(
            f"{name!r} is damaged or truncated and cannot be decoded ({type(error).__name__}). "
            "Export the slice again as a PNG file."
        ) from error


def _checked_size(image: Image.Image) -> Image.Image:
    if image.width < 1 or image.height < 1:
        raise InvalidImageError(f"The image has no pixels ({image.width} x {image.height}). Upload a real slice.")
    return image


class Predictor:
    """A classifier loaded once, which returns probabilities and a Grad-CAM gallery per slice.

    The constructor puts the classifier in eval mode. Calls are serialized with a lock,
    because the Grad-CAM hooks are registered on the shared model.
    """

    def __init__(
        self,
        classifier: BrainTumorClassifier,
        *,
        name: str,
        methods: Sequence[str] = DEFAULT_METHODS,
    ) -> None:
        unknown = [method for method in methods if method not in CAM_METHODS]
        if unknown:
            raise ValueError(f"Unknown CAM methods {unknown}: choose from {list(CAM_METHODS)}.")
        self.classifier = classifier.eval()
        self.name = name
        self.methods = tuple(methods)
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls, source: str | os.PathLike, *, name: str | None = None, methods: Sequence[str] = DEFAULT_METHODS
    ) -> "Predictor":
        """Load a model from a folder written by ``save_pretrained`` or from a Hub repository id.

        ``name`` defaults to the folder name or the repository id. Raises ``ModelSourceError``
        when the folder is missing or incomplete.
        """
        text = os.fspath(source)
        path = Path(text).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelSourceError(
                    f"Model folder {path} has no config.json. Point to a folder written by "
                    "BrainTumorClassifier.save_pretrained (config.json and model.safetensors)."
                )
            source_id, default_name = str(path), path.resolve().name
        elif is_hub_repo_id(text):
            source_id, default_name = text, text
        else:
            raise ModelSourceError(
                f"Model folder {path} was not found. Pass an existing folder written by "
                "save_pretrained, or a Hub repository id such as ORG/NAME."
            )

        started = time.perf_counter()
        try:
            classifier = BrainTumorClassifier.from_pretrained(source_id)
        except OSError as error:
            # huggingface_hub reports missing files, unknown or gated repositories and
            # offline mode with OSError subclasses.
            raise ModelSourceError(
                f"Loading model {source_id} failed: {str(error).rstrip('.')}. Check the folder or repository id, "
                "and the network connection for a Hub model."
            ) from error
        logger.info(
            "Loaded %s (%s, %d labels) in %.1f s",
            source_id,
            classifier.architecture,
            len(classifier.label_names),
            time.perf_counter() - started,
        )
        return cls(classifier, name=name or default_name, methods=methods)

    @property
    def label_names(self) -> list[str]:
        """Class labels in the order of the model's outputs."""
        return list(self.classifier.label_names)

    @property
    def architecture(self) -> str:
        """timm architecture name of the loaded model."""
        return self.classifier.architecture

    def predict(self, image: ImageInput | None, *, explain: bool = True) -> Prediction:
        """Classify one slice and, when ``explain`` is true, explain its top class with every method.

        Raises ``InvalidImageError`` for a missing, empty or unreadable image.
        """
        pil_image = load_image(image)
        started = time.perf_counter()
        with self._lock:
            probabilities = self.classifier.predict_proba([pil_image])[0].tolist()
            top_index = max(range(len(probabilities)), key=probabilities.__getitem__)
            gallery = []
            if explain:
                gallery = explain_image(
                    self.classifier, pil_image, target_class=top_index, methods=self.methods
                )
        top_label = self.label_names[top_index]
        # Only sizes and the result are logged, never pixel data or file names.
        logger.info(
            "%s: %d x %d slice -> %s (%.3f) in %.2f s",
            self.name,
            pil_image.width,
            pil_image.height,
            top_label,
            probabilities[top_index],
            time.perf_counter() - started,
        )
        return Prediction(
            probabilities=dict(zip(self.label_names, probabilities)),
            top_label=top_label,
            model_name=self.name,
            gallery=gallery,
        )
