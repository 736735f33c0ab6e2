"""`fedsign-bench`: seconds per federated round of each way of running one, on this machine, in one run.

  reference  FedRepo-style loop: one process, clients one after another, each a plain python loop of
             SGD steps (fedsign.local_training.train_locally, no DataLoader) on a copy of the weights
  flower     Flower's simulation engine (Ray actors), the full server loop (sim/flower_engine.py)
  cohort     the cohort engine: the same server loop, all clients of a round at once (sim/cohort)
  limit      the model's fwd+bwd+SGD throughput at a large batch: how fast a round could possibly be

All three engines train the same sampled clients on the same partitions and evaluate the global
model centrally once per round. Prints one JSON object (docs/BENCHMARKS.md explains the fields).
`--variant NAME:KEY=VALUE,...` times the engines again with run-config settings changed (the speed
levers: train.precision, train.channels_last, train.step_mode), one row per engine and variant.
`--against DIR` times the same bench in another checkout (PYTHONPATH=DIR), alternating runs.
Defaults are the dataset's setting: for CIFAR-10/CINIC-10 the paper's Table-1 round (+experiment=table1:
VGG8, 100 clients, 10 per round, 5 local epochs, batch 64, lr 0.03), for digits fedsign-sim's quick run
(smallcnn, 20 clients, 10 per round), which runs anywhere in seconds; flags change single settings.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from fedsign.atomic import atomic_target
from fedsign.config import RunConfig
from fedsign.data.specs import DATASET_NAMES, dataset_spec
from fedsign.devices import resolve_device
from fedsign.errors import FedsignError
from fedsign.server_app import prepare_run
from fedsign.evaluation import evaluate
from fedsign.local_training import GRAPH_STATS, autocast, train_locally
from fedsign.methods import make_objective
from fedsign.models import build_model, exchanged_state, load_exchanged
from fedsign.workspace import active_clients, client_data, dataset_on, partitions
from sim.campaign import commit
from strategies.base import weighted_mean
from strategies.sampling import client_seed, sample_clients

ENGINES = ("reference", "flower", "cohort", "limit")
ROOT = Path(__file__).resolve().parents[1]


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
    p.add_argument("--variant", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
                   help="a row per engine with these run-config settings, e.g. bf16:train.precision=bf16 "
                        "(repeatable; default: one plain variant named default)")
    p.add_argument("--against", default="", metavar="DIR",
                   help="also run this bench (same flags) in the checkout DIR, alternating; report both and the ratios")
    p.add_argument("--repeats", type=int, default=2, help="with --against: runs of each checkout")
    args = p.parse_args(argv)
    for flag, low in (("limit_batch", 0), ("limit_steps", 1), ("threads", 0), ("per_round", 1), ("repeats", 1)):
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


@dataclass
class Variant:
    """A named set of run-config settings the engines are timed with (`--variant NAME:KEY=VALUE,...`)."""

    name: str
    overrides: dict[str, str]

    def row(self, engine: str) -> str:
        """The row's name: the engine, and the variant in brackets unless it is the plain one."""
        return engine if self.name == DEFAULT_VARIANT else f"{engine}[{self.name}]"


DEFAULT_VARIANT = "default"


def parse_variants(texts: list[str]) -> list[Variant]:
    variants = []
    for text in texts or [DEFAULT_VARIANT]:
        name, _, settings = text.partition(":")
        pairs = [item.partition("=") for item in settings.split(",") if item.strip()]
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name) or any(not key.strip() or not eq for key, eq, _ in pairs):
            raise FedsignError(f"--variant {text!r}: expected NAME or NAME:KEY=VALUE,... (e.g. bf16:train.precision=bf16)")
        if name in {v.name for v in variants}:
            raise FedsignError(f"--variant {name!r} is given twice")
        variants.append(Variant(name, {key.strip(): value.strip() for key, _, value in pairs}))
    return variants


