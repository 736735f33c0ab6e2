"""Hessian probes on a parameter group (companion paper Sect. 2.4, 3, App. B): Hessian-vector products
with torch.func (forward-over-reverse), top and bottom eigenpairs with scipy's eigsh on a LinearOperator,
Hutchinson's trace with its standard error, and the eigenvalue density by stochastic Lanczos quadrature.

The loss is the mean cross-entropy over a fixed data subset, the model in eval mode (BN uses its
running statistics, no dropout); parameters outside the group stay fixed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import nn
from torch.func import functional_call, grad, jvp

from fedsign.errors import ConfigError
from landscape.directions import Params
from landscape.evaluator import ProbeData, probe_mode
from landscape.result import ProbeResult


class HessianOperator:
    """v -> H v for the Hessian of the mean loss w.r.t. the flattened parameters `names`;
    `criterion(outputs, y)` is the summed loss of a batch (default: cross-entropy)."""

    def __init__(self, model: nn.Module, params: Params, names: list[str], data: ProbeData,
                 batch_size: int = 500, criterion=None) -> None:
        self.model, self.data, self.batch_size = model, data, batch_size
        self.criterion = criterion or (lambda logits, y: F.cross_entropy(logits, y, reduction="sum"))
        self.names = names
        self.group = {n: params[n].detach() for n in names}
        self.fixed = {**{n: b.detach() for n, b in model.named_buffers()},
                      **{n: p.detach() for n, p in params.items() if n not in self.group}}
        self.shapes = [self.group[n].shape for n in names]
        self.sizes = [self.group[n].numel() for n in names]
        self.size = sum(self.sizes)
        self.hvp_count = 0

    def flatten(self, params: Params) -> torch.Tensor:
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> Params:
        return {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.sizes), self.shapes)}

    def _batch_loss(self, group: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.criterion(functional_call(self.model, {**self.fixed, **group}, (x,)), y) / len(self.data)

    def loss(self) -> float:
        with torch.no_grad(), probe_mode(self.model, bn_batch_stats=False):
            return float(sum(self._batch_loss(self.group, x, y) for x, y in self.data.batches(self.batch_size)))

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H v (v flat, the group's dtype and device), summed over the data batches."""
        tangent = self.unflatten(v)
        out = torch.zeros(self.size, dtype=v.dtype, device=v.device)
        with probe_mode(self.model, bn_batch_stats=False):
            for x, y in self.data.batches(self.batch_size):
                g = lambda p: grad(self._batch_loss)(p, x, y)  # noqa: E731
                out += self.flatten(jvp(g, (self.group,), (tangent,))[1]).detach()
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


def hutchinson_trace(op: HessianOperator, samples: int, seed: int) -> tuple[float, float]:
    """tr(H) ~ mean of v^T H v over `samples` Rademacher vectors, and the standard error of that mean."""
    if samples < 2:
        raise ConfigError("Hutchinson's trace needs at least 2 samples for a standard error")
    gen = torch.Generator().manual_seed(seed)
    ref = next(iter(op.group.values()))
    estimates = []
    for _ in range(samples):
        v = (torch.randint(0, 2, (op.size,), generator=gen) * 2 - 1).to(ref.device, ref.dtype)
        estimates.append(float(torch.dot(v.double(), op.hvp(v).double())))
    est = np.asarray(estimates)
    return float(est.mean()), float(est.std(ddof=1) / math.sqrt(samples))


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


def hessian(model: nn.Module, params: Params, names: list[str], data: ProbeData, *, k: int = 5,
            bottom: bool = True, trace_samples: int = 20, slq_runs: int = 2, slq_steps: int = 30,
            maxiter: int | None = 20, seed: int = 0, batch_size: int = 500, metadata: dict | None = None,
            log=None) -> ProbeResult:
    """Top (and bottom) k eigenvalues, Hutchinson trace +- stderr, SLQ density; eigenvectors in `extra`."""
    op = HessianOperator(model, params, names, data, batch_size)
    say = log or (lambda msg: None)
    say(f"hessian: {op.size} parameters, top-{k} eigenpairs")
    top, top_vecs = eigenpairs(op, k, "LA", seed, maxiter=maxiter)
    arrays: dict = {"eigenvalues": top, "top_converged": len(top), "num_parameters": op.size, "loss": op.loss()}
    extra = {"top_vectors": top_vecs}
    if bottom:
        say(f"hessian: bottom-{k} eigenpairs")
        low, low_vecs = eigenpairs(op, k, "SA", seed + 1, maxiter=maxiter)
        arrays["bottom_eigenvalues"] = low
        arrays["bottom_converged"] = len(low)
        extra["bottom_vectors"] = low_vecs
    say(f"hessian: Hutchinson trace with {trace_samples} samples")
    arrays["trace"], arrays["trace_stderr"] = hutchinson_trace(op, trace_samples, seed + 2)
    arrays["trace_samples"] = trace_samples
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
