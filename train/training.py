"""The Accelerate training loop: the same code on a CPU, one GPU or several, with optional bf16."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from brain_tumor_classifier import BrainTumorClassifier
from brain_tumor_classifier.preprocessing import normalize
from model_card import write_model_card

from .augment import augment_batch
from .boxes import BOXES_NAME, Box, box_masks, read_boxes
from .config import CONFIG_NAME, TrainConfig
from .data import (
    MANIFEST_NAME,
    LabeledImages,
    decode_pixels,
    load_labeled_images,
    stratified_split,
    write_manifest,
)
from .evaluate import classification_metrics, measure_inference, predict_pixels, write_evaluation
from .groups import GROUPING_DECODE_SIZE, group_split, sequence_numbers, similarity_groups
from .hardware import cpu_model_name, resolve_mixed_precision
from .plots import plot_training_curves

logger = logging.getLogger(__name__)

HISTORY_NAME = "history.json"
CHECKPOINT_DIR = "checkpoints"


@dataclass
class SplitPixels:
    """Decoded slices and labels for the three parts of a split."""

    label_names: list[str]
    pixels: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    # Tumor box masks of the training part (uint8, 255 inside, all zero without a box); only with
    # --box-loss-weight, because validation and test are scored on labels alone.
    train_box_masks: np.ndarray | None = None


@dataclass
class TrainerState:
    """Progress saved with every checkpoint so an interrupted run resumes where it stopped."""

    epoch: int = 0
    best_epoch: int = 0
    best_val_accuracy: float = -1.0
    best_val_loss: float = math.inf
    training_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


def describe_hardware(accelerator: Accelerator) -> str:
    """Return a short description of the device the run trained on."""
    if accelerator.device.type == "cuda":
        name = torch.cuda.get_device_name(accelerator.device)
        return f"{accelerator.num_processes} x {name}"
    return f"CPU: {cpu_model_name()}, {torch.get_num_threads()} threads, {accelerator.num_processes} process(es)"


def prepare_data(
    config: TrainConfig, output_dir: Path, accelerator: Accelerator, boxes: dict[str, Box] | None = None
) -> SplitPixels:
    """Decode every slice once, split the dataset and write the split manifest.

    ``boxes``, read from ``config.boxes``, become the training split's masks for the box loss.
    """
    images = load_labeled_images(config.dataset)
    with accelerator.main_process_first():
        pixels = decode_pixels(images, config.image_size)
    labels = images.labels
    fractions = {"validation_fraction": config.validation_fraction, "test_fraction": config.test_fraction}
    groups = None
    if config.split == "group":
        groups = find_groups(images, pixels, config.group_column)
        splits = group_split(labels, groups, seed=config.seed, **fractions)
    else:
        splits = stratified_split(labels, seed=config.seed, **fractions)
    if accelerator.is_main_process:
        write_manifest(
            output_dir / MANIFEST_NAME, images, splits, source=config.dataset, seed=config.seed,
            kind=config.split, groups=groups,
        )
    data = SplitPixels(
        label_names=images.label_names,
        pixels={name: pixels[rows] for name, rows in splits.items()},
        labels={name: labels[rows] for name, rows in splits.items()},
    )
    if boxes is not None:
        data.train_box_masks = training_box_masks(config, images, boxes)[splits["train"]]
    return data


def resolve_boxes_path(config: TrainConfig) -> Path:
    """Return the tumor box CSV that --box-loss-weight reads. Raises an error naming the fix if there is none."""
    if config.boxes:
        boxes_path = Path(config.boxes)
        if not boxes_path.is_file():
            raise FileNotFoundError(f"The --boxes file {boxes_path} was not found. Check the path.")
        return boxes_path
    if not Path(config.dataset).is_dir():
        raise ValueError(
            f"--box-loss-weight needs tumor boxes, and the dataset {config.dataset!r} is not a local "
            f"folder: pass --boxes with the path of {BOXES_NAME}."
        )
    boxes_path = Path(config.dataset) / BOXES_NAME
    if not boxes_path.is_file():
        raise FileNotFoundError(
            f"--box-loss-weight needs tumor boxes, and {boxes_path} was not found: add it to the dataset "
            "folder or pass --boxes with its path."
        )
    return boxes_path


def training_box_masks(config: TrainConfig, images: LabeledImages, boxes: dict[str, Box]) -> np.ndarray:
    """Rasterize the tumor boxes read from ``config.boxes`` at the training size."""
    boxes_path = config.boxes
    masks = box_masks(images.dataset, images.image_column, images.file_ids, boxes, config.image_size)
    has_box = masks.any(axis=(1, 2))
    if not has_box.any():
        raise ValueError(
            f"No slice of {config.dataset} has a box in {boxes_path}: its file_name column must hold "
            "paths relative to the dataset folder, such as glioma/1.jpg."
        )
    logger.info("Tumor boxes for %d of %d slices from %s", int(has_box.sum()), len(has_box), boxes_path)
    return masks


class BoxHead(torch.nn.Module):
    """Training-only head that learns where the tumor box lies on the last feature map.

    A 1x1 convolution scores each cell of the features that enter the model's global pooling
    (read through a forward pre-hook), and a softmax over the cells is scored by cross-entropy
    against the share of the box in each cell. The softmax makes the loss independent of the box's
    size, which matters here: a box covers 2.5% of a slice on average. The classifier and its
    exported weights stay unchanged.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(model.num_features, 1, kernel_size=1)
        self.features: torch.Tensor | None = None
        self.warned_single_cell = False

    def watch(self, model: torch.nn.Module) -> None:
        """Keep the input of ``model.global_pool`` from each training forward pass."""

        def keep_features(module: torch.nn.Module, args: tuple) -> None:
            if module.training:
                self.features = args[0]

        model.global_pool.register_forward_pre_hook(keep_features)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        """Return the mean spatial cross-entropy over the slices whose mask is not empty.

        It scores the features of the latest training forward pass, so call it right after that pass.
        A slice without a box, or whose box the augmentation moved out of view, adds no loss.
        """
        scores = self.conv(self.features).float()
        self.features = None
        if scores.shape[-2:].numel() == 1 and not self.warned_single_cell:
            logger.warning(
                "The last feature map has a single cell at this --image-size, so the box loss is always 0 "
                "and teaches nothing. Use a larger --image-size (at least 64 px) or --box-loss-weight 0."
            )
            self.warned_single_cell = True
        shares = torch.nn.functional.adaptive_avg_pool2d(masks.float(), scores.shape[-2:]).flatten(1)
        targets = shares / shares.sum(dim=1, keepdim=True).clamp(min=1e-6)
        per_image = -(targets * torch.log_softmax(scores.flatten(1), dim=1)).sum(dim=1)
        weights = (shares.sum(dim=1) > 0).float()
        return (per_image * weights).sum() / weights.sum().clamp(min=1.0)


