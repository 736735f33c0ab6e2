"""Perturbation directions (paper Sect. 3.2 and 4.1): common noises, their sign-consistent forms, the six
special directions, the sign-ratio construction, checkpoint differences; NS / Filter-NS scaling.

A direction is a dict parameter name -> tensor over the names of one parameter group; parameters
outside it are never touched. Random directions are drawn per parameter name from a generator seeded
by (seed, name), on the CPU, so they are reproducible across devices and group choices.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from pathlib import Path

import torch

from fedsign.checkpoint import load_checkpoint, save_checkpoint
from fedsign.errors import CheckpointError, ConfigError

Params = dict[str, torch.Tensor]
Sampler = Callable[[tuple[int, ...], torch.Generator], torch.Tensor]


def _choice(values: tuple[float, ...], shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return torch.tensor(values)[torch.randint(0, len(values), shape, generator=g)]


# The 7 common noises of Sect. 4.1: G(0,1), U(-1,1), {-1,0,1}, G(1,1), U(0,1), {0,1}, {1}.
COMMON_NOISES: dict[str, Sampler] = {
    "gaussian": lambda shape, g: torch.randn(shape, generator=g),
    "uniform": lambda shape, g: torch.rand(shape, generator=g) * 2.0 - 1.0,
    "ternary": functools.partial(_choice, (-1.0, 0.0, 1.0)),
    "gaussian_mean1": lambda shape, g: torch.randn(shape, generator=g) + 1.0,
    "uniform_pos": lambda shape, g: torch.rand(shape, generator=g),
    "binary": functools.partial(_choice, (0.0, 1.0)),
    "constant": lambda shape, g: torch.ones(shape),
}
# The 6 special directions of Sect. 4.1 (mu: the mean of each parameter tensor); 'init' needs theta_0.
SPECIAL_DIRECTIONS = ("init", "theta", "sign", "sign_centered", "sgp", "sgp_centered")
SCALINGS = ("ns", "filter", "none")
# Filter-NS of 1-D tensors (biases, BN weights/biases), which hold no filters:
# - element: each element eps_i scaled to |theta_i| (the adaptive-sharpness operator T_theta of Kwon et al.
#   2021, which the asymmetric-valley paper's Sect. 2 builds Filter-NS on: |w^j| for every parameter outside
#   a filter; also loss-landscapes 3.0.6, ModelParameters.filter_normalize_);
# - vector: the whole tensor as one filter, scaled to ||theta||;
# - zero: not perturbed (Li et al.'s code, net_plotter.normalize_directions_for_weights with
#   ignore='biasbn', as in the commands of their README).
FILTER_1D = ("element", "vector", "zero")
DEFAULT_FILTER_1D = "element"


def generator_for(seed: int, name: str, stream: str = "noise") -> torch.Generator:
    """A CPU generator seeded by (seed, parameter name, stream): reproducible per parameter."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{stream}/{name}".encode()) + 1000003 * seed)


def sign_consistent(eps: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """|eps| * sign(theta_f) (Sect. 4.1); zero where theta_f is zero (sign(0) = 0)."""
    return eps.abs() * torch.sign(theta)


def noise_direction(theta: Params, names: list[str], noise: str, seed: int, sign: bool = False) -> Params:
    """One of the 7 common noises over `names`, optionally with theta's sign (|eps| sign(theta))."""
    if noise not in COMMON_NOISES:
        raise ConfigError(f"noise {noise!r} is not known; accepted: {', '.join(COMMON_NOISES)}")
    out = {}
    for name in names:
        ref = theta[name]
        eps = COMMON_NOISES[noise](tuple(ref.shape), generator_for(seed, name)).to(ref.device, ref.dtype)
        out[name] = sign_consistent(eps, ref) if sign else eps
    return out


def sign_ratio_direction(theta: Params, names: list[str], ratio: float, seed: int) -> Params:
    """Gaussian noise with round(r * n) elements per tensor given theta's sign (Sect. 4.1, Fig. 4)."""
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"sign ratio r={ratio} must lie in [0, 1]")
    eps = noise_direction(theta, names, "gaussian", seed)
    out = {}
    for name in names:
        flat = eps[name].flatten().clone()
        chosen = torch.randperm(flat.numel(), generator=generator_for(seed, name, "ratio"))
        chosen = chosen[: int(round(ratio * flat.numel()))].to(flat.device)
        flat[chosen] = sign_consistent(flat[chosen], theta[name].flatten()[chosen])
        out[name] = flat.view_as(eps[name])
    return out


