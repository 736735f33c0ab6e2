"""Hessian probes on a parameter group (companion paper Sect. 2.4, 3, App. B): Hessian-vector products
(torch.func.linearize of the gradient, double backward through a kept first-order graph, or
forward-over-reverse), top and bottom eigenpairs with scipy's eigsh on a LinearOperator, Hutchinson's
trace with its standard error, and the eigenvalue density by stochastic Lanczos quadrature.

The loss is the mean cross-entropy over a fixed data subset, the model in eval mode (BN uses running
statistics: the model's, or those given, e.g. recomputed at theta as the other probes do; no dropout);
parameters outside the group stay fixed.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import nn
from torch.func import functional_call, grad, jvp, linearize

from fedsign.errors import ConfigError
from landscape.directions import Params
from landscape.evaluator import ProbeData, probe_mode
from landscape.result import ProbeResult


HVP_MODES = ("linearize", "graph", "recompute")


class HessianOperator:
    """v -> H v for the Hessian of the mean loss w.r.t. the flattened parameters `names`;
    `criterion(outputs, y)` is the summed loss of a batch (default: cross-entropy). `buffers` replaces the
    model's buffers (e.g. BN statistics recomputed at theta: Evaluator.buffers_at).

    How a product is computed (`hvp`), batch by batch, each exact to rounding:
    - "linearize" (default): torch.func.linearize traces the batch's gradient once and keeps its linear
      map; every product is one forward-mode pass through it (the cheapest product; the trace costs about
      as much as some tens of products, so it pays off over a probe's hundreds);
    - "graph": the batch's first-order graph (the gradient with create_graph) is built once and every
      product is one double-backward pass through it, as PyHessian does for its single batch;
    - "recompute": forward-over-reverse (torch.func.jvp of grad) at every product; keeps nothing.
    The first two keep about the memory of one training step per batch."""

    def __init__(self, model: nn.Module, params: Params, names: list[str], data: ProbeData,
                 batch_size: int = 500, criterion=None, *, buffers: Params | None = None,
                 hvp: str = "linearize") -> None:
        if hvp not in HVP_MODES:
            raise ConfigError(f"Hessian-vector product {hvp!r} is not known; accepted: {', '.join(HVP_MODES)}")
        self.model, self.data, self.batch_size = model, data, batch_size
        self.criterion = criterion or (lambda logits, y: F.cross_entropy(logits, y, reduction="sum"))
        self.names = names
        self.group = {n: params[n].detach() for n in names}
        own = {n: b.detach() for n, b in model.named_buffers()}
        self.fixed = {**own, **(buffers or {}), **{n: p.detach() for n, p in params.items() if n not in self.group}}
        self.shapes = [self.group[n].shape for n in names]
        self.sizes = [self.group[n].numel() for n in names]
        self.size = sum(self.sizes)
        self.mode = hvp
        self.hvp_count = 0
        self._prepared = None  # per batch, built at the first product: its linear map, or its kept graph

    def flatten(self, params: Params) -> torch.Tensor:
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> Params:
        return {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.sizes), self.shapes)}

    def _batch_loss(self, group: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.criterion(functional_call(self.model, {**self.fixed, **group}, (x,)), y) / len(self.data)

    def loss(self) -> float:
        with torch.no_grad(), probe_mode(self.model, bn_batch_stats=False):
            return float(sum(self._batch_loss(self.group, x, y) for x, y in self.data.batches(self.batch_size)))

    def prepare(self) -> None:
        """Build what the products reuse (nothing for "recompute"); the first product does it if not called."""
        if self._prepared is not None or self.mode == "recompute":
            return
        prepared = []
        with torch.enable_grad(), probe_mode(self.model, bn_batch_stats=False):
            for x, y in self.data.batches(self.batch_size):
                if self.mode == "linearize":  # v -> J_g v = H v, g the batch's gradient (H is symmetric)
                    with warnings.catch_warnings():  # notes from torch's own tracing machinery, not the user's code
                        warnings.filterwarnings("ignore", "Attempted to insert a get_attr Node", UserWarning)
                        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
                        prepared.append(linearize(lambda p, x=x, y=y: grad(self._batch_loss)(p, x, y), self.group)[1])
                    continue
                leaves = [self.group[n].clone().requires_grad_() for n in self.names]
                grads = torch.autograd.grad(self._batch_loss(dict(zip(self.names, leaves)), x, y), leaves,
                                            create_graph=True)
                index = [i for i, g in enumerate(grads) if g.requires_grad]  # others: a zero Hessian block
                prepared.append((leaves, index, tuple(grads[i] for i in index)))
        self._prepared = prepared

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H v (v flat, the group's dtype and device), summed over the data batches."""
        self.prepare()
        tangent = self.unflatten(v)
        out = torch.zeros(self.size, dtype=v.dtype, device=v.device)
        if self.mode == "linearize":
            for linear in self._prepared:
                out.add_(self.flatten(linear(tangent)))
        elif self.mode == "graph":  # H v = d(g . v)/dtheta through the kept graph of g
            for leaves, index, grads in self._prepared:
                if index:
                    hv = torch.autograd.grad(grads, leaves, grad_outputs=[tangent[self.names[i]] for i in index],
                                             retain_graph=True, allow_unused=True)
                    out.add_(torch.cat([(h if h is not None else torch.zeros_like(t)).reshape(-1)
                                        for h, t in zip(hv, leaves)]).detach())
        else:  # forward-over-reverse, recomputed batch by batch
            with probe_mode(self.model, bn_batch_stats=False):
                for x, y in self.data.batches(self.batch_size):
                    g = lambda p: grad(self._batch_loss)(p, x, y)  # noqa: E731
                    out.add_(self.flatten(jvp(g, (self.group,), (tangent,))[1]).detach())
        self.hvp_count += 1
        return out

    def linear_operator(self) -> LinearOperator:
        ref = next(iter(self.group.values()))

        def matvec(v: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1)).to(ref.device, ref.dtype)
            return self.hvp(t).double().cpu().numpy()

        return LinearOperator((self.size, self.size), matvec=matvec, dtype=np.float64)


