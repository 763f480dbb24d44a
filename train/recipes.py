"""The training recipe of each architecture, shared by the comparison and the documented commands.

The numbers were chosen to fit a 2-core CPU in tens of minutes per run: BrainCancerNet
at 192 px for 80 epochs, ResNet50 from scratch at 128 px for 30 epochs (about four times
the cost per image). bf16 autocast roughly doubled training throughput on an AVX-512 CPU
(see benchmarks/README.md); weights stay in float32.
"""

from __future__ import annotations

RECIPES: dict[str, dict] = {
    "braincancernet": {
        "image_size": 192,
        "epochs": 80,
        "batch_size": 32,
        "lr": 2e-3,
        "weight_decay": 0.05,
        "warmup_epochs": 2.0,
        "label_smoothing": 0.1,
        "drop_rate": 0.3,
        "ema_decay": 0.998,
        "mixed_precision": "bf16",
    },
    "resnet50": {
        "image_size": 128,
        "epochs": 30,
        "batch_size": 32,
        "lr": 1e-3,
        "weight_decay": 0.05,
        "warmup_epochs": 2.0,
        "label_smoothing": 0.1,
        "drop_rate": 0.2,
        "ema_decay": 0.998,
        "mixed_precision": "bf16",
    },
}
