"""Faulty clients: bad updates are rejected with a reason and counted in metrics.jsonl, the round goes
on with the others, a round with fewer valid replies than federation.min_replies keeps the global
model, and a run with crashing, NaN and too-slow clients in Flower's simulation engine completes."""

from __future__ import annotations

import json
import logging
import subprocess

import pytest
import torch
from flwr.app import ArrayRecord, Error, Message, MetricRecord, RecordDict

from fedsign.checkpoint import load_checkpoint
from fedsign.config import RunConfig
from fedsign.run_dir import RunDirectory
from fedsign.server_loop import run_federation
from strategies.validation import Rejection, check_reply
from tests.conftest import cli, cli_env, pushed, train_message, train_reply

# what each client does in each round (missing: the round's default "ok")
PLAN = {
    1: {0: "error", 1: "nan", 2: "no_num_examples", 3: "silent"},  # 0 valid < min_replies=2: skipped
    2: {1: "wrong_shape"},  # 3 valid: aggregated
    3: {0: "inf", 2: "-inf"},  # 2 valid: aggregated (kills the mutant: a check that rejects NaN, lets ±Inf through)
}


class ScriptedGrid:
    """A Grid whose node n + 100 is client n and replies as PLAN says; clients' models are the
    global model plus a known shift (client id + 1) * 0.01."""

    def __init__(self, num_clients: int) -> None:
        self.num_clients = num_clients
        self.sent: dict[int, dict[str, torch.Tensor]] = {}  # round -> global model sent

    def get_node_ids(self):
        return [100 + c for c in range(self.num_clients)]

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for message in pushed(list(messages)):
            client = message.metadata.dst_node_id - 100
            if "config" not in message.content:  # discovery query
                replies.append(Message(RecordDict({"m": MetricRecord({"partition-id": client})}), reply_to=message))
                continue
            server_round = int(message.content["config"]["server-round"])
            glob = message.content["arrays"].to_torch_state_dict()
            self.sent[server_round] = glob
            action = PLAN.get(server_round, {}).get(client, "ok")
            if action == "silent":
                continue
            if action == "error":
                replies.append(Message(Error(code=0, reason="ClientApp raised: disk full"), reply_to=message))
                continue
            tensors = {k: v + (client + 1) * 0.01 for k, v in glob.items()}
            if action in ("nan", "inf", "-inf"):  # one entry of each tensor made non-finite
                tensors = {k: v.flatten().index_fill(0, torch.tensor([0]), float(action)).view_as(v)
                           for k, v in tensors.items()}
            if action == "wrong_shape":
                key = next(iter(tensors))
                tensors[key] = tensors[key].flatten()[:3]
            metrics = {"partition-id": client, "train_loss": 1.0}
            if action != "no_num_examples":
                metrics["num-examples"] = 10
            content = RecordDict({"arrays": ArrayRecord(torch_state_dict=tensors), "metrics": MetricRecord(metrics)})
            replies.append(Message(content, reply_to=message))
        return replies


def test_rejections_min_replies_and_metrics(flower_ids, tmp_path, caplog):
    cfg = RunConfig.from_flat({"federation.num_clients": 4, "federation.fraction": 1.0, "federation.min_replies": 2,
                               "train.rounds": 3, "checkpoint.every": 1, "device": "cpu", "out": str(tmp_path)})
    grid = ScriptedGrid(4)
    with caplog.at_level(logging.WARNING, logger="fedsign"):
        results = run_federation(grid, cfg, RunDirectory(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["rejected_updates"], r["missing_replies"], r["skipped_rounds"]) for r in rows] == [
        (3, 1, 1), (1, 0, 0), (2, 0, 0)]
    assert [(sorted(r["rejected"]), r["missing"], r["replied"]) for r in rows] == [
        (["0", "1", "2"], [3], []), (["1"], [], [0, 2, 3]), (["0", "2"], [], [1, 3])]
    assert results["rounds"] == 3 and results["rejected_updates"] == 6 and results["skipped_rounds"] == 1
    text = caplog.text
    for reason in ("client error: ClientApp raised: disk full", "holds NaN or Inf values",
                   "missing or invalid 'num-examples'", "expected", "did not reply",
                   "the global model is kept"):
        assert reason in text, reason

    # round 1 was skipped: round 2 got the initial model, which is what round 1's checkpoint holds
    initial = grid.sent[1]
    for key in initial:
        assert torch.equal(grid.sent[2][key], initial[key])
    saved, meta = load_checkpoint(tmp_path / "checkpoints" / "server_round0001.safetensors")
    assert meta["round"] == "1" and all(torch.equal(saved[k], initial[k]) for k in initial)
    # round 2 averaged the three valid clients 0, 2, 3: shifts (0.01 + 0.03 + 0.04) / 3
    for key in initial:
        assert torch.allclose(grid.sent[3][key], initial[key] + 0.08 / 3, atol=1e-6)
    # round 3 averaged clients 1 and 3 only (0 and 2 sent +Inf and -Inf): shifts (0.02 + 0.04) / 2
    final, _ = load_checkpoint(tmp_path / "checkpoints" / "server_round0003.safetensors")
    for key in initial:
        assert torch.allclose(final[key], grid.sent[3][key] + 0.03, atol=1e-6)


