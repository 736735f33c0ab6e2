"""Directions, scaling and parameter groups of the landscape probes (paper Sect. 3.2, 4.1)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fedsign.data.specs import dataset_spec
from fedsign.errors import ConfigError
from fedsign.models import build_model
from landscape.directions import (COMMON_NOISES, noise_direction, norm, scale_direction, sign_ratio_direction,
                                  special_direction)
from landscape.evaluator import Evaluator, ProbeData
from landscape.groups import category_of, group_names


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model("smallcnn_bn", dataset_spec("digits"))
    with torch.no_grad():  # non-trivial BN affine parameters and some exact zeros
        for name, p in m.named_parameters():
            p.add_(0.1 * torch.randn_like(p))
        m.classifier.weight[0, :5] = 0.0
    return m


def theta_of(model):
    return {n: p.detach() for n, p in model.named_parameters()}


@pytest.mark.parametrize("scale", [0.2, 1.0, 2.0])
@pytest.mark.parametrize("noise", list(COMMON_NOISES))
def test_norm_scaled_noise_has_s_times_theta_norm(model, noise, scale):
    theta = theta_of(model)
    names = group_names(model, "ALL")
    unit = scale_direction(noise_direction(theta, names, noise, seed=3), theta, "ns")
    assert norm({n: scale * d for n, d in unit.items()}) == pytest.approx(scale * norm(theta), rel=1e-5)


@pytest.mark.parametrize("noise", list(COMMON_NOISES))
def test_sign_replaced_noise_agrees_with_theta_where_theta_is_nonzero(model, noise):
    theta = theta_of(model)
    names = group_names(model, "ALL")
    plain = noise_direction(theta, names, noise, seed=1)
    signed = noise_direction(theta, names, noise, seed=1, sign=True)
    for n in names:
        nonzero = (theta[n] != 0) & (plain[n] != 0)
        assert torch.equal(torch.sign(signed[n])[nonzero], torch.sign(theta[n])[nonzero])
        assert torch.equal(signed[n].abs(), plain[n].abs() * (theta[n] != 0))  # |eps| kept, 0 where theta = 0
    assert (theta["classifier.weight"][0, :5] == 0).all() and (signed["classifier.weight"][0, :5] == 0).all()


def test_filter_ns_gives_every_filter_the_norm_of_thetas_filter(model):
    theta = theta_of(model)
    names = group_names(model, "ALL")
    scaled = scale_direction(noise_direction(theta, names, "gaussian", seed=2), theta, "filter")
    for n in names:
        if theta[n].dim() > 1:
            got, want = scaled[n].flatten(1).norm(dim=1), theta[n].flatten(1).norm(dim=1)
        else:
            got, want = scaled[n].norm(), theta[n].norm()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_noise_is_seeded_per_parameter_name(model):
    theta = theta_of(model)
    all_noise = noise_direction(theta, group_names(model, "ALL"), "gaussian", seed=5)
    clf_noise = noise_direction(theta, group_names(model, "CLF"), "gaussian", seed=5)
    assert set(clf_noise) == {"classifier.weight", "classifier.bias"}
    for n in clf_noise:
        assert torch.equal(clf_noise[n], all_noise[n])
    other = noise_direction(theta, group_names(model, "CLF"), "gaussian", seed=6)
    assert not torch.equal(other["classifier.weight"], clf_noise["classifier.weight"])


def test_sign_ratio_construction(model):
    theta = theta_of(model)
    names = group_names(model, "FEAT")
    base = noise_direction(theta, names, "gaussian", seed=0)
    agree = lambda d: sum(int((torch.sign(d[n]) == torch.sign(theta[n])).sum()) for n in names)  # noqa: E731
    assert all(torch.equal(sign_ratio_direction(theta, names, 0.0, seed=0)[n], base[n]) for n in names)
    full = sign_ratio_direction(theta, names, 1.0, seed=0)
    assert all(torch.equal(full[n], base[n].abs() * torch.sign(theta[n])) for n in names)
    half = sign_ratio_direction(theta, names, 0.5, seed=0)
    for n in names:
        assert torch.equal(half[n].abs(), base[n].abs())  # only signs change (theta has no zeros here)
        assert int((half[n] != base[n]).sum()) <= round(0.5 * base[n].numel())
    assert agree(base) < agree(half) < agree(full)
    with pytest.raises(ConfigError):
        sign_ratio_direction(theta, names, 1.5, seed=0)


def test_special_directions(model):
    theta = theta_of(model)
    names = group_names(model, "ALL")
    w = theta["classifier.weight"]
    assert torch.equal(special_direction(theta, names, "sign")["classifier.weight"], torch.sign(w))
    assert torch.equal(special_direction(theta, names, "sgp_centered")["classifier.weight"], (w > w.mean()).float())
    with pytest.raises(ConfigError, match="--init"):
        special_direction(theta, names, "init")


def test_groups_and_categories(model):
    names = [n for n, _ in model.named_parameters()]
    assert group_names(model, "ALL") == names
    assert group_names(model, "CLF") == ["classifier.weight", "classifier.bias"]
    assert set(group_names(model, "FEAT")) == set(names) - {"classifier.weight", "classifier.bias"}
    assert group_names(model, "BN") == ["features.1.weight", "features.1.bias", "features.6.weight", "features.6.bias"]
    assert group_names(model, "CONV") == ["features.0.weight", "features.0.bias", "features.5.weight", "features.5.bias"]
    assert group_names(model, "LAYER1") == ["features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias"]
    assert group_names(model, "features.5.*,classifier.bias") == ["features.5.weight", "features.5.bias", "classifier.bias"]
    with pytest.raises(ConfigError, match="selects no parameter"):
        group_names(model, "nothing.*")
    cats = category_of(model)
    assert cats["features.1.weight"] == "bn_weight" and "features.1.bias" not in cats
    assert cats["classifier.weight"] == "clf_weight" and cats["classifier.bias"] == "clf_bias"
    assert cats["features.0.weight"] == "other_weight" and cats["features.0.bias"] == "other_bias"


def test_group_restriction_leaves_other_parameters_untouched(model):
    """Evaluating theta + lambda * d_CLF equals a copy of the model in which only the classifier moved."""
    torch.manual_seed(1)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    evaluator = Evaluator(model, ProbeData(x, y), recalibrate=False)
    theta = evaluator.parameters()
    names = group_names(model, "CLF")
    d = scale_direction(noise_direction(theta, names, "gaussian", seed=0), theta, "ns")
    assert set(d) == set(names)
    loss, _ = evaluator.curve(theta, d, [0.7])
    moved = copy.deepcopy(model).eval()
    with torch.no_grad():
        for n, p in moved.named_parameters():
            if n in names:
                p.add_(0.7 * d[n])
            else:
                assert torch.equal(p, theta[n])
        expected = F.cross_entropy(moved(x), y)
    assert float(loss[0]) == pytest.approx(float(expected), rel=1e-5)
    assert all(torch.equal(p, theta[n]) for n, p in model.named_parameters())  # theta itself never modified


@pytest.mark.parametrize("form", ["element", "vector", "zero"])
def test_filter_ns_of_1d_tensors_by_hand(form):
    """Filter-NS on hand-picked numbers: a 2x2 weight (two filters) and a 3-element bias."""
    theta = {"w": torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64),
             "b": torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)}
    eps = {"w": torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64),
           "b": torch.tensor([-4.0, 0.5, 0.0], dtype=torch.float64)}
    scaled = scale_direction(eps, theta, "filter", form)
    # filters (rows) to the norm of theta's rows, 5 and 2, whatever the 1-D form
    torch.testing.assert_close(scaled["w"], torch.tensor([[5.0, 0.0], [2 ** 0.5, 2 ** 0.5]], dtype=torch.float64))
    expected = {
        "element": [-1.0, 2.0, 0.0],  # sign(eps_i) |theta_i|; eps_i = 0 stays 0
        "vector": [v * (5.25 ** 0.5) / (16.25 ** 0.5) for v in (-4.0, 0.5, 0.0)],  # eps ||theta|| / ||eps||
        "zero": [0.0, 0.0, 0.0],
    }[form]
    torch.testing.assert_close(scaled["b"], torch.tensor(expected, dtype=torch.float64))


def test_filter_ns_refuses_a_direction_it_zeroes_and_unknown_forms(model):
    theta = theta_of(model)
    names = group_names(model, "BN")  # 1-D tensors only
    eps = noise_direction(theta, names, "gaussian", seed=0)
    with pytest.raises(ConfigError, match="zero everywhere"):
        scale_direction(eps, theta, "filter", "zero")
    with pytest.raises(ConfigError, match="filter_1d"):
        scale_direction(eps, theta, "filter", "biasbn")
