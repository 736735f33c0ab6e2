"""A run directory: config.yaml (the resolved config), metrics.jsonl (one JSON object per evaluated
round), results.json (the summary), checkpoints/ (safetensors models, and resume.safetensors, the
server state a killed run continues from), partition.json/png and curves.png."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml
from flwr.common.config import flatten_dict, unflatten_dict

from fedsign.atomic import atomic_target
from fedsign.config import RunConfig
from fedsign.errors import ConfigError


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
    with atomic_target(path) as tmp:
        Path(tmp).write_text(text)


def holds_run(path: str | Path) -> bool:
    """Whether a folder already holds (part of) a run: its config, metrics or results."""
    return any((Path(path) / name).is_file() for name in ("config.yaml", "metrics.jsonl", "results.json"))


def read_config(path: str | Path) -> dict[str, Any]:
    """The flat dotted keys of a run directory's config.yaml."""
    try:
        tree = yaml.safe_load((Path(path) / "config.yaml").read_text())
        return flatten_dict(tree if isinstance(tree, dict) else {})
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"'{Path(path) / 'config.yaml'}' is not a fedsign config: {' '.join(str(exc).split())}") from None


class RunDirectory:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.resume_state = self.checkpoints / "resume.safetensors"

    def write_config(self, cfg: RunConfig) -> None:
        write_atomic(self.path / "config.yaml", yaml.safe_dump(unflatten_dict(cfg.to_flat()), sort_keys=False))

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        """The rows written so far; a line cut short by a killed process is skipped."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def truncate_metrics(self, last_round: int) -> list[dict[str, Any]]:
        """Keep the rows up to `last_round` (a resumed run redoes the later ones); returns them."""
        rows = [r for r in self.read_metrics() if r.get("round", 0) <= last_round]
        write_atomic(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    def write_results(self, results: dict[str, Any]) -> None:
        write_atomic(self.path / "results.json", json.dumps(results, indent=1))

    def server_checkpoint(self, server_round: int) -> Path:
        return self.checkpoints / f"server_round{server_round:04d}.safetensors"

    def client_checkpoint(self, server_round: int, client_id: int) -> Path:
        return self.checkpoints / f"client{client_id:03d}_round{server_round:04d}.safetensors"
