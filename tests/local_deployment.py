"""Tests only: a real deployment on localhost, as docs/deployment.md describes it: credentials from
`fedsign.deploy.credentials`, a SuperLink with TLS, SuperNode authentication and a database, the
`flwr` CLI with its own Flower configuration, and SuperNodes (plain `flower-supernode` or the
supervised `python -m fedsign.deploy.supernode`).

Every process is started in its own session and remembered; `Processes.stop_all` (called from the
tests' finalisers) stops each one and all its descendants by PID, SIGTERM then SIGKILL. A server's
port is bound safely: the port is chosen free, and the start counts only once /proc shows that
very process tree listening on it; if another process took the port first, it is started again on
another one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from fedsign.checkpoint import load_checkpoint
from fedsign.deploy.credentials import make_credentials
from fedsign.errors import CheckpointError
from tests.conftest import ROOT

BIN = Path(sys.executable).parent
HAS_FLOWER = (BIN / "flower-superlink").exists() and (BIN / "flower-supernode").exists()
HAS_PROC = Path("/proc/net/tcp").is_file()


def free_port() -> int:
    """A port nothing listens on now (another process may still take it: see start_listening)."""
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


def children(pid: int) -> list[int]:
    """The direct children of `pid`."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    return [int(c) for c, parent in (line.split() for line in out.splitlines()) if int(parent) == pid]


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


def listening_ports(pids: list[int]) -> set[int]:
    """TCP ports the given processes listen on (their socket inodes matched in /proc/net/tcp*)."""
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def listens(proc: subprocess.Popen, port: int, timeout: float = 120) -> bool:
    """Whether `proc` (or a descendant) listens on `port` within `timeout` s (False if it exits)."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if port in listening_ports(process_tree(proc.pid)):
            return True
        time.sleep(0.3)
    return False


class Processes:
    """Processes started by a test, each logging to LOGS/NAME.log, all stopped by PID at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "a") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.started.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def start_listening(self, name: str, args: Callable[[int], list[str]], env: dict[str, str],
                        timeout: float = 120, tries: int = 3) -> tuple[subprocess.Popen, int]:
        """Start args(port) on a free port; returns once its process tree listens on that port."""
        for _ in range(tries):
            port = free_port()
            proc = self.start(name, args(port), env)
            if listens(proc, port, timeout):
                return proc, port
            self.signal(proc, signal.SIGKILL)  # the port was taken, or it hangs: try another port
            proc.wait(timeout=10)
        raise AssertionError(f"{name} did not listen on a port after {tries} tries:\n{self.log(name)[-3000:]}")

    @staticmethod
    def signal(proc: subprocess.Popen, sig: int) -> list[int]:
        """Send `sig` to `proc` and all its descendants; returns their pids."""
        pids = process_tree(proc.pid) if proc.poll() is None else []
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def stop_all(self) -> None:
        stop_trees([proc.pid for proc in self.started])
        for proc in self.started:
            proc.wait(timeout=10)


def stop_trees(roots: list[int]) -> None:
    """SIGTERM, then SIGKILL, every process in `roots` and all their descendants; asserts none is left.
    (Unreaped children of ours keep their pids, so their trees can still be found.)"""
    pids: set[int] = set()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = {pid for pid in pids if alive(pid)}
        for root in roots:
            if alive(root):
                pids |= set(process_tree(root))
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while any(alive(p) for p in pids) and time.time() < deadline:
            time.sleep(0.2)
    left = [p for p in pids if alive(p)]
    assert not left, f"processes left running: {left}"


@pytest.fixture
def processes(tmp_path):
    """Processes logging to tmp_path, every one stopped by PID when the test ends, pass or fail."""
    started = Processes(tmp_path)
    yield started
    started.stop_all()


def fault_app(folder: Path) -> Path:
    """An app folder (only pyproject.toml) whose ClientApp is tests.faulty_client:app; the code comes
    from PYTHONPATH (this checkout), so FEDSIGN_TEST_FAULTS in a SuperNode's environment reaches it."""
    folder.mkdir(parents=True, exist_ok=True)
    text = (ROOT / "pyproject.toml").read_text()
    assert 'clientapp = "fedsign.client_app:app"' in text
    (folder / "pyproject.toml").write_text(text.replace('clientapp = "fedsign.client_app:app"',
                                                        'clientapp = "tests.faulty_client:app"'))
    return folder


def damaged_files(*folders: Path) -> list[str]:
    """Files under `folders` that do not read back whole: safetensors, JSON lines, JSON, YAML, and
    temporary files an interrupted atomic write would leave."""
    bad = []
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            try:
                if path.name.startswith(".tmp-"):
                    raise ValueError("a temporary file left behind")
                if path.suffix == ".safetensors":
                    load_checkpoint(path)
                elif path.suffix == ".jsonl":
                    [json.loads(line) for line in path.read_text().splitlines()]
                elif path.suffix == ".json":
                    json.loads(path.read_text())
                elif path.suffix == ".yaml":
                    yaml.safe_load(path.read_text())
            except (CheckpointError, ValueError, yaml.YAMLError) as exc:
                bad.append(f"{path}: {exc}")
    return bad


