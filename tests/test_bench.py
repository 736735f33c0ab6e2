"""fedsign-bench smoke test: a tiny run on digits prints the documented JSON with positive numbers
(no timing assertions). The Flower engine is left out here (Ray's start-up alone takes longer than
this whole test); tests/test_fedavg.py runs it, and docs/BENCHMARKS.md has its numbers."""

from __future__ import annotations

import json

import pytest

from sim.bench import main


def test_bench_prints_the_documented_json(tmp_path, capsys, one_thread):
    main(["--dataset", "digits", "--model", "smallcnn", "--clients", "6", "--per-round", "2", "--epochs", "1",
          "--batch", "32", "--rounds", "2", "--engines", "reference,cohort,limit", "--limit-batch", "64",
          "--limit-steps", "2", "--device", "cpu", "--out", str(tmp_path), "--json", str(tmp_path / "b.json")])
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((tmp_path / "b.json").read_text())
    assert report["setting"]["per_round"] == 2 and report["device"] == "cpu"
    assert report["samples_per_round"] > 0
    assert set(report["engines"]) == {"reference", "cohort"}
    for result in report["engines"].values():
        assert len(result["round_seconds"]) == 2 and all(s > 0 for s in result["round_seconds"])
        assert result["s_per_round"] > 0 and result["samples_per_s"] > 0 and result["peak_gpu_mem_gib"] is None
    assert report["limit"]["samples_per_s"] > 0 and report["limit"]["s_per_round"] > 0
    assert set(report["ratios"]["engine_over_limit"]) == {"reference", "cohort"}
    assert report["ratios"]["reference_over_engine"]["cohort"] > 0
    # the cohort engine's own run directory is a complete run
    assert json.loads((tmp_path / "cohort" / "results.json").read_text())["engine"] == "cohort"


def test_bench_rejects_unknown_engines(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "digits", "--model", "smallcnn", "--engines", "ray"])
    assert exit_info.value.code == 2 and "unknown ['ray']" in capsys.readouterr().err
