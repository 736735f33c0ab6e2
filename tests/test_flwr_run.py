"""`flwr run .` runs the same apps from pyproject.toml on the local SuperLink `flwr` starts itself:
a good run must finish as completed (Flower's own status, not the exit code), a run with bad input
as failed with fedsign's error line. The SuperLink is this module's own, isolated from any other:
its own FLWR_HOME and its own port (FLWR_LOCAL_SUPERLINK_HTTP_API_PORT, read by Flower 1.41/1.42 in
place of the fixed 127.0.0.1:39091); the tests check that the SuperLink that answered is that one,
and stop it (and its ServerApp processes) by PID at the end."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.conftest import ROOT, cli_env
from tests.local_deployment import HAS_PROC, free_port, listening_ports, process_tree, stop_trees

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("flwr") is None or not HAS_PROC,
                                 reason="needs the flwr CLI on PATH and Linux /proc")]


def superlinks(flwr_home) -> list[int]:
    """The local SuperLink `flwr` started for this FLWR_HOME (its --database lies in it)."""
    found = subprocess.run(["pgrep", "-f", f"flower-superlink.*{flwr_home}"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """(env, flwr) for a private local SuperLink, stopped with everything it started at the end."""
    flwr_home = tmp_path_factory.mktemp("flwr-home")
    port = free_port()
    env = cli_env() | {"FLWR_HOME": str(flwr_home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                       "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(port),
                       "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}

    def flwr(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        done = subprocess.run(["flwr", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        mine = superlinks(flwr_home)
        # another process on that port would have answered instead (a race after free_port)
        assert mine and any(port in listening_ports(process_tree(pid)) for pid in mine), (
            f"the SuperLink on 127.0.0.1:{port} is not this test's (FLWR_HOME={flwr_home})")
        return done

    def status(run_id: str) -> dict:
        runs = json.loads(flwr("list", "--format", "json").stdout)["runs"]
        return next(r for r in runs if r["run-id"] == run_id)

    yield flwr, status
    stop_trees(superlinks(flwr_home))
    assert not superlinks(flwr_home)


def run_id_of(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout.split("Successfully started run ", 1)[1].split()[0]


def test_flwr_run_completes(local, tmp_path):
    flwr, status = local
    out = tmp_path / "run"
    run = run_id_of(flwr("run", ".", "--stream", "--run-config", f"train.rounds=2 train.lr=0.05 train.local_epochs=1 out='{out}'", timeout=400))
    assert status(run)["status"] == "finished:completed"
    results = json.loads((out / "results.json").read_text())
    assert results["rounds"] == 2 and results["final_accuracy"] > 0.1


def test_a_failed_run_reports_failed_with_the_error_line(local, tmp_path):
    """Mutant killed: a ServerApp that swallows a FedsignError (the run would say finished:completed)."""
    flwr, status = local
    out = tmp_path / "run"
    run = run_id_of(flwr("run", ".", "--stream", "--run-config", f"train.rounds=0 out='{out}'", timeout=400))
    entry = status(run)
    assert entry["status"] == "finished:failed", entry
    assert "train.rounds" in entry["status-details"] and ">= 1" in entry["status-details"], entry
    assert not out.exists()  # bad input is refused before the run directory is created
