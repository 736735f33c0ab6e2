"""The paper's softmax demo (Appendix D.3, Listing 2): logistic regression on sklearn digits perturbed by
W + lambda * eps. Sign-consistent noise |eps| sign(W): error at +lambda below error at -lambda for every
lambda; plain Gaussian noise: no systematic side."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from torch import nn

from landscape.directions import noise_direction
from landscape.evaluator import Evaluator, ProbeData
from landscape.valley import asymmetry_metrics

LAMBDAS = np.linspace(0.1, 1.0, 10)
SEEDS = range(6)


@pytest.fixture(scope="module")
def softmax_demo():
    x, y = load_digits(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Listing 2 uses max_iter=500; 100 keeps the test fast, same finding
        weight = LogisticRegression(max_iter=100, fit_intercept=False).fit(x, y).coef_
    model = nn.Linear(64, 10, bias=False)  # any nn.Module works with the evaluator
    with torch.no_grad():
        model.weight.copy_(torch.tensor(weight))
    evaluator = Evaluator(model, ProbeData(torch.tensor(x, dtype=torch.float32), torch.tensor(y)), recalibrate=False)
    return evaluator, evaluator.parameters()


def side_errors(evaluator, theta, seed: int, sign: bool):
    d = noise_direction(theta, ["weight"], "gaussian", seed, sign=sign)  # raw noise, as Listing 2
    _, error = evaluator.curve(theta, d, np.concatenate([LAMBDAS, -LAMBDAS]))
    return error[: len(LAMBDAS)].numpy(), error[len(LAMBDAS):].numpy()


def test_sign_consistent_noise_is_flatter_on_the_positive_side_at_every_lambda(softmax_demo):
    evaluator, theta = softmax_demo
    for seed in SEEDS:
        plus, minus = side_errors(evaluator, theta, seed, sign=True)
        assert (plus < minus).all(), (seed, plus, minus)
        lams = np.concatenate([-LAMBDAS[::-1], [0.0], LAMBDAS])
        _, err0 = evaluator.curve(theta, {"weight": torch.zeros(10, 64)}, [0.0])
        err = np.concatenate([minus[::-1], err0.numpy(), plus])
        assert asymmetry_metrics(lams, err, err)["asymmetry"] < 0


def test_gaussian_noise_is_not_systematically_asymmetric(softmax_demo):
    evaluator, theta = softmax_demo
    wins = [(lambda p, m: (p < m).mean())(*side_errors(evaluator, theta, seed, sign=False)) for seed in SEEDS]
    assert 0.2 < np.mean(wins) < 0.8, wins
    assert min(wins) < 1.0 and max(wins) > 0.0, wins  # some seeds favour -lambda, some +lambda
