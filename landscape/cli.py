"""`fedsign-landscape <probe> CKPT ...`: the paper's probes on fedsign checkpoints, JSON + plot outputs.

Probes: valley, sign-sweep, interp, signs, surface, hessian, mine. Bad input (unknown probe, missing or
corrupted checkpoint, bad option) is one error line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from fedsign.checkpoint import load_checkpoint
from fedsign.errors import ConfigError, FedsignError
from landscape.context import CheckpointContext
from landscape.directions import (COMMON_NOISES, SCALINGS, SPECIAL_DIRECTIONS, difference, load_direction,
                                  noise_direction, save_direction, scale_direction, sign_ratio_direction,
                                  special_direction)
from landscape.evaluator import Evaluator
from landscape.groups import group_names
from landscape.hessian import HessianOperator, eigenpairs, eigenvector_direction, hessian
from landscape.interp import interpolate, soups
from landscape.mine import ALGORITHMS, mine
from landscape.plots import plot
from landscape.result import ProbeResult, probe_metadata
from landscape.sign_sweep import DEFAULT_RATIOS, sign_sweep
from landscape.signs import signs
from landscape.surface import surface
from landscape.valley import Direction, valley

PROG = "fedsign-landscape"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def log(message: str) -> None:
    print(f"[landscape] {message}", file=sys.stderr, flush=True)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2 (argparse's own code)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def span(text: str) -> np.ndarray:
    """'start,stop,num' -> linspace."""
    values = floats(text)
    if len(values) != 3 or values[2] < 2 or values[2] != int(values[2]):
        raise argparse.ArgumentTypeError(f"expected START,STOP,NUM with NUM >= 2, got {text!r}")
    return np.linspace(values[0], values[1], int(values[2]))


def _common(p: argparse.ArgumentParser, checkpoints: str = "1") -> None:
    if checkpoints == "1":
        p.add_argument("checkpoint", help="fedsign safetensors checkpoint")
    else:
        p.add_argument("checkpoint", nargs="+", help="fedsign safetensors checkpoints")
    p.add_argument("--json", help="write the result as JSON here")
    p.add_argument("--plot", help="write the figure here (.png or .pdf)")
    p.add_argument("--images", type=int, default=1000, help="test images evaluated on (seeded subset; 0 = all)")
    p.add_argument("--train-images", type=int, default=1000,
                   help="training images for BN recalibration and mining (seeded subset; 0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data subsets and random directions")
    p.add_argument("--group", default="ALL", help="ALL, CLF, FEAT, LAYER1, CONV, BN or name patterns")
    p.add_argument("--scaling", default="ns", choices=SCALINGS, help="ns (Norm-Scaled), filter (Filter-NS), none")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    p.add_argument("--data-root", default="", help="dataset root (not needed for digits)")
    p.add_argument("--no-bn-recal", action="store_true", help="keep the checkpoint's BN statistics at every point")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--chunk", type=int, default=0, help="points per vmap chunk (0: 16 on GPU, 1 on CPU)")


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
    p.add_argument("--scales", type=floats, default=[1.0], help="scale factors s, e.g. 0.2,1,2")
    p.add_argument("--lambdas", type=span, default=np.linspace(-1, 1, 41), help="START,STOP,NUM")
    p.add_argument("--loss-delta", type=float, default=1.0, help="width threshold: L(0) + this")

    p = sub.add_parser("sign-sweep", help="sign-ratio sweep r = 0..1 (Fig. 4)")
    _common(p)
    p.add_argument("--ratios", type=floats, default=list(DEFAULT_RATIOS))
    p.add_argument("--lambdas", type=span, default=np.linspace(-1, 1, 21), help="START,STOP,NUM")
    p.add_argument("--scale", type=float, default=1.0)

    p = sub.add_parser("interp", help="(1-l) A + l B, barrier, gap, SSR; soups for N > 2 checkpoints")
    _common(p, "+")
    p.add_argument("--init", help="initial checkpoint for SSR (init, A), (init, B)")
    p.add_argument("--lambdas", type=span, default=np.linspace(-0.5, 1.5, 21), help="START,STOP,NUM")

    p = sub.add_parser("signs", help="sign consistency ratios per group + parameter distributions (Fig. 8)")
    _common(p, "+")
    p.add_argument("--init", help="initial checkpoint, compared with every other")

    p = sub.add_parser("surface", help="2D surface theta + l1 d1 + l2 d2")
    _common(p)
    p.add_argument("--dir1", default="gaussian", help="direction spec (as valley --directions, one item)")
    p.add_argument("--dir2", default="gaussian", help="direction spec; random ones use seed + 1")
    p.add_argument("--init", help="initial checkpoint (for the 'init' direction)")
    p.add_argument("--sign", default="no", choices=("yes", "no"), help="give noise directions theta's sign")
    p.add_argument("--x", type=span, default=np.linspace(-1, 1, 21), help="START,STOP,NUM of lambda_1")
    p.add_argument("--y", type=span, default=np.linspace(-1, 1, 21), help="START,STOP,NUM of lambda_2")

    p = sub.add_parser("hessian", help="eigenpairs, Hutchinson trace, SLQ density of a group's Hessian")
    _common(p)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--no-bottom", action="store_true", help="skip the smallest eigenvalues")
    p.add_argument("--trace-samples", type=int, default=20)
    p.add_argument("--slq-runs", type=int, default=2)
    p.add_argument("--slq-steps", type=int, default=30)
    p.add_argument("--maxiter", type=int, default=20, help="ARPACK restarts per eigsh call (unconverged: dropped)")
    p.add_argument("--save-vectors", help="write the top eigenvectors as a direction file (safetensors)")

    p = sub.add_parser("mine", help="mine w-peak (Alg. 1) or vvv-basin (Alg. 2) directions")
    _common(p)
    p.add_argument("--algorithm", default="wpeak", choices=ALGORITHMS)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--mine-batch", type=int, default=64)
    p.add_argument("--gamma", type=float, default=0.5, help="vvv: weight of the interpolation loss")
    p.add_argument("--alpha", type=float, default=0.1, help="vvv: lambda ~ U[0.5 - alpha, 0.5 + alpha]")
    p.add_argument("--lambdas", type=span, default=None, help="START,STOP,NUM of the mined curve")
    p.add_argument("--save-direction", help="write the mined direction (safetensors) for valley file:PATH")
    return parser


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is visible; use cpu or auto")
    if not (name == "cpu" or name.startswith("cuda")):
        raise ConfigError(f"--device {name!r} is not accepted; use auto, cpu, cuda or cuda:N")
    return name


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


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def make_direction(spec: str, sign: bool, ctx: CheckpointContext, theta, names, args, seed: int) -> Direction:
    """One direction from its spec (valley --directions item)."""
    kind, _, arg = spec.partition(":")
    if kind in COMMON_NOISES:
        return Direction(kind, sign, noise_direction(theta, names, kind, seed, sign=sign))
    if kind in SPECIAL_DIRECTIONS:
        init = checkpoint_params(args.init, theta) if kind == "init" and args.init else None
        return Direction(kind, kind in ("theta", "sign"), special_direction(theta, names, kind, init))
    if kind in ("ratio", "hessian") and not _is_number(arg):
        raise ConfigError(f"direction {spec!r}: expected a number after '{kind}:'")
    if kind == "ratio":
        return Direction(spec, False, sign_ratio_direction(theta, names, float(arg), seed))
    if kind == "diff":
        return Direction(spec, False, difference(theta, checkpoint_params(arg, theta), names))
    if kind == "file":
        loaded = load_direction(arg, theta)
        return Direction(spec, False, {n: loaded[n] for n in names if n in loaded})
    if kind == "hessian":
        k = int(float(arg))
        op = HessianOperator(ctx.model, theta, names, ctx.test, args.batch_size)
        _, vectors = eigenpairs(op, k, "LA", seed)
        return Direction(spec, False, eigenvector_direction(op, vectors[:, k - 1]))
    raise ConfigError(f"direction {spec!r} is not known; use a noise ({', '.join(COMMON_NOISES)}), a special "
                      f"direction ({', '.join(SPECIAL_DIRECTIONS)}), ratio:R, diff:CKPT, file:PATH or hessian:K")


def _metadata(args, ctx: CheckpointContext, recalibrated: bool, **extra) -> dict:
    return probe_metadata(seed=args.seed, scaling=args.scaling, group=args.group, data=ctx.test.description,
                          dtype=args.dtype, bn_data=ctx.train.description, bn_recalibrated=recalibrated,
                          model=ctx.meta.get("model", ""), device=str(ctx.device), **extra)


def run_probe(args) -> ProbeResult:
    paths = args.checkpoint if isinstance(args.checkpoint, list) else [args.checkpoint]
    ctx = load_context(args, paths[0])
    evaluator = ctx.evaluator(not args.no_bn_recal, args.batch_size, args.chunk or None)
    theta = evaluator.parameters()
    names = group_names(ctx.model, args.group)
    meta = _metadata(args, ctx, evaluator.recalibrate, checkpoints=paths)
    log(f"{args.probe}: {paths[0]} ({ctx.meta.get('model')}, {len(names)} tensors in group {args.group}), "
        f"{ctx.test.description}")

    if args.probe == "valley":
        specs = [s.strip() for s in args.directions.split(",") if s.strip()]
        specs = [n for s in specs for n in (COMMON_NOISES if s == "noises" else [s])]
        signs_wanted = {"both": [False, True], "yes": [True], "no": [False]}[args.sign]
        directions = [make_direction(s, sign, ctx, theta, names, args, args.seed)
                      for s in specs for sign in (signs_wanted if s in COMMON_NOISES else [False])]
        return valley(evaluator, theta, directions, scales=args.scales, lambdas=args.lambdas,
                      scaling=args.scaling, loss_delta=args.loss_delta, metadata=meta)
    if args.probe == "sign-sweep":
        return sign_sweep(evaluator, theta, names, ratios=args.ratios, lambdas=args.lambdas, scale=args.scale,
                          scaling=args.scaling, seed=args.seed, metadata=meta)
    if args.probe == "interp":
        if len(paths) < 2:
            raise ConfigError("interp needs at least two checkpoints (A B [more for soups])")
        points = [theta] + [checkpoint_params(p, theta) for p in paths[1:]]
        init = checkpoint_params(args.init, theta) if args.init else None
        result = interpolate(evaluator, ctx.model, points[0], points[1], init=init, lambdas=args.lambdas,
                             metadata=meta)
        if len(points) > 2:
            log(f"interp: uniform and greedy soups of {len(points)} checkpoints (greedy chosen on training images)")
            select = Evaluator(ctx.model, ctx.train, ctx.train, recalibrate=evaluator.recalibrate,
                               batch_size=args.batch_size, chunk=evaluator.chunk)
            result.arrays["soups"] = soups(evaluator, select, points)
        return result
    if args.probe == "signs":
        labels = ["init"] * bool(args.init) + [chr(ord("A") + i) for i in range(len(paths))]
        params = ([checkpoint_params(args.init, theta)] if args.init else []) + \
            [theta] + [checkpoint_params(p, theta) for p in paths[1:]]
        meta["labels"] = dict(zip(labels, ([args.init] if args.init else []) + paths))
        return signs(ctx.model, dict(zip(labels, params)), meta)
    if args.probe == "surface":
        sign = args.sign == "yes"
        d1 = make_direction(args.dir1, sign, ctx, theta, names, args, args.seed)
        d2 = make_direction(args.dir2, sign, ctx, theta, names, args, args.seed + 1)
        u1, u2 = (scale_direction(d.values, theta, args.scaling) for d in (d1, d2))
        return surface(evaluator, theta, u1, u2, args.x, args.y,
                       metadata={**meta, "dir1": d1.noise, "dir2": d2.noise, "sign_consistent": sign})
    if args.probe == "hessian":
        result = hessian(ctx.model, theta, names, ctx.test, k=args.k, bottom=not args.no_bottom,
                         trace_samples=args.trace_samples, slq_runs=args.slq_runs, slq_steps=args.slq_steps,
                         maxiter=args.maxiter,
                         seed=args.seed, batch_size=args.batch_size, metadata=meta, log=log)
        if args.save_vectors:
            op = result.extra["operator"]
            vectors = {f"top{i + 1}.{n}": t for i in range(args.k)
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
