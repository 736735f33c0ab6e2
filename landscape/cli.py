"""`fedsign-landscape <probe> CKPT ...`: the paper's probes on fedsign checkpoints, JSON + plot outputs.

Probes: valley, sign-sweep, interp, signs, surface, hessian, mine. Bad input (unknown probe, bad option
value, unwritable output, missing or corrupted checkpoint) is one error line and exit code 2, found
before any computation starts: option values when the command line is parsed, the rest as soon as the
checkpoint and its model are loaded.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fedsign.checkpoint import load_checkpoint
from fedsign.errors import ConfigError, FedsignError
from landscape.context import CheckpointContext
from landscape.directions import (COMMON_NOISES, DEFAULT_FILTER_1D, FILTER_1D, SCALINGS, SPECIAL_DIRECTIONS,
                                  difference, load_direction, noise_direction, save_direction, scale_direction,
                                  sign_ratio_direction, special_direction)
from landscape.evaluator import Evaluator
from landscape.groups import group_names
from landscape.hessian import (HVP_MODES, TRACE_PROBES, HessianOperator, check_options, eigenpairs,
                               eigenvector_direction, hessian)
from landscape.interp import interpolate, soups
from landscape.mine import ALGORITHMS, mine
from landscape.plots import FORMATS, plot
from landscape.result import ProbeResult, probe_metadata
from landscape.sign_sweep import DEFAULT_RATIOS, sign_sweep
from landscape.signs import signs
from landscape.surface import surface
from landscape.valley import Direction, valley

PROG = "fedsign-landscape"
DTYPES = {"float32": torch.float32, "float64": torch.float64}
MAX_POINTS = 100_000  # points of one START,STOP,NUM axis
MAX_SEED = 2**32 - 1


def log(message: str) -> None:
    print(f"[landscape] {message}", file=sys.stderr, flush=True)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2 (argparse's own code)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


# ---- option types: a bad value is refused while the command line is parsed ----------------------------

def integer(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {value}")
        return value
    return parse


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def number(low: float | None = None, high: float | None = None, *, strict: bool = False):
    """A finite float in [low, high] (strict: low excluded)."""
    def parse(text: str) -> float:
        value = _number(text)
        if low is not None and (value < low or (strict and value == low)):
            raise argparse.ArgumentTypeError(f"expected a number {'>' if strict else '>='} {low:g}, got {value:g}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"expected a number <= {high:g}, got {value:g}")
        return value
    return parse


def numbers(low: float | None = None, high: float | None = None, *, strict: bool = False):
    """A non-empty comma-separated list of numbers, each as number(low, high, strict)."""
    item = number(low, high, strict=strict)

    def parse(text: str) -> list[float]:
        values = [item(v) for v in text.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
        return values
    return parse


def span(both_sides: bool = False):
    """'START,STOP,NUM' -> linspace (START != STOP, 2 <= NUM <= MAX_POINTS); both_sides: START < 0 < STOP
    or STOP < 0 < START (the curve's metrics compare lambda < 0 with lambda > 0)."""
    def parse(text: str) -> np.ndarray:
        parts = [v for v in text.split(",") if v.strip()]
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"expected START,STOP,NUM, got {text!r}")
        start, stop = _number(parts[0]), _number(parts[1])
        num = integer(2, MAX_POINTS)(parts[2].strip())
        if start == stop:
            raise argparse.ArgumentTypeError(f"START and STOP must differ, got {text!r}")
        if both_sides and not min(start, stop) < 0 < max(start, stop):
            raise argparse.ArgumentTypeError(f"the range must hold lambdas on both sides of 0, got {text!r}")
        lams = np.linspace(start, stop, num)
        if both_sides and not ((lams < 0).any() and (lams > 0).any()):
            raise argparse.ArgumentTypeError(f"the grid must hold lambdas on both sides of 0, got {text!r}")
        return lams
    return parse


