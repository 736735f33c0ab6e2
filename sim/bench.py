"""`fedsign-bench`: seconds per federated round of each way of running one, on this machine, in one run.

  reference  FedRepo-style loop: one process, clients one after another, each a plain python loop of
             SGD steps (fedsign.local_training.train_locally, no DataLoader) on a copy of the weights
  flower     Flower's simulation engine (Ray actors), the full server loop (sim/flower_engine.py)
  cohort     the cohort engine: the same server loop, all clients of a round at once (sim/cohort)
  limit      the model's fwd+bwd+SGD throughput at a large batch: how fast a round could possibly be

All three engines train the same sampled clients on the same partitions and evaluate the global
model centrally once per round. Prints one JSON object (docs/BENCHMARKS.md explains the fields).
Defaults are the dataset's setting: for CIFAR-10/CINIC-10 the paper's Table-1 round (+experiment=table1:
VGG8, 100 clients, 10 per round, 5 local epochs, batch 64, lr 0.03), for digits fedsign-sim's quick run
(smallcnn, 20 clients, 10 per round), which runs anywhere in seconds; flags change single settings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

import torch

from fedsign.config import RunConfig
from fedsign.data.specs import DATASET_NAMES, dataset_spec
from fedsign.devices import resolve_device
from fedsign.errors import FedsignError
from fedsign.server_app import prepare_run
from fedsign.evaluation import evaluate
from fedsign.local_training import train_locally
from fedsign.methods import make_objective
from fedsign.models import build_model, exchanged_state, load_exchanged
from fedsign.workspace import active_clients, client_data, dataset_on, partitions
from strategies.base import weighted_mean
from strategies.sampling import client_seed, sample_clients

ENGINES = ("reference", "flower", "cohort", "limit")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (exit code 2), not usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


# flag -> the run config key it sets (unset flags keep the dataset's default setting)
SETTING_FLAGS = {"model": "model.name", "clients": "federation.num_clients", "epochs": "train.local_epochs",
                 "batch": "train.batch_size", "lr": "train.lr", "alpha": "partition.alpha",
                 "scheme": "partition.scheme", "rounds": "train.rounds", "seed": "seed", "device": "device"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="fedsign-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="cifar10", choices=DATASET_NAMES,
                   help="cifar10/cinic10: the Table-1 round (+experiment=table1); digits: fedsign-sim's quick run")
    p.add_argument("--data-root", default="", help="dataset.root (the offline CIFAR-10 copy, ...)")
    p.add_argument("--model", help="model.name (default: the dataset's setting)")
    p.add_argument("--clients", type=int, help="federation.num_clients")
    p.add_argument("--per-round", type=int, help="clients sampled per round")
    p.add_argument("--epochs", type=int, help="local epochs")
    p.add_argument("--batch", type=int, help="local batch size")
    p.add_argument("--lr", type=float)
    p.add_argument("--alpha", type=float, help="Dirichlet alpha of the partition")
    p.add_argument("--scheme", help="partition.scheme")
    p.add_argument("--rounds", type=int, default=3, help="rounds per engine; the first is reported apart")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated subset of {','.join(ENGINES)}")
    p.add_argument("--limit-batch", type=int, default=0, help="batch of the throughput limit (0: 2048 GPU, 256 CPU)")
    p.add_argument("--limit-steps", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads in this process (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="folder for the engines' run directories (default: a temporary one)")
    p.add_argument("--json", default="", help="also write the JSON here")
    args = p.parse_args(argv)
    for flag, low in (("limit_batch", 0), ("limit_steps", 1), ("threads", 0), ("per_round", 1)):
        value = getattr(args, flag)
        if value is not None and value < low:
            p.error(f"argument --{flag.replace('_', '-')}: {value} is out of range; it must be >= {low}")
    return args


def base_config(args: argparse.Namespace) -> RunConfig:
    """The dataset's setting (the Table-1 experiment, or for digits fedsign-sim's quick run) with the
    flags given on top; checked like any run config."""
    from sim.main import compose_config

    experiment = [] if args.dataset == "digits" else ["+experiment=table1"]
    cfg = compose_config(experiment + [f"dataset={args.dataset}"])
    flat = {**cfg.to_flat(), "dataset.root": args.data_root, "eval.every": 1}
    flat.update({key: getattr(args, flag) for flag, key in SETTING_FLAGS.items() if getattr(args, flag) is not None})
    cfg = RunConfig.from_flat(flat)
    if args.per_round is not None:
        cfg = cfg.replace(federation__fraction=min(1.0, args.per_round / cfg.federation.num_clients))
    return cfg


def run_config(base: RunConfig, out: Path, engine: str) -> RunConfig:
    return base.replace(engine__name=engine, out=str(out / engine))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def samples_per_round(cfg: RunConfig) -> list[int]:
    """Samples trained in each round: local epochs x the sampled clients' partition sizes."""
    parts = partitions(cfg)
    return [cfg.train.local_epochs * sum(len(parts[c]) for c in
                                         sample_clients(active_clients(cfg), cfg.clients_per_round, cfg.seed, r))
            for r in range(1, cfg.train.rounds + 1)]


def summary(round_seconds: list[float], samples: list[int], peak: float | None, **extra: Any) -> dict[str, Any]:
    """Seconds per round: the median of rounds 2.. (round 1 pays start-up costs and is shown apart)."""
    steady = round_seconds[1:] or round_seconds
    s = statistics.median(steady)
    mean_samples = statistics.mean(samples[1:] or samples)
    return {"s_per_round": s, "first_round_s": round_seconds[0], "samples_per_s": mean_samples / s,
            "round_seconds": round_seconds, "peak_gpu_mem_gib": peak, **extra}


