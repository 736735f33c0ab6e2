"""Tests only: fedsign's ClientApp with injected faults, and a driver that runs it in Flower's
simulation engine. FEDSIGN_TEST_FAULTS is a list CLIENT=FAULT[@ROUND] (every round without @):
`raise` (the ClientApp crashes), `nan` (it replies with NaN weights), `malformed` (its first array
cut to 3 values: a wrong shape), `slow` (it replies federation.round_timeout + 4 s late), `hang` (it
never replies in time: 1000 s), `hold` (it waits, without training, until its fault is taken off the
list, then fails). E.g. "0=raise,1=nan,3=slow@2". A value "@PATH" names a file holding the list,
read at every message, so that a test can change the faults of SuperNodes that keep running.

    python -m tests.faulty_client OUT_DIR KEY=VALUE...   (RunConfig keys)

A deployment runs it with an app folder whose pyproject.toml names `tests.faulty_client:app` as
the ClientApp (tests/test_chaos.py), FEDSIGN_TEST_FAULTS set in the SuperNodes' environment.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from fedsign import client_app as fedsign_client
from fedsign.config import DatasetConfig
from fedsign.data import load_dataset

app = ClientApp()


def fault_list() -> str:
    spec = os.environ.get("FEDSIGN_TEST_FAULTS", "")
    if spec.startswith("@"):
        path = Path(spec[1:])
        return path.read_text().strip() if path.is_file() else ""
    return spec


def fault_now(client: int, server_round: int) -> str:
    """This client's fault in this round, or ''."""
    for item in filter(None, fault_list().split(",")):
        who, _, what = item.partition("=")
        fault, _, at = what.partition("@")
        if int(who) == client and (not at or int(at) == server_round):
            return fault
    return ""


@app.query()
def query(message: Message, context: Context) -> Message:
    # load the data while the server waits for clients to connect (no deadline), so that on a busy
    # machine the first round's training stays well within federation.round_timeout
    load_dataset(DatasetConfig("digits"))
    return fedsign_client.query(message, context)


@app.train()
def train(message: Message, context: Context) -> Message:
    config = message.content["config"]
    client, server_round = fedsign_client.node_client_id(context), int(config["server-round"])
    fault = fault_now(client, server_round)
    if fault:  # a test may wait for this line (in deployment, in the SuperNode's log)
        print(f"faulty client {client}: {fault} in round {server_round}", file=sys.stderr, flush=True)
    if fault == "raise":
        raise RuntimeError("injected fault: this client crashes")
    while fault == "hold":  # a SuperNode runs one ClientApp at a time: it must end, not hang
        time.sleep(0.5)
        if fault_now(client, server_round) != "hold":
            raise RuntimeError("injected fault: held, released without training")
    if fault in ("slow", "hang"):
        time.sleep(float(config["federation.round_timeout"]) + 4 if fault == "slow" else 1000)
    reply = fedsign_client.train(message, context)
    if fault in ("nan", "malformed"):
        tensors = reply.content["arrays"].to_torch_state_dict()
        if fault == "nan":
            tensors = {k: torch.full_like(v, float("nan")) for k, v in tensors.items()}
        else:
            first = next(iter(tensors))
            tensors[first] = tensors[first].flatten()[:3].clone()
        reply.content["arrays"] = ArrayRecord(torch_state_dict=tensors)
    return reply


if __name__ == "__main__":
    from fedsign.config import RunConfig
    from fedsign.logs import setup_logging
    from fedsign.server_app import prepare_run
    from sim.flower_engine import run_flower

    setup_logging()
    flat = dict(arg.split("=", 1) for arg in sys.argv[2:])
    results = run_flower(prepare_run(RunConfig.from_flat({**flat, "out": sys.argv[1]})), client=app)
    print("RESULTS " + json.dumps(results), flush=True)
