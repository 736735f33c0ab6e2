"""Loss and error of many parameter points theta_k = base + sum_j c_kj d_j with little repeated work.

Points are evaluated a chunk at a time: torch.func.functional_call under vmap over the chunk, one pass
over the (cached, normalised) data per chunk. With BN, every point first gets its own running
statistics (NOTES.md section 3: reset, then one pass over a training subset): BN layers run on batch
statistics while hooks record each batch's mean and unbiased variance; their average over batches is
exactly what PyTorch's cumulative running average (momentum=None) gives. Running stats are never part
of a direction, num_batches_tracked is never touched, and every non-BN module (dropout) stays in eval.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from fedsign.errors import ConfigError

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ProbeData:
    """A fixed, already normalised data subset on the evaluation device."""

    x: torch.Tensor  # float [N, ...]
    y: torch.Tensor  # int64 [N]
    description: str = ""

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batches(self, batch_size: int):
        for start in range(0, len(self), batch_size):
            yield self.x[start:start + batch_size], self.y[start:start + batch_size]


@contextlib.contextmanager
def probe_mode(model: nn.Module, bn_batch_stats: bool):
    """Every module in eval mode; with bn_batch_stats, BN layers normalise with batch statistics and
    update no buffer. Restores every module's flags afterwards."""
    saved = [(m, m.training, getattr(m, "track_running_stats", None)) for m in model.modules()]
    try:
        model.eval()
        if bn_batch_stats:
            for m in model.modules():
                if isinstance(m, _BatchNorm):
                    m.training, m.track_running_stats = True, False
        yield model
    finally:
        for m, training, track in saved:
            m.training = training
            if track is not None:
                m.track_running_stats = track


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    var, mean = torch.var_mean(x, dim=[d for d in range(x.dim()) if d != 1], correction=1)
    return mean, var


def _over_points(fn, k: int):
    """vmap over the leading point dimension of the first two arguments' tensors; with a single point,
    a plain call on the squeezed tensors (no batched-weight kernels)."""
    if k > 1:
        return vmap(fn, in_dims=(0, 0, None, None))

    def single(params: Params, buffers: Params, *rest):
        squeeze = lambda d: {n: t[0] for n, t in d.items()}  # noqa: E731
        out = fn(squeeze(params), squeeze(buffers), *rest)
        return tuple(o.unsqueeze(0) for o in out)
    return single


