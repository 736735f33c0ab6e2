"""Each method's client objective against its closed form: the regulariser's gradient (total minus
cross-entropy) equals the analytic derivative, the total loss matches finite differences in float64,
and every objective runs under torch.func.vmap over a batch of clients (the cohort engine's contract)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from fedsign.data.specs import dataset_spec
from fedsign.models import PanSpec, build_model, exchanged_state
from strategies.feddyn import FedDynConfig, FedDynObjective
from strategies.fedpan import FedPanConfig
from strategies.fedprox import FedProxConfig, FedProxObjective
from strategies.fedsign import FedSignConfig, FedSignObjective
from strategies.functional import float_buffers, forward, reference_features, unprefixed
from strategies.moon import MoonConfig, MoonObjective
from strategies.registry import METHODS

SPEC = dataset_spec("digits")


def _model():
    torch.manual_seed(0)
    return build_model("smallcnn", SPEC).double()


def _params(model, scale=0.0, seed=1):
    """The model's parameters, optionally moved by a random step (a 'trained' local model)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: (v.detach() + scale * torch.randn(v.shape, generator=gen, dtype=v.dtype)).requires_grad_()
            for k, v in model.named_parameters()}


def _batch(n=12, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=gen, dtype=torch.float64), torch.randint(0, 10, (n,), generator=gen)


def _regulariser_grad(objective, model, params, consts, x, y):
    """Gradient of (total − cross-entropy) with respect to every parameter."""
    total, ce = objective.loss(model, params, x, y, consts)
    g_total = torch.autograd.grad(total, list(params.values()), retain_graph=True)
    g_ce = torch.autograd.grad(ce, list(params.values()))
    return {k: a - b for k, a, b in zip(params, g_total, g_ce)}


def _directional_fd(objective, model, params, consts, x, y, seed=3, eps=1e-6):
    """(finite-difference directional derivative, autograd's) of the total loss along a random direction."""
    gen = torch.Generator().manual_seed(seed)
    direction = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
    total, _ = objective.loss(model, params, x, y, consts)
    grads = torch.autograd.grad(total, list(params.values()))
    analytic = sum((g * direction[k]).sum() for k, g in zip(params, grads))
    with torch.no_grad():
        plus = {k: v + eps * direction[k] for k, v in params.items()}
        minus = {k: v - eps * direction[k] for k, v in params.items()}
        up, down = objective.loss(model, plus, x, y, consts)[0], objective.loss(model, minus, x, y, consts)[0]
        numeric = (up - down) / (2 * eps)
    return float(numeric), float(analytic)


# ---- FedSign, Eq. (1) ----
@pytest.mark.parametrize("reduction", ["rms", "sum", "mean", "tensor_mean"])
@pytest.mark.parametrize("temperature", [1.0, 0.05])
def test_fedsign_gradient_is_the_analytic_derivative_of_eq1(reduction, temperature):
    model, (x, y) = _model(), _batch()
    glob = {k: v.detach().clone() for k, v in model.named_parameters()}  # biases are exactly 0: no reward
    gamma = 0.3
    objective = FedSignObjective(FedSignConfig(gamma=gamma, sign_reduction=reduction, sign_temperature=temperature))
    consts = objective.prepare(model, glob, {})
    params = _params(model, scale=0.05)
    got = _regulariser_grad(objective, model, params, consts, x, y)
    n = sum(v.numel() for v in glob.values())
    for k, theta in params.items():
        weight = {"sum": 1.0, "rms": 1 / math.sqrt(n), "mean": 1 / n,
                  "tensor_mean": 1 / (len(glob) * theta.numel())}[reduction]
        s = torch.sigmoid(theta.detach() / temperature)
        direction = (glob[k] > 0).double() - (glob[k] < 0).double()
        # d/dθ of −γc(s⁺σ(θ/τ) + s⁻σ(−θ/τ)) = −γc/τ·σ'(θ/τ)(s⁺ − s⁻), s± = sgp(±θ_t)
        expected = -gamma * weight / temperature * s * (1 - s) * direction
        assert torch.allclose(got[k], expected, rtol=1e-9, atol=1e-15), k
    assert got["features.0.bias"].abs().max() == 0  # sgp(0) = sgp(−0) = 0
    numeric, analytic = _directional_fd(objective, model, params, consts, x, y)
    assert numeric == pytest.approx(analytic, rel=1e-5)


