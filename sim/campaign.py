"""`fedsign-campaign EXPERIMENT`: run the cells of a Hydra experiment and keep their results in a ledger.

The cells are the sweep of sim/conf/experiment/EXPERIMENT.yaml (its `hydra.sweeper.params`, seeds
included), in the order the experiment lists them (the first key varies slowest, as in `fedsign-sim
-m`): experiments list their most informative values first. Each cell runs as its own
`python -m sim.main +experiment=EXPERIMENT KEY=VALUE ...` process in a temporary run directory, K at
once, within a wall-clock budget for the whole campaign. A finished cell adds one small JSON record to
the ledger (default docs/results/EXPERIMENT/), written atomically; cells already in the ledger are
skipped; a cell cut off by the budget, Ctrl-C or a kill leaves nothing behind.

    fedsign-campaign table1 --budget 15 --parallel 4 device=cuda engine=cohort
    fedsign-campaign table1 dataset=cifar10 partition.alpha=0.5 method=fedavg,fedsign   # some cells
    fedsign-campaign quick --budget 2 --ledger /tmp/quick                               # CPU demo
    fedsign-campaign calibration --list                                    # the cells, in order

Overrides after EXPERIMENT: a key the experiment sweeps gets the given values instead (a,b: several
cells); `a,b` on another key adds a sweep; any other override goes to every cell (device=cuda,
dataset.root=PATH, engine=cohort).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import hashlib
import itertools
import json
import math
import os
import platform
import re
import selectors
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsign.config import RunConfig, known_settings
from fedsign.data.specs import DATASETS
from fedsign.errors import ConfigError, FedsignError
from fedsign.run_dir import read_config, write_atomic
from sim.main import CONF, to_run_config

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = CONF / "experiment"
# Keys that say where and how a cell runs, not what it computes: records differing only in these are
# the same cell (the record keeps them all: engine, device, ...).
NOT_IDENTITY = frozenset({"out", "resume", "device", "dataset.root", "dataset.download", "engine.name",
                          "engine.num_cpus", "engine.num_gpus", "checkpoint.every", "checkpoint.clients",
                          "eval.batch_size", "federation.round_timeout"})
CURVE_KEYS = ("accuracy", "sign_flip_fraction", "train_ce")  # per evaluated round, from metrics.jsonl
PROGRESS = re.compile(r"round\s+(\d+)/(\d+)\s+acc\s+([\d.]+)")  # sim.main's line per evaluated round
STOP_GRACE = 10.0  # seconds a cut-off cell gets between SIGTERM and SIGKILL
PLAIN_EVERY = 30.0  # seconds between a running cell's progress lines in plain output


def fail_exit(message: str) -> None:
    print(f"fedsign-campaign: error: {message}", file=sys.stderr)
    sys.exit(2)


# ---- the cells of an experiment ----
def experiment_names() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


def identity(flat: dict[str, Any]) -> str | None:
    """What a cell computes, as a hash of its config without NOT_IDENTITY. Keys missing from an older
    record take today's defaults (a key added with its old behaviour as default keeps records valid),
    keys its method does not have are dropped, and `dataset.augment` does not count for a dataset
    without augmentation (digits); a config that no longer validates has no identity (a stale record)."""
    try:
        canonical = RunConfig.from_flat(known_settings(flat)).to_flat()
    except FedsignError:
        return None
    spec = DATASETS[canonical["dataset.name"]]
    if not (spec.crop_padding or spec.flip):
        canonical["dataset.augment"] = False
    kept = {k: v for k, v in sorted(canonical.items()) if k not in NOT_IDENTITY}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Cell:
    experiment: str
    values: dict[str, str]  # sweep key -> value, as passed on sim.main's command line
    overrides: list[str]  # sim.main's overrides (without out=)
    config: dict[str, Any]  # the resolved flat config
    identity: str

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.values.items())

    @property
    def slug(self) -> str:
        text = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in self.values.items()) or "cell"
        return re.sub(r"[^A-Za-z0-9.\-_]", "", text) + f"_{self.identity[:8]}"


def _compose(overrides: list[str], hydra: bool = False) -> Any:
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return compose(config_name="config", overrides=overrides, return_hydra_config=hydra)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        text = re.split(r"\s*(Config search path|Set the environment variable)", str(exc))[0]
        raise ConfigError(" ".join(text.split())) from None


class Composer:
    """Hydra's compose for many cells: the defaults list is composed once per distinct set of group
    choices (and adds/deletes), then plain `key=value` changes are applied as Hydra applies them
    (OmegaConf.update with merge; interpolations resolve afterwards). A tenth of the time of one
    compose per cell; tests/test_campaign.py checks it against compose."""

    def __init__(self) -> None:
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.parser = OverridesParser.create()
        self.loader = GlobalHydra.instance().config_loader()
        self.cache: dict[tuple[str, ...], Any] = {}

    def parse(self, overrides: list[str]) -> list[Any]:
        from hydra.errors import HydraException

        try:
            return self.parser.parse_overrides(overrides)
        except HydraException as exc:
            raise ConfigError(" ".join(str(exc).split())) from None

    def flat(self, overrides: list[str]) -> dict[str, Any]:
        """The resolved, validated flat config of one cell."""
        import copy

        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        structural, changes = [], []
        for o in self.parse(overrides):
            plain = o.type.name == "CHANGE" and o.package is None and not self.loader.get_group_options(o.key_or_group)
            (changes if plain else structural).append(o)
        key = tuple(o.input_line for o in structural)
        if key not in self.cache:
            self.cache[key] = _compose(list(key))
        cfg = copy.deepcopy(self.cache[key])
        try:
            for o in changes:
                OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{o.input_line}: {' '.join(str(exc).split()[:12])}") from None
        return to_run_config(cfg).to_flat()


def plan(experiment: str, overrides: list[str]) -> list[Cell]:
    """The cells of `experiment` with the command line's `overrides`, in run order, one per identity."""
    from hydra import initialize_config_dir

    if experiment not in experiment_names():
        raise ConfigError(f"experiment {experiment!r} is not known; accepted: {', '.join(experiment_names())}")
    for item in overrides:
        if item.split("=", 1)[0].lstrip("+~") in ("out", "resume", "experiment", "hydra"):
            raise ConfigError(f"{item!r}: the campaign sets each cell's run directory and experiment "
                              "(use --runs DIR to keep the run directories)")
    head = f"+experiment={experiment}"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        composer = Composer()
        params = _compose([head], hydra=True).hydra.sweeper.params
        own = composer.parse([f"{k}={v}" for k, v in params.items()])
        sweep = {}
        for o in [*own, *composer.parse(overrides)]:
            if o.is_sweep_override():
                sweep[o.get_key_element()] = list(o.sweep_string_iterator())
            else:
                sweep[o.get_key_element()] = [o.get_value_element_as_str()]
        # a cell's label (and ledger file name): the keys with several values in the experiment or on
        # the command line, so it does not change when the command line narrows the sweep
        several = {o.get_key_element() for o in own if o.is_sweep_override()}
        labelled = [k for k, v in sweep.items() if k in several or len(v) > 1]
        cells, seen = [], set()
        for combo in itertools.product(*sweep.values()):
            values = dict(zip(sweep, combo))
            cell_overrides = [head, *(f"{k}={v}" for k, v in values.items())]
            flat = composer.flat(cell_overrides)
            ident = identity(flat)
            if ident is not None and ident not in seen:
                seen.add(ident)
                cells.append(Cell(experiment, {k: values[k] for k in labelled}, cell_overrides, flat, ident))
    return cells


