"""What a model exchanges: its float state (parameters + BN running stats), by name."""

from __future__ import annotations

import torch
from torch import nn

from fedsign.errors import CheckpointError


def exchanged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and float buffers (BN running mean/var), detached; never num_batches_tracked,
    never FedPAN masks (non-persistent buffers are not in the state_dict)."""
    return {k: v.detach() for k, v in model.state_dict().items() if v.is_floating_point()}


def parameter_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def load_exchanged(model: nn.Module, tensors: dict[str, torch.Tensor], what: str = "arrays") -> None:
    """Copy `tensors` into the model after checking names and shapes match exactly."""
    expected = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{what} do not fit the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    for key, ref in expected.items():
        if tuple(tensors[key].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{what}: '{key}' has shape {tuple(tensors[key].shape)}, the model needs {tuple(ref.shape)}"
            )
    with torch.no_grad():
        for key, ref in expected.items():
            ref.copy_(tensors[key].to(ref.device, ref.dtype))
