"""The batched evaluator: same numbers as a plain loop, BN recalibration by hand, dropout never on."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedsign.errors import ConfigError
from landscape.evaluator import Evaluator, ProbeData
from landscape.replay import Cursor, Replay


def bn_dropout_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                          nn.Flatten(), nn.Linear(4 * 8 * 8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    model[1].running_mean.fill_(3.0)  # stale statistics that recalibration must replace
    model[6].running_var.fill_(7.0)
    return model


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(1)
    x, y = torch.randn(120, 1, 8, 8), torch.randint(0, 10, (120,))
    bn_x = torch.randn(90, 1, 8, 8) * 2 + 0.5
    return ProbeData(x, y), ProbeData(bn_x, torch.zeros(90, dtype=torch.long))


def recalibrated_by_hand(model: nn.Module, bn_x: torch.Tensor, batch_size: int) -> nn.Module:
    """Reset running stats, then one train-mode pass with a cumulative average (momentum=None)."""
    model = copy.deepcopy(model)
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
            m.train()
    with torch.no_grad():
        for start in range(0, len(bn_x), batch_size):
            model(bn_x[start:start + batch_size])
    return model.eval()


@pytest.mark.parametrize("chunk", [1, 3])
def test_points_match_a_plain_loop_with_recomputed_bn_statistics(data, chunk):
    model = bn_dropout_model()
    test, bn = data
    evaluator = Evaluator(model, test, bn, batch_size=40, chunk=chunk)
    theta = evaluator.parameters()
    torch.manual_seed(2)
    d = {n: 0.3 * torch.randn_like(t) for n, t in theta.items()}
    lambdas = torch.linspace(-1, 1, 5)
    loss, error = evaluator.curve(theta, d, lambdas)
    for i, lam in enumerate(lambdas):
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in moved.named_parameters():
                p.add_(lam * d[n])
        moved = recalibrated_by_hand(moved, bn.x, 40)
        with torch.no_grad():
            logits = moved(test.x)
        assert float(loss[i]) == pytest.approx(float(F.cross_entropy(logits, test.y)), rel=1e-4)
        assert float(error[i]) == pytest.approx(float((logits.argmax(1) != test.y).float().mean()), abs=1e-6)


def test_bn_statistics_equal_a_full_pass_computed_by_hand(data):
    """One batch holding the whole recalibration set: running stats = mean / unbiased var of the BN input."""
    model = bn_dropout_model()
    test, bn = data
    evaluator = Evaluator(model, test, bn, batch_size=len(bn))
    theta = evaluator.parameters()
    stats = evaluator.bn_statistics({n: t.unsqueeze(0) for n, t in theta.items()}, dict(evaluator.buffers))
    with torch.no_grad():
        h = model[0](bn.x)  # input of the first BN
        mean1, var1 = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=True)
        z = F.relu(F.batch_norm(h, None, None, model[1].weight, model[1].bias, training=True))
        h2 = model[5](z.flatten(1))  # dropout off: identity
        mean2, var2 = h2.mean(0), h2.var(0, unbiased=True)
    torch.testing.assert_close(stats["1.running_mean"][0], mean1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["1.running_var"][0], var1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["6.running_mean"][0], mean2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["6.running_var"][0], var2, rtol=1e-5, atol=1e-6)
    hand = recalibrated_by_hand(model, bn.x, len(bn))
    torch.testing.assert_close(stats["6.running_var"][0], hand[6].running_var)


def test_evaluation_never_leaves_dropout_on_and_restores_modes(data):
    model = bn_dropout_model()
    model.train()  # the caller's mode, to be restored
    test, bn = data
    evaluator = Evaluator(model, test, bn, batch_size=50)
    theta = evaluator.parameters()
    zero = {n: torch.zeros_like(t) for n, t in theta.items()}
    first = evaluator.curve(theta, zero, [0.0, 0.0, 0.0])
    second = evaluator.curve(theta, zero, [0.0])
    assert torch.equal(first[0], first[0][:1].expand(3))  # deterministic: no dropout draws
    torch.testing.assert_close(first[0][:1], second[0])  # vmapped chunk vs single point
    hand = recalibrated_by_hand(model, bn.x, 50)
    with torch.no_grad():
        expected = F.cross_entropy(hand(test.x), test.y)  # eval mode: dropout off
    assert float(first[0][0]) == pytest.approx(float(expected), rel=1e-5)
    assert all(m.training for m in model.modules())
    assert model[1].track_running_stats and float(model[1].running_mean[0]) == 3.0  # buffers untouched
    assert int(model[1].num_batches_tracked) == 0


def test_recalibration_can_be_skipped_and_is_required_with_bn(data):
    model = bn_dropout_model()
    test, bn = data
    with pytest.raises(ConfigError, match="BatchNorm"):
        Evaluator(model, test, None)
    evaluator = Evaluator(model, test, None, recalibrate=False)
    theta = evaluator.parameters()
    loss, _ = evaluator.curve(theta, {n: torch.zeros_like(t) for n, t in theta.items()}, [0.0])
    with torch.no_grad():
        expected = F.cross_entropy(copy.deepcopy(model).eval()(test.x), test.y)  # the stored (stale) stats
    assert float(loss[0]) == pytest.approx(float(expected), rel=1e-5)


PLANS = {  # group -> (replayed modules, affine first moving layer, BN still recalibrated per point)
    "ALL": ([], "0", True),
    "1.*": (["0"], None, True),
    "5.*": (["0", "1", "2", "3", "4"], "5", True),
    "8.*": (["0", "1", "2", "3", "4", "5", "6", "7"], "8", False),
}


@pytest.mark.parametrize("group", list(PLANS))
def test_replayed_prefix_and_affine_first_layer_equal_full_passes_in_float64(data, group):
    """What is the same at every point is replayed (landscape.replay); the numbers equal full forward
    passes and the vmap path, in float64, for every place the first moving layer can be."""
    model = bn_dropout_model().double()
    test, bn = (ProbeData(d.x.double(), d.y) for d in data)
    names = [n for n, _ in model.named_parameters() if group == "ALL" or n.startswith(group[:-1])]
    torch.manual_seed(3)
    theta = {n: p.detach() for n, p in model.named_parameters()}
    d1, d2 = ({n: 0.3 * torch.randn_like(theta[n]) for n in names} for _ in range(2))
    plan = Replay.plan(copy.deepcopy(model).eval(), set(names), test.x[:1], 100, 2**30, 2, True, Cursor())
    assert (plan.constant, plan.affine, plan.needs_recalibration) == PLANS[group]
    coefficients = torch.tensor([[0.0, 0.0], [0.5, -1.0], [-1.0, 0.25], [1.0, 1.0]], dtype=torch.float64)
    results = [Evaluator(model, test, bn, batch_size=40, **kw).evaluate(theta, [d1, d2], coefficients)
               for kw in ({"chunk": 1}, {"chunk": 1, "replay_bytes": 0}, {"chunk": 4})]
    for loss, error in results[1:]:
        torch.testing.assert_close(results[0][0], loss, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(results[0][1], error, rtol=0, atol=0)


class Shared(nn.Module):
    """One Linear applied twice: replaying it would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(6, 6)
        self.classifier = nn.Linear(6, 3)

    def forward(self, x):
        return self.classifier(torch.tanh(self.layer(torch.tanh(self.layer(x)))))


