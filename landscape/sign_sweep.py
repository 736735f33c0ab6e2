"""The sign-ratio sweep (paper Sect. 4.1, Fig. 4): Gaussian noise with a fraction r of its elements given
theta_f's sign; mean test error over lambda in [0, 1] vs over lambda in [-1, 0]."""

from __future__ import annotations

import numpy as np
import torch

from landscape.directions import DEFAULT_FILTER_1D, Params, scale_direction, sign_ratio_direction
from landscape.evaluator import Evaluator
from landscape.result import ProbeResult

DEFAULT_RATIOS = np.round(np.linspace(0.0, 1.0, 11), 2)


def sign_sweep(evaluator: Evaluator, theta: Params, names: list[str], *, ratios=DEFAULT_RATIOS,
               lambdas=np.linspace(-1.0, 1.0, 21), scale: float = 1.0, scaling: str = "ns", seed: int = 0,
               metadata: dict | None = None, progress=None, filter_1d: str = DEFAULT_FILTER_1D) -> ProbeResult:
    """Mean error and loss over lambda >= 0 and over lambda <= 0 for each sign-consistent fraction r."""
    lams = np.asarray(lambdas, dtype=np.float64)
    pos, neg = lams >= 0, lams <= 0
    losses, errors = [], []
    for r in ratios:
        unit = scale_direction(sign_ratio_direction(theta, names, float(r), seed), theta, scaling, filter_1d)
        loss, error = evaluator.curve(theta, unit, torch.as_tensor(scale * lams), progress=progress)
        losses.append(loss.numpy())
        errors.append(error.numpy())
    errors_np, losses_np = np.array(errors), np.array(losses)
    arrays = {
        "ratios": np.asarray(ratios, dtype=np.float64), "lambdas": lams,
        "pos_error": errors_np[:, pos].mean(1), "neg_error": errors_np[:, neg].mean(1),
        "pos_loss": losses_np[:, pos].mean(1), "neg_loss": losses_np[:, neg].mean(1),
        "error": errors_np, "loss": losses_np,
    }
    return ProbeResult("sign-sweep", arrays, {**(metadata or {}), "scale": scale, "filter_1d": filter_1d})
