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
