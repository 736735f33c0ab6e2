"""`python -m landscape.bench`: the plain-loop comparison runs and agrees with the evaluator; the
generated docs section is rebuilt from a report (the peer libraries are not needed here)."""

from __future__ import annotations

import json

from landscape.bench import BEGIN, END, main, render, write_docs


def test_plain_loop_bench_writes_its_json(tmp_path, capsys, one_thread):
    out = tmp_path / "b.json"
    main(["--model", "smallcnn_bn", "--dataset", "digits", "--images", "40", "--bn-images", "30", "--points", "3",
          "--repeats", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report == json.loads(capsys.readouterr().out)
    assert report["bn_recalibration"] and report["points"] == 3 and report["speedup"] > 0
    assert report["max_abs_loss_difference"] < 1e-4  # the evaluator and the plain loop: the same curve
    assert {"commit", "date", "command", "threads"} <= set(report)


def test_docs_section_is_regenerated_between_its_markers(tmp_path):
    timing = {"fedsign_median_s": 1.0, "peer_median_s": 2.0, "ratio": 2.0, "chunk": 1}
    case = {"model": "m", "dataset": "digits", "test_images": 10, "bn_images": 0, "parameters": 5,
            "line": {"points": 41, "peer": "p", **timing}, "plane": {"points": 441, "peer": "p", **timing},
            "hvp": {"mode": "linearize", "products": 2, "pairs": 4, "peer": "q", "max_relative_difference": 0.0,
                    "ratio": 2.0, "fedsign_median_per_product_s": 0.5, "peer_median_per_product_s": 1.0},
            "hvp_setup": {"mode": "linearize", "peer": "q", **timing, "fedsign_median_s": 3.0, "peer_median_s": 1.0},
            "hvp_graph": {"mode": "graph", "products": 2, "pairs": 4, "peer": "q", "max_relative_difference": 1e-7,
                          "ratio": 0.5, "fedsign_median_per_product_s": 2.0, "peer_median_per_product_s": 1.0},
            "hvp_graph_setup": {"mode": "graph", "peer": "q", **timing}}
    report = {"date": "d", "commit": "c", "command": "cmd", "cpu": "x", "cores": 2, "load_average": [1.0],
              "load_average_after": [1.0], "threads": 1, "torch": "t", "cases": [case]}
    docs = tmp_path / "landscape.md"
    docs.write_text(f"before\n{BEGIN}\nold\n{END}\nafter\n")
    write_docs(report, docs)
    text = docs.read_text()
    assert text.startswith("before\n") and text.endswith("\nafter\n") and "old" not in text
    assert text.count(BEGIN) == 1 and "| 2.00x |" in text and render(report) in text
    assert "HVP, `linearize` (per product: 4 pairs" in text and "| 1 | 0.5 | 2.00x |" in text
    assert "HVP, `graph` (per product" in text and "| 1 | 2 | 0.50x |" in text and "HVP set-up, `graph`" in text
    # the linearized set-up takes 2 s longer, and each product saves 0.5 s
    assert "HVP set-up, `linearize`" in text and "m: after 4 products." in text
    assert "by at most 0.0e+00 (`linearize`), 1.0e-07 (`graph`)" in text
