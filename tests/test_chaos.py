"""Faults on a real localhost deployment (docs/reliability.md, "A deployment under faults").

Chaos: a TLS SuperLink with SuperNode authentication, 3 supervised SuperNodes
(`python -m fedsign.deploy.supernode`) and an 8-round FedDyn run on digits (client state in each
node's state-dir, server state h), during which a seeded schedule
- kills one SuperNode's whole machine (supervisor, SuperNode, ClientApp: SIGKILL) and starts it again
  at once, and later kills only its flower-supernode process, which its supervisor restarts;
- stops another with SIGTERM (it leaves gracefully) and starts it again a round later;
- makes the third send a malformed update (tests/faulty_client.py, `malformed`).
The run must finish `completed`; every metrics row must say who replied, who was missing and who
was rejected, and together they are exactly the sampled clients; each restarted node must train
again within two rounds; the malformed update must be rejected with its reason; no file of the run
directory or of the client state may be damaged.

SuperLink restart: the SuperLink dies with its ServerApp (SIGKILL: machine A fails) while round 2 of
a 3-round FedDyn run is in flight; it is started again on the same --database and the run continued
with `flwr run ... resume=RUN_DIR` while the SuperNodes keep running. The continued run must end with
exactly (bit for bit) the model of an uninterrupted run on the same federation.

    python -m tests.test_chaos    # runs both, writes docs/chaos.json and the table in docs/reliability.md
    python -m tests.test_chaos --from-json    # the table again from docs/chaos.json
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch

from fedsign.checkpoint import load_checkpoint
from fedsign.errors import CheckpointError
from tests.conftest import ROOT
from tests.local_deployment import (HAS_FLOWER, HAS_PROC, LocalDeployment, Processes, children, damaged_files,
                                    fault_app, processes)  # noqa: F401 (processes: a fixture)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (HAS_FLOWER and HAS_PROC), reason="needs Flower's executables and Linux /proc")]

NODES, ROUNDS, SEED = 3, 8, 0
COMMON = {"method.name": "'feddyn'", "model.name": "'logreg'", "partition.scheme": "'iid'", "checkpoint.every": 1}
CHAOS = COMMON | {"train.rounds": ROUNDS, "eval.every": 1, "federation.num_clients": NODES,
                  "federation.round_timeout": 120}
RESUME = COMMON | {"train.rounds": 3, "federation.num_clients": 2}
RUN_TIMEOUT = 900.0


@dataclass
class Event:
    kind: str  # crash | kill | leave | malformed
    client: int
    round: int  # the round during which it happens (injected when the row of the round before appears)
    what: str
    seconds: float = -1.0  # when it was injected, since the run was submitted


def schedule(seed: int) -> list[Event]:
    """The faults of one chaos run, drawn from `seed`."""
    rng = random.Random(seed)
    victim, leaver, liar = rng.sample(range(NODES), 3)
    crash = rng.choice([2, 3])
    return [Event("crash", victim, crash, "SIGKILL to the whole node (supervisor, SuperNode, ClientApp), "
                                           "started again at once"),
            Event("leave", leaver, rng.choice([3, 4, 5]), "SIGTERM to the supervised SuperNode, started again "
                                                          "one round later"),
            Event("kill", victim, crash + 3, "SIGKILL to flower-supernode only; its supervisor restarts it"),
            Event("malformed", liar, rng.choice(range(2, ROUNDS + 1)), "the ClientApp replies with a wrong-shape "
                                                                       "array")]


def run_config(values: dict, **more: str) -> str:
    return " ".join(f"{k}={v}" for k, v in (values | more).items())


def rows_of(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")] if path.is_file() else []


def wait_for_status(dep: LocalDeployment, run_id: str, timeout: float = 120) -> dict:
    """The run's entry in `flwr list` once it has finished."""
    deadline = time.time() + timeout
    while True:
        runs = {r["run-id"]: r for r in dep.runs()}
        if runs[run_id]["status"].startswith("finished") or time.time() > deadline:
            return runs[run_id]
        time.sleep(2)


def submit(dep: LocalDeployment, app: Path, config: str) -> str:
    done = dep.flwr("run", str(app), "fedsign", "--run-config", config, app=app)
    found = re.search(r"Successfully started run (\d+)", done.stdout)
    assert done.returncode == 0 and found, done.stdout[-2000:] + done.stderr[-2000:]
    return found.group(1)


