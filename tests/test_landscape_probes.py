"""Probe functions on tiny models: asymmetry metrics, non-square surfaces, interpolation, SSR, soups, mining."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedsign.errors import ConfigError
from landscape.directions import noise_direction, scale_direction, sign_ratio_direction
from landscape.evaluator import Evaluator, ProbeData
from landscape.interp import barrier, evaluate_points, greedy_soup, interpolate, uniform_soup
from landscape.mine import mine_vvv, mine_wpeak
from landscape.signs import distribution_summary, sign_consistency_ratio
from landscape.surface import surface
from landscape.train import train_classifier
from landscape.valley import Direction, asymmetry_metrics, check_lambdas, common_noise_directions, valley


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(6, 8)
        self.classifier = nn.Linear(8, 3)

    def forward(self, x):
        return self.classifier(torch.relu(self.hidden(x)))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = Tiny()
    x = torch.randn(90, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    train_classifier(model, ProbeData(x, y), epochs=30, lr=0.1, batch_size=30)
    evaluator = Evaluator(model, ProbeData(x, y), recalibrate=False, chunk=4)
    return model, evaluator, evaluator.parameters()


def test_asymmetry_metrics_on_a_known_curve():
    lams = np.linspace(-1, 1, 21)
    loss = np.where(lams < 0, 4 * lams**2, lams**2)  # sharper on the - side
    error = np.where(lams < 0, 0.5 * np.abs(lams), 0.1 * lams)
    m = asymmetry_metrics(lams, loss, error, loss_delta=0.25)
    assert m["asymmetry"] == pytest.approx(0.1 * lams[lams > 0].mean() - 0.5 * np.abs(lams[lams < 0]).mean())
    assert m["width_plus"] == pytest.approx(0.5, abs=0.01)  # loss = lambda^2 reaches 0.25 at 0.5
    assert m["width_minus"] == pytest.approx(0.25, abs=0.01)
    assert m["width_ratio"] == pytest.approx(2.0, rel=0.05)
    assert not m["width_plus_censored"]
    assert asymmetry_metrics(lams, loss, error, loss_delta=10.0)["width_plus_censored"]


def test_valley_returns_one_curve_per_direction_and_scale(setup):
    model, evaluator, theta = setup
    names = list(theta)
    dirs = [Direction("gaussian", s, noise_direction(theta, names, "gaussian", 0, sign=s)) for s in (False, True)]
    result = valley(evaluator, theta, dirs, scales=(0.5, 1.0), lambdas=np.linspace(-1, 1, 5))
    assert [(c["sign_consistent"], c["scale"]) for c in result.arrays["curves"]] == \
        [(False, 0.5), (False, 1.0), (True, 0.5), (True, 1.0)]
    c = result.arrays["curves"][3]
    unit = scale_direction(dirs[1].values, theta, "ns")
    loss, error = evaluator.curve(theta, unit, np.linspace(-1, 1, 5))
    torch.testing.assert_close(c["loss"], loss)
    assert c["asymmetry"] == pytest.approx(float(error[3:].mean() - error[:2].mean()))


def test_surface_on_a_non_square_grid(setup):
    _, evaluator, theta = setup
    names = list(theta)
    d1 = scale_direction(noise_direction(theta, names, "gaussian", 1), theta, "ns")
    d2 = scale_direction(noise_direction(theta, names, "uniform", 2), theta, "ns")
    xs, ys = np.linspace(-1, 1, 4), np.linspace(-0.5, 0.5, 3)
    result = surface(evaluator, theta, d1, d2, xs, ys)
    assert result.arrays["loss"].shape == (3, 4)
    for i, j in [(0, 3), (2, 0), (1, 2)]:
        point = {n: theta[n] + xs[j] * d1[n] + ys[i] * d2[n] for n in names}
        loss, error = evaluate_points(evaluator, [point])
        assert result.arrays["loss"][i, j] == pytest.approx(float(loss[0]), rel=1e-5)
        assert result.arrays["error"][i, j] == pytest.approx(float(error[0]), abs=1e-6)


def test_interpolation_barrier_gap_and_ssr(setup):
    model, evaluator, theta = setup
    b = {n: -t for n, t in theta.items()}  # every sign flipped
    result = interpolate(evaluator, model, theta, b, lambdas=np.linspace(0, 1, 3))
    a = result.arrays
    assert list(a["lambdas"]) == [0.0, 0.5, 1.0]
    mid_loss, _ = evaluate_points(evaluator, [{n: 0 * t for n, t in theta.items()}])
    assert a["loss"][1] == pytest.approx(float(mid_loss[0]), rel=1e-5)  # (A + B) / 2 = 0
    acc = 1 - np.asarray(a["error"])
    assert a["gap"] == pytest.approx(acc[1] - 0.5 * (acc[0] + acc[2]))
    assert a["ssr"]["A-B"]["ALL"] == 0.0 and a["ssr"]["A-B"]["CLF"] == 0.0
    assert barrier(np.array([0, 0.5, 1.0]), np.array([1.0, 3.0, 2.0])) == pytest.approx(1.5)


def test_ssr_and_distribution_summary(setup):
    model, _, theta = setup
    other = {n: t.clone() for n, t in theta.items()}
    other["classifier.bias"] = -other["classifier.bias"]
    total = sum(t.numel() for t in theta.values())
    assert sign_consistency_ratio(theta, other, list(theta)) == pytest.approx(1 - 3 / total)
    summary = distribution_summary(model, theta)
    assert set(summary) == {"clf_weight", "clf_bias", "other_weight", "other_bias"}
    assert summary["clf_bias"]["mean"] == pytest.approx(float(theta["classifier.bias"].double().mean()))


def test_soups(setup):
    _, evaluator, theta = setup
    bad = {n: torch.zeros_like(t) for n, t in theta.items()}
    soup = uniform_soup([theta, bad])
    torch.testing.assert_close(soup["hidden.weight"], theta["hidden.weight"] / 2)
    _, errors = evaluate_points(evaluator, [bad, theta])
    assert errors[1] < errors[0] - 0.2
    greedy, kept = greedy_soup(evaluator, [bad, theta, theta])
    assert 0 not in kept and kept[0] == 1  # the best ingredient first; the zero model never helps
    torch.testing.assert_close(greedy["hidden.weight"], theta["hidden.weight"])


def test_mining_algorithms_return_directions_over_the_group(setup):
    model, evaluator, theta = setup
    names = ["classifier.weight", "classifier.bias"]
    eps, history = mine_wpeak(model, theta, names, evaluator.data, epochs=2, lr=0.1, batch_size=30, seed=0)
    assert set(eps) == set(names) and len(history) == 2 and any(float(e.abs().sum()) > 0 for e in eps.values())
    eps2, history2 = mine_vvv(model, theta, names, evaluator.data, epochs=2, lr=0.1, batch_size=30, seed=0)
    assert set(eps2) == set(names) and len(history2) == 2
    again, _ = mine_wpeak(model, theta, names, evaluator.data, epochs=2, lr=0.1, batch_size=30, seed=0)
    assert all(torch.equal(again[n], eps[n]) for n in names)  # seeded


class _SignCountingEvaluator:
    """A stand-in evaluator with a closed-form curve: at λ along a unit direction d, error = s·λ + 0.1
    and loss = λ² + s, with s the fraction of d's entries that carry θ's sign."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def curve(self, theta, unit, lams, progress=None):
        agree = sum(int((torch.sign(unit[k]) == torch.sign(theta[k])).sum()) for k in unit)
        s = agree / sum(v.numel() for v in unit.values())
        self.seen.append(s)
        lams = torch.as_tensor(lams, dtype=torch.float64)
        return lams**2 + s, s * lams + 0.1


