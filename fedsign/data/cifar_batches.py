"""torchvision's `cifar-10-batches-py` folder, read with an unpickler that only admits numpy arrays."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from fedsign.data.images import ImageSet
from fedsign.errors import DatasetError

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
# The only globals a CIFAR batch file may reference; anything else is refused, not executed.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            batch = _ArrayOnlyUnpickler(handle, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch.get(b"labels", batch.get(b"fine_labels")), dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{path} is not a CIFAR-10 batch file: {exc}") from None
    if len(data) != len(labels):
        raise DatasetError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


def read_cifar_batches(folder: Path) -> tuple[ImageSet, ImageSet]:
    def read(names: tuple[str, ...]) -> ImageSet:
        parts = [_read_batch(folder / n) for n in names]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        return ImageSet(torch.from_numpy(x), torch.from_numpy(y))

    return read(TRAIN_FILES), read(TEST_FILES)