def run_chaos(root: Path, processes: Processes, seed: int = SEED) -> dict:
    """Run the chaos scenario; returns what it measured (rows, events, status, damaged files)."""
    events = schedule(seed)
    dep = LocalDeployment(root, processes, NODES)
    dep.start_superlink()
    for i in range(NODES):
        dep.register(i)
    env = {"FEDSIGN_TEST_FAULTS": ",".join(f"{e.client}=malformed@{e.round}" for e in events
                                           if e.kind == "malformed")}

    def start(i: int) -> None:
        dep.start_node(i, i, NODES, env=env)

    def crash(e: Event) -> None:
        processes.signal(dep.nodes[e.client], signal.SIGKILL)
        dep.nodes[e.client].wait(timeout=30)
        start(e.client)

    def kill(e: Event) -> None:
        supernode = children(dep.nodes[e.client].pid)  # the supervisor's one child: flower-supernode
        assert supernode, f"client {e.client}'s supervisor runs no SuperNode"
        os.kill(supernode[0], signal.SIGKILL)

    def leave(e: Event) -> None:
        dep.nodes[e.client].send_signal(signal.SIGTERM)

    def come_back(e: Event) -> None:
        assert dep.nodes[e.client].wait(timeout=60) == 0, "the supervisor did not stop cleanly on SIGTERM"
        start(e.client)

    for i in range(NODES):
        start(i)
    app = fault_app(root / "app")
    out = root / "run"
    began = time.time()
    run_id = submit(dep, app, run_config(CHAOS, out=f"'{out}'"))
    due: dict[int, list] = {}
    for e in events:
        if e.kind != "malformed":
            due.setdefault(e.round, []).append((e, {"crash": crash, "kill": kill, "leave": leave}[e.kind]))
        if e.kind == "leave":
            due.setdefault(e.round + 1, []).append((None, lambda e=e: come_back(e)))
    seen, check_at = 0, time.time() + 30
    while not (out / "results.json").is_file():
        rows = rows_of(out)
        for row in rows[seen:]:
            for event, act in due.pop(row["round"] + 1, []):
                if event is None:
                    act()
                else:
                    event.seconds = time.time() - began
                    act(event)
        seen = len(rows)
        assert time.time() - began < RUN_TIMEOUT, f"the run did not finish; rows: {rows}"
        if time.time() > check_at:  # a run that failed writes no results.json
            if {r["run-id"]: r for r in dep.runs()}[run_id]["status"].startswith("finished"):
                break
            check_at = time.time() + 30
        time.sleep(0.2)
    status = wait_for_status(dep, run_id)
    state_dirs = [root / f"state-{i}" for i in range(NODES)]
    return {"scenario": "chaos", "seed": seed, "nodes": NODES, "rounds": ROUNDS,
            "events": [asdict(e) for e in events], "status": status["status"],
            "status_details": status["status-details"], "wall_seconds": time.time() - began,
            "rows": [{k: r[k] for k in ("round", "replied", "missing", "rejected", "seconds")} for r in rows_of(out)],
            "damaged": damaged_files(out, *state_dirs),
            "state_files": sorted(str(p.relative_to(root)) for d in state_dirs for p in d.rglob("*.safetensors"))}


def outcomes(report: dict) -> list[dict]:
    """Per event: the rounds in which its client did not train from then on, and the first it did."""
    rows = {r["round"]: r for r in report["rows"]}
    result = []
    for e in report["events"]:
        later = [rows[k] for k in sorted(rows) if k >= e["round"]]
        back = next((r["round"] for r in later if e["client"] in r["replied"]), None)
        result.append({**e, "rejoined": back,
                       "missed": [r["round"] for r in later if back is None or r["round"] < back],
                       "rejected": rows.get(e["round"], {}).get("rejected", {}).get(str(e["client"]), "")})
    return result


def check_chaos(report: dict) -> None:
    assert report["status"] == "finished:completed", report["status_details"]
    rows = report["rows"]
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    for r in rows:  # fraction 1.0: every client is sampled; each is in exactly one of the three
        named = r["replied"] + r["missing"] + [int(k) for k in r["rejected"]]
        assert sorted(named) == list(range(NODES)), r
    for e in outcomes(report):
        if e["kind"] == "malformed":  # a wrong shape: "'name' is float32(3,), expected float32(...)"
            assert "expected" in e["rejected"], f"the malformed update of round {e['round']} was not rejected: {e}"
        else:  # it trains again within two rounds (the one it died in, the next); SIGTERM: one more
            assert e["rejoined"] is not None, f"client {e['client']} never trained again after {e['kind']}"
            assert e["rejoined"] - e["round"] <= (3 if e["kind"] == "leave" else 2), e
    assert not report["damaged"], report["damaged"]
    # FedDyn's client state: each client keeps its newest state and the newest at or before each of the
    # last two checkpoint rounds (fedsign/client_state.py), here 1 or 2 files
    per_node = [[f for f in report["state_files"] if f.startswith(f"state-{i}/")] for i in range(NODES)]
    assert all(1 <= len(files) <= 2 for files in per_node), per_node