def test_sign_sweep_numbers_against_a_hand_computation_on_both_sides():
    """Mean error and loss over λ >= 0 and over λ <= 0 (λ = 0 on both sides), for each ratio r, with
    the share of sign-consistent entries the directions carry: r of them, the rest half by chance.
    Mutants killed: swapped sides, a side without λ = 0, the ratio not applied, the scale dropped
    (the old test checked only the lengths of the arrays)."""
    from landscape.sign_sweep import sign_sweep

    gen = torch.Generator().manual_seed(0)
    theta = {"w": torch.randn(400, 50, generator=gen), "b": torch.randn(1000, generator=gen)}
    fake = _SignCountingEvaluator()
    lams = np.array([-1.0, -0.5, 0.0, 0.25, 1.0])
    out = sign_sweep(fake, theta, ["w", "b"], ratios=[0.0, 0.5, 1.0], lambdas=lams, scale=2.0, seed=3)
    s = np.array(fake.seen)
    assert s[2] == 1.0 and abs(s[0] - 0.5) < 0.02 and abs(s[1] - 0.75) < 0.02
    scaled = 2.0 * lams
    pos, neg = scaled[lams >= 0], scaled[lams <= 0]  # [0, 0.5, 2] and [-2, -1, 0]
    for i, si in enumerate(s):
        assert out.arrays["pos_error"][i] == pytest.approx(np.mean(si * pos + 0.1), abs=1e-12)
        assert out.arrays["neg_error"][i] == pytest.approx(np.mean(si * neg + 0.1), abs=1e-12)
        assert out.arrays["pos_loss"][i] == pytest.approx(np.mean(pos**2 + si), abs=1e-12)
        assert out.arrays["neg_loss"][i] == pytest.approx(np.mean(neg**2 + si), abs=1e-12)
    assert out.arrays["error"].shape == (3, 5) and list(out.arrays["ratios"]) == [0.0, 0.5, 1.0]


