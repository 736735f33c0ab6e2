"""Local training's parts, one client (train_locally) and a cohort (train_cohort), on tiny data: the
batch plan and its augmentation against a hand computation, batches built in blocks, and what the
speed levers do on a CPU: step_mode=cuda_graph keeps its tensors across rounds and hands exactly the
full-batch steps to StepGraphs (which captures them on CUDA), bf16 runs forward and loss under
autocast, channels_last changes the memory order only. Fast enough for the mutation run
(tests/mutation.py); tests/test_gpu.py runs the levers at server level, on the CPU and on CUDA."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F

from fedsign.config import RunConfig, TrainConfig
from fedsign.data import ImageSet
from fedsign.data.specs import DATASETS
from fedsign.errors import CheckpointError
from fedsign.local_training import (BATCH_BLOCK, GRAPH_STATS, ClientSteps, GraphedClientSteps, Step, StepGraphs,
                                    autocast, batch_plan, client_steps, make_batch, signature, step_batches, train_locally)
from fedsign.methods import make_objective, pan_spec
from fedsign.models import build_model, exchanged_state, parameter_names
from sim.cohort.cohort_training import (CohortClient, CohortSteps, GraphedCohortSteps, cohort_steps, groups_at, prepare,
                                        stack_consts, stack_steps, train_cohort)
from strategies.registry import METHOD_NAMES

# 8x8 RGB images (channels_last is a no-op on one channel), with CIFAR's augmentation at a smaller padding
TINY = dataclasses.replace(DATASETS["digits"], name="tiny", channels=3, mean=(0.3, 0.4, 0.5), std=(0.2, 0.25, 0.3),
                           crop_padding=2, flip=True)
CPU = torch.device("cpu")
GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
DEVICES = ["cpu", pytest.param("cuda", marks=GPU)]


def images(n: int, seed: int = 0, device: str = "cpu") -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g).to(device),
                    torch.randint(0, 10, (n,), generator=g).to(device))


def hand_plan(n: int, epochs: int, batch: int, padding: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    """(positions, dy, dx, flip) of every step: per epoch a permutation, then the dy, dx and flip draws
    of every sample, from one CPU generator; batches of `batch`, a 1-sample tail (not the first) dropped."""
    g = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        dy, dx = (torch.randint(0, 2 * padding + 1, (n,), generator=g) for _ in range(2))
        flip = torch.rand(n, generator=g) < 0.5
        for start in range(0, n, batch):
            if start == 0 or n - start > 1:
                steps.append(tuple(t[start:start + batch] for t in (order, dy, dx, flip)))
    return steps


def hand_image(image: torch.Tensor, padding: int, dy: int, dx: int, flip: bool, spec) -> torch.Tensor:
    """torchvision's RandomCrop(padding) at (dy, dx) and RandomHorizontalFlip, then (x/255 − mean)/std."""
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=image.dtype)
    padded[:, padding:padding + h, padding:padding + w] = image
    x = padded[:, dy:dy + h, dx:dx + w]
    if flip:
        x = x.flip(-1)
    mean, std = (torch.tensor(v, dtype=torch.get_default_dtype()).view(-1, 1, 1) for v in (spec.mean, spec.std))
    return (x.to(mean.dtype) / 255.0 - mean) / std