def _common(p: argparse.ArgumentParser, checkpoints: str = "1") -> None:
    if checkpoints == "1":
        p.add_argument("checkpoint", help="fedsign safetensors checkpoint")
    else:
        p.add_argument("checkpoint", nargs="+", help="fedsign safetensors checkpoints")
    p.add_argument("--json", help="write the result as JSON here")
    p.add_argument("--plot", help="write the figure here (" + ", ".join(f".{f}" for f in FORMATS) + ")")
    p.add_argument("--images", type=integer(0), default=1000,
                   help="test images evaluated on (seeded subset; 0 = all)")
    p.add_argument("--train-images", type=integer(0), default=1000,
                   help="training images for BN recalibration, mining and the Hessian (seeded subset; 0 = all)")
    p.add_argument("--seed", type=integer(0, MAX_SEED), default=0,
                   help="seed of the data subsets and random directions")
    p.add_argument("--group", default="ALL", help="ALL, CLF, FEAT, LAYER1, CONV, BN or name patterns")
    p.add_argument("--scaling", default="ns", choices=SCALINGS, help="ns (Norm-Scaled), filter (Filter-NS), none")
    p.add_argument("--filter-1d", default=DEFAULT_FILTER_1D, choices=FILTER_1D,
                   help="Filter-NS of 1-D tensors (biases, BN): element (each to |theta_i|; default, as the "
                   "paper's Sect. 2 / Kwon et al. 2021), vector (the tensor as one filter), zero (not perturbed, "
                   "as Li et al.'s code)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    p.add_argument("--data-root", default="", help="dataset root (not needed for digits)")
    p.add_argument("--no-bn-recal", action="store_true", help="keep the checkpoint's BN statistics at every point")
    p.add_argument("--batch-size", type=integer(1), default=500)
    p.add_argument("--chunk", type=integer(0), default=0,
                   help="points per vmap chunk (0: chosen; 16 on a GPU, timed on a CPU)")


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="probe", required=True, metavar="PROBE", parser_class=Parser)

    p = sub.add_parser("valley", help="1D curves theta + lambda*s*eps_hat (Fig. 3, 5)")
    _common(p)
    p.add_argument("--directions", default="gaussian",
                   help="comma list: the 7 noises (" + ", ".join(COMMON_NOISES) + "), 'noises' for all 7, the "
                   "special " + ", ".join(SPECIAL_DIRECTIONS) + ", ratio:R, diff:CKPT, file:PATH, hessian:K")
    p.add_argument("--sign", default="both", choices=("both", "yes", "no"),
                   help="noises in original form (no), with theta's sign (yes), or both")
    p.add_argument("--init", help="initial checkpoint (for the 'init' direction)")
    p.add_argument("--scales", type=numbers(0.0, strict=True), default=[1.0],
                   help="scale factors s > 0, e.g. 0.2,1,2")
    p.add_argument("--lambdas", type=span(both_sides=True), default=np.linspace(-1, 1, 41),
                   help="START,STOP,NUM (both signs)")
    p.add_argument("--loss-delta", type=number(0.0, strict=True), default=1.0, help="width threshold: L(0) + this")

    p = sub.add_parser("sign-sweep", help="sign-ratio sweep r = 0..1 (Fig. 4)")
    _common(p)
    p.add_argument("--ratios", type=numbers(0.0, 1.0), default=list(DEFAULT_RATIOS), help="fractions r in [0, 1]")
    p.add_argument("--lambdas", type=span(both_sides=True), default=np.linspace(-1, 1, 21),
                   help="START,STOP,NUM (both signs)")
    p.add_argument("--scale", type=number(0.0, strict=True), default=1.0)

    p = sub.add_parser("interp", help="(1-l) A + l B, barrier, gap, SSR; soups for N > 2 checkpoints")
    _common(p, "+")
    p.add_argument("--init", help="initial checkpoint for SSR (init, A), (init, B)")
    p.add_argument("--lambdas", type=span(), default=np.linspace(-0.5, 1.5, 21), help="START,STOP,NUM")

    p = sub.add_parser("signs", help="sign consistency ratios per group + parameter distributions (Fig. 8)")
    _common(p, "+")
    p.add_argument("--init", help="initial checkpoint, compared with every other")

    p = sub.add_parser("surface", help="2D surface theta + l1 d1 + l2 d2")
    _common(p)
    p.add_argument("--dir1", default="gaussian", help="direction spec (as valley --directions, one item)")
    p.add_argument("--dir2", default="gaussian", help="direction spec; random ones use seed + 1")
    p.add_argument("--init", help="initial checkpoint (for the 'init' direction)")
    p.add_argument("--sign", default="no", choices=("yes", "no"), help="give noise directions theta's sign")
    p.add_argument("--x", type=span(), default=np.linspace(-1, 1, 21), help="START,STOP,NUM of lambda_1")
    p.add_argument("--y", type=span(), default=np.linspace(-1, 1, 21), help="START,STOP,NUM of lambda_2")

    p = sub.add_parser("hessian", help="eigenpairs, Hutchinson trace, SLQ density of a group's Hessian")
    _common(p)
    p.add_argument("--data", default="train", choices=("train", "test"),
                   help="the loss whose Hessian is taken: the training subset (--train-images; the loss that "
                   "was minimised) or the test subset (--images)")
    p.add_argument("--k", type=integer(1), default=5)
    p.add_argument("--no-bottom", action="store_true", help="skip the smallest eigenvalues")
    p.add_argument("--trace-samples", type=integer(2), default=100, help="most Hutchinson probe vectors")
    p.add_argument("--trace-rtol", type=number(0.0), default=0.02,
                   help="stop sampling once stderr <= this x |trace| (0: always --trace-samples)")
    p.add_argument("--trace-probe", default="gaussian", choices=TRACE_PROBES,
                   help="Hutchinson's probe vectors (gaussian: the companion paper's App. B)")
    p.add_argument("--slq-runs", type=integer(0), default=2)
    p.add_argument("--slq-steps", type=integer(1), default=30)
    p.add_argument("--maxiter", type=integer(1), default=20,
                   help="ARPACK restarts per eigsh call (unconverged pairs are left out, with a warning)")
    p.add_argument("--hvp", default="linearize", choices=HVP_MODES,
                   help="Hessian-vector products: linearize (the gradient traced once per batch; the cheapest product), graph "
                        "(double backward through the kept first-order graph, as PyHessian), recompute (least memory)")
    p.add_argument("--save-vectors", help="write the top eigenvectors as a direction file (safetensors)")

    p = sub.add_parser("mine", help="mine w-peak (Alg. 1) or vvv-basin (Alg. 2) directions")
    _common(p)
    p.add_argument("--algorithm", default="wpeak", choices=ALGORITHMS)
    p.add_argument("--epochs", type=integer(1), default=10)
    p.add_argument("--lr", type=number(0.0, strict=True), default=0.01)
    p.add_argument("--mine-batch", type=integer(1), default=64)
    p.add_argument("--gamma", type=number(0.0), default=0.5, help="vvv: weight of the interpolation loss")
    p.add_argument("--alpha", type=number(0.0, 0.5), default=0.1, help="vvv: lambda ~ U[0.5 - alpha, 0.5 + alpha]")
    p.add_argument("--lambdas", type=span(), default=None, help="START,STOP,NUM of the mined curve")
    p.add_argument("--save-direction", help="write the mined direction (safetensors) for valley file:PATH")
    return parser


