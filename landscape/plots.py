"""Figures in the style of the papers: one panel per noise with one line per scale (Fig. 3), the sign-ratio
sweep (Fig. 4), interpolation + SSR (Fig. 8, 11), SSR/distribution bars (Fig. 8), 2D contours,
Hessian spectrum and SLQ density (companion Fig. 13), mined curves (companion Fig. 9-10)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedsign.atomic import atomic_target  # noqa: E402
from landscape.result import ProbeResult  # noqa: E402

FORMATS = ("png", "pdf", "svg")  # --plot suffixes
SCALE_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def _title(result: ProbeResult, scaled: bool = True) -> str:
    """Checkpoint, parameter group and (for probes that scale directions) the scaling, for a figure's title."""
    ckpt = result.checkpoint[0] if isinstance(result.checkpoint, list) else result.checkpoint
    meta = result.metadata
    title = f"{Path(str(ckpt)).name or 'model'} | group {meta.get('group', '?')}"
    if scaled:
        scaling = meta.get("scaling", "")
        title += f" | scaling {scaling}" + (f", 1-D: {meta.get('filter_1d', '')}" if scaling == "filter" else "")
    return title


def _valley(result: ProbeResult):
    """Per noise a column; per form (plain, sign-consistent) two rows: test error and loss; a line per s."""
    lams, curves = np.asarray(result.arrays["lambdas"]), result.arrays["curves"]
    noises = list(dict.fromkeys(c["noise"] for c in curves))
    forms = sorted({c["sign_consistent"] for c in curves})
    scales = sorted({c["scale"] for c in curves})
    fig, axes = plt.subplots(2 * len(forms), len(noises), figsize=(max(2.6 * len(noises), 5.0), 1.9 * 2 * len(forms)),
                             squeeze=False, sharex=True, layout="constrained")
    for c in curves:
        row, col = 2 * forms.index(c["sign_consistent"]), noises.index(c["noise"])
        color = SCALE_COLORS[scales.index(c["scale"]) % len(SCALE_COLORS)]
        for offset, (values, factor) in enumerate(((c["error"], 100.0), (c["loss"], 1.0))):
            ax = axes[row + offset][col]
            ax.plot(lams, factor * np.asarray(values, dtype=float), color=color, label=f"s = {c['scale']:g}")
            ax.axvline(0.0, color="k", ls=":", lw=0.8)
        axes[row][col].set_title(("|eps| sign(theta): " if c["sign_consistent"] else "") + c["noise"], fontsize=8)
    for row in range(len(forms)):
        axes[2 * row][0].set_ylabel("test error (%)")
        axes[2 * row + 1][0].set_ylabel("test loss")
    for ax in axes[-1]:
        ax.set_xlabel("lambda")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(scales), fontsize=8, frameon=False)
    fig.suptitle(_title(result), fontsize=9)
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
    """One bar group per parameter group, a bar per checkpoint pair; the legend above the axes."""
    pairs = list(ssr)
    groups = list(next(iter(ssr.values()))) if ssr else []
    width = 0.8 / max(len(pairs), 1)
    for i, pair in enumerate(pairs):
        ax.bar(np.arange(len(groups)) + i * width, [ssr[pair][g] for g in groups], width, label=pair)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("sign consistency ratio (SSR)")
    ax.legend(fontsize=7, ncol=max(len(pairs), 1), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)


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
    """Top and bottom eigenvalues as bars (unconverged ones as grey crosses in their slots), SLQ density."""
    a = result.arrays
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.5, 3.4), layout="constrained")
    requested = int(a.get("requested", len(a["eigenvalues"])))
    sides = [("top", "tab:blue", list(a["eigenvalues"]))]
    if "bottom_eigenvalues" in a:
        sides.append(("bottom", "tab:red", list(a["bottom_eigenvalues"])))
    x = 0
    for side, color, values in sides:
        ax1.bar(range(x, x + len(values)), values, color=color, label=f"{side} {len(values)}")
        slots = requested - len(values)
        if slots > 0:  # ARPACK did not converge these: shown as empty slots, never silently dropped
            ax1.plot(range(x + len(values), x + requested), [0.0] * slots, "x", color="grey", ms=7,
                     label=f"{side}: {slots} not converged")
        x += requested
    ax1.axhline(0.0, color="k", lw=0.6)
    ax1.set_xlabel("eigenpair (descending within top and bottom)")
    ax1.set_ylabel("Hessian eigenvalue")
    ax1.legend(fontsize=7)
    probe = f", {a['trace_probe']}" if "trace_probe" in a else ""
    ax1.set_title(f"tr(H) = {a['trace']:.3g} +- {a['trace_stderr']:.2g} ({a['trace_samples']} samples{probe})",
                  fontsize=8)
    if "density" in a:
        d = a["density"]
        ax2.semilogy(d["grid"], np.maximum(np.asarray(d["density"]), 1e-12))
        ax2.set_xlabel("eigenvalue")
        ax2.set_ylabel("density (SLQ, log)")
    else:
        ax2.axis("off")
    fig.suptitle(_title(result, scaled=False) + f" | {result.metadata.get('data', '')}", fontsize=9)
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
    """Write the probe's figure atomically; the format follows the suffix (FORMATS)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = PLOTTERS[result.probe](result)
    try:
        if fig.get_layout_engine() is None:
            fig.tight_layout()
        with atomic_target(path) as tmp:
            fig.savefig(tmp, dpi=130, format=path.suffix.lstrip(".").lower() or "png")
    finally:
        plt.close(fig)
    return path
