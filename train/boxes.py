"""Tumor bounding boxes: reading ``tumor_boxes.csv`` and turning boxes into pixel masks.

The faithfulness scores compare Grad-CAM maps with these boxes, and training can use them as
an auxiliary target (``--box-loss-weight``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import NamedTuple

import datasets
import numpy as np
from PIL import Image

BOXES_NAME = "tumor_boxes.csv"
BOX_COLUMNS = ("file_name", "x_center", "y_center", "width", "height")


class Box(NamedTuple):
    """A tumor bounding box in the YOLO convention: center and size as fractions of the image side."""

    x_center: float
    y_center: float
    width: float
    height: float


def read_boxes(path: str | Path) -> dict[str, Box]:
    """Read ``file_name,x_center,y_center,width,height`` rows into a box per file name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Tumor box file {path} was not found. Pass --boxes with the path of {BOXES_NAME}.")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in BOX_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} has no column {missing}: its header must be {','.join(BOX_COLUMNS)}.")
        boxes = {}
        for line_number, row in enumerate(reader, start=2):
            try:
                box = Box(*(float(row[column]) for column in BOX_COLUMNS[1:]))
            except ValueError as error:
                raise ValueError(f"{path}, line {line_number}: invalid box value ({error}).") from error
            if not all(0.0 <= value <= 1.0 for value in box) or box.width <= 0 or box.height <= 0:
                raise ValueError(
                    f"{path}, line {line_number}: invalid box {tuple(box)}. Each value is a fraction of the "
                    "image side, between 0 and 1, and width and height must be above 0."
                )
            boxes[row["file_name"]] = box
    return boxes


def box_mask(box: Box, width: int, height: int) -> np.ndarray:
    """Return a ``height x width`` boolean mask of the pixels whose centers lie inside ``box``."""
    left = (box.x_center - box.width / 2) * width
    right = (box.x_center + box.width / 2) * width
    top = (box.y_center - box.height / 2) * height
    bottom = (box.y_center + box.height / 2) * height
    columns = np.arange(width) + 0.5
    rows = np.arange(height) + 0.5
    return ((rows >= top) & (rows <= bottom))[:, None] & ((columns >= left) & (columns <= right))[None, :]


def square_box_mask(box: Box, width: int, height: int, size: int) -> np.ndarray:
    """Return the ``size x size`` mask of ``box`` after the slice is padded to a square and resized.

    It follows ``square_grayscale``: a ``width x height`` slice is padded on both sides of its
    shorter axis to a square, which is then resized to ``size``.
    """
    side = max(width, height)
    in_square = Box(
        x_center=(box.x_center * width + (side - width) / 2) / side,
        y_center=(box.y_center * height + (side - height) / 2) / side,
        width=box.width * width / side,
        height=box.height * height / side,
    )
    return box_mask(in_square, size, size)


def box_masks(
    dataset: datasets.Dataset, image_column: str, file_ids: list[str], boxes: dict[str, Box], size: int
) -> np.ndarray:
    """Return each row's tumor box as a ``size x size`` uint8 mask, 255 inside and all zero without a box.

    Rows are matched to boxes by ``file_ids`` (paths relative to the dataset folder). Only the
    image headers are read, for the slice sizes.
    """
    masks = np.zeros((len(file_ids), size, size), dtype=np.uint8)
    undecoded = dataset.cast_column(image_column, datasets.Image(decode=False))[image_column]
    for row, (file_id, item) in enumerate(zip(file_ids, undecoded)):
        box = boxes.get(file_id)
        if box is None:
            continue
        source = item["path"] if item.get("bytes") is None else io.BytesIO(item["bytes"])
        with Image.open(source) as image:
            width, height = image.size
        masks[row] = square_box_mask(box, width, height, size) * np.uint8(255)
    return masks