def find_groups(images: LabeledImages, pixels: np.ndarray, group_column: str) -> np.ndarray:
    """Return a group id per row: from the dataset's group column if named, else from image similarity."""
    if group_column:
        if group_column not in images.dataset.column_names:
            raise ValueError(
                f"--group-column {group_column!r} is not a column of the dataset. Its columns are "
                f"{images.dataset.column_names}."
            )
        _, group_ids = np.unique(np.asarray(images.dataset[group_column], dtype=str), return_inverse=True)
        return group_ids
    if pixels.shape[-1] != GROUPING_DECODE_SIZE:
        pixels = decode_pixels(images, GROUPING_DECODE_SIZE)
    groups = similarity_groups(pixels, images.labels, numbers=sequence_numbers(images.file_ids))
    logger.info("Found %d similarity groups among %d slices", len(np.unique(groups)), len(groups))
    return groups


def warmup_cosine(total_steps: int, warmup_steps: int):
    """Return a LambdaLR factor: linear warmup to 1, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train_one_epoch(
    model, loader, optimizer, scheduler, criterion, accelerator, config, classifier, epoch, ema=None, mixup=None,
    box_head=None,
) -> dict:
    """Run one epoch of augmented training and return mean loss, accuracy and images per second.

    With ``mixup``, the loss is taken against the mixed soft targets, while the reported
    accuracy still compares the prediction with each image's own label. With ``box_head``, the
    loader also yields box masks, and ``train_box_loss`` is the mean auxiliary loss (``train_loss``
    stays the classification loss alone).
    """
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    box_loss_sum = 0.0
    strengths = {
        "max_rotation_degrees": config.rotation_degrees,
        "scale_range": (1 - config.scale_jitter, 1 + config.scale_jitter),
        "max_translation": config.translation,
        "intensity_jitter": config.intensity_jitter,
    }
    start = time.perf_counter()
    batches = tqdm(
        loader, desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=not accelerator.is_local_main_process
    )
    for batch_index, (pixels, labels, *box_batch) in enumerate(batches):
        if box_head is None:
            augmented = augment_batch(pixels.unsqueeze(1), **strengths)
        else:
            augmented, masks = augment_batch(pixels.unsqueeze(1), masks=box_batch[0].unsqueeze(1), **strengths)
        inputs = normalize(augmented, classifier.mean, classifier.std)
        if config.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        targets = labels
        if mixup is not None:
            inputs, targets = mixup(inputs, labels)
        logits = model(inputs)
        loss = criterion(logits.float(), targets)
        total_loss = loss
        if box_head is not None:
            with accelerator.autocast():
                # Called through the prepared module, so that several processes average its gradients.
                box_loss = box_head(masks)
            total_loss = loss + config.box_loss_weight * box_loss
            box_loss_sum += accelerator.gather(box_loss.detach().reshape(1) * len(labels)).sum().item()
        accelerator.backward(total_loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(accelerator.unwrap_model(model), step=(epoch - 1) * len(loader) + batch_index + 1)

        batch_loss, batch_correct, batch_size = accelerator.gather(
            torch.stack([loss.detach() * len(labels), (logits.argmax(1) == labels).sum().float(),
                         torch.tensor(float(len(labels)), device=loss.device)]).unsqueeze(0)
        ).sum(0).tolist()
        loss_sum += batch_loss
        correct += int(batch_correct)
        seen += int(batch_size)
        batches.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    seconds = time.perf_counter() - start
    metrics = {"train_loss": loss_sum / seen, "train_accuracy": correct / seen, "images_per_second": seen / seconds}
    if box_head is not None:
        metrics["train_box_loss"] = box_loss_sum / seen
    return metrics


@torch.no_grad()
def evaluate_loader(model, loader, criterion, accelerator, config, classifier) -> dict:
    """Return loss and accuracy on an un-augmented split."""
    model.eval()
    losses, hits = [], []
    for pixels, labels in loader:
        inputs = normalize(pixels.unsqueeze(1), classifier.mean, classifier.std)
        if config.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        logits = model(inputs).float()
        per_image_loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        per_image_loss, correct = accelerator.gather_for_metrics((per_image_loss, logits.argmax(1) == labels))
        losses.append(per_image_loss.cpu())
        hits.append(correct.cpu())
    return {"val_loss": torch.cat(losses).mean().item(), "val_accuracy": torch.cat(hits).float().mean().item()}


def run_training(config: TrainConfig) -> dict:
    """Train, keep the best epoch on validation, export it, and evaluate it on the test split."""
    precision = resolve_mixed_precision(config.mixed_precision, PartialState().device)
    accelerator = Accelerator(mixed_precision=precision)
    if accelerator.is_main_process:
        logger.info("Mixed precision: %s (requested %s)", precision, config.mixed_precision)
    set_seed(config.seed)
    boxes = None
    if config.box_loss_weight > 0:
        # Read before anything is written, so that a missing or malformed file leaves no run folder,
        # and recorded as the file actually read.
        boxes_path = resolve_boxes_path(config)
        boxes = read_boxes(boxes_path)
        config = replace(config, boxes=str(boxes_path))
    output_dir = Path(config.output_dir)
    checkpoint_dir = output_dir / CHECKPOINT_DIR
    if accelerator.is_main_process:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    # Data: decoded once, kept in memory as uint8.
    data = prepare_data(config, output_dir, accelerator, boxes)
    train_pixels = data.pixels["train"]
    mean, std = float(train_pixels.mean() / 255), float(train_pixels.std() / 255)
    classifier = BrainTumorClassifier(
        architecture=config.model,
        label_names=data.label_names,
        input_size=config.image_size,
        in_chans=1,
        mean=[round(mean, 4)],
        std=[round(std, 4)],
        drop_rate=config.drop_rate,
    )
    if config.channels_last:
        classifier.to(memory_format=torch.channels_last)

    def loader(split: str, *, shuffle: bool, batch_size: int) -> DataLoader:
        tensors = [torch.from_numpy(data.pixels[split]), torch.from_numpy(data.labels[split])]
        if split == "train" and data.train_box_masks is not None:
            tensors.append(torch.from_numpy(data.train_box_masks))
        dataset = TensorDataset(*tensors)
        # Dropping the last partial batch keeps batch-norm statistics sound, unless it is the only batch.
        drop_last = shuffle and len(dataset) > batch_size
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last)

    train_loader = loader("train", shuffle=True, batch_size=config.batch_size)
    val_loader = loader("validation", shuffle=False, batch_size=config.eval_batch_size)

    # Optimizer and schedule: AdamW, linear warmup, cosine decay, stepped per batch.
    box_head = BoxHead(classifier.model) if data.train_box_masks is not None else None
    trained = [classifier] if box_head is None else [classifier, box_head]
    no_decay = [p for module in trained for p in module.parameters() if p.ndim <= 1]
    decay = [p for module in trained for p in module.parameters() if p.ndim > 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    steps_per_epoch = len(train_loader) // accelerator.num_processes
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        warmup_cosine(config.epochs * steps_per_epoch, max(1, round(config.warmup_epochs * steps_per_epoch))),
    )
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        classifier, optimizer, train_loader, val_loader, scheduler
    )
    if box_head is not None:
        box_head = accelerator.prepare(box_head)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    mixup = None
    if config.mixup_alpha > 0 or config.cutmix_alpha > 0:
        # timm's Mixup folds label smoothing into the soft targets it returns.
        mixup = Mixup(
            mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha, prob=config.mix_prob,
            label_smoothing=config.label_smoothing, num_classes=len(data.label_names),
        )
        criterion = SoftTargetCrossEntropy()
    state = TrainerState()
    accelerator.register_for_checkpointing(state)
    ema = None
    if config.ema_decay > 0:
        # The average starts as a copy of the initial weights, and its warmup keeps early steps from dominating it.
        ema = ModelEmaV3(accelerator.unwrap_model(model), decay=config.ema_decay, use_warmup=True)
        accelerator.register_for_checkpointing(ema)
    scored_model = model if ema is None else ema.module
    if box_head is not None:
        # After the EMA copy, so that the average's forward passes do not feed the box head.
        accelerator.unwrap_model(box_head).watch(accelerator.unwrap_model(model).model)
    last_checkpoint = checkpoint_dir / "last"
    if config.resume and last_checkpoint.is_dir():
        accelerator.load_state(str(last_checkpoint))
        logger.info("Resumed from %s after epoch %d", last_checkpoint, state.epoch)
        earlier = {record.get("mixed_precision") for record in state.history} - {None, precision}
        if earlier:
            # With --mixed-precision auto, a run resumed on other hardware may change precision.
            logger.warning(
                "Resuming in mixed precision %s after epochs trained in %s. history.json records the precision per epoch.",
                precision,
                ", ".join(sorted(earlier)),
            )

    # Epochs: train, validate, keep the best weights, checkpoint.
    best_weights = checkpoint_dir / "best_model.safetensors"
    for epoch in range(state.epoch + 1, config.epochs + 1):
        epoch_start = time.perf_counter()
        train_metrics = train_one_epoch(
            model, train_loader, optimizer, scheduler, criterion, accelerator, config, classifier, epoch, ema, mixup,
            box_head,
        )
        val_metrics = evaluate_loader(scored_model, val_loader, criterion, accelerator, config, classifier)
        seconds = time.perf_counter() - epoch_start
        state.training_seconds += seconds
        state.epoch = epoch
        record = {
            "epoch": epoch,
            **train_metrics,
            **val_metrics,
            "lr": scheduler.get_last_lr()[0],
            "seconds": seconds,
            "mixed_precision": precision,
        }
        state.history.append(record)
        improved = (val_metrics["val_accuracy"], -val_metrics["val_loss"]) > (
            state.best_val_accuracy,
            -state.best_val_loss,
        )
        if improved:
            state.best_epoch = epoch
            state.best_val_accuracy = val_metrics["val_accuracy"]
            state.best_val_loss = val_metrics["val_loss"]
            if accelerator.is_main_process:
                safetensors.torch.save_model(accelerator.unwrap_model(scored_model).model, str(best_weights))
        accelerator.save_state(str(last_checkpoint))
        if accelerator.is_main_process:
            box_text = f" box {record['train_box_loss']:.4f}" if "train_box_loss" in record else ""
            logger.info(
                "epoch %d/%d: train loss %.4f acc %.4f%s | val loss %.4f acc %.4f | %.0f img/s, %.0f s%s",
                epoch, config.epochs, record["train_loss"], record["train_accuracy"], box_text, record["val_loss"],
                record["val_accuracy"], record["images_per_second"], seconds, " (best)" if improved else "",
            )
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return {}
    # prepare() wrapped the model's forward in bf16 autocast when mixed precision is on. The export
    # runs in float32 wherever it is loaded, so the test split is scored without that wrapper.
    classifier = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    hardware = f"{describe_hardware(accelerator)}, mixed precision {precision}"
    return finish_run(config, output_dir, classifier, best_weights, state, data, hardware, mixed_precision=precision)


def finish_run(
    config: TrainConfig,
    output_dir: Path,
    classifier: BrainTumorClassifier,
    best_weights: Path,
    state: TrainerState,
    data: SplitPixels,
    hardware: str,
    *,
    mixed_precision: str,
) -> dict:
    """Export the best epoch, write history and curves, evaluate on the test split, render the card."""
    classifier.load_model_weights(safetensors.torch.load_file(str(best_weights)), source=str(best_weights))
    classifier.eval()
    classifier.save_pretrained(output_dir)
    history = {
        "epochs": state.history,
        "best_epoch": state.best_epoch,
        "training_seconds": round(state.training_seconds, 1),
        "hardware": hardware,
        # What --mixed-precision resolved to on this hardware ("no" or "bf16").
        "mixed_precision": mixed_precision,
    }
    (output_dir / HISTORY_NAME).write_text(json.dumps(history, indent=2) + "\n")
    plot_training_curves(
        state.history, output_dir / "training_curves.png", title=f"{config.model}, best epoch {state.best_epoch}"
    )

    probabilities = predict_pixels(classifier, data.pixels["test"], batch_size=config.eval_batch_size)
    metrics = {"split": "test", "split_kind": config.split}
    metrics.update(classification_metrics(data.labels["test"], probabilities, data.label_names))
    metrics["inference"] = measure_inference(classifier)
    metrics["evaluate_command"] = f"python -m train.evaluate --run-dir {output_dir}"
    write_evaluation(output_dir, metrics)
    logger.info("Test accuracy %.4f on %d slices; run folder %s", metrics["accuracy"], metrics["num_images"], output_dir)
    write_model_card(output_dir)
    return metrics
