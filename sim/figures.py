"""`fedsign-figures`: the landscape figures of the asymmetric-valley paper (NeurIPS 2024) and its companion
paper, and the FL valley figure, each remade by one command as PNG + PDF + JSON, from checkpoints you
give or from models it trains itself.

    fedsign-figures list                                  the figures, what they take, time estimates
    fedsign-figures av-fig3 --quick                       digits / SmallCNN on the CPU, seconds
    fedsign-figures av-fig3 --checkpoint CKPT             on your own checkpoint (or run directory)
    fedsign-figures av-fig3 av-fig4 av-fig5 fl-valley --device cuda --data-root DIR --plan
                                                          the full forms' plan and GPU time estimate
    fedsign-figures gallery DIR ...                       copy the images into docs/figures/ and
                                                          rewrite docs/figures.md (sim/figures_gallery.py)

Each figure writes OUT/<figure>-<quick|full>.png, .pdf and .json (the JSON last; all atomically); the
models it trains go to OUT/models (or --models) and are reused by later figures and later runs. Bad input
(unknown figure, missing checkpoint, bad number) is one line on stderr and exit code 2, before any work.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from fedsign.atomic import atomic_target
from fedsign.checkpoint import model_from_checkpoint
from fedsign.config import DatasetConfig
from fedsign.data import load_dataset
from fedsign.devices import resolve_device
from fedsign.errors import ConfigError, DatasetError, FedsignError
from fedsign.run_dir import write_atomic
from landscape.cli import integer, number
from landscape.result import to_plain
from sim import figures_hessian as hessian
from sim import figures_softmax as softmax
from sim import figures_valley as valley
from sim.figures_models import FigureContext, Made, ModelStore, Recipe, final_server_checkpoint
from sim.figures_settings import (DATASET_TRAIN_IMAGES, FL_ROUND_S, FORMS, STEP_FLOOR_S, TRAIN_IMAGES_PER_S,
                                  Form)

PROG = "fedsign-figures"
ROOT = Path(__file__).resolve().parents[1]
AV, CP = "asymmetric valley (NeurIPS 2024)", "companion (visualizing, rethinking, mining)"


@dataclass(frozen=True)
class Figure:
    name: str
    paper: str  # which paper and figure
    what: str
    make: Callable[[FigureContext], Made]
    takes: str  # the --checkpoint it takes: none | one | two | some (one or more)
    labels: str  # how to label them, for the help text
    models: Callable[[Form], dict[str, Recipe]] | None  # what it trains without --checkpoint
    probe_s: float  # GPU estimate of its probes (full form, one H200; not measured)


FIGURES = {f.name: f for f in (
    Figure("av-fig3", f"{AV}, Fig. 3", "valleys under the 7 common noises, plain and sign-replaced, s = 0.2, 1, 2",
           valley.av_fig3, "one", "CKPT", valley.base_models, 90),
    Figure("av-fig4", f"{AV}, Fig. 4", "sign-ratio sweep: mean error over lambda > 0 vs < 0 for r = 0..1",
           valley.av_fig4, "one", "CKPT", valley.base_models, 25),
    Figure("av-fig5", f"{AV}, Fig. 5", "valleys under the 6 special directions (theta_0 needs --init)",
           valley.av_fig5, "one", "CKPT [--init CKPT0]", valley.base_models, 40),
    Figure("av-fig7", f"{AV}, Fig. 7", "BN weight initialisation 1 / U(0,1) / G(0,0.1): BN weights, {0,1} valleys",
           valley.av_fig7, "some", "ones=CKPT uniform=CKPT gaussian=CKPT", valley.bn_models, 40),
    Figure("av-fig8", f"{AV}, Fig. 8",
           "interpolation between a small- and a large-batch model, SSR with their difference",
           valley.av_fig8, "two", "bs32=CKPT bs2048=CKPT", valley.batch_models, 5),
    Figure("av-fig9", f"{AV}, Fig. 9", "Gaussian valleys of models trained with other LR / BS / WD",
           valley.av_fig9, "some", "default=CKPT lr0.1=CKPT bs32=CKPT wd1e-05=CKPT ...", valley.hyper_models, 30),
    Figure("av-fig10", f"{AV}, Fig. 10", "softmax demo: w + lambda sign(w) of the digit-0 weight (sklearn digits)",
           softmax.av_fig10, "none", "", None, 5),
    Figure("av-fig29", f"{AV}, Fig. 29",
           "softmax demo: GiniP, tr(H), eps^T g, eps^T H eps, loss, error along W + lambda eps",
           softmax.av_fig29, "none", "", None, 5),
    Figure("cp-fig8", f"{CP}, Fig. 8", "curves along the top-5 and bottom-5 Hessian eigenvectors, per checkpoint",
           hessian.cp_fig8, "some", "CKPT ...", hessian.companion_models, 130),
    Figure("cp-fig9", f"{CP}, Fig. 9", "mined w-peak curve (Alg. 1) and |cos| with N.E.1-10 / P.E.10-1",
           hessian.cp_fig9, "some", "CKPT ...", hessian.companion_models, 250),
    Figure("cp-fig10", f"{CP}, Fig. 10",
           "mined vvv-basin curves (Alg. 2), alpha in {0, 0.1} x gamma in {0.1, 0.5, 0.9}",
           hessian.cp_fig10, "one", "CKPT", hessian.companion_models, 25),
    Figure("cp-fig13", f"{CP}, Fig. 13", "Hessian eigenvalue density (SLQ) and loss change under Gaussian noise",
           hessian.cp_fig13, "some", "CKPT ...", hessian.companion_models, 120),
    Figure("fl-valley", "FL (asymmetric valley Sect. 6.2, Table 1)",
           "valley of the final FedAvg and FedSign server models, plain vs sign-replaced Gaussian",
           valley.fl_valley, "some", "fedavg=CKPT|RUN_DIR fedsign=CKPT|RUN_DIR", None, 10),
)}


def log(message: str) -> None:
    print(f"[figures] {message}", file=sys.stderr, flush=True)


def fail(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2 (argparse's own code)
        fail(message)


def build_parser() -> Parser:
    p = Parser(prog=PROG, description=__doc__.splitlines()[0],
               epilog="Figures: " + ", ".join(FIGURES) + " (or 'all'). Also: fedsign-figures list | gallery DIR ...")
    p.add_argument("figures", nargs="+", metavar="FIG", help="figure names, or 'all'")
    p.add_argument("--quick", action="store_true", help="the quick form: digits / SmallCNN, seconds on a CPU")
    p.add_argument("--out", default="figures", help="folder for the PNG, PDF and JSON files (default: figures)")
    p.add_argument("--models", default="", help="folder for trained models and FL runs (default: OUT/models)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="[LABEL=]PATH",
                   help="a checkpoint (or run directory: its last server checkpoint) to probe instead of "
                        "training; repeat for figures of several models (one FIG only)")
    p.add_argument("--init", help="the initial model of --checkpoint (av-fig5's theta_0 direction)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--data-root", default=os.environ.get("FEDSIGN_CIFAR10", ""),
                   help="CIFAR-10 folder for the full forms (default: $FEDSIGN_CIFAR10)")
    p.add_argument("--seed", type=integer(0), default=0, help="seed of training, data subsets and directions")
    p.add_argument("--epochs", type=integer(1), help="central training epochs (default: the form's)")
    p.add_argument("--rounds", type=integer(1), help="FL rounds of fl-valley (default: the form's)")
    p.add_argument("--gamma", type=number(0), help="FedSign's gamma in fl-valley (default: the form's)")
    p.add_argument("--images", type=integer(0), help="test images per probe (0 = all; default: the form's)")
    p.add_argument("--train-images", type=integer(0), help="training images for BN statistics, Hessians, mining")
    p.add_argument("--plan", action="store_true", help="print what would be trained and computed, with a time "
                                                       "estimate, and stop")
    return p


# ---- checking the command line (all of it before any work) ----
@dataclass
class Job:
    figure: Figure
    context: FigureContext


def parse_checkpoint(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if sep and re.fullmatch(r"[A-Za-z0-9_.+-]+", label) and path:
        return label, Path(path)
    return Path(text).stem, Path(text)


def checked_checkpoint(path: Path) -> Path:
    """A readable fedsign checkpoint that rebuilds its model (a run directory: its last server one)."""
    path = final_server_checkpoint(path)
    model_from_checkpoint(path, "cpu")
    return path


def selected_form(args: argparse.Namespace) -> Form:
    form = FORMS["quick" if args.quick else "full"]
    if args.epochs:
        form = form.with_epochs(args.epochs)
    if args.rounds:
        form = form.with_rounds(args.rounds)
    if args.gamma is not None:
        form = dataclasses.replace(form, fedsign_gamma=args.gamma)
    probe = form.probe
    if args.images is not None:
        probe = dataclasses.replace(probe, images=args.images)
    if args.train_images is not None:
        probe = dataclasses.replace(probe, train_images=args.train_images)
    return dataclasses.replace(form, probe=probe)


def datasets_needed(figures: list[Figure], form: Form, given: list[tuple[str, Path]]) -> set[str]:
    if given:
        return {model_from_checkpoint(path, "cpu")[1]["dataset"] for _, path in given}
    names = {r.dataset for f in figures if f.models for r in f.models(form).values()}
    if any(f.name == "fl-valley" for f in figures):
        names.add(form.fl["dataset.name"])
    return names


def plan_jobs(args: argparse.Namespace) -> list[Job]:
    names = list(FIGURES) if args.figures == ["all"] else args.figures
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise ConfigError(f"unknown figure {unknown[0]!r}; accepted: {', '.join(FIGURES)} or all")
    figures = [FIGURES[n] for n in dict.fromkeys(names)]
    given = [parse_checkpoint(t) for t in args.checkpoint]
    if given or args.init:
        if len(figures) != 1:
            raise ConfigError("--checkpoint and --init go with one figure at a time")
        fig = figures[0]
        if args.init and fig.name != "av-fig5":
            raise ConfigError("--init is only used by av-fig5 (the theta_0 direction)")
        if args.init and not given:
            raise ConfigError("--init goes with --checkpoint (without one, av-fig5 trains its model and keeps theta_0)")
        need = {"none": (0, 0), "one": (1, 1), "two": (2, 2), "some": (1, 10**6)}[fig.takes]
        if not need[0] <= len(given) <= need[1]:
            wanted = {"none": "no --checkpoint", "one": "one --checkpoint", "two": "two --checkpoint",
                      "some": "one or more --checkpoint"}[fig.takes]
            raise ConfigError(f"{fig.name} takes {wanted} ({fig.labels or 'it trains nothing'}), got {len(given)}")
        labels = [label for label, _ in given]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"--checkpoint labels must differ; got {', '.join(labels)}")
        given = [(label, checked_checkpoint(path)) for label, path in given]
    init = checked_checkpoint(Path(args.init)) if args.init else None
    device = checked_device(args.device)
    form = selected_form(args)
    out = writable_folder(Path(args.out))
    models = Path(args.models) if args.models else out / "models"
    for dataset in sorted(datasets_needed(figures, form, given) - {"digits"}):
        if not args.plan:
            try:  # a missing dataset fails here, once, before any training
                load_dataset(DatasetConfig(name=dataset, root=args.data_root))
            except DatasetError as exc:
                raise DatasetError(f"--data-root {args.data_root!r} ({dataset}): {exc}") from None
    store = ModelStore(models, device, args.data_root, form.probe, args.seed, log)
    return [Job(f, FigureContext(f.name, form, store, given, init, args.seed, log)) for f in figures]


def checked_device(name: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ConfigError(f"--device {name!r} is not accepted; use auto, cpu, cuda or cuda:N")
    return str(resolve_device(name))


def writable_folder(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {str(path)!r} cannot be created ({exc.strerror})") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"--out {str(path)!r} is not writable")
    return path


# ---- estimates ----
def train_estimate_s(recipe: Recipe) -> float:
    """GPU seconds of a central run: images / throughput per epoch, or the per-step floor of small batches."""
    n = recipe.images or DATASET_TRAIN_IMAGES[recipe.dataset]
    per_epoch = max(n / TRAIN_IMAGES_PER_S[recipe.model], math.ceil(n / recipe.batch_size) * STEP_FLOOR_S[recipe.model])
    return recipe.epochs * per_epoch


def plan_lines(figures: list[Figure], form: Form, train: bool = True) -> tuple[list[str], float]:
    """What the figures would train (unless given checkpoints) and compute in `form`, with GPU
    estimates; models shared between figures counted once."""
    lines, total, trained = [], 0.0, {}
    for f in figures if train else []:
        for recipe in (f.models(form).values() if f.models else []):
            trained.setdefault(recipe.key(), [train_estimate_s(recipe), []])[1].append(f.name)
        if f.name == "fl-valley":
            for method in valley.FL_METHODS:
                key = f"FL {method} {form.fl['dataset.name']} {form.fl['model.name']} {form.fl['train.rounds']} rounds"
                trained[key] = [form.fl["train.rounds"] * FL_ROUND_S, [f.name]]
    for key, (seconds, users) in trained.items():
        lines.append(f"train {key}: ~{seconds:.0f} s (for {', '.join(users)})")
        total += seconds
    for f in figures:
        lines.append(f"{f.name} probes: ~{f.probe_s:.0f} s")
        total += f.probe_s
    return lines, total


# ---- making one figure ----
def provenance(argv: list[str], device: str) -> dict:
    commit = os.environ.get("FEDSIGN_COMMIT", "")
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            commit = head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    cuda = device.startswith("cuda")
    return {"command": shlex.join([PROG, *argv]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit or "unknown",
            "hardware": {"device": device, "gpu": torch.cuda.get_device_name(device) if cuda else None,
                         "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                         "torch_threads": torch.get_num_threads(), "torch": torch.__version__}}


def make(job: Job, out: Path, argv: list[str]) -> Path:
    ctx = job.context
    stem = out / f"{job.figure.name}-{ctx.form.name}"
    log(f"{job.figure.name} ({job.figure.paper}): {job.figure.what}")
    trained_before = set(ctx.store.seconds_spent)
    started = time.perf_counter()
    made = job.figure.make(ctx)
    seconds = time.perf_counter() - started
    for suffix in (".png", ".pdf"):
        with atomic_target(stem.with_suffix(suffix)) as tmp:
            made.draw(Path(tmp))
    training = sum(s for k, s in ctx.store.seconds_spent.items() if k not in trained_before)
    record = {"figure": job.figure.name, "paper": job.figure.paper, "title": job.figure.what, "form": ctx.form.name,
              **provenance(argv, ctx.store.device), "seconds": round(seconds, 2),
              "training_seconds": round(training, 2),
              "settings": dataclasses.asdict(ctx.form), "seed": ctx.seed, "summary": made.summary, **made.data}
    write_atomic(stem.with_suffix(".json"), json.dumps(to_plain(record), indent=1) + "\n")
    log(f"{job.figure.name}: wrote {stem}.png, .pdf, .json in {seconds:.1f} s")
    return stem.with_suffix(".json")


def print_list() -> None:
    quick, full = FORMS["quick"], FORMS["full"]
    print(f"{'figure':<10} {'--checkpoint':<44} what")
    for f in FIGURES.values():
        print(f"{f.name:<10} {(f.labels or '-'):<44} {f.what} [{f.paper}]")
    print(f"\nquick: {quick.base.model} on {quick.base.dataset} (CPU, seconds); full: {full.base.model} on "
          f"{full.base.dataset} (Figs. 3-9), {full.companion.model} (companion), {full.fl['model.name']} FL (GPU).")
    print("GPU estimates of the full forms: fedsign-figures FIG ... --plan")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if argv[:1] == ["list"]:
        print_list()
        return 0
    if argv[:1] == ["gallery"]:
        from sim.figures_gallery import main as gallery_main

        return gallery_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        jobs = plan_jobs(args)
        if args.plan:
            lines, total = plan_lines([j.figure for j in jobs], jobs[0].context.form, not jobs[0].context.given)
            print(f"plan ({jobs[0].context.form.name} form, estimates for one H200 GPU, not measured):")
            print("\n".join(f"  {line}" for line in lines))
            print(f"  total ~{total:.0f} s ({total / 60:.1f} min), plus machine start, installing and data decoding")
            return 0
        started = time.perf_counter()
        for job in jobs:
            make(job, Path(args.out), argv)
    except FedsignError as exc:
        fail(str(exc))
    log(f"{len(jobs)} figure(s) in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    main()
