"""fedsign-campaign: the cells of an experiment, their identity, and real campaigns on the tiny `quick`
grid (digits, logistic regression, 4 clients, 2 rounds, cohort engine) that run two cells at once,
skip finished cells, stop at the budget and leave no partial record when killed."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from fedsign.config import RunConfig
from sim import campaign
from sim.main import to_run_config
from tests.conftest import cli, cli_env

pytestmark = pytest.mark.slow  # runs sim.main processes

LONG = ["train.rounds=100000"]  # a cell that outlasts any budget here


def records(ledger: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(ledger.glob("*.json"))]


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped counts as gone)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return True


def work_dirs(pid: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"fedsign-campaign-{pid}-*"))


@pytest.fixture(scope="module")
def table1() -> list[campaign.Cell]:
    return campaign.plan("table1", [])


def test_table1_cells_in_order_with_the_authors_partition(table1):
    cells = table1
    assert len(cells) == 2 * 3 * 3 * 6  # dataset x alpha x seed x method
    assert [c.values for c in cells[:2]] == [
        {"dataset": "cifar10", "partition.alpha": "0.5", "seed": "0", "method": "fedavg"},
        {"dataset": "cifar10", "partition.alpha": "0.5", "seed": "0", "method": "fedsign"}]
    assert {c.config["partition.scheme"] for c in cells} == {"authors"}
    assert {(c.config["model.name"], c.config["train.rounds"]) for c in cells} == {("vgg8", 200)}
    assert len({c.identity for c in cells}) == len(cells)


def test_overrides_narrow_the_sweep_and_only_what_is_computed_makes_a_cell(table1):
    cells = table1
    narrowed = campaign.plan("table1", ["method=fedavg,fedsign", "seed=0", "partition.alpha=0.5", "dataset=cifar10"])
    assert [c.identity for c in narrowed] == [c.identity for c in cells[:2]]
    elsewhere = campaign.plan("table1", ["seed=0", "partition.alpha=0.5", "dataset=cifar10", "method=fedavg",
                                         "device=cpu", "engine=cohort", "dataset.root=/data/cifar"])
    assert elsewhere[0].identity == cells[0].identity  # where and how a cell runs is not what it computes
    assert elsewhere[0].config["engine.name"] == "cohort"
    shorter = campaign.plan("table1", ["seed=0", "partition.alpha=0.5", "dataset=cifar10", "method=fedavg",
                                       "train.rounds=3"])
    assert shorter[0].identity != cells[0].identity


def test_the_cached_composer_equals_hydra_compose():
    from hydra import initialize_config_dir

    cells = campaign.plan("calibration_digits", ["seed=1"])
    assert len(cells) == 14 and cells[0].config["model.name"] == "smallcnn"
    with initialize_config_dir(config_dir=str(campaign.CONF), version_base="1.3"):
        for cell in (cells[0], cells[-1]):
            composed = to_run_config(campaign._compose(cell.overrides)).to_flat()
            assert cell.config == composed


def test_an_older_record_keeps_its_identity():
    flat = campaign.plan("quick", ["seed=0", "method=fedsign"])[0].config
    older = {k: v for k, v in flat.items() if k != "partition.holdout"}  # a key added since, at its default
    assert campaign.identity(older) == campaign.identity(flat)
    assert campaign.identity({**flat, "removed.key": 1, "device": "cuda", "method.mu": 0.01}) == campaign.identity(flat)
    assert campaign.identity({**flat, "method.gamma": 0.5}) != campaign.identity(flat)
    assert campaign.identity({**flat, "train.rounds": -1}) is None  # no longer valid: stale


def test_bad_input_is_one_line_and_exit_code_2(capsys):
    for argv in (["nope"], ["quick", "metod=1"], ["quick", "out=/tmp/x"], ["quick", "--parallel", "0"]):
        with pytest.raises(SystemExit) as exc:
            campaign.main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fedsign-campaign: error:"), (argv, err)


def test_two_cells_run_at_once_and_finished_cells_are_skipped(tmp_path, capsys):
    ledger = tmp_path / "quick"
    assert campaign.main(["quick", "seed=0", "--parallel", "2", "--ledger", str(ledger)]) == 0
    found = records(ledger)
    assert sorted(r["cell"]["method"] for r in found) == ["fedavg", "fedsign"]
    first, second = found
    assert first["started"] < second["finished"] and second["started"] < first["finished"]  # concurrent
    for record in found:
        assert record["experiment"] == "quick" and record["engine"] == "cohort" and record["parallel"] == 2
        assert record["config"]["partition.scheme"] == "dirichlet" and "out" not in record["config"]
        assert record["hardware"] and len(record["commit"]) >= 40 and record["seconds"] > 0
        assert record["curve"]["round"] == [1, 2]
        assert record["curve"]["accuracy"][-1] == pytest.approx(record["final_accuracy"], abs=1e-6)
        assert len(record["curve"]["sign_flip_fraction"]) == 2
        assert record["best_accuracy"] >= record["final_accuracy"] > 0.5
    assert {campaign.identity(r["config"]) for r in found} == {c.identity for c in campaign.plan("quick", ["seed=0"])}
    stamps = [p.stat().st_mtime_ns for p in sorted(ledger.glob("*.json"))]
    capsys.readouterr()

    assert campaign.main(["quick", "--parallel", "2", "--ledger", str(ledger), "seed=0"]) == 0
    out = capsys.readouterr().out
    assert "2 in the ledger" in out and "0 to run" in out and "] start" not in out
    assert [p.stat().st_mtime_ns for p in sorted(ledger.glob("*.json"))] == stamps
    assert not work_dirs(os.getpid())


def test_the_budget_cuts_off_a_running_cell_and_records_nothing(tmp_path, capsys):
    ledger = tmp_path / "quick"
    started = time.time()
    assert campaign.main(["quick", "seed=0", "method=fedavg,fedsign", *LONG, "--budget", "0.2",
                          "--ledger", str(ledger)]) == 0
    elapsed = time.time() - started
    out = capsys.readouterr().out
    assert 12 <= elapsed < 12 + campaign.STOP_GRACE + 10
    assert "cut off seed=0 method=fedavg" in out
    assert "1 cut off by the budget, 1 not started" in out
    pid = int(out.split("(pid ")[1].split(")")[0])
    assert gone(pid)
    assert list(ledger.iterdir()) == [] and not work_dirs(os.getpid())


def test_a_killed_campaign_leaves_no_partial_record(tmp_path):
    ledger = tmp_path / "quick"
    proc = subprocess.Popen([*cli("sim.campaign"), "quick", "seed=0", "method=fedavg", *LONG, "--ledger",
                             str(ledger)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env())
    lines = []
    deadline = time.time() + 120
    while time.time() < deadline:  # until the cell has run a round (its run directory has metrics)
        lines.append(proc.stdout.readline())
        if "round 1/" in lines[-1] or proc.poll() is not None:
            break
    assert "round 1/" in lines[-1], lines
    child = int("".join(lines).split("(pid ")[1].split(")")[0])
    proc.kill()  # SIGKILL: the campaign cannot clean up; its cell dies with it (PR_SET_PDEATHSIG)
    proc.communicate(timeout=60)
    deadline = time.time() + 20
    while not gone(child) and time.time() < deadline:
        time.sleep(0.2)
    assert gone(child)
    assert list(ledger.iterdir()) == []
    assert work_dirs(proc.pid)  # what a killed campaign cannot remove ...
    campaign.work_dir().rmdir()  # ... the next campaign does
    assert not work_dirs(proc.pid)
