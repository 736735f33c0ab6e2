"""A plain central SGD trainer for making small checkpoints to probe (tests, docs measurements).

Not federated and not the paper's recipe: cross-entropy, SGD with momentum, optional random crop/flip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from landscape.evaluator import ProbeData


def train_classifier(model: nn.Module, data: ProbeData, *, epochs: int = 10, lr: float = 0.05,
                     momentum: float = 0.9, weight_decay: float = 5e-4, batch_size: int = 64, seed: int = 0,
                     augment=None, log=None) -> list[float]:
    """Train in place; `augment(x, generator)` is applied per batch if given. Returns the loss per epoch."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    history = []
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=gen).to(data.y.device)
        total = 0.0
        for start in range(0, len(data), batch_size):
            idx = order[start:start + batch_size]
            x = data.x[idx] if augment is None else augment(data.x[idx], gen)
            loss = F.cross_entropy(model(x), data.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(data))
        if log:
            log(f"train: epoch {epoch + 1}/{epochs} loss {history[-1]:.4f}")
    model.eval()
    return history


def main(argv: list[str] | None = None) -> None:
    """`python -m landscape.train`: train a fedsign model centrally and save a probe-ready checkpoint."""
    import argparse
    import sys

    from fedsign.checkpoint import checkpoint_metadata, save_checkpoint
    from fedsign.data import random_crop_flip
    from fedsign.data.specs import dataset_spec
    from fedsign.errors import FedsignError
    from fedsign.models import build_model, exchanged_state
    from landscape.context import data_subset

    p = argparse.ArgumentParser(prog="python -m landscape.train", description=main.__doc__)
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root", default="")
    p.add_argument("--images", type=int, default=0, help="training images (seeded subset; 0 = all)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint path (.safetensors)")
    args = p.parse_args(argv)
    say = lambda msg: print(f"[landscape] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        spec = dataset_spec(args.dataset)
        torch.manual_seed(args.seed)
        model = build_model(args.model, spec)
        data = data_subset(args.dataset, args.data_root, "train", args.images, args.seed, "cpu")
        augment = None
        if spec.crop_padding or spec.flip:  # on normalised floats: zero padding = the mean colour
            augment = lambda x, g: random_crop_flip(x, spec.crop_padding, spec.flip, g)  # noqa: E731
        train_classifier(model, data, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         seed=args.seed, augment=augment, log=say)
        meta = checkpoint_metadata(model=args.model, dataset=args.dataset, round=args.epochs, role="server",
                                   method="central", seed=args.seed)
        say(f"wrote {save_checkpoint(args.out, exchanged_state(model), meta)}")
    except FedsignError as exc:
        print(f"python -m landscape.train: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