# ---- the batch plan and its images ----
@pytest.mark.parametrize(("padding", "flip"), [(2, True), (1, False), (0, True)])
def test_augmented_batches_are_the_hand_computed_crops_and_mirrors(padding, flip, float64):
    """Each spec augments on its own terms: crop and flip, crop only (a drawn flip is not applied),
    flip only (no padding: every offset 0)."""
    spec = dataclasses.replace(TINY, crop_padding=padding, flip=flip)
    data = images(23)
    cfg = TrainConfig(local_epochs=2, batch_size=6)
    plan = batch_plan(23, cfg, spec, True, 7, CPU)
    expected = hand_plan(23, 2, 6, padding, 7)
    assert [len(s.index) for s in plan] == [6, 6, 6, 5] * 2
    for step, (index, dy, dx, flips) in zip(plan, expected, strict=True):
        assert torch.equal(step.index, index)
        assert torch.equal(step.crop.dy, dy) and torch.equal(step.crop.dx, dx) and torch.equal(step.crop.flip, flips)
        x, y = make_batch(data, step, spec)
        hand = torch.stack([hand_image(data.x[int(i)], padding, int(a), int(b), bool(f) and flip, spec)
                            for i, a, b, f in zip(index, dy, dx, flips)])
        assert x.dtype == torch.float64 and torch.equal(x, hand) and torch.equal(y, data.y[index])
    assert any(bool(s.crop.flip.any()) for s in plan)


def test_without_augmentation_batches_are_the_normalised_images(float64):
    data = images(13)
    cfg = TrainConfig(local_epochs=1, batch_size=6)
    for spec, augment in ((TINY, False), (dataclasses.replace(TINY, crop_padding=0, flip=False), True)):
        plan = batch_plan(13, cfg, spec, augment, 3, CPU)
        # 13 = 6 + 6 + 1: the 1-sample tail is dropped (BatchNorm needs 2 samples)
        assert [len(s.index) for s in plan] == [6, 6] and all(s.crop is None for s in plan)
        for step, (index, *_) in zip(plan, hand_plan(13, 1, 6, 0, 3), strict=True):
            assert torch.equal(step.index, index)
            x, _ = make_batch(data, step, spec)
            assert torch.equal(x, torch.stack([hand_image(data.x[int(i)], 0, 0, 0, False, spec) for i in index]))


def test_a_one_sample_client_keeps_its_one_sample_batch_and_offsets_shift_positions():
    cfg = TrainConfig(local_epochs=2, batch_size=4)
    assert [s.index.tolist() for s in batch_plan(1, cfg, TINY, False, 0, CPU)] == [[0], [0]]
    plain = batch_plan(9, cfg, TINY, True, 5, CPU)
    moved = batch_plan(9, cfg, TINY, True, 5, CPU, offset=30)
    assert len(plain) == len(moved) == 4  # 9 = 4 + 4 + 1 per epoch, the tail dropped
    for a, b in zip(plain, moved):
        assert torch.equal(b.index, a.index + 30) and torch.equal(b.crop.dy, a.crop.dy)


def test_batch_size_one_trains_every_sample_once_per_epoch_and_two_drops_the_tail():
    plan = batch_plan(5, TrainConfig(local_epochs=2, batch_size=1), TINY, False, 4, CPU)
    assert [len(s.index) for s in plan] == [1] * 10
    for epoch in (plan[:5], plan[5:]):
        assert sorted(int(s.index) for s in epoch) == [0, 1, 2, 3, 4]
    assert [len(s.index) for s in batch_plan(5, TrainConfig(batch_size=2), TINY, False, 4, CPU)] == [2, 2] * 3


