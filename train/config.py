"""The training configuration: defaults here, then an optional JSON file, then command-line flags."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from brain_tumor_classifier import SUPPORTED_ARCHITECTURES

CONFIG_NAME = "train_config.json"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run, saved as ``train_config.json`` in the run folder."""

    model: str = "braincancernet"
    dataset: str = ""
    output_dir: str = ""
    image_size: int = 192
    epochs: int = 40
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    drop_rate: float = 0.3
    ema_decay: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    rotation_degrees: float = 15.0
    scale_jitter: float = 0.1
    translation: float = 0.08
    intensity_jitter: float = 0.15
    box_loss_weight: float = 0.0
    boxes: str = ""
    mixed_precision: str = "auto"
    channels_last: bool = True
    seed: int = 42
    split: str = "random"
    group_column: str = ""
    validation_fraction: float = 0.15
    test_fraction: float = 0.15
    eval_batch_size: int = 64
    resume: bool = False
    command: str = field(default="", compare=False)

    def to_dict(self) -> dict:
        return asdict(self)


HELP = {
    "model": f"timm architecture to train; one of {', '.join(SUPPORTED_ARCHITECTURES)}.",
    "dataset": "Local imagefolder path (one subfolder per class) or Hub dataset id.",
    "output_dir": "Run folder for the export, metrics, split manifest and checkpoints.",
    "image_size": "Square input size in pixels; slices are padded to a square, then resized.",
    "epochs": "Number of passes over the training split.",
    "batch_size": "Training images per optimizer step (per process).",
    "lr": "Peak AdamW learning rate, reached after the warmup.",
    "weight_decay": "AdamW weight decay.",
    "warmup_epochs": "Linear warmup length in epochs (fractions allowed), then cosine decay to zero.",
    "label_smoothing": "Label smoothing of the cross-entropy loss.",
    "drop_rate": "Dropout before the classifier layer.",
    "ema_decay": (
        "Decay of an exponential moving average of the weights, updated every step; validation, "
        "selection and export then use the average. 0 turns it off."
    ),
    "mixup_alpha": "Beta-distribution alpha of mixup between training images (timm's Mixup); 0 turns it off.",
    "cutmix_alpha": "Beta-distribution alpha of CutMix between training images; 0 turns it off.",
    "mix_prob": "Share of training batches that get mixup or CutMix when either is on.",
    "rotation_degrees": "Largest random rotation of a training slice, in degrees either way.",
    "scale_jitter": "Random zoom of a training slice, as a fraction: 0.1 scales by 0.9 to 1.1.",
    "translation": "Largest random shift of a training slice, as a fraction of its width and height.",
    "intensity_jitter": (
        "Random contrast and brightness change x: contrast times 1 - x to 1 + x, brightness shifted by "
        "up to x times half the intensity range."
    ),
    "box_loss_weight": (
        "Weight of an auxiliary loss that teaches the last feature map where the tumor box is (a "
        "1x1 convolution and a softmax over the map's cells, scored by cross-entropy against the box's "
        "share of each cell). Only training uses it: the exported model is unchanged. It cannot be combined "
        "with mixup or CutMix. 0 turns it off."
    ),
    "boxes": (
        "CSV of tumor boxes for --box-loss-weight, with the columns file_name,x_center,y_center,width,height "
        "(file names relative to the dataset folder, boxes in fractions of the image side). Empty means "
        "tumor_boxes.csv in the dataset folder."
    ),
    "mixed_precision": (
        "'auto', 'no' or 'bf16' (autocast on CPU and GPU; weights stay float32). 'auto' uses bf16 only "
        "where the hardware computes it natively (a recent GPU, or a CPU with AVX-512 BF16 or AMX): "
        "emulated bf16 made training about 10 times slower on a 2-core AVX2 CPU."
    ),
    "channels_last": "Use the channels-last memory format (faster convolutions on CPU).",
    "seed": "Seed for the split, weight initialization, shuffling and augmentation.",
    "split": (
        "How to split: 'random' (stratified by slice) or 'group' (no patient or scan on two sides; "
        "groups come from --group-column, else from image similarity)."
    ),
    "group_column": "Dataset column with a patient or group id, used by --split group.",
    "validation_fraction": "Share of the images in the validation split.",
    "test_fraction": "Share of the images in the test split.",
    "eval_batch_size": "Images per batch when evaluating.",
    "resume": "Continue from the run folder's last checkpoint if one exists.",
}
CHOICES = {"model": SUPPORTED_ARCHITECTURES, "mixed_precision": ("auto", "no", "bf16"), "split": ("random", "group")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Train a brain tumor MRI classifier, evaluate it on its test split and export it.",
    )
    parser.add_argument("--config", type=Path, help="JSON file of options. Command-line flags override it.")
    defaults = TrainConfig()
    for item in fields(TrainConfig):
        if item.name == "command":
            continue
        flag = "--" + item.name.replace("_", "-")
        default = getattr(defaults, item.name)
        # The parser's own default stays None so that only flags actually given override --config.
        default_text = "required" if item.name in ("dataset", "output_dir") else f"default: {default}"
        help_text = f"{HELP[item.name]} ({default_text})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, type=type(default), default=None, choices=CHOICES.get(item.name), help=help_text)
    return parser


def resolve_config(args: argparse.Namespace, command: str) -> TrainConfig:
    """Layer the defaults, the optional JSON file and the flags that were given."""
    config = TrainConfig()
    if args.config is not None:
        values = json.loads(Path(args.config).read_text())
        known = {item.name for item in fields(TrainConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown options {unknown} in {args.config}. Valid options are {sorted(known)}.")
        config = replace(config, **values)
    flags = {name: value for name, value in vars(args).items() if name != "config" and value is not None}
    config = replace(config, **flags, command=command)
    if not config.dataset or not config.output_dir:
        raise ValueError("Both --dataset and --output-dir are required (on the command line or in --config).")
    check_augmentation(config)
    return config


def check_augmentation(config: TrainConfig) -> None:
    """Raise ValueError for an augmentation strength outside its limits.

    The limits keep every scale and contrast factor positive, so no slice is inverted or blanked.
    """
    limits = {
        "rotation_degrees": (0.0, 180.0),
        "scale_jitter": (0.0, 0.5),
        "translation": (0.0, 0.5),
        "intensity_jitter": (0.0, 0.5),
    }
    for name, (low, high) in limits.items():
        value = getattr(config, name)
        if not low <= value <= high:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"Invalid {flag} {value:g}: use a value between {low:g} and {high:g}.")
    if config.box_loss_weight < 0:
        raise ValueError(f"Invalid --box-loss-weight {config.box_loss_weight:g}: use 0 (off) or a positive weight.")
    if config.boxes and config.box_loss_weight == 0:
        raise ValueError(
            f"--boxes {config.boxes} is read only for the box loss: add --box-loss-weight (for example 0.5), "
            "or leave out --boxes."
        )
    if config.box_loss_weight > 0 and (config.mixup_alpha > 0 or config.cutmix_alpha > 0):
        # A mixed image contains two tumors in proportions that one box mask cannot follow.
        raise ValueError(
            "--box-loss-weight cannot be combined with mixup or CutMix: set --mixup-alpha 0 and "
            "--cutmix-alpha 0, or --box-loss-weight 0."
        )
