"""Both engines against an independent reference: two rounds of FedAvg, FedProx and FedSign written
out by hand with plain torch.optim.SGD, in float64, compared with the global model each engine
reaches. The engine-equivalence test compares the engines with each other, so a bug they share
(in the objective's composition, the optimizer's order of clip/weight-decay/momentum, the fresh
optimizer per round, the normalisation of the data, the server's mean) survives it; it fails here.

Mutants killed (checked by hand): FedProx's 1/2 changed, the server mean's weights off by 1e-4 (and
any change to clip/weight-decay/momentum order, which moves the result far beyond 1e-10).

Full batches (train.batch_size above every client's size) make each local epoch one SGD step on
all of the client's data, whatever order the engines draw it in, so the reference needs none of
fedsign's batch plan. The clipping norm is small enough to clip every step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fedsign.checkpoint import load_checkpoint
from fedsign.config import RunConfig
from fedsign.data import load_dataset
from fedsign.data.specs import DATASETS
from fedsign.models import build_model
from fedsign.server_app import run_server
from fedsign.workspace import partitions
from sim.cohort.grid import CohortGrid
from sim.cohort.inprocess_grid import InProcessGrid

CLIENTS, ROUNDS, EPOCHS = 2, 2, 3
SETTINGS = {"fedavg": {}, "fedprox": {"method.mu": 0.5}, "fedsign": {"method.gamma": 0.05}}


def reference_regulariser(method: str, cfg: RunConfig, params: dict, glob: dict) -> torch.Tensor:
    if method == "fedprox":  # μ/2 ||w − w_g||² (FedProx Eq. (2))
        return 0.5 * cfg.method.mu * sum(((params[k] - glob[k]) ** 2).sum() for k in glob)
    if method == "fedsign":  # −γ Σ_i [sgp(θ_t)σ(θ) + sgp(−θ_t)σ(−θ)] / √N (Eq. (1), rms)
        n = sum(v.numel() for v in glob.values())
        reward = sum(((glob[k] > 0) * torch.sigmoid(params[k]) + (glob[k] < 0) * torch.sigmoid(-params[k])).sum()
                     for k in glob)
        return -cfg.method.gamma * reward / math.sqrt(n)
    return torch.zeros((), dtype=torch.float64)


def reference_run(method: str, cfg: RunConfig) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """θ_0 and the global model after ROUNDS rounds, computed without fedsign's training or server code."""
    spec = DATASETS["digits"]
    data = load_dataset(cfg.dataset)
    mean = torch.tensor(spec.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float64).view(1, -1, 1, 1)
    x_all = (data.train.x.double() / 255.0 - mean) / std
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model("smallcnn", spec)
    initial = glob = {k: v.detach().clone() for k, v in model.named_parameters()}
    for _ in range(ROUNDS):
        local_models = []
        for part in partitions(cfg):  # fraction 1.0: every client trains every round
            x, y = x_all[torch.from_numpy(part)], data.train.y[torch.from_numpy(part)]
            with torch.no_grad():
                for k, p in model.named_parameters():
                    p.copy_(glob[k])
            params = dict(model.named_parameters())
            opt = torch.optim.SGD(params.values(), lr=cfg.train.lr, momentum=cfg.train.momentum,
                                  weight_decay=cfg.train.weight_decay)  # fresh each round
            for _ in range(EPOCHS):
                loss = F.cross_entropy(model(x), y) + reference_regulariser(method, cfg, params, glob)
                opt.zero_grad()
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(params.values(), cfg.train.grad_clip)
                assert norm > cfg.train.grad_clip  # every step clips (with a bound it never reaches, none would)
                opt.step()
            local_models.append({k: v.detach().clone() for k, v in params.items()})
        glob = {k: sum(m[k] for m in local_models) / len(local_models) for k in glob}  # Algorithm 1, line 6
    return initial, glob


@pytest.mark.parametrize("method", list(SETTINGS))
def test_both_engines_reach_the_hand_computed_global_model(method, tmp_path, one_thread, float64):
    cfg = RunConfig.from_flat({
        "method.name": method, **SETTINGS[method], "dataset.name": "digits", "model.name": "smallcnn",
        "partition.scheme": "iid", "federation.num_clients": CLIENTS, "federation.fraction": 1.0,
        "train.rounds": ROUNDS, "train.local_epochs": EPOCHS, "train.batch_size": 5000, "train.lr": 0.1,
        "train.momentum": 0.9, "train.weight_decay": 1e-3, "train.grad_clip": 0.01, "device": "cpu", "seed": 5})
    initial, expected = reference_run(method, cfg)
    assert max(float((expected[k] - initial[k]).abs().max()) for k in expected) > 1e-3  # the rounds trained
    for name, grid in (("flower", InProcessGrid(CLIENTS)), ("cohort", CohortGrid(CLIENTS))):
        out = tmp_path / name
        run_server(grid, cfg.replace(engine__name=name, out=str(out)))
        got, _ = load_checkpoint(out / "checkpoints" / f"server_round{ROUNDS:04d}.safetensors")
        for key, value in expected.items():
            assert torch.allclose(got[key], value, rtol=1e-10, atol=1e-12), (name, key)
