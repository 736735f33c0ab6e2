"""MOON (Li, He & Song, CVPR 2021): model-contrastive federated learning. The client pulls its
penultimate features z toward the global model's z_glob and away from its own previous local
model's z_prev (MOON Eq. (3)); the server takes the plain mean.

    ℓ_con = −log( e^{cos(z, z_glob)/τ} / (e^{cos(z, z_glob)/τ} + e^{cos(z, z_prev)/τ}) )
    L = L_ce + μ · mean over the batch of ℓ_con

As in the authors' FL code (lxcnju/FedRepo, algorithms/moon.py): no projection head (z = the model's
penultimate features), reference models in eval mode with the global model's BN statistics, their
features detached, τ = 0.5, μ grid {1e-3, 1e-2, 0.1, 1}; the default μ = 1 is the top of that grid
(the MOON paper itself uses μ = 5 on CIFAR-10, with a projection head).
First round of a client (no previous model yet): the previous model is the initial global model θ_0
(in the authors' code a party that was never sampled still holds the initial weights).
The previous model travels as method state ("prev.<name>"), kept by fedsign's ClientStateStore.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from strategies.base import FederatedStrategy, MethodConfig
from strategies.functional import Params, float_buffers, forward, prefixed, reference_features, unprefixed
from strategies.objective import ClientObjective


@dataclass
class MoonConfig(MethodConfig):
    name: str = "moon"
    mu: float = 1.0  # weight μ of the model-contrastive loss, MOON Eq. (4)
    tau: float = 0.5  # temperature τ of MOON Eq. (3)

    def __post_init__(self) -> None:
        if not self.mu >= 0:
            raise ValueError(f"method.mu={self.mu} must be >= 0")
        if not self.tau > 0:
            raise ValueError(f"method.tau={self.tau} must be > 0")


def contrastive_loss(z: torch.Tensor, z_glob: torch.Tensor, z_prev: torch.Tensor, tau: float) -> torch.Tensor:
    """MOON Eq. (3), averaged over the batch: positive pair (z, z_glob), negative pair (z, z_prev)."""
    logits = torch.stack([F.cosine_similarity(z, z_glob, dim=-1), F.cosine_similarity(z, z_prev, dim=-1)],
                         dim=-1) / tau
    return -torch.log_softmax(logits, dim=-1)[..., 0].mean()


class MoonStrategy(FederatedStrategy):
    """Mean of the clients' models (as FedAvg)."""


class MoonObjective(ClientObjective):
    """L_ce + μ·ℓ_con (MOON Eq. (4)); state: the client's last local model."""

    cfg: MoonConfig

    def first_state(self, initial: Callable[[], Params]) -> Params:
        return prefixed("prev", initial())

    def prepare(self, model: nn.Module, global_params: Params, state: Params) -> Params:
        previous = unprefixed("prev", state)
        if set(previous) != set(global_params):
            previous = global_params  # a state that does not fit this model: no contrastive push this round
        previous = {k: previous[k] for k in global_params}  # the global model's key order (vmap trees)
        return {**prefixed("glob", global_params), **prefixed("prev", previous),
                **prefixed("buffer", float_buffers(model))}

    def loss(self, model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor,
             consts: Params) -> tuple[torch.Tensor, torch.Tensor]:
        z, logits = forward(model, params, x, features=True)
        ce = F.cross_entropy(logits, y)
        buffers = unprefixed("buffer", consts)
        z_glob = reference_features(model, unprefixed("glob", consts), buffers, x)
        z_prev = reference_features(model, unprefixed("prev", consts), buffers, x)
        return ce + self.cfg.mu * contrastive_loss(z, z_glob, z_prev, self.cfg.tau), ce

    def next_state(self, params: Params, consts: Params, state: Params) -> Params:
        """This round's local model becomes the next round's previous model."""
        return prefixed("prev", {k: v.clone() for k, v in params.items()})
