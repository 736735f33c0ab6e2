"""FedAvg end to end: the server's mean equals a hand computation, whatever replies arrive; the
client draw and per-client seeds repeat from (seed, round); a real Flower simulation writes a
complete run directory whose checkpoint reloads to the reported accuracy."""

from __future__ import annotations

import json
import logging
import subprocess

import pytest
import torch
import yaml
from flwr.app import ConfigRecord

from fedsign.checkpoint import model_from_checkpoint
from fedsign.config import DatasetConfig
from fedsign.data import load_dataset
from fedsign.evaluation import evaluate
from strategies.base import MethodConfig
from strategies.fedavg import FedAvgStrategy
from strategies.fedsign import FedSignStrategy
from strategies.registry import METHOD_NAMES, get_method
from strategies.sampling import client_seed, sample_clients
from strategies.sign_metrics import sign_change_fraction
from tests.conftest import cli, cli_env, pushed, train_message, train_reply


def _strategy(weighted):
    return FedAvgStrategy(MethodConfig(), nodes={0: 11, 1: 12, 2: 13}, clients_per_round=3, seed=0,
                          param_keys=["w", "b"], weighted=weighted)


@pytest.mark.parametrize("weighted", [False, True])
def test_aggregation_is_the_hand_computed_mean(flower_ids, weighted):
    strategy = _strategy(weighted)
    glob = {"w": torch.tensor([[1.0, -2.0], [0.5, 0.0]]), "b": torch.tensor([0.1, -0.1])}
    messages = pushed(strategy.configure_train(1, glob, ConfigRecord({})))
    assert [m.metadata.dst_node_id for m in messages] == [11, 12, 13]
    clients = [{"w": torch.tensor([[2.0, -1.0], [0.5, 1.0]]), "b": torch.tensor([0.2, -0.1])},
               {"w": torch.tensor([[0.0, -3.0], [-0.5, 2.0]]), "b": torch.tensor([0.0, 0.3])},
               {"w": torch.tensor([[4.0, 2.0], [0.5, -1.0]]), "b": torch.tensor([0.2, -0.2])}]
    sizes = [10, 30, 60]
    replies = [train_reply(m, c, {"num-examples": n, "train_loss": float(i), "ce_loss": 2.0 * i, "partition-id": i})
               for i, (m, c, n) in enumerate(zip(messages, clients, sizes))]
    outcome = strategy.aggregate_train(1, replies)
    metrics = outcome.metrics
    weights = [n / 100 for n in sizes] if weighted else [1 / 3] * 3
    for key in ("w", "b"):
        expected = sum(w * c[key] for w, c in zip(weights, clients))
        assert torch.allclose(outcome.new_global[key], expected, atol=1e-6)
    assert metrics["train_loss"] == pytest.approx(1.0) and metrics["train_ce"] == pytest.approx(2.0)
    assert {k: v for k, v in metrics.items() if k not in ("train_loss", "train_ce", "sign_flip_fraction")} == {
        "rejected_updates": 0, "missing_replies": 0, "clients": 3}
    # entries whose sign (-1, 0, +1) differs from the global model sent, of 6, counted by hand:
    # client 0: w 0 -> 1; client 1: w 1 -> 0, 0.5 -> -0.5, 0 -> 2, b 0.1 -> 0, -0.1 -> 0.3; client 2: w -2 -> 2,
    # 0 -> -1. Mean 8/18 (a count of equal signs would give 10/18)
    assert metrics["sign_flip_fraction"] == pytest.approx((1 + 5 + 2) / 18)


def test_stray_duplicate_unreachable_and_bad_replies_each_handled_in_any_order(flower_ids, caplog):
    """Within one round's replies: one to a message of no round is ignored with a warning, a second
    reply of a client is ignored (its first counts), Flower's "node unavailable" reply counts as
    missing, a bad update is rejected with its reason; every other reply is still used, and one valid
    reply is enough at the default min_replies (the mean of one model is that model)."""
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode

    strategy = FedAvgStrategy(MethodConfig(), nodes={0: 11, 1: 12, 2: 13}, clients_per_round=3, seed=0,
                              param_keys=["w"])
    assert strategy.aggregate_train(1, []).new_global is None  # no round configured yet: nothing to aggregate
    glob = {"w": torch.tensor([1.0, -1.0])}
    to_0, to_1, to_2 = pushed(strategy.configure_train(1, glob, ConfigRecord({})))
    first = {"w": torch.tensor([2.0, 0.5])}
    ok = {"num-examples": 5, "partition-id": 1, "train_loss": 0.25}
    replies = [train_reply(train_message(99), first, {**ok, "partition-id": 7}),  # a message of no round
               Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="node 11 is gone"), reply_to=to_0),
               train_reply(to_1, first, ok),
               train_reply(to_1, {"w": torch.tensor([9.0, 9.0])}, ok),  # the same client again
               train_reply(to_2, {"w": torch.tensor([float("inf"), 0.0])}, {**ok, "partition-id": 2})]
    with caplog.at_level(logging.WARNING, logger="fedsign"):
        outcome = strategy.aggregate_train(1, replies)
    assert (outcome.sampled, outcome.missing, outcome.rejected) == ([0, 1, 2], [0], {2: "'w' holds NaN or Inf values"})
    assert [u.client_id for u in outcome.updates] == [1] and torch.equal(outcome.new_global["w"], first["w"])
    assert outcome.metrics == {"rejected_updates": 1, "missing_replies": 1, "clients": 1,
                               "sign_flip_fraction": 0.5, "train_loss": 0.25}
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["round 1: ignored a reply to no message of this round (from node 99)",
                        "round 1: ignored a reply to no message of this round (from node 12)",
                        "round 1: rejected the update of client 2 (node 13): 'w' holds NaN or Inf values"]