# ---- the ledger ----
def load_ledger(path: Path) -> list[dict[str, Any]]:
    """Every record in a ledger folder (a file that is not a record is an error, named)."""
    records = []
    for file in sorted(path.glob("*.json")) if path.is_dir() else []:
        if file.name.startswith("."):
            continue  # a temporary file of an atomic write
        try:
            record = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{file} is not a ledger record: {exc}") from None
        if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
            raise ConfigError(f"{file} is not a ledger record (no 'config')")
        record["file"] = file.name
        records.append(record)
    return records


def done_identities(records: list[dict[str, Any]]) -> set[str]:
    return {i for i in (identity(r["config"]) for r in records) if i is not None}


def curves(rows: list[dict[str, Any]]) -> dict[str, list]:
    """Per evaluated round: accuracy, sign_flip_fraction and train_ce (a key the rows lack is left out)."""
    out: dict[str, list] = {"round": [r["round"] for r in rows]}
    for key in CURVE_KEYS:
        if any(key in r for r in rows):
            out[key] = [None if r.get(key) is None else round(float(r[key]), 6) for r in rows]
    return out


def make_record(cell: Cell, run_dir: Path, context: dict[str, Any], started: float, finished: float,
                parallel: int) -> dict[str, Any]:
    from fedsign.run_dir import RunDirectory

    results = json.loads((run_dir / "results.json").read_text())
    config = {k: v for k, v in read_config(run_dir).items() if k not in ("out", "resume")}
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    return {
        "experiment": cell.experiment, "cell": cell.values,
        "command": shlex.join(["python", "-m", "sim.main", *cell.overrides]),
        "campaign": context["campaign"], "commit": context["commit"],
        "hardware": hardware(str(config.get("device", "auto"))), "engine": config.get("engine.name"),
        "final_accuracy": results["final_accuracy"], "best_accuracy": results["best_accuracy"],
        "curve": curves(RunDirectory(run_dir).read_metrics()),
        "seconds": round(finished - started, 1), "run_seconds": round(results["wall_seconds"], 1),
        "parallel": parallel, "started": time.strftime(stamp, time.gmtime(started)),
        "finished": time.strftime(stamp, time.gmtime(finished)), "config": config,
    }


