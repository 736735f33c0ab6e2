"""Linear interpolation (1 - l) theta_A + l theta_B (paper Sect. 4.2.2, 6.1): barrier height, the
interpolation gap at l = 1/2, SSR per group; uniform and greedy model soups of N checkpoints."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from landscape.directions import Params, difference
from landscape.evaluator import Evaluator
from landscape.result import ProbeResult
from landscape.signs import ssr_table


def evaluate_points(evaluator: Evaluator, points: list[Params]) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, error) of each parameter dict: base = the first, one direction per point, one-hot weights."""
    base = points[0]
    directions = [difference(base, p, list(base)) for p in points]
    return evaluator.evaluate(base, directions, torch.eye(len(points), dtype=torch.float64))


def barrier(lams: np.ndarray, values: np.ndarray) -> float:
    """max over l in [0, 1] of v(l) - ((1 - l) v(0) + l v(1)): the height above the straight line."""
    v0, v1 = np.interp(0.0, lams, values), np.interp(1.0, lams, values)
    inside = (lams >= 0) & (lams <= 1)
    return float(np.max(values[inside] - ((1 - lams[inside]) * v0 + lams[inside] * v1)))


def interpolate(evaluator: Evaluator, model: nn.Module, a: Params, b: Params, *, init: Params | None = None,
                lambdas=np.linspace(-0.5, 1.5, 21), metadata: dict | None = None, progress=None) -> ProbeResult:
    """Curves along (1 - l) A + l B = A + l (B - A); 0, 1/2 and 1 are always among the lambdas."""
    lams = np.union1d(np.asarray(lambdas, dtype=np.float64), [0.0, 0.5, 1.0])
    names = list(a)
    loss, error = evaluator.curve(a, difference(a, b, names), torch.as_tensor(lams), progress=progress)
    loss, error = loss.numpy(), error.numpy()
    acc = 1.0 - error
    at = lambda arr, l: float(arr[np.argmin(np.abs(lams - l))])  # noqa: E731
    pairs = {"A": a, "B": b} if init is None else {"init": init, "A": a, "B": b}
    arrays = {
        "lambdas": lams, "loss": loss, "error": error,
        "loss_barrier": barrier(lams, loss), "error_barrier": barrier(lams, error),
        "gap": at(acc, 0.5) - 0.5 * (at(acc, 0.0) + at(acc, 1.0)),  # Acc(A/2 + B/2) - (Acc A + Acc B)/2
        "ssr": ssr_table(model, pairs),
    }
    return ProbeResult("interp", arrays, metadata or {})


def uniform_soup(points: list[Params]) -> Params:
    """The plain average of N checkpoints' parameters."""
    return {n: torch.stack([p[n] for p in points]).mean(0) for n in points[0]}


def greedy_soup(evaluator: Evaluator, points: list[Params]) -> tuple[Params, list[int]]:
    """Wortsman et al.'s greedy soup: ingredients by decreasing accuracy on the evaluator's data, each kept
    only if the average with it is no less accurate. Returns the soup and the kept indices."""
    _, error = evaluate_points(evaluator, points)
    order = [int(i) for i in torch.argsort(error, stable=True)]
    kept, best_error = [order[0]], float(error[order[0]])
    for i in order[1:]:
        _, trial = evaluate_points(evaluator, [uniform_soup([points[k] for k in kept + [i]])])
        if float(trial[0]) <= best_error:
            kept.append(i)
            best_error = float(trial[0])
    return uniform_soup([points[k] for k in kept]), kept


def soups(evaluator: Evaluator, select: Evaluator, points: list[Params]) -> dict:
    """Error of each ingredient, the uniform soup and the greedy soup (chosen on `select`'s data)."""
    greedy, kept = greedy_soup(select, points)
    _, ingredient_error = evaluate_points(evaluator, points)
    _, soup_error = evaluate_points(evaluator, [uniform_soup(points), greedy])
    return {"ingredient_error": ingredient_error, "uniform_soup_error": float(soup_error[0]),
            "greedy_soup_error": float(soup_error[1]), "greedy_kept": kept}
