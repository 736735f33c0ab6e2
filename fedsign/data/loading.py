"""`load_dataset`: the config's dataset as uint8 tensors, decoded once per machine and kept per process."""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

from fedsign.data.cache import cache_key, load_cached, store_cached
from fedsign.data.digits import load_digits_split
from fedsign.data.images import Dataset, ImageSet
from fedsign.data.sources import find_source
from fedsign.data.specs import DATASET_NAMES, dataset_spec
from fedsign.errors import ConfigError


@dataclass
class DatasetConfig:
    """The `dataset.*` settings of a run (fedsign.config.RunConfig.dataset)."""

    name: str = "digits"  # cifar10 | cinic10 | digits (scikit-learn's, always offline)
    root: str = ""  # directory holding one of the supported on-disk forms ("": $FEDSIGN_CIFAR10 / $FEDSIGN_CINIC10)
    use_valid: bool = False  # CINIC-10: add valid/ to the training set
    download: bool = False  # CIFAR-10 only: let torchvision download it when online
    augment: bool = True  # random crop (padding 4) + horizontal flip on the data's device (none for digits)

    def __post_init__(self) -> None:
        if self.name not in DATASET_NAMES:
            raise ConfigError(f"dataset.name={self.name!r} is not known; accepted: {', '.join(DATASET_NAMES)}")


def load_dataset(cfg: DatasetConfig) -> Dataset:
    """Train and test splits of `cfg.name` (CPU tensors; move them with `.to(device)`)."""
    return _load(cfg.name, cfg.root, cfg.use_valid, cfg.download)


@functools.lru_cache(maxsize=4)
def _load(name: str, root: str, use_valid: bool, download: bool) -> Dataset:
    spec = dataset_spec(name)
    if name == "digits":
        train, test = load_digits_split()
        return Dataset(spec, train, test)
    source = find_source(name, root, spec, download)
    key = cache_key(name, source.form, source.paths)
    splits = load_cached(key)
    if splits is None:
        print(f"[fedsign] decoding {name} ({source.form}) from {root}, once; cached afterwards",
              file=sys.stderr, flush=True)
        splits = source.read()
        store_cached(key, splits)
    train = splits["train"]
    if use_valid and "valid" in splits:
        import torch

        train = ImageSet(torch.cat([train.x, splits["valid"].x]), torch.cat([train.y, splits["valid"].y]))
    return Dataset(spec, train, splits["test"])