def eigenpairs(op: HessianOperator, k: int, which: str, seed: int, tol: float = 1e-4,
               maxiter: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k eigenpairs of the largest ('LA') or smallest ('SA') algebraic eigenvalues (not largest |lambda|),
    from a seeded start vector; sorted descending, vectors as columns. If ARPACK does not converge within
    `maxiter` restarts (the bottom of a Hessian spectrum is a dense cluster near 0), only the converged
    pairs are returned (possibly none)."""
    if not 1 <= k < op.size:
        raise ConfigError(f"--k {k}: eigsh needs 1 <= k < {op.size} (the group's parameter count)")
    v0 = np.random.default_rng(seed).standard_normal(op.size)
    try:
        values, vectors = eigsh(op.linear_operator(), k=k, which=which, v0=v0, tol=tol, maxiter=maxiter)
    except ArpackNoConvergence as exc:
        values, vectors = exc.eigenvalues, exc.eigenvectors
    order = np.argsort(values)[::-1]
    return values[order], vectors[:, order]


TRACE_PROBES = ("gaussian", "rademacher")


class TraceEstimate(tuple):
    """(trace, standard error), with .samples the number of probe vectors used."""

    samples: int

    def __new__(cls, trace: float, stderr: float, samples: int) -> TraceEstimate:
        estimate = super().__new__(cls, (trace, stderr))
        estimate.samples = samples
        return estimate


def hutchinson_trace(op: HessianOperator, samples: int, seed: int, *, probe: str = "gaussian",
                     rtol: float | None = None, min_samples: int = 10) -> TraceEstimate:
    """tr(H) ~ mean of v^T H v over probe vectors v (Hutchinson 1990), and the standard error of that mean.

    probe: 'gaussian' v ~ N(0, I), as the companion paper's App. B, or 'rademacher' v in {-1, 1}^n (a smaller
    variance: 2 (||H||_F^2 - sum_i H_ii^2) against 2 ||H||_F^2). With rtol, sampling stops once the standard
    error is at most rtol * |trace| (after min_samples vectors); `samples` is then the most it draws."""
    if samples < 2:
        raise ConfigError("Hutchinson's trace needs at least 2 samples for a standard error")
    if probe not in TRACE_PROBES:
        raise ConfigError(f"trace probe {probe!r} is not known; accepted: {', '.join(TRACE_PROBES)}")
    gen = torch.Generator().manual_seed(seed)
    ref = next(iter(op.group.values()))
    estimates: list[float] = []
    while len(estimates) < samples:
        if probe == "gaussian":
            v = torch.randn(op.size, generator=gen, dtype=torch.float64)
        else:
            v = (torch.randint(0, 2, (op.size,), generator=gen) * 2 - 1).double()
        estimates.append(float(torch.dot(v, op.hvp(v.to(ref.device, ref.dtype)).double().cpu())))
        n = len(estimates)
        if rtol is not None and n >= min(min_samples, samples):
            mean, stderr = float(np.mean(estimates)), float(np.std(estimates, ddof=1) / math.sqrt(n))
            if stderr <= rtol * abs(mean):
                break
    est = np.asarray(estimates)
    return TraceEstimate(float(est.mean()), float(est.std(ddof=1) / math.sqrt(len(est))), len(est))


def lanczos(op: HessianOperator, steps: int, gen: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values and first-component weights of `steps` Lanczos steps (full reorthogonalisation) from a
    random unit vector (Ghorbani et al. 2019; PyHessian's SLQ)."""
    ref = next(iter(op.group.values()))
    steps = min(steps, op.size)
    v = torch.randn(op.size, generator=gen, dtype=torch.float64)
    basis = [v / v.norm()]
    alphas, betas = [], []
    for i in range(steps):
        w = op.hvp(basis[-1].to(ref.device, ref.dtype)).double().cpu()
        alpha = float(torch.dot(w, basis[-1]))
        alphas.append(alpha)
        for q in basis:  # full reorthogonalisation
            w -= torch.dot(w, q) * q
        beta = float(w.norm())
        if i == steps - 1 or beta < 1e-10:
            break
        betas.append(beta)
        basis.append(w / beta)
    tri = np.diag(alphas) + np.diag(betas[: len(alphas) - 1], 1) + np.diag(betas[: len(alphas) - 1], -1)
    nodes, vecs = np.linalg.eigh(tri)
    return nodes, vecs[0] ** 2