def test_a_module_run_twice_is_not_replayed():
    torch.manual_seed(0)
    model = Shared().double()
    x, y = torch.randn(50, 6, dtype=torch.float64), torch.randint(0, 3, (50,))
    evaluator = Evaluator(model, ProbeData(x, y), recalibrate=False)
    theta = evaluator.parameters()
    d = {"layer.weight": torch.randn(6, 6, dtype=torch.float64)}
    loss, _ = evaluator.curve(theta, d, [0.5, -0.5])
    for lam, value in zip((0.5, -0.5), loss):
        moved = copy.deepcopy(model)
        with torch.no_grad():
            moved.layer.weight.add_(lam * d["layer.weight"])
            assert float(value) == pytest.approx(float(F.cross_entropy(moved(x), y)), rel=1e-12)


def test_cpu_chunk_is_chosen_by_timing_on_the_runs_own_points(data):
    model = bn_dropout_model().double()
    test, bn = (ProbeData(d.x[:16].double(), d.y[:16]) for d in data)
    evaluator = Evaluator(model, test, bn, batch_size=16)  # chunk=None: chosen
    theta = evaluator.parameters()
    d = {n: 0.1 * torch.ones_like(t) for n, t in theta.items()}
    lambdas = torch.linspace(-1, 1, 130, dtype=torch.float64)  # enough points to try a chunk of 2
    loss, _ = evaluator.curve(theta, d, lambdas)
    assert evaluator.chunk_used in (1, 2)
    reference, _ = Evaluator(model, test, bn, batch_size=16, chunk=1).curve(theta, d, lambdas)
    torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-12)
    short = Evaluator(model, test, bn, batch_size=16)
    short.curve(theta, d, lambdas[:5])
    assert short.chunk_used == evaluator.chunk_used  # the choice is kept for the same shapes


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(6, 8)
        self.classifier = nn.Linear(8, 3)

    def forward(self, x):
        return self.classifier(torch.tanh(self.hidden(x)))