def test_side_widths_and_metrics_by_hand():
    """λ = -1, -0.5, 0, 0.5, 1 with loss 5, 1.5, 0, 0.5, 3 and L(0) + 1 = 1: the + side reaches 1 at
    0.5 + 0.5 (1 - 0.5) / (3 - 0.5) = 0.6, the - side at 0.5 (1 - 0) / (1.5 - 0) = 1/3."""
    lams = [-1.0, -0.5, 0.0, 0.5, 1.0]
    loss = np.array([5.0, 1.5, 0.0, 0.5, 3.0])
    error = np.array([0.9, 0.4, 0.1, 0.2, 0.5])
    m = asymmetry_metrics(lams, loss, error)  # loss_delta 1 by default
    assert m == pytest.approx({
        "asymmetry": 0.35 - 0.65, "loss_asymmetry": 1.75 - 3.25, "width_threshold": 1.0,
        "width_plus": 0.6, "width_minus": 1 / 3, "width_plus_censored": False, "width_minus_censored": False,
        "width_ratio": 1.8}, abs=1e-12)
    censored = asymmetry_metrics(lams, loss, error, loss_delta=4.0)  # the + side never reaches 4
    assert censored["width_plus"] == 1.0 and censored["width_plus_censored"] is True
    assert censored["width_minus"] == pytest.approx(0.5 + 0.5 * (4 - 1.5) / (5 - 1.5))
    assert censored["width_minus_censored"] is False
    flat = asymmetry_metrics(lams, np.ones(5), error, loss_delta=0.0)  # the threshold is L(0): width 0
    assert (flat["width_plus"], flat["width_minus"], flat["width_ratio"]) == (0.0, 0.0, None)
    assert flat["width_plus_censored"] is False and flat["width_minus_censored"] is False
    steps = asymmetry_metrics([-1.0, 0.0, 1.0, 2.0], np.array([0.0, 0.0, 0.0, 0.5]), np.zeros(4), loss_delta=0.0)
    assert steps["width_plus"] == 0.0 and steps["width_minus"] == 0.0  # the first step away already meets it
    touch = asymmetry_metrics([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], np.array([3.0, 0.5, 1.0, 0.0, 1.0, 0.5, 3.0]),
                              np.zeros(7))  # the loss touches L(0) + 1 at |λ| = 0.5, dips, then rises
    assert (touch["width_plus"], touch["width_minus"]) == (0.5, 0.5)


def test_metrics_are_computed_in_float64_from_float32_curves():
    lams = np.array([-1.0, 0.0, 1.0, 2.0, 3.0])
    error = np.array([0.3, 0.0, 0.1, 0.2, 0.7], dtype=np.float32)
    want = error[2:].astype(np.float64).mean() - float(error[0])  # λ > 0 minus λ < 0
    assert float(error[2:].mean()) - float(error[0]) != want  # float32 arithmetic would round differently
    assert asymmetry_metrics(lams, error, error)["asymmetry"] == want


def test_lambdas_are_refused_unless_finite_and_on_both_sides_of_zero():
    assert check_lambdas([-1, 1]).dtype == np.float64
    assert list(check_lambdas([-0.5, 0.25])) == [-0.5, 0.25]
    for bad, message in [([0.0, 1.0], "the valley needs lambdas on both sides of 0 (got 0 .. 1)"),
                         ([0.5, 1.0], "the valley needs lambdas on both sides of 0 (got 0.5 .. 1)"),
                         ([-1.0, 0.0], "the valley needs lambdas on both sides of 0 (got -1 .. 0)"),
                         ([-1.0, np.inf], "lambdas must be finite numbers"),
                         ([np.nan, 1.0], "lambdas must be finite numbers")]:
        with pytest.raises(ConfigError) as err:
            check_lambdas(bad)
        assert str(err.value) == message