# ---- checks before anything is loaded or computed --------------------------------------------------------

def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is visible; use cpu or auto")
    if not (name == "cpu" or name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ConfigError(f"--device {name!r} is not accepted; use auto, cpu, cuda or cuda:N")
    return name


def check_writable(option: str, path: str | None, suffixes: tuple[str, ...] | None = None) -> None:
    """Refuse an output path that cannot be written (a directory, under a file, a read-only folder)."""
    if path is None:
        return
    target = Path(path)
    if suffixes is not None and target.suffix.lower().lstrip(".") not in suffixes:
        raise ConfigError(f"{option} {path!r}: the format follows the suffix, one of "
                          + ", ".join(f".{s}" for s in suffixes))
    if target.is_dir():
        raise ConfigError(f"{option} {path!r} is a directory")
    folder = target.parent
    while not folder.exists():  # the nearest existing folder is where the missing ones will be made
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path!r} cannot be written ('{folder}' is not a writable folder)")
    if target.exists() and not os.access(target, os.W_OK):
        raise ConfigError(f"{option} {path!r} exists and is read-only")


def check_direction_spec(spec: str) -> None:
    kind, sep, arg = spec.partition(":")
    if kind in COMMON_NOISES or kind in SPECIAL_DIRECTIONS or kind == "noises":
        if sep:
            raise ConfigError(f"direction {spec!r}: '{kind}' takes no ':' argument")
        return
    if kind == "ratio":
        try:
            ratio = float(arg)
        except ValueError:
            raise ConfigError(f"direction {spec!r}: expected a number after 'ratio:'") from None
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(f"direction {spec!r}: the sign ratio must lie in [0, 1]")
        return
    if kind == "hessian":
        if not arg.isdigit() or int(arg) < 1:
            raise ConfigError(f"direction {spec!r}: expected a number (K >= 1) after 'hessian:'")
        return
    if kind in ("diff", "file"):
        if not Path(arg).is_file():
            raise ConfigError(f"direction {spec!r}: '{arg}' does not exist")
        return
    raise ConfigError(f"direction {spec!r} is not known; use a noise ({', '.join(COMMON_NOISES)}), a special "
                      f"direction ({', '.join(SPECIAL_DIRECTIONS)}), ratio:R, diff:CKPT, file:PATH or hessian:K")


