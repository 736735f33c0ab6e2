"""`flwr run .` runs the same apps from pyproject.toml: the run must finish as completed (Flower's own
status, not the exit code), and the local SuperLink it started is stopped afterwards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.conftest import ROOT, cli_env


def _superlinks(flwr_home):
    out = subprocess.run(["pgrep", "-f", f"flower-superlink.*{flwr_home}"], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


@pytest.mark.skipif(shutil.which("flwr") is None, reason="the flwr CLI is not on PATH")
def test_flwr_run_completes_and_its_superlink_is_stopped(tmp_path):
    flwr_home = tmp_path / "flwr-home"
    env = cli_env() | {"FLWR_HOME": str(flwr_home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    out = tmp_path / "run"
    try:
        proc = subprocess.run(
            ["flwr", "run", ".", "--stream", "--run-config", f"train.rounds=2 out='{out}'"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        listed = subprocess.run(["flwr", "list", "--format", "json"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        runs = json.loads(listed.stdout)["runs"]
        assert len(runs) == 1 and runs[0]["status"] == "finished:completed", runs
        results = json.loads((out / "results.json").read_text())
        assert results["rounds"] == 2 and results["final_accuracy"] > 0.1
    finally:
        for pid in _superlinks(flwr_home):
            os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 20
        while _superlinks(flwr_home) and time.time() < deadline:
            time.sleep(0.5)
        for pid in _superlinks(flwr_home):
            os.kill(pid, signal.SIGKILL)
    assert not _superlinks(flwr_home)