@pytest.mark.parametrize("device", DEVICES)
def test_batches_built_in_blocks_equal_batches_built_per_step(device, monkeypatch):
    """Blocks end inside the plan (BATCH_BLOCK 34), for one client's steps and for stacked cohort steps,
    in both memory orders (the default: NCHW); channels_last gives NHWC images. Each block takes as
    many consecutive steps as fit in BATCH_BLOCK samples."""
    assert BATCH_BLOCK >= 64 * 100  # a Table-1 client's epoch (about 500 samples) is a few blocks at most
    monkeypatch.setattr("fedsign.local_training.BATCH_BLOCK", 34)
    blocks = []
    build = make_batch

    def recorded(data, step, spec, channels_last=False):
        blocks.append(step.index.numel())
        return build(data, step, spec, channels_last)

    monkeypatch.setattr("fedsign.local_training.make_batch", recorded)
    spec = DATASETS["cifar10"]
    torch.manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (90, 3, 32, 32), dtype=torch.uint8).to(device),
                    torch.randint(0, 10, (90,)).to(device))
    cfg = TrainConfig(local_epochs=2, batch_size=16)
    plans = [batch_plan(n, cfg, spec, True, seed, torch.device(device), offset=o)
             for seed, (n, o) in enumerate(((50, 0), (40, 50)))]
    single = plans[0]
    stacked = [stack_steps([plans[i][t] for i in members]) for t in range(len(plans[0]))
               for members in groups_at(plans, t)]
    # 50 samples in batches of 16 (a tail of 2) per epoch: 16+16 | 16+2+16 | 16+16+2
    assert [len(s.index) for s in single] == [16, 16, 16, 2] * 2
    list(step_batches(data, single, spec))
    assert blocks == [32, 34, 34]
    for steps in (single, stacked):
        default = next(step_batches(data, steps, spec))[0]
        assert default.reshape(-1, *default.shape[-3:]).is_contiguous()
        for channels_last in (False, True):
            blocks.clear()
            built = list(step_batches(data, steps, spec, channels_last))
            assert sum(blocks) == sum(s.index.numel() for s in steps) and max(blocks) <= 34
            assert len(built) == len(steps)
            for (x, y), step in zip(built, steps):
                x_step, y_step = make_batch(data, step, spec, channels_last)
                assert torch.equal(x, x_step) and torch.equal(y, y_step)
                images_of_step = x.reshape(-1, *x.shape[-3:])
                assert images_of_step.is_contiguous(memory_format=torch.channels_last) == channels_last


# ---- one client alone and in a cohort ----
@pytest.mark.parametrize("method", ["feddyn", "moon"])
def test_augmented_clients_train_alike_alone_and_in_a_cohort(method, float64, one_thread):
    """Two rounds of FedDyn (per-client state h, shared global constants) or MOON (per-client previous
    model, constants prepared from the model) for clients of 4, 2 and 1 steps (23, 12 and 5 samples,
    batch 6), augmented: train_cohort gives each client what train_locally gives it alone, its losses
    and its next state included."""
    cfg = setting(method, local_epochs=1)
    model = model_for(cfg)
    objective = make_objective(cfg)
    glob = {k: v.clone() for k, v in exchanged_state(model).items()}
    sets = [images(n, seed=n) for n in (23, 12, 5)]
    states = [objective.first_state(lambda: dict(glob)) for _ in sets]
    for _ in range(2):
        cohort = train_cohort(model, objective, [CohortClient(d, glob, s, 40 + i)
                                                 for i, (d, s) in enumerate(zip(sets, states))], TINY, cfg.train, True)
        for i, (d, s, got) in enumerate(zip(sets, states, cohort)):
            model.load_state_dict(glob, strict=False)
            alone = train_locally(model, objective, s, d, TINY, cfg.train, True, 40 + i)
            assert got.steps == alone.steps == (4, 2, 1)[i] and got.num_examples == alone.num_examples == len(d)
            assert got.train_loss == pytest.approx(alone.train_loss, rel=1e-9)
            assert got.ce_loss == pytest.approx(alone.ce_loss, rel=1e-9)
            assert got.steps == 1 or got.ce_loss != got.train_loss  # the methods' terms are not 0 here
            for mine, theirs in ((got.state, alone.state), (got.method_state, alone.method_state)):
                assert mine.keys() == theirs.keys() and mine
                for k in mine:
                    assert torch.allclose(mine[k], theirs[k], rtol=1e-9, atol=1e-12), k
        glob, states = {k: sum(r.state[k] for r in cohort) / 3 for k in glob}, [r.method_state for r in cohort]


