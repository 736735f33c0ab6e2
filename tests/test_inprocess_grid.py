"""The in-process Grids (sim/cohort/inprocess_grid.py, sim/cohort/grid.py) on their own, without the
server loop: Flower's Grid API (ids, run, messages pushed, pulled once, in order), unknown nodes, a
failing ClientApp as an error reply, and which TRAIN messages the cohort grid trains together (one
configuration) and which one by one (several configurations, a bad config, a client with no data,
a failed cohort)."""

from __future__ import annotations

import logging

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.run import Run

import sim.cohort.grid as cohort_grid
from fedsign.config import RunConfig
from fedsign.data.specs import dataset_spec
from fedsign.models import build_model, exchanged_state
from fedsign.workspace import partitions
from sim.cohort.grid import CohortGrid
from sim.cohort.inprocess_grid import FIRST_NODE_ID, InProcessGrid


def query(grid: InProcessGrid, node: int) -> Message:
    return grid.create_message(RecordDict(), MessageType.QUERY, node, "g")


def test_the_grid_api_pushes_pulls_once_and_keeps_the_order(tmp_path):
    grid = InProcessGrid(3, run_id=7, state_dir=str(tmp_path))
    nodes = list(grid.get_node_ids())
    assert nodes == [FIRST_NODE_ID, FIRST_NODE_ID + 1, FIRST_NODE_ID + 2] and grid.run.run_id == 7
    assert [grid.contexts[n].node_config for n in nodes] == [
        {"partition-id": i, "num-partitions": 3, "state-dir": str(tmp_path)} for i in range(3)]
    assert all((grid.contexts[n].run_id, grid.contexts[n].node_id, grid.contexts[n].run_config) == (7, n, {})
               for n in nodes)
    assert "state-dir" not in InProcessGrid(2).contexts[FIRST_NODE_ID].node_config
    run = Run.create_empty(9)
    grid.set_run(run)
    assert grid.run is run

    message = grid.create_message(RecordDict(), MessageType.QUERY, nodes[1], "group 5", ttl=40.0)
    assert (message.metadata.dst_node_id, message.metadata.message_type) == (nodes[1], MessageType.QUERY)
    assert message.metadata.group_id == "group 5" and message.metadata.ttl == 40.0
    messages = [query(grid, n) for n in reversed(nodes)]
    ids = list(grid.push_messages(messages))
    assert ids == [m.metadata.message_id for m in messages] and len(set(ids)) == 3 and all(ids)
    replies = list(grid.pull_messages([ids[2], "unknown", ids[0]]))
    assert [r.metadata.reply_to_message_id for r in replies] == [ids[2], ids[0]]
    assert [int(r.content["metrics"]["partition-id"]) for r in replies] == [0, 2]
    assert list(grid.pull_messages(ids)) != [] and list(grid.pull_messages(ids)) == []  # each reply once
    answered = list(grid.send_and_receive([query(grid, n) for n in nodes]))
    assert [int(r.content["metrics"]["partition-id"]) for r in answered] == [0, 1, 2]


def test_an_unknown_node_is_refused_and_a_failing_client_app_replies_with_its_error(caplog):
    grid = InProcessGrid(2)
    with pytest.raises(ValueError, match=f"^no node {FIRST_NODE_ID + 2} in this grid$"):
        grid.push_messages([query(grid, FIRST_NODE_ID), query(grid, FIRST_NODE_ID + 2)])
    del grid.contexts[FIRST_NODE_ID].node_config["partition-id"]
    with caplog.at_level(logging.WARNING, logger="fedsign"):
        reply, fine = grid.send_and_receive([query(grid, FIRST_NODE_ID), query(grid, FIRST_NODE_ID + 1)])
    assert [r.getMessage() for r in caplog.records if r.name == "fedsign"] == [
        f"node {FIRST_NODE_ID} failed: this SuperNode has no 'partition-id' in its --node-config"]
    assert reply.has_error() and reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert reply.error.reason == "ConfigError: this SuperNode has no 'partition-id' in its --node-config"
    assert not fine.has_error() and int(fine.content["metrics"]["partition-id"]) == 1


# ---- the cohort grid's TRAIN messages ----
def setting(tmp_path, **extra) -> RunConfig:
    return RunConfig.from_flat({"dataset.name": "digits", "model.name": "smallcnn", "federation.num_clients": 3,
                                "train.local_epochs": 1, "train.batch_size": 64, "device": "cpu",
                                "out": str(tmp_path / "run"), **extra})