class OtherTiny(Tiny):
    """The same parameters under another class name."""


def tiny(dtype=torch.float64, n=30):
    torch.manual_seed(0)
    model = Tiny().to(dtype)
    x, y = torch.randn(n, 6, dtype=dtype), torch.randint(0, 3, (n,))
    return model, ProbeData(x, y)


def loss_and_error_at(model: nn.Module, point: dict, data: ProbeData) -> tuple[float, float]:
    moved = copy.deepcopy(model).eval()
    with torch.no_grad():
        for n, p in moved.named_parameters():
            p.copy_(point[n])
        logits = moved(data.x)
    return float(F.cross_entropy(logits, data.y)), float((logits.argmax(1) != data.y).double().mean())


def test_settings_are_checked_and_the_chunk_used_is_reported():
    model, data = tiny()
    for kw in ({"batch_size": 0}, {"chunk": 0}):
        with pytest.raises(ConfigError) as err:
            Evaluator(model, data, recalibrate=False, **kw)
        assert str(err.value) == f"batch size ({kw.get('batch_size', 500)}) and chunk ({kw.get('chunk')}) must be >= 1"
    with pytest.raises(ConfigError) as err:
        Evaluator(bn_dropout_model(), data)
    assert str(err.value) == "the model has BatchNorm: give data to recompute its statistics, or skip recalibration"
    evaluator = Evaluator(model, data, recalibrate=False, batch_size=1, chunk=3)
    assert evaluator.chunk_used is None  # nothing evaluated yet
    theta = evaluator.parameters()
    loss, _ = evaluator.curve(theta, {"hidden.bias": torch.ones(8, dtype=torch.float64)}, [0.0, 0.5])
    assert evaluator.chunk_used == 3
    assert float(loss[1]) == pytest.approx(
        loss_and_error_at(model, {**theta, "hidden.bias": theta["hidden.bias"] + 0.5}, data)[0], rel=1e-12)
    with pytest.raises(ValueError) as err:
        evaluator.evaluate(theta, [theta], [[0.1, 0.2]])
    assert str(err.value) == "2 coefficients per point for 1 directions"