def bench_reference(cfg: RunConfig, device: torch.device) -> list[float]:
    """One process, one client after another, weights copied in and out (the authors' code's shape)."""
    spec = dataset_spec(cfg.dataset.name)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, spec).to(device)
    global_state = {k: v.clone() for k, v in exchanged_state(model).items()}
    test = dataset_on(cfg, device).test
    seconds = []
    for r in range(1, cfg.train.rounds + 1):
        start = time.perf_counter()
        states = []
        for cid in sample_clients(active_clients(cfg), cfg.clients_per_round, cfg.seed, r):
            load_exchanged(model, global_state)
            result = train_locally(model, make_objective(cfg), {}, client_data(cfg, cid, device), spec, cfg.train,
                                   cfg.dataset.augment, client_seed(cfg.seed, r, cid))
            states.append(result.state)
        global_state = weighted_mean(states, [1.0] * len(states))
        load_exchanged(model, global_state)
        evaluate(model, test, spec, cfg.eval.batch_size)
        sync(device)
        seconds.append(time.perf_counter() - start)
        progress(f"reference round {r}: {seconds[-1]:.2f} s")
    return seconds


def bench_engine(cfg: RunConfig) -> list[float]:
    """The server loop's own per-round seconds (metrics.jsonl), one evaluated row per round."""
    from sim.main import run

    run(cfg)
    rows = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    return [float(r["seconds"]) for r in rows]


def bench_limit(cfg: RunConfig, device: torch.device, batch: int, steps: int) -> dict[str, Any]:
    """fwd+bwd+SGD step of the model on random inputs at a large batch (fp32, like the engines)."""
    spec = dataset_spec(cfg.dataset.name)
    model = build_model(cfg.model.name, spec).to(device)
    x = torch.randn(batch, spec.channels, spec.image_size, spec.image_size, device=device)
    y = torch.randint(0, spec.num_classes, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            sync(device)
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    sync(device)
    return {"batch": batch, "samples_per_s": batch * steps / (time.perf_counter() - start)}


def progress(line: str) -> None:
    print(f"[fedsign-bench] {line}", file=sys.stderr, flush=True)


def check_inputs(args: argparse.Namespace) -> tuple[list[str], RunConfig]:
    """The engines to time and the setting, after checking everything the bench needs (the data, the
    partitions, the device, where the JSON goes), so bad input fails before anything runs."""
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown or not engines:
        raise FedsignError(f"--engines: unknown {unknown}; accepted: {', '.join(ENGINES)}")
    if args.json and not os.access(Path(args.json).expanduser().resolve().parent, os.W_OK):
        raise FedsignError(f"--json {args.json}: its folder does not exist or is not writable")
    base = base_config(args)
    # the checks of a run (device, data, model, partitions), for a run directory that is never made
    prepare_run(base.replace(out=str(Path(tempfile.gettempdir()) / "fedsign-bench-check")))
    return engines, base


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    engines, setting = check_inputs(args)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="fedsign-bench-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        base = run_config(setting, out, "flower")
        device = resolve_device(base.device)
        samples = samples_per_round(base)
        report: dict[str, Any] = {
            "setting": {"dataset": base.dataset.name, "model": base.model.name,
                        "clients": base.federation.num_clients, "per_round": base.clients_per_round,
                        "local_epochs": base.train.local_epochs, "batch": base.train.batch_size,
                        "lr": base.train.lr, "rounds": base.train.rounds, "alpha": base.partition.alpha,
                        "scheme": base.partition.scheme, "seed": base.seed},
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "samples_per_round": statistics.mean(samples[1:] or samples), "engines": {},
        }
        for engine in engines:
            progress(f"{engine} ...")
            if engine == "limit":
                batch = args.limit_batch or (2048 if device.type == "cuda" else 256)
                report["limit"] = bench_limit(base, device, batch, args.limit_steps)
                report["limit"]["s_per_round"] = report["samples_per_round"] / report["limit"]["samples_per_s"]
                continue
            reset_peak(device)
            if engine == "reference":
                seconds = bench_reference(base, device)
                report["engines"][engine] = summary(seconds, samples, peak_gib(device))
            elif engine == "cohort":
                seconds = bench_engine(run_config(base, out, "cohort"))
                report["engines"][engine] = summary(seconds, samples, peak_gib(device))
            else:  # the clients run in Ray actors, other processes: their memory is not seen from here
                report["engines"][engine] = summary(bench_engine(base), samples, None)
    report["ratios"] = ratios(report)
    return report


def ratios(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """engine / limit (how far from the model's throughput), reference / engine (speed-up)."""
    runs = {name: r["s_per_round"] for name, r in report["engines"].items()}
    out: dict[str, dict[str, float]] = {}
    if "limit" in report:
        out["engine_over_limit"] = {n: s / report["limit"]["s_per_round"] for n, s in runs.items()}
    if "reference" in runs:
        out["reference_over_engine"] = {n: runs["reference"] / s for n, s in runs.items() if n != "reference"}
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the engines' progress lines; stdout is the JSON
            report = run_bench(args)
    except FedsignError as exc:
        print(f"fedsign-bench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text, flush=True)


if __name__ == "__main__":
    main()
