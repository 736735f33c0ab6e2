"""The ClientApp: a node trains its Dirichlet partition with the method's objective and replies with
its model and metrics. `flwr run .` and `fedsign-sim` both run this same app."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsign.client_state import ClientStateStore, Stamp
from fedsign.config import RunConfig
from fedsign.data.specs import dataset_spec
from fedsign.devices import resolve_device
from fedsign.errors import ConfigError
from fedsign.data.images import ImageSet
from fedsign.local_training import LocalResult, train_locally
from fedsign.methods import make_objective
from fedsign.models import load_exchanged
from fedsign.workspace import client_data, initial_parameters, model_for
from strategies.objective import ClientObjective
from strategies.sampling import client_seed

app = ClientApp()

# node_config keys a SuperNode may set (deployment): its data location, device and state folder.
NODE_OVERRIDES = {"data-root": "dataset.root", "device": "device"}
# what the server adds to the run config in each train message (not RunConfig keys)
MESSAGE_KEYS = ("server-round", "run-stamp", "run-segment", "resumed-from")


def node_client_id(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise ConfigError("this SuperNode has no 'partition-id' in its --node-config")
    return int(context.node_config["partition-id"])


def run_config_for(message: Message, context: Context) -> RunConfig:
    """The server's config (sent with every message), with this node's local overrides."""
    flat = {k: v for k, v in message.content["config"].items() if k not in MESSAGE_KEYS}
    for node_key, cfg_key in NODE_OVERRIDES.items():
        if context.node_config.get(node_key):
            flat[cfg_key] = context.node_config[node_key]
    cfg = RunConfig.from_flat(flat)
    parts = context.node_config.get("num-partitions")
    if parts is not None and int(parts) != cfg.federation.num_clients:
        raise ConfigError(f"this node was started with num-partitions={parts}, but the run has "
                          f"federation.num_clients={cfg.federation.num_clients}")
    return cfg


@app.query()
def query(message: Message, context: Context) -> Message:
    """Who am I: the server maps client (partition) ids to Flower node ids with this."""
    metrics = MetricRecord({"partition-id": node_client_id(context)})
    return Message(RecordDict({"metrics": metrics}), reply_to=message)


@dataclass
class TrainTask:
    """What one train message asks of this node, decoded once (the cohort engine decodes it alike)."""

    cfg: RunConfig
    client_id: int
    server_round: int
    data: ImageSet  # this client's partition, on the run's device
    objective: ClientObjective
    store: ClientStateStore
    method_state: dict[str, torch.Tensor]  # what the method kept from this client's last round
    seed: int  # data order and augmentation of this client in this round


def train_task(message: Message, context: Context, cfg: RunConfig | None = None) -> TrainTask:
    cfg = cfg or run_config_for(message, context)
    client_id = node_client_id(context)
    server_round = int(message.content["config"]["server-round"])
    device = resolve_device(cfg.device)
    data = client_data(cfg, client_id, device)
    if len(data) == 0:
        raise ConfigError(f"client {client_id} holds no training samples under this partition")
    sent = message.content["config"]
    store = ClientStateStore(context, cfg.out, Stamp(str(sent.get("run-stamp", "")), str(sent.get("run-segment", "")),
                                                     int(sent.get("resumed-from", 0)), cfg.checkpoint.every))
    objective = make_objective(cfg)
    state = ({k: v.to(device) for k, v in store.load(client_id, server_round).items()}
             or objective.first_state(lambda: initial_parameters(cfg, device)))
    return TrainTask(cfg, client_id, server_round, data, objective, store, state,
                     client_seed(cfg.seed, server_round, client_id))


def train_reply(message: Message, task: TrainTask, result: LocalResult) -> Message:
    """Keep the method's state for the next round; reply with the model and the metrics."""
    task.store.save(task.client_id, result.method_state, task.server_round)
    metrics = MetricRecord({
        "num-examples": result.num_examples, "train_loss": result.train_loss, "ce_loss": result.ce_loss,
        "partition-id": task.client_id, "steps": result.steps,
    })
    return Message(RecordDict({"arrays": ArrayRecord(torch_state_dict=result.state), "metrics": metrics}),
                   reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    task = train_task(message, context)
    cfg = task.cfg
    model = model_for(cfg, task.data.x.device)
    load_exchanged(model, message.content["arrays"].to_torch_state_dict(), what="the global model")
    torch.manual_seed(task.seed)
    result = train_locally(model, task.objective, task.method_state, task.data, dataset_spec(cfg.dataset.name),
                           cfg.train, cfg.dataset.augment, task.seed)
    return train_reply(message, task, result)
