"""A fedsign checkpoint ready for probing: the rebuilt model on its device and fixed, cached data subsets
(test images to evaluate on, training images for BN recalibration and mining)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from fedsign.checkpoint import model_from_checkpoint
from fedsign.data import DatasetConfig, DatasetSpec, load_dataset, normalize
from fedsign.data.specs import dataset_spec
from fedsign.errors import ConfigError
from fedsign.models import has_batch_norm
from landscape.evaluator import Evaluator, ProbeData


@functools.lru_cache(maxsize=8)
def data_subset(dataset: str, root: str, split: str, size: int, seed: int, device: str) -> ProbeData:
    """`size` images of a split (a seeded random choice; all when size <= 0 or larger than the split),
    normalised as in training, on `device`. Cached per process."""
    spec = dataset_spec(dataset)
    images = getattr(load_dataset(DatasetConfig(name=dataset, root=root)), split)
    if 0 < size < len(images):
        index = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:size].sort().values
        images = images.subset(index)
    x = normalize(images.x.to(device), spec)
    return ProbeData(x, images.y.to(device), f"{dataset}/{split}[{len(images)} images, seed {seed}]")


@dataclass
class CheckpointContext:
    path: str
    model: nn.Module
    meta: dict[str, str]
    spec: DatasetSpec
    test: ProbeData
    train: ProbeData
    device: torch.device

    @classmethod
    def load(cls, path: str, *, images: int, train_images: int, seed: int, device: str = "cpu",
             data_root: str = "", dtype: torch.dtype = torch.float32) -> CheckpointContext:
        if images < 0 or train_images < 0:
            raise ConfigError("--images and --train-images must be >= 0 (0 = the whole split)")
        model, meta = model_from_checkpoint(path, device)
        model = model.to(dtype)
        spec = dataset_spec(meta["dataset"])
        test = data_subset(meta["dataset"], data_root, "test", images, seed, str(device))
        train = data_subset(meta["dataset"], data_root, "train", train_images, seed + 1, str(device))
        as_dtype = lambda d: ProbeData(d.x.to(dtype), d.y, d.description)  # noqa: E731
        return cls(path, model, meta, spec, as_dtype(test), as_dtype(train), torch.device(device))

    def evaluator(self, recalibrate: bool = True, batch_size: int = 500, chunk: int | None = None) -> Evaluator:
        return Evaluator(self.model, self.test, self.train, recalibrate=recalibrate and has_batch_norm(self.model),
                         batch_size=batch_size, chunk=chunk)