def test_fedsign_reward_rewards_keeping_the_global_sign():
    """The camera-ready minus sign: the loss decreases when θ moves along sign(θ_t)."""
    model, (x, y) = _model(), _batch()
    glob = {k: v.detach().clone() for k, v in model.named_parameters()}
    objective = FedSignObjective(FedSignConfig(gamma=1.0, sign_reduction="sum", sign_temperature=1.0))
    consts = objective.prepare(model, glob, {})
    away = {k: v - 0.01 * torch.sign(v) for k, v in glob.items()}
    toward = {k: v + 0.01 * torch.sign(v) for k, v in glob.items()}
    def regulariser(params):
        total, ce = objective.loss(model, params, x, y, consts)
        return float(total - ce)

    assert regulariser(toward) < regulariser(glob) < regulariser(away)


def test_fedsign_with_gamma_zero_is_exactly_cross_entropy():
    model, (x, y) = _model(), _batch()
    glob = {k: v.detach().clone() for k, v in model.named_parameters()}
    objective = FedSignObjective(FedSignConfig(gamma=0.0, sign_reduction="sum", sign_temperature=1.0))
    params = _params(model, scale=0.05)
    total, ce = objective.loss(model, params, x, y, objective.prepare(model, glob, {}))
    assert torch.equal(total, ce)
    assert all(torch.equal(a, b) for a, b in zip(torch.autograd.grad(total, list(params.values())),
                                                 torch.autograd.grad(F.cross_entropy(forward(model, params, x), y),
                                                                     list(params.values()))))


@pytest.mark.parametrize(("config", "values", "message"), [
    (FedSignConfig, {"sign_reduction": "median"},
     "method.sign_reduction='median' is not known; accepted: rms, sum, mean, tensor_mean"),
    (FedSignConfig, {"gamma": -0.5}, "method.gamma=-0.5 must be >= 0"),
    (FedSignConfig, {"sign_temperature": 0.0}, "method.sign_temperature=0.0 must be > 0"),
    (FedProxConfig, {"mu": -1.0}, "method.mu=-1.0 must be >= 0"),
    (FedProxConfig, {"prox_form": "l1"}, "method.prox_form='l1' is not known; accepted: l2, smooth_l1"),
    (MoonConfig, {"mu": -1.0}, "method.mu=-1.0 must be >= 0"),
    (MoonConfig, {"tau": 0.0}, "method.tau=0.0 must be > 0"),
    (FedPanConfig, {"pan_op": "sub"}, "method.pan_op='sub' is not known; accepted: add, mul"),
    (FedPanConfig, {"pan_a": -0.1}, "method.pan_a=-0.1 must be >= 0"),
])
def test_method_settings_are_refused_with_key_value_and_what_is_accepted(config, values, message):
    with pytest.raises(ValueError) as caught:
        config(**values)
    assert str(caught.value) == message


def test_method_settings_at_their_bounds_are_accepted():
    """A zero weight switches a regulariser off (FedProx, MOON, FedSign, FedPAN's amplitude): allowed."""
    assert FedProxConfig(mu=0.0).mu == MoonConfig(mu=0.0).mu == FedSignConfig(gamma=0.0).gamma == 0.0
    assert FedPanConfig(pan_a=0.0).pan_a == 0.0 and FedSignConfig(sign_temperature=1e-3).sign_temperature == 1e-3


