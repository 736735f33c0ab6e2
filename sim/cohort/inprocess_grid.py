"""A Flower Grid whose nodes live in this process and run the real ClientApp, one message after
another. The server loop (fedsign.server_loop) talks to it exactly as to Flower's simulation grid;
the cohort engine (sim/cohort/grid.py) overrides how a round's TRAIN messages are executed."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedsign.client_app import app as client_app
from sim.cohort.flower_internals import act_as_superlink, empty_run, set_message_id

log = logging.getLogger("fedsign")
FIRST_NODE_ID = 10_000  # node ids are FIRST_NODE_ID + partition id (any ints unlike the SuperLink's)


class InProcessGrid(Grid):
    def __init__(self, num_clients: int, run_id: int = 1, state_dir: str = "") -> None:
        """`state_dir`: the nodes keep method state on disk there, as SuperNodes with --node-config
        state-dir (it then survives a restart of this process); default: in their Context.state."""
        self._run = empty_run(run_id)
        act_as_superlink(run_id)
        extra = {"state-dir": state_dir} if state_dir else {}
        self.contexts = {
            FIRST_NODE_ID + cid: Context(run_id=run_id, node_id=FIRST_NODE_ID + cid,
                                         node_config={"partition-id": cid, "num-partitions": num_clients, **extra},
                                         state=RecordDict(), run_config={})
            for cid in range(num_clients)
        }
        self._replies: dict[str, Message] = {}

    # ---- Grid API ----
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, ttl=ttl,
                       group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Executes the messages at once; their replies wait to be pulled."""
        messages = list(messages)
        ids = []
        for message in messages:
            set_message_id(message, str(uuid4()))
            ids.append(message.metadata.message_id)
        for reply in self.execute(messages):
            self._replies[reply.metadata.reply_to_message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    # ---- execution ----
    def execute(self, messages: list[Message]) -> list[Message]:
        """Replies in the order of `messages`; TRAIN messages go through `execute_train` together."""
        for message in messages:
            if message.metadata.dst_node_id not in self.contexts:
                raise ValueError(f"no node {message.metadata.dst_node_id} in this grid")
        trains = [m for m in messages if m.metadata.message_type == MessageType.TRAIN]
        replies = dict(zip((id(m) for m in trains), self.execute_train(trains))) if trains else {}
        return [replies[id(m)] if id(m) in replies else self.handle(m) for m in messages]

    def execute_train(self, messages: list[Message]) -> list[Message]:
        """One client after another through the ClientApp (the Flower engine's client path)."""
        return [self.handle(m) for m in messages]

    def handle(self, message: Message) -> Message:
        """The ClientApp's reply; an exception becomes an error reply, as in Flower's runtimes."""
        try:
            return client_app(message, self.contexts[message.metadata.dst_node_id])
        except Exception as exc:  # noqa: BLE001 (any client failure is reported to the server, not raised)
            log.warning("node %s failed: %s", message.metadata.dst_node_id, exc)
            return error_reply(message, exc)


def error_reply(message: Message, exc: Exception) -> Message:
    return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(exc).__name__}: {exc}"),
                   reply_to=message)
