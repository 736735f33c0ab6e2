"""The configured method, built from the strategies registry: objective, strategy, FedPAN masks."""

from __future__ import annotations

from collections.abc import Mapping

from fedsign.config import RunConfig
from fedsign.models.pan import PanSpec
from strategies.base import FederatedStrategy
from strategies.objective import ClientObjective
from strategies.registry import get_method


def pan_spec(cfg: RunConfig) -> PanSpec | None:
    """FedPAN's mask spec when the method uses position-aware neurons, else None."""
    if not get_method(cfg.method.name).uses_pan:
        return None
    return PanSpec(cfg.method.pan_op, cfg.method.pan_t, cfg.method.pan_a)  # type: ignore[attr-defined]


def make_objective(cfg: RunConfig) -> ClientObjective:
    return get_method(cfg.method.name).objective(cfg.method)


def make_strategy(cfg: RunConfig, param_keys: list[str], nodes: Mapping[int, int]) -> FederatedStrategy:
    """The method's server strategy for the clients `nodes` (client id -> Flower node id)."""
    return get_method(cfg.method.name).strategy(
        cfg.method, nodes=nodes, clients_per_round=cfg.clients_per_round, seed=cfg.seed, param_keys=param_keys,
        weighted=cfg.train.weighted, min_replies=cfg.federation.min_replies)