def checkpoint_paths(args) -> list[str]:
    return args.checkpoint if isinstance(args.checkpoint, list) else [args.checkpoint]


def direction_specs(args) -> list[str]:
    if args.probe == "valley":
        specs = [s.strip() for s in args.directions.split(",") if s.strip()]
        if not specs:
            raise ConfigError("--directions names no direction")
        return specs
    return [args.dir1, args.dir2] if args.probe == "surface" else []


def validate(args) -> None:
    """Every check that needs no checkpoint loaded: device, outputs, direction specs, input files."""
    resolve_device(args.device)
    check_writable("--json", args.json, ("json",))
    check_writable("--plot", args.plot, FORMATS)
    for option in ("save_vectors", "save_direction"):
        check_writable("--" + option.replace("_", "-"), getattr(args, option, None))
    specs = direction_specs(args)
    for spec in specs:
        check_direction_spec(spec)
    needs_init = any(s.partition(":")[0] == "init" for s in specs)
    if needs_init and not args.init:
        raise ConfigError("direction 'init' needs the initial model (--init CHECKPOINT)")
    paths = checkpoint_paths(args)
    if args.probe == "interp" and len(paths) < 2:
        raise ConfigError("interp needs at least two checkpoints (A B [more for soups])")
    for path in paths + ([args.init] if getattr(args, "init", None) else []):
        if not Path(path).is_file():
            raise ConfigError(f"checkpoint '{path}' does not exist")


# ---- running a probe ------------------------------------------------------------------------------------

def load_context(args, path: str) -> CheckpointContext:
    return CheckpointContext.load(path, images=args.images, train_images=args.train_images, seed=args.seed,
                                  device=resolve_device(args.device), data_root=args.data_root,
                                  dtype=DTYPES[args.dtype])


