"""A supervised SuperNode: `flower-supernode` restarted when it dies, so that a crashed, killed or
refused node rejoins its federation without a person watching (docs/deployment.md, section 4).

    python -m fedsign.deploy.supernode [--max-delay S] FLOWER_SUPERNODE_ARGS...

Every argument it does not know is passed to `flower-supernode` unchanged. Before the first start it
checks `--node-config` the way Flower parses it (TOML values: strings quoted) and the keys fedsign
reads, so a typo is one line on stderr and exit code 2 instead of a node the server never finds;
likewise `--insecure` against a SuperLink that serves TLS (flower-supernode would retry forever).

Why a supervisor. The SuperLink keeps a node "online" until it misses its heartbeats: Flower's
SuperNode sends one every 30 s and the SuperLink waits 2 intervals (flwr.common.constant
HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_PATIENCE). A SuperNode killed with SIGKILL and restarted at
once is refused ("Failed to activate SuperNode", Flower exit code 305) during those 60 s, because
the SuperLink activates only nodes that are registered or offline. With SuperNode authentication
the node is its key, so this supervisor, holding the same key, tells the SuperLink that the old
instance is gone (the Fleet API's DeactivateNode, signed with the node's key, as flower-supernode
does on a graceful exit) and starts it again. Without a key (no --enable-supernode-auth) each start
is a new node; the stale entry then expires after those 60 s.

Restarts: after any exit that is not a clean stop (a signal, a crash, Flower exit code 305: the
SuperLink is unreachable or refused the activation), with a growing delay (1, 2, 4, ... s, at most
--max-delay) that starts again at 1 s once a SuperNode has run for a minute. Any other Flower exit
code is a configuration error (a bad key file, TLS files, address): reported, not retried. SIGTERM
or SIGINT stop the SuperNode gracefully (it deactivates itself) and then the supervisor.

The node id is learnt from the SuperNode's log ("SuperNode ID: N") and, when the node config has a
state-dir, kept in STATE_DIR/supernode.json, so that a supervisor restarted after a crash of the
whole machine can release its stale entry too. It assumes it is the only process using its key.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.supercore.constant import SUPERLINK_DEFAULT_CLIENT_ADDRESS

from fedsign.atomic import atomic_target
from fedsign.errors import ConfigError

PROG = "python -m fedsign.deploy.supernode"
# --node-config keys fedsign reads (fedsign/client_app.py, fedsign/client_state.py) and their TOML types
NODE_CONFIG_KEYS: dict[str, type] = {"partition-id": int, "num-partitions": int, "data-root": str,
                                     "state-dir": str, "device": str}
RESTARTABLE_FLOWER_CODE = 305  # SUPERNODE_CONNECTION_ERROR: SuperLink unreachable, or activation refused
STABLE_SECONDS = 60.0  # a SuperNode that ran this long had joined: the next restart delay starts at 1 s
# flwr's Grid.send_and_receive polls for replies every 3 s: keeping a released node offline a little
# longer lets the ServerApp see it offline (Flower's NODE_UNAVAILABLE reply) instead of waiting for a
# reply the killed instance will never send
RELEASE_SETTLE = 4.0
STOP_GRACE = 20.0  # seconds a SuperNode gets to deactivate itself after SIGTERM
# a KEY=VALUE pair as flwr.common.config.parse_config_args finds it (Flower 1.41/1.42)
FLOWER_PAIR = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")


def fail(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(2)


def say(message: str) -> None:
    print(f"[fedsign supernode] {message}", file=sys.stderr, flush=True)


def parse_node_config(text: str) -> dict[str, Any]:
    """`--node-config` parsed as flower-supernode parses it, checked against the keys fedsign reads."""
    from flwr.common.config import parse_config_args

    try:
        config = parse_config_args([text])
    except Exception:  # noqa: BLE001 (Flower raises click.ClickException for a TOML error)
        config = None
    leftover = FLOWER_PAIR.sub("", text).strip()  # Flower silently drops what its pattern does not match
    if config is None or leftover:
        raise ConfigError(f"--node-config {text!r} is not valid: give KEY=VALUE pairs separated by spaces, "
                          'values as TOML (numbers, true/false, quoted strings: data-root="/data/cifar10")')
    for key, value in config.items():
        if key not in NODE_CONFIG_KEYS:
            raise ConfigError(f"--node-config key {key!r} is not known; fedsign reads {', '.join(NODE_CONFIG_KEYS)}")
        want = NODE_CONFIG_KEYS[key]
        if not isinstance(value, want) or isinstance(value, bool):
            example = f'{key}="{value}"' if want is str else f"{key}=3"
            raise ConfigError(f"--node-config {key}={value!r} must be a TOML {want.__name__}, e.g. {example}")
    if "partition-id" not in config:
        raise ConfigError("--node-config needs partition-id=I (this client's partition, 0..N-1)")
    parts = config.get("num-partitions")
    if config["partition-id"] < 0 or (parts is not None and not 0 <= config["partition-id"] < parts):
        raise ConfigError(f"--node-config partition-id={config['partition-id']} must be in 0..num-partitions-1"
                          f" (num-partitions={parts})")
    return config


@dataclass
class Connection:
    """What the supervisor needs of flower-supernode's arguments to speak to the SuperLink itself."""

    superlink: str
    insecure: bool
    root_certificates: str | None
    private_key: str | None
    state_dir: Path | None

    @classmethod
    def from_args(cls, flower_args: list[str]) -> Connection:
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument("--superlink", default=SUPERLINK_DEFAULT_CLIENT_ADDRESS)
        parser.add_argument("--insecure", action="store_true")
        parser.add_argument("--root-certificates")
        parser.add_argument("--auth-supernode-private-key")
        parser.add_argument("--node-config")
        known, _ = parser.parse_known_args(flower_args)
        if known.node_config is None:
            raise ConfigError("give --node-config 'partition-id=I num-partitions=N ...' (docs/deployment.md)")
        config = parse_node_config(known.node_config)
        for flag, path in (("--root-certificates", known.root_certificates),
                           ("--auth-supernode-private-key", known.auth_supernode_private_key)):
            if path is not None and not Path(path).expanduser().is_file():
                raise ConfigError(f"{flag} {path!r} is not a file")
        state_dir = Path(config["state-dir"]).expanduser() if config.get("state-dir") else None
        return cls(known.superlink, known.insecure, known.root_certificates, known.auth_supernode_private_key,
                   state_dir)

    def keys(self):
        from cryptography.hazmat.primitives.serialization import load_ssh_private_key

        private = load_ssh_private_key(Path(self.private_key).expanduser().read_bytes(), None)
        return private, private.public_key()

    def fingerprint(self) -> str:
        from flwr.supercore.primitives.asymmetric import public_key_to_bytes

        return hashlib.sha256(public_key_to_bytes(self.keys()[1])).hexdigest()

    def release(self, node_id: int) -> str:
        """Mark this node offline on the SuperLink (signed with its key); '' on success, else why not."""
        from flwr.proto.fleet_pb2 import DeactivateNodeRequest  # pylint: disable=no-name-in-module
        from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor
        from flwr.supernode.fleet_http_client import FleetHttpClient
        from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

        try:
            certificates = str(Path(self.root_certificates).expanduser()) if self.root_certificates else None
            with FleetHttpClient.from_server_address(
                    self.superlink, self.insecure, certificates,
                    interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperNode"),
                                  NodeAuthHttpInterceptor(*self.keys())]) as client:
                client.DeactivateNode(DeactivateNodeRequest(node_id=node_id))
            return ""
        except Exception as exc:  # noqa: BLE001 (an HTTP status, a refused connection: all mean "not released")
            return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def serves_tls(address: str, timeout: float = 5.0) -> bool:
    """Whether the server at HOST:PORT completes a TLS handshake (certificate not checked)."""
    import socket
    import ssl

    host, _, port = address.rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host.strip("[]")):
                return True
    except (OSError, ValueError):
        return False


