"""A run killed (SIGKILL) after round 3 of 6 and continued with `fedsign-sim resume=RUN_DIR` ends with
exactly the parameters of an uninterrupted run, in the same run directory, with one metrics row per
round. The kill is deterministic: a test client hangs in round 4 and the run is killed while the
server waits for it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from fedsign.checkpoint import load_checkpoint
from tests.conftest import cli, cli_env

pytestmark = pytest.mark.slow  # Ray (Flower's simulation engine)

CONFIG = ["train.rounds=6", "federation.num_clients=2", "federation.fraction=1.0", "train.local_epochs=1",
          "partition.scheme=iid", "checkpoint.every=1", "device=cpu", "seed=3"]


def _rounds_written(run_dir) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["round"] for line in path.read_text().splitlines() if line.endswith("}")]


def _kill_after_round(run_dir, last_round: int, timeout: float = 300) -> None:
    """Run with client 0 hanging in round last_round + 1; SIGKILL the whole process group once the
    server has finished round `last_round`."""
    env = cli_env() | {"FEDSIGN_TEST_FAULTS": f"0=hang@{last_round + 1}"}
    proc = subprocess.Popen(cli("tests.faulty_client") + [str(run_dir)] + CONFIG, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + timeout
        state = run_dir / "checkpoints" / "resume.safetensors"
        while last_round not in _rounds_written(run_dir) or not state.is_file():
            assert proc.poll() is None and time.time() < deadline, "the run ended or stalled before the kill"
            time.sleep(0.2)
        time.sleep(1.0)  # the server now waits for the hanging client
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    _kill_after_round(killed, 3)
    assert _rounds_written(killed) == [1, 2, 3] and not (killed / "results.json").exists()

    resumed = subprocess.run(cli("sim.main") + [f"resume={killed}"], capture_output=True, text=True,
                             env=cli_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr + resumed.stdout and "round    4/6" in resumed.stdout
    uninterrupted = subprocess.run(cli("sim.main") + CONFIG + [f"out={full}"], capture_output=True, text=True,
                                   env=cli_env(), timeout=300)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    final_full, _ = load_checkpoint(full / "checkpoints" / "server_round0006.safetensors")
    final_resumed, meta = load_checkpoint(killed / "checkpoints" / "server_round0006.safetensors")
    assert meta["round"] == "6" and final_full.keys() == final_resumed.keys()
    for key in final_full:
        assert torch.equal(final_full[key], final_resumed[key]), key
    assert _rounds_written(killed) == [1, 2, 3, 4, 5, 6]
    results_full = json.loads((full / "results.json").read_text())
    results_resumed = json.loads((killed / "results.json").read_text())
    assert results_resumed["resumed"] and results_resumed["accuracy_curve"] == results_full["accuracy_curve"]
