"""Gradio interface: upload a slice, get class probabilities and a gallery of Grad-CAM overlays.

The interface only translates between Gradio and ``Predictor``, which does the work and
can be tested without a browser.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping

import gradio as gr
from PIL import ExifTags, Image

from brain_tumor_classifier.image_io import LoadedImage, load_upload
from brain_tumor_classifier.predictor import NO_IMAGE_MESSAGE, InvalidImageError, Prediction, Predictor

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
# Seconds between reading an upload and deleting its file. The browser requests the upload's preview
# at the same moment as the prediction, and on a slow connection the preview request may reach the
# server after the prediction has been made.
UPLOAD_DELETE_DELAY_S = 10.0
# Memory for decoded uploads, all users together: about 1,000 grayscale slices of 512 x 512 pixels.
DECODED_UPLOADS_MAX_BYTES = 256 * 2**20
# Shown when a model switch or the Classify button finds neither the upload's file nor its decoded slice.
UPLOAD_GONE_MESSAGE = (
    "This slice is no longer on the server: each upload is deleted shortly after it has been read, and "
    "its decoded slice is kept only for a while. Upload the slice again."
)
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


class _UploadStore:
    """Reads uploads, deletes their files shortly afterwards, and keeps the decoded slices a while.

    Only files that came through Gradio's upload route are deleted or kept, and none that Gradio
    keeps in its cache on purpose, such as example slices. Gradio stores an upload as
    ``<cache>/<SHA-256 of the bytes>/<file name>``, so one upload path always names the same
    content, and the same file uploaded twice gets the same path. Decoded slices are therefore kept
    by path. A model switch or another click on Classify reuses one after its file is gone. So does
    a second request for the same file whose upload landed before the first request deleted it.

    A file is deleted ``delete_delay_s`` after it is read, because the browser requests the upload's
    preview at the same moment as the prediction. Kept slices and the messages of uploads that
    failed to decode are dropped ``max_age_s`` after their last use. A slice larger than
    ``max_bytes / 16`` is not kept, and the oldest go first once all take more than ``max_bytes``.
    Handlers get the store before the demo exists, so the demo is attached once it has been built.
    """

    def __init__(
        self,
        *,
        max_age_s: float = DEFAULT_CACHE_MAX_AGE_S,
        max_bytes: int = DECODED_UPLOADS_MAX_BYTES,
        delete_delay_s: float = UPLOAD_DELETE_DELAY_S,
    ) -> None:
        self.demo: gr.Blocks | None = None
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.delete_delay_s = delete_delay_s
        # Both map an upload path to (time of last use, value), oldest use first.
        self._decoded: OrderedDict[str, tuple[float, LoadedImage]] = OrderedDict()
        self._failures: OrderedDict[str, tuple[float, tuple[str, str]]] = OrderedDict()
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None

    def is_upload(self, path: str) -> bool:
        """Return whether ``path`` came through Gradio's upload route and is not kept by Gradio."""
        if self.demo is None or path not in getattr(self.demo, "upload_file_set", ()):
            return False
        # Gradio's own cache cleaner spares the same files.
        return not any(path in getattr(block, "keep_in_cache", ()) for block in self.demo.blocks.values())

    def read(self, path: str) -> LoadedImage:
        """Decode the file at ``path``, or return its kept slice. Raises ``InvalidImageError``."""
        if not self.is_upload(path):
            return load_upload(path)
        self._start_sweeper()
        try:
            # Taken before reading, so that a later upload of the same file is recognized.
            file_status = os.stat(path)
        except OSError:
            file_status = None
        try:
            return self._read(path)
        finally:
            # Also after a kept slice: the same file may have been uploaded again after its deletion.
            if file_status is not None:
                self._delete_later(path, file_status)

    def _read(self, path: str) -> LoadedImage:
        decoded = self._use(self._decoded, path)
        if decoded is not None:
            return decoded
        failure = self._use(self._failures, path)
        if failure is not None:
            message, reason = failure
            raise InvalidImageError(message, reason=reason)
        try:
            loaded = load_upload(path)
        except FileNotFoundError:
            # Deleted between the check and the read, by an earlier request's timer.
            raise InvalidImageError(UPLOAD_GONE_MESSAGE, reason="upload deleted") from None
        except InvalidImageError as error:
            if not os.path.isfile(path):
                raise InvalidImageError(UPLOAD_GONE_MESSAGE, reason="upload deleted") from None
            self._remember(self._failures, path, (str(error), error.reason))
            raise
        if _image_bytes(loaded) <= self.max_bytes // 16:
            self._remember(self._decoded, path, loaded)
        return loaded

    def _use(self, entries: OrderedDict, path: str) -> Any:
        with self._lock:
            entry = entries.get(path)
            if entry is None:
                return None
            entries[path] = (time.monotonic(), entry[1])
            entries.move_to_end(path)
            return entry[1]

    def _remember(self, entries: OrderedDict, path: str, value: Any) -> None:
        with self._lock:
            entries[path] = (time.monotonic(), value)
            entries.move_to_end(path)
            while sum(_image_bytes(image) for _, image in self._decoded.values()) > self.max_bytes:
                self._decoded.popitem(last=False)

    def drop_expired(self) -> None:
        """Forget the slices and failure messages last used more than ``max_age_s`` ago."""
        now = time.monotonic()
        with self._lock:
            for entries in (self._decoded, self._failures):
                while entries and now - next(iter(entries.values()))[0] > self.max_age_s:
                    entries.popitem(last=False)

    def _start_sweeper(self) -> None:
        with self._lock:
            if self._sweeper is not None:
                return
            self._sweeper = threading.Thread(target=self._sweep, name="upload-store-sweeper", daemon=True)
        self._sweeper.start()

    def _sweep(self) -> None:
        while True:
            time.sleep(min(max(self.max_age_s, 1.0), 60.0))
            self.drop_expired()

    def _delete_later(self, path: str, file_status: os.stat_result) -> None:
        if self.delete_delay_s <= 0:
            self._delete(path, file_status)
            return
        timer = threading.Timer(self.delete_delay_s, self._delete, args=(path, file_status))
        timer.daemon = True
        timer.start()

    def _delete(self, path: str, file_status: os.stat_result) -> None:
        # A later upload of the same file replaces it with a new file, which its own request deletes.
        # The empty folder stays: removing it could race Gradio creating it again for that upload.
        try:
            current = os.stat(path)
            if (current.st_ino, current.st_mtime_ns) == (file_status.st_ino, file_status.st_mtime_ns):
                os.unlink(path)
        except OSError:
            pass
        # NOTE: Gradio's set of uploaded paths keeps this one. Gradio's cleaner removes a path from
        # it only when it deletes the file itself, so the set grows by one path per distinct upload.


