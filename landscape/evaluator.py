"""Loss and error of many parameter points theta_k = base + sum_j c_kj d_j with little repeated work.

Two ways to evaluate, the same numbers (up to float rounding):
- one point at a time (chunk 1): a private copy of the model (channels-last on a CPU) whose parameters
  are overwritten with base + sum_j c_kj d_j, computed afresh from base for every point (never
  accumulated), forward passes under torch.inference_mode; what is the same at every point is replayed
  (landscape.replay). BN statistics are recomputed the way PyTorch does it natively: reset,
  BN layers (only they) in train mode with momentum=None (a cumulative average), one pass over the
  recalibration data, back to eval.
- chunks of points under torch.func.vmap (chunk > 1, the GPU default): torch.func.functional_call on
  batched parameters, one pass over the data per chunk. BN layers run on batch statistics while hooks
  record each batch's mean and unbiased variance; their average over batches is what PyTorch's
  cumulative running average (momentum=None) gives.

With BN, every point gets its own running statistics (the asymmetric-valley paper recomputes them
after every perturbation: Sect. 3.2; the companion paper's "UpBN", Sect. 2.1). Running stats are
never part of a direction, num_batches_tracked of the caller's model is never touched, and every
non-BN module (dropout) stays in eval mode. On a CPU the chunk is chosen by timing (_choose_chunk).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from fedsign.errors import ConfigError
from landscape.replay import Cursor, Replay

Params = dict[str, torch.Tensor]

GPU_CHUNK = 16  # points per vmap chunk on a GPU
TUNE_CHUNKS = (2, 4, 8)  # vmap chunks a CPU run times against one point at a time
TUNE_POINTS_PER_CHUNK = 60  # a chunk of c is tried only with >= 60 c points left (a slow trial costs < ~5 %)
REPLAY_BYTES = 2**30  # memory for replayed outputs (landscape.replay) per data set
_tuned: dict[tuple, int] = {}  # _choose_chunk's choices in this process


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


class _StopForward(Exception):
    """Ends a recalibration pass after its last BN layer."""


def _stop(module: nn.Module, args, output) -> None:
    raise _StopForward


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Evaluator:
    """Evaluates a model at parameter points; usable with any nn.Module whose forward(x) gives logits.

    chunk: points per vmap chunk; None chooses (16 on a GPU, timed on a CPU: _choose_chunk).
    replay_bytes: memory one point at a time may use to replay what is the same at every point."""

    def __init__(self, model: nn.Module, data: ProbeData, bn_data: ProbeData | None = None, *,
                 recalibrate: bool = True, batch_size: int = 500, chunk: int | None = None,
                 replay_bytes: int = REPLAY_BYTES) -> None:
        if batch_size < 1 or (chunk is not None and chunk < 1):
            raise ConfigError(f"batch size ({batch_size}) and chunk ({chunk}) must be >= 1")
        self.model = model
        self.data = data
        self.batch_size = batch_size
        self.chunk = chunk
        self.chunk_used: int | None = None  # the chunk of the last evaluate() call
        self.bn_layers = [(name, m) for name, m in model.named_modules()
                          if isinstance(m, _BatchNorm) and m.track_running_stats]
        self.recalibrate = recalibrate and bool(self.bn_layers)
        if self.recalibrate and bn_data is None:
            raise ConfigError("the model has BatchNorm: give data to recompute its statistics, or skip recalibration")
        self.bn_data = bn_data
        self.buffers = {n: b.detach() for n, b in model.named_buffers()}
        self.replay_bytes = replay_bytes
        self._copy: nn.Module | None = None
        self._last_bn: tuple | None = None  # (replay it holds for, the copy's BN layer that runs last, or None)
        self._replay: Replay | None | bool = False  # during evaluate(): the Replay, None (none) or True (to record)

    def parameters(self) -> Params:
        """The model's own float parameters (the probe's theta), detached."""
        return {n: p.detach() for n, p in self.model.named_parameters() if p.is_floating_point()}

    def evaluate(self, base: Params, directions: list[Params], coefficients: torch.Tensor,
                 progress=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean cross-entropy [K], error [K]) at theta_k = base + sum_j coefficients[k, j] * directions[j]."""
        coefficients = torch.as_tensor(coefficients, dtype=torch.float64).reshape(len(coefficients), -1)
        if coefficients.shape[1] != len(directions):
            raise ValueError(f"{coefficients.shape[1]} coefficients per point for {len(directions)} directions")
        self._replay = len(coefficients) > 1 or None  # recorded on first use: it pays off from the second point
        try:
            return self._evaluate(base, directions, coefficients, progress)
        finally:
            self._replay = False
            if self._last_bn is not None and self._last_bn[0] is not None:
                self._last_bn = None  # it holds the replay (and its recordings): let them go

    def _evaluate(self, base: Params, directions: list[Params], coefficients: torch.Tensor, progress):
        losses, errors = [], []
        chunk = self.chunk or (GPU_CHUNK if self.data.x.device.type == "cuda" else None)
        done = 0
        if chunk is None:
            chunk, done = self._choose_chunk(base, directions, coefficients, losses, errors)
        self.chunk_used = chunk
        # few calls (each sets up the working copy): the whole run, or about 20 steps with progress
        step = chunk * max(1, math.ceil(len(coefficients) / chunk / (20 if progress is not None else 1)))
        for start in range(done, len(coefficients), step):
            loss, error = self._run(chunk, base, directions, coefficients[start:start + step])
            losses.append(loss)
            errors.append(error)
            if progress is not None:
                progress(min(start + step, len(coefficients)), len(coefficients))
        return torch.cat(losses).cpu(), torch.cat(errors).cpu()

    def _choose_chunk(self, base: Params, directions: list[Params], coefficients: torch.Tensor,
                      losses: list, errors: list) -> tuple[int, int]:
        """On a CPU, the fastest points per chunk, timed on the run's own first points: one point at a
        time, then vmap chunks of TUNE_CHUNKS points while each is faster per point than the best so far
        and enough points are left for a slow trial to cost little (TUNE_POINTS_PER_CHUNK). The best of
        those tried is kept for the same model shapes, data, dtype, device and thread count in this process.
        Returns (chunk, points already evaluated), their results appended to losses/errors."""
        moved = tuple((n, tuple(t.shape)) for n, t in base.items() if any(n in d for d in directions))
        key = (type(self.model).__qualname__, moved, len(directions), tuple(self.data.x.shape),
               str(self.data.x.dtype), str(self.data.x.device), torch.get_num_threads(), self.recalibrate,
               len(self.bn_data) if self.recalibrate else 0, self.batch_size)
        if key in _tuned:
            return _tuned[key], 0
        if len(coefficients) - 1 < TUNE_POINTS_PER_CHUNK * TUNE_CHUNKS[0]:
            return 1, 0  # too few points to try any chunk: one at a time, nothing kept
        best, best_time, done = 1, math.inf, 0
        self._run(1, base, directions, coefficients[:0])  # set-up (model copy, replay) outside the timing
        for chunk in (1,) + TUNE_CHUNKS:
            if chunk > 1 and len(coefficients) - done < TUNE_POINTS_PER_CHUNK * chunk:
                break  # too few points left to try larger chunks: the best of those tried is kept
            started = time.perf_counter()
            loss, error = self._run(chunk, base, directions, coefficients[done:done + chunk])
            _sync(self.data.x.device)
            per_point = (time.perf_counter() - started) / len(loss)
            losses.append(loss)
            errors.append(error)
            done += len(loss)
            if per_point >= best_time:
                break
            best, best_time = chunk, per_point
        _tuned[key] = best
        return best, done

    def curve(self, base: Params, direction: Params, lambdas, progress=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, error) along base + lambda * direction."""
        return self.evaluate(base, [direction], torch.as_tensor(lambdas, dtype=torch.float64)[:, None], progress)

    def _run(self, chunk: int, base: Params, directions: list[Params], coefficients: torch.Tensor):
        if chunk == 1:
            return self._one_at_a_time(base, directions, coefficients)
        parts = [self._chunk(base, directions, coefficients[s:s + chunk]) for s in range(0, len(coefficients), chunk)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    # ---- one point at a time, on a private copy of the model ------------------------------------------

    def _working_copy(self, base: Params) -> tuple[nn.Module, Params]:
        """The private copy (made once) holding base's values; its parameters by name."""
        if self._copy is None:
            self._copy = copy.deepcopy(self.model).eval()
            if self.data.x.device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in self._copy.modules()):
                # oneDNN's convolutions and max-pooling run NHWC without reordering every call: markedly
                # faster forward passes on a CPU (the peer benchmark in docs/landscape.md); same numbers
                self._copy = self._copy.to(memory_format=torch.channels_last)
            for p in self._copy.parameters():
                p.requires_grad_(False)
            for m in self._copy.modules():
                if isinstance(m, _BatchNorm):
                    m.momentum = None  # train-mode passes keep a cumulative average
        params = dict(self._copy.named_parameters())
        with torch.no_grad():
            for n, b in self._copy.named_buffers():
                b.copy_(self.buffers[n])
            for n, t in base.items():
                params[n].copy_(t)
        return self._copy, params

    def _recalibrate(self, model: nn.Module, cursor: Cursor, replay: Replay | None = None) -> None:
        """PyTorch's own recalibration: reset, one train-mode pass (BN layers only), cumulative average.
        Once a pass has shown every BN layer running once, later passes (with the same replay) stop right
        after the last of them: what follows cannot change any statistic."""
        bn = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
        for m in bn:
            m.reset_running_stats()
            m.train()
        known = self._last_bn is not None and self._last_bn[0] is replay
        order: list[nn.Module] = []
        if known:
            hooks = [self._last_bn[1].register_forward_hook(_stop)] if self._last_bn[1] is not None else []
        else:
            hooks = [m.register_forward_hook(lambda mod, args, out: order.append(mod)) for m in bn]
        try:
            for i, (x, _) in enumerate(self.bn_data.batches(self.batch_size)):
                cursor.key = ("bn", i)
                try:
                    model(x)
                except _StopForward:
                    pass
                if not known:  # the first full pass: which BN layer runs last, each once?
                    for h in hooks:
                        h.remove()
                    last = order[-1] if order and len(order) == len(set(order)) else None
                    self._last_bn, known = (replay, last), True
                    hooks = [last.register_forward_hook(_stop)] if last is not None else []
        finally:
            for h in hooks:
                h.remove()
        for m in bn:
            m.eval()

    def _replay_for(self, model: nn.Module, directions: list[Params], moved: set[str]) -> Replay | None:
        """This evaluate() call's replay (recorded at base, the copy's values, on first use), or None."""
        if self._replay is True:
            cursor = Cursor()
            images = len(self.data) + (len(self.bn_data) if self.recalibrate else 0)
            replay = Replay.plan(model, moved, self.data.x[:1], images, self.replay_bytes, len(directions),
                                 self.recalibrate, cursor)
            if replay is not None:
                with torch.inference_mode(), replay.capturing():
                    if self.recalibrate:
                        self._recalibrate(model, cursor)
                    for i, (x, _) in enumerate(self.data.batches(self.batch_size)):
                        cursor.key = ("eval", i)
                        model(x)
                with torch.inference_mode():
                    replay.record_terms(directions)
            self._replay = replay
        return self._replay or None

    def _one_at_a_time(self, base: Params, directions: list[Params], coefficients: torch.Tensor):
        data = self.data
        model, params = self._working_copy(base)
        terms = {n: [(j, d[n].to(base[n].device, base[n].dtype)) for j, d in enumerate(directions) if n in d]
                 for n in base}
        terms = {n: t for n, t in terms.items() if t}
        replay = self._replay_for(model, directions, set(terms))
        cursor = replay.cursor if replay is not None else Cursor()
        recalibrate = self.recalibrate and (replay is None or replay.needs_recalibration)
        loss = torch.zeros(len(coefficients), dtype=torch.float64, device=data.x.device)
        wrong = torch.zeros_like(loss)
        with torch.inference_mode(), (replay.installed() if replay is not None else contextlib.nullcontext()):
            for k, row in enumerate(coefficients.tolist()):
                cursor.row = row
                for n, pairs in terms.items():  # theta_k = base + sum_j c_kj d_j, from base every time
                    (j, d), rest = pairs[0], pairs[1:]
                    torch.add(base[n], d, alpha=row[j], out=params[n])
                    for j, d in rest:
                        params[n].add_(d, alpha=row[j])
                if recalibrate:
                    self._recalibrate(model, cursor, replay)
                for i, (x, y) in enumerate(data.batches(self.batch_size)):
                    cursor.key = ("eval", i)
                    logits = model(x)
                    loss[k] += F.cross_entropy(logits, y, reduction="sum")
                    wrong[k] += (logits.argmax(1) != y).sum()
        n = max(len(data), 1)
        return loss / n, wrong / n

    def buffers_at(self, base: Params) -> Params:
        """The model's buffers at base: with recalibration, BN running statistics recomputed there (the
        statistics every evaluated point gets); else the model's own buffers."""
        if not self.recalibrate:
            return dict(self.buffers)
        model, _ = self._working_copy(base)
        with torch.inference_mode():
            self._recalibrate(model, Cursor())
        return {n: b.detach().clone() for n, b in model.named_buffers()}

    # ---- chunks of points under vmap ----------------------------------------------------------------

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
        data = self.data
        batched = self._points(base, directions, coefficients)
        fixed = {**self.buffers, **{n: t for n, t in base.items() if n not in batched}}
        stats = self.bn_statistics(batched, fixed) if self.recalibrate else {}
        fixed = {n: t for n, t in fixed.items() if n not in stats}

        def point(params: Params, buffers: Params, x: torch.Tensor, y: torch.Tensor):
            logits = functional_call(self.model, {**fixed, **params, **buffers}, (x,))
            return F.cross_entropy(logits, y, reduction="sum"), (logits.argmax(1) != y).sum()

        loss = torch.zeros(len(coefficients), dtype=torch.float64, device=data.x.device)
        wrong = torch.zeros(len(coefficients), dtype=torch.float64, device=data.x.device)
        with torch.no_grad(), probe_mode(self.model, bn_batch_stats=False):
            for x, y in data.batches(self.batch_size):
                batch_loss, batch_wrong = _over_points(point, len(coefficients))(batched, stats, x, y)
                loss += batch_loss
                wrong += batch_wrong
        n = max(len(data), 1)
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