@pytest.mark.parametrize("metrics, reason", [
    ({"num-examples": 0, "partition-id": 0}, "num-examples"),
    ({"num-examples": -3, "partition-id": 0}, "num-examples"),
    ({"num-examples": float("inf"), "partition-id": 0}, "num-examples"),
    ({"num-examples": float("nan"), "partition-id": 0}, "num-examples"),
    ({"num-examples": 2.5, "partition-id": 0}, "num-examples"),
    ({"num-examples": 10, "partition-id": float("nan")}, "partition-id"),
    ({"num-examples": 10, "partition-id": [1, 2]}, "partition-id"),
])
def test_malformed_metrics_are_rejected_not_raised(flower_ids, metrics, reason):
    reference = {"w": torch.zeros(2)}
    result = check_reply(train_reply(train_message(5), {"w": torch.ones(2)}, metrics), 0, reference)
    assert isinstance(result, Rejection) and reason in result.reason


def test_replies_of_the_wrong_form_are_rejected_and_good_ones_kept(flower_ids):
    """Each check of check_reply on its own: a reply failing exactly one of them is rejected, and a
    reply at the edge of every one (one example, a metric that is no number) is accepted. Each reason is
    checked by its text, so a mutant returning `Rejection(None)` from any check fails here."""
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

    from strategies.validation import Update, last_line

    reference = {"a": torch.zeros(2), "b": torch.zeros(3)}
    good = {"a": torch.ones(2), "b": torch.ones(3)}
    ok_metrics = {"num-examples": 1, "partition-id": 4, "train_loss": 0.5, "note": [1, 2], "odd": float("nan")}
    sent = train_message(9)
    accepted = check_reply(train_reply(sent, good, ok_metrics), 4, reference)
    assert isinstance(accepted, Update) and accepted.num_examples == 1 and accepted.client_id == 4
    assert accepted.metrics == {"num-examples": 1.0, "partition-id": 4.0, "train_loss": 0.5}
    assert all(torch.equal(accepted.tensors[k], good[k]) for k in good)
    two_arrays = Message(RecordDict({"x": ArrayRecord(torch_state_dict=good), "y": ArrayRecord(torch_state_dict=good),
                                     "m": MetricRecord(ok_metrics)}), reply_to=sent)
    garbage = ArrayRecord({"a": Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=b"not an array")})
    cases = {
        "undecodable arrays": Message(RecordDict({"x": garbage, "m": MetricRecord(ok_metrics)}), reply_to=sent),
        "expected one ArrayRecord": two_arrays,
        "wrong keys: missing ['b']": train_reply(sent, {"a": torch.ones(2)}, ok_metrics),
        "unexpected ['c']": train_reply(sent, {**good, "c": torch.ones(1)}, ok_metrics),
        "'a' is torch.float64": train_reply(sent, {**good, "a": torch.ones(2, dtype=torch.float64)}, ok_metrics),
        "'b' is torch.float32(4,), expected torch.float32(3,)": train_reply(sent, {**good, "b": torch.ones(4)}, ok_metrics),
        "'a' holds NaN or Inf": train_reply(sent, {**good, "a": torch.tensor([0.0, float("nan")])}, ok_metrics),
        "'b' holds NaN or Inf": train_reply(sent, {**good, "b": torch.tensor([1.0, float("-inf"), 0.0])}, ok_metrics),
        "model was sent to client 3": train_reply(sent, good, {**ok_metrics, "partition-id": 4}),
    }
    for reason, reply in cases.items():
        client = 3 if "client 3" in reason else 4
        result = check_reply(reply, client, reference)
        assert isinstance(result, Rejection) and reason in result.reason, (reason, result)
    assert last_line("Traceback ...\n  File x\nValueError: bad\n\n") == "ValueError: bad"
    assert last_line(None) == last_line("") == last_line(" \n ") == "no reason given"
    assert last_line("x" * 400) == "x" * 300


