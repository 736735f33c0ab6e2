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


def float_buffers(model: nn.Module) -> Params:
    """The model's exchanged buffers (BN running statistics), detached copies; never FedPAN masks
    (non-persistent) nor integer counters."""
    names = {name for name, _ in model.named_parameters()}
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if k not in names and v.is_floating_point()}


def reference_features(model: nn.Module, params: Mapping[str, torch.Tensor],
                       buffers: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Penultimate features of a fixed reference model (eval mode, no gradient) at `params`+`buffers`."""
    was_training = model.training
    model.eval()
    try:
        features, _ = functional_call(model, {**buffers, **params}, (x,), {"return_features": True},
                                      strict=False)
    finally:
        model.train(was_training)
    return features.detach()


def prefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> Params:
    """Keys 'name' -> 'prefix.name' (several groups of tensors in one flat dict of constants)."""
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def unprefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> Params:
    """The inverse of `prefixed`: the tensors under 'prefix.', with the prefix removed."""
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def squared_distance(params: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """||params - ref||^2 summed over every tensor of `ref`."""
    return sum(((params[k] - r) ** 2).sum() for k, r in ref.items())


def inner_product(params: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """<params, other> summed over every tensor of `other`."""
    return sum((params[k] * v).sum() for k, v in other.items())