def test_a_kept_copy_is_keyed_by_structure_shapes_dtypes_and_devices():
    base = {"w": torch.zeros(2, 3), "b": [torch.zeros(3)]}
    assert signature(base) == signature({"w": torch.ones(2, 3), "b": [torch.ones(3)]})
    for other in ({"w": torch.zeros(3, 2), "b": [torch.zeros(3)]}, {"w": torch.zeros(2, 3), "b": (torch.zeros(3),)},
                  {"v": torch.zeros(2, 3), "b": [torch.zeros(3)]}, {"w": torch.zeros(2, 3, dtype=torch.float16),
                                                                    "b": [torch.zeros(3)]},
                  {"w": torch.zeros(2, 3, device="meta"), "b": [torch.zeros(3)]}):
        assert signature(other) != signature(base), other


# ---- the speed levers on a CPU ----
def setting(method: str, **train) -> RunConfig:
    return RunConfig.from_flat({"method.name": method, "dataset.name": "digits", "model.name": "smallcnn",
                                "train.local_epochs": 2, "train.batch_size": 6, "train.lr": 0.05,
                                "train.momentum": 0.9, "train.weight_decay": 1e-3, "train.grad_clip": 0.5,
                                **{f"train.{k}": v for k, v in train.items()}})


def model_for(cfg: RunConfig) -> torch.nn.Module:
    torch.manual_seed(1)
    return build_model("smallcnn", TINY, pan_spec(cfg))


@pytest.fixture
def graph_calls(monkeypatch):
    """The (key, before_capture) of every step handed to StepGraphs.run (which then runs it: eagerly on a CPU)."""
    calls = []
    run = StepGraphs.run

    def recorded(self, key, step, inputs, before_capture=None):
        calls.append((key, before_capture))
        return run(self, key, step, inputs, before_capture)

    monkeypatch.setattr(StepGraphs, "run", recorded)
    GRAPH_STATS.__init__()
    return calls


def two_rounds(model, cfg: RunConfig, data: ImageSet, augment: bool = False) -> list:
    """Two rounds of one client from model_for's weights; the second starts from a different global
    model (the first's result, scaled) with the state the first left, as the server would send."""
    objective = make_objective(cfg)
    start = dict(exchanged_state(model_for(cfg)))
    state = objective.first_state(lambda: {k: v.clone() for k, v in start.items()})
    results = []
    for _ in range(2):
        model.load_state_dict(start, strict=False)
        result = train_locally(model, objective, state, data, TINY, cfg.train, augment, seed=11)
        results.append(result)
        start, state = {k: 0.9 * v for k, v in result.state.items()}, result.method_state
    return results


def assert_same(a, b) -> None:
    assert a.steps == b.steps and a.train_loss == b.train_loss and a.ce_loss == b.ce_loss
    for x, y in ((a.state, b.state), (a.method_state, b.method_state)):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), sorted(x)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_graphed_steps_keep_their_tensors_across_rounds_and_graph_the_full_batches(method, graph_calls, float64,
                                                                                   one_thread):
    """On a CPU the kept steps run eagerly, so both rounds must equal eager training exactly: the
    constants are copied in, the momentum zeroed, the loss sums reset each round. Only full batches
    (23 = 6 + 6 + 6 + 5) go to StepGraphs, keyed by their shape, with a hook that frees the gradients."""
    data = images(23)
    model = model_for(setting(method))
    eager = two_rounds(model, setting(method), data)
    assert graph_calls == []
    graphed = two_rounds(model, setting(method, step_mode="cuda_graph"), data)
    for a, b in zip(eager, graphed):
        assert_same(a, b)
    assert eager[0].steps == 8 and max(float((eager[1].state[k] - eager[0].state[k]).abs().max())
                                       for k in eager[0].state) > 1e-3
    assert all(r.ce_loss > 1.0 for r in eager)  # the mean cross-entropy of 8 steps (ln 10 = 2.3 at the start)
    if method == "fedavg":  # its loss is the cross-entropy: both means alike
        assert all(r.train_loss == r.ce_loss for r in eager)
    assert [key for key, _ in graph_calls] == [(6, 3, 8, 8)] * 12  # 3 full batches x 2 epochs x 2 rounds
    assert GRAPH_STATS.eager == 16 and GRAPH_STATS.captured == GRAPH_STATS.replayed == 0
    assert GRAPH_STATS.failures == []
    free = graph_calls[0][1]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    free()
    assert all(p.grad is None for p in model.parameters())


