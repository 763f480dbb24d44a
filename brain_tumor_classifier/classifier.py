"""The Hub-ready classifier: a timm model plus the labels and preprocessing that belong to it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import safetensors.torch
import timm
import torch
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from PIL import Image
from torch import nn

from . import braincancernet as _braincancernet  # noqa: F401  (registers "braincancernet" with timm)
from .preprocessing import preprocess

__all__ = ["BrainTumorClassifier", "WeightsMismatchError", "SUPPORTED_ARCHITECTURES"]

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
SUPPORTED_ARCHITECTURES = ("braincancernet", "resnet50")


class WeightsMismatchError(ValueError):
    """The weights file does not fit the architecture described by ``config.json``."""


class BrainTumorClassifier(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="brain-tumor-classifier",
    pipeline_tag="image-classification",
    license="cc-by-4.0",
    tags=["medical", "mri", "brain-tumor", "image-classification"],
):
    """A timm classifier for single MRI slices, saved as ``model.safetensors`` + ``config.json``.

    The constructor arguments are the config. ``label_names`` and ``architecture`` use timm's
    key names, and ``save_pretrained`` also writes timm's ``pretrained_cfg``, so a ResNet50
    export loads with ``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` as well.
    """

    def __init__(
        self,
        *,
        architecture: str = "braincancernet",
        label_names: Sequence[str] = ("glioma", "meningioma", "pituitary"),
        input_size: int = 192,
        in_chans: int = 1,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        temperature: float = 1.0,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(label_names) < 2:
            raise ValueError(f"A classifier needs at least two labels, got {list(label_names)}.")
        if len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(
                f"mean and std need one value per input channel ({in_chans}), got mean={list(mean)}, std={list(std)}."
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.architecture = architecture
        self.label_names = list(label_names)
        self.input_size = int(input_size)
        self.in_chans = int(in_chans)
        self.mean = [float(value) for value in mean]
        self.std = [float(value) for value in std]
        self.temperature = float(temperature)
        try:
            self.model = timm.create_model(
                architecture,
                pretrained=False,
                num_classes=len(self.label_names),
                in_chans=self.in_chans,
                drop_rate=drop_rate,
            )
        except RuntimeError as error:
            raise ValueError(
                f"Unknown architecture {architecture!r}: use a timm model name such as "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}."
            ) from error

    # Inference -----------------------------------------------------------------------------

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return logits for a normalized batch ``N x in_chans x H x W``."""
        return self.model(pixel_values)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Turn PIL images into the normalized batch this model expects."""
        return preprocess(images, input_size=self.input_size, mean=self.mean, std=self.std)

    @torch.inference_mode()
    def predict_proba(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Return class probabilities ``N x num_labels`` (temperature-scaled) for PIL images."""
        logits = self(self.preprocess(images).to(next(self.parameters()).device))
        return torch.softmax(logits.float() / self.temperature, dim=1)

    # Serialization ---------------------------------------------------------------------------

    def timm_config(self) -> dict:
        """Return the keys timm reads from ``config.json`` to rebuild this model on its own."""
        return {
            "architecture": self.architecture,
            "num_classes": len(self.label_names),
            "num_features": self.model.num_features,
            "label_names": self.label_names,
            "model_args": {"in_chans": self.in_chans},
            "pretrained_cfg": {
                "input_size": [self.in_chans, self.input_size, self.input_size],
                "interpolation": "bilinear",
                "crop_pct": 1.0,
                "crop_mode": "center",
                "mean": self.mean,
                "std": self.std,
                "num_classes": len(self.label_names),
                "first_conv": self.model.pretrained_cfg.get("first_conv"),
                "classifier": self.model.pretrained_cfg.get("classifier"),
            },
        }

    def _save_pretrained(self, save_directory: Path) -> None:
        # The weights are the timm model's own state dict (no wrapper prefix), so timm can load them.
        safetensors.torch.save_model(self.model, str(save_directory / WEIGHTS_NAME))
        config = dict(self._hub_mixin_config or {})
        config.update(self.timm_config())
        (save_directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs,
    ) -> "BrainTumorClassifier":
        if not strict:
            raise ValueError(
                "BrainTumorClassifier loads strictly: a partial load would leave random weights. "
                "Remove strict=False."
            )
        if "architecture" not in model_kwargs or "label_names" not in model_kwargs:
            raise FileNotFoundError(
                f"{model_id} has no usable {CONFIG_NAME} (it needs 'architecture' and 'label_names'). "
                "Point to a folder written by save_pretrained or a repository pushed by train.push."
            )
        if os.path.isdir(model_id):
            weights_file = Path(model_id) / WEIGHTS_NAME
            if not weights_file.is_file():
                raise FileNotFoundError(
                    f"{weights_file} is missing: the folder is not a complete export "
                    f"(it needs {WEIGHTS_NAME} and {CONFIG_NAME})."
                )
        else:
            try:
                weights_file = hf_hub_download(
                    repo_id=model_id,
                    filename=WEIGHTS_NAME,
                    revision=revision,
                    cache_dir=cache_dir,
                    force_download=force_download,
                    token=token,
                    local_files_only=local_files_only,
                )
            except EntryNotFoundError as error:
                raise FileNotFoundError(f"{model_id} has no {WEIGHTS_NAME}.") from error

        instance = cls(**model_kwargs)
        state_dict = safetensors.torch.load_file(str(weights_file), device=str(map_location))
        instance.load_model_weights(state_dict, source=str(weights_file))
        instance.to(map_location)
        instance.eval()
        return instance

    def load_model_weights(self, state_dict: dict[str, torch.Tensor], *, source: str = "state dict") -> None:
        """Load a timm state dict strictly, raising ``WeightsMismatchError`` that names each bad key."""
        expected = self.model.state_dict()
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        mismatched = [
            f"{key}: file {tuple(state_dict[key].shape)}, model {tuple(expected[key].shape)}"
            for key in sorted(set(expected) & set(state_dict))
            if state_dict[key].shape != expected[key].shape
        ]
        problems = []
        if missing:
            problems.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        if mismatched:
            problems.append("shape mismatches " + "; ".join(mismatched[:10]))
        if problems:
            raise WeightsMismatchError(
                f"{source} does not match architecture {self.architecture!r} with "
                f"{len(self.label_names)} labels {self.label_names}: " + ", ".join(problems) + ". "
                "Check that config.json (architecture, label_names, in_chans) belongs to these weights."
            )
        self.model.load_state_dict(state_dict, strict=True)
