"""engine=flower joins a running Ray cluster (engine.address) instead of starting Ray: a local
`ray start --head`, started and stopped here (free ports, its own temp dir, so no other Ray on this
machine is touched), runs a real fedsign-sim simulation's clients; the run's driver shows up in that
cluster's own logs, and the cluster is still up afterwards (the run only disconnected from it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import cli, cli_env

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def processes_under(folder: str) -> list[int]:
    """Ids of the processes whose command line names `folder` (this cluster's own temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if folder in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture
def ray_head():
    """A one-node Ray cluster (2 CPUs) in the foreground (`--block`): stopping that process stops the
    cluster; whatever of it would be left (found by its temp dir) is then ended by process id."""
    if shutil.which("ray") is None:
        pytest.skip("the ray command is not installed")
    temp = tempfile.mkdtemp(prefix="fsray", dir="/tmp")  # short: Ray's unix sockets live under it
    port = free_port()
    ports = {flag: free_port() for flag in ("--ray-client-server-port", "--dashboard-agent-listen-port",
                                            "--dashboard-agent-grpc-port", "--metrics-export-port",
                                            "--runtime-env-agent-port", "--node-manager-port",
                                            "--object-manager-port")}
    cmd = ["ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
           "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"]
    cmd += [f"{flag}={value}" for flag, value in ports.items()]
    head = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        deadline = time.monotonic() + 120
        while not port_open(port):
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail("ray start --head did not come up")
            time.sleep(0.5)
        yield {"address": f"127.0.0.1:{port}", "temp": temp, "process": head}
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        for pid in processes_under(temp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


def test_the_flower_engine_runs_on_a_running_ray_cluster(ray_head, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        cli("sim.main") + ["train.rounds=2", "federation.num_clients=4", "federation.fraction=1.0",
                           "train.local_epochs=1", f"engine.address={ray_head['address']}", f"out={out}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["engine"] == "flower" and results["rounds"] == 2 and results["final_accuracy"] > 0.1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["replied"] == [0, 1, 2, 3] and not rows[-1]["missing"]
    # the run's driver connected to this cluster (Ray writes a driver's log into the cluster's session)
    logs = Path(ray_head["temp"]) / "session_latest" / "logs"
    assert any(p.name.startswith("python-core-driver-") and p.name.endswith(f"_{proc.pid}.log")
               for p in logs.iterdir()), sorted(p.name for p in logs.iterdir())[:20]
    assert ray_head["process"].poll() is None  # the cluster outlives the run


def test_a_bad_cluster_address_is_one_error_line(tmp_path):
    proc = subprocess.run(cli("sim.main") + ["engine.address=not an address", f"out={tmp_path / 'x'}"],
                          capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 2 and "engine.address" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
