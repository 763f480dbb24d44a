"""Gradio interface: upload a slice, get class probabilities and a gallery of Grad-CAM overlays.

The interface only translates between Gradio and ``Predictor``, which does the work and
can be tested without a browser.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import gradio as gr
from PIL import Image

from brain_tumor_classifier.predictor import InvalidImageError, Prediction, Predictor

__all__ = ["DISCLAIMER", "build_demo", "example_images"]

logger = logging.getLogger(__name__)

DISCLAIMER = (
    "**Research use only, not for diagnosis.** This demo classifies single 2D MRI slices into the "
    "classes the model was trained on and cannot detect other conditions, or tell a healthy scan "
    "from a tumor unless a class for it exists. Do not use its output for any clinical decision."
)
EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DEFAULT_CACHE_MAX_AGE_S = 600


def example_images(folder: str | Path | None, *, max_count: int = 12) -> list[str]:
    """Return up to ``max_count`` image paths from ``folder``, sorted by name, or none if it is unset."""
    if folder is None:
        return []
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Examples folder {folder} was not found. Pass an existing folder of PNG or JPEG slices.")
    paths = sorted(path for path in folder.iterdir() if path.suffix.lower() in EXAMPLE_SUFFIXES)
    return [str(path) for path in paths[:max_count]]


def _describe(predictor: Predictor, *, answered: bool) -> str:
    classifier = predictor.classifier
    prefix = "Answer from model" if answered else "Selected model:"
    return (
        f"{prefix} **{predictor.name}** (architecture `{predictor.architecture}`, "
        f"{classifier.input_size} px input, classes: {', '.join(predictor.label_names)})."
    )


def _uploaded_path(payload: Any) -> str | None:
    # With preprocess=False the handler receives the Image component's file data as a dict.
    # Reading the file here, instead of letting Gradio decode it, lets a bad upload fail
    # with the predictor's message rather than a generic processing error.
    if payload is None:
        return None
    path = payload.get("path") if isinstance(payload, dict) else None
    if not path:
        raise InvalidImageError("The upload contained no image file. Upload the slice as a PNG, JPEG or TIFF file.")
    return path


def _gallery(prediction: Prediction) -> list[tuple[Image.Image, str]]:
    return [(result.overlay_image(), result.caption) for result in prediction.gallery]


def _make_handler(predictors: Mapping[str, Predictor]) -> Callable[[Any, str], tuple]:
    def classify(image: Any, model_name: str) -> tuple[dict[str, float], list, str]:
        predictor = predictors.get(model_name)
        if predictor is None:
            logger.warning("Rejected a request for unknown model %r", model_name)
            raise gr.Error(f"Unknown model {model_name!r}. Choose one of: {', '.join(predictors)}.", print_exception=False)
        try:
            prediction = predictor.predict(_uploaded_path(image))
        except InvalidImageError as error:
            # The message may contain the uploaded file's name, so only the fact is logged.
            logger.info("Rejected an invalid image for model %s", model_name)
            raise gr.Error(str(error), print_exception=False) from error
        except Exception as error:
            logger.exception("Prediction with model %s failed", model_name)
            raise gr.Error(
                "The prediction failed because of an internal error. The server log has the details.",
                print_exception=False,
            ) from error
        return prediction.probabilities, _gallery(prediction), _describe(predictor, answered=True)

    return classify


def build_demo(
    predictors: Predictor | Mapping[str, Predictor],
    *,
    examples_dir: str | Path | None = None,
    title: str = "Brain tumor MRI classifier",
    cache_max_age_s: int = DEFAULT_CACHE_MAX_AGE_S,
) -> gr.Blocks:
    """Build the demo for one predictor or several, keyed by the name shown in the model menu.

    The prediction endpoint is ``/predict`` with inputs ``(image, model)``, and a client may
    leave out ``model`` to use the first predictor. Blocks have no flagging, and usage analytics are
    off. Every ``cache_max_age_s`` seconds Gradio deletes the uploads and rendered overlays
    in its cache that are older than that, and it deletes all of them when the server stops.
    """
    if isinstance(predictors, Predictor):
        predictors = {predictors.name: predictors}
    if not predictors:
        raise ValueError("build_demo needs at least one Predictor.")
    predictors = dict(predictors)
    names = list(predictors)
    examples = example_images(examples_dir)

    # delete_cache = (how often to check, maximum age), both in seconds.
    delete_cache = (cache_max_age_s, cache_max_age_s)
    with gr.Blocks(title=title, delete_cache=delete_cache, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}")
        gr.Markdown(DISCLAIMER, elem_id="disclaimer")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="MRI slice", sources=["upload", "clipboard"])
                model = gr.Dropdown(choices=names, value=names[0], label="Model", visible=len(names) > 1)
                submit = gr.Button("Classify", variant="primary")
            with gr.Column():
                max_labels = max(len(predictor.label_names) for predictor in predictors.values())
                probabilities = gr.Label(label="Class probabilities", num_top_classes=max_labels)
                model_line = gr.Markdown(_describe(predictors[names[0]], answered=False))
        gallery = gr.Gallery(
            label="Grad-CAM overlays for the top class", columns=4, format="png", object_fit="contain"
        )
        if examples:
            gr.Examples(examples=examples, inputs=image, label="Example slices")

        gr.on(
            triggers=[submit.click, image.upload],
            fn=_make_handler(predictors),
            inputs=[image, model],
            outputs=[probabilities, gallery, model_line],
            api_name="predict",
            preprocess=False,
        )
    return demo
