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
from typing import Mapping, Sequence, Union

from PIL import Image

from .classifier import BrainTumorClassifier
from .explain import (
    CAM_METHODS,
    CHANCE_BASELINE_KEY,
    DEFAULT_METHODS,
    FAITHFULNESS_NAME,
    CamResult,
    explain_image,
    order_by_faithfulness,
    read_faithfulness,
)
from .image_io import InvalidImageError, LoadedImage, load_upload

__all__ = ["InvalidImageError", "ModelSourceError", "Prediction", "Predictor", "load_image", "is_hub_repo_id"]

logger = logging.getLogger(__name__)

ImageInput = Union[Image.Image, str, os.PathLike]
NO_IMAGE_MESSAGE = "No image was given. Upload an MRI slice as a PNG, JPEG, TIFF or DICOM file."

# A Hub repository id is "name" or "namespace/name", made of letters, digits, "-", "_" and ".".
_HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelSourceError(FileNotFoundError):
    """The model folder or Hub repository cannot provide a complete export."""


@dataclass(frozen=True)
class Prediction:
    """Class probabilities for one slice and the Grad-CAM gallery for its top class or a requested one."""

    probabilities: dict[str, float]
    top_label: str
    model_name: str
    gallery: list[CamResult] = field(default_factory=list)
    # True when the classifier's out-of-scope score is above its calibrated threshold. ``warning``
    # then explains why the probabilities should not be read as a tumor type.
    out_of_scope: bool = False
    warning: str | None = None
    # Notices from decoding the upload, such as which frame of a multi-frame file was used. They
    # may name the uploaded file, so they are shown to its sender and never logged.
    notices: list[str] = field(default_factory=list)


OUT_OF_SCOPE_WARNING = (
    "This image does not look like the brain MRI slices the model was trained on, so its class "
    "probabilities are not meaningful. Upload a single 2D brain MRI slice."
)
# An out-of-scope image with a side shorter than this gets a sentence on its size: MRI slices
# have hundreds of pixels per side, so such a file is more likely a thumbnail or an icon.
SMALL_IMAGE_SIDE = 32


def out_of_scope_warning(width: int, height: int) -> str:
    """Return the warning for an out-of-scope image, naming its size when that is the likely cause."""
    if min(width, height) >= SMALL_IMAGE_SIDE:
        return OUT_OF_SCOPE_WARNING
    return (
        f"{OUT_OF_SCOPE_WARNING} This image is only {width} x {height} pixels, which suggests a thumbnail "
        "or an icon: upload the slice at its full resolution."
    )


def is_hub_repo_id(source: str) -> bool:
    """Return whether ``source`` has the form of a Hub repository id rather than a folder path."""
    return bool(_HUB_REPO_ID.match(source)) and not source.startswith(".")


def load_image(image: ImageInput | None) -> Image.Image:
    """Decode a PIL image or an image file into an 8-bit ``L`` or ``RGB`` image.

    ``image_io.load_upload`` does the decoding, including DICOM. Raises ``InvalidImageError``
    that names the problem and the fix.
    """
    return _load(image).image


def _load(image: ImageInput | None) -> LoadedImage:
    if image is None:
        raise InvalidImageError(NO_IMAGE_MESSAGE, reason="no image")
    if not isinstance(image, (Image.Image, str, os.PathLike)):
        raise InvalidImageError(
            f"Expected a PIL image or an image file path, got {type(image).__name__}. "
            "Pass the slice as a PIL image or a path.",
            reason="wrong input type",
        )
    return load_upload(image)


