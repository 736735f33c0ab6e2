"""`python -m sim.gpu_check OUTDIR`: everything the GPU machine is for, in one command, within a budget.

Parts, in this order (each a process of its own, so a CUDA failure in one cannot take the others down;
each within its share of --budget, skipped when too little is left, and said so in the JSON):
  data       decode the CIFAR-10 copy once into fedsign's cache (the later parts read the cache; not
             in the quick form: digits ships with scikit-learn)
  tests      `pytest -m gpu` on GPU_TESTS (tests that skip without CUDA), summary per test
  bench:*    fedsign-bench on the Table-1 round (VGG8, 100 clients, 10 per round, 5 local epochs, batch
             64, lr 0.03, alpha 0.5, the authors' partition), one process per speed option (VARIANTS;
             the plain way, all levers and CUDA graphs first, the single levers after the profile):
             reference, cohort and the throughput limit, plus flower where Ray is installed
  valley     a 41-point valley on the bench's VGG8 checkpoint over 5,000 test images: landscape's
             batched evaluator against a plain loop (copy, write theta + lambda d, evaluate), as a ratio
  profile    torch.profiler over one round of the cohort's and one client's local training (plain and
             with every lever): where the time goes, the device's busy fraction, the top kernels; and
             cProfile over a 2-round cohort-engine run: the host's own time (server loop, Grid)
OUTDIR gets gpu_check.json (rewritten after every part: a kill keeps what was done), gpu_check.log,
pytest.log and profile.txt. `--quick` is the CPU form (digits, a tiny round, all options in one
process, the plain way and all levers at once): the same parts end to end in well under a minute. `python -m sim.bench_report` turns the
JSON into docs/BENCHMARKS.md's tables.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROG = "python -m sim.gpu_check"
GPU_TESTS = ("tests/test_gpu.py", "tests/test_local_training.py")  # the files with tests marked gpu
GPU_DATA = Path("/tmp/gpu-data")  # where the GPU host's staging call copies the CIFAR-10 archives
LOG_LIMIT = 2 * 2**20  # bytes kept of each log (its head and tail): what comes back is at most 16 MiB a file

# the speed options, each timed by its own fedsign-bench process (docs/engines.md, "Speed")
VARIANTS = {
    "default": {},
    "cuda_graph": {"train.step_mode": "cuda_graph"},
    "all": {"train.step_mode": "cuda_graph", "train.channels_last": "true", "train.precision": "bf16"},
    "bf16": {"train.precision": "bf16"},
    "channels_last": {"train.channels_last": "true"},
    "cuda_graph+channels_last": {"train.step_mode": "cuda_graph", "train.channels_last": "true"},
}
FLOWER_VARIANTS = ("default", "all")  # Ray's start-up alone is ~30 s: two Flower rows at most
QUICK_VARIANTS = ("default", "all")  # the CPU form times the plain way and every lever at once; profiled

# seconds each part may take at most (GPU form, quick form); parts run in this order
# (the quick form's shares are generous for a shared 2-core CI machine; it takes ~40 s there)
PLAN = [("data", 60, 0), ("tests", 120, 30), ("bench:default", 45, 45), ("bench:all", 30, 0),
        ("bench:cuda_graph", 30, 0), ("valley", 30, 25), ("profile", 40, 30), ("bench:bf16", 30, 0),
        ("bench:channels_last", 30, 0), ("bench:cuda_graph+channels_last", 30, 0)]
FLOWER_EXTRA = 40  # a bench part's extra seconds when it also times the Flower engine


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from sim.bench import OneLineParser

    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("outdir", help="folder for gpu_check.json and the logs (on the device: $OUT)")
    p.add_argument("--quick", action="store_true", help="the CPU form: digits, a tiny round, one bench process")
    p.add_argument("--data-root", default="", help="the CIFAR-10 copy (default: $FEDSIGN_CIFAR10, /tmp/gpu-data, "
                                                   "../shared/data/cifar10-jpeg)")
    p.add_argument("--budget", type=float, default=0.0, help="seconds for everything (default: 300, quick 130)")
    p.add_argument("--rounds", type=int, default=0, help="bench rounds per engine (default: 3, quick 2)")
    p.add_argument("--part", default="", help=argparse.SUPPRESS)  # internal: run one part in this process
    p.add_argument("--work", default="", help=argparse.SUPPRESS)  # internal: the parts' scratch folder
    args = p.parse_args(argv)
    if args.budget < 0 or args.rounds < 0:
        p.error("--budget and --rounds must be >= 0")
    args.budget = args.budget or (130.0 if args.quick else 300.0)
    args.rounds = args.rounds or (2 if args.quick else 3)
    return args


def data_root(given: str) -> str:
    """The CIFAR-10 copy: --data-root (only it, when given), else $FEDSIGN_CIFAR10, the GPU host's
    /tmp/gpu-data, ../shared/data/cifar10-jpeg; "" when there is none."""
    if given:
        return str(Path(given).resolve()) if Path(given).is_dir() else ""
    for candidate in (os.environ.get("FEDSIGN_CIFAR10", ""), str(GPU_DATA),
                      str(ROOT.parent / "shared" / "data" / "cifar10-jpeg")):
        if candidate and Path(candidate).is_dir():
            return str(Path(candidate).resolve())
    return ""


def bench_flags(args: argparse.Namespace) -> list[str]:
    """fedsign-bench's flags: the Table-1 round on CIFAR-10 (its defaults), or a tiny digits round."""
    if args.quick:
        return ["--dataset", "digits", "--model", "smallcnn", "--clients", "6", "--per-round", "3", "--epochs", "1",
                "--rounds", str(args.rounds), "--limit-batch", "64", "--limit-steps", "2"]
    return ["--dataset", "cifar10", "--data-root", data_root(args.data_root), "--rounds", str(args.rounds)]


