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

__all__ = [
    "CONCURRENCY_LIMIT",
    "DISCLAIMER",
    "MAX_QUEUE_SIZE",
    "MAX_UPLOAD_BYTES",
    "build_demo",
    "example_images",
    "launch_options",
]

logger = logging.getLogger(__name__)


# Gradio encodes every gallery image before it responds: 8 overlays took 4.6 ms as JPEG against 373 ms
# as PNG (benchmarks/gallery_latency.py), and JPEG keeps the colour maps and captions readable.
GALLERY_FORMAT = "jpeg"


def _max_upload_bytes() -> int:
    # image_io (the upload decoder) owns the size limit when it is installed. Older versions of
    # the package have no image_io, and then the app uses the same 20 MiB.
    try:
        from brain_tumor_classifier import image_io
    except ModuleNotFoundError as error:
        if error.name != "brain_tumor_classifier.image_io":
            raise
        return 20 * 1024 * 1024
    for name in ("MAX_FILE_SIZE_BYTES", "MAX_FILE_BYTES"):
        if isinstance(getattr(image_io, name, None), int):
            return getattr(image_io, name)
    return 20 * 1024 * 1024


# Largest upload in bytes. Gradio rejects a larger file in the browser and at its upload route,
# before the file reaches the server's disk.
MAX_UPLOAD_BYTES = _max_upload_bytes()

# Requests processed at the same time, all models together. Predictor serializes inference per
# model with a lock, so a higher limit only lets uploads, decoding and gallery encoding overlap
# with inference. On the 2-core development machine, 16 gradio_client clients sending 500
# requests (benchmarks/load_test.py, results in benchmarks/README.md) completed 2.80 requests/s
# at a limit of 1, 3.05 at 2 and 3.04 at 4. Only the run at 4 lost a request, because the
# server cut off a gallery download.
CONCURRENCY_LIMIT = 2
# Requests that may wait for a free slot. Gradio 6.31 rejects any further request at once: the
# browser shows "This application is currently busy. Please try again." and gradio_client raises
# QueueError. At the measured 3 requests/s, the last of 32 waiting requests waits about 11 s.
MAX_QUEUE_SIZE = 32


def launch_options() -> dict[str, Any]:
    """Return the keyword arguments that every ``demo.launch`` call of this app passes.

    ``run_history=False`` turns off Gradio's run history (added in Gradio 6.24 and on by default),
    which keeps each call's inputs and outputs, references to the uploaded slice among them, in the
    browser's localStorage and offers them again at ``/gradio_api/runs``. With it off, the browser
    also deletes the runs that earlier visits saved.
    """
    return {"max_file_size": MAX_UPLOAD_BYTES, "run_history": False}

DISCLAIMER = (
    "**Research use only, not for diagnosis.** This demo classifies single 2D MRI slices into the "
    "classes the model was trained on and cannot detect other conditions, or tell a healthy scan "
    "from a tumor unless a class for it exists. Do not use its output for any clinical decision."
)
EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DEFAULT_CACHE_MAX_AGE_S = 600
# None keeps an error pop-up open until the user closes it. With Gradio's default of 10 s the
# message vanished and left only an "Error" badge on the outputs, without the reason or the fix.
ERROR_DURATION_S = None
# Shown in the probabilities box in place of a tumor type when the prediction carries a warning.
WITHHELD_LABEL = "Not classified"
WITHHELD_EXPLANATION = "No tumor type and no Grad-CAM overlays are shown for this image."
# Used when a prediction is marked out of scope but carries no warning text of its own.
OUT_OF_SCOPE_WARNING = (
    "This image does not look like the MRI slices the model was trained on, so its class "
    "probabilities would not mean anything. Upload a single 2D brain MRI slice."
)


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
    # With preprocess=False the handler receives the upload component's file data as a dict.
    # Reading the file here, instead of letting Gradio decode it, lets a bad upload fail
    # with the predictor's message rather than a generic processing error.
    if payload is None:
        return None
    path = payload.get("path") if isinstance(payload, dict) else None
    if not path:
        raise InvalidImageError(
            "The upload contained no image file. Upload the slice as a PNG, JPEG, TIFF or DICOM file."
        )
    return path


def _gallery_note(predictor: Predictor) -> str:
    """Return the text under the gallery, which explains the overlays and their captions."""
    text = "Each overlay shows where one Grad-CAM method finds evidence for the top class."
    if not predictor.captions_quote_energy_pointing:
        return text
    text += (
        " The methods are ordered by *energy pointing*, which each caption ends with: the average share "
        "of the map's energy inside the tumor's bounding box over this model's test slices."
    )
    if predictor.energy_pointing_chance is not None:
        text += (
            f" A map spread evenly over the slice would score {predictor.energy_pointing_chance:.1%}, "
            "the boxes' share of the slice."
        )
    return text + " The score describes the method on those slices, not on this one."


