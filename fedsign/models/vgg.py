"""VGG8 / VGG11 for 32x32 inputs as in the authors' FL code (conv+bias, ReLU, max-pool; optional BN), and
VGG16 (Simonyan & Zisserman 2015, configuration D), the asymmetric-valley paper's model for Figs. 3-5 and 7-9
(with BN: after each conv, before the ReLU, App. A.2); all end in one Linear(512, classes)."""

from __future__ import annotations

import torch
from torch import nn

from fedsign.models.pan import PanSpec, position_mask

LAYOUTS = {
    "vgg8": (64, "M", 128, "M", 256, "M", 512, "M", 512, "M"),
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


class VGG(nn.Module):
    def __init__(self, layout: tuple, num_classes: int, in_channels: int = 3,
                 batch_norm: bool = False, pan: PanSpec | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers.append(nn.Conv2d(channels, item, 3, padding=1, bias=True))
            if batch_norm:
                layers.append(nn.BatchNorm2d(item))
            layers += [position_mask(item, pan), nn.ReLU()]  # FedPAN: before the ReLU
            channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        z = self.features(x).flatten(1)  # penultimate features (MOON's representation)
        logits = self.classifier(z)
        return (z, logits) if return_features else logits
