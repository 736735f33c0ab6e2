"""FedDyn (Acar et al., ICLR 2021, Algorithm 1), the full algorithm with the server state h.

Client k in round t (global model w_g = θ^{t−1}, its gradient state g_k = ∇L_k(θ_k^{t−1}), 0 at first):
    minimise  L_ce(w) − ⟨g_k, w⟩ + α/2 · ||w − w_g||²
    then      g_k ← g_k − α · (w_k − w_g)
Server, over the sampled clients P_t of the m = federation.num_clients clients:
    h ← h − α/m · Σ_{k ∈ P_t} (w_k − w_g)
    w_g ← mean_{k ∈ P_t}(w_k) − h/α
(h and the correction apply to the trainable parameters; BN statistics are plainly averaged.)
α = `method.alpha`. The authors' FL code uses a simplified variant without h (NOTES §2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from strategies.base import FederatedStrategy, Tensors, weighted_mean
from strategies.functional import Params, cross_entropy, inner_product, prefixed, squared_distance, unprefixed
from strategies.objective import ClientObjective
from strategies.validation import Update


def _check_alpha(alpha: float) -> None:
    if not alpha > 0:
        raise ValueError(f"method.alpha={alpha} must be > 0 for FedDyn (the server divides by it)")


class FedDynStrategy(FederatedStrategy):
    """Mean of the clients' models corrected by the server state h (FedDyn Algorithm 1, server lines)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alpha = float(self.hp["alpha"])
        _check_alpha(self.alpha)
        self.h: Tensors = {}

    def aggregate(self, server_round: int, global_tensors: Tensors, updates: list[Update],
                  weights: list[float]) -> Tensors:
        out = weighted_mean([u.tensors for u in updates], weights)
        for key in self.param_keys:
            g = global_tensors[key].to(torch.float64)
            drift = sum(u.tensors[key].to(torch.float64) - g for u in updates)
            h = self.h.get(key, torch.zeros_like(g)) - self.alpha / self.num_clients * drift
            self.h[key] = h
            out[key] = (out[key].to(torch.float64) - h / self.alpha).to(global_tensors[key].dtype)
        return out

    def state_dict(self) -> Tensors:
        return {f"h.{k}": v.clone() for k, v in self.h.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.h = {k: v.to(torch.float64).clone() for k, v in unprefixed("h", state).items()}


class FedDynObjective(ClientObjective):
    """L_ce(w) − ⟨g_k, w⟩ + α/2·||w − w_g||²; state: the gradient state g_k ("grad.<name>")."""

    hyperparameters = ("alpha",)

    def __init__(self, **hyperparameters: Any) -> None:
        super().__init__(**hyperparameters)
        _check_alpha(self.alpha)

    def prepare(self, model: nn.Module, global_params: Params, state: Params) -> Params:
        grad = unprefixed("grad", state)
        if set(grad) != set(global_params):
            grad = {k: torch.zeros_like(v) for k, v in global_params.items()}  # first round: g_k = 0
        grad = {k: grad[k] for k in global_params}  # the global model's key order (vmap trees)
        return {**prefixed("glob", global_params), **prefixed("grad", grad)}

    def loss(self, model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor,
             consts: Params) -> tuple[torch.Tensor, torch.Tensor]:
        ce = cross_entropy(model, params, x, y)
        linear = inner_product(params, unprefixed("grad", consts))
        proximal = squared_distance(params, unprefixed("glob", consts))
        return ce - linear + 0.5 * self.alpha * proximal, ce

    def next_state(self, params: Params, consts: Params, state: Params) -> Params:
        """g_k ← g_k − α (w_k − w_g) (FedDyn Algorithm 1, client update of ∇L_k)."""
        glob, grad = unprefixed("glob", consts), unprefixed("grad", consts)
        return prefixed("grad", {k: grad[k] - self.alpha * (params[k] - glob[k]) for k in glob})
