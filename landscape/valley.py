"""The 1D valley probe: theta_f + lambda * s * eps_hat on loss and error (paper Sect. 3.2, Fig. 3),
with asymmetry metrics per curve."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedsign.errors import ConfigError
from landscape.directions import DEFAULT_FILTER_1D, Params, noise_direction, scale_direction
from landscape.evaluator import Evaluator
from landscape.result import ProbeResult

DEFAULT_LAMBDAS = np.linspace(-1.0, 1.0, 41)  # 41 points in [-1, 1] (companion paper Sect. 2.2)


@dataclass
class Direction:
    """A labelled raw direction (before scaling)."""

    noise: str
    sign_consistent: bool
    values: Params


def common_noise_directions(theta: Params, names: list[str], noises: list[str], signs: list[bool],
                            seed: int) -> list[Direction]:
    """Each noise in its original form and/or with theta's sign (the two rows of Fig. 3)."""
    return [Direction(n, s, noise_direction(theta, names, n, seed, sign=s)) for n in noises for s in signs]


def _side_width(lams: np.ndarray, loss: np.ndarray, threshold: float) -> tuple[float, bool]:
    """|lambda| where the loss first reaches `threshold` walking out from 0 (linear interpolation);
    the last |lambda| and censored=True if it never does."""
    for i in range(1, len(lams)):
        if loss[i] >= threshold:
            if loss[i - 1] >= threshold:
                return float(abs(lams[i - 1])), False
            t = (threshold - loss[i - 1]) / (loss[i] - loss[i - 1])
            return float(abs(lams[i - 1] + t * (lams[i] - lams[i - 1]))), False
    return float(abs(lams[-1])), True


def check_lambdas(lambdas) -> np.ndarray:
    """The lambdas as float64, refused unless finite and on both sides of 0 (the metrics compare the sides)."""
    lams = np.asarray(lambdas, dtype=np.float64)
    if not np.isfinite(lams).all():
        raise ConfigError("lambdas must be finite numbers")
    if not (lams > 0).any() or not (lams < 0).any():
        raise ConfigError(f"the valley needs lambdas on both sides of 0 (got {lams.min():g} .. {lams.max():g})")
    return lams


def asymmetry_metrics(lambdas, loss, error, loss_delta: float = 1.0) -> dict[str, float | bool | None]:
    """asymmetry = mean error over lambda > 0 minus mean error over lambda < 0 (negative: flatter on the
    + side, as the sign-consistent noises of the paper's Sect. 4.1); widths where the loss reaches
    L(0) + loss_delta on each side, and width_ratio = width_plus / width_minus (> 1: flatter on the + side)."""
    lams = check_lambdas(lambdas)
    loss, error = (np.asarray(a, dtype=np.float64) for a in (loss, error))
    pos, neg = lams > 0, lams < 0
    center = int(np.argmin(np.abs(lams)))
    threshold = float(loss[center] + loss_delta)
    up = np.concatenate([[center], np.nonzero(pos)[0]])
    down = np.concatenate([[center], np.nonzero(neg)[0][::-1]])
    w_plus, cens_plus = _side_width(lams[up], loss[up], threshold)
    w_minus, cens_minus = _side_width(lams[down], loss[down], threshold)
    return {
        "asymmetry": float(error[pos].mean() - error[neg].mean()),
        "loss_asymmetry": float(loss[pos].mean() - loss[neg].mean()),
        "width_threshold": threshold,
        "width_plus": w_plus, "width_minus": w_minus,
        "width_plus_censored": cens_plus, "width_minus_censored": cens_minus,
        "width_ratio": w_plus / w_minus if w_minus > 0 else None,
    }


def valley(evaluator: Evaluator, theta: Params, directions: list[Direction], *, scales=(1.0,),
           lambdas=DEFAULT_LAMBDAS, scaling: str = "ns", loss_delta: float = 1.0,
           metadata: dict | None = None, progress=None, filter_1d: str = DEFAULT_FILTER_1D) -> ProbeResult:
    """One curve per (direction, scale s): theta + lambda * s * scaled(eps) for every lambda."""
    lams = check_lambdas(lambdas)
    if not scales or not all(np.isfinite(s) and s > 0 for s in scales):
        raise ConfigError(f"scales must be positive numbers (got {list(scales)})")
    curves = []
    for d in directions:
        unit = scale_direction(d.values, theta, scaling, filter_1d)
        coeffs = torch.as_tensor(np.concatenate([s * lams for s in scales]))[:, None]
        loss, error = evaluator.evaluate(theta, [unit], coeffs, progress=progress)
        for i, s in enumerate(scales):
            part = slice(i * len(lams), (i + 1) * len(lams))
            metrics = asymmetry_metrics(lams, loss[part].numpy(), error[part].numpy(), loss_delta)
            curves.append({"noise": d.noise, "sign_consistent": d.sign_consistent, "scale": float(s),
                           "loss": loss[part], "error": error[part], **metrics})
    return ProbeResult("valley", {"lambdas": lams, "curves": curves},
                       {**(metadata or {}), "loss_delta": loss_delta, "scales": list(map(float, scales)),
                        "filter_1d": filter_1d})
