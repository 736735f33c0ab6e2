"""FedSign calibration: Eq. (1)'s reduction over parameters x gamma x seeds through the normal engine,
summarised as a markdown table (final accuracy mean ± std, sign-flip fraction per round vs FedAvg).

γ = 0 is FedAvg exactly (one run per seed, shared by every reduction). Example (CPU, digits):

    python -m sim.calibrate_fedsign --out runs/calibration --seeds 0 1 2 --rounds 30
    python -m sim.calibrate_fedsign --set dataset=cifar10 dataset.root=PATH model=vgg8 device=cuda ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from fedsign.config import RunConfig
from fedsign.errors import ConfigError, FedsignError
from fedsign.logs import setup_logging
from strategies.fedsign import SIGN_REDUCTIONS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sim.calibrate_fedsign", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the runs, calibration.json and calibration.md")
    p.add_argument("--reductions", nargs="+", default=list(SIGN_REDUCTIONS), choices=SIGN_REDUCTIONS)
    p.add_argument("--gammas", nargs="+", type=float, default=[0.0, 0.001, 0.01, 0.1])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--temperature", type=float, default=1.0, help="method.sign_temperature")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="any other run_config key, e.g. dataset=cifar10 model=smallcnn federation.num_clients=20")
    return p.parse_args(argv)


def base_config(args: argparse.Namespace) -> dict[str, Any]:
    flat: dict[str, Any] = {"method.name": "fedsign", "method.sign_temperature": args.temperature,
                            "train.rounds": args.rounds}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE")
        flat[{"dataset": "dataset.name", "model": "model.name"}.get(key, key)] = value
    return flat


def grid(args: argparse.Namespace) -> list[tuple[str, float]]:
    """(formulation, γ) pairs: γ = 0 once (FedAvg), then every reduction x positive γ."""
    cells = [("fedavg", 0.0)] if 0.0 in args.gammas else []
    return cells + [(r, g) for r in args.reductions for g in args.gammas if g > 0]


def run_one(flat: dict[str, Any], out: Path) -> dict[str, Any]:
    from sim.main import run

    cfg = RunConfig.from_flat({**flat, "out": str(out)})
    results = run(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    flips = [r["sign_flip_fraction"] for r in rows if "sign_flip_fraction" in r]
    return {"final_accuracy": results["final_accuracy"], "sign_flip_fraction": sum(flips) / len(flips),
            "wall_seconds": results["wall_seconds"]}


def summarise(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    for cell in cells:
        acc = [r["final_accuracy"] for r in cell["runs"]]
        flips = [r["sign_flip_fraction"] for r in cell["runs"]]
        table.append({"formulation": cell["formulation"], "gamma": cell["gamma"],
                      "accuracy_mean": statistics.mean(acc),
                      "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                      "sign_flip_fraction": statistics.mean(flips), "seeds": cell["seeds"]})
    base = next((t["sign_flip_fraction"] for t in table if t["formulation"] == "fedavg"), None)
    for t in table:
        t["flips_vs_fedavg"] = (t["sign_flip_fraction"] / base - 1.0) if base else None
    return table


def markdown(table: list[dict[str, Any]]) -> str:
    lines = ["| formulation | γ | final accuracy (mean ± std) | sign-flip fraction / round | vs FedAvg | seeds |",
             "| --- | --- | --- | --- | --- | --- |"]
    for t in table:
        name = "FedAvg (γ = 0)" if t["formulation"] == "fedavg" else t["formulation"]
        versus = "" if t["flips_vs_fedavg"] is None else f"{100 * t['flips_vs_fedavg']:+.1f} %"
        lines.append(f"| {name} | {t['gamma']:g} | {100 * t['accuracy_mean']:.2f} ± {100 * t['accuracy_std']:.2f} "
                     f"| {t['sign_flip_fraction']:.5f} | {versus} | {', '.join(map(str, t['seeds']))} |")
    return "\n".join(lines) + "\n"


def calibrate(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    flat = base_config(args)
    RunConfig.from_flat(flat)  # fail fast on a bad --set
    cells = []
    pairs = grid(args)
    total, done, started = len(pairs) * len(args.seeds), 0, time.time()
    for formulation, gamma in pairs:
        cell = {"formulation": formulation, "gamma": gamma, "seeds": args.seeds, "runs": []}
        for seed in args.seeds:
            run_flat = {**flat, "method.gamma": gamma, "seed": seed,
                        "method.sign_reduction": "rms" if formulation == "fedavg" else formulation}
            result = run_one(run_flat, out / f"{formulation}_g{gamma:g}_s{seed}")
            cell["runs"].append({"seed": seed, **result})
            done += 1
            print(f"[calibrate] {done}/{total} {formulation} gamma={gamma:g} seed={seed}: "
                  f"acc {result['final_accuracy']:.4f} flips {result['sign_flip_fraction']:.5f} "
                  f"({time.time() - started:.0f} s elapsed)", flush=True)
        cells.append(cell)
        table = summarise(cells)  # rewritten after every cell, so an interrupted grid still reports
        (out / "calibration.json").write_text(json.dumps({"config": flat, "cells": cells, "table": table},
                                                         indent=2))
        (out / "calibration.md").write_text(markdown(table))
    return summarise(cells)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    try:
        table = calibrate(parse_args(argv))
    except FedsignError as exc:
        print(f"calibrate_fedsign: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(markdown(table), end="")


if __name__ == "__main__":
    main()