def commit() -> str:
    """HEAD of the checkout, '+dirty' with uncommitted changes to tracked files outside docs/results
    (FEDSIGN_COMMIT names it where there is no git checkout, e.g. a copied working tree)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs/results")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("FEDSIGN_COMMIT", "unknown")
    return head + ("+dirty" if dirty else "")


_HARDWARE: dict[str, str] = {}


def hardware(device: str) -> str:
    """The GPU's name when the cell's device is (or auto-resolves to) CUDA, else the CPU model."""
    if device not in _HARDWARE:
        name = ""
        if device != "cpu":
            import torch

            if torch.cuda.is_available():
                name = torch.cuda.get_device_name(int(device.split(":")[1]) if ":" in device else 0)
        if not name:
            model = platform.processor() or platform.machine()
            try:
                lines = Path("/proc/cpuinfo").read_text().splitlines()
                model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
            except (OSError, StopIteration):
                pass
            name = f"{model} ({os.cpu_count()} CPUs)"
        _HARDWARE[device] = name
    return _HARDWARE[device]


# ---- one running cell ----
def work_dir() -> Path:
    """A fresh temporary folder for the run directories of this campaign's cells; those of campaigns
    that were killed (their process is gone) are removed first."""
    for old in Path(tempfile.gettempdir()).glob("fedsign-campaign-*-*"):
        match = re.fullmatch(r"fedsign-campaign-(\d+)-.*", old.name)
        if sys.platform == "linux" and match and old.is_dir() and not Path(f"/proc/{match[1]}").exists():
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"fedsign-campaign-{os.getpid()}-"))



_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True) if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1


def _die_with_campaign(parent: int) -> None:
    """In the child before exec: get SIGKILL when the campaign dies (even by SIGKILL)."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)


@dataclass
class Job:
    cell: Cell
    run_dir: Path
    proc: subprocess.Popen
    started: float
    tail: deque = field(default_factory=lambda: deque(maxlen=40))
    partial: str = ""
    progress: str = "starting"
    shown: float = 0.0  # when its progress was last printed (plain output)

    def read(self, data: bytes) -> list[str]:
        """Take a chunk of the child's output; returns its complete lines."""
        *lines, self.partial = (self.partial + data.decode(errors="replace")).split("\n")
        self.tail.extend(lines)
        return lines

    def error(self) -> str:
        lines = [line for line in [*self.tail, self.partial] if line.strip()]
        marked = [line for line in lines if "error" in line.lower()]
        return (marked or lines or [f"exit code {self.proc.returncode}"])[-1].strip()


