"""The ServerApp: builds the model and the method's strategy from the run config and runs the rounds.
`flwr run .` uses `app` (config from pyproject.toml + --run-config); `fedsign-sim` uses
`make_server_app(cfg)` with its Hydra config. Both run `run_server`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsign.config import RunConfig
from fedsign.run_dir import RunDirectory, default_run_path
from fedsign.server_loop import run_federation

app = ServerApp()


def resolve_out(cfg: RunConfig) -> RunConfig:
    """Fix the run directory once, as an absolute path, before the config is sent to any client."""
    out = Path(cfg.out) if cfg.out else default_run_path(cfg)
    return cfg.replace(out=str(out.expanduser().resolve()))


def run_server(grid: Grid, cfg: RunConfig) -> dict[str, Any]:
    logging.getLogger("fedsign").setLevel(logging.INFO)
    cfg = resolve_out(cfg)
    run_dir = RunDirectory(cfg.out)
    run_dir.write_config(cfg)
    print(f"[fedsign] run directory: {run_dir.path}", flush=True)
    return run_federation(grid, cfg, run_dir)


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_server(grid, RunConfig.from_flat(dict(context.run_config)))


def make_server_app(cfg: RunConfig, results: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp bound to `cfg` (the simulation driver's config); fills `results` when done."""
    bound = ServerApp()

    @bound.main()
    def _main(grid: Grid, context: Context) -> None:
        outcome = run_server(grid, cfg)
        if results is not None:
            results.update(outcome)

    return bound
