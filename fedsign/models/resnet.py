"""ResNet20 for CIFAR (He et al. 2016): 16/32/64 channels, BasicBlocks with BN, 1x1-conv+BN projection
shortcuts where the shape changes (as in the authors' code: 272,474 parameters)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedsign.models.pan import PanSpec, position_mask


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, pan: PanSpec | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.pan1 = position_mask(cout, pan)  # FedPAN: after BN
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pan2 = position_mask(cout, pan)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.pan1(self.bn1(self.conv1(x))))
        out = self.pan2(self.bn2(self.conv2(out)))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, pan: PanSpec | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.pan = position_mask(16, pan)
        blocks: list[nn.Module] = []
        cin = 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1, pan))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        h = self.blocks(F.relu(self.pan(self.bn(self.conv(x)))))
        z = F.adaptive_avg_pool2d(h, 1).flatten(1)
        logits = self.classifier(z)
        return (z, logits) if return_features else logits
