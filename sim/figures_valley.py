"""The asymmetric-valley paper's figures (NeurIPS 2024, Sect. 4) and the FL valley figure, each a function
FigureContext -> Made that trains or loads its models and calls the landscape probes:

- Fig. 3: valleys under the 7 common noises, plain (top) and with theta_f's sign (bottom), s in {0.2, 1, 2}.
- Fig. 4: the sign-ratio sweep, mean error over lambda in [0, 1] vs [-1, 0] for r = 0 ... 1.
- Fig. 5: valleys under the 6 special directions (theta_0, theta_f, sign, sign - mu, sgp, sgp - mu).
- Fig. 7: three BN weight initialisations (1, U(0, 1), G(0, 0.1)): BN weights before/after training,
  valleys under {0, 1} noise, NS and Filter-NS.
- Fig. 8: interpolation between batch-32 and batch-2048 models, parameter mean/std per category, and
  the sign consistency of each model with their difference.
- Fig. 9: Gaussian valleys (plain and sign-replaced) of models trained with other LR, BS, WD.
- FL: the final server model of a FedAvg and a FedSign run (Table 1's setting), plain vs sign-replaced
  Gaussian noise, side by side.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedsign.errors import ConfigError  # noqa: E402
from landscape.directions import (COMMON_NOISES, SPECIAL_DIRECTIONS, difference, noise_direction,  # noqa: E402
                                  special_direction)
from landscape.groups import category_of  # noqa: E402
from landscape.interp import interpolate  # noqa: E402
from landscape.plots import plot  # noqa: E402
from landscape.result import ProbeResult  # noqa: E402
from landscape.sign_sweep import DEFAULT_RATIOS, sign_sweep  # noqa: E402
from landscape.signs import distribution_summary, sign_consistency_ratio  # noqa: E402
from landscape.valley import Direction, common_noise_directions, valley  # noqa: E402
from sim.figures_models import BN_INITS, FigureContext, Made, Recipe, finish, result_json  # noqa: E402
from sim.figures_settings import SCALES, Form  # noqa: E402

SHORT = {"lr": "lr", "batch_size": "bs", "weight_decay": "wd"}  # Fig. 9's hyperparameters and their labels
FL_METHODS = ("fedavg", "fedsign")


# ---- the models each figure trains when no checkpoint is given (also what `--plan` estimates) ----
def base_models(form: Form) -> dict[str, Recipe]:
    return {"base": form.base}


def bn_models(form: Form) -> dict[str, Recipe]:
    """Fig. 7: the base recipe on a BN model, once per BN weight initialisation."""
    return {k: replace(form.base, model=form.bn_model, bn_init=k) for k in BN_INITS}


def batch_models(form: Form) -> dict[str, Recipe]:
    """Fig. 8: the base recipe at the small and the large batch size."""
    return {f"bs{b}": replace(form.base, batch_size=b) for b in form.hyper["batch_size"]}


def hyper_models(form: Form) -> dict[str, Recipe]:
    """Fig. 9: the base recipe, and each hyperparameter set to its two other values."""
    recipes = {"default": form.base}
    for key, values in form.hyper.items():
        for v in values:
            recipes[f"{SHORT[key]}{v:g}"] = replace(form.base, **{key: v})
    return recipes


def fl_runs(form: Form, seed: int, device: str, data_root: str) -> dict[str, dict]:
    """The FL figure: a FedAvg and a FedSign run of the form's Table 1 setting (dotted config keys)."""
    runs = {}
    for method in FL_METHODS:
        flat = {**form.fl, "method.name": method, "seed": seed, "device": device}
        if flat["dataset.name"] != "digits":
            flat["dataset.root"] = data_root
        if method == "fedsign":
            flat["method.gamma"] = form.fedsign_gamma
        runs[method] = flat
    return runs


def asymmetries(result: ProbeResult, scale: float = 1.0) -> dict[str, float]:
    """{noise, or sign(noise) for |noise| sign(theta): asymmetry} of a valley result's curves at scale s."""
    return {(f"sign({c['noise']})" if c["sign_consistent"] else c["noise"]): float(c["asymmetry"])
            for c in result.arrays["curves"] if c["scale"] == scale}


def center_error(result: ProbeResult) -> float:
    """Test error at lambda = 0 (the model itself) of a valley result."""
    lams = np.asarray(result.arrays["lambdas"])
    return float(np.asarray(result.arrays["curves"][0]["error"])[np.argmin(np.abs(lams))])


