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
from flwr.app import ArrayRecord, ConfigRecord
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
from fedsign.workspace import dataset_on, initial_model, partitions
from strategies.sign_metrics import sign_change_fraction

log = logging.getLogger("fedsign")
# seconds to wait for all clients to connect at the start (at least; a round may allow more)
CONNECT_WAIT = 600.0


@dataclass
class Window:
    """Per-round training metrics gathered since the last evaluated round."""

    values: dict[str, list[float]] = field(default_factory=dict)
    rejected: int = 0
    missing: int = 0  # sampled clients with no usable reply (silent past the timeout, or unreachable)
    skipped: int = 0  # rounds not aggregated (fewer valid replies than federation.min_replies)
    # who: client ids with a valid update, with no usable reply, rejected (id as text: the reason)
    replied_ids: list[int] = field(default_factory=list)
    missing_ids: list[int] = field(default_factory=list)
    rejected_ids: dict[str, str] = field(default_factory=dict)

    def add(self, metrics: dict[str, Any]) -> None:
        self.rejected += int(metrics.get("rejected_updates", 0))
        self.missing += int(metrics.get("missing_replies", 0))
        self.skipped += int(metrics.get("skipped", 0))
        self.replied_ids = sorted(set(self.replied_ids) | set(metrics.get("replied", [])))
        self.missing_ids = sorted(set(self.missing_ids) | set(metrics.get("missing", [])))
        self.rejected_ids.update(metrics.get("rejected", {}))
        for key in ("train_loss", "sign_flip_fraction", "global_sign_consistency"):
            if key in metrics:
                self.values.setdefault(key, []).append(float(metrics[key]))

    def summary(self) -> dict[str, Any]:
        row: dict[str, Any] = {k: sum(v) / len(v) for k, v in self.values.items()}
        row.update(rejected_updates=self.rejected, missing_replies=self.missing, skipped_rounds=self.skipped,
                   replied=self.replied_ids, missing=self.missing_ids, rejected=self.rejected_ids)
        return row


def run_federation(grid: Grid, cfg: RunConfig, run_dir: RunDirectory) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    spec = dataset_spec(cfg.dataset.name)
    torch.manual_seed(cfg.seed)
    model = initial_model(cfg).to(device)
    param_keys = parameter_names(model)
    test = dataset_on(cfg, device).test
    strategy = make_strategy(cfg, param_keys)
    if cfg.resume:
        state = load_server_state(run_dir, cfg)
        load_exchanged(model, state.global_state, what=f"the server state in {run_dir.path}")
        strategy.load_state_dict(state.strategy_state)
        if state.rng is not None:
            torch.set_rng_state(state.rng)
        rows = run_dir.truncate_metrics(state.round)
        log.info("resuming %s after round %d of %d", run_dir.path, state.round, cfg.train.rounds)
    else:
        parts = partitions(cfg)
        labels = dataset_on(cfg, torch.device("cpu")).train.y.numpy()
        write_partition_report(class_counts(labels, list(parts), spec.num_classes), spec.classes,
                               cfg.partition.scheme, cfg.partition.alpha, run_dir.path)
        state = ServerState(0, {k: v.cpu().clone() for k, v in exchanged_state(model).items()}, {},
                            uuid.uuid4().hex[:16])
        rows = []
    log.info("waiting for %d clients", cfg.federation.num_clients)
    strategy.nodes = discover_clients(grid, cfg.federation.num_clients,
                                      max(cfg.federation.round_timeout, CONNECT_WAIT))

    global_state = state.global_state
    # the run stamp tells clients which saved method state belongs to this run (fedsign.client_state)
    config = ConfigRecord({**cfg.to_flat(), "run-stamp": state.run_stamp})
    window = Window(**state.window)
    started = time.time() - state.elapsed
    round_start = time.time()
    rounds = cfg.train.rounds
    for server_round in range(state.round + 1, rounds + 1):
        messages = list(strategy.configure_train(server_round, ArrayRecord(torch_state_dict=global_state),
                                                 config, grid))
        replies = list(grid.send_and_receive(messages, timeout=cfg.federation.round_timeout))
        arrays, metrics = strategy.aggregate_train(server_round, replies)
        round_metrics: dict[str, Any] = dict(metrics or {})
        round_metrics.update(missing_replies=len(strategy.missing), replied=strategy.replied,
                             missing=sorted(strategy.missing),
                             rejected={str(r.client_id): r.reason for r in strategy.rejections})
        if strategy.missing:
            log.warning("round %d: %d of %d sampled clients did not reply within federation.round_timeout="
                        "%g s or were unreachable: %s", server_round, len(strategy.missing), len(messages),
                        cfg.federation.round_timeout,
                        "; ".join(f"client {c} (node {strategy.nodes.get(c)}): {why}"
                                  for c, why in sorted(strategy.missing.items())))
        if arrays is None:
            round_metrics["skipped"] = 1
            log.warning("round %d: %d valid updates (< federation.min_replies=%d); the global model is kept",
                        server_round, int(round_metrics.get("clients", 0)), cfg.federation.min_replies)
        else:
            new_state = arrays.to_torch_state_dict()
            round_metrics["global_sign_consistency"] = 1.0 - sign_change_fraction(global_state, new_state, param_keys)
            global_state = new_state
        window.add(round_metrics)

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
            save_round_checkpoints(cfg, run_dir, server_round, global_state, strategy.updates)
            save_server_state(run_dir, ServerState(server_round, global_state, strategy.state_dict(),
                                                   state.run_stamp, asdict(window), time.time() - started,
                                                   torch.get_rng_state()), cfg)

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
                           global_state: dict[str, torch.Tensor], updates: list) -> None:
    common = dict(model=cfg.model.name, dataset=cfg.dataset.name, round=server_round,
                  method=cfg.method.name, seed=cfg.seed, pan=pan_spec(cfg))
    save_checkpoint(run_dir.server_checkpoint(server_round), global_state,
                    checkpoint_metadata(role="server", **common))
    if cfg.checkpoint.clients:
        for update in updates:
            save_checkpoint(run_dir.client_checkpoint(server_round, update.client_id), update.tensors,
                            checkpoint_metadata(role="client", client_id=update.client_id, **common))