def _image_bytes(loaded: LoadedImage) -> int:
    return loaded.image.width * loaded.image.height * len(loaded.image.getbands())


def _uploaded_path(payload: Any) -> str | None:
    # With preprocess=False the handler receives the upload component's file data as a dict.
    # Reading the file here, instead of letting Gradio decode it, lets a bad upload fail
    # with the predictor's message rather than a generic processing error.
    if payload is None:
        return None
    path = payload.get("path") if isinstance(payload, dict) else None
    if not path:
        raise InvalidImageError(
            "The upload contained no image file. Upload the slice as a PNG, JPEG, TIFF or DICOM file.",
            reason="no image file in the upload",
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
    # Gradio saves each gallery image as <cache>/<hash of its bytes>/image.jpeg and rewrites that
    # file in place, so two requests for the same slice would share files, and one request could cut
    # off the other's download. A random EXIF ImageUniqueID per request keeps their files apart.
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.ImageUniqueID] = uuid.uuid4().hex
    exif_bytes = exif.tobytes()
    items = []
    for result in prediction.gallery:
        overlay = result.overlay_image()
        overlay.info["exif"] = exif_bytes
        items.append((overlay, result.caption))
    return items


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


def _answer(predictor: Predictor, prediction: Prediction, decoding_notices: list[str]) -> tuple:
    """Return the four outputs for one prediction, withholding the tumor type when it has a warning."""
    # Notices describe how the upload was decoded, for example which frame of a multi-frame file was
    # used. They reach API clients in the notes output.
    notices = [*decoding_notices, *(str(notice) for notice in getattr(prediction, "notices", None) or [])]
    warning = _prediction_warning(prediction)
    if warning:
        # The browser also shows the warning as a pop-up. API clients get it in the notes output, since
        # gradio_client 2.7.2 left the job status log empty for it.
        gr.Warning(warning)
        return WITHHELD_LABEL, [], _describe(predictor, answered=True), _notes(warning, notices)
    return prediction.probabilities, _gallery(prediction), _describe(predictor, answered=True), _notes(None, notices)


def _cleared(predictor: Predictor) -> tuple:
    """Return the four outputs for a page without a slice: no result, and the selected model."""
    return None, [], _describe(predictor, answered=False), ""