def test_the_default_batch_of_500_sets_the_recalibration_batches():
    """BN statistics average the batch statistics, so the batch size is part of the result: 1000
    recalibration images give 2 batches of 500 by default."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 10)).double()
    test = ProbeData(torch.randn(20, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (20,)))
    bn = ProbeData(torch.randn(1000, 1, 8, 8, dtype=torch.float64) * torch.linspace(0.1, 3, 1000)[:, None, None, None],
                   torch.zeros(1000, dtype=torch.long))
    results = {}
    for batch in (None, 500, 501):
        evaluator = Evaluator(model, test, bn, chunk=1, **({} if batch is None else {"batch_size": batch}))
        results[batch] = evaluator.buffers_at(evaluator.parameters())["2.running_var"]
    assert torch.equal(results[None], results[500]) and not torch.allclose(results[500], results[501], rtol=1e-6)
    hand = recalibrated_by_hand(model, bn.x, 500)
    torch.testing.assert_close(results[None], hand[2].running_var, rtol=1e-12, atol=0)


@pytest.mark.parametrize("points, chunk, steps", [(101, 1, list(range(6, 101, 6)) + [101]),
                                                  (101, 4, list(range(8, 101, 8)) + [101]),
                                                  (7, 1, list(range(1, 8))), (7, 2, [2, 4, 6, 7])])
def test_progress_reports_about_20_steps_up_to_the_total(points, chunk, steps):
    """About 20 steps of whole chunks; with fewer than 20 chunks in all, one step per chunk."""
    model, data = tiny(n=4)
    evaluator = Evaluator(model, data, recalibrate=False, chunk=chunk)
    theta = evaluator.parameters()
    calls = []
    d = {"classifier.bias": torch.ones(3, dtype=torch.float64)}
    loss, _ = evaluator.curve(theta, d, torch.linspace(-1, 1, points),
                              progress=lambda done, total: calls.append((done, total)))
    assert calls == [(s, points) for s in steps]
    assert len(loss) == points


def test_coefficients_count_in_float64_whatever_they_are_given_as():
    """0.1 given as a Python float (float32 to torch.as_tensor by default) moves theta by exactly 0.1."""
    model, data = tiny()
    theta = {n: p.detach() for n, p in model.named_parameters()}
    d = {n: torch.ones_like(t) for n, t in theta.items()}
    hand = [loss_and_error_at(model, {n: theta[n] + lam * d[n] for n in theta}, data)[0] for lam in (0.1, 0.3)]
    for chunk in (1, 2):
        evaluator = Evaluator(model, data, recalibrate=False, chunk=chunk)
        from_list, _ = evaluator.evaluate(theta, [d], [[0.1], [0.3]])
        along, _ = evaluator.curve(theta, d, [0.1, 0.3])
        for got in (from_list, along):
            assert got.tolist() == pytest.approx(hand, rel=1e-13, abs=0)


@pytest.mark.parametrize("chunk", [1, 2])
def test_one_image_and_a_base_other_than_the_models_own_parameters(chunk):
    """The mean over a 1-image probe set is that image's loss; parameters outside the direction are
    base's, not the model's."""
    model, data = tiny()
    one = ProbeData(data.x[:1], data.y[:1])
    theta = {n: p.detach() for n, p in model.named_parameters()}
    base = {n: t + 0.2 for n, t in theta.items()}
    d = {"classifier.weight": torch.ones_like(theta["classifier.weight"])}
    evaluator = Evaluator(model, one, recalibrate=False, chunk=chunk)
    loss, error = evaluator.evaluate(base, [d], [[0.5], [-0.5]])
    for k, lam in enumerate((0.5, -0.5)):
        point = {**base, "classifier.weight": base["classifier.weight"] + lam}
        want = loss_and_error_at(model, point, one)
        assert (float(loss[k]), float(error[k])) == pytest.approx(want, rel=1e-12)
    assert evaluator.buffers_at(base) == {}  # no buffers, no recalibration: the model's own (none)


def test_buffers_at_are_the_models_own_without_recalibration(data):
    model = bn_dropout_model()
    evaluator = Evaluator(model, data[0], recalibrate=False)
    buffers = evaluator.buffers_at(evaluator.parameters())
    assert buffers.keys() == dict(model.named_buffers()).keys()
    assert all(torch.equal(buffers[n], b) for n, b in model.named_buffers())


def test_a_model_that_is_one_batchnorm_layer(data):
    """BN statistics named without a module prefix (the model itself is the BN layer)."""
    torch.manual_seed(0)
    model = nn.BatchNorm1d(3).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([1.0, 2.0, -1.0]))
    x = torch.randn(40, 3, dtype=torch.float64)
    test, bn = ProbeData(x[:20], torch.randint(0, 3, (20,))), ProbeData(x[20:] * 3, torch.zeros(20, dtype=torch.long))
    theta = {n: p.detach() for n, p in model.named_parameters()}
    d = {"bias": torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)}
    results = [Evaluator(model, test, bn, batch_size=8, chunk=c).curve(theta, d, [0.0, 1.0]) for c in (1, 2)]
    hand = recalibrated_by_hand(model, bn.x, 8)
    with torch.no_grad():
        want = F.cross_entropy(hand(test.x), test.y)
    assert float(results[1][0][0]) == pytest.approx(float(want), rel=1e-12)
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=0)


class TwiceBN(nn.Module):
    """One BatchNorm layer applied twice per forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(6, 6)
        self.norm = nn.BatchNorm1d(6)
        self.classifier = nn.Linear(6, 3)

    def forward(self, x):
        return self.classifier(self.norm(torch.tanh(self.norm(self.layer(x)))))


def test_a_batchnorm_layer_run_twice_is_recalibrated_natively_one_point_at_a_time():
    torch.manual_seed(0)
    model = TwiceBN().double()
    x = torch.randn(60, 6, dtype=torch.float64)
    test, bn = ProbeData(x[:30], torch.randint(0, 3, (30,))), ProbeData(x[30:] + 1, torch.zeros(30, dtype=torch.long))
    theta = {n: p.detach() for n, p in model.named_parameters()}
    d = {n: 0.3 * torch.randn_like(t) for n, t in theta.items()}
    loss, _ = Evaluator(model, test, bn, batch_size=10, chunk=1).curve(theta, d, [0.0, 0.5, 1.0])
    for k, lam in enumerate((0.0, 0.5, 1.0)):
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in moved.named_parameters():
                p.add_(lam * d[n])
        moved = recalibrated_by_hand(moved, bn.x, 10)
        with torch.no_grad():
            assert float(loss[k]) == pytest.approx(float(F.cross_entropy(moved(test.x), test.y)), rel=1e-12)
    with pytest.raises(RuntimeError) as err:
        Evaluator(model, test, bn, batch_size=10, chunk=2).curve(theta, d, [0.0, 1.0])
    assert str(err.value) == "a BatchNorm layer ran more or fewer than once per forward pass"


