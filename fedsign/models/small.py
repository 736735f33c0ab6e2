"""Small models for CPU tests and demos: a two-conv CNN for any image size, and softmax regression."""

from __future__ import annotations

import torch
from torch import nn

from fedsign.models.pan import PanSpec, position_mask


class SmallCNN(nn.Module):
    """conv16-pool-conv32-adaptive pool(2) -> 128 -> 64 -> classes; a few thousand parameters."""

    def __init__(self, num_classes: int, in_channels: int = 1, batch_norm: bool = False,
                 pan: PanSpec | None = None) -> None:
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), norm(16), position_mask(16, pan), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), norm(32), position_mask(32, pan), nn.ReLU(),
            nn.AdaptiveMaxPool2d(2), nn.Flatten(),
            nn.Linear(128, 64), nn.ReLU(),
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        z = self.features(x)
        logits = self.classifier(z)
        return (z, logits) if return_features else logits


class LogReg(nn.Module):
    """Softmax regression on flattened pixels (the paper's Appendix D.3 demo); features = the input."""

    def __init__(self, num_classes: int, in_features: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        z = x.flatten(1)
        logits = self.classifier(z)
        return (z, logits) if return_features else logits