def _gallery(prediction: Prediction) -> list[tuple[Image.Image, str]]:
    return [(result.overlay_image(), result.caption) for result in prediction.gallery]


def _prediction_warning(prediction: Prediction) -> str | None:
    # Prediction gained out_of_scope and warning after the UI was written, so they are read with
    # defaults that keep older versions of the package working.
    warning = getattr(prediction, "warning", None)
    if not warning and getattr(prediction, "out_of_scope", False):
        warning = OUT_OF_SCOPE_WARNING
    return warning or None


def _notes(warning: str | None, notices: list[str]) -> str:
    """Return the Markdown shown under the probabilities: the warning first, then the notices."""
    parts = []
    if warning:
        parts.append(f"### ⚠️ Warning\n\n**{warning}**\n\n{WITHHELD_EXPLANATION}")
    if notices:
        parts.extend(f"ℹ️ {notice}" for notice in notices)
    return "\n\n".join(parts)


def _answer(predictor: Predictor, prediction: Prediction) -> tuple:
    """Return the four outputs for one prediction, withholding the tumor type when it has a warning."""
    # Notices describe how the upload was decoded, for example which frame of a multi-frame file was
    # used. They reach API clients in the notes output.
    notices = [str(notice) for notice in getattr(prediction, "notices", None) or []]
    warning = _prediction_warning(prediction)
    if warning:
        # The browser also shows the warning as a pop-up. API clients get it in the notes output, since
        # gradio_client 2.7.2 left the job status log empty for it.
        gr.Warning(warning)
        return WITHHELD_LABEL, [], _describe(predictor, answered=True), _notes(warning, notices)
    return prediction.probabilities, _gallery(prediction), _describe(predictor, answered=True), _notes(None, notices)


def _classify_with(predictor: Predictor, image: Any) -> tuple:
    try:
        prediction = predictor.predict(_uploaded_path(image))
    except InvalidImageError as error:
        # The message may contain the uploaded file's name, so only the fact is logged.
        logger.info("Rejected an invalid image for model %s", predictor.name)
        raise gr.Error(str(error), duration=ERROR_DURATION_S, print_exception=False) from error
    except Exception as error:
        logger.exception("Prediction with model %s failed", predictor.name)
        raise gr.Error(
            "The prediction failed because of an internal error. The server log has the details.",
            duration=ERROR_DURATION_S,
            print_exception=False,
        ) from error
    return _answer(predictor, prediction)


def _lookup(predictors: Mapping[str, Predictor], model_name: str) -> Predictor:
    predictor = predictors.get(model_name)
    if predictor is None:
        logger.warning("Rejected a request for unknown model %r", model_name)
        raise gr.Error(
            f"Unknown model {model_name!r}. Choose one of: {', '.join(predictors)}.",
            duration=ERROR_DURATION_S,
            print_exception=False,
        )
    return predictor


def _make_handler(predictors: Mapping[str, Predictor]) -> Callable[[Any, str], tuple]:
    def classify(image: Any, model_name: str) -> tuple[dict[str, float] | str, list, str, str]:
        return _classify_with(_lookup(predictors, model_name), image)

    return classify


def _shown_upload(image: Any, upload_file: Any) -> Any:
    # The page has two upload boxes, and an upload to one empties the other, so at most one
    # contains a file.
    return image if image is not None else upload_file


def _make_page_handler(predictors: Mapping[str, Predictor]) -> Callable[[Any, Any, str], tuple]:
    def classify_shown(image: Any, upload_file: Any, model_name: str) -> tuple:
        return _classify_with(_lookup(predictors, model_name), _shown_upload(image, upload_file))

    return classify_shown


def _make_model_switch_handler(predictors: Mapping[str, Predictor]) -> Callable[[Any, Any, str], tuple]:
    def switch_model(image: Any, upload_file: Any, model_name: str) -> tuple:
        # A new model choice classifies the current slice again, so the result on screen always
        # comes from the model named under it. Without a slice, the old result is cleared.
        predictor = _lookup(predictors, model_name)
        upload = _shown_upload(image, upload_file)
        if upload is None:
            return None, [], _describe(predictor, answered=False), ""
        return _classify_with(predictor, upload)

    return switch_model


