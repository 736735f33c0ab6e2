"""The three Flower internals the in-process Grid (sim/cohort/inprocess_grid.py) relies on, in one
place. Flower's public API has no way to run a Grid inside the ServerApp's process, so this module
mirrors what Flower's own InMemoryGrid and runtimes do; tests/test_flower_internals.py fails loudly,
naming the installed Flower version, when an upgrade moves any of them."""

from __future__ import annotations

from flwr.app import Message
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity


def set_message_id(message: Message, message_id: str) -> None:
    """Give a pushed message its id, as Flower's InMemoryGrid.push_messages does (the id is read-only)."""
    message.metadata.__dict__["_message_id"] = message_id


def act_as_superlink(run_id: int) -> None:
    """Messages take their sender from the process's task identity, which Flower's runtimes set:
    make this process the SuperLink of run `run_id`."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID


def empty_run(run_id: int) -> Run:
    """The Run a Grid reports before set_run() is called."""
    return Run.create_empty(run_id)
