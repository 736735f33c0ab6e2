"""`python -m landscape.bench`: time a 41-point valley curve on VGG8 over N CIFAR-10 test images, the
landscape evaluator (functional_call + vmap chunks, cached normalised data, batched BN recalibration)
against a plain loop (copy the weights, add lambda * d, evaluate, one point at a time), in one run.
Prints JSON with both times, their ratio and the largest loss difference between the two."""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from fedsign.data import DatasetConfig
from fedsign.data import load_dataset, normalize
from fedsign.data.specs import dataset_spec
from fedsign.errors import FedsignError
from fedsign.models import build_model, has_batch_norm
from landscape.context import default_chunk
from landscape.directions import noise_direction, scale_direction
from landscape.evaluator import Evaluator, ProbeData


def plain_loop(model, theta, direction, lambdas, test, bn_x, spec, batch_size):
    """The straightforward way: a fresh copy per point, weights moved in place, BN reset and re-estimated
    with a cumulative pass, then an eval pass normalising each uint8 batch."""
    losses = []
    for lam in lambdas:
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in moved.named_parameters():
                p.copy_(theta[name] + float(lam) * direction[name])
            if has_batch_norm(moved):
                for m in moved.modules():
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                        m.reset_running_stats()
                        m.momentum = None
                        m.train()
                for start in range(0, len(bn_x), batch_size):
                    moved(normalize(bn_x[start:start + batch_size], spec))
            moved.eval()
            total = 0.0
            for start in range(0, len(test), batch_size):
                logits = moved(normalize(test.x[start:start + batch_size], spec))
                total += float(F.cross_entropy(logits, test.y[start:start + batch_size], reduction="sum"))
        losses.append(total / len(test))
    return np.array(losses)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m landscape.bench", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vgg8")
    p.add_argument("--data-root", default="/work/shared/data/cifar10-jpeg")
    p.add_argument("--images", type=int, default=5000, help="test images (seeded subset)")
    p.add_argument("--bn-images", type=int, default=1000, help="training images for BN recalibration (BN models)")
    p.add_argument("--points", type=int, default=41)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--chunk", type=int, default=0, help="points per vmap chunk (0: 16 on GPU, 1 on CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    try:
        spec = dataset_spec("cifar10")
        torch.manual_seed(0)
        model = build_model(args.model, spec).to(args.device).eval()
        raw = load_dataset(DatasetConfig(name="cifar10", root=args.data_root))
        index = torch.randperm(len(raw.test), generator=torch.Generator().manual_seed(0))[:args.images]
        test = raw.test.subset(index.sort().values).to(args.device)
        bn_x = raw.train.x[:args.bn_images].to(args.device)
    except FedsignError as exc:
        print(f"python -m landscape.bench: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    lambdas = np.linspace(-1.0, 1.0, args.points)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    chunk = args.chunk or default_chunk(args.device)

    direction_like = {n: p.detach() for n, p in model.named_parameters()}
    direction = scale_direction(noise_direction(direction_like, list(direction_like), "gaussian", 0, sign=True),
                                direction_like, "ns")
    started = time.perf_counter()  # the landscape way, including normalising and caching the data once
    probe_test = ProbeData(normalize(test.x, spec), test.y)
    probe_bn = ProbeData(normalize(bn_x, spec), torch.zeros(len(bn_x), dtype=torch.long, device=args.device))
    evaluator = Evaluator(model, probe_test, probe_bn, batch_size=args.batch_size, chunk=chunk)
    theta = evaluator.parameters()
    fast_loss, _ = evaluator.curve(theta, direction, lambdas)
    sync()
    fast = time.perf_counter() - started

    started = time.perf_counter()
    loop_loss = plain_loop(model, theta, direction, lambdas, test, bn_x, spec, args.batch_size)
    sync()
    loop = time.perf_counter() - started

    print(json.dumps({
        "model": args.model, "images": len(test), "points": args.points, "device": args.device,
        "chunk": chunk, "batch_size": args.batch_size, "bn_recalibration": has_batch_norm(model),
        "landscape_seconds": round(fast, 3), "plain_loop_seconds": round(loop, 3),
        "speedup": round(loop / fast, 3),
        "max_abs_loss_difference": float(np.max(np.abs(fast_loss.numpy() - loop_loss))),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
    }, indent=1))


if __name__ == "__main__":
    main()
