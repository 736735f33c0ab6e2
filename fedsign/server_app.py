"""The ServerApp: builds the model and the method's strategy from the run config and runs the rounds.
`flwr run .` uses `app` (config from pyproject.toml + --run-config); `fedsign-sim` uses
`make_server_app(cfg)` with its Hydra config. Both run `run_server`, which checks the inputs (data,
model, partitions, resume state) before it creates anything on disk."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsign.config import RunConfig
from fedsign.data.sources import dataset_root
from fedsign.data.specs import dataset_spec
from fedsign.devices import resolve_device
from fedsign.errors import ConfigError, FedsignError
from fedsign.methods import pan_spec
from fedsign.models import build_model, load_exchanged
from fedsign.resume import load_server_state, resumed_config
from fedsign.run_dir import RunDirectory, default_run_path, holds_run
from fedsign.server_loop import run_federation
from fedsign.workspace import dataset_on, partitions

app = ServerApp()
log = logging.getLogger("fedsign")


def resolve_paths(cfg: RunConfig) -> RunConfig:
    """Fix the run directory and the dataset root ($FEDSIGN_<NAME> when unset) once, as absolute
    paths, before the config is written or sent to any client."""
    out = Path(cfg.out) if cfg.out else default_run_path(cfg)
    root = dataset_root(cfg.dataset.name, cfg.dataset.root)
    return cfg.replace(out=str(out.expanduser().resolve()),
                       dataset__root=str(Path(root).expanduser().resolve()) if root else "")


def prepare_run(cfg: RunConfig, explicit: set[str] | None = None) -> RunConfig:
    """The config to run, after checking everything a run needs, so that bad input fails with one
    FedsignError before any run directory is created or any worker started. With `cfg.resume` set it
    is the resumed run's config (`explicit`: the keys the user set, see resumed_config)."""
    if cfg.resume:
        cfg = resumed_config(cfg, explicit)
    cfg = resolve_paths(cfg)
    if not cfg.resume and holds_run(cfg.out):
        raise ConfigError(f"out={cfg.out!r} already holds a run; continue it with resume={cfg.out} "
                          "or choose another out")
    resolve_device(cfg.device)
    dataset_on(cfg, torch.device("cpu"))  # cached: the server loop reuses it
    model = build_model(cfg.model.name, dataset_spec(cfg.dataset.name), pan_spec(cfg))
    partitions(cfg)
    if cfg.resume:
        state = load_server_state(RunDirectory(cfg.out), cfg)
        load_exchanged(model, state.global_state, what=f"the server state in {cfg.out}")
        if state.round > cfg.train.rounds:
            raise ConfigError(f"resume: the run is at round {state.round}, beyond train.rounds={cfg.train.rounds}")
    return cfg


def run_server(grid: Grid, cfg: RunConfig) -> dict[str, Any]:
    logging.getLogger("fedsign").setLevel(logging.INFO)
    cfg = prepare_run(cfg)
    run_dir = RunDirectory(cfg.out)
    run_dir.write_config(cfg)
    print(f"[fedsign] run directory: {run_dir.path}" + (" (resumed)" if cfg.resume else ""), flush=True)
    return run_federation(grid, cfg, run_dir)


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        run_server(grid, RunConfig.from_flat(dict(context.run_config)))
    except FedsignError as exc:
        log.error("fedsign: error: %s", exc)
        raise


def make_server_app(cfg: RunConfig, results: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp bound to `cfg` (the simulation driver's config); fills `results` when done."""
    bound = ServerApp()

    @bound.main()
    def _main(grid: Grid, context: Context) -> None:
        outcome = run_server(grid, cfg)
        if results is not None:
            results.update(outcome)

    return bound

