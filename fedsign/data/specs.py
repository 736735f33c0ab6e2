"""What each dataset is (classes, image shape, normalisation, augmentation), without loading it."""

from __future__ import annotations

from dataclasses import dataclass

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The authors' CIFAR normalisation (lxcnju/FedRepo, datasets/cifar_data.py), also used for CINIC-10.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: tuple[str, ...]
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int  # random-crop padding of the training augmentation (0: no crop)
    flip: bool  # random horizontal flip in the training augmentation

    @property
    def num_classes(self) -> int:
        return len(self.classes)


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec("cifar10", CIFAR_CLASSES, 3, 32, CIFAR_MEAN, CIFAR_STD, 4, True),
    "cinic10": DatasetSpec("cinic10", CIFAR_CLASSES, 3, 32, CIFAR_MEAN, CIFAR_STD, 4, True),
    # scikit-learn's 8x8 digits (pixel values 0..16 rescaled to 0..255); ships with sklearn.
    "digits": DatasetSpec("digits", tuple(str(d) for d in range(10)), 1, 8, (0.305,), (0.376,), 0, False),
}
DATASET_NAMES = tuple(DATASETS)


def dataset_spec(name: str) -> DatasetSpec:
    from fedsign.errors import ConfigError

    if name not in DATASETS:
        raise ConfigError(f"dataset.name={name!r} is not known; accepted: {', '.join(DATASET_NAMES)}")
    return DATASETS[name]
