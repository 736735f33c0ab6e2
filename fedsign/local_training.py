"""One client's local training: E epochs of SGD on its partition, with its method's objective.

The batch plan (data order and augmentation draws) is a function of (partition size, train config,
client seed) only, so the Flower engine (one client per ClientApp call) and the cohort engine (all
clients of a round at once, sim/cohort) train every client on exactly the same batches.

Speed levers (TrainConfig; docs/engines.md, "Speed"): `precision=bf16` runs forward and loss under
torch.autocast; `channels_last` keeps images and conv weights in NHWC order; `step_mode=cuda_graph`
captures the whole full-batch step (forward, backward, clipping, SGD) once per process in a CUDA
graph and replays it. Batches are built a block of steps at a time (one gather, crop/flip and
normalisation per block, the same values as per step), and no step waits for the host.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from fedsign.config import TrainConfig
from fedsign.data.augment import CropFlip, apply_crop_flip, draw_crop_flip, normalize
from fedsign.data.images import ImageSet
from fedsign.data.specs import DatasetSpec
from strategies.functional import Params, detached
from strategies.objective import ClientObjective

log = logging.getLogger("fedsign")
# samples whose batches are built together: a few big kernels per block instead of ~10 small ones per step
BATCH_BLOCK = 8192


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
    cfg.batch_size; a 1-sample tail of larger batches is dropped (BatchNorm needs 2). Positions are
    shifted by `offset` (where the client's samples start in data shared with other clients). The
    whole plan reaches the device here, before training: a host-to-device copy waits for the GPU."""
    cpu = torch.device("cpu")
    generator = torch.Generator(device=cpu).manual_seed(seed)  # on the CPU: the same plan on every device
    augmenting = augment and (spec.crop_padding > 0 or spec.flip)
    steps: list[Step] = []
    for _ in range(cfg.local_epochs):
        order = (torch.randperm(n, generator=generator) + offset).to(device)
        draws = draw_crop_flip(n, spec.crop_padding, generator, cpu).to(device) if augmenting else None
        for start in range(0, n, cfg.batch_size):
            end = min(start + cfg.batch_size, n)
            if end - start == 1 and start > 0 and cfg.batch_size > 1:
                continue
            steps.append(Step(order[start:end], draws[start:end] if draws is not None else None))
    return steps


