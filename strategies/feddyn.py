"""FedDyn (Acar et al., ICLR 2021), in two variants chosen by `method.variant`.

`acar` (default): the paper's Algorithm 1, with the server state h. Client k in round t (global
model w_g = θ^{t−1}, its gradient state g_k = ∇L_k(θ_k^{t−1}), 0 at first):
    minimise  L_ce(w) − ⟨g_k, w⟩ + α/2 · ||w − w_g||²
    then      g_k ← g_k − α · (w_k − w_g)
Server, over the sampled clients P_t of the m clients that hold data (federation.num_clients):
    h ← h − α/m · Σ_{k ∈ P_t} (w_k − w_g)
    w_g ← mean_{k ∈ P_t}(w_k) − h/α
(h and the correction apply to the trainable parameters; BN statistics are plainly averaged.)

`fedrepo`: what the authors' FL code runs (lxcnju/FedRepo, algorithms/feddyn.py), a different
algorithm. Client, with T parameter tensors:
    minimise  L_ce(w) + α/T · Σ_tensors (⟨w, g_k − w_g⟩ + ||w||²)
    then      g_k ← g_k + (w_k − w_g)
Server, no h: w_g ← c · mean_{k ∈ P_t}(w_k) + (1 − c) · w_g with c the fraction of clients sampled
per round (their `c_ratio`, 0.1 in Table 1), for every exchanged tensor.
α = `method.alpha` (their `reg_lamb`); grid {1e-3, 1e-2, 1e-1}.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from strategies.base import FederatedStrategy, MethodConfig, Tensors, weighted_mean
from strategies.functional import Params, cross_entropy, inner_product, prefixed, squared_distance, unprefixed
from strategies.objective import ClientObjective
from strategies.validation import Update

VARIANTS = ("acar", "fedrepo")


@dataclass
class FedDynConfig(MethodConfig):
    name: str = "feddyn"
    alpha: float = 0.01  # regularisation strength α
    variant: str = "acar"  # acar: Acar et al.'s Algorithm 1 | fedrepo: the authors' FL code

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"method.alpha={self.alpha} must be > 0 for FedDyn (the server divides by it)")
        if self.variant not in VARIANTS:
            raise ValueError(f"method.variant={self.variant!r} is not known; accepted: {', '.join(VARIANTS)}")


class FedDynStrategy(FederatedStrategy):
    """acar: the mean corrected by the server state h; fedrepo: the mean mixed into the old model."""

    method: FedDynConfig

    def __init__(self, method: FedDynConfig, **kwargs: Any) -> None:
        super().__init__(method, **kwargs)
        self.h: Tensors = {}

    def aggregate(self, global_tensors: Tensors, updates: list[Update], weights: list[float]) -> Tensors:
        mean = weighted_mean([u.tensors for u in updates], weights)
        if self.method.variant == "fedrepo":
            c = self.clients_per_round / self.num_clients
            return {k: c * v + (1.0 - c) * global_tensors[k] for k, v in mean.items()}
        alpha = self.method.alpha
        for key in self.param_keys:
            g = global_tensors[key]
            drift = sum(u.tensors[key] for u in updates) - len(updates) * g  # Σ_k (w_k − w_g)
            h = self.h[key].to(g) if key in self.h else torch.zeros_like(g)
            self.h[key] = h - alpha / self.num_clients * drift
            mean[key] = mean[key] - self.h[key] / alpha
        return mean

    def state_dict(self) -> Tensors:
        return {f"h.{k}": v.clone() for k, v in self.h.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.h = {k: v.clone() for k, v in unprefixed("h", state).items()}


class FedDynObjective(ClientObjective):
    """The variant's local loss; state: the gradient state g_k ("grad.<name>")."""

    cfg: FedDynConfig

    def prepare(self, model: nn.Module, global_params: Params, state: Params) -> Params:
        grad = unprefixed("grad", state)
        if set(grad) != set(global_params):
            grad = {k: torch.zeros_like(v) for k, v in global_params.items()}  # first round: g_k = 0
        grad = {k: grad[k] for k in global_params}  # the global model's key order (vmap trees)
        return {**prefixed("glob", global_params), **prefixed("grad", grad)}

    def loss(self, model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor,
             consts: Params) -> tuple[torch.Tensor, torch.Tensor]:
        ce = cross_entropy(model, params, x, y)
        glob, grad = unprefixed("glob", consts), unprefixed("grad", consts)
        if self.cfg.variant == "fedrepo":  # α/T Σ_tensors (⟨w, g − w_g⟩ + ||w||²)
            reg = sum((params[k] * (grad[k] - glob[k])).sum() + (params[k] ** 2).sum() for k in glob)
            return ce + self.cfg.alpha * reg / len(glob), ce
        # − ⟨g_k, w⟩ + α/2 ||w − w_g||² (FedDyn Algorithm 1, client objective)
        return ce - inner_product(params, grad) + 0.5 * self.cfg.alpha * squared_distance(params, glob), ce

    def next_state(self, params: Params, consts: Params, state: Params) -> Params:
        """acar: g_k ← g_k − α (w_k − w_g) (FedDyn Algorithm 1); fedrepo: g_k ← g_k + (w_k − w_g)."""
        glob, grad = unprefixed("glob", consts), unprefixed("grad", consts)
        step = 1.0 if self.cfg.variant == "fedrepo" else -self.cfg.alpha
        return prefixed("grad", {k: grad[k] + step * (params[k] - glob[k]) for k in glob})