def count_calls(module: nn.Module) -> list:
    """Forward calls of `module` and of its copies (deepcopy keeps hooks)."""
    calls = []
    module.register_forward_hook(lambda mod, args, out: calls.append(1))
    return calls


@pytest.mark.parametrize("points", [2, 6])
def test_what_is_the_same_at_every_point_runs_once_per_batch(data, monkeypatch, points):
    """Only the classifier moves: the layers before it run in the recording pass only (and once on one
    image to plan it), not at every point; the plan counts every image it will hold, each of the data
    and of the recalibration set, and the evaluator lets the replay go when the call ends."""
    import gc
    import weakref

    model = bn_dropout_model().double()
    test, bn = (ProbeData(d.x.double(), d.y) for d in data)
    conv = count_calls(model[0])
    plans, replays = [], []
    plan = Replay.plan

    def spy(*args):
        plans.append(args)
        replay = plan(*args)
        if replay is not None:
            replays.append(weakref.ref(replay))
        return replay
    monkeypatch.setattr(Replay, "plan", staticmethod(spy))
    evaluator = Evaluator(model, test, bn, batch_size=40, chunk=1)
    theta = evaluator.parameters()
    d = {"8.weight": torch.ones_like(theta["8.weight"])}
    loss, _ = evaluator.curve(theta, d, torch.linspace(-1, 1, points))
    batches = 3 + 3  # 120 test and 90 recalibration images in batches of 40
    assert len(conv) == batches + 1
    assert [(len(a[2]), a[3]) for a in plans] == [(1, 120 + 90)]
    gc.collect()
    assert replays[0]() is None  # not kept after the call
    reference, _ = Evaluator(model, test, bn, batch_size=40, chunk=1, replay_bytes=0).curve(
        theta, d, torch.linspace(-1, 1, points))
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=0)
    Evaluator(model, test, recalibrate=False, chunk=1).curve(theta, d, [0.0, 1.0])
    assert plans[-1][3] == 120  # without recalibration, the data only
    middle = {"5.weight": torch.ones_like(theta["5.weight"])}  # BN layer 6 follows: replayed and recalibrated
    evaluator.curve(theta, middle, torch.linspace(-1, 1, points))
    gc.collect()
    assert len(replays) == 3 and replays[-1]() is None  # nor the last BN layer it found with it


def test_recalibration_passes_stop_after_the_last_batchnorm_layer(data):
    """Without replay: after the first full pass has shown which BN layer runs last, recalibration passes
    stop there, in this call and the next ones, and the classifier runs only to evaluate."""
    model = bn_dropout_model().double()
    test, bn = (ProbeData(d.x.double(), d.y) for d in data)
    classifier = count_calls(model[8])
    evaluator = Evaluator(model, test, bn, batch_size=40, chunk=1, replay_bytes=0)
    theta = evaluator.parameters()
    d = {n: 0.1 * torch.ones_like(t) for n, t in theta.items()}
    evaluator.curve(theta, d, torch.linspace(-1, 1, 6))
    # 6 points x 3 test batches + one image to plan a replay (none fits in 0 bytes) + the first
    # recalibration batch, in full
    assert len(classifier) == 6 * 3 + 1 + 1
    evaluator.curve(theta, d, torch.linspace(-1, 1, 6))
    assert len(classifier) == 2 * (6 * 3 + 1) + 1  # the next call knows the last BN layer already


class FakeTime:
    """A clock that only the fake runs below advance."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


def timed_runs(monkeypatch, evaluator: Evaluator, cost: dict[int, float]) -> list:
    """Replace the evaluator's runs by ones that cost `cost[chunk]` seconds per point on a fake clock and
    return each point's coefficient as its loss; returns the list of (chunk, first point, points) run."""
    import landscape.evaluator as module

    clock, runs = FakeTime(), []
    monkeypatch.setattr(module, "time", clock)

    def run(chunk, base, directions, coefficients):
        runs.append((chunk, int(coefficients[0, 0]) if len(coefficients) else None, len(coefficients)))
        clock.now += cost[chunk] * len(coefficients)
        return coefficients[:, 0].clone(), torch.zeros(len(coefficients), dtype=torch.float64)
    monkeypatch.setattr(evaluator, "_run", run)
    return runs


