"""Local training of a whole cohort at once: the clients' parameters are stacked along a leading
dimension and one `torch.func.vmap(grad(objective.loss))` call does a local SGD step of every client.

Each client keeps its own batch plan (fedsign.local_training.batch_plan: same data order and
augmentation as when it trains alone), its own optimizer state (sim/cohort/stacked_sgd.py) and its
own method constants/state. Clients of unequal size do their own number of steps: at step t the
clients still training are grouped by batch size (full batches, epoch tails) and each group is one
vmap call on its rows; clients whose plan is finished take no further step.
"""

from __future__ import annotations

import weakref
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
from fedsign.local_training import (GRAPH_STATS, KeptTensors, LocalResult, Step, StepGraphs, autocast, batch_plan,
                                    signature, step_batches)
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
    run = cohort_steps(model, objective, params, shared_consts, const_dims, cfg, device)

    offsets = torch.tensor([0] + [len(c.data) for c in clients]).cumsum(0).tolist()
    data = ImageSet(torch.cat([c.data.x for c in clients]), torch.cat([c.data.y for c in clients]))
    plans = [batch_plan(len(c.data), cfg, spec, augment, c.seed, device, offset=offsets[i])
             for i, c in enumerate(clients)]
    # every step's groups and row indices, made before the first step (a host-to-device copy waits for the GPU)
    schedule = [(t, members) for t in range(max(len(plan) for plan in plans)) for members in groups_at(plans, t)]
    everyone = list(range(len(clients)))
    rows = {tuple(m): torch.tensor(m, device=device) for _, m in schedule if m != everyone}
    batches = step_batches(data, [stack_steps([plans[i][t] for i in members]) for t, members in schedule],
                           spec, cfg.channels_last)
    for (_, members), (x, y) in zip(schedule, batches):
        run.step(None if members == everyone else rows[tuple(members)], x, y)

    results = []
    totals_cpu, ces_cpu = run.totals.cpu(), run.ces.cpu()
    state_keys = list(exchanged_state(model))
    for i, c in enumerate(clients):
        own = {k: v[i].clone() for k, v in run.params.items()}  # the kept tensors train the next round
        new_state = objective.next_state(own, consts[i], c.method_state)
        steps = len(plans[i])
        results.append(LocalResult({k: own[k].detach() for k in state_keys}, detached(new_state), len(c.data),
                                   float(totals_cpu[i]) / max(steps, 1), float(ces_cpu[i]) / max(steps, 1), steps))
    return results


class CohortSteps:
    """The cohort's local steps: `step(rows, x, y)` is one vmapped grad_and_value of the objective for
    the clients at `rows` (None: all), then their StackedSGD step, summing their losses."""

    def __init__(self, model: nn.Module, objective: ClientObjective, params: Params, shared_consts, const_dims,
                 cfg: TrainConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.params = params
        self.consts, self.const_dims = shared_consts, const_dims
        self.optimizer = StackedSGD(params, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.grad_clip)
        clients = len(next(iter(params.values())))
        self.totals = torch.zeros(clients, device=device)
        self.ces = torch.zeros(clients, device=device)

        def client_loss(p: Params, x: torch.Tensor, y: torch.Tensor, k: Params):
            with autocast(cfg, device):
                return objective.loss(model, p, x, y, k)

        self.step_all = vmap(grad_and_value(client_loss, has_aux=True), in_dims=(0, 0, 0, const_dims))

    def begin(self, params: Params, shared_consts) -> None:
        """A fresh round (a fresh optimizer, as in train_locally)."""

    def step(self, rows: torch.Tensor | None, x: torch.Tensor, y: torch.Tensor) -> None:
        self._step(rows, x, y)

    def _step(self, rows: torch.Tensor | None, x: torch.Tensor, y: torch.Tensor) -> None:
        p = self.params if rows is None else {k: v[rows] for k, v in self.params.items()}
        k = self.consts if rows is None else select_rows(self.consts, self.const_dims, rows)
        grads, (loss, ce) = self.step_all(p, x, y, k)
        self.optimizer.step(grads, rows)
        if rows is None:
            self.totals.add_(loss.detach())
            self.ces.add_(ce.detach())
        else:
            self.totals.index_add_(0, rows, loss.detach())
            self.ces.index_add_(0, rows, ce.detach())


class GraphedCohortSteps(CohortSteps):
    """step_mode=cuda_graph: the same steps on tensors kept across rounds (the stacked parameters, the
    optimizer's buffers, zeroed per round, the constants, the loss sums), so each full-batch group size
    is captured once per process (one graph per number of clients in the group) and replayed, its rows
    copied into the graph's row tensor. Epoch tails run eagerly. On a CPU these steps run eagerly."""

    def __init__(self, model, objective, params, shared_consts, const_dims, cfg, device) -> None:
        self.kept_params, self.kept_consts = KeptTensors(params), KeptTensors(shared_consts)
        super().__init__(model, objective, self.kept_params.tree, self.kept_consts.tree, const_dims, cfg, device)
        self.graphs = StepGraphs(device)

    def begin(self, params: Params, shared_consts) -> None:
        self.kept_params.load(params)
        self.kept_consts.load(shared_consts)
        for buffer in self.optimizer.buffers.values():
            buffer.zero_()
        self.totals.zero_()
        self.ces.zero_()

    def step(self, rows: torch.Tensor | None, x: torch.Tensor, y: torch.Tensor) -> None:
        if y.shape[1] != self.cfg.batch_size:  # an epoch's tail: its own size, too rare to capture
            GRAPH_STATS.eager += 1
            return self._step(rows, x, y)
        if rows is None:
            self.graphs.run(len(y), lambda xs, ys: self._step(None, xs, ys), (x, y))
        else:
            self.graphs.run(len(y), self._step, (rows, x, y))


_kept_steps: weakref.WeakKeyDictionary[nn.Module, dict[tuple, GraphedCohortSteps]] = weakref.WeakKeyDictionary()


def cohort_steps(model: nn.Module, objective: ClientObjective, params: Params, shared_consts, const_dims,
                 cfg: TrainConfig, device: torch.device) -> CohortSteps:
    if cfg.step_mode == "eager":
        return CohortSteps(model, objective, params, shared_consts, const_dims, cfg, device)
    key = (type(objective), repr(objective.cfg), cfg.lr, cfg.momentum, cfg.weight_decay, cfg.grad_clip,
           cfg.batch_size, cfg.precision, signature(params), signature(shared_consts), repr(const_dims))
    kept = _kept_steps.setdefault(model, {})
    if key not in kept:
        kept.clear()  # graphs of other settings hold memory this one needs
        kept[key] = GraphedCohortSteps(model, objective, params, shared_consts, const_dims, cfg, device)
    kept[key].begin(params, shared_consts)
    return kept[key]


def prepare(model: nn.Module, objective: ClientObjective, client: CohortClient) -> Params:
    """The objective's round constants for one client, with the model holding its global model (as
    in train_locally). Clients sent the same global tensors share them (no copy per client)."""
    load_exchanged(model, client.global_state, what="the global model's tensors")
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
    dim_leaves = tree_flatten(dims)[0]  # None (a shared leaf) is a leaf of torch's pytrees
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
