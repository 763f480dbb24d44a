"""The Hub-ready classifier: a timm model plus the labels and preprocessing that belong to it."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Sequence

import safetensors.torch
import timm
import torch
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from PIL import Image
from torch import nn

from . import braincancernet as _braincancernet  # noqa: F401  (registers "braincancernet" with timm)
from .preprocessing import preprocess

__all__ = ["BrainTumorClassifier", "WeightsMismatchError", "SUPPORTED_ARCHITECTURES"]

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# Training-feature statistics for the out-of-scope score, written by train.calibrate. A model
# whose config sets ood_threshold needs this file beside its weights.
OOD_STATISTICS_NAME = "ood_statistics.safetensors"
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

    ``temperature`` divides the logits before the softmax (temperature scaling), and
    ``ood_threshold`` is the out-of-scope score above which an input is flagged as unlike the
    training slices. ``python -m train.calibrate`` fits both on a run's validation split and
    writes the feature statistics that the score needs to ``ood_statistics.safetensors``.

    With ``test_time_flip`` the model in eval mode scores each slice and its left-right mirror in
    one batch and averages the two, features and logits alike. In training mode it never does.
    ``train.calibrate`` turns it on only where it scores better on the validation split.
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
        ood_threshold: float | None = None,
        drop_rate: float = 0.0,
        test_time_flip: bool = False,
    ) -> None:
        super().__init__()
        if len(label_names) < 2:
            raise ValueError(f"A classifier needs at least two labels, got {list(label_names)}.")
        if len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(
                f"mean and std need one value per input channel ({in_chans}), got mean={list(mean)}, std={list(std)}."
            )
        if not temperature > 0 or not math.isfinite(temperature):
            raise ValueError(f"temperature must be a positive finite number, got {temperature}.")
        if ood_threshold is not None and not math.isfinite(ood_threshold):
            raise ValueError(
                f"ood_threshold must be a finite number or None (never flag inputs), got {ood_threshold}."
            )
        self.architecture = architecture
        self.label_names = list(label_names)
        self.input_size = int(input_size)
        self.in_chans = int(in_chans)
        self.mean = [float(value) for value in mean]
        self.std = [float(value) for value in std]
        self.temperature = float(temperature)
        self.ood_threshold = None if ood_threshold is None else float(ood_threshold)
        self.test_time_flip = bool(test_time_flip)
        # Plain attributes rather than buffers, so they never enter the weights file or a checkpoint.
        self.ood_class_means: torch.Tensor | None = None
        self.ood_precision: torch.Tensor | None = None
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
        if not self._averages_mirrors():
            return self.model(pixel_values)
        return _mean_of_halves(self.model(_with_mirrors(pixel_values)))

    def _averages_mirrors(self) -> bool:
        return self.test_time_flip and not self.training

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Turn PIL images into the normalized batch this model expects."""
        return preprocess(images, input_size=self.input_size, mean=self.mean, std=self.std)

    @torch.inference_mode()
    def predict_logits(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Return raw float32 logits ``N x num_labels`` for PIL images, before temperature scaling."""
        return self(self.preprocess(images).to(next(self.parameters()).device)).float()

    @torch.inference_mode()
    def predict_proba(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Return class probabilities ``N x num_labels`` (temperature-scaled) for PIL images."""
        return self.calibrated_probabilities(self.predict_logits(images))

    def calibrated_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply temperature scaling and the softmax to raw logits ``N x num_labels``."""
        return torch.softmax(logits.float() / self.temperature, dim=1)

    @torch.inference_mode()
    def predict_features_and_logits(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return pooled features ``N x num_features`` and raw logits ``N x num_labels`` for PIL images."""
        return self.features_and_logits(self.preprocess(images).to(next(self.parameters()).device))

    def features_and_logits(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return float32 pooled pre-logit features and raw logits of a normalized batch, from one pass."""
        averages = self._averages_mirrors()
        feature_map = self.model.forward_features(_with_mirrors(pixel_values) if averages else pixel_values)
        features = self.model.forward_head(feature_map, pre_logits=True).float()
        logits = self.model.forward_head(feature_map).float()
        if averages:
            return _mean_of_halves(features), _mean_of_halves(logits)
        return features, logits

    def set_ood_statistics(self, class_means: torch.Tensor, precision: torch.Tensor) -> None:
        """Set the training-feature statistics that ``out_of_scope_score`` measures distances with.

        ``class_means`` is ``num_labels x num_features``, and ``precision`` is the inverse of the
        within-class covariance shared by all classes, ``num_features x num_features``.
        """
        num_features = self.model.num_features
        if tuple(class_means.shape) != (len(self.label_names), num_features):
            raise ValueError(
                f"class_means must have shape ({len(self.label_names)}, {num_features}), got {tuple(class_means.shape)}."
            )
        if tuple(precision.shape) != (num_features, num_features):
            raise ValueError(f"precision must have shape ({num_features}, {num_features}), got {tuple(precision.shape)}.")
        self.ood_class_means = class_means.detach().float().cpu().contiguous()
        self.ood_precision = precision.detach().float().cpu().contiguous()

    def out_of_scope_score(self, features: torch.Tensor) -> torch.Tensor:
        """Return the squared Mahalanobis distance from each row of pooled features to the nearest class mean.

        Higher means less like the training slices. Raises ``RuntimeError`` when no statistics are set.
        """
        if self.ood_class_means is None or self.ood_precision is None:
            raise RuntimeError(
                "This classifier has no out-of-scope statistics. Run python -m train.calibrate on its run "
                f"folder, which writes {OOD_STATISTICS_NAME}."
            )
        means = self.ood_class_means.to(features.device)
        precision = self.ood_precision.to(features.device)
        differences = features.float()[:, None, :] - means[None, :, :]
        distances = torch.einsum("ncd,de,nce->nc", differences, precision, differences)
        return distances.min(dim=1).values

    def is_out_of_scope(self, features: torch.Tensor) -> torch.Tensor:
        """Return a bool per row of pooled features: whether its out-of-scope score is above ``ood_threshold``.

        With ``ood_threshold=None`` (a model that was never calibrated) nothing is flagged.
        """
        if self.ood_threshold is None:
            return torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
        return self.out_of_scope_score(features) > self.ood_threshold

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
        if self.ood_threshold is not None:
            self.save_ood_statistics(save_directory)
        config = dict(self._hub_mixin_config or {})
        config.update(self.timm_config())
        # The calibration may have been set after construction (train.calibrate does), so the
        # current values are written rather than the constructor's.
        config["temperature"] = self.temperature
        config["ood_threshold"] = self.ood_threshold
        config["test_time_flip"] = self.test_time_flip
        (save_directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    def save_ood_statistics(self, directory: str | Path) -> Path:
        """Write the out-of-scope statistics to ``OOD_STATISTICS_NAME`` in ``directory`` and return its path."""
        if self.ood_class_means is None or self.ood_precision is None:
            raise ValueError(
                "ood_threshold is set but the out-of-scope statistics are not, so the export would be "
                "incomplete. Call set_ood_statistics first, or set ood_threshold to None."
            )
        path = Path(directory) / OOD_STATISTICS_NAME
        tensors = {"class_means": self.ood_class_means, "precision": self.ood_precision}
        safetensors.torch.save_file(tensors, str(path))
        return path

    def load_ood_statistics(self, path: str | Path) -> None:
        """Read out-of-scope statistics written by ``save_ood_statistics``."""
        tensors = safetensors.torch.load_file(str(path))
        missing = {"class_means", "precision"} - set(tensors)
        if missing:
            raise WeightsMismatchError(f"{path} lacks the tensors {sorted(missing)}. Rerun python -m train.calibrate.")
        self.set_ood_statistics(tensors["class_means"], tensors["precision"])

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
        download = {
            "revision": revision,
            "cache_dir": cache_dir,
            "force_download": force_download,
            "token": token,
            "local_files_only": local_files_only,
        }
        weights_file = _export_file(
            model_id,
            WEIGHTS_NAME,
            f"the export is not complete (it needs {WEIGHTS_NAME} and {CONFIG_NAME}).",
            download,
        )

        instance = cls(**model_kwargs)
        if instance.ood_threshold is not None:
            # A config with ood_threshold promises the statistics file. Without it the model would give
            # confident tumor types for any input, so loading fails instead of skipping the check.
            instance.load_ood_statistics(
                _export_file(
                    model_id,
                    OOD_STATISTICS_NAME,
                    f"config.json sets ood_threshold, which needs this file. Copy {OOD_STATISTICS_NAME} "
                    "from the run folder, rerun python -m train.calibrate, or set ood_threshold to null "
                    "in config.json to load the model without the out-of-scope check.",
                    download,
                )
            )
        state_dict = safetensors.torch.load_file(weights_file, device=str(map_location))
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


def _with_mirrors(pixel_values: torch.Tensor) -> torch.Tensor:
    """Stack a batch and its left-right mirror images into one batch of twice the size."""
    return torch.cat([pixel_values, pixel_values.flip(-1)])


def _mean_of_halves(outputs: torch.Tensor) -> torch.Tensor:
    """Average the rows for the originals with the rows for their mirrors (see ``_with_mirrors``)."""
    originals, mirrors = outputs.chunk(2)
    return (originals + mirrors) / 2


def _export_file(model_id: str, filename: str, reason: str, download: dict) -> str:
    """Return the local path of ``filename`` from an export folder or a Hub repository.

    A file missing from the folder or the repository raises ``FileNotFoundError`` that names it
    and gives ``reason``. A file missing only from the local cache in offline mode raises
    huggingface_hub's ``LocalEntryNotFoundError``, which explains the cache miss. ``download``
    contains the ``hf_hub_download`` options.
    """
    if os.path.isdir(model_id):
        path = Path(model_id) / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {reason}")
        return str(path)
    try:
        return hf_hub_download(repo_id=model_id, filename=filename, **download)
    except LocalEntryNotFoundError:
        raise
    except EntryNotFoundError as error:
        # Recent huggingface_hub versions raise its subclass RemoteEntryNotFoundError here, and older
        # ones EntryNotFoundError itself. Both mean that the repository has no such file.
        raise FileNotFoundError(f"{model_id} has no {filename}: {reason}") from error
