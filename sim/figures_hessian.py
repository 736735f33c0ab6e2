"""The companion paper's figures ("Visualizing, rethinking, and mining the loss landscape of deep neural
networks", Sect. 2.4-3), on checkpoints taken at several epochs of one training run:

- Fig. 8: 1D curves theta + lambda v along the top-5 eigenvectors of the Hessian (P.E., first row) and
  the bottom 5 (N.E., second row: w-peak curves where the eigenvalues are negative).
- Fig. 9: the w-peak direction mined by Algorithm 1, its curve, and |cos| with N.E.1-10 and P.E.10-1.
- Fig. 10: vvv-basin directions mined by Algorithm 2 for alpha in {0, 0.1}, gamma in {0.1, 0.5, 0.9}.
- Fig. 13: the Hessian's eigenvalue density (SLQ; the smallest eigenvalue in brackets) and the
  distribution of L(theta + lambda eps) - L(theta) over 100 Gaussian eps (sigma = 1), lambda in
  {0.001, 0.01}.

All work on the training loss (the loss that was minimised) over the form's training subset, with the
model in eval mode (BN running statistics from the checkpoint): the function whose Hessian
`landscape.hessian.HessianOperator` takes, so curves and eigenpairs describe the same function.
Eigenvectors are unit vectors and mined directions are used as mined (no norm scaling).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from landscape.directions import noise_direction  # noqa: E402
from landscape.evaluator import Evaluator  # noqa: E402
from landscape.hessian import HessianOperator, eigenpairs, eigenvector_direction, slq_density  # noqa: E402
from landscape.mine import mine  # noqa: E402
from sim.figures_models import FigureContext, Made, Probe, Recipe, Source, finish, result_json  # noqa: E402
from sim.figures_settings import Form  # noqa: E402

VVV_ALPHAS = (0.0, 0.1)  # Sect. 2.5: alpha in {0.0, 0.1}
VVV_GAMMAS = (0.1, 0.5, 0.9)  # gamma in {0.1, 0.5, 0.9}
PERTURBATION_LAMBDAS = (0.001, 0.01)  # Sect. 3, Fig. 13 (second row)


def companion_models(form: Form) -> dict[str, Recipe]:
    return {"companion": form.companion}


@dataclass
class Stage:
    """One checkpoint of the companion figures: its probe, Hessian operator and training-loss evaluator."""

    source: Source
    probe: Probe
    op: HessianOperator
    loss: Evaluator


def stages(ctx: FigureContext, with_init: bool = False) -> list[Stage]:
    """The checkpoints given, or the companion run's kept epochs (the initial model only if asked)."""
    if ctx.given:
        sources = ctx.sources({})
    else:
        trained = ctx.store.central(companion_models(ctx.form)["companion"])
        sources = [Source("init" if e == 0 else f"epoch {e}", path, trained.describe())
                   for e, path in trained.checkpoints.items() if with_init or e > 0]
    out = []
    for src in sources:
        probe = ctx.store.probe(src.path)
        data = probe.context.train
        out.append(Stage(src, probe, HessianOperator(probe.model, probe.theta, probe.names, data,
                                                     probe.evaluator.batch_size), probe.train_evaluator()))
    return out


def eigen(ctx: FigureContext, stage: Stage, k: int) -> dict:
    """k top (LA) and k bottom (SA) eigenpairs; bottom ones sorted most negative first (N.E.1 ...).
    Pairs ARPACK did not converge within the form's restarts are left out (and counted)."""
    top, top_vecs = eigenpairs(stage.op, k, "LA", ctx.seed, maxiter=ctx.form.eigsh_maxiter)
    low, low_vecs = eigenpairs(stage.op, k, "SA", ctx.seed + 1, maxiter=ctx.form.eigsh_maxiter)
    ctx.log(f"{ctx.name} {stage.source.label}: top {np.round(top, 4).tolist()}, bottom {np.round(low, 4).tolist()} "
            f"({stage.op.hvp_count} Hessian-vector products so far)")
    return {"top": top, "top_vectors": top_vecs, "bottom": low[::-1], "bottom_vectors": low_vecs[:, ::-1]}