FASTEST_4 = {1: 1.0, 2: 0.6, 4: 0.5, 8: 0.7}  # seconds per point


@pytest.mark.parametrize("points, cost, tried, chosen", [
    (120, FASTEST_4, [], 1),  # 119 points after the first: fewer than 60 x 2, no trial
    (121, FASTEST_4, [(1, 0, 1), (2, 1, 2)], 2),  # 118 left: fewer than 60 x 4
    (242, FASTEST_4, [(1, 0, 1), (2, 1, 2)], 2),
    (243, FASTEST_4, [(1, 0, 1), (2, 1, 2), (4, 3, 4)], 4),  # 240 left: chunk 4 tried
    (1000, FASTEST_4, [(1, 0, 1), (2, 1, 2), (4, 3, 4), (8, 7, 8)], 4),  # 8 is slower: 4 kept
    (1000, {1: 1.0, 2: 0.5, 4: 0.5, 8: 0.1}, [(1, 0, 1), (2, 1, 2), (4, 3, 4)], 2),  # no faster than 2: stop
    (1000, {1: 1.0, 2: 1.5, 4: 0.1, 8: 0.1}, [(1, 0, 1), (2, 1, 2)], 1),  # 2 slower than one at a time
])
def test_the_cpu_chunk_trials_by_a_fake_clock(monkeypatch, points, cost, tried, chosen):
    """_choose_chunk on a clock the test controls: which chunks are tried on which of the run's own
    points, the one kept, every point evaluated once and in order."""
    import landscape.evaluator as module

    monkeypatch.setattr(module, "_tuned", {})
    model, data = tiny(n=4)
    evaluator = Evaluator(model, data, recalibrate=False)
    runs = timed_runs(monkeypatch, evaluator, cost)
    theta = evaluator.parameters()
    d = {"classifier.bias": torch.ones(3, dtype=torch.float64)}
    loss, _ = evaluator.curve(theta, d, torch.arange(points))
    setup = [(1, None, 0)] if tried else []  # the working copy made before the clock starts
    done = sum(n for _, _, n in tried)
    assert runs == setup + tried + [(chosen, done, points - done)]
    assert evaluator.chunk_used == chosen and torch.equal(loss, torch.arange(points, dtype=torch.float64))
    assert list(module._tuned.values()) == ([chosen] if tried else [])


def test_a_chunk_choice_is_kept_only_for_the_same_model_group_dtype_and_recalibration_data(monkeypatch, data):
    import landscape.evaluator as module

    monkeypatch.setattr(module, "_tuned", {})
    lambdas = torch.arange(300)

    def choice(model, probe, cost, names=None, bn=None):
        evaluator = Evaluator(model, probe, bn, recalibrate=bn is not None)
        runs = timed_runs(monkeypatch, evaluator, cost)
        theta = evaluator.parameters()
        loss, _ = evaluator.curve(theta, {n: torch.ones_like(theta[n]) for n in names or theta}, lambdas)
        assert torch.equal(loss, lambdas.to(loss.dtype))  # every point once, in order, kept choice or not
        return evaluator.chunk_used, len(runs)

    slow_4 = {1: 1.0, 2: 0.6, 4: 0.9, 8: 1.0}
    model, probe = tiny(n=4)
    assert choice(model, probe, FASTEST_4) == (4, 5)  # set-up, 1, 2, 4, then the rest
    assert choice(model, probe, slow_4) == (4, 1)  # the same key: kept, all points in one run
    assert choice(OtherTiny().double(), probe, slow_4) == (2, 5)  # another model class
    assert choice(model, probe, slow_4, names=["classifier.bias"]) == (2, 5)  # another group
    assert choice(model.float(), ProbeData(probe.x.float(), probe.y), slow_4) == (2, 5)  # another dtype
    bn_model = bn_dropout_model()
    assert choice(bn_model, data[0], FASTEST_4, bn=data[1]) == (4, 5)
    assert choice(bn_model, data[0], slow_4, bn=ProbeData(data[1].x[:60], data[1].y[:60])) == (2, 5)
