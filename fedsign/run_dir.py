"""The run directory contract (DESIGN.md): config.yaml, metrics.jsonl, results.json, checkpoints/."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from fedsign.config import RunConfig


def default_run_path(cfg: RunConfig) -> Path:
    """runs/<time>_<method>_<dataset>[_N]: a fresh folder (under $FEDSIGN_RUNS if set)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(os.environ.get("FEDSIGN_RUNS", "runs")) / f"{stamp}_{cfg.method.name}_{cfg.dataset.name}"
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}_{n}"), n + 1
    return path


def write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing (temporary file + rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class RunDirectory:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def write_config(self, cfg: RunConfig) -> None:
        nested: dict[str, Any] = {}
        for key, value in cfg.to_flat().items():
            *parents, leaf = key.split(".")
            node = nested
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        write_atomic(self.path / "config.yaml", yaml.safe_dump(nested, sort_keys=False))

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_results(self, results: dict[str, Any]) -> None:
        write_atomic(self.path / "results.json", json.dumps(results, indent=1))

    def server_checkpoint(self, server_round: int) -> Path:
        return self.checkpoints / f"server_round{server_round:04d}.safetensors"

    def client_checkpoint(self, server_round: int, client_id: int) -> Path:
        return self.checkpoints / f"client{client_id:03d}_round{server_round:04d}.safetensors"