def base_env() -> dict[str, str]:
    """The environment of every process: this checkout's code first, one thread, no telemetry."""
    env = {k: v for k, v in os.environ.items() if k not in ("FLWR_HOME",)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env | {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "FLWR_TELEMETRY_ENABLED": "0",
                  "OMP_NUM_THREADS": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


class LocalDeployment:
    """One SuperLink (TLS, SuperNode auth, a database) and SuperNodes 0..N-1 with registered keys."""

    def __init__(self, root: Path, processes: Processes, num_keys: int) -> None:
        self.root = root
        self.processes = processes
        self.creds = root / "creds"
        make_credentials(self.creds, supernodes=num_keys)
        self.database = root / "superlink.db"
        self.env = base_env()
        self.superlink: subprocess.Popen | None = None
        self.port = 0
        self.nodes: dict[int, subprocess.Popen] = {}

    # ---- the SuperLink and the CLI ----
    def start_superlink(self) -> None:
        """Start it (again, on the same database and port when it ran before)."""
        def args(port: int) -> list[str]:
            return [str(BIN / "flower-superlink"), "--ssl-certfile", str(self.creds / "server.pem"),
                    "--ssl-keyfile", str(self.creds / "server.key"), "--ssl-ca-certfile", str(self.creds / "ca.crt"),
                    "--enable-supernode-auth", "--host", "127.0.0.1", "--port", str(port),
                    "--database", str(self.database), "--disable-runtime-dependency-installation"]

        env = self.env | {"FLWR_HOME": str(self.root / "superlink-home")}
        if self.port:  # a restart: the SuperNodes know this port, so it must be this one again
            for _ in range(5):
                self.superlink = self.processes.start("superlink", args(self.port), env)
                if listens(self.superlink, self.port):
                    break
                self.processes.signal(self.superlink, signal.SIGKILL)
                self.superlink.wait(timeout=10)
                time.sleep(2)  # the killed one's socket may linger a moment
            else:
                raise AssertionError(f"the SuperLink did not restart on {self.port}:\n{self.processes.log('superlink')}")
        else:
            self.superlink, self.port = self.processes.start_listening("superlink", args, env)
        home = self.root / "flwr-home"  # the `flwr` CLI's Flower configuration: one TLS connection
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(f'[superlink]\ndefault = "fedsign"\n\n[superlink.fedsign]\n'
                                          f'address = "127.0.0.1:{self.port}"\n'
                                          f'root-certificates = "{self.creds / "ca.crt"}"\n')
        self.cli_env = self.env | {"FLWR_HOME": str(home)}

    def kill_superlink(self) -> None:
        """SIGKILL the SuperLink and everything it started (its SuperExec, the ServerApp): machine A dies."""
        assert self.superlink is not None
        self.processes.signal(self.superlink, signal.SIGKILL)
        self.superlink.wait(timeout=30)

    def flwr(self, *args: str, timeout: float = 120, app: Path = ROOT) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "flwr"), *args], cwd=app, env=self.cli_env, capture_output=True,
                              text=True, timeout=timeout)

    def register(self, i: int) -> None:
        done = self.flwr("supernode", "register", str(self.creds / f"supernode-{i}.pub"), "fedsign")
        assert done.returncode == 0 and "registered successfully" in done.stdout, done.stdout + done.stderr

    def runs(self) -> list[dict]:
        listed = self.flwr("list", "fedsign", "--format", "json")
        return json.loads(listed.stdout)["runs"]

    # ---- SuperNodes ----
    def node_args(self, i: int, partition: int, num_partitions: int, port: int) -> list[str]:
        node_config = (f'partition-id={partition} num-partitions={num_partitions} '
                       f'state-dir="{self.root / f"state-{i}"}"')
        return ["--superlink", f"127.0.0.1:{self.port}", "--root-certificates", str(self.creds / "ca.crt"),
                "--auth-supernode-private-key", str(self.creds / f"supernode-{i}.key"),
                "--node-config", node_config, "--port", str(port)]

    def start_node(self, i: int, partition: int, num_partitions: int, supervised: bool = True,
                   env: dict[str, str] | None = None) -> subprocess.Popen:
        """SuperNode i (key supernode-i) for a partition; supervised: under fedsign.deploy.supernode."""
        command = ([sys.executable, "-m", "fedsign.deploy.supernode"] if supervised
                   else [str(BIN / "flower-supernode")])
        node_env = self.env | {"FLWR_HOME": str(self.root / f"supernode-home-{i}")} | (env or {})
        proc, _ = self.processes.start_listening(
            f"supernode-{i}", lambda port: command + self.node_args(i, partition, num_partitions, port), node_env)
        self.nodes[i] = proc
        return proc