def base_loss(stage: Stage) -> float:
    loss, _ = stage.loss.curve(stage.probe.theta, {}, [0.0])
    return float(loss[0])


def not_converged(ax, ctx: FigureContext) -> None:
    ax.text(0.5, 0.5, f"no pair converged within\n{ctx.form.eigsh_maxiter} ARPACK restarts", ha="center",
            va="center", transform=ax.transAxes, fontsize=8)


# ---- Fig. 8 ----
def cp_fig8(ctx: FigureContext) -> Made:
    lams = ctx.lambdas()
    panels = []
    for stage in stages(ctx):
        pairs = eigen(ctx, stage, ctx.form.hessian_k)
        rows = {}
        for kind, values, vectors in (("P.E.", pairs["top"], pairs["top_vectors"]),
                                      ("N.E.", pairs["bottom"], pairs["bottom_vectors"])):
            rows[kind] = [{"eigenvalue": float(v),
                           "loss": stage.loss.curve(stage.probe.theta, eigenvector_direction(stage.op, vectors[:, i]),
                                                    lams)[0].numpy()}
                          for i, v in enumerate(values)]
        panels.append({"label": stage.source.label, "info": stage.source.info, "rows": rows,
                       "hvp_count": stage.op.hvp_count, "checkpoint": str(stage.probe.path)})
    summary = {p["label"]: {kind: [c["eigenvalue"] for c in curves] for kind, curves in p["rows"].items()}
               for p in panels}

    def draw(path: Path) -> None:
        fig, axes = plt.subplots(2, len(panels), figsize=(3.6 * len(panels), 5.6), squeeze=False)
        for j, p in enumerate(panels):
            for i, (kind, curves) in enumerate(p["rows"].items()):
                ax = axes[i][j]
                for n, c in enumerate(curves, start=1):
                    ax.plot(lams, c["loss"], label=f"{kind}{n} ({c['eigenvalue']:.3g})")
                ax.axvline(0.0, color="k", ls=":", lw=0.8)
                ax.set_title(f"{p['label']}: {kind} directions", fontsize=8)
                ax.set_xlabel("lambda (unit eigenvector)")
                ax.set_ylabel("training loss")
                if curves:
                    ax.legend(fontsize=6)
                else:
                    not_converged(ax, ctx)
        finish(fig, path, "Companion Fig. 8: curves along Hessian eigenvectors")
    data = {"lambdas": lams, "models": {p["label"]: p["info"] for p in panels},
            "stages": [{k: v for k, v in p.items() if k != "info"} for p in panels]}
    return Made(data, summary, draw)


# ---- Fig. 9 ----
def abs_cosine(op: HessianOperator, direction: dict, vectors: np.ndarray) -> list[float]:
    """|cos| between a direction over the operator's group and each (unit) column of `vectors`."""
    d = op.flatten(direction).double().cpu().numpy()
    return [float(abs(d @ vectors[:, i]) / (np.linalg.norm(d) * np.linalg.norm(vectors[:, i])))
            for i in range(vectors.shape[1])]