class NodeIdStore:
    """The node id this key had on the SuperLink, kept in STATE_DIR/supernode.json when there is one."""

    def __init__(self, connection: Connection) -> None:
        self.fingerprint = connection.fingerprint() if connection.private_key else ""
        self.path = connection.state_dir / "supernode.json" if connection.state_dir and self.fingerprint else None
        self.node_id: int | None = None
        if self.path is not None and self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
                if saved.get("public_key_sha256") == self.fingerprint:
                    self.node_id = int(saved["node_id"])
            except (ValueError, KeyError, TypeError):
                say(f"ignoring the unreadable {self.path}")

    def remember(self, node_id: int) -> None:
        self.node_id = node_id
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_target(self.path) as tmp:
                Path(tmp).write_text(json.dumps({"public_key_sha256": self.fingerprint, "node_id": node_id}))


@dataclass
class Outcome:
    returncode: int
    flower_code: int | None  # "Exit Code: N" from Flower's exit message, if it printed one
    activated: bool  # the SuperNode joined (printed its id) before it ended
    seconds: float


class Supervisor:
    def __init__(self, flower_args: list[str], connection: Connection, max_delay: float) -> None:
        self.command = [flower_supernode(), *flower_args]
        self.connection = connection
        self.max_delay = max_delay
        self.ids = NodeIdStore(connection)
        self.child: subprocess.Popen | None = None
        self.stopping = threading.Event()

    def stop(self, *_: Any) -> None:
        """Stop the SuperNode gracefully (it deactivates itself; SIGKILL after STOP_GRACE s), then the
        supervisor."""
        self.stopping.set()
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            timer = threading.Timer(STOP_GRACE, kill_group, (child,))
            timer.daemon = True  # it must not keep the supervisor alive
            timer.start()

    def run(self) -> int:
        delay, released = 0.0, False
        while not self.stopping.is_set():
            outcome = self.run_once()
            if self.stopping.is_set():
                return 0
            if outcome.returncode == 0:
                say("flower-supernode stopped cleanly; not restarting")
                return 0
            if outcome.flower_code not in (None, RESTARTABLE_FLOWER_CODE):
                say(f"flower-supernode stopped with Flower exit code {outcome.flower_code} (a configuration "
                    "error, see its message above); not restarting")
                return 2
            how = (f"signal {-outcome.returncode}" if outcome.returncode < 0 else
                   f"Flower exit code {outcome.flower_code}, status {outcome.returncode}" if outcome.flower_code
                   else f"status {outcome.returncode}")
            say(f"flower-supernode ended ({how}) after {outcome.seconds:.0f} s")
            # it had joined and died (the SuperLink still counts it online), or it was refused while a
            # node id is known (maybe the entry of an instance that died with its machine): release it
            stale = outcome.activated or (outcome.flower_code == RESTARTABLE_FLOWER_CODE and not released)
            released = stale and self.release()
            if released:
                delay = 0.0
            else:
                delay = 1.0 if outcome.seconds > STABLE_SECONDS or delay == 0 else min(2 * delay, self.max_delay)
                say(f"restarting in {delay:g} s")
                self.stopping.wait(delay)
        return 0

    def release(self) -> bool:
        """Mark this key's node offline on the SuperLink; whether it was done (then restart at once)."""
        node_id = self.ids.node_id
        if node_id is None or not self.connection.private_key:
            return False
        why = self.connection.release(node_id)
        if why:
            say(f"could not mark node {node_id} offline on the SuperLink: {why}")
            return False
        say(f"marked the previous instance of node {node_id} offline on the SuperLink; restarting")
        self.stopping.wait(RELEASE_SETTLE)
        return True

    def run_once(self) -> Outcome:
        started = time.monotonic()
        # its own process group, so that its SuperExec and ClientApp processes go with it when it dies
        self.child = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, bufsize=1, start_new_session=True)
        if self.stopping.is_set():  # a stop that came while it was being started
            self.child.send_signal(signal.SIGTERM)
        seen: dict[str, Any] = {"code": None, "activated": False}
        reader = threading.Thread(target=self.follow, args=(self.child.stdout, seen), daemon=True)
        reader.start()
        returncode = self.child.wait()
        kill_group(self.child)  # what it left behind still holds the output pipe (and may run a ClientApp)
        reader.join(timeout=10)
        return Outcome(returncode, seen["code"], seen["activated"], time.monotonic() - started)

    def follow(self, output, seen: dict[str, Any]) -> None:
        """Copy the SuperNode's output to ours; note its node id and Flower's exit code."""
        for line in output:
            sys.stdout.write(line)
            sys.stdout.flush()
            if match := re.search(r"SuperNode ID: (\d+)", line):
                seen["activated"] = True
                self.ids.remember(int(match.group(1)))
            elif match := re.search(r"Exit Code: (\d+)", line):
                seen["code"] = int(match.group(1))


