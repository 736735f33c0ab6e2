"""fedsign-bench smoke tests: a tiny run on digits prints the documented JSON with positive numbers
(no timing assertions), a row per engine and speed option; bad options are one error line; two
checkouts are compared side by side (--against) and the comparison renders into docs/BENCHMARKS.md's
section, which matches the committed JSON. The Flower engine is left out here (Ray's start-up alone
takes longer than this whole test); tests/test_fedavg.py runs it, and docs/BENCHMARKS.md has its numbers."""

from __future__ import annotations

import json
import subprocess

import pytest

from sim.bench import main, merge_reports
from tests.conftest import ROOT, cli, cli_env

pytestmark = pytest.mark.slow  # times engines, runs other checkouts

TINY = ["--dataset", "digits", "--model", "smallcnn", "--clients", "6", "--per-round", "2", "--epochs", "1",
        "--batch", "32", "--rounds", "2", "--limit-batch", "64", "--limit-steps", "2", "--device", "cpu"]


def test_bench_prints_the_documented_json(tmp_path, capsys, one_thread):
    main(TINY + ["--engines", "reference,cohort,limit", "--out", str(tmp_path), "--json", str(tmp_path / "b.json"),
                 "--variant", "default", "--variant", "graph:train.step_mode=cuda_graph,train.channels_last=true"])
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((tmp_path / "b.json").read_text())
    assert report["setting"]["per_round"] == 2 and report["device"] == "cpu" and report["commit"]
    assert report["command"].startswith("python -m sim.bench --dataset digits")
    assert report["samples_per_round"] > 0
    assert report["variants"] == {"default": {}, "graph": {"train.step_mode": "cuda_graph",
                                                           "train.channels_last": "true"}}
    assert set(report["engines"]) == {"reference", "cohort", "reference[graph]", "cohort[graph]"}
    for name, result in report["engines"].items():
        assert len(result["round_seconds"]) == 2 and all(s > 0 for s in result["round_seconds"])
        assert result["s_per_round"] > 0 and result["samples_per_s"] > 0 and result["peak_gpu_mem_gib"] is None
        assert result["engine"] == name.split("[")[0]
    # on a CPU graph mode runs its steps eagerly, and says so
    graphs = report["engines"]["cohort[graph]"]["cuda_graphs"]
    assert graphs["captured"] == 0 and graphs["eager"] > 0 and graphs["failures"] == []
    assert set(report["limits"]) == {"default", "graph"} and report["limits"]["graph"]["channels_last"] is True
    assert all(lim["samples_per_s"] > 0 and lim["s_per_round"] > 0 for lim in report["limits"].values())
    assert set(report["ratios"]["engine_over_limit"]) == set(report["engines"])
    assert report["ratios"]["reference_over_engine"]["cohort"] > 0
    assert set(report["ratios"]["plain_over_variant"]) == {"reference[graph]", "cohort[graph]"}
    # the cohort engine's own run directory is a complete run
    assert json.loads((tmp_path / "default" / "cohort" / "results.json").read_text())["engine"] == "cohort"
    # benches of one setting merge into one report (gpu_check runs a process per speed option)
    merged = merge_reports([{**report, "engines": {"cohort": report["engines"]["cohort"]}},
                            {**report, "engines": {"cohort[graph]": report["engines"]["cohort[graph]"]}}])
    assert set(merged["engines"]) == {"cohort", "cohort[graph]"} and len(merged["commands"]) == 2
    assert merged["ratios"]["plain_over_variant"]["cohort[graph]"] == pytest.approx(
        report["engines"]["cohort"]["s_per_round"] / report["engines"]["cohort[graph]"]["s_per_round"])


@pytest.mark.parametrize(("flags", "message"), [
    (["--engines", "ray"], "unknown ['ray']"),
    (["--variant", "x:train.precision=fp8"], "--variant x: train.precision='fp8' is not known"),
    (["--variant", "x:train.nothing=1"], "--variant x: unknown config key 'train.nothing'"),
    (["--variant", "x:method.mu=1"], "--variant x: method.mu cannot be changed here"),
    (["--variant", "x:train.precision"], "expected NAME or NAME:KEY=VALUE"),
    (["--variant", "a", "--variant", "a"], "--variant 'a' is given twice"),
    (["--against", "/nonexistent"], "not a fedsign checkout"),
])
def test_bench_rejects_bad_options_in_one_line(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "digits", "--model", "smallcnn", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err


def test_against_compares_two_checkouts_and_renders_the_section(tmp_path):
    """This checkout against itself: both sides run, the ratios are theirs, the section renders them."""
    out = tmp_path / "against.json"
    proc = subprocess.run(cli("sim.bench") + TINY + ["--engines", "reference", "--threads", "1", "--against",
                                                     str(ROOT), "--repeats", "1", "--json", str(out)],
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    before, after = report["before"]["s_per_round"]["reference"], report["after"]["s_per_round"]["reference"]
    assert report["after_over_before"]["reference"] == pytest.approx(after / before)
    assert len(report["before"]["runs"]) == len(report["after"]["runs"]) == 1
    doc = tmp_path / "doc.md"
    doc.write_text("x\n<!-- BEGIN generated: cpu-before-after -->\nold\n<!-- END generated: cpu-before-after -->\ny\n")
    proc = subprocess.run(cli("sim.bench_report") + [str(out), "--doc", str(doc)], capture_output=True, text=True,
                          env=cli_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = doc.read_text()
    assert "old" not in text and text.startswith("x\n") and text.endswith("y\n")
    assert f"| `reference` | {before:.3g} | {after:.3g} | {after / before:.3g} | {before:.3g} | {after:.3g} |" in text
    check = subprocess.run(cli("sim.bench_report") + [str(out), "--doc", str(doc), "--check"], capture_output=True,
                           text=True, env=cli_env(), timeout=120)
    assert check.returncode == 0, check.stderr


def test_the_committed_cpu_comparison_is_what_its_json_gives():
    proc = subprocess.run(cli("sim.bench_report") + ["docs/benchmarks/cpu-vs-1ee851b.json",
                                                     "docs/benchmarks/cpu-vs-679b51f.json", "--check"], cwd=ROOT,
                          capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
