"""Hessian probes against closed forms: a quadratic with known spectrum, softmax regression (paper D.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedsign.data.specs import dataset_spec
from fedsign.errors import ConfigError
from fedsign.models import build_model
from landscape.context import data_subset
from landscape.evaluator import Evaluator, ProbeData
from landscape.hessian import HVP_MODES, HessianOperator, eigenpairs, hutchinson_trace, slq_density

SPECTRUM = np.array([5.0, 3.0, 1.0, 0.5, -0.5, -2.0])


def quadratic_operator(q: np.ndarray, **options) -> HessianOperator:
    """L(w) = 1/N sum_i c_i/2 (b_i^T w)^2 with rows b_i = sqrt(N |l_i|) q_i, c_i = sign(l_i): H = Q diag(l) Q^T."""
    n = len(SPECTRUM)
    rows = np.sqrt(n * np.abs(SPECTRUM))[:, None] * q.T
    data = ProbeData(torch.tensor(rows, dtype=torch.float64), torch.tensor((SPECTRUM > 0).astype(np.int64)))
    model = nn.Linear(n, 1, bias=False).double()
    with torch.no_grad():
        model.weight.normal_()

    def criterion(out, y):
        return (0.5 * (2.0 * y - 1.0) * out.squeeze(1) ** 2).sum()

    theta = {"weight": model.weight.detach()}
    return HessianOperator(model, theta, ["weight"], data, batch_size=4, criterion=criterion, **options)


@pytest.fixture(scope="module")
def quadratic():
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((len(SPECTRUM), len(SPECTRUM))))
    return quadratic_operator(q), q


def test_quadratic_top_and_bottom_eigenpairs(quadratic):
    op, q = quadratic
    top, top_vecs = eigenpairs(op, 2, "LA", seed=0)
    bottom, bottom_vecs = eigenpairs(op, 2, "SA", seed=1)
    np.testing.assert_allclose(top, [5.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(bottom, [-0.5, -2.0], rtol=1e-6)  # algebraic, not largest |lambda|
    assert abs(abs(top_vecs[:, 0] @ q[:, 0]) - 1) < 1e-6
    assert abs(abs(bottom_vecs[:, 1] @ q[:, 5]) - 1) < 1e-6


def test_quadratic_hutchinson_trace_and_slq(quadratic):
    op, _ = quadratic
    trace, stderr = hutchinson_trace(op, samples=200, seed=0)
    assert stderr > 0
    assert abs(trace - SPECTRUM.sum()) <= 4 * stderr
    assert hutchinson_trace(op, samples=200, seed=0) == (trace, stderr)  # fixed sample count: reproducible
    density = slq_density(op, runs=2, steps=len(SPECTRUM), seed=0)
    np.testing.assert_allclose(np.sort(density["nodes"][:6]), np.sort(SPECTRUM), atol=1e-6)
    assert density["weights"].sum() == pytest.approx(1.0)
    grid = density["grid"]
    assert np.trapezoid(density["density"], grid) == pytest.approx(1.0, abs=0.05)


@pytest.fixture(scope="module")
def softmax_regression():
    torch.manual_seed(0)
    model = build_model("logreg", dataset_spec("digits"))
    with torch.no_grad():
        model.classifier.weight.normal_(0, 0.1)
        model.classifier.bias.normal_(0, 0.1)
    data = data_subset("digits", "", "test", 150, 0, "cpu")
    theta = {n: p.detach() for n, p in model.named_parameters()}
    op = HessianOperator(model, theta, ["classifier.weight"], data, batch_size=64)
    with torch.no_grad():
        h = data.x.flatten(1).double().numpy()
        p = torch.softmax(model(data.x).double(), 1).numpy()
    # Paper D.3: H = (diag(p) - p p^T) kron h h^T, averaged over the samples; W is [C, D] row-major.
    closed = sum(np.kron(np.diag(pi) - np.outer(pi, pi), np.outer(hi, hi)) for pi, hi in zip(p, h)) / len(h)
    return op, closed, p, h


def test_softmax_hvp_matches_closed_form(softmax_regression):
    op, closed, p, h = softmax_regression
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(op.hvp(v).double().numpy(), closed @ v.double().numpy(), rtol=2e-4, atol=1e-5)
    # tr(H) = tr(diag(p) - p p^T) * tr(h h^T) = sum_c p_c (1 - p_c) * ||h||^2, averaged over samples
    assert np.trace(closed) == pytest.approx(float(np.mean((p * (1 - p)).sum(1) * (h ** 2).sum(1))))


def test_softmax_eigenvalues_and_trace_match_closed_form(softmax_regression):
    op, closed, _, _ = softmax_regression
    exact = np.sort(np.linalg.eigvalsh(closed))[::-1]
    top, _ = eigenpairs(op, 3, "LA", seed=0)
    np.testing.assert_allclose(top, exact[:3], rtol=1e-3)
    trace, stderr = hutchinson_trace(op, samples=30, seed=0)
    assert abs(trace - np.trace(closed)) <= 4 * stderr


@pytest.mark.parametrize("hvp", HVP_MODES)
def test_every_product_equals_the_dense_hessian(quadratic, hvp):
    """The linearized gradient, the kept first-order graph (double backward) and forward-over-reverse
    each give H v exactly (float64)."""
    _, q = quadratic
    op = quadratic_operator(q, hvp=hvp)
    dense = q @ np.diag(SPECTRUM) @ q.T
    for seed in range(3):
        v = torch.randn(op.size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        np.testing.assert_allclose(op.hvp(v).numpy(), dense @ v.numpy(), rtol=1e-12, atol=1e-12)
        op.hvp(v)  # the graph or linear map is reused, not consumed
    assert op.hvp_count == 6
    with pytest.raises(ConfigError, match="accepted: linearize, graph, recompute"):
        quadratic_operator(q, hvp="double")


def test_hutchinson_stops_at_the_requested_standard_error(quadratic):
    op, q = quadratic
    estimate = hutchinson_trace(op, 500, seed=1, probe="gaussian", rtol=0.1)
    trace, stderr = estimate  # still a (trace, stderr) pair
    assert 10 <= estimate.samples < 500 and stderr <= 0.1 * abs(trace)
    if estimate.samples > 10:  # one sample fewer was not yet precise enough
        fewer = hutchinson_trace(op, estimate.samples - 1, seed=1, probe="gaussian")
        assert fewer[1] > 0.1 * abs(fewer[0])
    # Rademacher probes on a diagonal Hessian: every v^T H v is the trace itself (zero variance)
    diagonal = quadratic_operator(np.eye(len(SPECTRUM)))
    exact = hutchinson_trace(diagonal, 100, seed=0, probe="rademacher", rtol=0.02)
    assert exact.samples == 10 and exact[0] == pytest.approx(SPECTRUM.sum(), rel=1e-12) and exact[1] < 1e-12


def test_hessian_loss_uses_the_bn_statistics_the_evaluator_recomputes():
    """With BN, the Hessian's L(theta) is the loss every other probe reports at theta (same statistics)."""
    torch.manual_seed(0)
    model = build_model("smallcnn_bn", dataset_spec("digits")).double()
    with torch.no_grad():  # confident predictions and stale statistics
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
        model.features[1].running_var.fill_(9.0)
    test = data_subset("digits", "", "test", 80, 0, "cpu")
    train = data_subset("digits", "", "train", 120, 1, "cpu")
    test, train = (ProbeData(d.x.double(), d.y) for d in (test, train))
    evaluator = Evaluator(model, test, train, batch_size=50)
    theta = evaluator.parameters()
    at_theta, _ = evaluator.curve(theta, {n: torch.zeros_like(t) for n, t in theta.items()}, [0.0])
    op = HessianOperator(model, theta, ["classifier.bias"], test, 50, buffers=evaluator.buffers_at(theta))
    assert op.loss() == pytest.approx(float(at_theta[0]), rel=1e-12)
    stale = HessianOperator(model, theta, ["classifier.bias"], test, 50)  # the model's own (stale) statistics
    assert abs(stale.loss() - float(at_theta[0])) > 1e-3
