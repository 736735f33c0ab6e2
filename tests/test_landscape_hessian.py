"""Hessian probes against closed forms: a quadratic with known spectrum, softmax regression (paper D.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedsign.data.specs import dataset_spec
from fedsign.models import build_model
from landscape.context import data_subset
from landscape.evaluator import ProbeData
from landscape.hessian import HessianOperator, eigenpairs, hutchinson_trace, slq_density

SPECTRUM = np.array([5.0, 3.0, 1.0, 0.5, -0.5, -2.0])


@pytest.fixture(scope="module")
def quadratic():
    """L(w) = 1/N sum_i c_i/2 (b_i^T w)^2 with rows b_i = sqrt(N |l_i|) q_i, c_i = sign(l_i): H = Q diag(l) Q^T."""
    n = len(SPECTRUM)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((n, n)))
    rows = np.sqrt(n * np.abs(SPECTRUM))[:, None] * q.T
    data = ProbeData(torch.tensor(rows, dtype=torch.float64), torch.tensor((SPECTRUM > 0).astype(np.int64)))
    model = nn.Linear(n, 1, bias=False).double()
    with torch.no_grad():
        model.weight.normal_()

    def criterion(out, y):
        return (0.5 * (2.0 * y - 1.0) * out.squeeze(1) ** 2).sum()

    theta = {"weight": model.weight.detach()}
    op = HessianOperator(model, theta, ["weight"], data, batch_size=4, criterion=criterion)
    return op, q


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
