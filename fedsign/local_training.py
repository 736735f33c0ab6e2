"""One client's local training: E epochs of SGD on its partition, with its method's objective."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedsign.config import TrainConfig
from fedsign.data.augment import normalize, random_crop_flip
from fedsign.data.images import ImageSet
from fedsign.data.specs import DatasetSpec
from strategies.functional import Params, detached
from strategies.objective import ClientObjective


@dataclass
class LocalResult:
    state: Params  # the exchanged float state after training (parameters + BN statistics), on CPU
    method_state: Params  # what the objective keeps for this client's next round
    num_examples: int
    train_loss: float  # mean total loss over the local steps
    ce_loss: float  # mean cross-entropy part
    steps: int


def batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    """A fresh permutation split into batches; a 1-sample tail is dropped (BatchNorm needs 2)."""
    order = torch.randperm(n, generator=generator, device=device)
    chunks = list(order.split(batch_size))
    return chunks[:-1] if len(chunks) > 1 and len(chunks[-1]) == 1 else chunks


def make_batch(data: ImageSet, index: torch.Tensor, spec: DatasetSpec, augment: bool,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = data.x[index]
    if augment and (spec.crop_padding or spec.flip):
        x = random_crop_flip(x, spec.crop_padding, spec.flip, generator)
    return normalize(x, spec), data.y[index]


def train_locally(model: nn.Module, objective: ClientObjective, method_state: Params, data: ImageSet,
                  spec: DatasetSpec, cfg: TrainConfig, augment: bool, seed: int) -> LocalResult:
    """Train `model` (already holding the global weights, on the data's device) in place."""
    device = data.x.device
    model.train()
    params = dict(model.named_parameters())
    consts = objective.prepare(model, detached({k: v.clone() for k, v in params.items()}), method_state)
    optimizer = torch.optim.SGD(params.values(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)  # fresh each round (authors' code)
    generator = torch.Generator(device=device).manual_seed(seed)
    total = torch.zeros((), device=device)
    total_ce = torch.zeros((), device=device)
    steps = 0
    for _ in range(cfg.local_epochs):
        for index in batches(len(data), cfg.batch_size, generator, device):
            x, y = make_batch(data, index, spec, augment, generator)
            loss, ce = objective.loss(model, params, x, y, consts)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(params.values(), cfg.grad_clip)
            optimizer.step()
            total += loss.detach()
            total_ce += ce.detach()
            steps += 1
    new_state = objective.next_state(detached(params), consts, method_state)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    return LocalResult(state, {k: v.detach().cpu() for k, v in new_state.items()}, len(data),
                       float(total) / max(steps, 1), float(total_ce) / max(steps, 1), steps)