# ---- Fig. 3, 4, 5: one model ----
def av_fig3(ctx: FigureContext) -> Made:
    src = ctx.sources(base_models(ctx.form))[0]
    probe = ctx.store.probe(src.path)
    directions = common_noise_directions(probe.theta, probe.names, list(COMMON_NOISES), [False, True], ctx.seed)
    result = valley(probe.evaluator, probe.theta, directions, scales=SCALES, lambdas=ctx.lambdas(), scaling="ns",
                    metadata=ctx.metadata(probe), progress=ctx.progress("valley"))
    return Made({"models": {src.label: src.info}, "probes": {"valley": result_json(result, probe)}},
                {"test_error": center_error(result), "asymmetry_s1": asymmetries(result)},
                lambda path: plot(result, path))


def av_fig4(ctx: FigureContext) -> Made:
    src = ctx.sources(base_models(ctx.form))[0]
    probe = ctx.store.probe(src.path)
    result = sign_sweep(probe.evaluator, probe.theta, probe.names, ratios=DEFAULT_RATIOS, lambdas=ctx.lambdas(),
                        scale=1.0, scaling="ns", seed=ctx.seed, metadata=ctx.metadata(probe),
                        progress=ctx.progress("sign sweep"))
    a = result.arrays
    summary = {"ratios": [float(r) for r in a["ratios"]], "pos_error": [float(v) for v in a["pos_error"]],
               "neg_error": [float(v) for v in a["neg_error"]]}
    return Made({"models": {src.label: src.info}, "probes": {"sign_sweep": result_json(result, probe)}}, summary,
                lambda path: plot(result, path))


def av_fig5(ctx: FigureContext) -> Made:
    src = ctx.sources(base_models(ctx.form))[0]
    probe = ctx.store.probe(src.path)
    init = ctx.store.parameters_like(src.init, probe) if src.init else None
    if init is None:
        ctx.log(f"{ctx.name}: no initial model (--init CHECKPOINT): the theta_0 panel is left out")
    directions = [Direction(kind, False, special_direction(probe.theta, probe.names, kind, init))
                  for kind in SPECIAL_DIRECTIONS if kind != "init" or init is not None]
    result = valley(probe.evaluator, probe.theta, directions, scales=SCALES, lambdas=ctx.lambdas(), scaling="ns",
                    metadata=ctx.metadata(probe, init=str(src.init or "")), progress=ctx.progress("valley"))
    return Made({"models": {src.label: src.info}, "probes": {"valley": result_json(result, probe)}},
                {"test_error": center_error(result), "asymmetry_s1": asymmetries(result)},
                lambda path: plot(result, path))


# ---- Fig. 7: BN and its initialisation ----
def av_fig7(ctx: FigureContext) -> Made:
    panels = []
    for src in ctx.sources(bn_models(ctx.form)):
        probe = ctx.store.probe(src.path)
        category = category_of(probe.model)
        bn = [n for n in probe.names if category.get(n) == "bn_weight"]
        if not bn:
            raise ConfigError(f"{ctx.name} needs a model with BatchNorm; '{src.path}' has none")
        shown = max(bn, key=lambda n: probe.theta[n].numel())  # the first of the widest BN layers
        init = ctx.store.parameters_like(src.init, probe) if src.init else None
        binary = [Direction("binary", False, noise_direction(probe.theta, probe.names, "binary", ctx.seed))]
        curves = {s: valley(probe.evaluator, probe.theta, binary, scales=SCALES, lambdas=ctx.lambdas(), scaling=s,
                            metadata=ctx.metadata(probe, scaling=s), progress=ctx.progress(f"{src.label} {s}"))
                  for s in ("ns", "filter")}
        panels.append({"label": src.label, "info": src.info, "bn_weight": shown,
                       "initial": init[shown].flatten().cpu().numpy() if init else None,
                       "converged": probe.theta[shown].flatten().cpu().numpy(),
                       "distribution": distribution_summary(probe.model, probe.theta).get("bn_weight"),
                       "valley": {s: r for s, r in curves.items()}, "probe": probe})
    data = {"models": {p["label"]: p["info"] for p in panels},
            "bn_weights": {p["label"]: {"name": p["bn_weight"], "initial": p["initial"], "converged": p["converged"],
                                        "distribution": p["distribution"]} for p in panels},
            "probes": {f"{p['label']}/{s}": result_json(r, p["probe"]) for p in panels for s, r in p["valley"].items()}}
    summary = {p["label"]: {"bn_weight_positive": p["distribution"]["positive"],
                            **{f"asymmetry_{s}_s1": asymmetries(r)["binary"] for s, r in p["valley"].items()}}
               for p in panels}

    def draw(path: Path) -> None:
        fig, axes = plt.subplots(3, len(panels), figsize=(3.3 * len(panels), 7.5), squeeze=False)
        for j, p in enumerate(panels):
            ax = axes[0][j]
            if p["initial"] is not None:
                ax.hist(p["initial"], bins=30, alpha=0.5, color="tab:gray", label="initial")
            ax.hist(p["converged"], bins=30, alpha=0.7, color="tab:blue", label="converged")
            ax.set_title(f"BN init {p['label']}: {p['bn_weight']}", fontsize=8)
            ax.set_xlabel("BN weight")
            ax.legend(fontsize=7)
            for i, (s, r) in enumerate(p["valley"].items(), start=1):
                scale_lines(axes[i][j], r, f"{{0,1}} noise, {'NS' if s == 'ns' else 'Filter-NS'}")
        finish(fig, path, "Fig. 7: BN and its initialisation")
    return Made(data, summary, draw)