def test_common_noise_directions_in_order_with_their_labels(setup):
    _, _, theta = setup
    names = ["classifier.weight"]
    dirs = common_noise_directions(theta, names, ["uniform", "binary"], [False, True], seed=7)
    assert [(d.noise, d.sign_consistent) for d in dirs] == \
        [("uniform", False), ("uniform", True), ("binary", False), ("binary", True)]
    for d in dirs:
        want = noise_direction(theta, names, d.noise, 7, sign=d.sign_consistent)
        assert set(d.values) == set(names) and torch.equal(d.values[names[0]], want[names[0]])


def test_valley_result_holds_every_field_with_the_settings_passed_on(setup):
    _, evaluator, theta = setup
    names = list(theta)
    d = Direction("gaussian", True, noise_direction(theta, names, "gaussian", 0, sign=True))
    lams = np.linspace(-1, 1, 5)
    calls = []
    result = valley(evaluator, theta, [d], scales=(2,), lambdas=lams, scaling="filter", filter_1d="vector",
                    loss_delta=0.05, metadata={"group": "ALL"},
                    progress=lambda done, total: calls.append((done, total)))
    assert result.probe == "valley" and set(result.arrays) == {"lambdas", "curves"}
    assert result.metadata == {"group": "ALL", "loss_delta": 0.05, "scales": [2.0], "filter_1d": "vector"}
    assert calls and calls[-1] == (5, 5)
    (curve,) = result.arrays["curves"]
    unit = scale_direction(d.values, theta, "filter", "vector")
    loss, error = evaluator.curve(theta, unit, 2 * lams)
    torch.testing.assert_close(curve["loss"], loss)
    torch.testing.assert_close(curve["error"], error)
    metrics = asymmetry_metrics(lams, loss.numpy(), error.numpy(), 0.05)
    assert curve == {"noise": "gaussian", "sign_consistent": True, "scale": 2.0, "loss": curve["loss"],
                     "error": curve["error"], **metrics}
    assert valley(evaluator, theta, [d], lambdas=lams).metadata["loss_delta"] == 1.0  # the default


def test_valley_refuses_scales_that_are_not_positive_numbers(setup):
    _, evaluator, theta = setup
    d = Direction("gaussian", False, noise_direction(theta, list(theta), "gaussian", 0))
    for scales, message in [((), "scales must be positive numbers (got [])"),
                            ((0.0,), "scales must be positive numbers (got [0.0])"),
                            ((1.0, np.inf), "scales must be positive numbers (got [1.0, inf])"),
                            ((np.nan,), "scales must be positive numbers (got [nan])")]:
        with pytest.raises(ConfigError) as err:
            valley(evaluator, theta, [d], scales=scales, lambdas=[-1.0, 1.0])
        assert str(err.value) == message


class _RecordingEvaluator(_SignCountingEvaluator):
    def curve(self, theta, unit, lams, progress=None):
        self.units = getattr(self, "units", []) + [unit]
        self.progress = progress
        return super().curve(theta, unit, lams)


def test_sign_sweep_result_fields_defaults_and_settings_passed_on():
    from landscape.sign_sweep import sign_sweep

    gen = torch.Generator().manual_seed(1)
    theta = {"w": torch.randn(30, 20, generator=gen, dtype=torch.float64),
             "b": torch.randn(20, generator=gen, dtype=torch.float64)}
    fake = _RecordingEvaluator()
    tick = lambda done, total: None  # noqa: E731
    out = sign_sweep(fake, theta, ["w", "b"], ratios=[0, 1], lambdas=[-1, 0, 1], scaling="filter", filter_1d="zero",
                     metadata={"group": "FEAT"}, progress=tick)
    assert out.probe == "sign-sweep" and fake.progress is tick
    assert out.metadata == {"group": "FEAT", "scale": 1.0, "filter_1d": "zero"}
    assert set(out.arrays) == {"ratios", "lambdas", "pos_error", "neg_error", "pos_loss", "neg_loss", "error", "loss"}
    assert out.arrays["ratios"].dtype == np.float64 and out.arrays["lambdas"].dtype == np.float64
    assert all(torch.equal(u["b"], torch.zeros(20, dtype=torch.float64)) for u in fake.units)  # 1-D: zero
    for r, u in zip([0.0, 1.0], fake.units):
        want = scale_direction(sign_ratio_direction(theta, ["w", "b"], r, 0), theta, "filter", "zero")  # seed 0
        assert torch.equal(u["w"], want["w"])
    np.testing.assert_array_equal(out.arrays["loss"], np.array([np.array([1.0, 0.0, 1.0]) + s for s in fake.seen]))
