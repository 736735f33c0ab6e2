"""One client's local training: E epochs of SGD on its partition, with its method's objective.

The batch plan (data order and augmentation draws) is a function of (partition size, train config,
client seed) only, so the Flower engine (one client per ClientApp call) and the cohort engine (all
clients of a round at once, sim/cohort) train every client on exactly the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedsign.config import TrainConfig
from fedsign.data.augment import CropFlip, apply_crop_flip, draw_crop_flip, normalize
from fedsign.data.images import ImageSet
from fedsign.data.specs import DatasetSpec
from strategies.functional import Params, detached
from strategies.objective import ClientObjective


@dataclass
class LocalResult:
    state: Params  # the exchanged float state after training (parameters + BN statistics), on the device
    method_state: Params  # what the objective keeps for this client's next round
    num_examples: int
    train_loss: float  # mean total loss over the local steps
    ce_loss: float  # mean cross-entropy part
    steps: int


@dataclass
class Step:
    """One local SGD step's batch: positions in the client's data and its augmentation draws."""

    index: torch.Tensor  # int64 [B] (or [clients, B] when stacked by the cohort engine)
    crop: CropFlip | None  # None: no augmentation


def batch_plan(n: int, cfg: TrainConfig, spec: DatasetSpec, augment: bool, seed: int,
               device: torch.device, offset: int = 0) -> list[Step]:
    """Every step of one client's round, drawn from one generator seeded by `seed`: per epoch a
    fresh permutation (then, when augmenting, one crop/flip draw per sample), split into batches of
    cfg.batch_size; a 1-sample tail is dropped (BatchNorm needs 2). Positions are shifted by `offset`
    (where the client's samples start in data shared with other clients)."""
    cpu = torch.device("cpu")
    generator = torch.Generator(device=cpu).manual_seed(seed)  # on the CPU: the same plan on every device
    augmenting = augment and (spec.crop_padding > 0 or spec.flip)
    steps: list[Step] = []
    for _ in range(cfg.local_epochs):
        order = (torch.randperm(n, generator=generator) + offset).to(device)
        draws = draw_crop_flip(n, spec.crop_padding, generator, cpu).to(device) if augmenting else None
        for start in range(0, n, cfg.batch_size):
            end = min(start + cfg.batch_size, n)
            if end - start == 1 and start > 0:
                continue
            steps.append(Step(order[start:end], draws[start:end] if draws is not None else None))
    return steps


def make_batch(data: ImageSet, step: Step, spec: DatasetSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised (augmented) images and labels of a step; a stacked step [clients, B] gives
    x [clients, B, C, H, W] and y [clients, B]."""
    flat = step.index.reshape(-1)
    x = data.x[flat]
    if step.crop is not None:
        x = apply_crop_flip(x, spec.crop_padding, spec.flip, step.crop.flatten())
    x = normalize(x, spec)
    return x.view(*step.index.shape, *x.shape[1:]), data.y[flat].view(step.index.shape)


def train_locally(model: nn.Module, objective: ClientObjective, method_state: Params, data: ImageSet,
                  spec: DatasetSpec, cfg: TrainConfig, augment: bool, seed: int) -> LocalResult:
    """Train `model` (already holding the global weights, on the data's device) in place."""
    device = data.x.device
    model.train()
    params = dict(model.named_parameters())
    consts = objective.prepare(model, detached({k: v.clone() for k, v in params.items()}), method_state)
    optimizer = torch.optim.SGD(params.values(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)  # fresh each round (authors' code)
    total = torch.zeros((), device=device)
    total_ce = torch.zeros((), device=device)
    steps = batch_plan(len(data), cfg, spec, augment, seed, device)
    for step in steps:
        x, y = make_batch(data, step, spec)
        loss, ce = objective.loss(model, params, x, y, consts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(params.values(), cfg.grad_clip)
        optimizer.step()
        total += loss.detach()
        total_ce += ce.detach()
    new_state = objective.next_state(detached(params), consts, method_state)
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    n_steps = max(len(steps), 1)
    return LocalResult(state, detached(new_state), len(data),
                       float(total) / n_steps, float(total_ce) / n_steps, len(steps))