def make_batch(data: ImageSet, step: Step, spec: DatasetSpec,
               channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised (augmented) images and labels of a step; a stacked step [clients, B] gives
    x [clients, B, C, H, W] and y [clients, B]. `channels_last`: each image in NHWC memory order."""
    flat = step.index.reshape(-1)
    x = data.x[flat]
    if step.crop is not None:
        x = apply_crop_flip(x, spec.crop_padding, spec.flip, step.crop.flatten())
    x = normalize(x, spec)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.view(*step.index.shape, *x.shape[1:]), data.y[flat].view(step.index.shape)


def step_batches(data: ImageSet, steps: Sequence[Step], spec: DatasetSpec,
                 channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """make_batch of every step in order, built for up to BATCH_BLOCK samples of consecutive steps at
    once (gather, crop/flip and normalisation act per image: the same values as step by step)."""
    i = 0
    while i < len(steps):
        j, count = i + 1, steps[i].index.numel()
        while j < len(steps) and count + steps[j].index.numel() <= BATCH_BLOCK:
            count += steps[j].index.numel()
            j += 1
        block = steps[i:j]
        crops = [s.crop.flatten() for s in block] if block[0].crop is not None else None
        x, y = make_batch(data, Step(torch.cat([s.index.reshape(-1) for s in block]),
                                     CropFlip.cat(crops) if crops else None), spec, channels_last)
        start = 0
        for s in block:
            end = start + s.index.numel()
            yield x[start:end].view(*s.index.shape, *x.shape[1:]), y[start:end].view(s.index.shape)
            start = end
        i = j


def autocast(cfg: TrainConfig, device: torch.device):
    """torch.autocast for train.precision=bf16 (no weight-cast cache: it would outlive a CUDA graph's
    capture); nothing for fp32."""
    if cfg.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


# ---- CUDA graphs: a captured step replays on the same tensors, so the tensors must outlive the call ----
@dataclass
class GraphStats:
    """What step_mode=cuda_graph did in this process (the bench and the GPU tests read it)."""

    captured: int = 0
    replayed: int = 0
    eager: int = 0  # steps run without a graph (batch tails, CPU, a failed capture)
    failures: list[str] = field(default_factory=list)


GRAPH_STATS = GraphStats()


class StepGraphs:
    """One CUDA graph per key (a batch shape), captured the first time the key's step runs: that step
    itself runs eagerly on a side stream (warm-up, as torch.cuda.graph's documentation asks), then the
    same step is captured without running and later steps copy their batch into the captured input
    tensors and replay it. A capture that fails leaves the step eager for good (reported in GRAPH_STATS)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.graphs: dict[object, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...]] | None] = {}

    def run(self, key: object, step, inputs: tuple[torch.Tensor, ...], before_capture=None) -> None:
        """step(*inputs); graphed under `key` on CUDA. `before_capture()` runs just before capturing
        (e.g. to free gradients so the graph allocates its own)."""
        entry = self.graphs.get(key, False)
        if self.device.type != "cuda" or entry is None:  # no CUDA graphs on a CPU; None: its capture failed
            GRAPH_STATS.eager += 1
            return step(*inputs)
        if entry is False:
            return self._capture(key, step, inputs, before_capture)
        return self._replay(*entry, inputs)

    @staticmethod
    def _replay(graph: torch.cuda.CUDAGraph, static: tuple[torch.Tensor, ...], inputs: tuple[torch.Tensor, ...]) -> None:
        for s, new in zip(static, inputs):
            s.copy_(new)
        graph.replay()
        GRAPH_STATS.replayed += 1

    def _capture(self, key: object, step, inputs: tuple[torch.Tensor, ...], before_capture) -> None:
        """The warm-up step, for real, then its capture (recorded, not run)."""
        static = tuple(t.clone() for t in inputs)  # the graph's inputs, outside its memory pool
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            step(*static)  # this step, for real: the warm-up
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            if before_capture is not None:
                before_capture()
            with torch.cuda.graph(graph):
                step(*static)  # recorded, not run
            self.graphs[key] = (graph, static)
            GRAPH_STATS.captured += 1
        except RuntimeError as exc:
            torch.cuda.synchronize(self.device)
            self.graphs[key] = None
            GRAPH_STATS.failures.append(f"{key}: {str(exc).splitlines()[0]}")
            log.warning("train.step_mode=cuda_graph: capturing the step %s failed, it runs eagerly: %s", key, exc)


class KeptTensors:
    """A pytree of tensors cloned into storage that outlives one call (what a captured graph reads);
    `load` copies new values of the same structure, shapes and dtypes (`signature`) in place."""

    def __init__(self, tree) -> None:
        leaves, spec = tree_flatten(tree)
        self.leaves = [t.detach().clone() for t in leaves]
        self.tree = tree_unflatten(self.leaves, spec)

    def load(self, tree) -> None:
        for kept, new in zip(self.leaves, tree_flatten(tree)[0]):
            kept.copy_(new)


def signature(tree) -> tuple:
    """What a kept copy of `tree` must match: its structure and each tensor's shape, dtype and device."""
    leaves, spec = tree_flatten(tree)
    return (str(spec), tuple((tuple(t.shape), t.dtype, str(t.device)) for t in leaves))