class Evaluator:
    """Evaluates a model at parameter points; usable with any nn.Module whose forward(x) gives logits."""

    def __init__(self, model: nn.Module, data: ProbeData, bn_data: ProbeData | None = None, *,
                 recalibrate: bool = True, batch_size: int = 500, chunk: int = 8) -> None:
        self.model = model
        self.data = data
        self.batch_size = batch_size
        self.chunk = max(1, chunk)
        self.bn_layers = [(name, m) for name, m in model.named_modules()
                          if isinstance(m, _BatchNorm) and m.track_running_stats]
        self.recalibrate = recalibrate and bool(self.bn_layers)
        if self.recalibrate and bn_data is None:
            raise ConfigError("the model has BatchNorm: give data to recompute its statistics, or skip recalibration")
        self.bn_data = bn_data
        self.buffers = {n: b.detach() for n, b in model.named_buffers()}

    def parameters(self) -> Params:
        """The model's own float parameters (the probe's theta), detached."""
        return {n: p.detach() for n, p in self.model.named_parameters() if p.is_floating_point()}

    def evaluate(self, base: Params, directions: list[Params], coefficients: torch.Tensor,
                 progress=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean cross-entropy [K], error [K]) at theta_k = base + sum_j coefficients[k, j] * directions[j]."""
        coefficients = torch.as_tensor(coefficients, dtype=torch.float64).reshape(len(coefficients), -1)
        if coefficients.shape[1] != len(directions):
            raise ValueError(f"{coefficients.shape[1]} coefficients per point for {len(directions)} directions")
        losses, errors = [], []
        for start in range(0, len(coefficients), self.chunk):
            loss, error = self._chunk(base, directions, coefficients[start:start + self.chunk])
            losses.append(loss)
            errors.append(error)
            if progress is not None:
                progress(min(start + self.chunk, len(coefficients)), len(coefficients))
        return torch.cat(losses).cpu(), torch.cat(errors).cpu()

    def curve(self, base: Params, direction: Params, lambdas, progress=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, error) along base + lambda * direction."""
        return self.evaluate(base, [direction], torch.as_tensor(lambdas, dtype=torch.float64)[:, None], progress)

    def _points(self, base: Params, directions: list[Params], coefficients: torch.Tensor) -> Params:
        """Batched tensors [k, ...] for every perturbed parameter, computed afresh from base."""
        names = [n for n in base if any(n in d for d in directions)]
        points = {}
        for name in names:
            ref = base[name]
            total = ref.unsqueeze(0).expand(len(coefficients), *ref.shape).clone()
            for j, d in enumerate(directions):
                if name in d:
                    c = coefficients[:, j].to(ref.device, ref.dtype).view(-1, *([1] * ref.dim()))
                    total += c * d[name].to(ref.device, ref.dtype)
            points[name] = total
        return points

    def _chunk(self, base: Params, directions: list[Params], coefficients: torch.Tensor):
        batched = self._points(base, directions, coefficients)
        fixed = {**self.buffers, **{n: t for n, t in base.items() if n not in batched}}
        stats = self.bn_statistics(batched, fixed) if self.recalibrate else {}
        fixed = {n: t for n, t in fixed.items() if n not in stats}

        def point(params: Params, buffers: Params, x: torch.Tensor, y: torch.Tensor):
            logits = functional_call(self.model, {**fixed, **params, **buffers}, (x,))
            return F.cross_entropy(logits, y, reduction="sum"), (logits.argmax(1) != y).sum()

        loss = torch.zeros(len(coefficients), dtype=torch.float64, device=self.data.x.device)
        wrong = torch.zeros(len(coefficients), dtype=torch.float64, device=self.data.x.device)
        with torch.no_grad(), probe_mode(self.model, bn_batch_stats=False):
            for x, y in self.data.batches(self.batch_size):
                batch_loss, batch_wrong = _over_points(point, len(coefficients))(batched, stats, x, y)
                loss += batch_loss
                wrong += batch_wrong
        n = max(len(self.data), 1)
        return loss / n, wrong / n

    def bn_statistics(self, batched: Params, fixed: Params) -> Params:
        """Recomputed running_mean / running_var [k, C] of every BN layer for every point (one pass)."""
        records: list[tuple[torch.Tensor, torch.Tensor]] = []
        hooks = [m.register_forward_hook(lambda mod, inp, out: records.append(_channel_stats(inp[0])))
                 for _, m in self.bn_layers]

        def point_stats(params: Params, _: Params, x: torch.Tensor, __: None):
            records.clear()
            functional_call(self.model, {**fixed, **params}, (x,))
            if len(records) != len(self.bn_layers):
                raise RuntimeError("a BatchNorm layer ran more or fewer than once per forward pass")
            return tuple(t for pair in records for t in pair)  # mean_1, var_1, mean_2, ...

        sums: list[torch.Tensor] | None = None
        count = 0
        try:
            with torch.no_grad(), probe_mode(self.model, bn_batch_stats=True):
                for x, _ in self.bn_data.batches(self.batch_size):
                    k = len(next(iter(batched.values())))
                    flat = list(_over_points(point_stats, k)(batched, {}, x, None))
                    sums = flat if sums is None else [s + t for s, t in zip(sums, flat)]
                    count += 1
        finally:
            for h in hooks:
                h.remove()
        stats = {}
        for i, (name, _) in enumerate(self.bn_layers):
            prefix = f"{name}." if name else ""
            stats[prefix + "running_mean"] = sums[2 * i] / count
            stats[prefix + "running_var"] = sums[2 * i + 1] / count
        return stats
