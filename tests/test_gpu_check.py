"""`python -m sim.gpu_check --quick`, the CPU form of the GPU machine's one command, end to end: every
part runs in its own process within the budget and lands in gpu_check.json (GPU tests skipped without
CUDA), and `python -m sim.bench_report` renders that JSON into docs/BENCHMARKS.md's GPU section.
Parts that would overrun the budget are skipped and say so; bad options are one error line."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from sim import bench_report, gpu_check
from sim.gpu_check import pytest_outcomes
from tests.conftest import ROOT, cli, cli_env

pytestmark = pytest.mark.slow  # runs the whole check


@pytest.fixture(scope="module")
def quick_check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cli("sim.gpu_check") + [str(out), "--quick"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return out, json.loads((out / "gpu_check.json").read_text())


def test_the_quick_check_runs_every_part_end_to_end(quick_check):
    out, report = quick_check
    assert report["kind"] == "gpu_check" and report["quick"] and report["commit"] and report["date"]
    parts = report["parts"]
    assert list(parts) == ["tests", "bench:default", "valley", "profile"]
    assert {name: p["status"] for name, p in parts.items()} == dict.fromkeys(parts, "ok"), parts
    tests = parts["tests"]
    assert tests["failed"] == tests["error"] == 0 and tests["skipped"] > 20 and tests["passed"] == 0  # no CUDA here
    bench = parts["bench:default"]["result"]
    assert set(bench["engines"]) == {"reference", "cohort", "reference[all]", "cohort[all]"}
    assert bench["variants"]["all"] == {"train.step_mode": "cuda_graph", "train.channels_last": "true",
                                        "train.precision": "bf16"}
    valley = parts["valley"]["result"]
    assert valley["points"] == 41 and valley["images"] > 300 and valley["speedup"] > 0
    assert valley["checkpoint"].startswith("the cohort engine's global model")
    assert valley["max_abs_loss_difference"] < 1e-4  # the batched evaluator computes the plain loop's losses
    profile = parts["profile"]["result"]
    assert set(profile) == {"cohort round [default]", "one client [default]", "cohort engine, 2 rounds [default]"}
    assert all(p["wall_s"] > 0 and p["top"] for p in profile.values())
    assert profile["cohort round [default]"]["samples"] > 0
    assert any(t["function"].startswith("sim/cohort/") for t in profile["cohort engine, 2 rounds [default]"]["top"])
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_check.json", "gpu_check.log", "profile.txt", "pytest.log"]  # <= 8 files, flat
    assert "aten::" in (out / "profile.txt").read_text() and "skipped" in (out / "pytest.log").read_text()


def test_the_report_renders_the_quick_check_into_the_doc(quick_check, tmp_path):
    out, report = quick_check
    doc = tmp_path / "BENCHMARKS.md"
    shutil.copy(ROOT / "docs" / "BENCHMARKS.md", doc)
    before = doc.read_text()
    bench_report.main([str(out / "gpu_check.json"), "--doc", str(doc)])
    text = doc.read_text()
    assert "Not measured yet" in before and "Not measured yet" not in text
    assert text.split("<!-- BEGIN generated: gpu-check")[0] == before.split("<!-- BEGIN generated: gpu-check")[0]
    assert f"`{report['command']}`" in text and report["date"] in text and report["commit"][:10] in text
    valley = report["parts"]["valley"]["result"]
    assert f"**{valley['speedup']:.3g}×**" in text
    cohort = report["parts"]["bench:default"]["result"]["engines"]["cohort[all]"]
    assert f"| `cohort[all]` | {cohort['s_per_round']:.3g} |" in text
    assert "- cohort engine ≤ 0.3 s/round: best" in text and "Flower engine: not measured" in text
    bench_report.main([str(out / "gpu_check.json"), "--doc", str(doc), "--check"])  # exits 1 if it differs


def test_parts_that_would_overrun_the_budget_are_skipped_and_say_so(tmp_path):
    proc = subprocess.run(cli("sim.gpu_check") + [str(tmp_path), "--quick", "--budget", "5"], capture_output=True,
                          text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    parts = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]
    assert {p["status"] for p in parts.values()} == {"skipped"}
    assert all("s of the 5 s budget left" in p["reason"] for p in parts.values())


@pytest.mark.parametrize(("flags", "message"), [
    (["--budget", "-1"], "--budget and --rounds must be >= 0"),
    (["--data-root", "/nonexistent"], "--data-root /nonexistent is not a folder"),
    (["--budget", "x"], "invalid float value"),
])
def test_bad_options_are_one_error_line(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main([str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err


def test_the_report_refuses_what_it_cannot_read_in_one_line(quick_check, tmp_path, capsys):
    quick_json = quick_check[0] / "gpu_check.json"
    (tmp_path / "other.json").write_text('{"engines": {}}')
    (tmp_path / "doc.md").write_text("no sections here\n")
    for argv, message in ((["/nonexistent.json"], "No such file"), ([str(tmp_path / "other.json")], "neither"),
                          ([str(quick_json), "--doc", str(tmp_path / "doc.md")], "has no section 'gpu-check'")):
        with pytest.raises(SystemExit) as exit_info:
            bench_report.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err


def test_a_killed_pytest_is_summarised_from_its_log(tmp_path):
    log = tmp_path / "pytest.log"
    log.write_text("tests/test_gpu.py::test_a[cuda] PASSED [ 10%]\ntests/test_gpu.py::test_b FAILED [ 20%]\n"
                   "tests/test_gpu.py::test_c SKIPPED (needs a CUDA GPU) [ 30%]\n")
    summary = pytest_outcomes(tmp_path / "no-junit.xml", log)
    assert (summary["passed"], summary["failed"], summary["skipped"]) == (1, 1, 1)
    assert summary["failed_tests"] == ["tests/test_gpu.py::test_b"]