def kill_group(child: subprocess.Popen) -> None:
    """SIGKILL the process group the SuperNode leads (it, its SuperExec, their ClientApps)."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def flower_supernode() -> str:
    beside = Path(sys.executable).parent / "flower-supernode"
    found = str(beside) if beside.exists() else shutil.which("flower-supernode")
    if found is None:
        fail("flower-supernode is not installed (pip install flwr)")
    return str(found)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description="flower-supernode, restarted when it dies; every "
                                     "other argument is passed to flower-supernode", allow_abbrev=False)
    parser.add_argument("--max-delay", type=float, default=30.0,
                        help="longest wait between restarts, in seconds (default 30)")
    own, flower_args = parser.parse_known_args(argv)
    if own.max_delay <= 0:
        fail(f"--max-delay={own.max_delay:g} must be > 0")
    try:
        connection = Connection.from_args(flower_args)
        supervisor = Supervisor(flower_args, connection, own.max_delay)
    except (ConfigError, ValueError, OSError) as exc:
        fail(str(exc))
    if connection.insecure and serves_tls(connection.superlink):
        # flower-supernode would retry forever with only "Connection attempt failed" in its log
        fail(f"--insecure, but the SuperLink at {connection.superlink} serves TLS: give "
             "--root-certificates CA_CERT instead (and --auth-supernode-private-key with SuperNode auth)")
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    sys.exit(supervisor.run())


if __name__ == "__main__":
    main()