def test_kept_steps_are_reused_only_for_the_same_settings_and_tensors(float64):
    cfg = setting("fedprox")
    model = model_for(cfg)
    objective = make_objective(cfg)
    consts = objective.prepare(model, {k: v.detach().clone() for k, v in model.named_parameters()}, {})
    assert type(client_steps(model, objective, consts, cfg.train, CPU)) is ClientSteps
    graphed = dataclasses.replace(cfg.train, step_mode="cuda_graph")
    first = client_steps(model, objective, consts, graphed, CPU)
    assert type(first) is GraphedClientSteps
    assert client_steps(model, objective, consts, graphed, CPU) is first
    other = client_steps(model, objective, consts, dataclasses.replace(graphed, lr=0.01), CPU)
    assert other is not first and other.optimizer.param_groups[0]["lr"] == 0.01
    assert client_steps(model_for(cfg), objective, consts, graphed, CPU) is not other  # other tensors
    kept = client_steps(model, objective, consts, graphed, CPU)
    other_class = type("OtherObjective", (type(objective),), {})(objective.cfg)
    assert client_steps(model, other_class, consts, graphed, CPU).objective is other_class  # other loss, same cfg
    kept = client_steps(model, objective, consts, graphed, CPU)
    other_mu = make_objective(cfg.replace(method__mu=0.5))
    assert client_steps(model, other_mu, consts, graphed, CPU) is not kept  # the same class, other settings


def test_graphed_cohort_steps_equal_eager_ones_and_graph_the_full_batch_groups(graph_calls, float64, one_thread):
    """Three clients of unequal size (23, 12, 6 samples; batches of 6): the rows of each group, the
    epoch tails run eagerly, and round 2 from other global weights reuses the kept tensors."""
    cfg = setting("feddyn")
    model = model_for(cfg)
    objective = make_objective(cfg)
    start = {k: v.clone() for k, v in exchanged_state(model).items()}
    sets = [images(n, seed=n) for n in (23, 12, 6)]
    runs = {}
    for mode in ("eager", "cuda_graph"):
        train = dataclasses.replace(cfg.train, step_mode=mode)
        glob, states, rounds = start, [objective.first_state(lambda: dict(start)) for _ in sets], []
        for _ in range(2):
            clients = [CohortClient(d, glob, s, seed=20 + i) for i, (d, s) in enumerate(zip(sets, states))]
            results = train_cohort(model, objective, clients, TINY, train, True)
            rounds.append(results)
            glob = {k: sum(r.state[k] for r in results) / 3 for k in start}
            states = [r.method_state for r in results]
        runs[mode] = rounds
        if mode == "eager":
            assert graph_calls == [] and GRAPH_STATS.eager == 0  # step_mode=eager never goes through StepGraphs
    for eager_round, graphed_round in zip(runs["eager"], runs["cuda_graph"]):
        for a, b in zip(eager_round, graphed_round):
            assert_same(a, b)
    assert [r.steps for r in runs["eager"][0]] == [8, 4, 2]
    # plans of 6 6 6 5 6 6 6 5, 6 6 6 6 and 6 6 samples: the full-batch groups' sizes at steps 0..6 (at
    # step 3 the first client's tail of 5 is a group of its own, at step 7 it is the only one)
    assert [key for key, _ in graph_calls] == [3, 3, 2, 1, 1, 1, 1] * 2 and all(b is None for _, b in graph_calls)
    assert GRAPH_STATS.eager == 18  # the 14 graphed groups and 4 tails, run eagerly on a CPU


