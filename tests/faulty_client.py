"""Tests only: fedsign's ClientApp with injected faults, and a driver that runs it in Flower's
simulation engine. FEDSIGN_TEST_FAULTS is a list CLIENT=FAULT[@ROUND] (every round without @):
`raise` (the ClientApp crashes), `nan` (it replies with NaN weights), `slow` (it replies
federation.round_timeout + 4 s late), `hang` (it never replies in time: 1000 s).
E.g. "0=raise,1=nan,3=slow@2".

    python -m tests.faulty_client OUT_DIR KEY=VALUE...   (RunConfig keys)
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from fedsign import client_app as fedsign_client
from fedsign.config import DatasetConfig
from fedsign.data import load_dataset

app = ClientApp()


def fault_now(client: int, server_round: int) -> str:
    """This client's fault in this round, or ''."""
    for item in filter(None, os.environ.get("FEDSIGN_TEST_FAULTS", "").split(",")):
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
    fault = fault_now(fedsign_client.node_client_id(context), int(config["server-round"]))
    if fault == "raise":
        raise RuntimeError("injected fault: this client crashes")
    if fault in ("slow", "hang"):
        time.sleep(float(config["federation.round_timeout"]) + 4 if fault == "slow" else 1000)
    reply = fedsign_client.train(message, context)
    if fault == "nan":
        tensors = reply.content["arrays"].to_torch_state_dict()
        reply.content["arrays"] = ArrayRecord(torch_state_dict={k: torch.full_like(v, float("nan"))
                                                                for k, v in tensors.items()})
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