# ---- Fig. 8: interpolating a small-batch and a large-batch model ----
def av_fig8(ctx: FigureContext) -> Made:
    sources = ctx.sources(batch_models(ctx.form))
    if len(sources) != 2:
        raise ConfigError(f"{ctx.name} interpolates two models: give --checkpoint twice (A, then B)")
    a, b = sources
    probe = ctx.store.probe(a.path)
    theta_a, theta_b = probe.theta, ctx.store.parameters_like(b.path, probe)
    result = interpolate(probe.evaluator, probe.model, theta_a, theta_b, lambdas=ctx.lambdas(-1.0, 2.0),
                         metadata=ctx.metadata(probe, checkpoints=[str(a.path), str(b.path)]),
                         progress=ctx.progress("interpolation"))
    eps = difference(theta_a, theta_b, probe.names)  # theta_B - theta_A: the direction seen from A
    category = category_of(probe.model)
    cats = [c for c in dict.fromkeys(category.values())]
    names = {c: [n for n in probe.names if category.get(n) == c] for c in cats}
    ssr = {a.label: {c: sign_consistency_ratio(theta_a, eps, names[c]) for c in cats},
           b.label: {c: sign_consistency_ratio(theta_b, eps, names[c]) for c in cats}}
    dist = {a.label: distribution_summary(probe.model, theta_a), b.label: distribution_summary(probe.model, theta_b)}
    arr = result.arrays
    summary = {"error_A": float(np.interp(0.0, arr["lambdas"], arr["error"])),
               "error_B": float(np.interp(1.0, arr["lambdas"], arr["error"])),
               "error_barrier": float(arr["error_barrier"]), "ssr_with_difference": ssr}

    def draw(path: Path) -> None:
        fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.4))
        lams = np.asarray(arr["lambdas"])
        ax1.plot(lams, 100 * np.asarray(arr["error"]), "o-", ms=3, color="tab:blue")
        ax1.set_xlabel(f"lambda in (1 - lambda) {a.label} + lambda {b.label}")
        ax1.set_ylabel("test error (%)", color="tab:blue")
        twin = ax1.twinx()
        twin.plot(lams, np.asarray(arr["loss"]), "--", color="tab:red")
        twin.set_ylabel("test loss", color="tab:red")
        for x in (0.0, 1.0):
            ax1.axvline(x, color="k", ls=":", lw=0.8)
        for i, (label, d) in enumerate(dist.items()):
            xs = [k + 0.2 * i for k, c in enumerate(cats) if c in d]
            ax2.errorbar(xs, [d[c]["mean"] for c in cats if c in d], [d[c]["std"] for c in cats if c in d],
                         fmt="o", capsize=3, label=label)
        ax2.set_xticks(range(len(cats)), cats, fontsize=7)
        ax2.set_ylabel("mu_p +- sigma_p")
        ax2.legend(fontsize=7)
        width = 0.38
        for i, (label, values) in enumerate(ssr.items()):
            ax3.bar(np.arange(len(cats)) + i * width, [values[c] for c in cats], width,
                    label=f"SSR({label}, {b.label} - {a.label})")
        ax3.set_xticks(np.arange(len(cats)) + width / 2, cats, fontsize=7)
        ax3.set_ylabel("sign consistency ratio")
        ax3.set_ylim(0, 1)
        ax3.legend(fontsize=7, loc="lower right")
        finish(fig, path, f"Fig. 8: interpolation between {a.label} and {b.label}")
    data = {"models": {s.label: s.info for s in sources}, "probes": {"interp": result_json(result, probe)},
            "distribution": dist, "ssr_with_difference": ssr}
    return Made(data, summary, draw)


# ---- Fig. 9: hyperparameters ----
def hyper_label(label: str) -> tuple[str, float | None]:
    """'default' -> ('default', None); 'lr0.1' / 'bs32' / 'wd1e-05' -> (hyperparameter, value)."""
    if label == "default":
        return "default", None
    match = re.fullmatch(r"(lr|bs|wd)([0-9.eE+-]+)", label)
    if not match:
        raise ConfigError(f"checkpoint label {label!r}: Fig. 9 takes 'default', lrX, bsX or wdX (e.g. lr0.1=PATH)")
    key = {v: k for k, v in SHORT.items()}[match.group(1)]
    try:
        return key, float(match.group(2))
    except ValueError:
        raise ConfigError(f"checkpoint label {label!r}: {match.group(2)!r} is not a number") from None


