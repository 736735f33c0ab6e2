"""scikit-learn's 8x8 digits: always available offline (it ships with scikit-learn)."""

from __future__ import annotations

import numpy as np
import torch

from fedsign.data.images import ImageSet

TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed: the train/test split is part of the dataset, not of a run


def load_digits_split() -> tuple[ImageSet, ImageSet]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # [N, 1, 8, 8]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    n_test = int(round(TEST_FRACTION * len(y)))
    test, train = order[:n_test], np.sort(order[n_test:])
    as_set = lambda idx: ImageSet(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))  # noqa: E731
    return as_set(train), as_set(np.sort(test))
