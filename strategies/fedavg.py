"""FedAvg (McMahan et al. 2017; the paper's Algorithm 1 without the sign term): plain local
cross-entropy, server mean of the sampled clients' models. No settings (strategies.base.MethodConfig)."""

from strategies.base import FederatedStrategy
from strategies.objective import ClientObjective


class FedAvgStrategy(FederatedStrategy):
    """Mean of the clients' models (Algorithm 1, line 11)."""


class FedAvgObjective(ClientObjective):
    """L_ce^k: local cross-entropy only."""
