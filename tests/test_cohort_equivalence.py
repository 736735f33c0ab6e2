"""The cohort engine gives the Flower engine's result: for every registered method, two rounds of
the same server loop on the cohort Grid (all clients at once under vmap) and on an in-process Grid
that runs the real ClientApp one client after another (train_locally, the path Flower's Ray actors
run) end with the same global model.

Compared in float64 (tests/conftest.py `float64`), so that the two paths' different kernels and
orders of summation cannot move the result anywhere near the tolerance on any CPU. The settings also
keep local SGD in a stable regime (lr 0.02): at lr 0.1 with momentum 0.9 this tiny CNN's last local
steps are unstable (differences double per step)."""

from __future__ import annotations

import json

import pytest
import torch

from fedsign.checkpoint import load_checkpoint
from fedsign.config import RunConfig
from fedsign.server_app import run_server
from sim.cohort.grid import CohortGrid
from sim.cohort.inprocess_grid import InProcessGrid
from strategies.registry import METHOD_NAMES

CLIENTS = 6


def _run(grid, cfg: RunConfig, out) -> tuple[list[dict], list[dict]]:
    results = run_server(grid, cfg.replace(out=str(out)))
    assert results["engine"] == cfg.engine.name
    states = [load_checkpoint(out / "checkpoints" / f"server_round000{r}.safetensors")[0] for r in (1, 2)]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return states, rows


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_cohort_round_equals_the_client_app_path(method, tmp_path, one_thread, float64):
    # Dirichlet 0.5 over 6 clients: partitions of unequal size, batch tails of different lengths.
    cfg = RunConfig.from_flat({
        "method.name": method, "dataset.name": "digits", "model.name": "smallcnn",
        "federation.num_clients": CLIENTS, "federation.fraction": 0.5, "train.rounds": 2,
        "train.local_epochs": 2, "train.batch_size": 16, "train.lr": 0.02, "device": "cpu", "seed": 3,
        "checkpoint.every": 1,
    })
    flower_states, flower_rows = _run(InProcessGrid(CLIENTS), cfg, tmp_path / "clientapp")
    cohort_states, cohort_rows = _run(CohortGrid(CLIENTS), cfg.replace(engine__name="cohort"), tmp_path / "cohort")
    for flower, cohort in zip(flower_states, cohort_states):
        assert flower.keys() == cohort.keys()
        for key in flower:
            assert flower[key].dtype == torch.float64
            assert torch.allclose(cohort[key], flower[key], rtol=1e-9, atol=1e-11), (method, key)
    # The rounds did train: the global model moved well beyond the tolerance.
    moved = max(float((flower_states[1][k] - flower_states[0][k]).abs().max()) for k in flower_states[0])
    assert moved > 1e-3
    for a, b in zip(flower_rows, cohort_rows):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)
        assert a["sign_flip_fraction"] == pytest.approx(b["sign_flip_fraction"], abs=1e-9)