# ---- FedProx ----
def test_fedprox_l2_gradient_is_mu_times_the_distance():
    model, (x, y) = _model(), _batch()
    glob = {k: v.detach().clone() for k, v in model.named_parameters()}
    objective = FedProxObjective(FedProxConfig(mu=0.7, prox_form="l2"))
    consts = objective.prepare(model, glob, {})
    params = _params(model, scale=0.1)
    got = _regulariser_grad(objective, model, params, consts, x, y)
    for k, v in params.items():
        assert torch.allclose(got[k], 0.7 * (v.detach() - glob[k]), rtol=1e-10, atol=1e-14), k
    numeric, analytic = _directional_fd(objective, model, params, consts, x, y)
    assert numeric == pytest.approx(analytic, rel=1e-5)


def test_fedprox_smooth_l1_is_the_authors_huber_variant():
    model, (x, y) = _model(), _batch()
    glob = {k: v.detach().clone() for k, v in model.named_parameters()}
    objective = FedProxObjective(FedProxConfig(mu=0.5, prox_form="smooth_l1"))
    consts = objective.prepare(model, glob, {})
    params = _params(model, scale=1.5)  # differences on both sides of |d| = 1
    got = _regulariser_grad(objective, model, params, consts, x, y)
    for k, v in params.items():
        d = v.detach() - glob[k]
        expected = 0.5 * torch.where(d.abs() < 1, d, torch.sign(d)) / (d.numel() * len(glob))
        assert torch.allclose(got[k], expected, rtol=1e-8, atol=1e-12), k


# ---- FedDyn ----
# per variant: the regulariser's gradient (w, w_g, g_k, number of tensors T) and the next g_k
FEDDYN = {
    # acar (FedDyn Algorithm 1): −g_k + α(w − w_g); g_k ← g_k − α(w_k − w_g)
    "acar": (lambda w, glob, g, alpha, t: -g + alpha * (w - glob), lambda w, glob, g, alpha: g - alpha * (w - glob)),
    # fedrepo (lxcnju/FedRepo): ∇ of α/T·Σ_tensors(⟨w, g − w_g⟩ + ||w||²) = α/T·(g − w_g + 2w); g ← g + (w − w_g)
    "fedrepo": (lambda w, glob, g, alpha, t: alpha / t * (g - glob + 2 * w), lambda w, glob, g, alpha: g + (w - glob)),
}


@pytest.mark.parametrize("variant", list(FEDDYN))
def test_feddyn_gradient_and_state_update_of_each_variant(variant):
    model, (x, y) = _model(), _batch()
    glob = {k: v.detach().clone() for k, v in model.named_parameters()}
    alpha = 0.2
    gradient, update = FEDDYN[variant]
    objective = FedDynObjective(FedDynConfig(alpha=alpha, variant=variant))
    gen = torch.Generator().manual_seed(5)
    g_state = {f"grad.{k}": torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in glob.items()}
    consts = objective.prepare(model, glob, g_state)
    params = _params(model, scale=0.1)
    got = _regulariser_grad(objective, model, params, consts, x, y)
    for k, v in params.items():
        expected = gradient(v.detach(), glob[k], g_state[f"grad.{k}"], alpha, len(glob))
        assert torch.allclose(got[k], expected, rtol=1e-10, atol=1e-13), k
    numeric, analytic = _directional_fd(objective, model, params, consts, x, y)
    assert numeric == pytest.approx(analytic, rel=1e-5)
    new = objective.next_state({k: v.detach() for k, v in params.items()}, consts, g_state)
    for k, v in params.items():
        assert torch.allclose(new[f"grad.{k}"], update(v.detach(), glob[k], g_state[f"grad.{k}"], alpha), atol=1e-14)
    first = objective.prepare(model, glob, {})  # no state yet: g_k = 0
    assert all(float(v.abs().max()) == 0 for k, v in first.items() if k.startswith("grad."))


def test_feddyn_rejects_alpha_zero_and_unknown_variants():
    with pytest.raises(ValueError, match="alpha"):
        FedDynConfig(alpha=0.0)
    with pytest.raises(ValueError, match="variant='exact'"):
        FedDynConfig(variant="exact")


