"""A real deployment on localhost, as docs/deployment.md describes it: credentials from
`fedsign.deploy.credentials`, one SuperLink with TLS and SuperNode authentication, two registered
SuperNodes, `flwr run .` of two FedSign rounds; the run must finish as completed (Flower's own
status) with a complete run directory, and a SuperNode whose key was not registered is refused.
Every process started here (and every process they started) is stopped at the end, pass or fail."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsign.deploy.credentials import make_credentials
from tests.conftest import ROOT

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(not (BIN / "flower-superlink").exists(),
                                reason="Flower's executables are not installed beside this Python")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (Flower detaches its SuperExec processes into new sessions)."""
    children: dict[int, list[int]] = {}
    for line in subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie has exited
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def launch(tmp_path):
    """launch(name, args, env) starts a process logging to tmp_path/name.log; all are stopped after."""
    started: list[subprocess.Popen] = []

    def start(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "w")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        started.append(proc)
        return proc

    yield start
    pids: set[int] = set()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        # the started processes are not reaped yet, so their pids (and trees) are still theirs
        pids = {pid for pid in pids if alive(pid)} | {c for proc in started for c in process_tree(proc.pid)}
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while any(alive(p) for p in pids) and time.time() < deadline:
            time.sleep(0.2)
    for proc in started:
        proc.wait(timeout=10)
    assert not [p for p in pids if alive(p)], "processes left running"


def flwr(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "flwr"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the SuperLink exited"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"the SuperLink did not listen on {port}")


def test_tls_node_auth_deployment_runs_fedsign(tmp_path, launch):
    creds = tmp_path / "creds"
    make_credentials(creds, supernodes=3)  # supernode-2's key is never registered
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FLWR_HOME")}
    base |= {"PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}", "FLWR_TELEMETRY_ENABLED": "0"}
    port = free_port()
    link = launch("superlink", [str(BIN / "flower-superlink"), "--ssl-certfile", str(creds / "server.pem"),
                                "--ssl-keyfile", str(creds / "server.key"), "--ssl-ca-certfile", str(creds / "ca.crt"),
                                "--enable-supernode-auth", "--port", str(port),
                                "--disable-runtime-dependency-installation"],
                  base | {"FLWR_HOME": str(tmp_path / "superlink-home")})
    wait_for_port(port, link)

    cli_home = tmp_path / "flwr-home"  # the `flwr` CLI's Flower configuration: one TLS connection
    cli_home.mkdir()
    (cli_home / "config.toml").write_text(f'[superlink]\ndefault = "fedsign"\n\n[superlink.fedsign]\n'
                                          f'address = "127.0.0.1:{port}"\nroot-certificates = "{creds / "ca.crt"}"\n')
    cli_env = base | {"FLWR_HOME": str(cli_home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    for i in (0, 1):
        registered = flwr(cli_env, "supernode", "register", str(creds / f"supernode-{i}.pub"), "fedsign")
        assert registered.returncode == 0 and "registered successfully" in registered.stdout, registered.stdout

    nodes = {}
    for i in (0, 1, 2):
        node_config = f'partition-id={i % 2} num-partitions=2 state-dir="{tmp_path / f"state-{i}"}"'
        nodes[i] = launch(f"supernode-{i}", [
            str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{port}",
            "--root-certificates", str(creds / "ca.crt"), "--auth-supernode-private-key",
            str(creds / f"supernode-{i}.key"), "--node-config", node_config, "--port", str(free_port())],
            base | {"FLWR_HOME": str(tmp_path / f"supernode-home-{i}")})

    out = tmp_path / "run"
    run = flwr(cli_env, "run", ".", "fedsign", "--stream", "--run-config",
               f"train.rounds=2 method.name='fedsign' partition.scheme='iid' out='{out}'", timeout=540)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    listed = flwr(cli_env, "list", "fedsign", "--format", "json")
    runs = json.loads(listed.stdout)["runs"]
    assert len(runs) == 1 and runs[0]["status"] == "finished:completed", runs

    results = json.loads((out / "results.json").read_text())
    assert (results["method"], results["rounds"], results["num_clients"]) == ("fedsign", 2, 2)
    assert results["final_accuracy"] > 0.1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and all(r["rejected_updates"] == 0 for r in rows)
    assert (out / "checkpoints" / "server_round0002.safetensors").is_file()

    # the unregistered SuperNode was refused by the SuperLink and gave up
    assert nodes[2].wait(timeout=60) != 0
    assert "Failed to activate SuperNode" in (tmp_path / "supernode-2.log").read_text()
    assert nodes[0].poll() is None and nodes[1].poll() is None