def _classify_with(predictor: Predictor, image: Any, uploads: _UploadStore) -> tuple:
    try:
        path = _uploaded_path(image)
        if path is None:
            raise InvalidImageError(NO_IMAGE_MESSAGE, reason="no image")
        loaded = uploads.read(path)
        prediction = predictor.predict(loaded.image)
    except InvalidImageError as error:
        # The message may contain the uploaded file's name, so only its fixed reason is logged.
        logger.info("Rejected an invalid image (%s) for model %s", error.reason, predictor.name)
        raise gr.Error(str(error), duration=ERROR_DURATION_S, print_exception=False) from error
    except Exception as error:
        logger.exception("Prediction with model %s failed", predictor.name)
        raise gr.Error(
            "The prediction failed because of an internal error. The server log has the details.",
            duration=ERROR_DURATION_S,
            print_exception=False,
        ) from error
    # The slice reaches the predictor decoded, so the notices about its decoding come from here.
    return _answer(predictor, prediction, loaded.notices)


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


def _make_handler(
    predictors: Mapping[str, Predictor], uploads: _UploadStore | None = None
) -> Callable[[Any, str], tuple]:
    uploads = uploads or _UploadStore()

    def classify(image: Any, model_name: str) -> tuple[dict[str, float] | str, list, str, str]:
        return _classify_with(_lookup(predictors, model_name), image, uploads)

    return classify


def _shown_upload(image: Any, upload_file: Any) -> Any:
    # The page has two upload boxes, and an upload to one empties the other, so at most one
    # contains a file.
    return image if image is not None else upload_file


def _make_page_handler(
    predictors: Mapping[str, Predictor], uploads: _UploadStore | None = None
) -> Callable[[Any, Any, str], tuple]:
    uploads = uploads or _UploadStore()

    def classify_shown(image: Any, upload_file: Any, model_name: str) -> tuple:
        return _classify_with(_lookup(predictors, model_name), _shown_upload(image, upload_file), uploads)

    return classify_shown


def _make_model_switch_handler(
    predictors: Mapping[str, Predictor], uploads: _UploadStore | None = None
) -> Callable[[Any, Any, str], tuple]:
    uploads = uploads or _UploadStore()

    def switch_model(image: Any, upload_file: Any, model_name: str) -> tuple:
        # A new model choice classifies the current slice again, so the result on screen always
        # comes from the model named under it. Without a slice, the old result is cleared.
        predictor = _lookup(predictors, model_name)
        upload = _shown_upload(image, upload_file)
        if upload is None:
            return _cleared(predictor)
        return _classify_with(predictor, upload, uploads)

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
    analytics are off. Each upload is deleted from Gradio's cache ``UPLOAD_DELETE_DELAY_S`` seconds
    after it has been read, and its decoded slice is kept in memory until ``cache_max_age_s``
    seconds after its last use, so that a model switch can classify it again. Every
    ``cache_max_age_s`` seconds Gradio deletes the overlays and unread uploads older than that,
    and it deletes all cached files when the server stops. Set ``GRADIO_TEMP_DIR`` before calling
    this: the demo keeps the cache folder it was built with, and uploads that Gradio copies there
    from another folder are left to that age limit.
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

    uploads = _UploadStore(max_age_s=cache_max_age_s)
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
        # them together. Only the first is part of the API. Progress and the "Error" badge show on
        # the result boxes only, because on the model line the badge covered the model's name.
        classifying = {
            "outputs": outputs,
            "show_progress_on": [probabilities, gallery],
            "preprocess": False,
            "concurrency_id": "classify",
        }
        image.upload(fn=_make_handler(predictors, uploads), inputs=[image, model], api_name="predict", **classifying)
        page_only = {**classifying, "api_visibility": "private"}
        upload_file.upload(fn=_make_handler(predictors, uploads), inputs=[upload_file, model], **page_only)
        page_inputs = [image, upload_file, model]
        submit.click(fn=_make_page_handler(predictors, uploads), inputs=page_inputs, **page_only)
        # A menu choice made with the mouse fired .input twice (Gradio 6.31), which classified the
        # slice twice. .change fires once.
        model.change(fn=_make_model_switch_handler(predictors, uploads), inputs=page_inputs, **page_only)
        # Page-only updates that run no model skip the queue.
        instant = {"api_visibility": "private", "queue": False}
        model.change(
            fn=lambda name: _gallery_note(_lookup(predictors, name)), inputs=model, outputs=gallery_note, **instant
        )
        # Clearing the slice clears the result, which would otherwise seem to belong to no slice.
        for box in (image, upload_file):
            box.clear(fn=lambda name: _cleared(_lookup(predictors, name)), inputs=model, outputs=outputs, **instant)
        # A new upload in one box empties the other, so that the page classifies the newer file.
        image.upload(fn=lambda: None, outputs=upload_file, **instant)
        upload_file.upload(fn=lambda: None, outputs=image, **instant)
    uploads.demo = demo
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue_size)
    return demo
