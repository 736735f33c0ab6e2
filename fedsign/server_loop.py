"""The server's rounds: sample -> send the global model -> validate + aggregate -> evaluate centrally
-> metrics.jsonl, checkpoints (+ the state a killed run resumes from), a progress line per evaluated
round. A round whose valid replies are fewer than federation.min_replies keeps the global model."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from flwr.app import ConfigRecord
from flwr.serverapp import Grid

from fedsign.checkpoint import checkpoint_metadata, save_checkpoint
from fedsign.config import RunConfig
from fedsign.data.specs import dataset_spec
from fedsign.devices import resolve_device
from fedsign.discovery import discover_clients
from fedsign.evaluation import evaluate
from fedsign.methods import make_strategy, pan_spec
from fedsign.models import exchanged_state, load_exchanged, parameter_names
from fedsign.partition import class_counts
from fedsign.partition_report import write_partition_report
from fedsign.resume import ServerState, load_server_state, save_server_state
from fedsign.run_dir import RunDirectory
from fedsign.run_plot import plot_run
from fedsign.workspace import active_clients, dataset_on, initial_model, partitions
from strategies.base import RoundOutcome
from strategies.sign_metrics import sign_change_fraction
from strategies.validation import Update

log = logging.getLogger("fedsign")
# seconds to wait for all clients to connect at the start (at least; a round may allow more)
CONNECT_WAIT = 600.0


@dataclass
class Window:
    """Per-round training metrics gathered since the last evaluated round, and who took part."""

    values: dict[str, list[float]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # client id -> reason (its latest rejection)
    missing: list[int] = field(default_factory=list)  # sampled, no reply reached the server
    replied: list[int] = field(default_factory=list)  # their updates were aggregated (or valid, if skipped)
    rejected_updates: int = 0
    missing_replies: int = 0
    skipped: int = 0  # rounds not aggregated (fewer valid replies than federation.min_replies)

    def add(self, outcome: RoundOutcome) -> None:
        self.rejected.update({str(cid): reason for cid, reason in outcome.rejected.items()})
        self.missing = sorted(set(self.missing) | set(outcome.missing))
        self.replied = sorted(set(self.replied) | {u.client_id for u in outcome.updates})
        self.rejected_updates += len(outcome.rejected)
        self.missing_replies += len(outcome.missing)
        self.skipped += outcome.new_global is None
        for key in ("train_loss", "train_ce", "sign_flip_fraction", "global_sign_consistency"):
            if key in outcome.metrics:
                self.values.setdefault(key, []).append(float(outcome.metrics[key]))

    def summary(self) -> dict[str, Any]:
        row: dict[str, Any] = {k: sum(v) / len(v) for k, v in self.values.items()}
        row.update(rejected_updates=self.rejected_updates, missing_replies=self.missing_replies,
                   skipped_rounds=self.skipped, replied=self.replied, missing=self.missing, rejected=self.rejected)
        return row


def run_federation(grid: Grid, cfg: RunConfig, run_dir: RunDirectory) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    spec = dataset_spec(cfg.dataset.name)
    model = initial_model(cfg).to(device)
    param_keys = parameter_names(model)
    test = dataset_on(cfg, device).test
    if cfg.resume:
        state = load_server_state(run_dir, cfg)
        rows = run_dir.truncate_metrics(state.round)
        log.info("resuming %s after round %d of %d", run_dir.path, state.round, cfg.train.rounds)
    else:
        parts = partitions(cfg)
        labels = dataset_on(cfg, torch.device("cpu")).train.y.numpy()
        write_partition_report(class_counts(labels, list(parts), spec.num_classes), spec.classes,
                               cfg.partition.scheme, cfg.partition.alpha, run_dir.path)
        state = ServerState(0, {k: v.clone() for k, v in exchanged_state(model).items()}, {}, uuid.uuid4().hex[:16])
        rows = []
    log.info("waiting for %d clients", cfg.federation.num_clients)
    nodes = discover_clients(grid, cfg.federation.num_clients, max(cfg.federation.round_timeout, CONNECT_WAIT))
    strategy = make_strategy(cfg, param_keys, {cid: nodes[cid] for cid in active_clients(cfg)})
    strategy.load_state_dict(state.strategy_state)

    global_state = {k: v.to(device) for k, v in state.global_state.items()}
    # which saved method state a client may use (fedsign/client_state.py): this run's, from a round
    # before the one it trains, and from this server segment unless from a round <= the resume point
    config = ConfigRecord({**cfg.to_flat(), "run-stamp": state.run_stamp, "run-segment": uuid.uuid4().hex[:16],
                           "resumed-from": state.round})
    window = Window(**state.window)
    started = time.time() - state.elapsed
    round_start = time.time()
    rounds = cfg.train.rounds
    for server_round in range(state.round + 1, rounds + 1):
        messages = strategy.configure_train(server_round, global_state, config)
        replies = grid.send_and_receive(messages, timeout=cfg.federation.round_timeout)
        outcome = strategy.aggregate_train(server_round, replies)
        if outcome.missing:
            log.warning("round %d: %d of %d sampled clients did not reply within federation.round_timeout=%g s "
                        "(clients %s)", server_round, len(outcome.missing), len(outcome.sampled),
                        cfg.federation.round_timeout, ", ".join(map(str, outcome.missing)))
        if outcome.new_global is None:
            log.warning("round %d: %d valid updates (< federation.min_replies=%d); the global model is kept",
                        server_round, len(outcome.updates), cfg.federation.min_replies)
        else:
            outcome.metrics["global_sign_consistency"] = 1.0 - sign_change_fraction(
                global_state, outcome.new_global, param_keys)
            global_state = outcome.new_global
        window.add(outcome)

        last = server_round == rounds
        if server_round % cfg.eval.every == 0 or last:
            load_exchanged(model, global_state)
            loss, accuracy = evaluate(model, test, spec, cfg.eval.batch_size)
            row = {"round": server_round, "accuracy": accuracy, "loss": loss, **window.summary(),
                   "seconds": time.time() - round_start, "elapsed": time.time() - started}
            run_dir.append_metrics(row)
            rows.append(row)
            window = Window()
            round_start = time.time()
            print(progress_line(row, rounds), flush=True)
        if last or (cfg.checkpoint.every and server_round % cfg.checkpoint.every == 0):
            save_round_checkpoints(cfg, run_dir, server_round, global_state, outcome.updates)
            save_server_state(run_dir, ServerState(server_round, global_state, strategy.state_dict(),
                                                   state.run_stamp, asdict(window), time.time() - started), cfg)

    results = {
        "method": cfg.method.name, "dataset": cfg.dataset.name, "model": cfg.model.name,
        "alpha": cfg.partition.alpha, "partition_scheme": cfg.partition.scheme, "seed": cfg.seed,
        "rounds": rounds, "num_clients": cfg.federation.num_clients, "engine": cfg.engine.name,
        "final_accuracy": rows[-1]["accuracy"], "final_loss": rows[-1]["loss"],
        "best_accuracy": max(r["accuracy"] for r in rows), "wall_seconds": time.time() - started,
        "accuracy_curve": [[r["round"], r["accuracy"]] for r in rows],
        "rejected_updates": sum(r.get("rejected_updates", 0) for r in rows),
        "skipped_rounds": sum(r.get("skipped_rounds", 0) for r in rows),
        "resumed": bool(cfg.resume), "run_dir": str(run_dir.path),
    }
    run_dir.write_results(results)
    plot_run(rows, f"{cfg.method.name} on {cfg.dataset.name}, alpha = {cfg.partition.alpha:g}",
             run_dir.path / "curves.png")
    return results


def progress_line(row: dict[str, Any], rounds: int) -> str:
    parts = [f"round {row['round']:>4}/{rounds}", f"acc {row['accuracy']:.4f}", f"loss {row['loss']:.4f}"]
    if "train_loss" in row:
        parts.append(f"train_loss {row['train_loss']:.4f}")
    if "sign_flip_fraction" in row:
        parts.append(f"sign_flips {row['sign_flip_fraction']:.4f}")
    if row.get("rejected_updates"):
        parts.append(f"rejected {row['rejected_updates']}")
    if row.get("missing_replies"):
        parts.append(f"missing {row['missing_replies']}")
    if row.get("skipped_rounds"):
        parts.append(f"skipped {row['skipped_rounds']}")
    parts.append(f"{row['seconds']:.1f}s")
    return "[fedsign] " + "  ".join(parts)


def save_round_checkpoints(cfg: RunConfig, run_dir: RunDirectory, server_round: int,
                           global_state: dict[str, torch.Tensor], updates: list[Update]) -> None:
    common = dict(model=cfg.model.name, dataset=cfg.dataset.name, round=server_round,
                  method=cfg.method.name, seed=cfg.seed, pan=pan_spec(cfg))
    save_checkpoint(run_dir.server_checkpoint(server_round), global_state,
                    checkpoint_metadata(role="server", **common))
    if cfg.checkpoint.clients:
        for update in updates:
            save_checkpoint(run_dir.client_checkpoint(server_round, update.client_id), update.tensors,
                            checkpoint_metadata(role="client", client_id=update.client_id, **common))
