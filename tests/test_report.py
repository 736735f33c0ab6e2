"""fedsign-report on synthetic ledgers: mean ± std over seeds, the paper's values and differences,
FedSign's paired gain, missing cells with a command that selects exactly them, stale records, and the
calibration section of docs/fedsign.md."""

from __future__ import annotations

import csv
import json
import math
import shlex
from pathlib import Path

import pytest

from sim import campaign, report

pytestmark = pytest.mark.slow  # renders figures from ledgers (tens of seconds)


def write_record(ledger: Path, cell: campaign.Cell, accuracy: float, flips: float = 0.02,
                 config: dict | None = None) -> None:
    """A record as fedsign-campaign writes it (numbers chosen by the test)."""
    ledger.mkdir(parents=True, exist_ok=True)
    record = {"experiment": cell.experiment, "cell": cell.values, "command": "python -m sim.main ...",
              "campaign": "fedsign-campaign test", "commit": "0" * 40, "hardware": "test CPU", "engine": "cohort",
              "final_accuracy": accuracy, "best_accuracy": accuracy,
              "curve": {"round": [5, 10], "accuracy": [accuracy / 2, accuracy],
                        "sign_flip_fraction": [flips, flips]},
              "seconds": 1.0, "run_seconds": 1.0, "parallel": 1, "started": "2026-01-01T00:00:00Z",
              "finished": "2026-01-01T00:00:01Z", "config": config or cell.config}
    (ledger / f"{cell.slug}.json").write_text(json.dumps(record))


def pick(cells: list[campaign.Cell], **values: str) -> list[campaign.Cell]:
    return [c for c in cells if all(c.values.get(k.replace("__", ".")) == v for k, v in values.items())]


def test_table1_mean_std_paper_gain_and_missing_cells(tmp_path):
    ledger = tmp_path / "table1"
    cells = campaign.plan("table1", [])
    at = dict(dataset="cifar10", partition__alpha="0.5")
    for cell, acc in zip(pick(cells, **at, method="fedavg"), (0.70, 0.72, 0.74)):
        write_record(ledger, cell, acc)
    fedsign = pick(cells, **at, method="fedsign")
    for cell, acc in zip(fedsign[:2], (0.73, 0.76)):
        write_record(ledger, cell, acc)
    stale = pick(cells, **at, method="moon", seed="0")[0]
    write_record(ledger, stale, 0.5, config={**stale.config, "train.rounds": 3})

    out = tmp_path / "results"
    assert report.main([str(ledger), "--out", str(out)]) == 0
    rows = {(r["dataset"], float(r["alpha"]), r["method"]): r for r in csv.DictReader((out / "table1.csv").open())}
    fedavg, sign = rows[("cifar10", 0.5, "fedavg")], rows[("cifar10", 0.5, "fedsign")]
    assert int(fedavg["n"]) == 3 and float(fedavg["mean"]) == pytest.approx(72.0)
    assert float(fedavg["std"]) == pytest.approx(2.0)  # sample std of 70, 72, 74
    assert float(fedavg["paper"]) == 77.69 and float(fedavg["difference"]) == pytest.approx(72.0 - 77.69)
    assert int(sign["n"]) == 2 and float(sign["std"]) == pytest.approx(math.sqrt(4.5))
    assert sign["missing_seeds"] == "2" and sign["partition_scheme"] == "authors"
    assert rows[("cifar10", 0.5, "moon")]["n"] == "0"  # its only record is stale
    assert len(rows) == 36

    text = (out / "table1.md").read_text()
    assert "| 0.5 | fedavg | 72.00 ± 2.00 | 3/3 | 77.69 ± 0.21 | -5.69 | authors |" in text
    assert "| 0.5 | +3.50 ± 0.71 | 2 | +0.72 |" in text  # paired: (73-70, 76-72); paper 78.41 - 77.69
    assert "needs data" in text and "FEDSIGN_CINIC10=PATH fedsign-campaign table1" in text
    assert "1 records in the ledger match no current cell" in text and stale.slug in text
    assert (out / "table1_cifar10_accuracy.png").stat().st_size > 0
    assert (out / "table1_cifar10_sign_flips.png").stat().st_size > 0

    # the command printed for FedSign's missing seed runs exactly that cell
    line = next(x for x in text.splitlines() if x.startswith("- cifar10 α = 0.5 fedsign"))
    command = shlex.split(line.split("`")[1])
    assert command[:4] == ["FEDSIGN_CIFAR10=PATH", "fedsign-campaign", "table1", "--ledger"]
    assert [c.identity for c in campaign.plan("table1", command[5:])] == [fedsign[2].identity]


def test_calibration_section_of_the_doc(tmp_path):
    ledger = tmp_path / "calibration"
    cells = campaign.plan("calibration", [])
    accuracies = {("rms", "0"): (0.77, 0.78), ("sum", "0"): (0.77, 0.78), ("rms", "0.1"): (0.775, 0.79)}
    for (reduction, gamma), accs in accuracies.items():
        for seed, acc in zip(("0", "1"), accs):
            cell = pick(cells, seed=seed, method__sign_reduction=reduction, method__gamma=gamma)[0]
            write_record(ledger, cell, acc, flips=0.01 if gamma == "0.1" else 0.02)
    doc = tmp_path / "fedsign.md"
    doc.write_text("# FedSign\n\nHand-written part.\n")
    out = tmp_path / "results"
    for _ in range(2):  # the section is replaced, not appended again
        assert report.main([str(ledger), "--out", str(out), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# FedSign\n\nHand-written part.\n") and text.count(report.BEGIN) == 1
    assert "N = 3,915,914 parameters" in text  # VGG8
    # rms gamma 0.1 = sum gamma 0.1 / sqrt(N); +0.5 and +1.0 points over gamma = 0 on seeds 0 and 1
    assert "| rms | 0.1 | 5.1e-05 | 78.25 ± 1.06 | 2/2 | +0.75 ± 0.35 | 0.01000 ± 0.00000 | -50.0 % |" in text
    assert "Largest mean gain: `rms` γ = 0.1, +0.75 ± 0.35 points over FedAvg, ahead on 2 of 2 seeds." in text
    assert "Ahead of FedAvg on every seed: `rms` γ = 0.1." in text
    assert "Missing: 22 cells" in text
    assert (out / "calibration.png").stat().st_size > 0 and (out / "calibration.csv").is_file()


def test_a_folder_that_is_no_ledger_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert report.main([str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedsign-report: error:")