def special_direction(theta: Params, names: list[str], kind: str, init: Params | None = None) -> Params:
    """theta_0, theta_f, sign(theta_f), sign(theta_f - mu), sgp(theta_f), sgp(theta_f - mu) (Sect. 4.1)."""
    if kind not in SPECIAL_DIRECTIONS:
        raise ConfigError(f"special direction {kind!r} is not known; accepted: {', '.join(SPECIAL_DIRECTIONS)}")
    if kind == "init":
        if init is None:
            raise ConfigError("direction 'init' needs the initial model (--init CHECKPOINT)")
        return {n: init[n].to(theta[n].device, theta[n].dtype) for n in names}
    out = {}
    for name in names:
        t = theta[name]
        centered = t - t.mean() if kind.endswith("_centered") else t
        if kind == "theta":
            out[name] = t.clone()
        elif kind.startswith("sign"):
            out[name] = torch.sign(centered)
        else:
            out[name] = (centered > 0).to(t.dtype)
    return out


def difference(a: Params, b: Params, names: list[str]) -> Params:
    """b - a over `names` (the direction from checkpoint a to checkpoint b)."""
    return {n: b[n].to(a[n].device, a[n].dtype) - a[n] for n in names}


def norm(params: Params) -> float:
    """Frobenius norm over all tensors, accumulated in float64."""
    return float(torch.sqrt(sum(p.detach().double().pow(2).sum() for p in params.values())))


def _filter_norms(t: torch.Tensor) -> torch.Tensor:
    """Norm of each filter (slice along dim 0) broadcastable to t; a 1-D tensor counts as one filter."""
    if t.dim() <= 1:
        return t.double().norm().reshape([1] * t.dim())
    return t.double().flatten(1).norm(dim=1).reshape(-1, *([1] * (t.dim() - 1)))


def _rescaled(d: torch.Tensor, target: torch.Tensor, d_norms: torch.Tensor) -> torch.Tensor:
    """d * target / d_norms where d_norms > 0, zero elsewhere (float64, back in d's dtype)."""
    ratio = torch.where(d_norms > 0, target / d_norms.clamp_min(1e-300), torch.zeros_like(d_norms))
    return (d.double() * ratio).to(d.dtype)


def scale_direction(direction: Params, theta: Params, scaling: str, filter_1d: str = DEFAULT_FILTER_1D) -> Params:
    """NS: eps / ||eps|| * ||theta|| over the whole group (Sect. 3.2); Filter-NS: each filter of eps to the
    norm of the same filter of theta (Li et al. 2018, Sect. 4), with 1-D tensors (biases, BN) by
    `filter_1d` (FILTER_1D); none: unchanged. Zero stays zero."""
    if scaling not in SCALINGS:
        raise ConfigError(f"scaling {scaling!r} is not known; accepted: {', '.join(SCALINGS)}")
    if filter_1d not in FILTER_1D:
        raise ConfigError(f"filter_1d {filter_1d!r} is not known; accepted: {', '.join(FILTER_1D)}")
    if scaling == "none":
        return dict(direction)
    if scaling == "ns":
        d_norm = norm(direction)
        if d_norm == 0.0:
            raise ConfigError("the direction is zero everywhere on this parameter group; it cannot be norm-scaled")
        factor = norm({n: theta[n] for n in direction}) / d_norm
        return {n: (d.double() * factor).to(d.dtype) for n, d in direction.items()}
    out = {}
    for n, d in direction.items():
        if d.dim() > 1 or filter_1d == "vector":
            out[n] = _rescaled(d, _filter_norms(theta[n]), _filter_norms(d))
        elif filter_1d == "element":  # |eps_i| -> |theta_i|, the sign of eps kept
            out[n] = _rescaled(d, theta[n].double().abs(), d.double().abs())
        else:
            out[n] = torch.zeros_like(d)
    if norm(out) == 0.0:
        raise ConfigError(f"the direction is zero everywhere after Filter-NS (filter_1d={filter_1d}) on this "
                          "parameter group; choose another group, scaling or filter_1d")
    return out


def save_direction(path: str | Path, direction: Params, **metadata: object) -> Path:
    return save_checkpoint(path, direction, {"kind": "direction", **{k: str(v) for k, v in metadata.items()}})


def load_direction(path: str | Path, theta: Params) -> Params:
    """A direction file (save_direction) or a checkpoint used as a direction; names must fit the model."""
    tensors, _ = load_checkpoint(path)
    unknown = sorted(set(tensors) - set(theta))
    params = {n: t for n, t in tensors.items() if n in theta}
    if not params:
        more = ", ..." if len(unknown) > 3 else ""
        raise CheckpointError(f"'{path}' holds no tensor named like this model's parameters "
                              f"(it holds {', '.join(unknown[:3])}{more})")
    for n, t in params.items():
        if t.shape != theta[n].shape:
            raise CheckpointError(f"'{path}': '{n}' has shape {tuple(t.shape)}, "
                                  f"the model needs {tuple(theta[n].shape)}")
    return {n: t.to(theta[n].device, theta[n].dtype) for n, t in params.items()}
