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
def float64():
    """Two code paths compared in float64: their rounding (~1e-16 per operation) stays far below any
    tolerance after a few rounds of SGD, whichever CPU kernels run (float32 does not: 1e-4 apart on
    Intel vs AMD after 2 rounds x 2 epochs). Models, data and updates all take the default dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def flower_ids():
    """Flower only builds Messages inside a run; give tests the identity a run would have."""
    from sim.cohort.flower_internals import act_as_superlink

    act_as_superlink(1)
    yield


def pushed(messages: list) -> list:
    """The messages with the ids a Grid gives them when it sends them (replies refer to these ids)."""
    from uuid import uuid4

    from sim.cohort.flower_internals import set_message_id

    for message in messages:
        set_message_id(message, str(uuid4()))
    return messages


def train_message(node_id: int):
    """A sent train message to `node_id` (needs `flower_ids`)."""
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    return pushed([Message(RecordDict({"config": ConfigRecord({"server-round": 1})}),
                           message_type=MessageType.TRAIN, dst_node_id=node_id)])[0]


def train_reply(sent, tensors: dict[str, torch.Tensor], metrics: dict):
    """A client's reply to the train message `sent` (needs `flower_ids`)."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    content = RecordDict({"arrays": ArrayRecord(torch_state_dict=tensors), "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=sent)


class Unpickled:
    """Unpickling this object creates the file `marker`: proof that some code unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_bombs(folder: Path) -> list[tuple[Path, Path]]:
    """(file, marker) pairs: a plain pickle and a torch.save file whose loading would create `marker`."""
    import pickle

    bombs = []
    for kind in ("pickle", "torch"):
        path, marker = folder / f"{kind}-bomb.safetensors", folder / f"{kind}-unpickled"
        if kind == "pickle":
            path.write_bytes(pickle.dumps({"w": Unpickled(marker)}))
        else:
            torch.save({"w": Unpickled(marker)}, path)
        bombs.append((path, marker))
    return bombs
