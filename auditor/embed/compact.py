"""A compact residual CNN for small images (32x32 and up), trained on the dataset itself.

It is the network used when no pretrained weights exist (offline machines) and the one that can grow
coarse-level heads for hierarchy-aware training. Its stages are named so the same layer taps as the
torchvision backbones apply: `stem`, `stage1`..`stage3`, then the pooled output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CompactResNet(nn.Module):
    """stem -> three residual stages (stride 1, 2, 2) -> global average pool -> linear classifier.

    With `coarse_classes` it is the paper's hierarchy-aware CNN: branch heads on stage1 and stage2
    predict the groups of the class tree's coarser levels (coarsest first), so early layers are
    pushed to separate the coarse groups, which the paper found speeds training and curbs overfitting.
    """

    TAPS = ("stem", "stage1", "stage2", "stage3")

    def __init__(
        self, num_classes: int, width: int = 32, coarse_classes: Sequence[int] = ()
    ) -> None:
        super().__init__()
        if len(coarse_classes) > 2:
            raise ValueError("at most two coarse levels (heads on stage1 and stage2)")
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.stage1 = ResidualBlock(width, width, 1)
        self.stage2 = ResidualBlock(width, width * 2, 2)
        self.stage3 = ResidualBlock(width * 2, width * 4, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width * 4, num_classes)
        self.feature_dim = width * 4
        self.coarse_heads = nn.ModuleList(
            nn.Linear(channels, groups)
            for channels, groups in zip((width, width * 2), coarse_classes, strict=False)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def forward_with_coarse(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Class logits and, per coarse level, group logits from the intermediate stages."""
        stage1 = self.stage1(self.stem(x))
        stage2 = self.stage2(stage1)
        pooled = torch.flatten(self.pool(self.stage3(stage2)), 1)
        taps = (stage1, stage2)
        coarse = [
            head(torch.flatten(self.pool(tap), 1))
            for head, tap in zip(self.coarse_heads, taps, strict=False)
        ]
        return self.classifier(pooled), coarse
