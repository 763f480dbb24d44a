"""Shared fixtures: a tiny saved model, a synthetic slice, and the real data set when present."""

import os
import shutil
import tempfile

# Tests must never reach the network: no Hub downloads, no Gradio usage analytics.
# huggingface_hub reads HF_HUB_OFFLINE once on import, so this runs before any test module loads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

# Gradio, gradio_client and the app cache files under GRADIO_TEMP_DIR, and several Gradio modules
# read it on import. A folder of this test session's own keeps those files out of the shared
# /tmp/gradio, and pytest_sessionfinish deletes it.
SESSION_GRADIO_DIR = tempfile.mkdtemp(prefix="brain-tumor-tests-gradio-")
os.environ.setdefault("GRADIO_TEMP_DIR", SESSION_GRADIO_DIR)

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from brain_tumor_classifier import BrainTumorClassifier  # noqa: E402

# The real slices sit beside the checkout; BRAIN_TUMOR_MRI_DIR points elsewhere.
DATA_DIR = Path(
    os.environ.get("BRAIN_TUMOR_MRI_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "brain-tumor-mri")
)
TINY_INPUT_SIZE = 64
SLICE_SIZE = (80, 56)  # width, height: deliberately not square


@pytest.fixture(scope="session", autouse=True)
def float32_auto_precision():
    """Make ``--mixed-precision auto`` (the default) train in float32 whatever CPU runs the suite.

    Otherwise the tiny training runs would use bf16 on some machines and float32 on others.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("train.hardware.cpu_has_native_bf16", lambda: False)
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialized BrainCancerNet with 64 px input, saved with save_pretrained."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-braincancernet")
    BrainTumorClassifier(architecture="braincancernet", input_size=TINY_INPUT_SIZE).save_pretrained(folder)
    return folder


def _synthetic_slice(width: int, height: int) -> Image.Image:
    # A bright ellipse on black with a brighter blob, so the image has some structure.
    y, x = np.mgrid[0:height, 0:width]
    u = (x - width / 2) / (0.42 * width)
    v = (y - height / 2) / (0.42 * height)
    pixels = np.where(u**2 + v**2 < 1, 170.0, 0.0)
    pixels += 60.0 * np.exp(-((x - 0.65 * width) ** 2 + (y - 0.4 * height) ** 2) / (0.01 * width * height))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")


@pytest.fixture(scope="session")
def slice_image() -> Image.Image:
    """A synthetic 80 x 56 grayscale slice (not square, so padding matters)."""
    return _synthetic_slice(*SLICE_SIZE)


@pytest.fixture(scope="session")
def slice_png(tmp_path_factory, slice_image) -> Path:
    """The synthetic slice, written as a PNG file."""
    path = tmp_path_factory.mktemp("slices") / "slice.png"
    slice_image.save(path)
    return path


@pytest.fixture(scope="session")
def real_slice_path() -> Path:
    """The first glioma slice of the shared data set. Tests that use it are skipped without the data set."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"needs the brain tumor MRI data set at {DATA_DIR}, which is not present")
    paths = sorted((DATA_DIR / "glioma").glob("*.jpg"))
    if not paths:
        pytest.skip(f"no glioma/*.jpg slices under {DATA_DIR}")
    return paths[0]


# Generated training data: each class has a bright 10 px square in its own place on dim noise.
BLOB_SLICE_WIDTH, BLOB_SLICE_HEIGHT = 48, 40
BLOB_CENTERS = {"glioma": (12, 12), "meningioma": (36, 12), "pituitary": (24, 30)}


def write_blob_imagefolder(root: Path, *, seed: int, per_class: int = 10) -> list[str]:
    """Write an imagefolder of 48 x 40 grayscale PNG slices under ``root`` and return their relative paths."""
    rng = np.random.default_rng(seed)
    files = []
    for name, (x, y) in BLOB_CENTERS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = rng.integers(0, 40, size=(BLOB_SLICE_HEIGHT, BLOB_SLICE_WIDTH)).astype(np.uint8)
            pixels[y - 5 : y + 5, x - 5 : x + 5] = 220
            Image.fromarray(pixels, mode="L").save(root / name / f"{name}_{index}.png")
            files.append(f"{name}/{name}_{index}.png")
    return files



def write_boxed_imagefolder(root: Path, *, seed: int, per_class: int = 10) -> None:
    """Write a blob imagefolder under ``root`` and a ``tumor_boxes.csv`` with a 10 x 10 box around each blob."""
    lines = ["file_name,x_center,y_center,width,height"]
    for file_name in write_blob_imagefolder(root, seed=seed, per_class=per_class):
        x, y = BLOB_CENTERS[file_name.split("/")[0]]
        box = (x / BLOB_SLICE_WIDTH, y / BLOB_SLICE_HEIGHT, 10 / BLOB_SLICE_WIDTH, 10 / BLOB_SLICE_HEIGHT)
        lines.append(f"{file_name}," + ",".join(str(value) for value in box))
    (root / "tumor_boxes.csv").write_text("\n".join(lines) + "\n")

def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(SESSION_GRADIO_DIR, ignore_errors=True)