def checkpoint_params(path: str, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Another checkpoint's parameters, on theta's device and dtype, checked against theta's names."""
    tensors, _ = load_checkpoint(path)
    missing = [n for n in like if n not in tensors or tensors[n].shape != like[n].shape]
    if missing:
        raise ConfigError(f"checkpoint '{path}' does not fit the first model (e.g. '{missing[0]}')")
    return {n: tensors[n].to(like[n].device, like[n].dtype) for n in like}


def hessian_inputs(args, ctx: CheckpointContext, evaluator: Evaluator, theta):
    """The --data subset whose loss the Hessian is of, and the BN statistics every other probe evaluates
    theta with (recomputed there unless --no-bn-recal)."""
    data = ctx.train if getattr(args, "data", "train") == "train" else ctx.test
    return data, evaluator.buffers_at(theta)


def make_direction(spec: str, sign: bool, ctx: CheckpointContext, theta, names, args, seed: int,
                   evaluator: Evaluator) -> Direction:
    """One direction from its spec (valley --directions item), checked by check_direction_spec."""
    kind, _, arg = spec.partition(":")
    if kind in COMMON_NOISES:
        return Direction(kind, sign, noise_direction(theta, names, kind, seed, sign=sign))
    if kind in SPECIAL_DIRECTIONS:
        init = checkpoint_params(args.init, theta) if kind == "init" else None
        return Direction(kind, kind in ("theta", "sign"), special_direction(theta, names, kind, init))
    if kind == "ratio":
        return Direction(spec, False, sign_ratio_direction(theta, names, float(arg), seed))
    if kind == "diff":
        return Direction(spec, False, difference(theta, checkpoint_params(arg, theta), names))
    if kind == "file":
        loaded = load_direction(arg, theta)
        return Direction(spec, False, {n: loaded[n] for n in names if n in loaded})
    k = int(arg)  # hessian:K
    data, buffers = hessian_inputs(args, ctx, evaluator, theta)
    op = HessianOperator(ctx.model, theta, names, data, args.batch_size, buffers=buffers)
    check_options(op.size, k=k, trace_samples=2, trace_rtol=None, trace_probe="gaussian", slq_runs=0,
                  slq_steps=1, maxiter=None)
    _, vectors = eigenpairs(op, k, "LA", seed)
    if vectors.shape[1] < k:
        raise ConfigError(f"direction {spec!r}: only {vectors.shape[1]} top eigenpairs converged")
    return Direction(spec, False, eigenvector_direction(op, vectors[:, k - 1]))


def _metadata(args, ctx: CheckpointContext, recalibrated: bool, **extra) -> dict:
    return probe_metadata(seed=args.seed, scaling=args.scaling, group=args.group, data=ctx.test.description,
                          dtype=args.dtype, bn_data=ctx.train.description, bn_recalibrated=recalibrated,
                          model=ctx.meta.get("model", ""), device=str(ctx.device), filter_1d=args.filter_1d,
                          **extra)


def _progress(probe: str):
    last = [0.0]

    def report(done: int, total: int) -> None:
        if done == total or time.perf_counter() - last[0] > 5.0:
            last[0] = time.perf_counter()
            log(f"{probe}: {done}/{total} points")
    return report


def run_probe(args) -> ProbeResult:
    paths = checkpoint_paths(args)
    ctx = load_context(args, paths[0])
    evaluator = ctx.evaluator(not args.no_bn_recal, args.batch_size, args.chunk or None)
    theta = evaluator.parameters()
    names = group_names(ctx.model, args.group)
    meta = _metadata(args, ctx, evaluator.recalibrate, checkpoints=paths)
    size = sum(theta[n].numel() for n in names)
    if args.probe == "hessian":
        check_options(size, k=args.k, trace_samples=args.trace_samples, trace_rtol=args.trace_rtol,
                      trace_probe=args.trace_probe, slq_runs=args.slq_runs, slq_steps=args.slq_steps,
                      maxiter=args.maxiter)
    others = [checkpoint_params(p, theta) for p in paths[1:]]  # refused here if they do not fit
    init = checkpoint_params(args.init, theta) if getattr(args, "init", None) else None
    result = _dispatch(args, ctx, evaluator, theta, names, meta, others, init)
    result.metadata["chunk"] = evaluator.chunk_used  # None when the probe evaluated no point
    return result


def _dispatch(args, ctx, evaluator, theta, names, meta, others, init) -> ProbeResult:
    paths = checkpoint_paths(args)
    progress = _progress(args.probe)
    if args.probe == "valley":
        specs = [n for s in direction_specs(args) for n in (COMMON_NOISES if s == "noises" else [s])]
        signs_wanted = {"both": [False, True], "yes": [True], "no": [False]}[args.sign]
        directions = [make_direction(s, sign, ctx, theta, names, args, args.seed, evaluator)
                      for s in specs for sign in (signs_wanted if s in COMMON_NOISES else [False])]
        log(f"valley: {paths[0]} ({ctx.meta.get('model')}, {len(names)} tensors in group {args.group}), "
            f"{len(directions)} directions x {len(args.scales)} scales x {len(args.lambdas)} lambdas, "
            f"{ctx.test.description}")
        return valley(evaluator, theta, directions, scales=args.scales, lambdas=args.lambdas,
                      scaling=args.scaling, loss_delta=args.loss_delta, metadata=meta, progress=progress,
                      filter_1d=args.filter_1d)
    log(f"{args.probe}: {paths[0]} ({ctx.meta.get('model')}, {len(names)} tensors in group {args.group})")
    if args.probe == "sign-sweep":
        return sign_sweep(evaluator, theta, names, ratios=args.ratios, lambdas=args.lambdas, scale=args.scale,
                          scaling=args.scaling, seed=args.seed, metadata=meta, progress=progress,
                          filter_1d=args.filter_1d)
    if args.probe == "interp":
        result = interpolate(evaluator, ctx.model, theta, others[0], init=init, lambdas=args.lambdas,
                             metadata=meta, progress=progress)
        if others[1:]:
            log(f"interp: uniform and greedy soups of {len(paths)} checkpoints (greedy chosen on training images)")
            select = Evaluator(ctx.model, ctx.train, ctx.train, recalibrate=evaluator.recalibrate,
                               batch_size=args.batch_size, chunk=args.chunk or None)
            result.arrays["soups"] = soups(evaluator, select, [theta] + others)
        return result
    if args.probe == "signs":
        labels = ["init"] * (init is not None) + [chr(ord("A") + i) for i in range(len(paths))]
        params = ([init] if init is not None else []) + [theta] + others
        meta["labels"] = dict(zip(labels, ([args.init] if init is not None else []) + paths))
        return signs(ctx.model, dict(zip(labels, params)), meta)
    if args.probe == "surface":
        sign = args.sign == "yes"
        d1 = make_direction(args.dir1, sign, ctx, theta, names, args, args.seed, evaluator)
        d2 = make_direction(args.dir2, sign, ctx, theta, names, args, args.seed + 1, evaluator)
        u1, u2 = (scale_direction(d.values, theta, args.scaling, args.filter_1d) for d in (d1, d2))
        return surface(evaluator, theta, u1, u2, args.x, args.y, progress=progress,
                       metadata={**meta, "dir1": d1.noise, "dir2": d2.noise, "sign_consistent": sign})
    if args.probe == "hessian":
        data, buffers = hessian_inputs(args, ctx, evaluator, theta)
        meta.update(data=data.description, hessian_data=args.data, hvp=args.hvp)
        result = hessian(ctx.model, theta, names, data, k=args.k, bottom=not args.no_bottom,
                         trace_samples=args.trace_samples, trace_rtol=args.trace_rtol or None,
                         trace_probe=args.trace_probe, slq_runs=args.slq_runs, slq_steps=args.slq_steps,
                         maxiter=args.maxiter, seed=args.seed, batch_size=args.batch_size, metadata=meta, log=log,
                         buffers=buffers, hvp=args.hvp)
        if args.save_vectors:
            op = result.extra["operator"]
            vectors = {f"top{i + 1}.{n}": t for i in range(result.extra["top_vectors"].shape[1])
                       for n, t in eigenvector_direction(op, result.extra["top_vectors"][:, i]).items()}
            save_direction(args.save_vectors, vectors, source=paths[0], group=args.group)
        return result
    result = mine(evaluator, ctx.model, theta, names, ctx.train, algorithm=args.algorithm, lambdas=args.lambdas,
                  metadata=meta, log=log, epochs=args.epochs, lr=args.lr, batch_size=args.mine_batch,
                  seed=args.seed, **({"gamma": args.gamma, "alpha": args.alpha} if args.algorithm == "vvv" else {}))
    if args.save_direction:
        save_direction(args.save_direction, result.extra["direction"], source=paths[0], algorithm=args.algorithm)
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        validate(args)
        result = run_probe(args)
        result.checkpoint = args.checkpoint
        if args.json:
            log(f"wrote {result.write_json(args.json)}")
        if args.plot:
            log(f"wrote {plot(result, args.plot)}")
    except FedsignError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    log(f"{args.probe} done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    main()