def slq_density(op: HessianOperator, runs: int, steps: int, seed: int, bins: int = 200,
                sigma_fraction: float = 1e-3) -> dict:
    """Eigenvalue density: the runs' Ritz nodes/weights smoothed by a Gaussian kernel whose variance is
    sigma_fraction * (range of the nodes)^2 (PyHessian's convention), on a grid of `bins` points."""
    gen = torch.Generator().manual_seed(seed)
    all_nodes, all_weights = [], []
    for _ in range(runs):
        nodes, weights = lanczos(op, steps, gen)
        all_nodes.append(nodes)
        all_weights.append(weights / runs)
    nodes, weights = np.concatenate(all_nodes), np.concatenate(all_weights)
    lo, hi = nodes.min(), nodes.max()
    var = sigma_fraction * max(hi - lo, 1e-12) ** 2
    pad = 5 * math.sqrt(var)  # the grid holds every kernel's mass
    grid = np.linspace(lo - pad, hi + pad, bins)
    density = (weights[None, :] * np.exp(-((grid[:, None] - nodes[None, :]) ** 2) / (2 * var))).sum(1)
    density /= math.sqrt(2 * math.pi * var)
    return {"grid": grid, "density": density, "nodes": nodes, "weights": weights}


def check_options(size: int, *, k: int, trace_samples: int, trace_rtol: float | None, trace_probe: str,
                  slq_runs: int, slq_steps: int, maxiter: int | None) -> None:
    """Refuse bad options before any product is computed (`size`: the group's parameter count)."""
    if not 1 <= k < size:
        raise ConfigError(f"--k {k}: eigsh needs 1 <= k < {size} (the group's parameter count)")
    if trace_samples < 2:
        raise ConfigError(f"--trace-samples {trace_samples}: Hutchinson's trace needs at least 2 for a standard error")
    if trace_rtol is not None and not (math.isfinite(trace_rtol) and trace_rtol >= 0):
        raise ConfigError(f"--trace-rtol {trace_rtol}: expected a number >= 0")
    if trace_probe not in TRACE_PROBES:
        raise ConfigError(f"trace probe {trace_probe!r} is not known; accepted: {', '.join(TRACE_PROBES)}")
    if slq_runs < 0 or slq_steps < 1 or (maxiter is not None and maxiter < 1):
        raise ConfigError(f"--slq-runs ({slq_runs}) must be >= 0, --slq-steps ({slq_steps}) and --maxiter "
                          f"({maxiter}) >= 1")


