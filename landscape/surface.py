"""2D surfaces theta + l1 * d1 + l2 * d2 (companion paper Sect. 2.6) on any rectangular grid."""

from __future__ import annotations

import numpy as np
import torch

from landscape.directions import Params
from landscape.evaluator import Evaluator
from landscape.result import ProbeResult


def surface(evaluator: Evaluator, theta: Params, d1: Params, d2: Params, xs, ys, *,
            metadata: dict | None = None, progress=None) -> ProbeResult:
    """loss[i, j] and error[i, j] at theta + xs[j] * d1 + ys[i] * d2 (rows follow ys, as matplotlib)."""
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    grid_x, grid_y = np.meshgrid(xs, ys)  # [len(ys), len(xs)]
    coeffs = torch.as_tensor(np.stack([grid_x.ravel(), grid_y.ravel()], axis=1))
    loss, error = evaluator.evaluate(theta, [d1, d2], coeffs, progress=progress)
    shape = (len(ys), len(xs))
    arrays = {"xs": xs, "ys": ys, "loss": loss.numpy().reshape(shape), "error": error.numpy().reshape(shape)}
    return ProbeResult("surface", arrays, metadata or {})