@pytest.mark.timeout(1200)
def test_chaos_run_completes_and_says_who_took_part(tmp_path, processes):
    report = run_chaos(tmp_path, processes)
    (tmp_path / "chaos.json").write_text(json.dumps(report, indent=1))
    check_chaos(report)


def run_superlink_restart(root: Path, processes: Processes) -> dict:
    """An uninterrupted run, then the same run killed with its SuperLink and continued; returns both."""
    dep = LocalDeployment(root, processes, 2)
    dep.start_superlink()
    faults = root / "faults.txt"  # read by the ClientApps at every message
    for i in range(2):
        dep.register(i)
        dep.start_node(i, i, 2, env={"FEDSIGN_TEST_FAULTS": f"@{faults}"})
    app = fault_app(root / "app")
    reference, out = root / "reference", root / "run"
    began = time.time()
    ref_id = submit(dep, app, run_config(RESUME, out=f"'{reference}'"))
    ref_status = wait_for_status(dep, ref_id, timeout=RUN_TIMEOUT)

    # round 2 is held: every client waits without training, so no client state of round 2 exists
    # when the SuperLink dies, and the continued run redoes round 2 exactly as the uninterrupted one
    # did (a client that had finished the round would start its FedDyn state afresh: the documented limit)
    faults.write_text("0=hold@2,1=hold@2")
    killed_id = submit(dep, app, run_config(RESUME, out=f"'{out}'"))
    deadline = time.time() + RUN_TIMEOUT
    while not all(f"faulty client {i}: hold in round 2" in dep.processes.log(f"supernode-{i}") for i in range(2)):
        assert time.time() < deadline, "round 2 did not reach both clients"
        time.sleep(0.5)
    saved = int(load_checkpoint(out / "checkpoints" / "resume.safetensors")[1]["round"])
    kill_seconds = time.time() - began
    dep.kill_superlink()
    faults.write_text("")  # the held ClientApps end, so their SuperNodes take messages again
    dep.start_superlink()
    restarted = time.time()
    resumed_id = submit(dep, app, run_config(RESUME, out=f"'{out}'", resume=f"'{out}'"))
    resumed_status = wait_for_status(dep, resumed_id, timeout=RUN_TIMEOUT)
    killed_status = wait_for_status(dep, killed_id, timeout=120)

    def final(run_dir: Path) -> dict[str, torch.Tensor]:
        try:
            return load_checkpoint(run_dir / "checkpoints" / f"server_round{RESUME['train.rounds']:04d}.safetensors")[0]
        except CheckpointError:
            return {}

    ref_model, run_model = final(reference), final(out)
    return {"scenario": "superlink-restart", "rounds": RESUME["train.rounds"], "saved_round": saved,
            "kill_seconds": kill_seconds, "resume_seconds": time.time() - restarted,
            "reference_status": ref_status["status"], "resumed_status": resumed_status["status"],
            "resumed_details": resumed_status["status-details"],
            "killed_status": killed_status["status"], "killed_details": killed_status["status-details"],
            "identical": bool(ref_model) and ref_model.keys() == run_model.keys()
                         and all(torch.equal(ref_model[k], run_model[k]) for k in ref_model),
            "reference_curve": [[r["round"], r["accuracy"]] for r in rows_of(reference)],
            "resumed_curve": [[r["round"], r["accuracy"]] for r in rows_of(out)],
            "damaged": damaged_files(out)}


def check_superlink_restart(report: dict) -> None:
    assert report["reference_status"] == "finished:completed"
    assert report["resumed_status"] == "finished:completed", report["resumed_details"]
    assert report["saved_round"] == 1
    assert report["identical"], "the continued run's final model differs from the uninterrupted run's"
    assert report["resumed_curve"] == report["reference_curve"]
    assert not report["damaged"], report["damaged"]


@pytest.mark.timeout(1200)
def test_superlink_restart_and_resume_give_the_uninterrupted_result(tmp_path, processes):
    report = run_superlink_restart(tmp_path, processes)
    (tmp_path / "superlink-restart.json").write_text(json.dumps(report, indent=1))
    check_superlink_restart(report)


