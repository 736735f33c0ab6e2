"""Local training of a whole cohort at once: the clients' parameters are stacked along a leading
dimension and one `torch.func.vmap(grad(objective.loss))` call does a local SGD step of every client.

Each client keeps its own batch plan (fedsign.local_training.batch_plan: same data order and
augmentation as when it trains alone), its own optimizer state (sim/cohort/stacked_sgd.py) and its
own method constants/state. Clients of unequal size do their own number of steps: at step t the
clients still training are grouped by batch size (full batches, epoch tails) and each group is one
vmap call on its rows; clients whose plan is finished take no further step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import grad_and_value, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from fedsign.config import TrainConfig
from fedsign.data.augment import CropFlip
from fedsign.data.images import ImageSet
from fedsign.data.specs import DatasetSpec
from fedsign.errors import ConfigError
from fedsign.local_training import LocalResult, Step, batch_plan, make_batch
from fedsign.models import exchanged_state, has_batch_norm, load_exchanged, parameter_names
from strategies.functional import Params, detached
from strategies.objective import ClientObjective

from sim.cohort.stacked_sgd import StackedSGD


@dataclass
class CohortClient:
    data: ImageSet  # on the training device
    global_state: Params  # the model the server sent it (exchanged state, on the device)
    method_state: Params  # what its objective kept from its last round (on the device)
    seed: int  # strategies.sampling.client_seed(seed, round, client id)


def check_cohort_model(model: nn.Module, model_name: str = "") -> None:
    """The cohort engine trains parameters only: models with BatchNorm (running statistics) are refused."""
    name = f" (model.name={model_name})" if model_name else ""
    if has_batch_norm(model):
        raise ConfigError(f"engine.name=cohort does not train models with BatchNorm{name}: their running "
                          "statistics are not kept per client; use engine=flower, or a model without _bn")
    extra = sorted(set(exchanged_state(model)) - set(parameter_names(model)))
    if extra:
        raise ConfigError(f"engine.name=cohort trains parameters only, but the model{name} also exchanges "
                          f"buffers {extra[:3]}; use engine=flower")


def train_cohort(model: nn.Module, objective: ClientObjective, clients: list[CohortClient],
                 spec: DatasetSpec, cfg: TrainConfig, augment: bool) -> list[LocalResult]:
    """What train_locally returns for each client, computed for all clients together."""
    check_cohort_model(model)
    device = clients[0].data.x.device
    names = parameter_names(model)
    model.train()
    consts = [prepare(model, objective, c) for c in clients]
    shared_consts, const_dims = stack_consts(consts)
    params = {k: torch.stack([c.global_state[k] for c in clients]).to(device) for k in names}
    optimizer = StackedSGD(params, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.grad_clip)

    offsets = torch.tensor([0] + [len(c.data) for c in clients]).cumsum(0).tolist()
    data = ImageSet(torch.cat([c.data.x for c in clients]), torch.cat([c.data.y for c in clients]))
    plans = [batch_plan(len(c.data), cfg, spec, augment, c.seed, device, offset=offsets[i])
             for i, c in enumerate(clients)]

    def client_loss(p: Params, x: torch.Tensor, y: torch.Tensor, k: Params):
        return objective.loss(model, p, x, y, k)

    step_all = vmap(grad_and_value(client_loss, has_aux=True), in_dims=(0, 0, 0, const_dims))
    totals = torch.zeros(len(clients), device=device)
    ces = torch.zeros(len(clients), device=device)
    everyone = list(range(len(clients)))
    row_index: dict[tuple[int, ...], torch.Tensor] = {}  # made once: a host-to-device copy waits for the GPU
    for t in range(max(len(plan) for plan in plans)):
        for members in groups_at(plans, t):
            if members != everyone and tuple(members) not in row_index:
                row_index[tuple(members)] = torch.tensor(members, device=device)
            rows = None if members == everyone else row_index[tuple(members)]
            x, y = make_batch(data, stack_steps([plans[i][t] for i in members]), spec)
            p = params if rows is None else {k: v[rows] for k, v in params.items()}
            k = shared_consts if rows is None else select_rows(shared_consts, const_dims, rows)
            grads, (loss, ce) = step_all(p, x, y, k)
            optimizer.step(grads, rows)
            if rows is None:
                totals.add_(loss.detach())
                ces.add_(ce.detach())
            else:
                totals.index_add_(0, rows, loss.detach())
                ces.index_add_(0, rows, ce.detach())

    results = []
    totals_cpu, ces_cpu = totals.cpu(), ces.cpu()
    state_keys = list(exchanged_state(model))
    for i, c in enumerate(clients):
        own = {k: v[i] for k, v in params.items()}
        new_state = objective.next_state(own, consts[i], c.method_state)
        steps = len(plans[i])
        results.append(LocalResult({k: own[k].detach() for k in state_keys}, detached(new_state), len(c.data),
                                   float(totals_cpu[i]) / max(steps, 1), float(ces_cpu[i]) / max(steps, 1), steps))
    return results


def prepare(model: nn.Module, objective: ClientObjective, client: CohortClient) -> Params:
    """The objective's round constants for one client, with the model holding its global model (as
    in train_locally). Clients sent the same global tensors share them (no copy per client)."""
    load_exchanged(model, client.global_state, what="the global model")
    global_params = {k: client.global_state[k] for k in parameter_names(model)}
    return objective.prepare(model, global_params, client.method_state)


def stack_consts(consts: list[Params]):
    """(constants for vmap, in_dims): a leaf that is the same tensor for every client is passed once
    (in_dim None), the others are stacked along a new client dimension (in_dim 0)."""
    flats = [tree_flatten(c) for c in consts]
    spec = flats[0][1]
    if any(other != spec for _, other in flats[1:]):
        raise ValueError("the objective's prepare() returned differently structured constants per client")
    leaves, dims = [], []
    for column in zip(*(flat for flat, _ in flats)):
        if all(leaf is column[0] for leaf in column):
            leaves.append(column[0])
            dims.append(None)
        else:
            leaves.append(torch.stack(column))
            dims.append(0)
    return tree_unflatten(leaves, spec), tree_unflatten(dims, spec)


def select_rows(consts, dims, rows: torch.Tensor):
    leaves, spec = tree_flatten(consts)
    dim_leaves = tree_flatten(dims, is_leaf=lambda d: d is None)[0]
    return tree_unflatten([leaf if d is None else leaf[rows] for leaf, d in zip(leaves, dim_leaves)], spec)


def groups_at(plans: list[list[Step]], t: int) -> list[list[int]]:
    """The clients that still train at step t, grouped by their batch size there."""
    groups: dict[int, list[int]] = {}
    for i, plan in enumerate(plans):
        if t < len(plan):
            groups.setdefault(len(plan[t].index), []).append(i)
    return list(groups.values())


def stack_steps(steps: list[Step]) -> Step:
    crops = [s.crop for s in steps]
    return Step(torch.stack([s.index for s in steps]),
                CropFlip.stack(crops) if crops[0] is not None else None)  # type: ignore[arg-type]
