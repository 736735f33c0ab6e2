"""The client side of a method: its local objective as a pure function of the parameters.

One objective serves one client (the Flower engine: `params` are a model's own parameters) and a
batch of clients (the cohort engine: `params` carry a leading client dimension under `vmap`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from strategies.base import MethodConfig
from strategies.functional import Params, cross_entropy


class ClientObjective:
    """Plain local cross-entropy (FedAvg). Methods override `prepare`, `loss` and `next_state`, and
    read their settings from `self.cfg` (their MethodConfig subclass, checked when it was made)."""

    def __init__(self, cfg: MethodConfig) -> None:
        self.cfg = cfg

    def first_state(self, initial: Callable[[], Params]) -> Params:
        """A client's state before its first round; `initial()` gives θ_0's parameters."""
        return {}

    def prepare(self, model: nn.Module, global_params: Params, state: Params) -> Params:
        """Constants of this round (tensors): e.g. the global model, a reference model."""
        return {}

    def loss(self, model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor,
             consts: Params) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss to minimise, its cross-entropy part) on one batch."""
        ce = cross_entropy(model, params, x, y)
        return ce, ce

    def next_state(self, params: Params, consts: Params, state: Params) -> Params:
        """What this client keeps for its next round ({}: nothing)."""
        return {}