def test_stacked_constants_pass_a_shared_leaf_once_and_stack_the_others():
    a, b, shared = torch.ones(2), torch.zeros(2), torch.arange(3.0)
    consts, dims = stack_consts([{"own": a, "shared": shared}, {"own": b, "shared": shared}])
    assert dims == {"own": 0, "shared": None} and consts["shared"] is shared
    assert torch.equal(consts["own"], torch.stack([a, b]))
    alone, alone_dims = stack_consts([{"own": a, "shared": shared}])  # a cohort of one: every leaf its own
    assert alone_dims == {"own": None, "shared": None} and alone["own"] is a and alone["shared"] is shared
    with pytest.raises(ValueError, match=r"^the objective's prepare\(\) returned differently structured "
                                         r"constants per client$"):
        stack_consts([{"own": a}, {"other": a}, {"own": a}])


def test_kept_cohort_steps_are_reused_only_for_the_same_settings_and_constants(float64):
    cfg = setting("fedprox")
    model = model_for(cfg)
    objective = make_objective(cfg)
    start = dict(exchanged_state(model))
    clients = [CohortClient(images(6, seed=i), start, {}, seed=i) for i in range(2)]
    shared, dims = stack_consts([prepare(model, objective, c) for c in clients])
    params = {k: torch.stack([c.global_state[k] for c in clients]) for k in parameter_names(model)}

    def steps(objective, train, dims=dims):
        return cohort_steps(model, objective, params, shared, dims, train, CPU)

    assert dims == {k: None for k in params}  # FedProx's constants: the one global model, passed once
    assert type(steps(objective, cfg.train)) is CohortSteps
    graphed = dataclasses.replace(cfg.train, step_mode="cuda_graph")
    first = steps(objective, graphed)
    assert type(first) is GraphedCohortSteps and steps(objective, graphed) is first
    other = steps(objective, dataclasses.replace(graphed, lr=0.01))
    assert other is not first and other.optimizer.lr == 0.01
    kept = steps(objective, graphed)
    other_class = type("OtherObjective", (type(objective),), {})(objective.cfg)
    assert steps(other_class, graphed) is not kept  # another loss with the same settings
    kept = steps(objective, graphed)
    assert steps(make_objective(cfg.replace(method__mu=0.5)), graphed) is not kept  # the same class, other settings
    kept = steps(objective, graphed)
    assert steps(objective, graphed, {k: 0 for k in dims}) is not kept  # the same tensors, read per client


def test_a_cohort_client_whose_global_model_does_not_fit_is_refused():
    cfg = setting("fedavg")
    model = model_for(cfg)
    state = dict(exchanged_state(model))
    state.pop(next(iter(state)))
    with pytest.raises(CheckpointError, match=r"^the global model's tensors do not fit the model: missing \["):
        train_cohort(model, make_objective(cfg), [CohortClient(images(6), state, {}, seed=0)], TINY, cfg.train, False)


def test_bf16_runs_forward_and_loss_under_autocast_and_keeps_fp32_weights(one_thread):
    """One full-batch step of FedAvg under train.precision=bf16 is the step torch.autocast(bfloat16)
    gives by hand, not the fp32 one; weights, gradients and the state sent back stay float32. The
    cohort engine's step (vmapped, a cohort of one) is the same step."""
    data = images(12)
    cfg = setting("fedavg", precision="bf16", local_epochs=1, batch_size=12, momentum=0.0, weight_decay=0.0,
                  grad_clip=0.0)
    model = model_for(cfg)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    got = train_locally(model, make_objective(cfg), {}, data, TINY, cfg.train, False, seed=0)
    x, y = make_batch(data, batch_plan(12, cfg.train, TINY, False, 0, CPU)[0], TINY)
    by_hand, losses = {}, {}
    for precision in ("bf16", "fp32"):
        model.load_state_dict(start)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        losses[precision] = loss
        by_hand[precision] = {k: p.detach() - 0.05 * g for (k, p), g in zip(model.named_parameters(), grads)}
    cohort, = train_cohort(model, make_objective(cfg), [CohortClient(data, start, {}, seed=0)], TINY, cfg.train, False)
    assert got.steps == 1 and got.train_loss == got.ce_loss
    assert all(v.dtype == torch.float32 for v in got.state.values())
    assert max(float((got.state[k] - by_hand["fp32"][k]).abs().max()) for k in got.state) > 1e-5
    for result in (got, cohort):  # the client alone, then the cohort engine's step
        assert result.train_loss == pytest.approx(losses["bf16"].item(), rel=1e-6)
        for k, v in result.state.items():
            assert torch.allclose(v, by_hand["bf16"][k], rtol=0, atol=1e-6), k


