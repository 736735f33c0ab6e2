"""Mining directions (companion paper Sect. 2.4-2.5): Algorithm 1 (w-peak, Eq. 2) and Algorithm 2
(vvv-basin, Eq. 3). Losses use BN batch statistics (as in training) and never update BN buffers."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from fedsign.errors import ConfigError
from landscape.directions import Params, noise_direction, scale_direction
from landscape.evaluator import Evaluator, ProbeData, probe_mode
from landscape.result import ProbeResult

ALGORITHMS = ("wpeak", "vvv")


def _loss_fn(model: nn.Module, fixed: Params):
    def loss(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, {**fixed, **params}, (x,)), y)
    return loss


def _epochs(data: ProbeData, epochs: int, batch_size: int, gen: torch.Generator):
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(data), generator=gen).to(data.y.device)
        batches = [order[i:i + batch_size] for i in range(0, len(data), batch_size)]
        yield epoch, [(data.x[idx], data.y[idx]) for idx in batches]


def mine_wpeak(model: nn.Module, theta: Params, names: list[str], data: ProbeData, *, epochs: int = 10,
               lr: float = 0.01, batch_size: int = 64, seed: int = 0, log=None) -> tuple[Params, list[float]]:
    """Algorithm 1: eps = 0; epoch e: alpha = e/E; per batch lambda ~ U[-alpha, alpha],
    eps <- eps - lr * lambda * grad L(theta + lambda * eps). Returns eps and the mean loss per epoch."""
    fixed = {**{n: b.detach() for n, b in model.named_buffers()},
             **{n: t for n, t in theta.items() if n not in names}}
    loss_fn = _loss_fn(model, fixed)
    grad_fn = grad(loss_fn)
    eps = {n: torch.zeros_like(theta[n]) for n in names}
    gen = torch.Generator().manual_seed(seed)
    history = []
    with probe_mode(model, bn_batch_stats=True):
        for epoch, batches in _epochs(data, epochs, batch_size, gen):
            alpha, total = epoch / epochs, 0.0
            for x, y in batches:
                lam = float(torch.empty(()).uniform_(-alpha, alpha, generator=gen))
                point = {n: theta[n] + lam * eps[n] for n in names}
                g = grad_fn(point, x, y)
                eps = {n: eps[n] - lr * lam * g[n] for n in names}
                with torch.no_grad():
                    total += float(loss_fn(point, x, y))
            history.append(total / len(batches))
            if log:
                log(f"mine wpeak: epoch {epoch}/{epochs} alpha={alpha:.2f} loss={history[-1]:.4f}")
    return {n: e.detach() for n, e in eps.items()}, history


def mine_vvv(model: nn.Module, theta: Params, names: list[str], data: ProbeData, *, epochs: int = 10,
             lr: float = 0.01, batch_size: int = 64, gamma: float = 0.5, alpha: float = 0.1,
             init_scale: float = 0.5, seed: int = 0, log=None) -> tuple[Params, list[float]]:
    """Algorithm 2: per batch lambda ~ U[0.5 - alpha, 0.5 + alpha], phi_hat = (1 - lambda) theta + lambda phi,
    phi <- phi - lr * (grad L(phi) + gamma * lambda * grad L(phi_hat)); eps = phi - theta.
    phi starts at theta + init_scale * NS(Gaussian) (the paper leaves the start open)."""
    fixed = {**{n: b.detach() for n, b in model.named_buffers()},
             **{n: t for n, t in theta.items() if n not in names}}
    loss_fn = _loss_fn(model, fixed)
    grad_fn = grad(loss_fn)
    start = scale_direction(noise_direction(theta, names, "gaussian", seed), theta, "ns")
    phi = {n: theta[n] + init_scale * start[n] for n in names}
    gen = torch.Generator().manual_seed(seed)
    history = []
    with probe_mode(model, bn_batch_stats=True):
        for epoch, batches in _epochs(data, epochs, batch_size, gen):
            total = 0.0
            for x, y in batches:
                lam = float(torch.empty(()).uniform_(0.5 - alpha, 0.5 + alpha, generator=gen))
                hat = {n: (1 - lam) * theta[n] + lam * phi[n] for n in names}
                g_phi, g_hat = grad_fn(phi, x, y), grad_fn(hat, x, y)
                phi = {n: phi[n] - lr * (g_phi[n] + gamma * lam * g_hat[n]) for n in names}
                with torch.no_grad():
                    total += float(loss_fn(phi, x, y) + gamma * loss_fn(hat, x, y))
            history.append(total / len(batches))
            if log:
                log(f"mine vvv: epoch {epoch}/{epochs} objective={history[-1]:.4f}")
    return {n: (phi[n] - theta[n]).detach() for n in names}, history


def mine(evaluator: Evaluator, model: nn.Module, theta: Params, names: list[str], data: ProbeData, *,
         algorithm: str = "wpeak", lambdas=None, metadata: dict | None = None, log=None, **options) -> ProbeResult:
    """Mine a direction, then evaluate the curve theta + lambda * eps (unscaled, as in the paper)."""
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"mining algorithm {algorithm!r} is not known; accepted: {', '.join(ALGORITHMS)}")
    miner = mine_wpeak if algorithm == "wpeak" else mine_vvv
    eps, history = miner(model, theta, names, data, log=log, **options)
    if lambdas is None:
        lambdas = np.linspace(-1.0, 1.0, 41) if algorithm == "wpeak" else np.linspace(-0.5, 1.5, 41)
    lams = np.asarray(lambdas, dtype=np.float64)
    loss, error = evaluator.curve(theta, eps, torch.as_tensor(lams))
    arrays = {"algorithm": algorithm, "lambdas": lams, "loss": loss, "error": error, "history": history,
              "direction_norm": float(torch.sqrt(sum(e.double().pow(2).sum() for e in eps.values())))}
    return ProbeResult("mine", arrays, {**(metadata or {}), **options},
                       extra={"direction": eps})
