"""FedSign (paper Sect. 6.2, Eq. (1); Appendix C, Algorithm 1): local cross-entropy minus a reward
for keeping the signs of the global model; the server takes the plain mean of the clients' models.

Client k's loss in round t, with global model θ_t and local parameters θ (θ ← θ_t at the start):

    L^k(θ) = L_ce^k(θ) − γ · R( sgp(θ_t) ⊙ σ(θ/τ) + sgp(−θ_t) ⊙ σ(−θ/τ) )

sgp(x) = 1 if x > 0 else 0 (elementwise; an entry of θ_t that is exactly 0 earns no reward),
σ = sigmoid, τ = `method.sign_temperature` (τ = 1 is the paper), γ = `method.gamma`, and R reduces
the elementwise reward r_i over every trainable parameter (N entries in T tensors), chosen by
`method.sign_reduction` because the paper does not say (docs/fedsign.md measures the choice):

    sum:         R = Σ_i r_i
    rms:         R = Σ_i r_i / √N          (default)
    mean:        R = Σ_i r_i / N
    tensor_mean: R = (1/T) Σ_tensors mean_{i ∈ tensor} r_i

The minus sign is the camera-ready's: the reward grows when θ keeps θ_t's sign. Its gradient per
entry is −γ·c_i/τ·σ'(θ_i/τ)·(sgp(θ_t,i) − sgp(−θ_t,i)) with c_i the reduction's weight
(1, 1/√N, 1/N, or 1/(T·numel of the entry's tensor)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from strategies.base import FederatedStrategy, MethodConfig
from strategies.functional import Params, cross_entropy, prefixed, unprefixed
from strategies.objective import ClientObjective

SIGN_REDUCTIONS = ("rms", "sum", "mean", "tensor_mean")


@dataclass
class FedSignConfig(MethodConfig):
    """γ grid of the paper (Sect. 6.2): {0.001, 0.01, 0.1}, best reported (small γ for Dirichlet
    α = 10, 0.01-0.1 for α = 0.5)."""

    name: str = "fedsign"
    gamma: float = 0.01  # weight γ of the sign reward, Eq. (1)
    sign_reduction: str = "rms"  # R: how Eq. (1) is reduced over parameters (see the module docstring)
    sign_temperature: float = 1.0  # τ in σ(θ/τ); 1 = the paper

    def __post_init__(self) -> None:
        if not self.gamma >= 0:
            raise ValueError(f"method.gamma={self.gamma} must be >= 0")
        if self.sign_reduction not in SIGN_REDUCTIONS:
            raise ValueError(f"method.sign_reduction={self.sign_reduction!r} is not known; "
                             f"accepted: {', '.join(SIGN_REDUCTIONS)}")
        if not self.sign_temperature > 0:
            raise ValueError(f"method.sign_temperature={self.sign_temperature} must be > 0")


def sign_reward(params: Mapping[str, torch.Tensor], positive: Mapping[str, torch.Tensor],
                negative: Mapping[str, torch.Tensor], temperature: float, reduction: str) -> torch.Tensor:
    """R(sgp(θ_t)σ(θ/τ) + sgp(−θ_t)σ(−θ/τ)) of Eq. (1); `positive`/`negative` = sgp(±θ_t) as floats."""
    per_tensor = {k: positive[k] * torch.sigmoid(params[k] / temperature)
                  + negative[k] * torch.sigmoid(-params[k] / temperature) for k in positive}
    if reduction == "tensor_mean":
        return sum(r.mean() for r in per_tensor.values()) / len(per_tensor)
    total = sum(r.sum() for r in per_tensor.values())
    count = sum(positive[k].numel() for k in positive)
    scale = {"sum": 1.0, "rms": 1.0 / math.sqrt(count), "mean": 1.0 / count}[reduction]
    return total * scale


class FedSignStrategy(FederatedStrategy):
    """Plain mean of the clients' models (Algorithm 1, line 6): the base strategy's aggregation."""


class FedSignObjective(ClientObjective):
    """Eq. (1): L_ce − γ·R(sgp(θ_t)σ(θ/τ) + sgp(−θ_t)σ(−θ/τ)); see the module docstring for R."""

    cfg: FedSignConfig

    def prepare(self, model: nn.Module, global_params: Params, state: Params) -> Params:
        """sgp(θ_t) and sgp(−θ_t) as float masks, fixed for the round."""
        positive = {k: (v > 0).to(v.dtype) for k, v in global_params.items()}
        negative = {k: (v < 0).to(v.dtype) for k, v in global_params.items()}
        return {**prefixed("pos", positive), **prefixed("neg", negative)}

    def loss(self, model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor,
             consts: Params) -> tuple[torch.Tensor, torch.Tensor]:
        ce = cross_entropy(model, params, x, y)
        reward = sign_reward(params, unprefixed("pos", consts), unprefixed("neg", consts),
                             self.cfg.sign_temperature, self.cfg.sign_reduction)
        return ce - self.cfg.gamma * reward, ce
