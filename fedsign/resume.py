"""Continuing a killed run: the server state saved at checkpoint rounds (global model, the strategy's
state, the metrics window, the run stamp) in one safetensors file written atomically, and
the config a resumed run uses (its run directory's config.yaml; only a few keys may change)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedsign.checkpoint import load_checkpoint, save_checkpoint
from fedsign.config import RunConfig
from fedsign.errors import CheckpointError, ConfigError
from fedsign.run_dir import RunDirectory, read_config

Tensors = dict[str, torch.Tensor]
STATE_FORMAT = "2"
# Nothing on the server draws from torch's RNG (client sampling and seeds are functions of (seed,
# round, client); θ_0 of the seed alone), so the state holds no RNG: a resumed run redoes the same draws.
# keys a resumed run may set differently from the run it continues (everything else must match)
RESUMABLE_KEYS = ("train.rounds", "device", "engine.name", "engine.num_cpus", "engine.num_gpus",
                  "federation.round_timeout", "eval.batch_size", "checkpoint.every", "checkpoint.clients",
                  "out", "resume")


@dataclass
class ServerState:
    round: int  # the last completed round
    global_state: Tensors
    strategy_state: Tensors
    run_stamp: str  # identifies the run across resumes (clients check their saved state against it)
    window: dict[str, Any] = field(default_factory=dict)  # metrics gathered since the last evaluation
    elapsed: float = 0.0  # wall seconds spent before this state was saved


def identity(cfg: RunConfig) -> dict[str, str]:
    """What a server state must match to be resumed by `cfg`'s run."""
    return {"model": cfg.model.name, "dataset": cfg.dataset.name, "method": cfg.method.name, "seed": str(cfg.seed)}


def save_server_state(run_dir: RunDirectory, state: ServerState, cfg: RunConfig) -> None:
    tensors = {f"global/{k}": v for k, v in state.global_state.items()}
    tensors.update({f"strategy/{k}": v for k, v in state.strategy_state.items()})
    save_checkpoint(run_dir.resume_state, tensors, {
        **identity(cfg), "role": "server-state", "format": STATE_FORMAT, "round": str(state.round), "run_stamp": state.run_stamp,
        "window": json.dumps(state.window), "elapsed": repr(state.elapsed)})


def load_server_state(run_dir: RunDirectory, cfg: RunConfig) -> ServerState:
    path = run_dir.resume_state
    if not path.is_file():
        raise CheckpointError(f"resume={run_dir.path}: no server state '{path.name}' in {path.parent}; a run "
                              "writes one every checkpoint.every rounds (set checkpoint.every >= 1)")
    tensors, meta = load_checkpoint(path)
    if meta.get("role") != "server-state" or meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"'{path}' is not a fedsign server state (role={meta.get('role')!r}, "
                              f"format={meta.get('format')!r}; expected role='server-state', format={STATE_FORMAT})")
    wrong = {k: v for k, v in identity(cfg).items() if meta.get(k) != v}
    if wrong:
        saved = ", ".join(f"{k}={meta.get(k)!r}" for k in wrong)
        wanted = ", ".join(f"{k}={v!r}" for k, v in wrong.items())
        raise CheckpointError(f"'{path}' was saved by a run with {saved}; this run has {wanted}")
    try:
        return ServerState(
            round=int(meta["round"]), run_stamp=meta["run_stamp"], window=json.loads(meta["window"]),
            elapsed=float(meta["elapsed"]),
            global_state={k[7:]: v for k, v in tensors.items() if k.startswith("global/")},
            strategy_state={k[9:]: v for k, v in tensors.items() if k.startswith("strategy/")})
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"'{path}' has damaged metadata ({exc})") from None


def resumed_config(cfg: RunConfig, explicit: set[str] | None = None) -> RunConfig:
    """The config of the run in `cfg.resume`, with the keys in RESUMABLE_KEYS taken from `cfg` (all
    of them, or only those in `explicit`, the keys the user set). Any other key that differs is an error."""
    folder = Path(cfg.resume).expanduser().resolve()
    if not (folder / "config.yaml").is_file():
        raise ConfigError(f"resume={cfg.resume!r} is not a run directory (it has no config.yaml)")
    try:
        saved = RunConfig.from_flat(read_config(folder))
    except ConfigError as exc:
        raise ConfigError(f"resume={cfg.resume!r}: its config.yaml is not valid: {exc}") from None
    if cfg.out and Path(cfg.out).expanduser().resolve() != folder:
        raise ConfigError(f"out={cfg.out!r} differs from resume={cfg.resume!r}; a run resumes in its own directory")
    given, flat = cfg.to_flat(), saved.to_flat()
    changed = [k for k in given if given[k] != flat[k] and (explicit is None or k in explicit)]
    fixed = [k for k in changed if k not in RESUMABLE_KEYS]
    if fixed:
        details = ", ".join(f"{k}={given[k]!r} (the run has {flat[k]!r})" for k in fixed[:4])
        raise ConfigError(f"resume: {details} cannot change when resuming; only {', '.join(RESUMABLE_KEYS[:-2])} may")
    flat.update({k: given[k] for k in changed})
    flat.update(out=str(folder), resume=str(folder))
    return RunConfig.from_flat(flat)