# ---- the parts, each run as `python -m sim.gpu_check OUTDIR --part NAME --work DIR` ----
def part_data(args: argparse.Namespace) -> dict[str, Any]:
    from fedsign.data import DatasetConfig, load_dataset

    data = load_dataset(DatasetConfig(name="cifar10", root=data_root(args.data_root)))
    return {"train_images": len(data.train), "test_images": len(data.test)}


def bench_setting(args: argparse.Namespace, variant: str = "default"):
    """The bench's RunConfig (the same flags), with a variant's settings."""
    from fedsign.config import RunConfig
    from sim import bench

    cfg = bench.base_config(bench.parse_args(bench_flags(args)))
    return RunConfig.from_flat({**cfg.to_flat(), **VARIANTS[variant]})


def part_valley(args: argparse.Namespace) -> dict[str, Any]:
    """landscape.valley (41 points, batched evaluator) against a plain loop on the bench's checkpoint."""
    import numpy as np
    import torch

    from fedsign.checkpoint import model_from_checkpoint
    from fedsign.data import DatasetConfig, load_dataset, normalize
    from fedsign.data.specs import dataset_spec
    from fedsign.devices import resolve_device
    from landscape import Direction, Evaluator, ProbeData, noise_direction, scale_direction, valley

    cfg = bench_setting(args)
    device = resolve_device(cfg.device)
    found = sorted(Path(args.work, "bench-default", "default", "cohort", "checkpoints").glob("server_round*.safetensors"))
    if found:
        path, source = found[-1], "the cohort engine's global model after the bench's last round"
    else:  # the bench did not get that far: a checkpoint of the initial model still times the probe
        from fedsign.checkpoint import checkpoint_metadata, save_checkpoint
        from fedsign.models import exchanged_state
        from fedsign.workspace import initial_model

        path, source = Path(args.work, "initial.safetensors"), "the initial model (the bench left no checkpoint)"
        save_checkpoint(path, exchanged_state(initial_model(cfg)), checkpoint_metadata(
            model=cfg.model.name, dataset=cfg.dataset.name, round=0, role="server", method="fedavg", seed=cfg.seed))
    model, meta = model_from_checkpoint(path, device)
    model.eval()
    spec = dataset_spec(meta["dataset"])
    images = 5000 if not args.quick else 10**9
    test = load_dataset(DatasetConfig(name=cfg.dataset.name, root=cfg.dataset.root)).test
    if images < len(test):
        test = test.subset(torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:images].sort().values)
    test = test.to(device)
    lambdas = np.linspace(-1.0, 1.0, 41)
    chunk = 16 if device.type == "cuda" else 1
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    from fedsign.evaluation import evaluate

    evaluate(model, test.subset(torch.arange(min(500, len(test)), device=device)), spec, 500)  # first kernels
    sync()
    start = time.perf_counter()  # the landscape way, normalising the data once included
    evaluator = Evaluator(model, ProbeData(normalize(test.x, spec), test.y), batch_size=500, chunk=chunk)
    theta = evaluator.parameters()
    raw = noise_direction(theta, list(theta), "gaussian", 0, sign=True)
    result = valley(evaluator, theta, [Direction("gaussian", True, raw)], lambdas=lambdas, scaling="ns")
    sync()
    batched = time.perf_counter() - start
    direction = scale_direction(raw, theta, "ns")
    start = time.perf_counter()
    plain = plain_loop(model, theta, direction, lambdas, test, spec)
    sync()
    loop = time.perf_counter() - start
    curve = result.arrays["curves"][0]
    loss = np.asarray(curve["loss"], dtype=np.float64)
    return {"checkpoint": source, "model": meta["model"], "dataset": meta["dataset"], "images": len(test),
            "points": len(lambdas), "chunk": chunk, "device": str(device), "batched_s": batched, "plain_loop_s": loop,
            "speedup": loop / batched, "max_abs_loss_difference": float(np.max(np.abs(loss - plain))),
            "loss_at_0": float(plain[len(lambdas) // 2]), "loss_asymmetry": curve.get("loss_asymmetry")}


def plain_loop(model, theta, direction, lambdas, test, spec):
    """One point at a time: a copy of the model, theta + lambda d written into it, fedsign's evaluation
    (which normalises each batch of uint8 images)."""
    import numpy as np
    import torch

    from fedsign.evaluation import evaluate

    losses = []
    for lam in lambdas:
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in moved.named_parameters():
                p.copy_(theta[name] + float(lam) * direction[name])
        losses.append(evaluate(moved, test, spec, 500)[0])
    return np.array(losses)


def part_profile(args: argparse.Namespace) -> dict[str, Any]:
    """torch.profiler over the local training of the bench's first round: the cohort engine's
    train_cohort of its sampled clients and train_locally of one client, plain and with every lever
    (each run once untimed first: first kernels, graph captures)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from fedsign.data.specs import dataset_spec
    from fedsign.devices import resolve_device
    from fedsign.local_training import train_locally
    from fedsign.methods import make_objective
    from fedsign.models import exchanged_state, load_exchanged
    from fedsign.workspace import active_clients, client_data, initial_model, model_for
    from sim.cohort.cohort_training import CohortClient, train_cohort
    from strategies.sampling import client_seed, sample_clients

    out: dict[str, Any] = {}
    tables = []
    for variant in QUICK_VARIANTS[:1] if args.quick else QUICK_VARIANTS:  # the CPU form: the plain way only
        cfg = bench_setting(args, variant)
        device, spec = resolve_device(cfg.device), dataset_spec(cfg.dataset.name)
        start_state = {k: v.to(device) for k, v in exchanged_state(initial_model(cfg)).items()}
        sampled = sample_clients(active_clients(cfg), cfg.clients_per_round, cfg.seed, 1)
        clients = [CohortClient(client_data(cfg, c, device), start_state, {}, client_seed(cfg.seed, 1, c))
                   for c in sampled]
        model = model_for(cfg, device)
        objective = make_objective(cfg)

        def cohort_round():
            train_cohort(model, objective, clients, spec, cfg.train, cfg.dataset.augment)

        def one_client():
            load_exchanged(model, start_state)
            train_locally(model, objective, {}, clients[0].data, spec, cfg.train, cfg.dataset.augment,
                          clients[0].seed)

        for name, fn in (("cohort round", cohort_round), ("one client", one_client)):
            fn()
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                started = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                wall = time.perf_counter() - started
            key = f"{name} [{variant}]"
            averages = prof.key_averages()  # parsing the trace is slow: once
            out[key] = profile_summary(averages, wall, device.type == "cuda")
            out[key]["samples"] = cfg.train.local_epochs * (sum(len(c.data) for c in clients) if name == "cohort round"
                                                            else len(clients[0].data))
            sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            tables.append(f"== {key}: {wall:.3f} s ==\n" + averages.table(sort_by=sort, row_limit=25))
        key = f"cohort engine, {cfg.train.rounds} rounds [{variant}]"
        out[key], text = python_profile(cfg.replace(engine__name="cohort", train__rounds=2,
                                                    out=str(Path(args.work, f"profile-run-{variant}"))))
        tables.append(f"== {key} (cProfile, the server loop included) ==\n{text}")
    Path(args.work, "profile.txt").write_text("\n\n".join(tables) + "\n")
    return out


def python_profile(cfg) -> tuple[dict[str, Any], str]:
    """cProfile of a whole cohort-engine run (server loop, Grid, local training): where the host's
    time goes beyond the kernels; the project's own functions with the most cumulative time (below
    60 % of the run: not the drivers that hold all of it)."""
    import cProfile
    import io
    import pstats

    from sim.main import run

    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    run(cfg)
    profiler.disable()
    wall = time.perf_counter() - started
    stats = pstats.Stats(profiler)
    # the project's functions, without the drivers that hold (nearly) the whole run
    own = [(func, row) for func, row in stats.stats.items() if func[0].startswith(str(ROOT)) and row[3] < 0.6 * wall]
    top = sorted(own, key=lambda item: item[1][3], reverse=True)[:15]
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(str(ROOT), 25)
    return {"wall_s": wall, "rounds": cfg.train.rounds,
            "top": [{"function": f"{Path(f[0]).relative_to(ROOT)}:{f[1]}({f[2]})", "calls": row[1],
                     "cumulative_s": row[3], "own_s": row[2]} for f, row in top]}, text.getvalue()


def profile_summary(averages, wall: float, cuda: bool) -> dict[str, Any]:
    """Wall time, the device's busy time and fraction, launches, and the 12 ops with the most self time
    (`averages`: the profile's key_averages())."""
    def device_us(e) -> float:
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))

    averages = list(averages)
    busy = sum(device_us(e) for e in averages) / 1e6
    launches = {name: sum(e.count for e in averages if e.key == name)
                for name in ("cudaLaunchKernel", "cudaGraphLaunch", "cudaStreamSynchronize", "cudaMemcpyAsync")}
    top = sorted(averages, key=lambda e: (device_us(e), e.self_cpu_time_total), reverse=True)[:12]
    return {"wall_s": wall, "device_busy_s": busy if cuda else None,
            "device_busy_fraction": busy / wall if cuda and wall > 0 else None,
            "launches": launches if cuda else None,
            "top": [{"op": e.key, "calls": e.count, "self_device_ms": device_us(e) / 1e3,
                     "self_cpu_ms": e.self_cpu_time_total / 1e3} for e in top]}


PARTS = {"data": part_data, "valley": part_valley, "profile": part_profile}


# ---- the driver ----
class Check:
    """Runs the parts as processes within the budget, and keeps OUTDIR's JSON and logs current."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.outdir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="fedsign-gpu-check-"))
        self.started = time.monotonic()
        self.log_path = self.out / "gpu_check.log"
        self.log_path.write_text("")
        self.report: dict[str, Any] = {"kind": "gpu_check", "command": f"{PROG} " + shlex.join(sys.argv[1:]),
                                       "quick": args.quick, "budget_s": args.budget, **environment(),
                                       "bench_flags": bench_flags(args), "variants": VARIANTS, "parts": {}}
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
        root = data_root(args.data_root)
        if root:
            self.env["FEDSIGN_CIFAR10"] = root

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.started)

    def log(self, line: str) -> None:
        text = f"[gpu-check {time.monotonic() - self.started:6.1f}s] {line}"
        print(text, flush=True)
        with self.log_path.open("a") as f:
            f.write(text + "\n")

    def save(self) -> None:
        self.report["seconds"] = time.monotonic() - self.started
        from sim.bench import write_json

        write_json(self.out / "gpu_check.json", json.dumps(self.report, indent=1, default=str))

    def run(self) -> dict[str, Any]:
        flower = importlib.util.find_spec("ray") is not None and not self.args.quick
        self.report["ray"] = flower
        plan = [(name, quick if self.args.quick else gpu) for name, gpu, quick in PLAN if (quick or not self.args.quick)]
        if self.args.quick:  # one bench process for every option (a CPU pays each process's start-up)
            plan = [(n, s) for n, s in plan if not n.startswith("bench:") or n == "bench:default"]
        for name, cap in plan:
            if flower and name.split(":")[-1] in FLOWER_VARIANTS:
                cap += FLOWER_EXTRA
            limit = min(cap, self.left())
            entry: dict[str, Any] = {"budget_s": cap}
            if limit < min(10.0, cap):
                entry.update(status="skipped", reason=f"{self.left():.0f} s of the {self.args.budget:.0f} s budget left")
                self.log(f"{name}: skipped ({entry['reason']})")
            else:
                self.log(f"{name}: up to {limit:.0f} s ...")
                started = time.monotonic()
                entry.update(self.run_part(name, limit, flower))
                entry["seconds"] = time.monotonic() - started
                self.log(f"{name}: {entry['status']} in {entry['seconds']:.1f} s")
            self.report["parts"][name] = entry
            self.save()
        if (self.work / "profile.txt").is_file():
            write_limited(self.out / "profile.txt", (self.work / "profile.txt").read_text())
        self.save()
        shutil.rmtree(self.work, ignore_errors=True)  # the runs' directories and checkpoints
        return self.report

    def run_part(self, name: str, limit: float, flower: bool) -> dict[str, Any]:
        if name == "tests":
            return self.run_tests(limit)
        if name.startswith("bench:"):
            return self.run_bench(name.split(":", 1)[1], limit, flower)
        result_path = self.work / f"{name}.json"
        cmd = [sys.executable, "-m", "sim.gpu_check", str(self.out), "--part", name, "--work", str(self.work),
               "--rounds", str(self.args.rounds)] + (["--quick"] if self.args.quick else []) \
            + (["--data-root", self.args.data_root] if self.args.data_root else [])
        outcome = self.process(cmd, limit, self.log_path)
        if outcome["status"] == "ok":
            outcome["result"] = json.loads(result_path.read_text())
        return outcome

    def run_tests(self, limit: float) -> dict[str, Any]:
        junit = self.work / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", *GPU_TESTS, "-v", "-p", "no:cacheprovider",
               f"--junitxml={junit}"]
        outcome = self.process(cmd, limit, self.out / "pytest.log", ok_codes=(0, 5))  # 5: none collected
        outcome.update(pytest_outcomes(junit, self.out / "pytest.log"))
        if outcome["status"] == "ok" and outcome.get("failed"):
            outcome["status"] = "failed"
        return outcome

    def run_bench(self, variant: str, limit: float, flower: bool) -> dict[str, Any]:
        chosen = {v: VARIANTS[v] for v in (QUICK_VARIANTS if self.args.quick else (variant,))}
        engines = "reference,cohort,limit" + (",flower" if flower and variant in FLOWER_VARIANTS else "")
        result_path = self.work / f"bench-{variant}.json"
        cmd = [sys.executable, "-m", "sim.bench", *bench_flags(self.args), "--engines", engines,
               "--out", str(self.work / f"bench-{variant}"), "--json", str(result_path)]
        for name, settings in chosen.items():
            cmd += ["--variant", name + (":" + ",".join(f"{k}={v}" for k, v in settings.items()) if settings else "")]
        outcome = self.process(cmd, limit, self.log_path)
        if outcome["status"] == "ok":
            outcome["result"] = json.loads(result_path.read_text())
        return outcome

    def process(self, cmd: list[str], limit: float, log: Path, ok_codes=(0,)) -> dict[str, Any]:
        """Run cmd (its own process group, killed whole at the limit), its output appended to `log`."""
        with log.open("a") as f:
            f.write(f"$ {shlex.join(cmd)}\n")
            f.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                code = proc.wait(timeout=max(limit, 1.0))
            except subprocess.TimeoutExpired:
                kill_group(proc)
                f.write(f"[gpu-check] killed after {limit:.0f} s\n")
                return {"status": "timed out", "reason": f"stopped at its {limit:.0f} s share of the budget",
                        "log_tail": tail(log)}
        limit_log(log)
        if code not in ok_codes:
            return {"status": "failed", "exit_code": code, "log_tail": tail(log)}
        return {"status": "ok"}


def kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = 15) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-lines:]


def write_limited(path: Path, text: str) -> None:
    data = text.encode()
    if len(data) > LOG_LIMIT:
        half = LOG_LIMIT // 2
        data = data[:half] + b"\n[... cut by gpu_check: the log's head and tail are kept ...]\n" + data[-half:]
    path.write_bytes(data)


def limit_log(path: Path) -> None:
    if path.stat().st_size > LOG_LIMIT:
        write_limited(path, path.read_text(errors="replace"))


def pytest_outcomes(junit: Path, log: Path) -> dict[str, Any]:
    """Counts and the failed tests' names, from pytest's JUnit XML or, if pytest was killed, its -v lines."""
    outcomes: dict[str, str] = {}
    if junit.is_file():
        for case in ElementTree.parse(junit).getroot().iter("testcase"):
            kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
            outcomes[f"{case.get('classname')}::{case.get('name')}"] = {"failure": "failed", "error": "error"}.get(kind, kind)
    else:
        for match in re.finditer(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR)", log.read_text(errors="replace"), re.M):
            outcomes[match.group(1)] = match.group(2).lower()
    counts = {k: sum(v == k for v in outcomes.values()) for k in ("passed", "failed", "error", "skipped")}
    summary = next((line for line in reversed(tail(log, 5)) if re.search(r"passed|failed|skipped|no tests", line)), "")
    return {**counts, "failed_tests": sorted(n for n, v in outcomes.items() if v in ("failed", "error")),
            "pytest_summary": summary.strip("= ")}


def environment() -> dict[str, Any]:
    """The machine, its GPU (nvidia-smi's line when there is one), the software and the commit."""
    import platform

    import torch

    from sim.campaign import commit

    smi = ""
    if torch.cuda.is_available():
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            smi = ""
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "nvidia_smi": smi or None,
            "cuda": torch.version.cuda, "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.part:
        result = PARTS[args.part](args)
        Path(args.work, f"{args.part}.json").write_text(json.dumps(result, indent=1, default=str))
        return
    try:
        Path(args.outdir).mkdir(parents=True, exist_ok=True)
        if not os.access(args.outdir, os.W_OK):
            raise OSError("not writable")
    except OSError as exc:
        print(f"{PROG}: error: OUTDIR {args.outdir}: {exc}", file=sys.stderr)
        sys.exit(2)
    if not args.quick and not data_root(args.data_root):
        where = f"--data-root {args.data_root} is not a folder" if args.data_root else \
            f"no CIFAR-10 copy found ($FEDSIGN_CIFAR10, {GPU_DATA}, ../shared/data/cifar10-jpeg)"
        print(f"{PROG}: error: {where}; stage it as docs/BENCHMARKS.md says, or use --quick", file=sys.stderr)
        sys.exit(2)
    check = Check(args)
    report = check.run()
    states = {name: part["status"] for name, part in report["parts"].items()}
    check.log(f"done in {report['seconds']:.0f} s: " + ", ".join(f"{n} {s}" for n, s in states.items()))


if __name__ == "__main__":
    main()