# ---- MOON ----
def _moon_by_hand(model, params, glob, prev, x, y, mu, tau):
    """MOON Eq. (3)-(4) written out: cosine similarities by dot products and norms, exp and log."""
    z, logits = forward(model, params, x, features=True)
    model.eval()
    with torch.no_grad():
        zg, _ = forward(model, glob, x, features=True)
        zp, _ = forward(model, prev, x, features=True)
    model.train()
    cos = lambda a, b: (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))  # noqa: E731
    pos, neg = torch.exp(cos(z, zg) / tau), torch.exp(cos(z, zp) / tau)
    ce = -torch.log_softmax(logits, 1)[torch.arange(len(y)), y].mean()
    return ce + mu * (-torch.log(pos / (pos + neg))).mean()


def test_moon_loss_and_gradient_match_the_hand_written_formula():
    """The global and previous models both differ from the model's own parameters, so a reference
    forward that silently fell back to those (a constant under the wrong name) fails here."""
    model, (x, y) = _model(), _batch()
    glob = {k: v.detach() for k, v in _params(model, scale=0.15, seed=5).items()}
    prev = {k: v.detach() for k, v in _params(model, scale=0.2, seed=7).items()}
    objective = MoonObjective(MoonConfig(mu=0.8, tau=0.5))
    consts = objective.prepare(model, glob, {f"prev.{k}": v for k, v in prev.items()})
    params = _params(model, scale=0.1)
    total, ce = objective.loss(model, params, x, y, consts)
    by_hand = _moon_by_hand(model, params, glob, prev, x, y, 0.8, 0.5)
    assert float(total.detach()) == pytest.approx(float(by_hand.detach()), rel=1e-12)
    for a, b in zip(torch.autograd.grad(total, list(params.values())),
                    torch.autograd.grad(by_hand, list(params.values()))):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-13)
    assert model.training  # the reference forward passes restore the training mode
    numeric, analytic = _directional_fd(objective, model, params, consts, x, y)
    assert numeric == pytest.approx(analytic, rel=1e-5)


def test_moon_previous_equal_to_global_is_cross_entropy_and_the_state_is_the_local_model():
    model, (x, y) = _model(), _batch()
    glob = {k: v.detach().clone() for k, v in model.named_parameters()}
    objective = MoonObjective(MoonConfig(mu=0.8, tau=0.5))
    assert objective.first_state(lambda: glob).keys() == {f"prev.{k}" for k in glob}  # θ_0 before round 1
    consts = objective.prepare(model, glob, objective.first_state(lambda: glob))  # previous = global
    params = _params(model, scale=0.1)
    got = _regulariser_grad(objective, model, params, consts, x, y)
    assert max(float(g.abs().max()) for g in got.values()) < 1e-12  # ℓ_con = log 2, constant
    total, ce = objective.loss(model, params, x, y, consts)
    assert float((total - ce).detach()) == pytest.approx(0.8 * math.log(2), rel=1e-9)
    state = objective.next_state({k: v.detach() for k, v in params.items()}, consts, {})
    assert set(state) == {f"prev.{k}" for k in params}
    assert all(torch.equal(state[f"prev.{k}"], v.detach()) for k, v in params.items())


def test_moon_reference_models_use_the_global_bn_statistics_in_eval_mode():
    import copy

    torch.manual_seed(0)
    model = build_model("smallcnn_bn", SPEC).double()
    x, y = _batch()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if "running_var" in name:
                buf.fill_(4.0)
    reference = copy.deepcopy(model).eval()
    plain = copy.deepcopy(model)
    glob = {k: v.detach().clone() for k, v in model.named_parameters()}
    prev = {k: v.detach() for k, v in _params(model, scale=0.2, seed=7).items()}
    objective = MoonObjective(MoonConfig(mu=1.0, tau=0.5))
    consts = objective.prepare(model, glob, {f"prev.{k}": v for k, v in prev.items()})
    forward(model, glob, x)  # a training forward: the model's own statistics move on from the global ones
    with torch.no_grad():
        z_ref, _ = reference(x, return_features=True)
    z_prev = reference_features(reference, prev, float_buffers(reference), x)  # prev, the global statistics
    assert torch.allclose(reference_features(model, glob, unprefixed("buffer", consts), x), z_ref, atol=1e-12)
    params = _params(model, scale=0.1)
    total, ce = objective.loss(model, params, x, y, consts)
    z = forward(copy.deepcopy(plain), params, x, features=True)[0].detach()  # train mode: batch statistics
    cos = lambda a, b: (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))  # noqa: E731
    pos, neg = torch.exp(cos(z, z_ref) / 0.5), torch.exp(cos(z, z_prev) / 0.5)
    assert float((total - ce).detach()) == pytest.approx(float((-torch.log(pos / (pos + neg))).mean()), rel=1e-10)
    forward(plain, glob, x)  # the model's two training forwards: what its statistics must show afterwards
    forward(plain, params, x)
    for (k, a), b in zip(float_buffers(model).items(), float_buffers(plain).values()):
        assert torch.allclose(a, b, atol=1e-12), k  # the reference passes did not touch them