def build_demo(
    predictors: Predictor | Mapping[str, Predictor],
    *,
    default_model: str | None = None,
    examples_dir: str | Path | None = None,
    title: str = "Brain tumor MRI classifier",
    cache_max_age_s: int = DEFAULT_CACHE_MAX_AGE_S,
    concurrency_limit: int = CONCURRENCY_LIMIT,
    max_queue_size: int = MAX_QUEUE_SIZE,
) -> gr.Blocks:
    """Build the demo for one predictor or several, keyed by the name shown in the model menu.

    ``default_model`` names the model selected at first, by default the first one. The
    prediction endpoint is ``/predict`` with inputs ``(image, model)`` and outputs
    ``(probabilities, gallery, model line, notes)``. A client may leave out ``model`` to use the
    default. Requests beyond ``concurrency_limit`` running and ``max_queue_size`` waiting are
    rejected with Gradio's "busy, try again" message. Blocks have no flagging, and usage
    analytics are off. Every ``cache_max_age_s`` seconds Gradio deletes the uploads and rendered
    overlays in its cache that are older than that, and it deletes all of them when the server stops.
    """
    if isinstance(predictors, Predictor):
        predictors = {predictors.name: predictors}
    if not predictors:
        raise ValueError("build_demo needs at least one Predictor.")
    predictors = dict(predictors)
    names = list(predictors)
    default_model = names[0] if default_model is None else default_model
    if default_model not in predictors:
        raise ValueError(f"default_model {default_model!r} is not one of the models: {', '.join(names)}.")
    examples = example_images(examples_dir)

    # delete_cache = (how often to check, maximum age), both in seconds.
    delete_cache = (cache_max_age_s, cache_max_age_s)
    with gr.Blocks(title=title, delete_cache=delete_cache, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}")
        gr.Markdown(DISCLAIMER, elem_id="disclaimer")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="MRI slice", sources=["upload", "clipboard"], elem_id="slice")
                # The image box accepts only files that the browser calls images, which leaves out
                # DICOM. This box takes any file and sends it to the same decoder.
                upload_file = gr.File(
                    label="Or a DICOM file (.dcm), or another file the image box rejects",
                    file_count="single",
                    # Below about 170 px the box's label covers its upload icon.
                    height=170,
                    elem_id="slice-file",
                )
                model = gr.Dropdown(
                    choices=names, value=default_model, label="Model", visible=len(names) > 1, elem_id="model"
                )
                submit = gr.Button("Classify", variant="primary", elem_id="classify")
            with gr.Column():
                max_labels = max(len(predictor.label_names) for predictor in predictors.values())
                probabilities = gr.Label(label="Class probabilities", num_top_classes=max_labels, elem_id="probabilities")
                # Markdown shows no label, but the label names the output in the API description.
                notes = gr.Markdown("", label="Notes", elem_id="notes")
                model_line = gr.Markdown(
                    _describe(predictors[default_model], answered=False), label="Model", elem_id="model-line"
                )
        # The heading is a Markdown line rather than the gallery's own label, which would cover the
        # caption drawn into the first overlay. The label still names the output in the API description.
        gr.Markdown("**Grad-CAM overlays for the top class**", elem_id="gallery-heading")
        gallery = gr.Gallery(
            label="Grad-CAM overlays for the top class",
            show_label=False,
            columns=4,
            format=GALLERY_FORMAT,
            object_fit="contain",
            elem_id="gallery",
        )
        gallery_note = gr.Markdown(_gallery_note(predictors[default_model]), elem_id="gallery-note")
        if examples:
            gr.Examples(examples=examples, inputs=image, label="Example slices")

        outputs = [probabilities, gallery, model_line, notes]
        # Every classifying listener shares one concurrency group, so concurrency_limit counts
        # them together. Only the first is part of the API.
        image.upload(
            fn=_make_handler(predictors),
            inputs=[image, model],
            outputs=outputs,
            api_name="predict",
            preprocess=False,
            concurrency_id="classify",
        )
        page_only = {"outputs": outputs, "api_visibility": "private", "preprocess": False, "concurrency_id": "classify"}
        upload_file.upload(fn=_make_handler(predictors), inputs=[upload_file, model], **page_only)
        submit.click(fn=_make_page_handler(predictors), inputs=[image, upload_file, model], **page_only)
        model.input(fn=_make_model_switch_handler(predictors), inputs=[image, upload_file, model], **page_only)
        model.input(
            fn=lambda name: _gallery_note(_lookup(predictors, name)),
            inputs=model,
            outputs=gallery_note,
            api_visibility="private",
            queue=False,
        )
        # A new upload in one box empties the other, so that the page classifies the newer file.
        image.upload(fn=lambda: None, outputs=upload_file, api_visibility="private", queue=False)
        upload_file.upload(fn=lambda: None, outputs=image, api_visibility="private", queue=False)
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue_size)
    return demo
