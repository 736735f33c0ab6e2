"""Directions, scaling and parameter groups of the landscape probes (paper Sect. 3.2, 4.1)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fedsign.data.specs import dataset_spec
from fedsign.errors import ConfigError
from fedsign.models import build_model
from fedsign.checkpoint import load_checkpoint
from fedsign.errors import CheckpointError
from landscape.directions import (COMMON_NOISES, difference, generator_for, load_direction, noise_direction, norm,
                                  save_direction, scale_direction, sign_ratio_direction, special_direction)
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


def test_generator_seeds_are_pinned_so_a_seed_draws_the_same_direction_in_every_release():
    """A probe's JSON records its seed; the same seed must give the same direction in later versions.
    The generator seeds are crc32(f"{seed}/{stream}/{name}") + 1000003 * seed, written out here."""
    assert generator_for(0, "w").initial_seed() == 3045908934  # default stream: "noise"
    assert generator_for(3, "features.0.weight").initial_seed() == 815723257
    assert generator_for(3, "features.0.weight", "ratio").initial_seed() == 3553984354


def test_noise_draws_from_its_own_generator_per_name_and_reproduces():
    """Each tensor's noise comes from generator_for(seed, name): two tensors of one shape differ, a second
    draw repeats the first, and the noise takes theta's device and dtype."""
    theta = {"a": torch.zeros(40, 30, dtype=torch.float64), "b": torch.zeros(40, 30, dtype=torch.float64)}
    for noise in ("gaussian", "ternary", "binary"):
        eps = noise_direction(theta, ["a", "b"], noise, seed=4)
        assert all(e.dtype == torch.float64 and e.shape == (40, 30) for e in eps.values())
        assert not torch.equal(eps["a"], eps["b"])
        assert all(torch.equal(eps[n], noise_direction(theta, ["a", "b"], noise, seed=4)[n]) for n in eps)
    gauss = noise_direction(theta, ["a"], "gaussian", seed=4)["a"]
    assert torch.equal(gauss, torch.randn(40, 30, generator=generator_for(4, "a")).double())


@pytest.mark.parametrize("noise, values", [("ternary", (-1.0, 0.0, 1.0)), ("binary", (0.0, 1.0))])
def test_discrete_noises_take_each_value_about_equally_often(noise, values):
    theta = {"w": torch.zeros(60, 50)}
    eps = noise_direction(theta, ["w"], noise, seed=0)["w"]
    counts = [int((eps == v).sum()) for v in values]
    assert sum(counts) == 3000  # no other value
    assert all(abs(c - 3000 / len(values)) < 150 for c in counts), counts


def test_sign_ratio_forces_the_sign_on_positions_of_the_ratio_stream():
    """r = 0.3 of each tensor's positions, drawn by randperm from generator_for(seed, name, "ratio"),
    take theta's sign (here +1 everywhere); every other position keeps the Gaussian noise as drawn."""
    theta = {"a": torch.ones(20, 10), "b": torch.ones(20, 10)}
    base = noise_direction(theta, ["a", "b"], "gaussian", seed=2)
    out = sign_ratio_direction(theta, ["a", "b"], 0.3, seed=2)
    for n in ("a", "b"):
        chosen = torch.randperm(200, generator=generator_for(2, n, "ratio"))[:60]
        mask = torch.zeros(200, dtype=torch.bool)
        mask[chosen] = True
        flat, noise = out[n].flatten(), base[n].flatten()
        assert torch.equal(flat[mask], noise[mask].abs())
        assert torch.equal(flat[~mask], noise[~mask])
    assert torch.equal(out["a"], sign_ratio_direction(theta, ["a", "b"], 0.3, seed=2)["a"])


def test_special_directions_by_hand_for_every_kind():
    """On [[2, 0], [-1, 3]] (mean 1): theta, sign, sign(theta - mu), sgp = 1[theta > 0], sgp_centered;
    zeros give sign 0 and sgp 0; 'init' is theta_0 in theta's dtype."""
    t = torch.tensor([[2.0, 0.0], [-1.0, 3.0]], dtype=torch.float64)
    theta, names = {"w": t}, ["w"]
    want = {"theta": [[2.0, 0.0], [-1.0, 3.0]], "sign": [[1.0, 0.0], [-1.0, 1.0]],
            "sign_centered": [[1.0, -1.0], [-1.0, 1.0]], "sgp": [[1.0, 0.0], [0.0, 1.0]],
            "sgp_centered": [[1.0, 0.0], [0.0, 1.0]]}
    for kind, values in want.items():
        got = special_direction(theta, names, kind)["w"]
        assert got.dtype == torch.float64 and torch.equal(got, torch.tensor(values, dtype=torch.float64)), kind
    assert special_direction(theta, names, "theta")["w"] is not t  # a copy, never theta itself
    centered_zero = {"w": torch.tensor([1.0, 2.0, 3.0])}  # theta - mu = [-1, 0, 1]
    assert torch.equal(special_direction(centered_zero, names, "sgp_centered")["w"], torch.tensor([0.0, 0.0, 1.0]))
    init = special_direction(theta, names, "init", init={"w": torch.tensor([[0.5, 0.25], [1.0, -2.0]])})["w"]
    assert init.dtype == torch.float64
    assert torch.equal(init, torch.tensor([[0.5, 0.25], [1.0, -2.0]], dtype=torch.float64))