# ---- every objective is a pure function of params: vmap over a batch of clients ----
VARIANTS = [(name, {}) for name in sorted(METHODS)] + [
    ("fedprox", {"prox_form": "smooth_l1"}), ("fedsign", {"sign_reduction": "tensor_mean", "sign_temperature": 0.1})]


@pytest.mark.parametrize(("name", "extra"), VARIANTS)
def test_objective_gradients_under_vmap_equal_the_per_client_gradients(name, extra):
    model, (x, y) = _model(), _batch()
    glob = {k: v.detach().clone() for k, v in model.named_parameters()}
    settings = {"gamma": 0.2, "mu": 0.3, "alpha": 0.1, **extra}
    config = METHODS[name].config
    config_fields = {f.name for f in dataclasses.fields(config)}
    objective = METHODS[name].objective(config(**{k: v for k, v in settings.items() if k in config_fields}))
    clients = [_params(model, scale=0.05, seed=s) for s in (11, 12)]
    states = [{}, {}]
    if name in ("moon", "feddyn"):  # a non-trivial state for each client
        states = [objective.next_state({k: v.detach() for k, v in c.items()}, objective.prepare(model, glob, {}), {})
                  for c in clients]
    consts = [objective.prepare(model, glob, s) for s in states]

    def total(params, c):
        return objective.loss(model, params, x, y, c)[0]

    stacked = {k: torch.stack([c[k].detach() for c in clients]) for k in glob}
    stacked_consts = {k: torch.stack([c[k] for c in consts]) for k in consts[0]}
    batched = vmap(grad(total))(stacked, stacked_consts)
    for i, (params, c) in enumerate(zip(clients, consts)):
        single = torch.autograd.grad(total(params, c), list(params.values()))
        for k, g in zip(params, single):
            assert torch.allclose(batched[k][i], g, rtol=1e-9, atol=1e-12), (name, k)


def test_float_buffers_are_the_bn_statistics_only():
    """Not the parameters, not the integer step counters, not FedPAN's masks: copies, not views."""
    model = build_model("smallcnn_bn", SPEC, PanSpec("mul", 1.0, 0.05))
    kinds = {k.rsplit(".", 1)[1] for k in float_buffers(model)}
    assert kinds == {"running_mean", "running_var"}
    assert set(float_buffers(model)) == {k for k, v in model.state_dict().items()
                                         if k.endswith(("running_mean", "running_var"))}
    buffers = float_buffers(model)
    key = next(iter(buffers))
    buffers[key].add_(1.0)
    assert not torch.equal(buffers[key], model.state_dict()[key])


def test_fedpan_masks_are_in_the_model_but_never_in_the_exchanged_state():
    assert METHODS["fedpan"].uses_pan and not any(m.uses_pan for n, m in METHODS.items() if n != "fedpan")
    masked = build_model("smallcnn", SPEC, PanSpec("mul", 1.0, 0.05))
    plain = build_model("smallcnn", SPEC)
    assert any("mask" in name for name, _ in masked.named_buffers())
    assert set(exchanged_state(masked)) == set(exchanged_state(plain))
    assert not any("mask" in k for k in exchanged_state(masked))