def cp_fig9(ctx: FigureContext) -> Made:
    f = ctx.form
    panels = []
    for stage in stages(ctx):
        pairs = eigen(ctx, stage, f.cosine_k)
        result = mine(stage.loss, stage.probe.model, stage.probe.theta, stage.probe.names, stage.probe.context.train,
                      algorithm="wpeak", lambdas=ctx.lambdas(), metadata=ctx.metadata(stage.probe), log=ctx.log,
                      epochs=f.mine_epochs, lr=f.mine_lr, batch_size=f.mine_batch, seed=ctx.seed)
        eps = result.extra["direction"]
        panels.append({"label": stage.source.label, "info": stage.source.info,
                       "mine": result_json(result, stage.probe),
                       "cos_ne": abs_cosine(stage.op, eps, pairs["bottom_vectors"]),  # N.E.1, N.E.2, ...
                       "cos_pe": abs_cosine(stage.op, eps, pairs["top_vectors"])[::-1],  # ..., P.E.2, P.E.1
                       "bottom": pairs["bottom"], "top": pairs["top"]})
    summary = {p["label"]: {"max_cos_ne": max(p["cos_ne"], default=None), "max_cos_pe": max(p["cos_pe"], default=None),
                            "loss_at_0": float(np.interp(0.0, p["mine"]["lambdas"], p["mine"]["loss"]))}
               for p in panels}

    def draw(path: Path) -> None:
        fig, axes = plt.subplots(2, len(panels), figsize=(3.8 * len(panels), 5.6), squeeze=False)
        for j, p in enumerate(panels):
            ax = axes[0][j]
            ax.plot(p["mine"]["lambdas"], p["mine"]["loss"])
            ax.axvline(0.0, color="k", ls=":", lw=0.8)
            ax.set_title(f"{p['label']}: mined w-peak direction", fontsize=8)
            ax.set_xlabel("lambda")
            ax.set_ylabel("training loss")
            ax = axes[1][j]
            labels = [f"N{i + 1}" for i in range(len(p["cos_ne"]))] + \
                [f"P{len(p['cos_pe']) - i}" for i in range(len(p["cos_pe"]))]
            ax.bar(range(len(labels)), p["cos_ne"] + p["cos_pe"],
                   color=["tab:red"] * len(p["cos_ne"]) + ["tab:blue"] * len(p["cos_pe"]))
            ax.set_xticks(range(len(labels)), labels, fontsize=5, rotation=90)
            ax.set_ylabel("|cos(mined, eigenvector)|")
            ax.set_title(f"N: {len(p['cos_ne'])} bottom, P: {len(p['cos_pe'])} top converged pairs", fontsize=8)
        finish(fig, path, "Companion Fig. 9: mined w-peak curves and their overlap with eigenvectors")
    data = {"models": {p["label"]: p["info"] for p in panels},
            "stages": [{k: v for k, v in p.items() if k != "info"} for p in panels]}
    return Made(data, summary, draw)


# ---- Fig. 10 ----
def cp_fig10(ctx: FigureContext) -> Made:
    f = ctx.form
    stage = stages(ctx)[-1]  # the last checkpoint (the converged model)
    lams = ctx.lambdas(-0.5, 1.5)
    results = {}
    for alpha in VVV_ALPHAS:
        for gamma in VVV_GAMMAS:
            ctx.log(f"{ctx.name}: mining vvv-basin alpha={alpha} gamma={gamma}")
            results[(alpha, gamma)] = mine(stage.loss, stage.probe.model, stage.probe.theta, stage.probe.names,
                                           stage.probe.context.train, algorithm="vvv", lambdas=lams,
                                           metadata=ctx.metadata(stage.probe), epochs=f.mine_epochs, lr=f.mine_lr,
                                           batch_size=f.mine_batch, seed=ctx.seed, gamma=gamma, alpha=alpha)
    summary = {f"alpha={a} gamma={g}": {"loss_at_0": float(np.interp(0.0, lams, r.arrays["loss"])),
                                        "loss_at_0.5": float(np.interp(0.5, lams, r.arrays["loss"])),
                                        "loss_at_1": float(np.interp(1.0, lams, r.arrays["loss"]))}
               for (a, g), r in results.items()}

    def draw(path: Path) -> None:
        fig, axes = plt.subplots(len(VVV_ALPHAS), len(VVV_GAMMAS), figsize=(10, 5.6), squeeze=False)
        for (a, g), r in results.items():
            ax = axes[VVV_ALPHAS.index(a)][VVV_GAMMAS.index(g)]
            ax.plot(lams, r.arrays["loss"])
            ax.axvline(0.0, color="k", ls=":", lw=0.8)
            ax.axvline(1.0, color="r", ls=":", lw=0.8)
            ax.set_title(f"alpha={a:g}, gamma={g:g}", fontsize=8)
            ax.set_xlabel("lambda in theta + lambda (phi - theta)")
            ax.set_ylabel("training loss")
        finish(fig, path, f"Companion Fig. 10: mined vvv-basin curves ({stage.source.label})")
    data = {"models": {stage.source.label: stage.source.info},
            "probes": {f"alpha={a} gamma={g}": result_json(r, stage.probe) for (a, g), r in results.items()}}
    return Made(data, summary, draw)