def test_difference_is_b_minus_a_in_a_s_dtype():
    a = {"w": torch.tensor([1.0, 2.0]), "x": torch.tensor([9.0])}
    b = {"w": torch.tensor([1.5, -1.0], dtype=torch.float64), "x": torch.tensor([0.0])}
    d = difference(a, b, ["w"])
    assert set(d) == {"w"} and d["w"].dtype == torch.float32 and torch.equal(d["w"], torch.tensor([0.5, -3.0]))


def test_scaling_none_and_ns_by_hand():
    theta = {"w": torch.tensor([3.0, 4.0], dtype=torch.float64)}  # ||theta|| = 5
    unit = {"w": torch.tensor([0.6, 0.8], dtype=torch.float64)}  # norm exactly 1
    assert torch.equal(scale_direction(unit, theta, "none")["w"], unit["w"])
    torch.testing.assert_close(scale_direction(unit, theta, "ns")["w"], torch.tensor([3.0, 4.0], dtype=torch.float64))
    with pytest.raises(ConfigError) as err:
        scale_direction({"w": torch.zeros(2)}, theta, "ns")
    assert str(err.value) == "the direction is zero everywhere on this parameter group; it cannot be norm-scaled"


def test_bad_direction_settings_are_refused_with_what_is_accepted():
    theta = {"w": torch.ones(2)}
    cases = [
        (lambda: noise_direction(theta, ["w"], "laplace", 0),
         "noise 'laplace' is not known; accepted: gaussian, uniform, ternary, gaussian_mean1, uniform_pos, binary, "
         "constant"),
        (lambda: special_direction(theta, ["w"], "grad"),
         "special direction 'grad' is not known; accepted: init, theta, sign, sign_centered, sgp, sgp_centered"),
        (lambda: special_direction(theta, ["w"], "init"),
         "direction 'init' needs the initial model (--init CHECKPOINT)"),
        (lambda: sign_ratio_direction(theta, ["w"], -0.1, 0), "sign ratio r=-0.1 must lie in [0, 1]"),
        (lambda: scale_direction(theta, theta, "layer"), "scaling 'layer' is not known; accepted: ns, filter, none"),
        (lambda: scale_direction(theta, theta, "filter", "biasbn"),
         "filter_1d 'biasbn' is not known; accepted: element, vector, zero"),
        (lambda: scale_direction({"w": torch.ones(2)}, theta, "filter", "zero"),
         "the direction is zero everywhere after Filter-NS (filter_1d=zero) on this parameter group; choose "
         "another group, scaling or filter_1d"),
    ]
    for call, message in cases:
        with pytest.raises(ConfigError) as err:
            call()
        assert str(err.value) == message


def test_a_saved_direction_loads_into_the_model_and_bad_files_are_refused(tmp_path):
    direction = {"w": torch.tensor([[1.0, -2.0]]), "b": torch.tensor([0.5])}
    path = save_direction(tmp_path / "d.safetensors", direction, noise="gaussian", seed=3)
    assert path == tmp_path / "d.safetensors"
    tensors, metadata = load_checkpoint(path)
    assert metadata == {"kind": "direction", "noise": "gaussian", "seed": "3"}
    assert torch.equal(tensors["w"], direction["w"])
    theta = {"w": torch.zeros(1, 2, dtype=torch.float64), "c": torch.zeros(3)}
    loaded = load_direction(path, theta)  # 'b' is no parameter of this model: left out
    assert set(loaded) == {"w"} and loaded["w"].dtype == torch.float64
    assert torch.equal(loaded["w"], torch.tensor([[1.0, -2.0]], dtype=torch.float64))
    other = save_direction(tmp_path / "o.safetensors", {f"x{i}": torch.ones(1) for i in range(5)})
    with pytest.raises(CheckpointError) as err:
        load_direction(other, theta)
    assert str(err.value) == f"'{other}' holds no tensor named like this model's parameters (it holds x0, x1, x2, ...)"
    for names, listed in ((["y", "x"], "x, y"), (["z", "y", "x"], "x, y, z"), (["v", "z", "y", "x"], "v, x, y, ...")):
        few = save_direction(tmp_path / "few.safetensors", {n: torch.ones(1) for n in names})
        with pytest.raises(CheckpointError) as err:  # "..." only when names were left out
            load_direction(few, theta)
        assert str(err.value).endswith(f"(it holds {listed})")
    with pytest.raises(CheckpointError) as err:
        load_direction(path, {"w": torch.zeros(2, 1)})
    assert str(err.value) == f"'{path}': 'w' has shape (1, 2), the model needs (2, 1)"