def trains(grid: CohortGrid, cfgs: list[RunConfig], nodes: list[int]) -> list[Message]:
    """Round-1 TRAIN messages; the same global model's ArrayRecord object goes to every node."""
    torch.manual_seed(0)
    arrays = ArrayRecord(torch_state_dict=exchanged_state(build_model("smallcnn", dataset_spec("digits"))))
    return [grid.create_message(RecordDict({"arrays": arrays, "config": ConfigRecord({**c.to_flat(),
                                                                                      "server-round": 1})}),
                                MessageType.TRAIN, n, "1") for c, n in zip(cfgs, nodes)]


@pytest.fixture
def cohorts(monkeypatch):
    """The number of clients of every train_cohort call (which then trains them); its other arguments
    (spec, train config, augment) must be the run's."""
    calls = []
    train = cohort_grid.train_cohort

    def recorded(model, objective, clients, spec, cfg, augment):
        calls.append(len(clients))
        assert spec.name == "digits" and cfg.batch_size == 64 and augment is True
        return train(model, objective, clients, spec, cfg, augment)

    monkeypatch.setattr(cohort_grid, "train_cohort", recorded)
    return calls


def test_one_configuration_trains_as_one_cohort_and_a_bad_config_gets_its_error(tmp_path, cohorts, one_thread):
    grid = CohortGrid(3)
    cfg = setting(tmp_path)
    nodes = list(grid.get_node_ids())
    wrong = cfg.replace(federation__num_clients=4)  # unlike the nodes' num-partitions=3
    replies = list(grid.send_and_receive(trains(grid, [cfg, wrong, cfg], nodes)))
    assert cohorts == [2] and [r.metadata.src_node_id for r in replies] == nodes
    assert replies[1].has_error() and replies[1].error.reason == (
        "ConfigError: this node was started with num-partitions=3, but the run has federation.num_clients=4")
    for reply, cid in ((replies[0], 0), (replies[2], 2)):
        assert not reply.has_error() and int(reply.content["metrics"]["partition-id"]) == cid
        assert int(reply.content["metrics"]["num-examples"]) == len(partitions(cfg)[cid])
    alone, = grid.send_and_receive(trains(grid, [cfg], nodes[1:2]))  # one message: a cohort of one
    assert cohorts == [2, 1] and not alone.has_error() and int(alone.content["metrics"]["partition-id"]) == 1


def test_several_configurations_train_one_by_one_through_the_client_app(tmp_path, cohorts, one_thread):
    grid = CohortGrid(3)
    cfg = setting(tmp_path)
    nodes = list(grid.get_node_ids())
    replies = list(grid.send_and_receive(trains(grid, [cfg, cfg.replace(train__lr=0.01)], nodes[:2])))
    assert cohorts == [] and not any(r.has_error() for r in replies)
    assert [int(r.content["metrics"]["partition-id"]) for r in replies] == [0, 1]
    every_one_bad = list(grid.send_and_receive(trains(grid, [cfg.replace(federation__num_clients=4)], nodes[:1])))
    assert cohorts == [] and every_one_bad[0].has_error()


def test_a_client_without_data_and_a_failing_cohort_reply_with_errors(tmp_path, cohorts, monkeypatch):
    cfg = setting(tmp_path, **{"partition.scheme": "authors", "partition.alpha": 0.1, "partition.min_size": 60,
                               "federation.num_clients": 20})
    empty = [c for c, part in enumerate(partitions(cfg)) if len(part) == 0]
    full = [c for c, part in enumerate(partitions(cfg)) if len(part) > 0]
    assert empty and full
    grid = CohortGrid(20)
    nodes = [FIRST_NODE_ID + empty[0], FIRST_NODE_ID + full[0]]

    def failing(model, objective, clients, *args):
        cohorts.append(len(clients))
        raise RuntimeError("boom")

    monkeypatch.setattr(cohort_grid, "train_cohort", failing)
    no_data, failed = grid.send_and_receive(trains(grid, [cfg, cfg], nodes))
    assert cohorts == [1]
    assert no_data.error.reason == f"ConfigError: client {empty[0]} holds no training samples under this partition"
    assert failed.error.reason == "RuntimeError: boom"
    assert failed.error.code == no_data.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
