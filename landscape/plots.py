"""Figures in the style of the papers: one panel per noise with one line per scale (Fig. 3), the sign-ratio
sweep (Fig. 4), interpolation + SSR (Fig. 8, 11), SSR/distribution bars (Fig. 8), 2D contours,
Hessian spectrum and SLQ density (companion Fig. 13), mined curves (companion Fig. 9-10)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from landscape.result import ProbeResult  # noqa: E402

SCALE_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def _valley(result: ProbeResult):
    lams, curves = np.asarray(result.arrays["lambdas"]), result.arrays["curves"]
    noises = list(dict.fromkeys(c["noise"] for c in curves))
    rows = sorted({c["sign_consistent"] for c in curves})
    fig, axes = plt.subplots(len(rows), len(noises), figsize=(2.6 * len(noises), 2.3 * len(rows)), squeeze=False)
    scales = sorted({c["scale"] for c in curves})
    for c in curves:
        ax = axes[rows.index(c["sign_consistent"])][noises.index(c["noise"])]
        color = SCALE_COLORS[scales.index(c["scale"]) % len(SCALE_COLORS)]
        ax.plot(lams, 100 * np.asarray(c["error"]), color=color, label=f"s={c['scale']:g}")
        ax.set_title(("|eps|sign(theta) " if c["sign_consistent"] else "") + c["noise"], fontsize=8)
        ax.axvline(0.0, color="k", ls=":", lw=0.8)
    for ax in axes[:, 0]:
        ax.set_ylabel("test error (%)")
    for ax in axes[-1]:
        ax.set_xlabel("lambda")
    axes[0][0].legend(fontsize=7)
    return fig


def _sign_sweep(result: ProbeResult):
    a = result.arrays
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(a["ratios"], 100 * np.asarray(a["pos_error"]), "o-", label="lambda in [0, 1]")
    ax.plot(a["ratios"], 100 * np.asarray(a["neg_error"]), "s-", label="lambda in [-1, 0]")
    ax.set_xlabel("sign-consistent fraction r")
    ax.set_ylabel("mean test error (%)")
    ax.legend(fontsize=8)
    return fig


def _ssr_bars(ax, ssr: dict):
    pairs = list(ssr)
    groups = list(next(iter(ssr.values()))) if ssr else []
    width = 0.8 / max(len(pairs), 1)
    for i, pair in enumerate(pairs):
        ax.bar(np.arange(len(groups)) + i * width, [ssr[pair][g] for g in groups], width, label=f"SSR {pair}")
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, fontsize=7)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)


def _interp(result: ProbeResult):
    a = result.arrays
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
    ax1.plot(a["lambdas"], 100 * np.asarray(a["error"]), "o-", ms=3)
    for x, color in ((0.0, "k"), (1.0, "r")):
        ax1.axvline(x, color=color, ls=":", lw=0.8)
    ax1.set_xlabel("lambda in (1 - lambda) A + lambda B")
    ax1.set_ylabel("test error (%)")
    ax1.set_title(f"gap at 1/2: {100 * a['gap']:+.2f} pts, barrier {100 * a['error_barrier']:.2f} pts", fontsize=8)
    _ssr_bars(ax2, a["ssr"])
    return fig


def _signs(result: ProbeResult):
    a = result.arrays
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3))
    _ssr_bars(ax1, a["ssr"])
    labels = list(a["distribution"])
    cats = list(dict.fromkeys(c for d in a["distribution"].values() for c in d))
    for i, label in enumerate(labels):
        dist = a["distribution"][label]
        xs = [j + 0.15 * i for j, c in enumerate(cats) if c in dist]
        ax2.errorbar(xs, [dist[c]["mean"] for c in cats if c in dist], [dist[c]["std"] for c in cats if c in dist],
                     fmt="o", capsize=3, label=label)
    ax2.set_xticks(range(len(cats)), cats, fontsize=7)
    ax2.set_ylabel("mu_p +- sigma_p")
    ax2.legend(fontsize=7)
    return fig


def _surface(result: ProbeResult):
    a = result.arrays
    fig, ax = plt.subplots(figsize=(4.5, 3.8))
    cs = ax.contourf(a["xs"], a["ys"], np.asarray(a["loss"], dtype=float), levels=20, cmap="viridis")
    fig.colorbar(cs, ax=ax, label="loss")
    ax.plot([0], [0], "r*")
    ax.set_xlabel("lambda_1")
    ax.set_ylabel("lambda_2")
    return fig


def _hessian(result: ProbeResult):
    a = result.arrays
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
    values = list(a["eigenvalues"]) + list(a.get("bottom_eigenvalues", []))
    top = len(a["eigenvalues"])
    ax1.bar(range(len(values)), values, color=["tab:blue"] * top + ["tab:red"] * (len(values) - top))
    ax1.set_title(f"top/bottom eigenvalues; tr(H) = {a['trace']:.3g} +- {a['trace_stderr']:.2g}", fontsize=8)
    if "density" in a:
        d = a["density"]
        ax2.semilogy(d["grid"], np.maximum(np.asarray(d["density"]), 1e-12))
        ax2.set_xlabel("eigenvalue")
        ax2.set_ylabel("density (log)")
    return fig


def _mine(result: ProbeResult):
    a = result.arrays
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
    ax1.plot(a["lambdas"], a["loss"], label="loss")
    ax1.axvline(0.0, color="k", ls=":", lw=0.8)
    if a["algorithm"] == "vvv":
        ax1.axvline(1.0, color="r", ls=":", lw=0.8)
    ax1.set_xlabel("lambda")
    ax1.set_ylabel("loss")
    ax1.set_title(f"mined {a['algorithm']} direction", fontsize=8)
    ax2.plot(range(1, len(a["history"]) + 1), a["history"], "o-")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("mining objective")
    return fig


PLOTTERS = {"valley": _valley, "sign-sweep": _sign_sweep, "interp": _interp, "signs": _signs,
            "surface": _surface, "hessian": _hessian, "mine": _mine}


def plot(result: ProbeResult, path: str | Path) -> Path:
    """Write the probe's figure; the format follows the suffix (.png, .pdf)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = PLOTTERS[result.probe](result)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
