"""Datasets as uint8 tensors (CIFAR-10, CINIC-10, digits), device-side augmentation."""

from fedsign.data.augment import normalize, random_crop_flip
from fedsign.data.images import Dataset, ImageSet
from fedsign.data.loading import DatasetConfig, load_dataset
from fedsign.data.specs import DATASET_NAMES, DatasetSpec, dataset_spec

__all__ = ["DATASET_NAMES", "Dataset", "DatasetConfig", "DatasetSpec", "ImageSet", "dataset_spec", "load_dataset",
           "normalize", "random_crop_flip"]
