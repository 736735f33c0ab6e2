"""What every method shares on the server: its settings' base class, and a strategy that samples a
round's clients by id from (seed, round), validates their updates and averages them on the model's
device (the paper's Algorithm 1), and measures sign changes.

The split follows Flower's `Strategy` (`configure_train` builds the round's messages,
`aggregate_train` turns the replies into the next global model), with torch tensors in and out: the
global model is converted to Flower's ArrayRecord once per round, and each reply back once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from strategies.sampling import sample_clients
from strategies.sign_metrics import sign_change_fraction
from strategies.validation import Rejection, Update, check_reply, unreachable

log = logging.getLogger("fedsign")
Tensors = dict[str, torch.Tensor]


@dataclass
class MethodConfig:
    """A method's `method.*` settings. Each method subclasses it in its own module with its fields,
    defaults and checks (raise ValueError in __post_init__); this base is FedAvg's (no settings)."""

    name: str = "fedavg"


@dataclass
class RoundOutcome:
    """One round as the server saw it (client ids are partition ids)."""

    sampled: list[int]
    updates: list[Update] = field(default_factory=list)  # valid replies, in the order of `sampled`
    rejected: dict[int, str] = field(default_factory=dict)  # client id -> reason
    missing: list[int] = field(default_factory=list)  # sampled, but no reply reached the server
    new_global: Tensors | None = None  # None: fewer valid updates than min_replies; the model is kept
    metrics: dict[str, float] = field(default_factory=dict)


class FederatedStrategy:
    """FedAvg of Algorithm 1 (plain mean of the sampled clients' models; sample-weighted as an option).

    Methods subclass it and override `aggregate` (how validated client models become the next
    global model) and, when the server keeps state across rounds, `state_dict`/`load_state_dict`.
    """

    def __init__(self, method: MethodConfig, *, nodes: Mapping[int, int], clients_per_round: int, seed: int,
                 param_keys: Iterable[str], weighted: bool = False, min_replies: int = 1) -> None:
        self.method = method
        self.nodes = dict(nodes)  # client (partition) id -> Flower node id, for every client that may train
        self.num_clients = len(self.nodes)
        self.clients_per_round = clients_per_round
        self.seed = seed
        self.param_keys = list(param_keys)
        self.weighted = weighted
        self.min_replies = min_replies
        self._sent: Tensors = {}  # this round's global model
        self._messages: dict[int, Message] = {}  # this round's message to each sampled client

    def configure_train(self, server_round: int, global_state: Tensors, config: ConfigRecord) -> list[Message]:
        """The round's train messages: the global model and the run config, to the sampled clients."""
        self._sent = global_state
        arrays = ArrayRecord(torch_state_dict=global_state)
        round_config = ConfigRecord({**dict(config), "server-round": server_round})
        chosen = sample_clients(sorted(self.nodes), self.clients_per_round, self.seed, server_round)
        self._messages = {cid: Message(content=RecordDict({"arrays": arrays, "config": round_config}),
                                       message_type=MessageType.TRAIN, dst_node_id=self.nodes[cid])
                          for cid in chosen}
        return list(self._messages.values())

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> RoundOutcome:
        """Validate each reply against the model sent, then aggregate the valid ones."""
        client_of = {m.metadata.message_id: cid for cid, m in self._messages.items()}
        outcome = RoundOutcome(sampled=list(self._messages))
        answered: dict[int, Update | Rejection] = {}
        for reply in replies:
            cid = client_of.get(reply.metadata.reply_to_message_id)
            if cid is None or cid in answered:
                log.warning("round %d: ignored a reply to no message of this round (from node %s)",
                            server_round, reply.metadata.src_node_id)
                continue
            if unreachable(reply):
                continue  # Flower could not reach the node: it sent nothing
            answered[cid] = check_reply(reply, cid, self._sent)
        for cid in outcome.sampled:
            result = answered.get(cid)
            if isinstance(result, Update):
                outcome.updates.append(result)
            elif isinstance(result, Rejection):
                outcome.rejected[cid] = result.reason
                log.warning("round %d: rejected the update of client %d (node %d): %s", server_round, cid,
                            self.nodes[cid], result.reason)
            else:
                outcome.missing.append(cid)
        outcome.metrics = {"rejected_updates": len(outcome.rejected), "missing_replies": len(outcome.missing),
                           "clients": len(outcome.updates)}
        if len(outcome.updates) < self.min_replies:
            return outcome
        weights = [float(u.num_examples) if self.weighted else 1.0 for u in outcome.updates]
        outcome.new_global = self.aggregate(self._sent, outcome.updates, weights)
        flips = [sign_change_fraction(self._sent, u.tensors, self.param_keys) for u in outcome.updates]
        outcome.metrics["sign_flip_fraction"] = sum(flips) / len(flips)
        for name, key in (("train_loss", "train_loss"), ("train_ce", "ce_loss")):
            values = [u.metrics[key] for u in outcome.updates if key in u.metrics]
            if values:
                outcome.metrics[name] = sum(values) / len(values)
        return outcome

    # ---- what methods override ----
    def aggregate(self, global_tensors: Tensors, updates: list[Update], weights: list[float]) -> Tensors:
        """Algorithm 1: the (weighted) mean of the clients' models."""
        return weighted_mean([u.tensors for u in updates], weights)

    def state_dict(self) -> Tensors:
        """Server-side method state needed to resume a run (none for FedAvg)."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned."""


def weighted_mean(models: list[Tensors], weights: list[float]) -> Tensors:
    """Σ_k w_k·θ_k / Σ_k w_k per tensor, on the tensors' device and in their dtype."""
    total = float(sum(weights))
    keys = list(models[0])
    out = [torch.zeros_like(models[0][k]) for k in keys]
    for model, w in zip(models, weights):
        torch._foreach_add_(out, [model[k] for k in keys], alpha=w / total)
    return dict(zip(keys, out))