def test_bf16_on_cuda_is_bfloat16_autocast_without_a_weight_cache():
    """CUDA's autocast defaults (float16, a weight-cast cache that would outlive a graph capture) are not
    what train.precision=bf16 asks for; the context is built here without running on CUDA."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available ... Disabling autocast" without a GPU
        context = autocast(TrainConfig(precision="bf16"), torch.device("cuda"))
    assert (context.device, context.fast_dtype, context._cache_enabled) == ("cuda", torch.bfloat16, False)
    assert isinstance(autocast(TrainConfig(), torch.device("cuda")), contextlib.nullcontext)


def test_channels_last_keeps_the_weights_nhwc_and_sends_plain_ones_back(float64, one_thread):
    data = images(23)
    plain = two_rounds(model_for(setting("fedprox")), setting("fedprox"), data, augment=True)
    model = model_for(setting("fedprox"))
    nhwc = two_rounds(model, setting("fedprox", channels_last=True), data, augment=True)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs)
    for a, b in zip(plain, nhwc):
        assert a.steps == b.steps
        for k in a.state:
            assert b.state[k].is_contiguous() and torch.allclose(a.state[k], b.state[k], rtol=1e-10, atol=1e-12), k


def test_step_runs_unbatched_for_a_plain_step():
    """make_batch of a single client's step gives [B, C, H, W] and [B]; a stacked one [clients, B, ...]."""
    data = images(10)
    step = Step(torch.tensor([3, 1, 4]), None)
    x, y = make_batch(data, step, TINY)
    assert x.shape == (3, 3, 8, 8) and x.is_contiguous() and torch.equal(y, data.y[[3, 1, 4]])  # NCHW by default
    x2, y2 = make_batch(data, stack_steps([step, Step(torch.tensor([0, 2, 9]), None)]), TINY)
    assert x2.shape == (2, 3, 3, 8, 8) and torch.equal(x2[0], x) and torch.equal(y2[1], data.y[[0, 2, 9]])


def test_step_graphs_capture_a_key_once_then_replay_it_and_run_a_failed_one_eagerly(monkeypatch):
    """StepGraphs' dispatch, with the CUDA capture and replay (tests/test_gpu.py) replaced by records."""
    calls = []

    def capture(self, key, step, inputs, before_capture):
        calls.append(("capture", key, step, inputs, before_capture))
        self.graphs[key] = (f"graph {key}", inputs)

    monkeypatch.setattr(StepGraphs, "_capture", capture)
    monkeypatch.setattr(StepGraphs, "_replay", staticmethod(lambda *args: calls.append(("replay", *args))))
    ran = []
    step, hook = (lambda *inputs: ran.append(inputs)), (lambda: None)
    GRAPH_STATS.__init__()
    a, b = torch.zeros(2), torch.ones(2)
    graphs = StepGraphs(torch.device("cuda"))  # a device object only: nothing runs on it here
    graphs.run((2,), step, (a,), before_capture=hook)
    graphs.run((2,), step, (b,))
    graphs.run((3,), step, (b,))
    assert calls == [("capture", (2,), step, (a,), hook), ("replay", "graph (2,)", (a,), (b,)),
                     ("capture", (3,), step, (b,), None)] and ran == []
    graphs.graphs[(4,)] = None  # a capture that failed: eager for good
    graphs.run((4,), step, (a,))
    StepGraphs(CPU).run((2,), step, (b,), before_capture=hook)
    assert ran == [(a,), (b,)] and len(calls) == 3 and GRAPH_STATS.eager == 2
