"""The server side every method shares: a Flower `FedAvg` whose round is sampled by client id from
(seed, round), whose updates are validated before averaging, and which measures sign changes."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from strategies.sampling import sample_clients
from strategies.sign_metrics import sign_change_fraction
from strategies.validation import Rejection, Update, validate_replies

log = logging.getLogger("fedsign")
Tensors = dict[str, torch.Tensor]


class FederatedStrategy(FedAvg):
    """FedAvg of Algorithm 1 (plain mean of the sampled clients' models; sample-weighted as an option).

    Methods subclass it and override `aggregate` (how validated client models become the next
    global model) and, when the server keeps state across rounds, `state_dict`/`load_state_dict`.
    """

    def __init__(self, *, num_clients: int, clients_per_round: int, seed: int, param_keys: Iterable[str],
                 weighted: bool = False, min_replies: int = 1,
                 method: Mapping[str, Any] | None = None) -> None:
        super().__init__(fraction_train=clients_per_round / num_clients, fraction_evaluate=0.0,
                         min_train_nodes=clients_per_round, min_available_nodes=num_clients)
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round
        self.seed = seed
        self.param_keys = list(param_keys)
        self.weighted = weighted
        self.min_replies = min_replies
        self.hp: dict[str, Any] = dict(method or {})
        self.nodes: dict[int, int] = {}  # client (partition) id -> Flower node id
        self.sent: Tensors = {}  # the global model sent this round
        self.rejections: list[Rejection] = []
        self.updates: list[Update] = []

    # ---- Flower Strategy API ----
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if len(self.nodes) < self.num_clients:
            raise RuntimeError("the server loop must set strategy.nodes (client id -> node id) first")
        self.sent = arrays.to_torch_state_dict()
        chosen = sample_clients(self.num_clients, self.clients_per_round, self.seed, server_round)
        return [
            Message(content=RecordDict({"arrays": arrays,
                                        "config": ConfigRecord({**dict(config), "server-round": server_round})}),
                    message_type=MessageType.TRAIN, dst_node_id=self.nodes[cid])
            for cid in chosen
        ]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.updates, self.rejections = validate_replies(replies, self.sent)
        for rejection in self.rejections:
            log.warning("round %d: rejected the update of node %s: %s", server_round, rejection.node_id,
                        rejection.reason)
        metrics = MetricRecord({"rejected_updates": len(self.rejections), "clients": len(self.updates)})
        if len(self.updates) < self.min_replies:
            return None, metrics
        weights = [float(u.num_examples) if self.weighted else 1.0 for u in self.updates]
        new_global = self.aggregate(server_round, self.sent, self.updates, weights)
        flips = [sign_change_fraction(self.sent, u.tensors, self.param_keys) for u in self.updates]
        losses = [u.metrics["train_loss"] for u in self.updates if "train_loss" in u.metrics]
        metrics["sign_flip_fraction"] = sum(flips) / len(flips)
        if losses:
            metrics["train_loss"] = sum(losses) / len(losses)
        return ArrayRecord(torch_state_dict=new_global), metrics

    # ---- what methods override ----
    def aggregate(self, server_round: int, global_tensors: Tensors, updates: list[Update],
                  weights: list[float]) -> Tensors:
        """Algorithm 1: the (weighted) mean of the clients' models."""
        return weighted_mean([u.tensors for u in updates], weights)

    def state_dict(self) -> Tensors:
        """Server-side method state needed to resume a run (none for FedAvg)."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned."""


def weighted_mean(models: list[Tensors], weights: list[float]) -> Tensors:
    total = float(sum(weights))
    out: Tensors = {}
    for key in models[0]:
        acc = torch.zeros_like(models[0][key], dtype=torch.float64)
        for model, w in zip(models, weights):
            acc += model[key].to(torch.float64) * (w / total)
        out[key] = acc.to(models[0][key].dtype)
    return out
