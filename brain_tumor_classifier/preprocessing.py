"""The one preprocessing path shared by training, evaluation and the app.

A slice is converted to 8-bit grayscale and padded with black to a square.
MRI background is black, so padding adds no signal, and unlike cropping it
cannot cut a tumor off. The square is resized to the model's input size,
scaled to [0, 1] and normalized with the model's mean and std.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = ["square_grayscale", "normalize", "preprocess"]


def square_grayscale(image: Image.Image, size: int) -> np.ndarray:
    """Convert an image to a ``size`` x ``size`` uint8 grayscale array, padding to a square first."""
    if image.mode not in ("L", "I;16", "I", "F"):
        image = image.convert("L")
    elif image.mode != "L":
        # 16-bit and float images are stretched to their own range before the 8-bit conversion,
        # because a plain mode conversion would clip them.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    width, height = image.size
    side = max(width, height)
    if width != height:
        image = ImageOps.pad(image, (side, side), color=0, centering=(0.5, 0.5))
    if side != size:
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(image, dtype=np.uint8)


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Scale a uint8 (or [0, 255] float) batch ``N x C x H x W`` to [0, 1] and normalize it per channel."""
    pixels = pixels.float().div_(255.0)
    mean_tensor = torch.as_tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    std_tensor = torch.as_tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    return (pixels - mean_tensor) / std_tensor


def preprocess(
    images: Sequence[Image.Image], *, input_size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Turn PIL images into a normalized float batch ``N x 1 x input_size x input_size``."""
    arrays = np.stack([square_grayscale(image, input_size) for image in images])
    return normalize(torch.from_numpy(arrays).unsqueeze(1), mean, std)
