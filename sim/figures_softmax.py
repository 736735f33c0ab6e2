"""The asymmetric-valley paper's softmax demo (Sect. 5, App. D.2-D.3, Listing 2): multinomial logistic
regression without intercept on all 1,797 scikit-learn digits (raw pixels 0-16), as Listing 2 fits it.

- Fig. 10: a digit-0 sample and the class-0 weight pattern w + lambda sign(w), lambda in [-1, 1].
- Fig. 29: along W + lambda eps for Gaussian eps (first row) and |eps| sign(W) (second row):
  E_x[tr(P)] with P = diag(p) - p p^T, tr(H), eps^T g, eps^T H eps, cross-entropy and error.

H is the Hessian of the mean cross-entropy w.r.t. W (row-major): (1/N) sum_n P_n (x) x_n x_n^T
(App. D.3), so tr(H) = mean_n tr(P_n) ||x_n||^2 and eps^T H eps = mean_n u^T P_n u with u = eps x_n;
g = -(1/N) sum_n (onehot(y_n) - p_n) x_n^T. Loss and error come from the landscape evaluator.
Listing 2 computes its first-order term as g . W_lambda; this follows the text, eps^T g_lambda.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from landscape.directions import noise_direction, special_direction  # noqa: E402
from landscape.evaluator import Evaluator, ProbeData  # noqa: E402
from sim.figures_models import FigureContext, Made, finish  # noqa: E402

PATTERN_LAMBDAS = (-1.0, -0.5, 0.0, 0.5, 1.0)  # Fig. 10's panels
CLASS = 0  # Fig. 10 shows digit 0
METRICS = ("gini", "trace_hessian", "eps_grad", "eps_hessian_eps", "loss", "error")
TITLES = {"gini": "E_x[tr(P)]", "trace_hessian": "tr(H)", "eps_grad": "eps^T g", "eps_hessian_eps": "eps^T H eps",
          "loss": "cross-entropy", "error": "error"}


def fit_softmax(max_iter: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """W [10, 64], X [1797, 64] (float64) and y of Listing 2's LogisticRegression fit."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = LogisticRegression(max_iter=max_iter, fit_intercept=False).fit(x, y)
    info = {"max_iter": max_iter, "iterations": int(np.max(fit.n_iter_)),
            "converged": not any("converge" in str(w.message).lower() for w in caught),
            "train_accuracy": float(fit.score(x, y))}
    return torch.tensor(fit.coef_), torch.tensor(x), torch.tensor(y), info


def softmax_evaluator(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> Evaluator:
    model = nn.Linear(weight.shape[1], weight.shape[0], bias=False).double()
    with torch.no_grad():
        model.weight.copy_(weight)
    return Evaluator(model, ProbeData(x, y, "sklearn digits, all 1797"), recalibrate=False, chunk=1)


def softmax_metrics(weight: torch.Tensor, eps: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The Hessian and gradient terms of App. D.3 at W = `weight`, along `eps` (closed forms, float64)."""
    p = torch.softmax(x @ weight.T, dim=1)
    gini = (p * (1 - p)).sum(1)  # tr(diag(p) - p p^T) per sample
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).to(p.dtype)
    g = -(onehot - p).T @ x / len(y)  # gradient of the mean cross-entropy
    u = x @ eps.T  # [N, C]: eps x_n
    return {"gini": float(gini.mean()),
            "trace_hessian": float((gini * (x * x).sum(1)).mean()),  # tr(P (x) x x^T) = tr(P) ||x||^2
            "eps_grad": float((eps * g).sum()),
            "eps_hessian_eps": float(((p * u**2).sum(1) - (p * u).sum(1) ** 2).mean())}  # u^T P u


def av_fig10(ctx: FigureContext) -> Made:
    weight, x, y, fit = fit_softmax(ctx.form.softmax_max_iter)
    evaluator = softmax_evaluator(weight, x, y)
    theta = evaluator.parameters()
    sign = special_direction(theta, ["weight"], "sign")  # sign(W)
    loss, error = evaluator.curve(theta, sign, PATTERN_LAMBDAS)
    w, sample = weight[CLASS], x[y == CLASS][0]
    patterns = [w + lam * torch.sign(w) for lam in PATTERN_LAMBDAS]
    corr = [float(np.corrcoef(p.numpy(), sample.numpy())[0, 1]) for p in patterns]
    data = {"fit": fit, "class": CLASS, "lambdas": list(PATTERN_LAMBDAS), "sample": sample.view(8, 8),
            "patterns": [p.view(8, 8) for p in patterns], "sample_score": [float(p @ sample) for p in patterns],
            "correlation_with_sample": corr, "loss": loss, "error": error}
    summary = {"correlation_with_sample": dict(zip(map(str, PATTERN_LAMBDAS), corr)),
               "error": dict(zip(map(str, PATTERN_LAMBDAS), error.tolist()))}

    def draw(path: Path) -> None:
        fig, axes = plt.subplots(1, 1 + len(patterns), figsize=(1.9 * (1 + len(patterns)), 2.5))
        axes[0].imshow(sample.view(8, 8), cmap="gray_r")
        axes[0].set_title(f"digit {CLASS}", fontsize=8)
        for ax, lam, p, e in zip(axes[1:], PATTERN_LAMBDAS, patterns, error.tolist()):
            bound = float(p.abs().max())
            ax.imshow(p.view(8, 8), cmap="RdBu_r", vmin=-bound, vmax=bound)  # white = 0
            ax.set_title(f"lambda={lam:g}\nerror {100 * e:.1f}%", fontsize=8)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        finish(fig, path, "Fig. 10: w + lambda sign(w), the class-0 weight of a softmax classifier")
    return Made(data, summary, draw)


def av_fig29(ctx: FigureContext) -> Made:
    weight, x, y, fit = fit_softmax(ctx.form.softmax_max_iter)
    evaluator = softmax_evaluator(weight, x, y)
    theta = evaluator.parameters()
    lams = np.linspace(-1.0, 1.0, 21)  # Listing 2
    rows = {}
    for sign in (False, True):
        eps = noise_direction(theta, ["weight"], "gaussian", ctx.seed, sign=sign)  # raw, as in Listing 2
        loss, error = evaluator.curve(theta, eps, lams)
        per_lambda = [softmax_metrics(weight + lam * eps["weight"], eps["weight"], x, y) for lam in lams]
        rows["sign" if sign else "plain"] = {**{m: [r[m] for r in per_lambda] for m in METRICS[:4]},
                                             "loss": loss, "error": error}
    summary = {kind: {m: {"lambda=-1": float(r[m][0]), "lambda=+1": float(r[m][-1])} for m in ("loss", "trace_hessian")}
               for kind, r in rows.items()}

    def draw(path: Path) -> None:
        fig, axes = plt.subplots(2, len(METRICS), figsize=(2.5 * len(METRICS), 4.6))
        for i, (kind, r) in enumerate(rows.items()):
            for j, m in enumerate(METRICS):
                ax = axes[i][j]
                ax.plot(lams, np.asarray(r[m], dtype=float))
                ax.axvline(0.0, color="k", ls=":", lw=0.8)
                ax.set_title(("|eps| sign(W): " if kind == "sign" else "G(0,1): ") + TITLES[m], fontsize=8)
                ax.set_xlabel("lambda")
        finish(fig, path, "Fig. 29: the softmax demo along W + lambda eps")
    return Made({"fit": fit, "lambdas": lams, "seed": ctx.seed, "rows": rows}, summary, draw)
