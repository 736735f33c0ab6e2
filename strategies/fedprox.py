"""FedProx (Li et al., MLSys 2020): local cross-entropy plus a proximal term to the global model;
the server takes the plain mean.

    prox_form = l2        (the paper):       L_ce(w) + μ/2 · ||w − w_g||²
    prox_form = smooth_l1 (authors' code):   L_ce(w) + μ · (1/T) Σ_tensors mean(smooth_l1(w − w_g))

(smooth_l1(d) = d²/2 if |d| < 1 else |d| − 1/2, the Huber loss with β = 1; T tensors.)
μ grid of the authors' FL code (lxcnju/FedRepo): {1e-4, 1e-3, 1e-2}, also 1e-5 and 1e-1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from strategies.base import FederatedStrategy, MethodConfig
from strategies.functional import Params, cross_entropy, squared_distance
from strategies.objective import ClientObjective

PROX_FORMS = ("l2", "smooth_l1")


@dataclass
class FedProxConfig(MethodConfig):
    name: str = "fedprox"
    mu: float = 0.01  # weight μ of the proximal term
    prox_form: str = "l2"  # l2: μ/2·||w − w_g||² (the FedProx paper) | smooth_l1: the authors' code

    def __post_init__(self) -> None:
        if not self.mu >= 0:
            raise ValueError(f"method.mu={self.mu} must be >= 0")
        if self.prox_form not in PROX_FORMS:
            raise ValueError(f"method.prox_form={self.prox_form!r} is not known; accepted: {', '.join(PROX_FORMS)}")


def proximal_term(params: Mapping[str, torch.Tensor], global_params: Mapping[str, torch.Tensor],
                  form: str) -> torch.Tensor:
    """1/2·||w − w_g||² (FedProx Eq. (2)) or the authors' per-tensor mean smooth-L1, averaged over tensors."""
    if form == "l2":
        return 0.5 * squared_distance(params, global_params)
    return sum(F.smooth_l1_loss(params[k], g) for k, g in global_params.items()) / len(global_params)


class FedProxStrategy(FederatedStrategy):
    """Mean of the clients' models (as FedAvg)."""


class FedProxObjective(ClientObjective):
    """L_ce + μ·proximal_term(w, w_g) with the form of `method.prox_form`."""

    cfg: FedProxConfig

    def prepare(self, model: nn.Module, global_params: Params, state: Params) -> Params:
        return dict(global_params)

    def loss(self, model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor,
             consts: Params) -> tuple[torch.Tensor, torch.Tensor]:
        ce = cross_entropy(model, params, x, y)
        return ce + self.cfg.mu * proximal_term(params, consts, self.cfg.prox_form), ce
