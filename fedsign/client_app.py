"""The ClientApp: a node trains its Dirichlet partition with the method's objective and replies with
its model and metrics. `flwr run .` and `fedsign-sim` both run this same app."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsign.client_state import ClientStateStore
from fedsign.config import RunConfig
from fedsign.data.specs import dataset_spec
from fedsign.devices import resolve_device
from fedsign.errors import ConfigError
from fedsign.local_training import train_locally
from fedsign.methods import make_objective
from fedsign.models import load_exchanged
from fedsign.workspace import client_data, model_for
from strategies.sampling import client_seed

app = ClientApp()

# node_config keys a SuperNode may set (deployment): its data location, device and state folder.
NODE_OVERRIDES = {"data-root": "dataset.root", "device": "device"}


def node_client_id(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise ConfigError("this SuperNode has no 'partition-id' in its --node-config")
    return int(context.node_config["partition-id"])


def run_config_for(message: Message, context: Context) -> RunConfig:
    """The server's config (sent with every message), with this node's local overrides."""
    flat = {k: v for k, v in message.content["config"].items() if k != "server-round"}
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


@app.train()
def train(message: Message, context: Context) -> Message:
    cfg = run_config_for(message, context)
    client_id = node_client_id(context)
    server_round = int(message.content["config"]["server-round"])
    device = resolve_device(cfg.device)
    data = client_data(cfg, client_id, device)
    if len(data) == 0:
        raise ConfigError(f"client {client_id} holds no training samples under this partition")
    model = model_for(cfg, device)
    load_exchanged(model, message.content["arrays"].to_torch_state_dict(), what="the global model")
    store = ClientStateStore(context, cfg.out)
    state = {k: v.to(device) for k, v in store.load(client_id).items()}
    seed = client_seed(cfg.seed, server_round, client_id)
    torch.manual_seed(seed)
    result = train_locally(model, make_objective(cfg), state, data, dataset_spec(cfg.dataset.name), cfg.train,
                           cfg.dataset.augment, seed)
    store.save(client_id, result.method_state, server_round)
    metrics = MetricRecord({
        "num-examples": result.num_examples, "train_loss": result.train_loss, "ce_loss": result.ce_loss,
        "partition-id": client_id, "steps": result.steps,
    })
    return Message(RecordDict({"arrays": ArrayRecord(torch_state_dict=result.state), "metrics": metrics}),
                   reply_to=message)

