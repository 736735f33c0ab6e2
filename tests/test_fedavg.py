"""FedAvg end to end: the server's mean equals a hand computation; a real Flower simulation writes a
complete run directory whose checkpoint reloads to the reported accuracy."""

from __future__ import annotations

import json
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
from tests.conftest import cli, cli_env, pushed, train_reply


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
               {"w": torch.tensor([[4.0, 2.0], [0.5, -1.0]]), "b": torch.tensor([-0.1, -0.1])}]
    sizes = [10, 30, 60]
    replies = [train_reply(m, c, {"num-examples": n, "train_loss": float(i), "partition-id": i})
               for i, (m, c, n) in enumerate(zip(messages, clients, sizes))]
    outcome = strategy.aggregate_train(1, replies)
    metrics = outcome.metrics
    weights = [n / 100 for n in sizes] if weighted else [1 / 3] * 3
    for key in ("w", "b"):
        expected = sum(w * c[key] for w, c in zip(weights, clients))
        assert torch.allclose(outcome.new_global[key], expected, atol=1e-6)
    assert metrics["train_loss"] == pytest.approx(1.0) and metrics["rejected_updates"] == 0
    # sign flips per client vs the global model sent: 1/6, 2/6 ('b' 0.3 vs -0.1 + 'w' -0.5), 3/6
    flips = [sum(int((torch.sign(glob[k]) != torch.sign(c[k])).sum()) for k in glob) / 6 for c in clients]
    assert metrics["sign_flip_fraction"] == pytest.approx(sum(flips) / 3)


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