def av_fig9(ctx: FigureContext) -> Made:
    sources = ctx.sources(hyper_models(ctx.form))
    curves = {}
    for src in sources:
        hyper_label(src.label)  # refuse a label that names no hyperparameter before probing
    for src in sources:
        probe = ctx.store.probe(src.path)
        directions = common_noise_directions(probe.theta, probe.names, ["gaussian"], [False, True], ctx.seed)
        curves[src.label] = (valley(probe.evaluator, probe.theta, directions, scales=(1.0,), lambdas=ctx.lambdas(),
                                    metadata=ctx.metadata(probe), progress=ctx.progress(src.label)), probe)
    keys = [k for k in SHORT if any(hyper_label(lb)[0] == k for lb in curves)] or ["default"]
    summary = {label: asymmetries(r) for label, (r, _) in curves.items()}

    def draw(path: Path) -> None:
        fig, axes = plt.subplots(2, len(keys), figsize=(3.6 * len(keys), 5.6), squeeze=False)
        for j, key in enumerate(keys):
            shown = [lb for lb in curves if hyper_label(lb)[0] in ("default", key)]
            for i, sign in enumerate((False, True)):
                ax = axes[i][j]
                for lb in shown:
                    r = curves[lb][0]
                    c = next(c for c in r.arrays["curves"] if c["sign_consistent"] == sign)
                    ax.plot(r.arrays["lambdas"], 100 * np.asarray(c["error"]), label=lb)
                ax.axvline(0.0, color="k", ls=":", lw=0.8)
                ax.set_title(("|eps| sign(theta), " if sign else "G(0,1), ") + SHORT.get(key, key), fontsize=8)
                ax.set_xlabel("lambda")
                ax.set_ylabel("test error (%)")
                ax.legend(fontsize=7)
        finish(fig, path, "Fig. 9: valleys of models trained with other hyperparameters")
    data = {"models": {s.label: s.info for s in sources},
            "probes": {label: result_json(r, probe) for label, (r, probe) in curves.items()}}
    return Made(data, summary, draw)


# ---- FL: the final server model of FedAvg and FedSign ----
def fl_valley(ctx: FigureContext) -> Made:
    runs = {}
    if ctx.given:
        for label, path in ctx.given:
            runs[label] = (path, {"checkpoint": str(path), "given": True})
    else:
        store = ctx.store
        for method, flat in fl_runs(ctx.form, ctx.seed, store.device, store.data_root).items():
            checkpoint, results = store.federated(flat)
            runs[method] = (checkpoint, {"config": flat, "run_dir": results["run_dir"],
                                         "final_accuracy": results["final_accuracy"], "checkpoint": str(checkpoint),
                                         "wall_seconds": results["wall_seconds"]})
    panels = {}
    for label, (checkpoint, info) in runs.items():
        probe = ctx.store.probe(checkpoint)
        directions = common_noise_directions(probe.theta, probe.names, ["gaussian"], [False, True], ctx.seed)
        panels[label] = (valley(probe.evaluator, probe.theta, directions, scales=SCALES, lambdas=ctx.lambdas(),
                                metadata=ctx.metadata(probe), progress=ctx.progress(label)), probe)
    summary = {label: {"test_error": center_error(r), "asymmetry_s1": asymmetries(r),
                       "final_accuracy": runs[label][1].get("final_accuracy")}  # None for a given checkpoint
               for label, (r, _) in panels.items()}

    def draw(path: Path) -> None:
        fig, axes = plt.subplots(2, len(panels), figsize=(3.8 * len(panels), 5.6), squeeze=False)
        for j, (label, (r, _)) in enumerate(panels.items()):
            for i, sign in enumerate((False, True)):
                kind = "|eps| sign(theta)" if sign else "G(0,1)"
                scale_lines(axes[i][j], r, f"{label}: {kind}", sign=sign)
        finish(fig, path, "Valley of the final server model: plain vs sign-replaced Gaussian noise")
    data = {"models": {label: info for label, (_, info) in runs.items()},
            "probes": {label: result_json(r, probe) for label, (r, probe) in panels.items()}}
    return Made(data, summary, draw)


# ---- drawing helpers ----
def scale_lines(ax, result: ProbeResult, title: str, sign: bool | None = None) -> None:
    """Error curves of a valley result, one line per scale s (only curves with the given sign form)."""
    lams = np.asarray(result.arrays["lambdas"])
    for c in result.arrays["curves"]:
        if sign is None or c["sign_consistent"] == sign:
            ax.plot(lams, 100 * np.asarray(c["error"]), label=f"s={c['scale']:g}")
    ax.axvline(0.0, color="k", ls=":", lw=0.8)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("lambda")
    ax.set_ylabel("test error (%)")
    ax.legend(fontsize=7)
