"""Grad-CAM gallery latency: the shared pass against pytorch-grad-cam's per-method calls, in one run.

    python benchmarks/gallery_latency.py --uploads 30

For each architecture (BrainCancerNet at 192 px, ResNet50 at 128 px; random weights unless
``--model-dir`` names a run folder) the script measures:

1. the gallery of every default method for one 512 x 512 grayscale slice, built from the shared
   pass (``explain_image``) and from one library call per method (``library_cam_maps``) with the
   same overlays. The two are timed alternately, ``--repeats`` times each, and the ratio of the
   medians is reported, also for the maps alone and for the gradient-based methods alone (without
   EigenCAM and EigenGradCAM, whose full SVD dominates the library's time for ResNet50);
2. the p50 and p95 latency of ``Predictor.predict`` (classification plus gallery) over
   ``--uploads`` different 512 x 512 grayscale PNG files;
3. the time and size of encoding that gallery's overlays in each file format the app could send
   (Gradio encodes every gallery image before it answers), timed alternately like 1.

Each variant runs in this process, one after the other, so another load on the machine slows
both sides of a ratio alike only when it is steady. The record stores the load average.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
# The package is run from the checkout, not installed, so the repository root goes on the path.
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from brain_tumor_classifier import BrainTumorClassifier  # noqa: E402
from brain_tumor_classifier.explain import (  # noqa: E402
    DEFAULT_METHODS,
    cam_to_original_geometry,
    compute_cam_maps,
    explain_image,
    grayscale_slice,
    library_cam_maps,
    overlay_cam,
)
from brain_tumor_classifier.predictor import Predictor  # noqa: E402
from train.hardware import cpu_model_name  # noqa: E402

ARCHITECTURES = {"braincancernet": 192, "resnet50": 128}
SLICE_SIDE = 512
GRADIENT_METHODS = tuple(name for name in DEFAULT_METHODS if not name.startswith("Eigen"))


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def synthetic_slice(seed: int, side: int = SLICE_SIDE) -> Image.Image:
    """Return a grayscale slice-like image: a noisy bright ellipse with a brighter blob placed by ``seed``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    head = ((x - 0.5) / 0.4) ** 2 + ((y - 0.5) / 0.45) ** 2 < 1
    blob_x, blob_y = rng.uniform(0.3, 0.7, size=2)
    pixels = 120.0 * head + 100.0 * np.exp(-((x - blob_x) ** 2 + (y - blob_y) ** 2) / 0.004)
    pixels += rng.normal(0, 8, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")


def library_gallery(classifier: BrainTumorClassifier, image: Image.Image, target_class: int) -> list[np.ndarray]:
    """Build the gallery from pytorch-grad-cam's per-method calls, with the same overlays as explain_image."""
    maps = library_cam_maps(classifier.model, classifier.preprocess([image]), target_class)
    gray = grayscale_slice(image)
    return [overlay_cam(gray, cam_to_original_geometry(cam, image.size), name) for name, cam in maps.items()]


def alternate(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Time each variant ``repeats`` times, alternating between them, and return median milliseconds."""
    for run in variants.values():
        run()  # warm-up: first-call allocations and lazy initialization
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            timings[name].append((time.perf_counter() - started) * 1000)
    return {name: round(statistics.median(values), 1) for name, values in timings.items()}


def measure_gallery(classifier: BrainTumorClassifier, repeats: int) -> dict:
    """Compare the shared pass with the library's per-method calls on one slice."""
    image = synthetic_slice(seed=0)
    input_tensor = classifier.preprocess([image])
    target = int(classifier.predict_proba([image])[0].argmax())
    model = classifier.model
    medians = alternate(
        {
            "gallery_shared": lambda: explain_image(classifier, image, target_class=target),
            "gallery_library": lambda: library_gallery(classifier, image, target),
            "maps_shared": lambda: compute_cam_maps(model, input_tensor, target),
            "maps_library": lambda: library_cam_maps(model, input_tensor, target),
            "gradient_maps_shared": lambda: compute_cam_maps(model, input_tensor, target, methods=GRADIENT_METHODS),
            "gradient_maps_library": lambda: library_cam_maps(model, input_tensor, target, methods=GRADIENT_METHODS),
        },
        repeats,
    )
    return {
        "median_ms": medians,
        "gallery_ratio": round(medians["gallery_library"] / medians["gallery_shared"], 2),
        "maps_ratio": round(medians["maps_library"] / medians["maps_shared"], 2),
        "gradient_maps_ratio": round(medians["gradient_maps_library"] / medians["gradient_maps_shared"], 2),
    }


ENCODING_FORMATS = ("png", "webp", "jpeg")


def measure_encoding(classifier: BrainTumorClassifier, repeats: int) -> dict:
    """Time Gradio's encoding of one slice's gallery overlays in each of ENCODING_FORMATS."""
    from gradio.processing_utils import encode_pil_to_bytes

    image = synthetic_slice(seed=0)
    target = int(classifier.predict_proba([image])[0].argmax())
    overlays = [Image.fromarray(result.overlay) for result in explain_image(classifier, image, target_class=target)]

    def encoder(file_format: str) -> Callable[[], list[bytes]]:
        return lambda: [encode_pil_to_bytes(overlay, file_format) for overlay in overlays]

    medians = alternate({file_format: encoder(file_format) for file_format in ENCODING_FORMATS}, repeats)
    sizes = {file_format: sum(map(len, encoder(file_format)())) for file_format in ENCODING_FORMATS}
    return {
        "overlays": len(overlays),
        "median_ms": medians,
        "total_kib": {file_format: round(size / 1024) for file_format, size in sizes.items()},
    }


def measure_predict(predictor: Predictor, uploads: int, images_dir: Path | None = None) -> dict:
    """Time ``predict`` with its gallery on ``uploads`` different files and return p50 and p95.

    The files are the first ``uploads`` images under ``images_dir``, else synthetic PNG slices.
    A trained model flags synthetic slices as out of scope and then skips the gallery, so only
    real slices time it. ``with_gallery`` counts the uploads that got a gallery.
    """
    with tempfile.TemporaryDirectory() as folder:
        if images_dir is not None:
            paths = sorted(path for path in images_dir.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)[:uploads]
            if not paths:
                raise ValueError(f"--images {images_dir} has no image files ({', '.join(IMAGE_SUFFIXES)}).")
        else:
            paths = []
            for index in range(uploads):
                path = Path(folder) / f"upload-{index}.png"
                synthetic_slice(seed=index + 1).save(path)
                paths.append(path)
        predictor.predict(paths[0])  # warm-up
        latencies = []
        with_gallery = 0
        for path in paths:
            started = time.perf_counter()
            prediction = predictor.predict(path)
            latencies.append((time.perf_counter() - started) * 1000)
            with_gallery += bool(prediction.gallery)
    return {
        "uploads": len(paths),
        "with_gallery": with_gallery,
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p95_ms": round(float(np.percentile(latencies, 95)), 1),
    }


def load_classifier(architecture: str, model_dir: Path | None) -> tuple[BrainTumorClassifier, str]:
    if model_dir is None:
        torch.manual_seed(0)
        classifier = BrainTumorClassifier(architecture=architecture, input_size=ARCHITECTURES[architecture])
        return classifier.eval(), "random initialization"
    classifier = BrainTumorClassifier.from_pretrained(str(model_dir))
    if classifier.architecture != architecture:
        raise SystemExit(f"error: {model_dir} contains a {classifier.architecture} model, not {architecture}.")
    return classifier.eval(), str(model_dir)


def parse_model_dirs(values: list[str]) -> dict[str, Path]:
    model_dirs = {}
    for value in values:
        architecture, separator, folder = value.partition("=")
        if not separator or architecture not in ARCHITECTURES:
            raise SystemExit(
                f"error: --model-dir expects ARCHITECTURE=FOLDER with one of {list(ARCHITECTURES)}, got {value!r}."
            )
        model_dirs[architecture] = Path(folder)
    return model_dirs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uploads", type=int, default=30, help="Uploads timed for the predict percentiles.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs of each gallery variant.")
    parser.add_argument(
        "--model-dir",
        action="append",
        default=[],
        metavar="ARCHITECTURE=FOLDER",
        help="Use a run folder's weights for one architecture, e.g. resnet50=space/models/resnet50 (repeatable).",
    )
    parser.add_argument(
        "--architectures", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES), help="Models to time."
    )
    parser.add_argument(
        "--images", type=Path, default=None, help="Folder of real slices (searched recursively) for the predict timing. Default: synthetic slices."
    )
    parser.add_argument(
        "--test-time-flip",
        choices=["config", "on", "off"],
        default="config",
        help="Average each slice with its mirror image as config.json says, or force it on or off, "
        "to time the cost of the second pass (default: config).",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "gallery_latency.json")
    args = parser.parse_args()
    if args.images is not None and not args.images.is_dir():
        parser.error(f"--images {args.images} is not a folder. Pass a folder of MRI slices.")
    if args.uploads < 1 or args.repeats < 1:
        parser.error(f"--uploads and --repeats must be at least 1, got {args.uploads} and {args.repeats}.")
    model_dirs = parse_model_dirs(args.model_dir)

    results = []
    for architecture in args.architectures:
        classifier, weights = load_classifier(architecture, model_dirs.get(architecture))
        if args.test_time_flip != "config":
            classifier.test_time_flip = args.test_time_flip == "on"
        gallery = measure_gallery(classifier, args.repeats)
        predict = measure_predict(Predictor(classifier, name=architecture), args.uploads, args.images)
        encoding = measure_encoding(classifier, args.repeats)
        results.append(
            {
                "architecture": architecture,
                "input_size": classifier.input_size,
                "test_time_flip": classifier.test_time_flip,
                "weights": weights,
                "methods": list(DEFAULT_METHODS),
                **gallery,
                "predict_with_gallery": predict,
                "gallery_encoding": encoding,
            }
        )
        print(
            f"{architecture:15s} gallery {gallery['median_ms']['gallery_shared']:8.1f} ms shared vs "
            f"{gallery['median_ms']['gallery_library']:8.1f} ms library ({gallery['gallery_ratio']}x, "
            f"maps {gallery['maps_ratio']}x, gradient maps {gallery['gradient_maps_ratio']}x); predict p50 "
            f"{predict['p50_ms']} ms, p95 {predict['p95_ms']} ms ({predict['with_gallery']} of {predict['uploads']} with a gallery); encoding "
            + ", ".join(
                f"{name} {encoding['median_ms'][name]} ms {encoding['total_kib'][name]} KiB" for name in ENCODING_FORMATS
            ),
            flush=True,
        )

    import cv2

    record = {
        "command": shlex.join(["python", "benchmarks/gallery_latency.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_model_name(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "opencv_threads": cv2.getNumThreads(),
            "load_average_1_5_15_min": [round(value, 2) for value in os.getloadavg()],
            "torch": torch.__version__,
            "grad_cam": importlib.metadata.version("grad-cam"),
        },
        "slice": f"{SLICE_SIDE} x {SLICE_SIDE} grayscale, synthetic",
        "predict_uploads": "synthetic slices" if args.images is None else str(args.images),
        "repeats": args.repeats,
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
