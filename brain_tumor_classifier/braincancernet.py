"""BrainCancerNet: the project's compact residual CNN for single MRI slices.

The model follows timm's conventions (``forward_features`` / ``forward_head``,
``get_classifier``, ``reset_classifier``) and is registered in timm's model
registry, so ``timm.create_model("braincancernet", num_classes=3)`` builds it.
"""

from __future__ import annotations

import torch
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

__all__ = ["BrainCancerNet"]


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a projected shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class BrainCancerNet(nn.Module):
    """Compact residual CNN: a stride-2 stem, four residual stages, global pooling, dropout.

    Each stage halves the resolution, so a 192 px slice reaches the head as a
    6x6 map of ``widths[-1]`` channels.
    """

    def __init__(
        self,
        num_classes: int = 3,
        in_chans: int = 1,
        widths: tuple[int, ...] = (32, 48, 96, 192, 256),
        depths: tuple[int, ...] = (1, 2, 2, 1),
        drop_rate: float = 0.3,
        global_pool: str = "avg",
        **kwargs,
    ) -> None:
        super().__init__()
        if global_pool != "avg":
            raise ValueError(f"BrainCancerNet supports global_pool='avg' only, got {global_pool!r}.")
        if len(widths) != len(depths) + 1:
            raise ValueError(
                f"widths needs one entry for the stem plus one per stage: got {len(widths)} widths "
                f"for {len(depths)} stages."
            )
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.num_features = widths[-1]
        self.head_hidden_size = widths[-1]
        self.grad_checkpointing = False

        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        for stage_index, depth in enumerate(depths):
            in_width, out_width = widths[stage_index], widths[stage_index + 1]
            blocks = [ResidualBlock(in_width, out_width, stride=2)]
            blocks += [ResidualBlock(out_width, out_width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # A zero last batch-norm scale makes every residual block start as the identity,
        # which keeps early training stable at the learning rates used here.
        for module in self.modules():
            if isinstance(module, ResidualBlock):
                nn.init.zeros_(module.bn2.weight)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs(
    {
        # No pretrained weights are published under this tag: the entry only gives timm
        # the input format and the name of the classifier layer.
        "braincancernet.untrained": {
            "url": "",
            "num_classes": 3,
            "input_size": (1, 192, 192),
            "pool_size": (6, 6),
            "crop_pct": 1.0,
            "interpolation": "bilinear",
            "mean": (0.5,),
            "std": (0.5,),
            "first_conv": "stem.0",
            "classifier": "fc",
        }
    }
)


@register_model
def braincancernet(pretrained: bool = False, **kwargs) -> BrainCancerNet:
    """BrainCancerNet with its default widths (about 2.4 M parameters)."""
    return build_model_with_cfg(BrainCancerNet, "braincancernet", pretrained, **kwargs)
