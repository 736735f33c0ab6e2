"""Sign statistics between models: the quantities FedSign is designed to change."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch


def sign_change_fraction(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor],
                         keys: Iterable[str]) -> float:
    """Fraction of the entries of `keys` whose sign (-1, 0, +1) differs between two models."""
    changed, total = 0, 0
    for key in keys:
        changed += int((torch.sign(before[key]) != torch.sign(after[key])).sum())
        total += before[key].numel()
    return changed / max(total, 1)