def test_client_draws_and_seeds_repeat_from_seed_and_round():
    """A resumed run draws the same clients and seeds as the first (stateless in (seed, round)), and
    different rounds, seeds and clients get different ones."""
    clients = list(range(10))
    draws = {r: sample_clients(clients, 3, 5, r) for r in range(1, 21)}
    assert all(sample_clients(clients, 3, 5, r) == draws[r] for r in draws)
    assert all(len(set(d)) == 3 and d == sorted(d) and set(d) <= set(clients) for d in draws.values())
    assert len({tuple(d) for d in draws.values()}) > 10  # 120 possible draws
    assert [sample_clients(clients, 3, s, 1) for s in range(5)] != [draws[1]] * 5
    assert sample_clients([4, 7], 5, 0, 1) == [4, 7]  # fewer clients than per_round: all of them
    seeds = {(s, r, c): client_seed(s, r, c) for s in range(2) for r in range(1, 3) for c in range(3)}
    assert all(client_seed(*key) == value for key, value in seeds.items()) and len(set(seeds.values())) == len(seeds)


def test_sign_change_fraction_counts_by_hand():
    before = {"a": torch.tensor([1.0, -1.0, 0.0]), "b": torch.tensor([2.0])}
    after = {"a": torch.tensor([1.0, 1.0, 0.0]), "b": torch.tensor([-2.0])}
    assert sign_change_fraction(before, after, ["b"]) == 1.0  # one entry of one
    assert sign_change_fraction(before, after, ["a", "b"]) == 0.5  # -1 -> 1 and 2 -> -2, of four
    assert sign_change_fraction(before, {"a": torch.tensor([3.0, -0.5, 0.0])}, ["a"]) == 0.0
    assert sign_change_fraction(before, {"a": torch.tensor([0.0, 0.0, 1.0])}, ["a"]) == 1.0  # 0 is a sign


def test_an_unknown_method_name_lists_the_accepted_ones():
    assert get_method("fedsign").strategy is FedSignStrategy
    with pytest.raises(KeyError) as caught:
        get_method("fedsgd")
    assert caught.value.args[0] == f"unknown method 'fedsgd'; accepted: {', '.join(METHOD_NAMES)}"
    assert ", ".join(METHOD_NAMES) == "fedavg, fedprox, moon, feddyn, fedpan, fedsign"


@pytest.mark.slow
def test_simulation_writes_a_complete_run_directory(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        cli("sim.main") + ["train.rounds=2", "federation.num_clients=4", "federation.fraction=1.0",
                           "train.local_epochs=1", "checkpoint.clients=true", f"out={out}"],
        capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[fedsign] final accuracy" in proc.stdout and str(out) in proc.stdout
    assert "round    2/2" in proc.stdout

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["train"]["rounds"] == 2 and config["out"] == str(out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for key in ("accuracy", "loss", "train_loss", "sign_flip_fraction", "global_sign_consistency",
                "rejected_updates", "seconds"):
        assert key in rows[-1], key
    assert 0 < rows[-1]["sign_flip_fraction"] < 1 and 0 < rows[-1]["global_sign_consistency"] <= 1
    results = json.loads((out / "results.json").read_text())
    for key in ("method", "dataset", "alpha", "seed", "rounds", "final_accuracy", "best_accuracy",
                "wall_seconds", "accuracy_curve"):
        assert key in results, key
    assert results["accuracy_curve"] == [[r["round"], r["accuracy"]] for r in rows]
    for name in ("partition.json", "partition.png", "curves.png"):
        assert (out / name).is_file(), name

    model, meta = model_from_checkpoint(out / "checkpoints" / "server_round0002.safetensors")
    assert (meta["role"], meta["round"], meta["method"], meta["dataset"]) == ("server", "2", "fedavg", "digits")
    data = load_dataset(DatasetConfig("digits"))
    loss, accuracy = evaluate(model, data.test, data.spec)
    assert accuracy == pytest.approx(results["final_accuracy"], abs=1e-9)
    assert loss == pytest.approx(results["final_loss"], rel=1e-5)
    clients = sorted((out / "checkpoints").glob("client*_round0002.safetensors"))
    assert len(clients) == 4
    assert model_from_checkpoint(clients[0])[1]["role"] == "client"
