"""Models as functions of their parameters (torch.func), shared by every objective and engine."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]


def forward(model: nn.Module, params: Mapping[str, torch.Tensor], x: torch.Tensor,
            features: bool = False):
    """Logits (or (features, logits)) of `model` evaluated at `params`; buffers are the model's own."""
    return functional_call(model, dict(params), (x,), {"return_features": features}, strict=False)


def cross_entropy(model: nn.Module, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                  y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(forward(model, params, x), y)


def detached(params: Mapping[str, torch.Tensor]) -> Params:
    return {k: v.detach() for k, v in params.items()}
