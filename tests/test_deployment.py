"""A real deployment on localhost, as docs/deployment.md describes it: credentials from
`fedsign.deploy.credentials`, one SuperLink with TLS and SuperNode authentication, two registered
SuperNodes, `flwr run .` of two FedSign rounds; the run must finish as completed (Flower's own
status) with a complete run directory. A supervised SuperNode whose key is not registered is
refused, keeps retrying, and joins once its key is registered. Every process started here (and
every process they started) is stopped by PID at the end, pass or fail (tests/local_deployment.py).

The `--node-config` strings the docs show are parsed the way flower-supernode parses them."""

from __future__ import annotations

import json
import re
import shlex
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from fedsign.deploy.credentials import make_credentials
from fedsign.deploy.supernode import parse_node_config
from fedsign.errors import ConfigError
from tests.conftest import ROOT
from tests.local_deployment import HAS_FLOWER, HAS_PROC, LocalDeployment, processes  # noqa: F401 (a fixture)

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def documented_node_configs() -> list[tuple[str, str]]:
    """(file, value) of every `--node-config '...'` in the docs, as the shell passes it on."""
    found = []
    for doc in DOCS:
        for match in re.finditer(r"--node-config\s+('[^']*'|\"(?:[^\"\\]|\\.)*\")", doc.read_text()):
            found.append((doc.name, shlex.split(match.group(1))[0]))
    return found


def test_the_documented_node_configs_parse_as_flower_parses_them():
    forms = documented_node_configs()
    assert {name for name, _ in forms} >= {"README.md", "deployment.md"}, forms
    for name, value in forms:
        config = parse_node_config(value)  # flwr.common.config.parse_config_args, then fedsign's keys
        assert isinstance(config["partition-id"], int) and isinstance(config.get("data-root", ""), str), (name, value)


@pytest.mark.parametrize("value, message", [
    ("partition-id=3 num-partitions=3 data-root=/tmp/x/data", "quoted strings"),  # the form that failed
    ("partition_id=0", "'partition_id' is not known"),
    ('partition-id="0"', "must be a TOML int"),
    ("partition-id=2 num-partitions=2", "0..num-partitions-1"),
    ("num-partitions=2", "needs partition-id"),
])
def test_a_bad_node_config_is_one_line_and_exit_code_2(value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_node_config(value)
    proc = subprocess.run([sys.executable, "-m", "fedsign.deploy.supernode", "--node-config", value],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert message in proc.stderr


def test_insecure_against_a_tls_superlink_is_one_line_and_exit_code_2(tmp_path):
    """flower-supernode itself would retry forever, logging only "Connection attempt failed"."""
    make_credentials(tmp_path, supernodes=0)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    with socket.create_server(("127.0.0.1", 0)) as server:  # bound before the port is read: no race
        port = server.getsockname()[1]

        def serve() -> None:
            conn, _ = server.accept()
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

        threading.Thread(target=serve, daemon=True).start()
        proc = subprocess.run([sys.executable, "-m", "fedsign.deploy.supernode", "--insecure", "--superlink",
                               f"127.0.0.1:{port}", "--node-config", "partition-id=0"],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "serves TLS" in proc.stderr and "--root-certificates" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (HAS_FLOWER and HAS_PROC), reason="needs Flower's executables and Linux /proc")
def test_tls_node_auth_deployment_runs_fedsign(tmp_path, processes):
    dep = LocalDeployment(tmp_path, processes, num_keys=3)  # supernode-2's key is registered only at the end
    dep.start_superlink()
    for i in (0, 1):
        dep.register(i)
    for i in (0, 1):
        dep.start_node(i, i, 2, supervised=False)  # plain flower-supernode, as in the docs' first steps
    refused = dep.start_node(2, 0, 2)  # supervised, unregistered

    out = tmp_path / "run"
    run = dep.flwr("run", ".", "fedsign", "--stream", "--run-config",
                   f"train.rounds=2 train.lr=0.05 train.local_epochs=1 method.name='fedsign' partition.scheme='iid' "
                   f"out='{out}'", timeout=540)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    runs = dep.runs()
    assert len(runs) == 1 and runs[0]["status"] == "finished:completed", runs

    results = json.loads((out / "results.json").read_text())
    assert (results["method"], results["rounds"], results["num_clients"]) == ("fedsign", 2, 2)
    assert results["final_accuracy"] > 0.1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and all(r["rejected_updates"] == 0 for r in rows)
    assert all(r["replied"] == [0, 1] and r["missing"] == [] for r in rows), rows
    assert (out / "checkpoints" / "server_round0002.safetensors").is_file()

    # the unregistered SuperNode was refused: flower-supernode exits with status 1 and logs Flower's
    # exit code 305; the supervisor keeps trying, and the node joins once its key is registered
    log = processes.log("supernode-2")
    assert "Failed to activate SuperNode" in log and "Exit Code: 305" in log, log[-2000:]
    assert "flower-supernode ended (Flower exit code 305, status 1)" in log and "restarting in" in log
    assert refused.poll() is None and "SuperNode ID" not in log
    dep.register(2)
    deadline = time.time() + 120
    while "SuperNode ID" not in processes.log("supernode-2"):
        assert time.time() < deadline and refused.poll() is None, processes.log("supernode-2")[-2000:]
        time.sleep(1)