class ClientSteps:
    """The local SGD steps of one client: `step(x, y)` is zero_grad, the objective's loss (under
    autocast for bf16), backward, clip_grad_norm_, torch.optim.SGD's step, summing the losses."""

    def __init__(self, model: nn.Module, objective: ClientObjective, consts: Params, cfg: TrainConfig,
                 device: torch.device) -> None:
        self.model, self.objective, self.cfg, self.device = model, objective, cfg, device
        self.params = dict(model.named_parameters())
        self.consts = consts
        self.optimizer = torch.optim.SGD(self.params.values(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.total = torch.zeros((), device=device)
        self.total_ce = torch.zeros((), device=device)

    def begin(self, consts: Params) -> None:
        """A fresh round (the authors' code makes a fresh optimizer each round)."""

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._step(x, y)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast(self.cfg, self.device):
            loss, ce = self.objective.loss(self.model, self.params, x, y, self.consts)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params.values(), self.cfg.grad_clip)
        self.optimizer.step()
        self.total += loss.detach()
        self.total_ce += ce.detach()


class GraphedClientSteps(ClientSteps):
    """step_mode=cuda_graph: the same steps on tensors kept across rounds and clients of this process
    (the model's parameters, this optimizer, the constants copied in, the loss sums), so the
    full-batch step is captured once. A kept optimizer whose momentum buffers are zeroed is a fresh
    one: SGD's first step sets buf = g, and 0·m + g = g exactly. On a CPU it runs these steps eagerly."""

    def __init__(self, model, objective, consts, cfg, device) -> None:
        self.kept = KeptTensors(consts)
        super().__init__(model, objective, self.kept.tree, cfg, device)
        self.graphs = StepGraphs(device)

    def begin(self, consts: Params) -> None:
        self.kept.load(consts)
        for state in self.optimizer.state.values():
            if state.get("momentum_buffer") is not None:
                state["momentum_buffer"].zero_()
        self.total.zero_()
        self.total_ce.zero_()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(y) != self.cfg.batch_size:  # an epoch's tail: its own size, too rare to capture
            GRAPH_STATS.eager += 1
            return self._step(x, y)
        self.graphs.run(tuple(x.shape), self._step, (x, y), before_capture=self.free_gradients)

    def free_gradients(self) -> None:
        """Gradients allocated during the capture live in the graph's own memory (the graph writes them)."""
        self.optimizer.zero_grad(set_to_none=True)


_kept_steps: weakref.WeakKeyDictionary[nn.Module, dict[tuple, GraphedClientSteps]] = weakref.WeakKeyDictionary()


def client_steps(model: nn.Module, objective: ClientObjective, consts: Params, cfg: TrainConfig,
                 device: torch.device) -> ClientSteps:
    if cfg.step_mode == "eager":
        return ClientSteps(model, objective, consts, cfg, device)
    params = list(model.parameters())  # a kept graph is only valid on the very same tensors
    key = (type(objective), repr(objective.cfg), cfg.lr, cfg.momentum, cfg.weight_decay, cfg.grad_clip,
           cfg.batch_size, cfg.precision, signature(consts), tuple(p.data_ptr() for p in params))
    kept = _kept_steps.setdefault(model, {})
    if key not in kept:
        kept.clear()  # graphs of other settings hold memory this one needs
        kept[key] = GraphedClientSteps(model, objective, consts, cfg, device)
    kept[key].begin(consts)
    return kept[key]


def train_locally(model: nn.Module, objective: ClientObjective, method_state: Params, data: ImageSet,
                  spec: DatasetSpec, cfg: TrainConfig, augment: bool, seed: int) -> LocalResult:
    """Train `model` (already holding the global weights, on the data's device) in place."""
    device = data.x.device
    model.train()
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # conv weights in place (no copy once converted)
    params = dict(model.named_parameters())
    consts = objective.prepare(model, detached({k: v.clone() for k, v in params.items()}), method_state)
    steps = batch_plan(len(data), cfg, spec, augment, seed, device)
    run = client_steps(model, objective, consts, cfg, device)
    for x, y in step_batches(data, steps, spec, cfg.channels_last):
        run.step(x, y)
    new_state = objective.next_state(detached(params), consts, method_state)
    state = {k: v.detach().clone(memory_format=torch.contiguous_format)
             for k, v in model.state_dict().items() if v.is_floating_point()}
    n_steps = max(len(steps), 1)
    return LocalResult(state, detached(new_state), len(data),
                       float(run.total) / n_steps, float(run.total_ce) / n_steps, len(steps))