# ---- the table in docs/reliability.md, from what a run measured ----
BEGIN, END = "<!-- chaos table: generated by python -m tests.test_chaos -->", "<!-- end of chaos table -->"


def table(measured: dict) -> str:
    chaos, restart = measured["chaos"], measured["superlink_restart"]
    rows = {r["round"]: r for r in chaos["rows"]}
    seconds = [r["seconds"] for r in chaos["rows"]]
    lines = [BEGIN, "",
             f"Measured {measured['date']} at commit `{measured['commit']}` on {measured['hardware']} "
             f"(Flower {measured['flower']}), with `{measured['command']}`; raw numbers in docs/chaos.json. "
             f"Chaos run: {chaos['nodes']} SuperNodes, {chaos['rounds']} FedDyn rounds on digits, "
             f"{chaos['wall_seconds']:.0f} s from submission to the end (rounds {min(seconds):.0f}-{max(seconds):.0f} s),"
             f" status `{chaos['status']}`, damaged files: {len(chaos['damaged'])}.", "",
             "| fault | when | what happened | what was lost |", "| --- | --- | --- | --- |"]
    for e in outcomes(chaos):
        when = f"round {e['round']}" + (f" ({e['seconds']:.0f} s into the run)" if e["seconds"] >= 0 else "")
        if e["kind"] == "malformed":
            replied = rows[e["round"]]["replied"]
            happened = (f"rejected: `{e['rejected']}`; round {e['round']} aggregated client(s) "
                        f"{', '.join(map(str, replied)) or 'none (skipped)'}")
            lost = f"client {e['client']}'s update of round {e['round']} (rejected by design); no file"
        else:
            happened = (f"client {e['client']} missing in round(s) {', '.join(map(str, e['missed'])) or 'none'}, "
                        f"trained again in round {e['rejoined']}")
            lost = (f"client {e['client']}'s update of round(s) {', '.join(map(str, e['missed']))}; no file"
                    if e["missed"] else "nothing")
        lines.append(f"| {e['what']} (client {e['client']}) | {when} | {happened} | {lost} |")
    lines.append(f"| SuperLink and ServerApp killed (SIGKILL) during round {restart['saved_round'] + 1} of "
                 f"{restart['rounds']}, SuperNodes left running | {restart['kill_seconds']:.0f} s into the run, round "
                 f"{restart['saved_round']} saved | the killed run ends `{restart['killed_status']}` "
                 f"(\"{restart['killed_details']}\"); SuperLink restarted on the same `--database`, SuperNodes "
                 f"reconnected by themselves, `flwr run ... resume=RUN_DIR` ended `{restart['resumed_status']}` "
                 f"after {restart['resume_seconds']:.0f} s | round {restart['saved_round'] + 1} in flight (redone); final "
                 f"model {'bit-identical to' if restart['identical'] else 'DIFFERENT from'} an uninterrupted run's |")
    return "\n".join(lines + ["", END])


def write_table(measured: dict) -> None:
    doc = ROOT / "docs" / "reliability.md"
    head, _, rest = doc.read_text().partition(BEGIN)
    _, _, tail = rest.partition(END)
    doc.write_text(head + table(measured) + tail)
    print(table(measured))


def main() -> None:
    if sys.argv[1:] == ["--from-json"]:  # the table again from the last measurement (a layout change)
        write_table(json.loads((ROOT / "docs" / "chaos.json").read_text()))
        return
    started = time.strftime("%Y-%m-%d")
    with tempfile.TemporaryDirectory() as tmp:
        reports = {}
        for name, run, check in (("chaos", run_chaos, check_chaos),
                                 ("superlink_restart", run_superlink_restart, check_superlink_restart)):
            folder = Path(tmp) / name
            folder.mkdir()
            processes = Processes(folder)
            try:
                reports[name] = run(folder, processes)
            finally:
                processes.stop_all()
            check(reports[name])
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import flwr

    measured = {"date": started, "hardware": f"{os.cpu_count()} cores of {cpu}, shared, load average "
                                            f"{os.getloadavg()[0]:.1f} at the end",
                "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                         text=True).stdout.strip(),
                "flower": flwr.__version__, "command": "python -m tests.test_chaos", **reports}
    (ROOT / "docs" / "chaos.json").write_text(json.dumps(measured, indent=1) + "\n")
    write_table(measured)


if __name__ == "__main__":
    sys.exit(main())