def start(cell: Cell, work: Path, env: dict[str, str]) -> Job:
    run_dir = work / cell.slug
    command = [sys.executable, "-m", "sim.main", *cell.overrides, f"out={run_dir}"]
    parent = os.getpid()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, cwd=os.getcwd(), start_new_session=True,
                            preexec_fn=lambda: _die_with_campaign(parent))
    return Job(cell, run_dir, proc, time.time())


def stop(job: Job) -> None:
    """End a cell's process group (SIGTERM, then SIGKILL after STOP_GRACE) and drop its run directory."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, None)):
        try:
            os.killpg(job.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            job.proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    shutil.rmtree(job.run_dir, ignore_errors=True)


# ---- progress ----
class Display:
    """Plain lines (a log, a pipe), or a live table of the running cells on a terminal (rich)."""

    def __init__(self, live: bool) -> None:
        self.live = None
        if live:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(), auto_refresh=False, transient=True)
            self.live.start()

    def line(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(f"[campaign] {text}", markup=False, highlight=False)
        else:
            print(f"[campaign] {text}", flush=True)

    def refresh(self, jobs: list[Job], status: str) -> None:
        if self.live is None:
            return
        from rich.table import Table

        table = Table(title=status, title_justify="left", show_edge=False)
        for column in ("cell", "progress", "time"):
            table.add_column(column)
        for job in jobs:
            table.add_row(job.cell.label, job.progress, f"{time.time() - job.started:.0f} s")
        self.live.update(table, refresh=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


class Interrupted(Exception):
    pass


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


# ---- the campaign ----
def run_campaign(args: argparse.Namespace, argv: list[str]) -> int:
    cells = plan(args.experiment, args.overrides)
    ledger = Path(args.ledger or Path("docs") / "results" / args.experiment)
    done = done_identities(load_ledger(ledger))
    pending = [c for c in cells if c.identity not in done]
    if args.list:
        for cell in cells:
            print(f"{'in ledger' if cell.identity in done else 'to run   '}  {cell.label}")
        return 0
    ledger.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs) if args.runs else None
    context = {"campaign": shlex.join(["fedsign-campaign", *argv]), "commit": commit()}
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED=os.environ.get("FLWR_TELEMETRY_ENABLED", "0"),
               PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.parallel)))
    budget = args.budget * 60.0 if args.budget else math.inf
    begin = time.time()
    deadline = begin + budget
    display = Display(args.live if args.live is not None else sys.stdout.isatty())
    display.line(f"{args.experiment}: {len(cells)} cells, {len(cells) - len(pending)} in the ledger {ledger}, "
                 f"{len(pending)} to run, {args.parallel} at once, budget "
                 f"{'none' if budget == math.inf else f'{args.budget:g} min'}, commit {context['commit'][:12]}")
    work = work_dir()
    jobs: list[Job] = []
    seconds: list[float] = []
    counts = {"finished": 0, "failed": 0, "cut off": 0}
    selector = selectors.DefaultSelector()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    interrupted = ""

    def expected() -> float:
        return statistics.median(seconds) if seconds else 0.0

    def finish(job: Job) -> None:
        selector.unregister(job.proc.stdout)
        job.proc.stdout.close()
        jobs.remove(job)
        ended = time.time()
        if job.proc.returncode == 0 and (job.run_dir / "results.json").is_file():
            record = make_record(job.cell, job.run_dir, context, job.started, ended, args.parallel)
            target = ledger / f"{job.cell.slug}.json"
            write_atomic(target, json.dumps(record, indent=1) + "\n")
            seconds.append(ended - job.started)
            counts["finished"] += 1
            display.line(f"done    {job.cell.label}: accuracy {record['final_accuracy']:.4f} (best "
                         f"{record['best_accuracy']:.4f}) in {record['seconds']:.0f} s -> {target}")
            if runs is not None:
                runs.mkdir(parents=True, exist_ok=True)
                shutil.move(str(job.run_dir), str(runs / job.cell.slug))
        else:
            counts["failed"] += 1
            display.line(f"FAILED  {job.cell.label} (exit code {job.proc.returncode}): {job.error()}")
        shutil.rmtree(job.run_dir, ignore_errors=True)

    try:
        while pending or jobs:
            now = time.time()
            while pending and len(jobs) < args.parallel and now + expected() < deadline:
                cell = pending.pop(0)
                job = start(cell, work, env)
                jobs.append(job)
                os.set_blocking(job.proc.stdout.fileno(), False)
                selector.register(job.proc.stdout, selectors.EVENT_READ, job)
                display.line(f"start   {cell.label} (pid {job.proc.pid})")
            if not jobs:
                break  # what is left would not finish within the budget
            for key, _ in selector.select(timeout=0.25):
                job = key.data
                data = os.read(key.fileobj.fileno(), 1 << 16)
                if not data:
                    job.proc.wait()
                    finish(job)
                    continue
                for line in job.read(data):
                    match = PROGRESS.search(line)
                    if match:
                        job.progress = f"round {match[1]}/{match[2]} acc {float(match[3]):.4f}"
                        if display.live is None and time.time() - job.shown >= PLAIN_EVERY:
                            job.shown = time.time()
                            display.line(f"        {job.cell.label}: {job.progress}")
            if time.time() >= deadline:
                for job in list(jobs):
                    selector.unregister(job.proc.stdout)
                    stop(job)
                    jobs.remove(job)
                    counts["cut off"] += 1
                    display.line(f"cut off {job.cell.label} by the budget after {time.time() - job.started:.0f} s "
                                 "(nothing recorded)")
                break
            left = deadline - time.time()
            display.refresh(jobs, f"{args.experiment}: {counts['finished']} done, {len(jobs)} running, "
                                  f"{len(pending)} waiting" + ("" if left == math.inf else f", {left / 60:.1f} min left"))
    except (Interrupted, KeyboardInterrupt) as exc:
        interrupted = f"{str(exc) or 'SIGINT'}: {len(jobs)} running cells discarded, nothing recorded for them"
    finally:  # whatever ended the loop, no cell outlives the campaign
        for job in jobs:
            stop(job)
        display.close()
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(work, ignore_errors=True)
    if interrupted:
        print(f"[campaign] interrupted ({interrupted})", flush=True)
        return 130
    print(f"[campaign] {args.experiment}: {counts['finished']} finished, {counts['failed']} failed, "
          f"{counts['cut off']} cut off by the budget, {len(pending)} not started"
          + (f" (median cell {expected():.0f} s, budget left {max(0.0, deadline - time.time()):.0f} s)"
             if pending and seconds else "") + f"; {time.time() - begin:.0f} s; ledger {ledger}", flush=True)
    return 1 if counts["failed"] else 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fedsign-campaign", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("experiment", help=f"one of sim/conf/experiment/*.yaml: {', '.join(experiment_names())}")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides (see below)")
    p.add_argument("--budget", type=float, default=0.0, metavar="MINUTES",
                   help="wall-clock minutes for the whole campaign (default: none); running cells are cut "
                        "off when it ends, and no cell is started that the median finished cell says "
                        "would not end in time")
    p.add_argument("--parallel", type=int, default=1, metavar="K", help="cells run at once (default 1)")
    p.add_argument("--ledger", metavar="DIR", help="the ledger folder (default docs/results/EXPERIMENT)")
    p.add_argument("--runs", metavar="DIR", help="keep each finished cell's run directory (checkpoints) in DIR")
    p.add_argument("--list", action="store_true", help="print the cells in run order and whether they are done")
    p.add_argument("--live", action=argparse.BooleanOptionalAction, default=None,
                   help="a live table of the running cells (default: when stdout is a terminal)")
    args = p.parse_intermixed_args(argv)
    if args.budget < 0 or not math.isfinite(args.budget):
        fail_exit(f"--budget {args.budget:g} is out of range; it must be minutes > 0 (0: no budget)")
    if args.parallel < 1:
        fail_exit(f"--parallel {args.parallel} is out of range; it must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        return run_campaign(args, argv)
    except FedsignError as exc:
        fail_exit(str(exc))
    return 2


if __name__ == "__main__":
    sys.exit(main())
