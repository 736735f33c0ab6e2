"""Accuracy and loss of a model on a labelled image set (eval mode, no augmentation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedsign.data.augment import normalize
from fedsign.data.images import ImageSet
from fedsign.data.specs import DatasetSpec


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSet, spec: DatasetSpec, batch_size: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on `data` (both on the same device)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=data.x.device)
    correct = torch.zeros((), device=data.x.device)
    for start in range(0, len(data), batch_size):
        x = normalize(data.x[start:start + batch_size], spec)
        y = data.y[start:start + batch_size]
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    n = max(len(data), 1)
    return float(loss_sum) / n, float(correct) / n
