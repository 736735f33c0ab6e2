"""Shared test helpers: paths to the offline data, Flower message construction, tiny configs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# The workplace's offline datasets live in ../shared/data beside the checkout (CI has them too).
SHARED_DATA = Path(os.environ.get("FEDSIGN_SHARED_DATA", ROOT.parent / "shared" / "data"))
CIFAR10_JPEG = SHARED_DATA / "cifar10-jpeg"

needs_cifar10 = pytest.mark.skipif(not (CIFAR10_JPEG / "cifar10-train.tar.gz").is_file(),
                                   reason="offline CIFAR-10 copy (../shared/data/cifar10-jpeg) not present")


def cli(module: str) -> list[str]:
    """Command line of a console script, valid whether or not the project is installed."""
    return [sys.executable, "-m", module]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    return env


@pytest.fixture
def one_thread():
    """Tiny ops on a shared 2-core machine are far faster (and steadier) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def flower_ids():
    """Flower only builds Messages inside a run; give tests the identity a run would have."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield


def train_reply(tensors: dict[str, torch.Tensor], node_id: int, metrics: dict):
    """A client's reply Message to a train message sent to `node_id` (needs `flower_ids`)."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

    sent = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}),
                   message_type=MessageType.TRAIN, dst_node_id=node_id)
    content = RecordDict({"arrays": ArrayRecord(torch_state_dict=tensors), "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=sent)
