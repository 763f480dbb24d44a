"""Batched augmentation for MRI slices, applied to whole uint8 batches on the training device.

Slices are decoded once, so augmentation works on tensors instead of PIL images: one
``affine_grid`` call per batch is far cheaper on a CPU than per-image PIL transforms.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment_batch(
    pixels: torch.Tensor,
    *,
    max_rotation_degrees: float = 15.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
    max_translation: float = 0.08,
    intensity_jitter: float = 0.15,
    generator: torch.Generator | None = None,
    masks: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Randomly flip, rotate, scale, shift and change the contrast of a batch; returns [0, 255] floats.

    With ``masks`` (``N x 1 x H x W``, such as tumor boxes), each mask gets its slice's flip,
    rotation, scale and shift but no contrast change, and ``(slices, masks)`` is returned.

    Left-right flips keep the anatomy plausible (the brain is roughly symmetric), whereas
    up-down flips would not, so only the former is used. Contrast and brightness jitter stand
    in for differences between scanners and windowing.
    """
    batch = pixels.float()
    n = batch.shape[0]
    device = batch.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, device=device, generator=generator) * (high - low) + low

    angle = uniform(-max_rotation_degrees, max_rotation_degrees) * math.pi / 180
    scale = uniform(*scale_range)
    flip = torch.where(torch.rand(n, device=device, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * flip
    theta[:, 1, 1] = cos
    theta[:, 0, 2] = uniform(-max_translation, max_translation) * 2
    theta[:, 1, 2] = uniform(-max_translation, max_translation) * 2
    channels = batch.shape[1]
    if masks is not None:
        batch = torch.cat([batch, masks.float()], dim=1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    # Zero padding matches the black background around the head.
    batch = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if masks is not None:
        batch, moved_masks = batch[:, :channels], batch[:, channels:]

    contrast = uniform(1 - intensity_jitter, 1 + intensity_jitter).view(n, 1, 1, 1)
    brightness = uniform(-intensity_jitter, intensity_jitter).view(n, 1, 1, 1) * 255 * 0.5
    batch = (batch * contrast + brightness).clamp_(0, 255)
    return batch if masks is None else (batch, moved_masks)
