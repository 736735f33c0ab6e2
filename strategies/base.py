"""The server side every method shares: a Flower `FedAvg` whose round is sampled by client id from
(seed, round), whose updates are validated before averaging, and which measures sign changes."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from strategies.sampling import sample_clients
from strategies.sign_metrics import sign_change_fraction
from strategies.validation import Rejection, Update, check_reply

log = logging.getLogger("fedsign")
Tensors = dict[str, torch.Tensor]
# Flower's own error replies for a message no node will answer (the node missed its heartbeats, the
# message or its reply expired): the client sent nothing, so it is missing, not rejected
UNAVAILABLE = (ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE)


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
        self.outbox: list[tuple[int, Message]] = []  # this round's (client id, message sent)
        self.replied: list[int] = []  # client ids whose updates were aggregated this round
        self.missing: dict[int, str] = {}  # sampled client ids with no usable reply: why

    # ---- Flower Strategy API ----
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if len(self.nodes) < self.num_clients:
            raise RuntimeError("the server loop must set strategy.nodes (client id -> node id) first")
        self.sent = arrays.to_torch_state_dict()
        chosen = sample_clients(self.num_clients, self.clients_per_round, self.seed, server_round)
        self.outbox = [
            (cid, Message(content=RecordDict({"arrays": arrays,
                                              "config": ConfigRecord({**dict(config), "server-round": server_round})}),
                          message_type=MessageType.TRAIN, dst_node_id=self.nodes[cid]))
            for cid in chosen
        ]
        return [message for _, message in self.outbox]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # a reply names the message it answers (the grid sets message ids when it sends; Flower's own
        # error replies come from the SuperLink's node id, not from the node the message went to)
        by_message = {m.metadata.message_id: cid for cid, m in self.outbox if m.metadata.message_id}
        by_node = {node: cid for cid, node in self.nodes.items()}
        self.updates, self.rejections, self.missing, replied = [], [], {}, set()
        for reply in replies:
            cid = by_message.get(reply.metadata.reply_to_message_id, by_node.get(reply.metadata.src_node_id, -1))
            if reply.has_error() and reply.error.code in UNAVAILABLE:
                self.missing[cid] = f"unreachable: {reply.error.reason}"
                continue
            result = check_reply(reply, self.sent)
            if isinstance(result, Update):
                self.updates.append(result)
                replied.add(cid)
                continue
            result.node_id, result.client_id = self.nodes.get(cid, result.node_id), cid
            self.rejections.append(result)
            log.warning("round %d: rejected the update of client %d (node %s): %s", server_round, cid,
                        result.node_id, result.reason)
        rejected = {r.client_id for r in self.rejections}
        for cid, _ in self.outbox:
            if cid not in replied | rejected:
                self.missing.setdefault(cid, "no reply within the round's timeout")
        self.replied = sorted(replied)
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
