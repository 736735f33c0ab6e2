"""Decoded image sets as uint8 tensors: the one in-memory form every loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsign.data.specs import DatasetSpec


@dataclass
class ImageSet:
    x: torch.Tensor  # uint8, [N, C, H, W]
    y: torch.Tensor  # int64, [N]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(self.x.to(device), self.y.to(device))

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.x[index], self.y[index])


@dataclass
class Dataset:
    spec: DatasetSpec
    train: ImageSet
    test: ImageSet

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(self.spec, self.train.to(device), self.test.to(device))