@pytest.mark.slow
def test_faulty_clients_in_the_simulation_engine(tmp_path):
    out = tmp_path / "run"
    env = cli_env() | {"FEDSIGN_TEST_FAULTS": "0=raise,1=nan,3=slow@2"}
    # An honest client trains for about a second: a 40 s deadline leaves it a wide margin even on a
    # loaded machine, while the slow client (by design) replies 4 s after the deadline.
    args = ["federation.num_clients=4", "federation.fraction=1.0", "federation.min_replies=1",
            "federation.round_timeout=40", "train.rounds=2", "train.local_epochs=1",
            "partition.scheme=iid", "device=cpu"]
    proc = subprocess.run(cli("tests.faulty_client") + [str(out)] + args, capture_output=True, text=True,
                          env=env, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    results = json.loads(log.split("RESULTS ", 1)[1].splitlines()[0])
    assert results["rounds"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    # both rounds: the crash (0) and the NaN reply (1) are rejected; round 2: the slow client (3) misses
    # the deadline; counted by who misbehaved by design
    assert [(sorted(r["rejected"]), r["missing"], r["replied"]) for r in rows] == [
        (["0", "1"], [], [2, 3]), (["0", "1"], [3], [2])]
    assert [(r["rejected_updates"], r["missing_replies"], r["skipped_rounds"]) for r in rows] == [(2, 0, 0), (2, 1, 0)]
    rejected = [line for line in log.splitlines() if "rejected the update" in line]
    assert any("client error:" in line and "injected fault: this client crashes" in line for line in rejected)
    assert any(line.endswith("holds NaN or Inf values") for line in rejected), rejected
    assert "round 2: 1 of 4 sampled clients did not reply" in log
    assert results["final_accuracy"] > 0.2  # the valid clients still trained the model


class _Nodes:
    """A Grid whose nodes answer the discovery query with the given partition ids."""

    def __init__(self, claims: dict[int, int]) -> None:
        self.claims = claims  # node id -> partition id it claims

    def get_node_ids(self):
        return list(self.claims)

    def send_and_receive(self, messages, timeout=None):
        return [Message(RecordDict({"m": MetricRecord({"partition-id": self.claims[m.metadata.dst_node_id]})}),
                        reply_to=m) for m in pushed(list(messages))]


@pytest.mark.parametrize("claims, words", [
    ({11: 0, 12: 1, 13: 1}, "two SuperNodes claim partition-id=1"),
    ({11: 0, 12: 1, 13: 3}, "partition-id=3, outside 0..2"),
    ({11: 0, 12: 1, 13: -1}, "partition-id=-1, outside 0..2"),
])
def test_discovery_refuses_duplicate_and_out_of_range_partition_ids(flower_ids, claims, words):
    """Mutants killed: dropping the duplicate check, or either bound of the range check."""
    from fedsign.discovery import discover_clients
    from fedsign.errors import FedsignError

    with pytest.raises(FedsignError, match=words.replace("(", r"\(").replace(".", r"\.")):
        discover_clients(_Nodes(claims), 3, timeout=5, poll=0.01)


def test_discovery_maps_every_partition_to_its_node(flower_ids):
    from fedsign.discovery import discover_clients

    assert discover_clients(_Nodes({11: 2, 12: 0, 13: 1}), 3, timeout=5, poll=0.01) == {2: 11, 0: 12, 1: 13}