def variant_config(base: RunConfig, variant: Variant) -> RunConfig:
    """The setting with the variant's keys changed; only run settings, not what the bench fixes."""
    fixed = sorted(k for k in variant.overrides if k in ("engine.name", "out", "resume") or k.startswith("method."))
    if fixed:
        raise FedsignError(f"--variant {variant.name}: {', '.join(fixed)} cannot be changed here")
    try:
        return RunConfig.from_flat({**base.to_flat(), **variant.overrides})
    except FedsignError as exc:
        raise FedsignError(f"--variant {variant.name}: {exc}") from None


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
    """fwd+bwd+SGD step of the model on random inputs at a large batch, in the variant's precision
    and memory order (fp32 and NCHW by default, like the engines)."""
    spec = dataset_spec(cfg.dataset.name)
    model = build_model(cfg.model.name, spec).to(device)
    x = torch.randn(batch, spec.channels, spec.image_size, spec.image_size, device=device)
    if cfg.train.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, spec.num_classes, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            sync(device)
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast(cfg.train, device):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    sync(device)
    return {"batch": batch, "samples_per_s": batch * steps / (time.perf_counter() - start),
            "precision": cfg.train.precision, "channels_last": cfg.train.channels_last}


def progress(line: str) -> None:
    print(f"[fedsign-bench] {line}", file=sys.stderr, flush=True)


def check_inputs(args: argparse.Namespace) -> tuple[list[str], RunConfig]:
    """The engines to time and the setting, after checking everything the bench needs (the data, the
    partitions, the device, where the JSON goes, the variants), so bad input fails before anything runs."""
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown or not engines:
        raise FedsignError(f"--engines: unknown {unknown}; accepted: {', '.join(ENGINES)}")
    if args.json and not os.access(Path(args.json).expanduser().resolve().parent, os.W_OK):
        raise FedsignError(f"--json {args.json}: its folder does not exist or is not writable")
    if args.against and not (Path(args.against) / "sim" / "bench.py").is_file():
        raise FedsignError(f"--against {args.against}: not a fedsign checkout (no sim/bench.py there)")
    base = base_config(args)
    for variant in parse_variants(getattr(args, "variant", [])):
        variant_config(base, variant)
    # the checks of a run (device, data, model, partitions), for a run directory that is never made
    prepare_run(base.replace(out=str(Path(tempfile.gettempdir()) / "fedsign-bench-check")))
    return engines, base


def environment(device: torch.device) -> dict[str, Any]:
    """Where and when a measurement ran: hardware, software, the checkout's commit."""
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "commit": commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    engines, setting = check_inputs(args)
    variants = parse_variants(args.variant)
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
            **environment(device), "command": command_line(args),
            "samples_per_round": statistics.mean(samples[1:] or samples),
            "variants": {v.name: v.overrides for v in variants}, "engines": {}, "limits": {},
        }
        for variant in variants:
            cfg = variant_config(base, variant)
            for engine in engines:
                progress(f"{variant.row(engine)} ...")
                if engine == "limit":
                    batch = args.limit_batch or (2048 if device.type == "cuda" else 256)
                    limit = bench_limit(cfg, device, batch, args.limit_steps)
                    report["limits"][variant.name] = {**limit, "s_per_round": report["samples_per_round"]
                                                      / limit["samples_per_s"]}
                    continue
                report["engines"][variant.row(engine)] = bench_row(engine, cfg, out / variant.name, device, samples)
                report["engines"][variant.row(engine)].update(engine=engine, variant=variant.name)
    report["ratios"] = ratios(report)
    return report


def bench_row(engine: str, cfg: RunConfig, out: Path, device: torch.device, samples: list[int]) -> dict[str, Any]:
    GRAPH_STATS.__init__()
    reset_peak(device)
    if engine == "reference":
        row = summary(bench_reference(cfg, device), samples, peak_gib(device))
    elif engine == "cohort":
        row = summary(bench_engine(run_config(cfg, out, "cohort")), samples, peak_gib(device))
    else:  # the clients run in Ray actors, other processes: their memory and graphs are not seen from here
        return summary(bench_engine(run_config(cfg, out, "flower")), samples, None)
    if cfg.train.step_mode == "cuda_graph":
        row["cuda_graphs"] = dataclasses.asdict(GRAPH_STATS)
    return row


