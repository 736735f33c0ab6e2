"""The server's rounds: sample -> send the global model -> validate + aggregate -> evaluate centrally
-> metrics.jsonl, checkpoints, a progress line per evaluated round."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
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
from fedsign.models import build_model, exchanged_state, load_exchanged, parameter_names
from fedsign.partition import class_counts
from fedsign.partition_report import write_partition_report
from fedsign.run_dir import RunDirectory
from fedsign.run_plot import plot_run
from fedsign.workspace import dataset_on, partitions
from strategies.sign_metrics import sign_change_fraction

log = logging.getLogger("fedsign")


@dataclass
class Window:
    """Per-round training metrics gathered since the last evaluated round."""

    values: dict[str, list[float]] = field(default_factory=dict)
    rejected: int = 0

    def add(self, metrics: dict[str, Any]) -> None:
        self.rejected += int(metrics.get("rejected_updates", 0))
        for key in ("train_loss", "sign_flip_fraction", "global_sign_consistency"):
            if key in metrics:
                self.values.setdefault(key, []).append(float(metrics[key]))

    def summary(self) -> dict[str, Any]:
        row: dict[str, Any] = {k: sum(v) / len(v) for k, v in self.values.items()}
        row["rejected_updates"] = self.rejected
        return row


def run_federation(grid: Grid, cfg: RunConfig, run_dir: RunDirectory) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    spec = dataset_spec(cfg.dataset.name)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, spec, pan_spec(cfg)).to(device)
    param_keys = parameter_names(model)
    test = dataset_on(cfg, device).test
    parts = partitions(cfg)
    labels = dataset_on(cfg, torch.device("cpu")).train.y.numpy()
    write_partition_report(class_counts(labels, list(parts), spec.num_classes), spec.classes,
                           cfg.partition.scheme, cfg.partition.alpha, run_dir.path)
    strategy = make_strategy(cfg, param_keys)
    log.info("waiting for %d clients", cfg.federation.num_clients)
    strategy.nodes = discover_clients(grid, cfg.federation.num_clients, cfg.federation.round_timeout)

    global_state = {k: v.cpu().clone() for k, v in exchanged_state(model).items()}
    flat = cfg.to_flat()
    rows: list[dict[str, Any]] = []
    window = Window()
    started = time.time()
    round_start = time.time()
    rounds = cfg.train.rounds
    for server_round in range(1, rounds + 1):
        messages = strategy.configure_train(server_round, ArrayRecord(torch_state_dict=global_state),
                                            ConfigRecord(flat), grid)
        replies = list(grid.send_and_receive(messages, timeout=cfg.federation.round_timeout))
        arrays, metrics = strategy.aggregate_train(server_round, replies)
        round_metrics: dict[str, Any] = dict(metrics or {})
        if arrays is None:
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

    results = {
        "method": cfg.method.name, "dataset": cfg.dataset.name, "model": cfg.model.name,
        "alpha": cfg.partition.alpha, "partition_scheme": cfg.partition.scheme, "seed": cfg.seed,
        "rounds": rounds, "num_clients": cfg.federation.num_clients, "engine": cfg.engine.name,
        "final_accuracy": rows[-1]["accuracy"], "final_loss": rows[-1]["loss"],
        "best_accuracy": max(r["accuracy"] for r in rows), "wall_seconds": time.time() - started,
        "accuracy_curve": [[r["round"], r["accuracy"]] for r in rows],
        "run_dir": str(run_dir.path),
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
