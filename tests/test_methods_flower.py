"""Every method end to end in Flower's simulation engine (Ray) on digits, 2 clients, 2 rounds, selected
by `method=<name>` in the Hydra config (composed here, run in this process to pay Python's start-up
once; test_fedavg covers the fedsign-sim command line itself); FedSign with γ > 0 flips fewer signs than FedAvg (from
metrics.jsonl) and with γ = 0 reproduces FedAvg's final parameters exactly; FedPAN's exchanged
arrays (server and client checkpoints) carry no mask."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_module

from fedsign.checkpoint import load_checkpoint
from fedsign.config import RunConfig
from sim.main import to_run_config
from sim.main import run
from strategies.registry import METHOD_NAMES

pytestmark = pytest.mark.slow  # Ray (Flower's simulation engine)

COMMON = ["federation.num_clients=2", "federation.fraction=1.0", "train.rounds=2", "train.local_epochs=1",
          "train.batch_size=32", "checkpoint.clients=true", "seed=3"]
# name of the run -> its method overrides
RUNS = {name: [f"method={name}"] for name in METHOD_NAMES} | {
    "fedsign": ["method=fedsign", "method.sign_reduction=sum", "method.gamma=0.05"],
    "fedsign_gamma0": ["method=fedsign", "method.gamma=0"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("methods")
    for name, overrides in RUNS.items():
        with initialize_config_module(config_module="sim.conf", version_base="1.3"):
            hcfg = compose(config_name="config", overrides=COMMON + overrides + [f"out={base / name}"])
        results = run(to_run_config(hcfg))
        assert results["run_dir"] == str(base / name)
    return base


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", list(RUNS))
def test_each_method_runs_two_rounds_and_logs_its_metrics(runs, name):
    results = json.loads((runs / name / "results.json").read_text())
    assert results["method"] == RUNS[name][0].split("=")[1] and results["rounds"] == 2
    rows = _rows(runs / name)
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        for key in ("accuracy", "loss", "train_loss", "sign_flip_fraction", "global_sign_consistency"):
            assert key in row, (name, key)
        assert row["rejected_updates"] == 0 and torch.isfinite(torch.tensor(row["loss"]))
        assert 0 <= row["sign_flip_fraction"] < 1 and 0 < row["global_sign_consistency"] <= 1


def test_fedsign_changes_fewer_signs_than_fedavg(runs):
    fedavg = [r["sign_flip_fraction"] for r in _rows(runs / "fedavg")]
    fedsign = [r["sign_flip_fraction"] for r in _rows(runs / "fedsign")]
    assert all(s < a for s, a in zip(fedsign, fedavg)), (fedsign, fedavg)


def test_fedsign_with_gamma_zero_reproduces_fedavg_exactly(runs):
    fedavg, _ = load_checkpoint(runs / "fedavg" / "checkpoints" / "server_round0002.safetensors")
    fedsign, _ = load_checkpoint(runs / "fedsign_gamma0" / "checkpoints" / "server_round0002.safetensors")
    assert set(fedavg) == set(fedsign)
    assert all(torch.equal(fedavg[k], fedsign[k]) for k in fedavg)
    assert _rows(runs / "fedavg")[-1]["accuracy"] == _rows(runs / "fedsign_gamma0")[-1]["accuracy"]


def test_fedpan_exchanged_arrays_carry_no_mask(runs):
    checkpoints = sorted((runs / "fedpan" / "checkpoints").glob("*_round0002.safetensors"))
    plain, _ = load_checkpoint(runs / "fedavg" / "checkpoints" / "server_round0002.safetensors")
    assert len(checkpoints) == 3  # the server's and the two clients' models of round 2
    for path in checkpoints:
        tensors, meta = load_checkpoint(path)
        assert set(tensors) == set(plain) and not any("mask" in k for k in tensors), path.name
        assert meta["pan"] == "mul:1:0.05"
