"""The Flower internals that sim/cohort/flower_internals.py relies on still work as it assumes. If a
Flower upgrade moves one of them, this fails first, naming the installed version, instead of the
cohort engine failing somewhere deep in a run."""

from __future__ import annotations

import flwr
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from sim.cohort.flower_internals import act_as_superlink, empty_run, set_message_id

WHO = f"(installed Flower {flwr.__version__}: update sim/cohort/flower_internals.py)"


def test_messages_can_be_built_as_the_superlink_and_given_ids():
    act_as_superlink(7)
    message = Message(RecordDict({"config": ConfigRecord({"a": 1})}), message_type=MessageType.TRAIN, dst_node_id=12)
    assert message.metadata.run_id == 7, WHO
    set_message_id(message, "abc")
    assert message.metadata.message_id == "abc", WHO
    reply = Message(RecordDict({"arrays": ArrayRecord()}), reply_to=message)
    assert reply.metadata.reply_to_message_id == "abc" and reply.metadata.dst_node_id == message.metadata.src_node_id, WHO


def test_an_empty_run_has_the_id_it_was_given():
    run = empty_run(3)
    assert run.run_id == 3, WHO