def hessian(model: nn.Module, params: Params, names: list[str], data: ProbeData, *, k: int = 5,
            bottom: bool = True, trace_samples: int = 100, slq_runs: int = 2, slq_steps: int = 30,
            maxiter: int | None = 20, seed: int = 0, batch_size: int = 500, metadata: dict | None = None,
            log=None, buffers: Params | None = None, trace_rtol: float | None = 0.02,
            trace_probe: str = "gaussian", hvp: str = "linearize") -> ProbeResult:
    """Top (and bottom) k eigenpairs, Hutchinson trace +- stderr (sampled until the stderr is at most
    trace_rtol * |trace|, at most trace_samples vectors), SLQ density; eigenvectors in `extra`.
    Eigenpairs that ARPACK did not converge are missing from the arrays and reported through `log`."""
    op = HessianOperator(model, params, names, data, batch_size, buffers=buffers, hvp=hvp)
    check_options(op.size, k=k, trace_samples=trace_samples, trace_rtol=trace_rtol, trace_probe=trace_probe,
                  slq_runs=slq_runs, slq_steps=slq_steps, maxiter=maxiter)
    say = log or (lambda msg: None)
    say(f"hessian: {op.size} parameters, {data.description or f'{len(data)} images'}, top-{k} eigenpairs")
    arrays: dict = {"num_parameters": op.size, "loss": op.loss(), "requested": k}
    extra: dict = {}
    for side, which, offset in (("top", "LA", 0), ("bottom", "SA", 1))[: 1 + bottom]:
        if side == "bottom":
            say(f"hessian: bottom-{k} eigenpairs")
        values, vectors = eigenpairs(op, k, which, seed + offset, maxiter=maxiter)
        arrays["eigenvalues" if side == "top" else "bottom_eigenvalues"] = values
        arrays[f"{side}_converged"] = len(values)
        extra[f"{side}_vectors"] = vectors
        if len(values) < k:
            say(f"warning: only {len(values)} of {k} {side} eigenpairs converged within --maxiter {maxiter}; "
                "the others are left out (raise --maxiter)")
    say(f"hessian: Hutchinson trace ({trace_probe} probes, until stderr <= {trace_rtol} x trace, "
        f"at most {trace_samples})")
    estimate = hutchinson_trace(op, trace_samples, seed + 2, probe=trace_probe, rtol=trace_rtol)
    arrays["trace"], arrays["trace_stderr"] = estimate
    arrays["trace_samples"], arrays["trace_probe"], arrays["trace_rtol"] = estimate.samples, trace_probe, trace_rtol
    if slq_runs > 0:
        say(f"hessian: SLQ density, {slq_runs} runs x {slq_steps} Lanczos steps")
        arrays["density"] = slq_density(op, slq_runs, slq_steps, seed + 3)
    arrays["hvp_count"] = op.hvp_count
    extra["operator"] = op
    return ProbeResult("hessian", arrays, metadata or {}, extra=extra)


def eigenvector_direction(op: HessianOperator, vector: np.ndarray) -> Params:
    """An eigenvector (flat, numpy) as a direction dict over the operator's group."""
    ref = next(iter(op.group.values()))
    return op.unflatten(torch.from_numpy(np.ascontiguousarray(vector)).to(ref.device, ref.dtype))
