"""Resume, in process on the cohort engine (fast), for the methods whose state a resume must carry:
FedDyn (the server's h and each client's gradient state), MOON (each client's previous model) and
FedSign. A run is killed during round 4, after round 3's metrics row was written but with its last
server state from round 2 (checkpoint.every=2); resumed, it must drop that row, redo round 3 from the
state of round 2 (the clients' too: they keep method state under a state-dir, as SuperNodes do) and
end with exactly the parameters and rows of an uninterrupted run.

Mutants this kills: not restoring the strategy's state (FedDyn's h), keeping metrics rows past the
saved round, clients using the killed run's newer method state."""

from __future__ import annotations

import json

import pytest
import torch

from fedsign.checkpoint import load_checkpoint
from fedsign.config import RunConfig
from fedsign.server_app import run_server
from sim.cohort.grid import CohortGrid

CLIENTS = 6


class Killed(Exception):
    """The server process died."""


class DyingGrid(CohortGrid):
    """A cohort grid whose process dies when round `die_at`'s training is sent."""

    def __init__(self, num_clients: int, die_at: int, state_dir: str) -> None:
        super().__init__(num_clients, state_dir=state_dir)
        self.die_at = die_at

    def execute_train(self, messages):
        if int(messages[0].content["config"]["server-round"]) == self.die_at:
            raise Killed
        return super().execute_train(messages)


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["feddyn", "moon", "fedsign"])
def test_killed_run_resumes_to_the_uninterrupted_result(method, tmp_path, one_thread):
    cfg = RunConfig.from_flat({
        "method.name": method, "engine.name": "cohort", "dataset.name": "digits", "model.name": "smallcnn",
        "federation.num_clients": CLIENTS, "federation.fraction": 0.5, "train.rounds": 5, "train.local_epochs": 1,
        "train.lr": 0.05, "checkpoint.every": 2, "eval.every": 1, "device": "cpu", "seed": 4})
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_server(CohortGrid(CLIENTS, state_dir=str(tmp_path / "state-full")), cfg.replace(out=str(full)))
    with pytest.raises(Killed):
        run_server(DyingGrid(CLIENTS, 4, str(tmp_path / "state-killed")), cfg.replace(out=str(killed)))
    assert [r["round"] for r in rows(killed)] == [1, 2, 3]  # a row past the saved state (round 2)
    assert load_checkpoint(killed / "checkpoints" / "resume.safetensors")[1]["round"] == "2"

    resumed = run_server(CohortGrid(CLIENTS, state_dir=str(tmp_path / "state-killed")),
                         cfg.replace(out=str(killed), resume=str(killed)))
    assert resumed["resumed"]
    expected, got = rows(full), rows(killed)
    assert [r["round"] for r in got] == [1, 2, 3, 4, 5]
    for a, b in zip(expected, got):
        assert (a["accuracy"], a["loss"], a["replied"]) == (b["accuracy"], b["loss"], b["replied"]), a["round"]
    final_full, _ = load_checkpoint(full / "checkpoints" / "server_round0005.safetensors")
    final_resumed, _ = load_checkpoint(killed / "checkpoints" / "server_round0005.safetensors")
    for key in final_full:
        assert torch.equal(final_full[key], final_resumed[key]), key
    if method == "feddyn":  # the server's h was carried: it is not zero and it is the same
        h_full = load_checkpoint(full / "checkpoints" / "resume.safetensors")[0]
        h_resumed = load_checkpoint(killed / "checkpoints" / "resume.safetensors")[0]
        h_keys = [k for k in h_full if k.startswith("strategy/h.")]
        assert h_keys and all(torch.equal(h_full[k], h_resumed[k]) for k in h_keys)
        assert any(float(h_full[k].abs().max()) > 0 for k in h_keys)