class Predictor:
    """A classifier loaded once, which returns probabilities and a Grad-CAM gallery per slice.

    The constructor puts the classifier in eval mode. Calls are serialized with a lock,
    because the Grad-CAM hooks are registered on the shared model. With ``faithfulness`` (the
    contents of ``faithfulness.json``), the gallery lists the methods by measured energy pointing,
    highest first, and each caption ends with that score.
    """

    def __init__(
        self,
        classifier: BrainTumorClassifier,
        *,
        name: str,
        methods: Sequence[str] = DEFAULT_METHODS,
        faithfulness: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        unknown = [method for method in methods if method not in CAM_METHODS]
        if unknown:
            raise ValueError(f"Unknown CAM methods {unknown}: choose from {list(CAM_METHODS)}.")
        self.classifier = classifier.eval()
        self.name = name
        ordered, self._caption_notes = order_by_faithfulness(methods, faithfulness or {})
        self.methods = tuple(ordered)
        # Energy pointing of a map spread evenly over the slice: the boxes' mean share of the
        # slice area, which the caption scores are compared with. None when it was not measured.
        chance = ((faithfulness or {}).get(CHANCE_BASELINE_KEY) or {}).get("box_area_share")
        self.energy_pointing_chance = float(chance) if isinstance(chance, (int, float)) else None
        # True when the gallery captions end with each method's measured energy pointing.
        self.captions_quote_energy_pointing = bool(self._caption_notes)
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls, source: str | os.PathLike, *, name: str | None = None, methods: Sequence[str] = DEFAULT_METHODS
    ) -> "Predictor":
        """Load a model from a folder written by ``save_pretrained`` or from a Hub repository id.

        ``name`` defaults to the folder name or the repository id. A folder's ``faithfulness.json``
        sets the gallery order, and Hub models keep the default order. Raises ``ModelSourceError``
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
        faithfulness = None
        if path.is_dir():
            try:
                faithfulness = read_faithfulness(path)
            except ValueError as error:
                # The file only orders the gallery, so a damaged one must not stop the model loading.
                logger.warning("Ignoring %s, the gallery keeps its default order: %s", path / FAITHFULNESS_NAME, error)
        return cls(classifier, name=name or default_name, methods=methods, faithfulness=faithfulness)

    @property
    def label_names(self) -> list[str]:
        """Class labels in the order of the model's outputs."""
        return list(self.classifier.label_names)

    @property
    def architecture(self) -> str:
        """timm architecture name of the loaded model."""
        return self.classifier.architecture

    def _class_index(self, target_class: int | str) -> int:
        labels = self.label_names
        if isinstance(target_class, str) and target_class in labels:
            return labels.index(target_class)
        if isinstance(target_class, int) and not isinstance(target_class, bool) and 0 <= target_class < len(labels):
            return target_class
        raise ValueError(f"Unknown target_class {target_class!r}: pass one of {labels} or an index below {len(labels)}.")

    def predict(
        self, image: ImageInput | None, *, explain: bool = True, target_class: int | str | None = None
    ) -> Prediction:
        """Classify one slice and, when ``explain`` is true, explain one class with every method.

        The gallery explains ``target_class`` (an index or a label) when given, else the top
        class, so a user can ask why the model did not pick another class. An out-of-scope image
        gets no gallery, because its class probabilities, and so their explanations, are not meaningful. Raises
        ``InvalidImageError`` for a missing, empty or unreadable image, and ``ValueError`` for
        an unknown ``target_class``.
        """
        explained_class = None if target_class is None else self._class_index(target_class)
        loaded = _load(image)
        pil_image = loaded.image
        started = time.perf_counter()
        with self._lock:
            features, logits = self.classifier.predict_features_and_logits([pil_image])
            probabilities = self.classifier.calibrated_probabilities(logits)[0].tolist()
            out_of_scope = bool(self.classifier.is_out_of_scope(features)[0])
            top_index = max(range(len(probabilities)), key=probabilities.__getitem__)
            gallery = []
            if explain and not out_of_scope:
                gallery = explain_image(
                    self.classifier,
                    pil_image,
                    target_class=top_index if explained_class is None else explained_class,
                    methods=self.methods,
                    caption_notes=self._caption_notes,
                    probabilities=probabilities,
                )
        top_label = self.label_names[top_index]
        # Only sizes and the result are logged, never pixel data or file names.
        logger.info(
            "%s: %d x %d slice -> %s (%.3f)%s in %.2f s",
            self.name,
            pil_image.width,
            pil_image.height,
            top_label,
            probabilities[top_index],
            ", out of scope" if out_of_scope else "",
            time.perf_counter() - started,
        )
        return Prediction(
            probabilities=dict(zip(self.label_names, probabilities)),
            top_label=top_label,
            model_name=self.name,
            gallery=gallery,
            out_of_scope=out_of_scope,
            warning=out_of_scope_warning(pil_image.width, pil_image.height) if out_of_scope else None,
            notices=list(loaded.notices),
        )