# ---- Fig. 13 ----
def loss_changes(ctx: FigureContext, stage: Stage) -> dict:
    """L(theta + lambda eps) - L(theta) for form.perturbations Gaussian eps (sigma = 1, unscaled; Sect. 3)."""
    theta, names = stage.probe.theta, stage.probe.names
    base = base_loss(stage)
    changes = []
    for i in range(ctx.form.perturbations):
        eps = noise_direction(theta, names, "gaussian", ctx.seed * 1000 + i)
        loss, _ = stage.loss.curve(theta, eps, PERTURBATION_LAMBDAS)
        changes.append(loss.numpy() - base)
    return {"lambdas": list(PERTURBATION_LAMBDAS), "base_loss": base, "changes": np.array(changes).T}


def cp_fig13(ctx: FigureContext) -> Made:
    f = ctx.form
    panels = []
    for stage in stages(ctx, with_init=True):
        ctx.log(f"{ctx.name} {stage.source.label}: SLQ density, {f.slq_runs} runs x {f.slq_steps} Lanczos steps")
        density = slq_density(stage.op, f.slq_runs, f.slq_steps, ctx.seed)
        smallest, _ = eigenpairs(stage.op, 1, "SA", ctx.seed + 1, maxiter=f.eigsh_maxiter)
        panels.append({"label": stage.source.label, "info": stage.source.info, "density": density,
                       "smallest_eigenvalue": float(smallest[0]) if len(smallest) else None,
                       "lowest_ritz_value": float(np.min(density["nodes"])),  # an upper bound on it
                       "perturbation": loss_changes(ctx, stage), "checkpoint": str(stage.probe.path),
                       "hvp_count": stage.op.hvp_count})
    summary = {p["label"]: {"smallest_eigenvalue": p["smallest_eigenvalue"],
                            "lowest_ritz_value": p["lowest_ritz_value"],
                            **{f"mean_change_{lam:g}": float(np.mean(ch))
                               for lam, ch in zip(p["perturbation"]["lambdas"], p["perturbation"]["changes"])}}
               for p in panels}

    def draw(path: Path) -> None:
        fig, axes = plt.subplots(2, len(panels), figsize=(3.6 * len(panels), 5.6), squeeze=False)
        for j, p in enumerate(panels):
            ax = axes[0][j]
            d = p["density"]
            ax.semilogy(d["grid"], np.maximum(np.asarray(d["density"]), 1e-12))
            low = p["smallest_eigenvalue"]  # eigsh's; else the lowest Ritz value of the SLQ runs
            shown = f"{low:.3g}" if low is not None else f"~{p['lowest_ritz_value']:.3g} (Ritz)"
            ax.set_title(f"{p['label']} [{shown}]", fontsize=8)
            ax.set_xlabel("eigenvalue")
            ax.set_ylabel("density (log)")
            ax = axes[1][j]
            for lam, ch in zip(p["perturbation"]["lambdas"], p["perturbation"]["changes"]):
                ax.hist(ch, bins=20, alpha=0.6, label=f"lambda={lam:g}")
            ax.axvline(0.0, color="k", ls=":", lw=0.8)
            ax.set_xlabel("L(theta + lambda eps) - L(theta)")
            ax.set_ylabel("count")
            ax.legend(fontsize=7)
        finish(fig, path, "Companion Fig. 13: Hessian eigenvalue density and loss change under Gaussian noise")
    data = {"models": {p["label"]: p["info"] for p in panels},
            "stages": [{k: v for k, v in p.items() if k != "info"} for p in panels]}
    return Made(data, summary, draw)