def ratios(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """row / the plain limit (how far from the model's fp32 throughput), the plain reference / row
    (speed-up over the FedRepo-style loop), the engine's plain row / row (what a variant gains)."""
    runs = {name: r["s_per_round"] for name, r in report["engines"].items()}
    out: dict[str, dict[str, float]] = {}
    limit = report["limits"].get(DEFAULT_VARIANT)
    if limit:
        out["engine_over_limit"] = {n: s / limit["s_per_round"] for n, s in runs.items()}
    if "reference" in runs:
        out["reference_over_engine"] = {n: runs["reference"] / s for n, s in runs.items() if n != "reference"}
    gains = {n: runs[r["engine"]] / runs[n] for n, r in report["engines"].items()
             if r.get("engine") in runs and n != r["engine"]}
    if gains:
        out["plain_over_variant"] = gains
    return out


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from benches of the same setting run one after another (e.g. a process per variant)."""
    merged = {**reports[0], "engines": {}, "limits": {}, "variants": {}, "commands": []}
    merged.pop("command", None)
    for report in reports:
        if report["setting"] != merged["setting"]:
            raise ValueError("the benches to merge timed different settings")
        for key in ("engines", "limits", "variants"):
            merged[key].update(report[key])
        merged["commands"].append(report["command"])
    merged["ratios"] = ratios(merged)
    return merged


def command_line(args: argparse.Namespace) -> str:
    return "python -m sim.bench " + shlex.join(args.argv)


def run_against(args: argparse.Namespace) -> dict[str, Any]:
    """The same bench in this checkout and in args.against, alternating (`--repeats` each), each run a
    process of its own; per engine each checkout's s/round (median over its runs, and its best run)
    and their ratios (this / that)."""
    check_inputs(args)
    passed = strip_flags(args.argv, {"--against": 1, "--repeats": 1, "--json": 1, "--out": 1})
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for i in range(args.repeats):
        for which, root in (("before", Path(args.against).resolve()), ("after", ROOT)):
            progress(f"{which} ({root}) run {i + 1}/{args.repeats} ...")
            with tempfile.TemporaryDirectory(prefix="fedsign-bench-against-") as tmp:
                env = {**os.environ, "PYTHONPATH": str(root), "FLWR_TELEMETRY_ENABLED": "0"}
                proc = subprocess.run([sys.executable, "-m", "sim.bench", *passed, "--json", f"{tmp}/b.json"],
                                      cwd=root, env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise FedsignError(f"the bench in {root} failed: {proc.stderr.strip().splitlines()[-1:]}")
                runs[which].append(json.loads(Path(f"{tmp}/b.json").read_text()))
    # the median over runs, and the best run (the least disturbed by other work on a shared machine)
    medians = {which: {name: statistics.median(r["engines"][name]["s_per_round"] for r in rs)
                       for name in rs[0]["engines"]} for which, rs in runs.items()}
    bests = {which: {name: min(r["engines"][name]["s_per_round"] for r in rs) for name in rs[0]["engines"]}
             for which, rs in runs.items()}
    sides = {which: {"s_per_round": medians[which], "best_s_per_round": bests[which], "runs": runs[which]}
             for which in runs}
    return {"before": {"path": str(Path(args.against).resolve()), "commit": checkout_commit(Path(args.against)),
                       **sides["before"]},
            "after": {"path": str(ROOT), "commit": runs["after"][0]["commit"], **sides["after"]},
            "after_over_before": {n: medians["after"][n] / medians["before"][n]
                                  for n in medians["after"] if n in medians["before"]},
            "after_over_before_best": {n: bests["after"][n] / bests["before"][n]
                                       for n in bests["after"] if n in bests["before"]},
            "command": command_line(args), "repeats": args.repeats,
            **{k: runs["after"][0][k] for k in ("device", "cpu", "cpu_count", "torch_threads", "torch", "python",
                                                 "date", "setting")}}


def strip_flags(argv: list[str], flags: dict[str, int]) -> list[str]:
    out, skip = [], 0
    for item in argv:
        if skip:
            skip -= 1
        elif item.split("=", 1)[0] in flags:
            skip = flags[item.split("=", 1)[0]] if "=" not in item else 0
        else:
            out.append(item)
    return out


def checkout_commit(root: Path) -> str:
    """The commit of another checkout (--against); this one's is sim.campaign.commit()."""
    return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the engines' progress lines; stdout is the JSON
            report = run_against(args) if args.against else run_bench(args)
    except FedsignError as exc:
        print(f"fedsign-bench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    text = json.dumps(report, indent=2)
    if args.json:
        write_json(Path(args.json), text)
    print(text, flush=True)


def write_json(path: Path, text: str) -> None:
    with atomic_target(path) as tmp:
        Path(tmp).write_text(text + "\n")


if __name__ == "__main__":
    main()
